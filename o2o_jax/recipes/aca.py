"""ACA's recipe (agent aca):

  pretrain   SAC+ML with the state baseline Z ("sacml"; reused)                  runs/pretrain/sacml/...
    or       any other stochastic offline actor (--offline_algo=cql|iql|awac|bc), then
  zfit       Z fitted with that actor fixed as pi0 [recon]                        runs/zfit/aca/...
             (nothing to do after SAC+ML, which fits Z itself: the phase passes its run on)
  finetune   the switch (R := Z, alpha := 1, pi0 frozen) and SAC on the re-parameterised critic
             R + w_t c(log pi0), online data only, optionally seeded with the top-N offline
             episodes (o2o_jax.phase)                                              runs/finetune/aca/...

  python -m experiments.finetune --agent=aca --budget=quick
  python -m experiments.finetune --agent=aca --offline_algo=cql --budget=quick
  python -m experiments.finetune --agent=aca --from=runs/pretrain/sacml/... --aca_top_n=50

The per-dataset settings (clip beta, w schedule, top-N, entropy coefficient) come from the official
code's table (`aca.DATASET_PRESETS`); each --aca_ option given overrides its entry, and a
`--config.<field>=<value>` overrides any field of the online Config last.

States: the official chain (`run_sacml.py`, `run_aca.py`) gives d3rlpy no `scaler`, so SAC+ML, Z and
the online stage see raw observations; the SAC+ML pretrain started here does too
(`normalize_states=False`; `--aca_normalize_states` standardises them). Another offline actor keeps
its own preset's normalisation (pi0 is a function of the states it was trained on), and the Z-fit and
online stages reuse whatever the offline run recorded.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from o2o_jax import distributed, loops, networks, presets, runs
from o2o_jax import phase as phase_lib
from o2o_jax import recipe as recipe_lib
from o2o_jax.agents.o2o import aca
from o2o_jax.data import prepared
from o2o_jax.errors import O2OError
from o2o_jax.recipes import offline
from o2o_jax.types import seed_keys

# --budget: 'paper' = the official code (SAC+ML 500k steps, 100k online; Z-fit as long as SAC+ML
# [recon]) with the framework's evaluation protocol; 'quick' = minutes on a laptop CPU.
BUDGETS = {
    "paper": dict(pretrain_steps=500_000, pretrain_eval_every=10_000, aca_zfit_steps=500_000,
                  online_steps=100_000, warmup_steps=1_000, eval_every=1_000, eval_episodes=10,
                  hidden_dims=(256, 256), critic_hidden=(256, 256)),
    "quick": dict(pretrain_steps=10_000, pretrain_eval_every=5_000, aca_zfit_steps=5_000,
                  online_steps=10_000, warmup_steps=1_000, eval_every=2_000, eval_episodes=5,
                  hidden_dims=(64, 64), critic_hidden=(64, 64)),
}

def actor_config_fields(actor_module) -> dict:
  """The ACA actor options that rebuild `actor_module` (an offline agent's actor); a one-line error
  for an actor without a density (e.g. TD3+BC's deterministic one)."""
  if not isinstance(actor_module, (networks.TanhGaussianActor, networks.GaussianActor)):
    raise O2OError(f"ACA aligns the critic to the offline actor's density log pi0(a|s), so it needs "
                   f"a stochastic actor; this one is a {type(actor_module).__name__} (use sacml, cql, "
                   "iql with a Gaussian actor (--preset=none on hopper-medium), awac or bc)")
  common_ = dict(hidden_dims=tuple(actor_module.hidden_dims), log_std_min=actor_module.log_std_min,
                 log_std_max=actor_module.log_std_max, orthogonal_init=actor_module.orthogonal_init)
  if isinstance(actor_module, networks.TanhGaussianActor):
    return dict(common_, actor_kind="tanh_gaussian",
                learnable_log_std_scale=actor_module.learnable_log_std_scale)
  return dict(common_, actor_kind="gaussian", gaussian_tanh_mean=actor_module.tanh_mean)


def pretrain_normalizes_states(algo: str, aca_normalize_states: bool = False) -> Optional[bool]:
  """`offline.pretrain(normalize_states=...)`: SAC+ML on raw observations, as the official ACA code
  (no d3rlpy scaler), unless asked otherwise; None for any other offline algorithm (its preset's
  choice)."""
  if algo != "sacml":
    return None
  return bool(aca_normalize_states)


def source_algo(cfg) -> str:
  """The offline algorithm behind a pretrain run (`algo`) or a zfit run (`offline_algo`)."""
  return cfg.get("offline_algo", cfg.get("algo"))


def run_suffix(source: str) -> str:
  """The zfit and finetune runs' names tell the offline actor apart: '' for sacml, else -<algo>."""
  return "" if source == "sacml" else f"-{source}"


# ----------------------------------------------------------------------------- zfit

@functools.lru_cache(maxsize=None)
def _zfit_init(config: aca.Config, obs_dim: int, act_dim: int):
  """The jitted, seed-vmapped Z-fit start around pi0's parameters, compiled once per process."""
  return jax.jit(jax.vmap(lambda k, p: aca.init(k, obs_dim, act_dim, config, p)))


def fit_baseline(*, pretrain_dir: Path, steps: int, critic_hidden, zfit_alpha: float, batch_size: int,
                 eval_episodes: int, out_dir: str, run_name: str, restart: bool, progress: bool,
                 checkpoint_every: Optional[int] = None, learner: Optional[loops.Learner] = None,
                 log=print) -> Path:
  """Z fitted with another offline actor held fixed as pi0: its own run directory. Resumable
  (snapshots every `checkpoint_every` steps under <run_dir>/progress, see loops.run_offline).
  `learner`: the phase's declared step and act (default aca.fit_baseline_step, aca.act)."""
  loaded = recipe_lib.load_run(pretrain_dir, phases=("pretrain",),
                               want="a pretrain run (an offline actor to fit Z to)")
  cfg, base_states, meta = loaded.config, loaded.states, loaded.meta
  fields = actor_config_fields(base_states.actor.apply_fn.__self__)
  config = aca.Config(**fields, critic_hidden_dims=tuple(critic_hidden), init_alpha=zfit_alpha)
  seeds, seed = cfg["seeds"], cfg["seed"]
  run_config = {"phase": "zfit", "agent": "aca", "dataset": cfg["dataset"], "env": cfg["env"],
                "seeds": seeds, "seed": seed, "from": str(pretrain_dir), "steps": steps,
                "offline_algo": cfg["algo"], "agent_config": dataclasses.asdict(config),
                "batch_size": batch_size}
  spec = phase_lib.OfflinePhase(
      phase="zfit", agent="aca", dataset_id=cfg["dataset"], run_name=run_name, config=run_config,
      loop=loops.OfflineConfig(num_steps=steps, batch_size=batch_size, chunk=min(steps, 5_000),
                               eval_every=steps, eval_episodes=eval_episodes),
      score_key="eval_score", desc="aca z-fit", out_dir=out_dir, restart=restart, progress=progress,
      checkpoint_every=checkpoint_every)

  def build(run_dir):
    obs_dim, act_dim = meta["obs_dim"], meta["act_dim"]
    expected = jax.eval_shape(lambda: aca.init(jax.random.PRNGKey(0), obs_dim, act_dim,
                                               config).actor.params)
    recipe_lib.check_actor_fits(expected, base_states.actor.params,
                                f"the {cfg['algo']} actor does not fit ACA's actor (different network "
                                "layout)")
    keys = distributed.local_slice(seed_keys(seed + 1, seeds), distributed.local_seed_count(seeds))
    states = _zfit_init(config, obs_dim, act_dim)(keys, base_states.actor.params)
    # Z serves the online critic, which sees raw env rewards: no reward transform here.
    data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"], 1.0,
                              batch_size=batch_size)
    log(f"[zfit] aca: fitting Z to the frozen {cfg['algo']} actor for {steps} steps (alpha "
        f"{zfit_alpha}) -> {run_dir}")
    out_meta = {**{k: meta[k] for k in ("dataset_id", "env_id", "obs_dim", "act_dim", "obs_mean",
                                        "obs_std")},
                "reward_transform": {"scale": 1.0, "shift": 0.0}, "phase": "zfit", "agent": "aca",
                "offline_algo": cfg["algo"]}
    return phase_lib.Training(learner or loops.Learner(aca.fit_baseline_step, aca.act), states,
                              data.device,
                              data, out_meta)

  return phase_lib.run_offline_phase(spec, build, log)


def zfit_phase(ctx: recipe_lib.Context) -> Path:
  """Z fitted to the pretrain run's actor; a SAC+ML run fitted Z itself and is passed on as it is."""
  pretrain_dir = ctx.runs["pretrain"]
  source = runs.read_config(pretrain_dir).get("algo")
  if source == "sacml":
    return pretrain_dir
  return fit_baseline(pretrain_dir=pretrain_dir, steps=ctx["aca_zfit_steps"],
                      critic_hidden=ctx["critic_hidden"], zfit_alpha=ctx["aca_zfit_alpha"],
                      batch_size=ctx["batch_size"], eval_episodes=ctx["eval_episodes"],
                      run_name=ctx.base_name() + run_suffix(source),
                      learner=loops.Learner(ctx.phase.step, ctx.phase.act), log=ctx.log,
                      **ctx.phase_args())


# ----------------------------------------------------------------------------- finetune

def finetune_phase(ctx: recipe_lib.Context) -> Path:
  """The switch and online SAC on the re-parameterised critic, from a sacml pretrain run or a zfit
  run: that run's Config, the dataset's row of the official table, the --aca_ options, then the
  --config. overrides."""
  offline_dir = ctx.runs["zfit"]
  cfg = runs.read_config(offline_dir)
  if cfg.get("phase") not in ("pretrain", "zfit") or (cfg.get("phase") == "pretrain"
                                                       and cfg.get("algo") != "sacml"):
    raise O2OError(f"{offline_dir} is a '{cfg.get('phase')}' run of {source_algo(cfg)}: aca "
                   "fine-tunes a sacml pretrain run or a zfit run")
  base = runs.config_from_dict(aca.Config, cfg["agent_config"])
  env, level = presets.dataset_env_and_level(cfg["dataset"])
  config = ctx.configure(dataclasses.replace(base, **aca.dataset_preset(env, level)))
  seeds, seed, utd, batch_size = cfg["seeds"], cfg["seed"], ctx.get("utd") or 1, ctx["batch_size"]
  online_steps, warmup_steps = ctx["online_steps"], ctx["warmup_steps"]
  eval_every, eval_episodes, log = ctx["eval_every"], ctx["eval_episodes"], ctx.log
  run_config = {"phase": "finetune", "agent": "aca", "dataset": cfg["dataset"], "env": cfg["env"],
                "seeds": seeds, "seed": seed, "from": str(offline_dir), "steps": online_steps,
                "offline_algo": source_algo(cfg),
                "agent_config": dataclasses.asdict(config), "utd": utd, "warmup_steps": warmup_steps,
                "eval_every": eval_every, "eval_episodes": eval_episodes, "batch_size": batch_size}
  spec = phase_lib.OnlinePhase(
      agent="aca", dataset_id=cfg["dataset"], run_name=ctx.base_name() + run_suffix(source_algo(cfg)),
      config=run_config,
      loop=phase_lib.online_loop(online_steps, warmup_steps, eval_every, eval_episodes, utd=utd,
                                 batch_size=batch_size, offline_fraction=0.0),
      plot_keys=("eval/normalized_score", "train/w", "train/alpha", "train/critic_loss"),
      **ctx.phase_args())

  def build(run_dir):
    loaded = recipe_lib.load_run(offline_dir, phases=("pretrain", "zfit"))
    states, meta = loaded.states, loaded.meta
    act_dim = meta["act_dim"]
    states = jax.jit(jax.vmap(functools.partial(aca.start_online, act_dim=act_dim,
                                                config=config)))(states)
    data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"], 1.0,
                              batch_size=batch_size)
    rows = data.dataset.top_episode_indices(config.top_n_trajectories)
    prefill = jax.tree_util.tree_map(lambda x: x[rows], data.device) if len(rows) else None
    log(f"[finetune] aca from {run_config['offline_algo']}: {online_steps} online steps, UTD {utd}, "
        f"clip beta {config.clip_beta}, w {config.w_init} -> {config.w_min} (K {config.w_decay_k}), "
        f"buffer seeded with {len(rows)} transitions of the top {config.top_n_trajectories} episodes "
        f"-> {run_dir}")
    return phase_lib.OnlineTraining(
        learner=loops.Learner(ctx.phase.step, ctx.phase.act), states=states, data=data,
        metadata={**meta, "agent": "aca"},
        start_scores={"offline": np.asarray(meta["eval_score"], np.float32)}, prefill=prefill)

  return phase_lib.run_online_phase(spec, build, log)


# ----------------------------------------------------------------------------- the recipe

def _positive_or_none(value):
  """A clip given as 0 or less: no clip (None)."""
  return None if value <= 0 else value


OPTIONS = (
    recipe_lib.Option("aca_zfit_steps", None, "ACA: steps fitting Z to another offline actor "
                      "(--offline_algo other than sacml; paper budget 500k, quick 5k).", kind="int",
                      check="positive"),
    recipe_lib.Option("aca_zfit_alpha", 1.0, "ACA: temperature alpha in Z's target when fitting Z to "
                      "another offline actor (1 = the online start's alpha, so Q~ = log pi0 + Z is "
                      "consistent with the soft backup there)."),
    recipe_lib.Option("aca_clip_beta", None, "ACA lower clip of log pi0 at beta standard deviations "
                      "(table: 7 random/medium(-replay), 15 (medium-)expert, 3 AntMaze); 0 = no clip.",
                      field="clip_beta", convert=_positive_or_none),
    recipe_lib.Option("aca_w_init", None, "ACA w0 (table: 1).", field="w_init"),
    recipe_lib.Option("aca_w_decay_k", None, "ACA K: w falls by w0/(K*1000) per update (table: 10 "
                      "random, 40 medium(-replay), 100 (medium-)expert, 200 AntMaze).",
                      field="w_decay_k"),
    recipe_lib.Option("aca_w_min", None, "ACA w_min (table: 0 random, 0.5 medium(-replay)/AntMaze, "
                      "1 (medium-)expert).", field="w_min"),
    recipe_lib.Option("aca_top_n", None, "ACA: top-N offline episodes by return seeding the online "
                      "buffer (table: 50 medium-replay/(medium-)expert, else 0).", kind="int",
                      field="top_n_trajectories", check="nonnegative"),
    recipe_lib.Option("aca_entropy_coef", None, "ACA c_H of the online target entropy -c_H|A| (table: "
                      "1, AntMaze 0.5).", field="entropy_coef"),
    recipe_lib.Option("aca_actor_grad_clip", 0.25, "ACA online actor gradient-norm clip (0 = none).",
                      field="actor_grad_clip", convert=_positive_or_none),
    recipe_lib.Option("aca_normalize_states", False, "ACA: standardise observations in the SAC+ML "
                      "pretrain started here (the official code does not: no d3rlpy scaler). Another "
                      "--offline_algo keeps its own preset's choice.", kind="bool"),
)

RECIPES = {"aca": recipe_lib.Recipe(
    agent="aca", doc="ACA: SAC+ML pre-training (or another stochastic offline actor and a fit of Z "
    "to it), then SAC online on the critic re-parameterised around log pi0", config=aca.Config,
    budgets=BUDGETS, reads=("offline_algo", "warmup_steps", "critic_hidden", "utd"),  # critic_hidden: Z
    options=OPTIONS,
    phases=(offline.pretrain_phase(
                "sacml", normalize_states=lambda ctx: pretrain_normalizes_states(
                    ctx.get("offline_algo") or "sacml", ctx["aca_normalize_states"])),
            recipe_lib.Phase("zfit", "fit", zfit_phase, needs=("pretrain",),
                             step=aca.fit_baseline_step, act=aca.act,
                             data="the offline dataset, raw rewards (a pass-through after sacml, "
                                  "whose critic is Z already)"),
            recipe_lib.Phase("finetune", "off-policy online", finetune_phase, needs=("zfit",),
                             step=aca.online_update, act=aca.act, data="the online buffer",
                             replay="the top-N offline episodes by return (--aca_top_n, the "
                                    "dataset's row of the official table)",
                             hook="none; the switch weight w decays every update")))}
