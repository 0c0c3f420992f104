"""O3F end to end (agent o3f), dispatched by experiments/finetune.py:

  pretrain   IQL with an ensemble of 5 critics ("iql5", ocr_cft.pretrain; reused)  runs/pretrain/iql5/...
             on the rewards of the IQL O3F builds on (--preset=official, the default: CORL iql.py
             `modify_reward`, locomotion r * 1000 / (max - min episode return), AntMaze r - 1)
  finetune   the same IQL objective online, the replay buffer initialised with the whole offline
             dataset, every env step the best of N candidates around the policy action by mean Q
             (o2o_jax.phase)                                                      runs/finetune/o3f/...

  python -m experiments.finetune --agent=o3f --budget=quick
  python -m experiments.finetune --agent=o3f --offline_algo=iql          # a 2-critic CORL IQL run
  python -m experiments.finetune --agent=o3f --from=runs/pretrain/iql5/... --o3f_omega=1

The reward transform of the IQL run (its checkpoint metadata) is applied to the offline buffer and to
every online reward (o2o_jax.data.prepared.load_data / o2o_jax.phase.train_online), so both share one
scale.

Agent-specific flags are defined here at import (prefix --o3f_); the shared ones (dataset, seeds,
budget, ...) come from experiments/finetune.py.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Optional

import jax
import numpy as np
from absl import flags

from experiments import common
from o2o_jax import presets
from o2o_jax.recipes import offline, ocr_cft
from o2o_jax import loops, runs
from o2o_jax import phase as phase_lib
from o2o_jax.agents import registry
from o2o_jax.agents.o2o import o3f
from o2o_jax.checkpoints import Checkpointer
from o2o_jax.data import prepared
from o2o_jax.errors import O2OError
from o2o_jax.types import seed_keys

IQL_ALGOS = ("iql5", "iql")     # offline runs O3F can fine-tune (IQL's state, any number of critics)
# --budget: ocr_cft.BUDGETS' offline/online step counts; no warm-up, since the buffer starts with the
# whole dataset and Algorithm 1 updates from the first env step.
BUDGETS = {b: {**{k: v[k] for k in ("pretrain_steps", "pretrain_eval_every", "online_steps",
                                     "eval_every", "eval_episodes", "hidden_dims")}, "warmup_steps": 0}
           for b, v in ocr_cft.BUDGETS.items()}

flags.DEFINE_float("o3f_sigma", None, "O3F candidate std sigma (paper: 0.2 on locomotion, 0.05 "
                   "elsewhere; default chosen from the dataset's env).")
flags.DEFINE_integer("o3f_num_candidates", 100, "O3F candidate actions per env step N (paper 100).")
flags.DEFINE_float("o3f_omega", 0.0, "O3F optimism weight omega of f = Q_mean + omega Q_std (paper 0; "
                   "1 is the UCB ablation).")
flags.DEFINE_bool("o3f_clip_candidates", True, "O3F: clip candidates to the action box [-1, 1].")
flags.DEFINE_float("o3f_online_actor_lr", 3e-4, "O3F actor learning rate online (constant; IQL's "
                   "fine-tuning does not decay it).")


def restore_iql(pretrain_dir: Path):
  """(run config, IQL-family config, seed-stacked states, metadata) of a finished IQL pretrain run."""
  cfg = runs.read_config(pretrain_dir)
  if cfg.get("phase") != "pretrain" or cfg.get("algo") not in IQL_ALGOS:
    raise O2OError(f"{pretrain_dir} is not a pretrain run of IQL (phase {cfg.get('phase')!r}, algo "
                   f"{cfg.get('algo')!r}): o3f fine-tunes an iql5 or iql run")
  module = registry.get(cfg["algo"], registry.OFFLINE)
  base_config = runs.config_from_dict(module.Config, cfg["agent_config"])
  meta = Checkpointer(pretrain_dir / "checkpoints").read_metadata()
  template = loops.init_states(module, seed_keys(cfg["seed"], cfg["seeds"]), meta["obs_dim"],
                               meta["act_dim"], base_config)
  states, meta = runs.restore_result(pretrain_dir, template)
  return cfg, base_config, states, meta


def finetune(*, pretrain_dir: Path, overrides, online_steps: int, warmup_steps: int, eval_every: int,
             eval_episodes: int, utd: int, batch_size: int, out_dir: str, run_name: str,
             restart: bool, progress: bool, checkpoint_every: Optional[int] = None,
             log=print) -> Path:
  cfg, base_config, states, meta = restore_iql(pretrain_dir)
  names = {f.name for f in dataclasses.fields(o3f.Config)}
  values = {k: v for k, v in dataclasses.asdict(base_config).items() if k in names}
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
  config = o3f.Config(**{**values, **overrides})
  seeds, seed = cfg["seeds"], cfg["seed"]
  run_config = {"phase": "finetune", "agent": "o3f", "dataset": cfg["dataset"], "env": cfg["env"],
                "seeds": seeds, "seed": seed, "from": str(pretrain_dir), "steps": online_steps,
                "offline_algo": cfg["algo"], "preset": cfg.get("preset"),
                "reward_transform": dict(zip(("scale", "shift"), prepared.reward_transform(meta))),
                "agent_config": dataclasses.asdict(config), "utd": utd,
                "warmup_steps": warmup_steps, "eval_every": eval_every,
                "eval_episodes": eval_episodes, "batch_size": batch_size}
  spec = phase_lib.OnlinePhase(
      agent="o3f", dataset_id=cfg["dataset"], run_name=run_name, config=run_config,
      loop=phase_lib.online_loop(online_steps, warmup_steps, eval_every, eval_episodes, utd=utd,
                                 batch_size=batch_size, offline_fraction=0.0,
                                 offline_union=True),   # the buffer "starts as the whole dataset"
      plot_keys=("eval/normalized_score", "train/critic_loss", "train/value_loss", "train/actor_loss"),
      out_dir=out_dir, restart=restart, progress=progress, checkpoint_every=checkpoint_every)

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
        learner=loops.Learner(o3f.update, o3f.act), states=s0, data=data,
        metadata={**meta, "agent": "o3f"},
        start_scores={"offline": np.asarray(meta["eval_score"], np.float32)})

  return phase_lib.run_online_phase(spec, build, log)


def run(FLAGS):
  """experiments.finetune --agent=o3f: pretrain IQL (5 critics; reused) -> O3F online."""
  d = common.finetune_budget(BUDGETS, FLAGS)
  utd = FLAGS.utd or 1
  if FLAGS.o3f_num_candidates < 1:
    raise O2OError(f"--o3f_num_candidates must be at least 1 (got {FLAGS.o3f_num_candidates})")
  if FLAGS.o3f_sigma is not None and FLAGS.o3f_sigma < 0:
    raise O2OError(f"--o3f_sigma must not be negative (got {FLAGS.o3f_sigma})")
  preset = FLAGS.preset
  if getattr(FLAGS, "from"):
    from_dir = Path(getattr(FLAGS, "from"))
    preset = offline.run_preset(from_dir, runs.read_config(from_dir),
                               FLAGS.preset if FLAGS["preset"].present else None)
  name = FLAGS.run_name or (f"seed{FLAGS.seed}x{FLAGS.seeds}"
                            + ("" if preset == "official" else f"-preset{preset}"))
  common_args = dict(out_dir=FLAGS.out_dir, restart=FLAGS.restart, progress=FLAGS.progress,
                     checkpoint_every=FLAGS.checkpoint_every)

  if getattr(FLAGS, "from"):
    pretrain_dir = Path(getattr(FLAGS, "from"))
    phase = runs.read_config(pretrain_dir).get("phase")
    if phase != "pretrain":
      raise O2OError(f"--from={pretrain_dir} is a '{phase}' run: o3f starts from a pretrain run of "
                     f"iql5 or iql")
  else:
    algo = FLAGS.offline_algo or "iql5"
    if algo not in IQL_ALGOS:
      raise O2OError(f"--offline_algo={algo}: O3F keeps IQL's objective online, so it fine-tunes "
                     f"{' or '.join(IQL_ALGOS)} (the paper: IQL with 5 critics, iql5)")
    pretrain_dir = offline.pretrain(
        algo=algo, dataset_id=FLAGS.dataset, seeds=FLAGS.seeds, seed=FLAGS.seed,
        num_steps=d["pretrain_steps"], eval_every=min(d["pretrain_eval_every"], d["pretrain_steps"]),
        eval_episodes=d["eval_episodes"], hidden_dims=d["hidden_dims"], batch_size=FLAGS.batch_size,
        preset=preset, chain="o3f", run_name=name, **common_args)
  env, _ = presets.dataset_env_and_level(runs.read_config(pretrain_dir)["dataset"])
  overrides = dict(num_candidates=FLAGS.o3f_num_candidates, omega=FLAGS.o3f_omega,
                   clip_candidates=FLAGS.o3f_clip_candidates,
                   online_actor_lr=FLAGS.o3f_online_actor_lr,
                   sigma=FLAGS.o3f_sigma if FLAGS.o3f_sigma is not None else o3f.sigma_for_env(env))
  finetune(pretrain_dir=pretrain_dir, overrides=overrides, online_steps=d["online_steps"],
                  warmup_steps=d["warmup_steps"], eval_every=d["eval_every"],
                  eval_episodes=d["eval_episodes"], utd=utd, batch_size=FLAGS.batch_size,
                  run_name=name, **common_args)
