"""Offline pre-training on a Minari dataset, N seeds vmapped in one job.

  python -m experiments.pretrain --algo=td3bc --dataset=o2o/hopper/medium-v0 --seeds=5 --budget=quick

Writes runs/pretrain/<algo>/<dataset>/<run-name>/ (config.json, metrics.csv, tensorboard/, curves.png,
checkpoints/). The checkpoint metadata carries the observation statistics and the reward transform,
so the later phases (`--from=<run dir>`) reuse exactly the same preprocessing.
"""
from __future__ import annotations

import dataclasses
import time

from absl import flags

from experiments import common, presets

FLAGS = flags.FLAGS
flags.DEFINE_enum("algo", "td3bc", ["td3bc", "cql", "iql", "awac", "bc"], "Offline algorithm.")
flags.DEFINE_string("dataset", "o2o/hopper/medium-v0", "Minari dataset id (local store or shipped).")
flags.DEFINE_integer("seeds", 1, "Seeds trained together as one vmapped program.")
flags.DEFINE_integer("seed", 0, "Base seed.")
common.define_budget_flag()
flags.DEFINE_integer("num_steps", None, "Gradient steps (default: 1M paper, 5k quick).")
flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_integer("eval_every", None, "Steps between evaluations (10k paper, 1k quick).")
flags.DEFINE_integer("eval_episodes", None, "Deterministic evaluation episodes per seed (10 / 3).")
flags.DEFINE_integer("chunk", None, "Updates fused per lax.scan call (default: eval_every, at most 5k).")
flags.DEFINE_list("hidden_dims", None, "Hidden sizes (default 256,256 paper; 64,64 quick).")
flags.DEFINE_bool("normalize_states", True, "Standardise observations with the dataset's mean/std.")
flags.DEFINE_enum("preset", "corl", presets.PRESETS, "Per-dataset hyperparameters: 'corl' (CORL's "
                  "configs, e.g. IQL's deterministic actor on hopper-medium) or 'none' (algorithm "
                  "defaults, as the official OCR-CFT code uses).")
flags.DEFINE_string("out_dir", "runs", "Root of run directories.")
flags.DEFINE_string("run_name", None, "Run directory name (default: seed<seed>x<seeds>).")
flags.DEFINE_bool("restart", False, "Delete an existing run directory of this name first.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")

_DEFAULTS = {"paper": dict(num_steps=1_000_000, eval_every=10_000, eval_episodes=10, hidden_dims=(256, 256)),
             "quick": dict(num_steps=5_000, eval_every=1_000, eval_episodes=3, hidden_dims=(64, 64))}


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  from o2o_jax import envs, loops, runs
  from o2o_jax import logging as log_lib
  from o2o_jax.agents import registry
  from o2o_jax.checkpoints import Checkpointer
  from o2o_jax.data import load_dataset
  from o2o_jax.errors import O2OError
  from o2o_jax.types import Transition, seed_keys

  agent = registry.get(FLAGS.algo, registry.OFFLINE)
  d = common.budget_values(_DEFAULTS, FLAGS, positive=("num_steps", "eval_every", "eval_episodes",
                                                       "batch_size"))
  chunk = FLAGS.chunk or min(d["eval_every"], 5_000)
  dataset = load_dataset(FLAGS.dataset)
  if FLAGS.batch_size > dataset.size:
    raise O2OError(f"--batch_size ({FLAGS.batch_size}) is larger than the dataset "
                   f"({dataset.size} transitions)")
  env_id = envs.dataset_env_id(dataset)
  make_env = lambda: envs.make_env(env_id, dataset.eval_env_spec)
  probe = make_env()
  envs.check_dataset_matches_env(dataset, probe)
  probe.close()

  preset = presets.offline_preset(FLAGS.algo, FLAGS.dataset, FLAGS.preset)
  agent_config = agent.Config(hidden_dims=d["hidden_dims"], **preset["config"])
  if "max_steps" in {f.name for f in dataclasses.fields(agent_config)}:
    agent_config = dataclasses.replace(agent_config, max_steps=d["num_steps"])
  scale = presets.reward_scale(dataset.episode_returns) if preset["normalize_reward"] else 1.0
  loop_config = loops.OfflineConfig(num_steps=d["num_steps"], batch_size=FLAGS.batch_size, chunk=chunk,
                                    eval_every=d["eval_every"], eval_episodes=d["eval_episodes"])
  mean = dataset.obs_mean if FLAGS.normalize_states else np.zeros_like(dataset.obs_mean)
  std = dataset.obs_std if FLAGS.normalize_states else np.ones_like(dataset.obs_std)
  config = {"phase": "pretrain", "algo": FLAGS.algo, "dataset": FLAGS.dataset, "env": env_id,
            "seeds": FLAGS.seeds, "seed": FLAGS.seed, "budget": FLAGS.budget,
            "normalize_states": FLAGS.normalize_states, "preset": FLAGS.preset, "reward_scale": scale,
            "agent_config": dataclasses.asdict(agent_config), "loop_config": dataclasses.asdict(loop_config)}
  run_dir = runs.run_dir_for(FLAGS.out_dir, "pretrain", FLAGS.algo, FLAGS.dataset,
                             FLAGS.run_name or f"seed{FLAGS.seed}x{FLAGS.seeds}")
  resumed = runs.prepare_run_dir(run_dir, config, restart=FLAGS.restart)
  ckpt = Checkpointer(run_dir / "checkpoints")
  if resumed and ckpt.latest_step() == loop_config.num_steps:
    print(f"run already complete: {run_dir} (pass --restart to train again)")
    return
  print(f"run directory: {run_dir}\ndataset {FLAGS.dataset}: {dataset.size} transitions, "
        f"{len(dataset.episode_returns)} episodes, mean normalised return "
        f"{float(np.mean(dataset.normalized_score(dataset.episode_returns))):.1f}")

  t = dataset.transitions
  data = Transition(observations=jnp.asarray((t.observations - mean) / std), actions=jnp.asarray(t.actions),
                    rewards=jnp.asarray(t.rewards * scale),
                    next_observations=jnp.asarray((t.next_observations - mean) / std),
                    terminals=jnp.asarray(t.terminals))
  states = loops.init_states(agent, seed_keys(FLAGS.seed, FLAGS.seeds), dataset.observation_dim,
                             dataset.action_dim, agent_config)
  metadata = {"config": config, "algo": FLAGS.algo, "dataset_id": FLAGS.dataset, "env_id": env_id,
              "obs_dim": dataset.observation_dim, "act_dim": dataset.action_dim,
              "obs_mean": mean, "obs_std": std, "reward_transform": {"scale": scale, "shift": 0.0},
              "ref_min_score": dataset.ref_min_score, "ref_max_score": dataset.ref_max_score}
  writer = log_lib.MetricsWriter(run_dir)
  writer.truncate_after(0)
  t0 = time.time()
  states, history = loops.run_offline(
      agent, states, data, make_env=make_env, num_seeds=FLAGS.seeds, seed=FLAGS.seed,
      config=loop_config, obs_mean=mean, obs_std=std, metrics_writer=writer,
      normalized_score=dataset.normalized_score,
      on_eval=lambda step, s, r: ckpt.save(step, s, {**metadata, "step": step}),
      progress=FLAGS.progress, desc=f"{FLAGS.algo} {FLAGS.dataset}")
  writer.close()
  ckpt.close()
  log_lib.plot_curves(run_dir / "metrics.csv", run_dir / "curves.png",
                      ["eval/normalized_score", "train/critic_loss", "train/actor_loss", "train/bc_loss"],
                      title=f"{FLAGS.algo} on {FLAGS.dataset}")
  final = dataset.normalized_score(history[-1]["returns"]).mean(1)
  print(f"done in {time.time() - t0:.0f}s; final normalised score per seed: "
        + ", ".join(f"{x:.1f}" for x in final) + f"; outputs in {run_dir}")


if __name__ == "__main__":
  common.run(main)
