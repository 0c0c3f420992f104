"""Off2On's recipe (agent off2on):

  pretrain   CQL (CORL, --preset=official: OCR-CFT's offline/cql.py settings) with N x --seeds seeds,
             N = --off2on_ensemble (5): the ensemble members                 runs/pretrain/cql/...
  finetune   the members regrouped per run seed (seed s gets members N s .. N s + N-1) into one
             ensemble: SAC on the moment-matched policy with a critic per member, balanced replay
             (prioritised by the density ratio w_psi), one update per env step  runs/finetune/off2on/...

  python -m experiments.finetune --agent=off2on --budget=quick
  python -m experiments.finetune --agent=off2on --seeds=3 --off2on_ensemble=5
  python -m experiments.finetune --agent=off2on --from=runs/pretrain/cql/<dataset>/seed0x25

Why one CQL run of N x S seeds: the members are independent CQL runs (the reference loads 5 CQL
checkpoints of different seeds; OCR-CFT used 5 CORL CQL seeds), and one vmapped run trains them in one
program, resumes, shards over processes and is reused like any pretrain run. Members are grouped
contiguously, so a process's slice of the pre-training seeds is exactly the members of its slice of
the fine-tuning seeds (`--num_processes`), and with --seeds=1 the members are O2SAC's 5-seed CQL run
(`chain="o2sac"`: the very checkpoint OCR-CFT's O2SAC starts from, reused when it is there).
The reward transform and observation statistics of the CQL run apply to the offline rows and to every
online reward (o2o_jax.data.prepared.load_data / o2o_jax.phase.train_online).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np

from o2o_jax import distributed, loops
from o2o_jax import phase as phase_lib
from o2o_jax import recipe as recipe_lib
from o2o_jax.agents.o2o import off2on
from o2o_jax.data import prepared
from o2o_jax.errors import O2OError
from o2o_jax.recipes import ocr_cft, offline
from o2o_jax.types import seed_keys

# --budget: ocr_cft.BUDGETS' offline/online step counts (CQL's quick 10k included) and network sizes
# (None at 'paper': CQL's own 3x256); no warm-up: the reference trains from the first online step
# (min_num_steps_before_training=0), one update per env step (OCR-CFT's schedule, not 1000 per epoch).
BUDGETS = {b: {**{k: v[k] for k in ("pretrain_steps", "pretrain_eval_every", "online_steps",
                                     "eval_every", "eval_episodes", "hidden_dims")}, "warmup_steps": 0}
           for b, v in ocr_cft.BUDGETS.items()}


def ensemble_size(ctx: recipe_lib.Context) -> int:
  """N, after --off2on_ensemble and any --config.ensemble_size."""
  return ctx.configure(off2on.Config()).ensemble_size


def pretrain_run_name(ctx: recipe_lib.Context) -> str:
  """seed<s>x<N S>[-preset<p>]: the name of any CQL run of that many seeds, so an O2SAC run's CQL
  checkpoint of the same seeds is reused (and this one by it)."""
  suffix = "" if ctx["preset"] == "official" else f"-preset{ctx['preset']}"
  return f"seed{ctx['seed']}x{ctx['seeds'] * ensemble_size(ctx)}{suffix}"


def check(ctx: recipe_lib.Context) -> None:
  config = ctx.configure(off2on.Config())
  if config.ensemble_size < 1:
    raise O2OError(f"--off2on_ensemble must be at least 1 (got {config.ensemble_size})")
  if not 0.0 <= config.online_fraction < 1.0:
    raise O2OError(f"--off2on_online_fraction must lie in [0, 1) (got {config.online_fraction})")
  if config.priority_temperature <= 0:
    raise O2OError(f"--off2on_temperature must be positive (got {config.priority_temperature})")


def finetune_phase(ctx: recipe_lib.Context) -> Path:
  """Off2On online from the CQL run: its N x S seeds regrouped into S ensembles of N members."""
  pretrain_dir = ctx.runs["pretrain"]
  loaded = recipe_lib.load_run(pretrain_dir, phases=("pretrain",), want="a pretrain run of cql")
  cfg, meta = loaded.config, loaded.meta
  if cfg.get("algo") != "cql":
    raise O2OError(f"{pretrain_dir} is a pretrain run of {cfg.get('algo')}: off2on's ensemble members "
                   "are CQL agents (pass a cql run, or no --from)")
  base = loaded.agent_config
  # The members keep the CQL run's networks; a budget's network size (quick: 64x64) also sizes w_psi.
  sizes = {} if ctx["hidden_dims"] is None else {"ratio_hidden_dims": tuple(ctx["hidden_dims"])}
  config = ctx.configure(off2on.Config(**{k: getattr(base, k) for k in off2on.ARCHITECTURE}, **sizes))
  members = config.ensemble_size
  if cfg["seeds"] % members:
    raise O2OError(f"{pretrain_dir} has {cfg['seeds']} CQL seeds, not a multiple of the ensemble size "
                   f"{members}: pass a run of N x seeds seeds, or --off2on_ensemble dividing "
                   f"{cfg['seeds']}")
  seeds, seed = cfg["seeds"] // members, cfg["seed"]
  # Named after the seeds it fine-tunes (a --from run's count / N), with the CQL run's preset (an
  # explicit --preset that differs from it is an error: that run is reused, not redone).
  preset = offline.run_preset(pretrain_dir, cfg, ctx["preset"] if "preset" in ctx.given else None)
  run_name = ctx.settings.get("run_name") or (
      f"seed{seed}x{seeds}" + ("" if preset == "official" else f"-preset{preset}"))
  local = distributed.local_seed_count(seeds)
  online_steps, warmup_steps, batch_size = ctx["online_steps"], ctx["warmup_steps"], ctx["batch_size"]
  eval_every, eval_episodes, log = ctx["eval_every"], ctx["eval_episodes"], ctx.log
  scale, shift = prepared.reward_transform(meta)
  data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"], scale,
                            batch_size=batch_size, reward_shift=shift)
  # The prioritised replay: every offline row, then the online buffer, which holds every online step.
  config = dataclasses.replace(config, offline_rows=data.dataset.size, online_rows=online_steps)
  run_config = {"phase": "finetune", "agent": "off2on", "dataset": cfg["dataset"], "env": cfg["env"],
                "seeds": seeds, "seed": seed, "from": str(pretrain_dir), "steps": online_steps,
                "offline_algo": "cql", "pretrain_seeds": cfg["seeds"], "preset": cfg.get("preset"),
                "reward_transform": {"scale": scale, "shift": shift},
                "agent_config": dataclasses.asdict(config), "utd": 1,
                "warmup_steps": warmup_steps, "eval_every": eval_every,
                "eval_episodes": eval_episodes, "batch_size": batch_size}
  spec = phase_lib.OnlinePhase(
      agent="off2on", dataset_id=cfg["dataset"], run_name=run_name, config=run_config,
      loop=phase_lib.online_loop(online_steps, warmup_steps, eval_every, eval_episodes, utd=1,
                                 batch_size=batch_size),
      plot_keys=("eval/normalized_score", "train/critic_loss", "train/actor_loss",
                 "train/online_share"),
      **ctx.phase_args())

  def build(run_dir):
    obs_dim, act_dim = meta["obs_dim"], meta["act_dim"]
    # Member m of run seed s is pre-training seed members * s + m (this process's slice of both).
    group = lambda x: x.reshape((local, members) + x.shape[1:])
    actor_params = jax.tree_util.tree_map(group, loaded.states.sac.actor.params)
    critic_params = jax.tree_util.tree_map(group, loaded.states.sac.critic.params)
    expected = jax.eval_shape(lambda: off2on.init(jax.random.PRNGKey(0), obs_dim, act_dim, config))
    recipe_lib.check_actor_fits(
        expected.sac.actor.params, actor_params,
        f"--config: the actor of {pretrain_dir} does not fit off2on's member actor: its network "
        "settings (hidden_dims, log_std_*, init) come from that run; drop the --config override")
    from_members = functools.partial(off2on.from_members, obs_dim=obs_dim, act_dim=act_dim,
                                     config=config)
    states = jax.jit(jax.vmap(from_members))(seed_keys(seed, local), actor_params, critic_params)
    # pi_off: the members' mean offline score (OCR-CFT's delta subtracts one CQL run's score); the
    # curve starts at the ensemble policy's own score at the switch.
    members_score = np.asarray(meta["eval_score"], np.float32).reshape(local, members).mean(1)
    evaluation = loops.Evaluation(off2on.act, data.make_env, local, eval_episodes, data.obs_mean,
                                  data.obs_std)
    ensemble_score = data.normalized_score(evaluation.run(states)[0]).mean(1).astype(np.float32)
    evaluation.close()
    log(f"[finetune] off2on from {pretrain_dir.name} ({cfg['seeds']} CQL seeds = {seeds} ensembles of "
        f"{members}): {online_steps} online steps, one update each, balanced replay over the "
        f"{data.dataset.size} offline rows + online (T {config.priority_temperature}, f "
        f"{config.online_fraction}) -> {run_dir}")
    return phase_lib.OnlineTraining(
        learner=loops.Learner(ctx.phase.step, ctx.phase.act, sampler=off2on.sampler),
        states=states, data=data, metadata={**meta, "agent": "off2on", "eval_score": members_score},
        start_scores={"offline": members_score, "ensemble": ensemble_score})

  return phase_lib.run_online_phase(spec, build, log)


OPTIONS = (
    recipe_lib.Option("off2on_ensemble", 5, "Off2On ensemble size N: CQL agents pre-trained as N x "
                      "--seeds seeds (paper 5).", kind="int", field="ensemble_size", check="at_least_1"),
    recipe_lib.Option("off2on_temperature", 5.0, "Off2On priority temperature T of p = w^(1/T) / "
                      "mean_offline(w^(1/T)) (paper 5).", field="priority_temperature",
                      check="positive"),
    recipe_lib.Option("off2on_online_fraction", 0.5, "Off2On init_online_fraction f: the first 1000 "
                      "online rows' share of the sampling mass, p_max = |D| f / ((1 - f) 1000) "
                      "(paper 0.5).", field="online_fraction"),
)

RECIPES = {"off2on": recipe_lib.Recipe(
    agent="off2on", doc="Off2On: N CQL agents (N x seeds CQL seeds) as one pessimistic ensemble, then "
    "SAC online on the moment-matched ensemble policy with balanced replay (priorities from a "
    "density-ratio net), one update per env step", config=off2on.Config, budgets=BUDGETS,
    reads=("preset", "warmup_steps"), defaults={"preset": "official"}, options=OPTIONS, check=check,
    phases=(offline.pretrain_phase("cql", ("cql",), chain="o2sac",
                                   why="Off2On's ensemble members are CQL agents",
                                   eval_every=lambda ctx: ctx["pretrain_eval_every"],
                                   preset=lambda ctx: ctx["preset"], run_name=pretrain_run_name,
                                   seeds=lambda ctx: ctx["seeds"] * ensemble_size(ctx)),
            recipe_lib.Phase("finetune", "off-policy online", finetune_phase, needs=("pretrain",),
                             step=off2on.update, act=off2on.act,
                             data="RL batch: D + online rows by priority (off2on.sample_batch); w_psi: "
                                  "uniform D and uniform online rows",
                             replay="D at priority 1, new online rows at the running max "
                                    "(|D| f / ((1-f) 1000) at the start)")))}
