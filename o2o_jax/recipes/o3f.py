"""O3F's recipe (agent o3f):

  pretrain   IQL with an ensemble of 5 critics ("iql5"; reused)                 runs/pretrain/iql5/...
             on the rewards of the IQL O3F builds on (--preset=official, the default: CORL iql.py
             `modify_reward`, locomotion r * 1000 / (max - min episode return), AntMaze r - 1)
  finetune   the same IQL objective online, the replay buffer initialised with the whole offline
             dataset, every env step the best of N candidates around the policy action by mean Q
                                                                                 runs/finetune/o3f/...

  python -m experiments.finetune --agent=o3f --budget=quick
  python -m experiments.finetune --agent=o3f --offline_algo=iql          # a 2-critic CORL IQL run
  python -m experiments.finetune --agent=o3f --from=runs/pretrain/iql5/... --o3f_omega=1

The reward transform of the IQL run (its checkpoint metadata) is applied to the offline buffer and to
every online reward (o2o_jax.data.prepared.load_data / o2o_jax.phase.train_online), so both share one
scale.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np
from o2o_jax import loops, presets
from o2o_jax import recipe as recipe_lib
from o2o_jax import phase as phase_lib
from o2o_jax.agents.o2o import o3f
from o2o_jax.data import prepared
from o2o_jax.errors import O2OError
from o2o_jax.recipes import offline, ocr_cft

IQL_ALGOS = ("iql5", "iql")     # offline runs O3F can fine-tune (IQL's state, any number of critics)
# --budget: ocr_cft.BUDGETS' offline/online step counts; no warm-up, since the buffer starts with the
# whole dataset and Algorithm 1 updates from the first env step.
BUDGETS = {b: {**{k: v[k] for k in ("pretrain_steps", "pretrain_eval_every", "online_steps",
                                     "eval_every", "eval_episodes", "hidden_dims")}, "warmup_steps": 0}
           for b, v in ocr_cft.BUDGETS.items()}

def restore_iql(pretrain_dir: Path) -> recipe_lib.LoadedRun:
  """A finished IQL pretrain run (any number of critics)."""
  loaded = recipe_lib.load_run(pretrain_dir, phases=("pretrain",), want="a pretrain run of iql5 or iql")
  if loaded.config.get("algo") not in IQL_ALGOS:
    raise O2OError(f"{pretrain_dir} is a pretrain run of {loaded.config.get('algo')}: o3f fine-tunes "
                   "an iql5 or iql run")
  return loaded


def finetune_phase(ctx: recipe_lib.Context) -> Path:
  """O3F online from the pretrain run: the IQL run's Config carried over, sigma for the dataset's env
  (paper: 0.2 on locomotion, 0.05 elsewhere), then the options and the --config. overrides."""
  pretrain_dir = ctx.runs["pretrain"]
  loaded = restore_iql(pretrain_dir)
  cfg, base_config, states, meta = loaded.config, loaded.agent_config, loaded.states, loaded.meta
  names = {f.name for f in dataclasses.fields(o3f.Config)}
  values = {k: v for k, v in dataclasses.asdict(base_config).items() if k in names}
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
  env, _ = presets.dataset_env_and_level(cfg["dataset"])
  config = ctx.configure(o3f.Config(**{**values, "sigma": o3f.sigma_for_env(env)}))
  seeds, seed, utd, batch_size = cfg["seeds"], cfg["seed"], ctx.get("utd") or 1, ctx["batch_size"]
  online_steps, warmup_steps = ctx["online_steps"], ctx["warmup_steps"]
  eval_every, eval_episodes, log = ctx["eval_every"], ctx["eval_episodes"], ctx.log
  run_config = {"phase": "finetune", "agent": "o3f", "dataset": cfg["dataset"], "env": cfg["env"],
                "seeds": seeds, "seed": seed, "from": str(pretrain_dir), "steps": online_steps,
                "offline_algo": cfg["algo"], "preset": cfg.get("preset"),
                "reward_transform": dict(zip(("scale", "shift"), prepared.reward_transform(meta))),
                "agent_config": dataclasses.asdict(config), "utd": utd,
                "warmup_steps": warmup_steps, "eval_every": eval_every,
                "eval_episodes": eval_episodes, "batch_size": batch_size}
  spec = phase_lib.OnlinePhase(
      agent="o3f", dataset_id=cfg["dataset"], run_name=ctx.base_name(), config=run_config,
      loop=phase_lib.online_loop(online_steps, warmup_steps, eval_every, eval_episodes, utd=utd,
                                 batch_size=batch_size, offline_fraction=0.0,
                                 offline_union=True),   # the buffer "starts as the whole dataset"
      plot_keys=("eval/normalized_score", "train/critic_loss", "train/value_loss", "train/actor_loss"),
      **ctx.phase_args())

  def build(run_dir):
    s0 = jax.jit(jax.vmap(functools.partial(o3f.start_online, config=config)))(states)
    # The buffer starts as the whole dataset, with the IQL run's reward transform (the online loop
    # stores env rewards with the same scale; the library adds a shift to every batch).
    scale, shift = prepared.reward_transform(meta)
    data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"], scale,
                              batch_size=batch_size, reward_shift=shift)
    log(f"[finetune] o3f from {cfg['algo']} ({config.num_critics} critics"
        f"{', deterministic actor' if config.deterministic else ''}): {online_steps} online steps, "
        f"UTD {utd}, best of {config.num_candidates} candidates (sigma {config.sigma}, omega "
        f"{config.omega}), buffer = the {data.dataset.size} offline transitions + online -> {run_dir}")
    return phase_lib.OnlineTraining(
        learner=loops.Learner(ctx.phase.step, ctx.phase.act), states=s0, data=data,
        metadata={**meta, "agent": "o3f"},
        start_scores={"offline": np.asarray(meta["eval_score"], np.float32)})

  return phase_lib.run_online_phase(spec, build, log)


OPTIONS = (
    recipe_lib.Option("o3f_sigma", None, "O3F candidate std sigma (paper: 0.2 on locomotion, 0.05 "
                      "elsewhere; default chosen from the dataset's env).", field="sigma",
                      check="nonnegative"),
    recipe_lib.Option("o3f_num_candidates", 100, "O3F candidate actions per env step N (paper 100).",
                      kind="int", field="num_candidates", check="positive"),
    recipe_lib.Option("o3f_omega", 0.0, "O3F optimism weight omega of f = Q_mean + omega Q_std (paper "
                      "0; 1 is the UCB ablation).", field="omega"),
    recipe_lib.Option("o3f_clip_candidates", True, "O3F: clip candidates to the action box [-1, 1].",
                      kind="bool", field="clip_candidates"),
    recipe_lib.Option("o3f_online_actor_lr", 3e-4, "O3F actor learning rate online (constant; IQL's "
                      "fine-tuning does not decay it).", field="online_actor_lr"),
)

RECIPES = {"o3f": recipe_lib.Recipe(
    agent="o3f", doc="O3F: IQL (5 critics) pre-training, then IQL online with the best of N "
    "candidate actions by Q", config=o3f.Config, budgets=BUDGETS,
    reads=("offline_algo", "preset", "warmup_steps", "utd"), defaults={"preset": "official"},
    options=OPTIONS,
    phases=(offline.pretrain_phase("iql5", IQL_ALGOS, chain="o3f",
                                   why="O3F keeps IQL's objective online; the paper: IQL with 5 "
                                       "critics, iql5"),
            recipe_lib.Phase("finetune", "off-policy online", finetune_phase, needs=("pretrain",),
                             step=o3f.update, act=o3f.act,
                             data="one buffer: the whole offline dataset, then every online step",
                             replay="the whole offline dataset (Algorithm 1)")),
    run_name=offline.preset_run_name)}
