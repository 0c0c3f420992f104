"""Offline pre-training on a Minari dataset, N seeds vmapped in one job.

  python -m experiments.pretrain --algo=td3bc --dataset=o2o/hopper/medium-v0 --seeds=5 --budget=quick

Writes runs/pretrain/<algo>/<dataset>/<run-name>/ (config.json, metrics.csv, tensorboard/, curves.png,
checkpoints/). The checkpoint metadata carries the observation statistics and the reward transform,
so the later phases (`--from=<run dir>`) reuse exactly the same preprocessing.
"""
from __future__ import annotations

from absl import flags

from experiments import common
from o2o_jax import presets

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
flags.DEFINE_list("hidden_dims", None, "Hidden sizes (default: the algorithm's own, CQL and AWAC "
                  "3x256, TD3+BC, IQL and BC 2x256; quick 64,64).")
flags.DEFINE_bool("normalize_states", None, "Standardise observations with the dataset's mean/std "
                  "(default: the preset's; on, except CQL on AntMaze with --preset=official).")
flags.DEFINE_enum("preset", "corl", presets.PRESETS, "Per-dataset hyperparameters: 'corl' (CORL's "
                  "configs, e.g. IQL's deterministic actor and CQL's reward normalisation on "
                  "hopper-medium), 'official' (the official OCR-CFT offline scripts, as the O2SAC, O2TD3 "
                  "and O2PPO chains of experiments.finetune use by default: raw MuJoCo rewards, "
                  "their AntMaze configs for cql, td3bc and iql; awac and bc keep their defaults) or "
                  "'none' (algorithm defaults, raw rewards).")
flags.DEFINE_string("out_dir", "runs", "Root of run directories.")
flags.DEFINE_string("run_name", None, "Run directory name (default: seed<seed>x<seeds>).")
flags.DEFINE_bool("restart", False, "Delete an existing run directory of this name first.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
common.define_checkpoint_flag()
common.define_distributed_flags()

# hidden_dims None: the algorithm's own architecture (only 'quick' shrinks the networks).
_DEFAULTS = {"paper": dict(num_steps=1_000_000, eval_every=10_000, eval_episodes=10, hidden_dims=None),
             "quick": dict(num_steps=5_000, eval_every=1_000, eval_episodes=3, hidden_dims=(64, 64))}


def main(argv):
  del argv
  common.initialize_distributed(FLAGS)
  from o2o_jax.recipes import offline
  d = common.budget_values(_DEFAULTS, FLAGS, positive=("num_steps", "eval_every", "eval_episodes",
                                                       "batch_size"))
  run_dir = offline.pretrain(
      algo=FLAGS.algo, dataset_id=FLAGS.dataset, seeds=FLAGS.seeds, seed=FLAGS.seed,
      num_steps=d["num_steps"], eval_every=d["eval_every"], eval_episodes=d["eval_episodes"],
      hidden_dims=d["hidden_dims"], batch_size=FLAGS.batch_size, chunk=FLAGS.chunk,
      preset=FLAGS.preset, normalize_states=FLAGS.normalize_states, out_dir=FLAGS.out_dir,
      run_name=FLAGS.run_name, restart=FLAGS.restart, progress=FLAGS.progress,
      checkpoint_every=FLAGS.checkpoint_every)
  print(f"outputs in {run_dir}")


if __name__ == "__main__":
  common.run(main)
