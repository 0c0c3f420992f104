"""Online RL from scratch (SAC or TD3) on a gymnasium MuJoCo env, N seeds vmapped in one job.

  python -m experiments.train_online --agent=sac --env=hopper --budget=quick --seeds=2

Writes runs/online/<agent>/<env>/<run-name>/ with config.json, metrics.csv, tensorboard/,
checkpoints/ and curves.png.
"""
from __future__ import annotations

import dataclasses
import time

from absl import flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_enum("agent", "sac", ["sac", "td3"], "Online learner.")
flags.DEFINE_string("env", "hopper", "Env: hopper, halfcheetah, walker2d, ant, or a gymnasium id.")
flags.DEFINE_integer("seeds", 1, "Seeds trained together as one vmapped program.")
flags.DEFINE_integer("seed", 0, "Base seed.")
common.define_budget_flag()
flags.DEFINE_integer("total_steps", None, "Env steps per seed (default: 300k paper, 10k quick).")
flags.DEFINE_integer("start_steps", None, "Uniform-random warm-up steps (default 5k paper, 1k quick).")
flags.DEFINE_integer("utd", 1, "Gradient updates per env step.")
flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_integer("eval_every", None, "Env steps between evaluations (10k paper, 2.5k quick).")
flags.DEFINE_integer("eval_episodes", None, "Deterministic evaluation episodes per seed (10 / 3).")
flags.DEFINE_list("hidden_dims", None, "Hidden sizes (default 256,256 paper; 64,64 quick).")
flags.DEFINE_string("out_dir", "runs", "Root of run directories.")
flags.DEFINE_string("run_name", None, "Run directory name (default: seed<seed>x<seeds>).")
flags.DEFINE_bool("restart", False, "Delete an existing run directory of this name first.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
common.define_checkpoint_flag()
common.define_distributed_flags()

_DEFAULTS = {"paper": dict(total_steps=300_000, start_steps=5_000, eval_every=10_000, eval_episodes=10,
                           hidden_dims=(256, 256)),
             "quick": dict(total_steps=10_000, start_steps=1_000, eval_every=2_500, eval_episodes=3,
                           hidden_dims=(64, 64))}


def main(argv):
  del argv
  seeds = common.initialize_distributed(FLAGS)    # this process's seeds (all of them with one)
  from o2o_jax import distributed, envs, loops, resume, runs
  from o2o_jax import logging as log_lib
  from o2o_jax.agents import registry
  from o2o_jax.checkpoints import Checkpointer
  from o2o_jax.types import seed_keys

  d = common.budget_values(_DEFAULTS, FLAGS, positive=("total_steps", "eval_every", "eval_episodes",
                                                       "utd", "batch_size"))
  env_id = envs.resolve_env_id(FLAGS.env)
  agent = registry.get(FLAGS.agent, registry.ONLINE)
  agent_config = agent.Config(hidden_dims=d["hidden_dims"])
  loop_config = loops.OnlineConfig(total_steps=d["total_steps"], start_steps=d["start_steps"],
                                   utd=FLAGS.utd, batch_size=FLAGS.batch_size,
                                   eval_every=d["eval_every"], eval_episodes=d["eval_episodes"])
  run_dir = runs.run_dir_for(FLAGS.out_dir, "online", FLAGS.agent, env_id,
                             FLAGS.run_name or f"seed{FLAGS.seed}x{FLAGS.seeds}")
  config = {"agent": FLAGS.agent, "env": env_id, "seeds": FLAGS.seeds, "seed": FLAGS.seed,
            "budget": FLAGS.budget, "agent_config": dataclasses.asdict(agent_config),
            "loop_config": dataclasses.asdict(loop_config)}
  primary = distributed.is_primary()
  resumed = runs.prepare_run_dir(run_dir, config, restart=FLAGS.restart)
  ckpt = Checkpointer(run_dir / "checkpoints")
  if resumed and ckpt.latest_step() == loop_config.total_steps:
    print(f"run already complete: {run_dir} (pass --restart to train again)")
    return
  print(f"run directory: {run_dir}")
  make_env = lambda: envs.make_env(env_id)
  probe = make_env()
  obs_dim, act_dim = envs.env_dims(probe)
  probe.close()
  t0 = time.time()
  states = loops.init_states(agent, seed_keys(FLAGS.seed, seeds), obs_dim, act_dim, agent_config)
  # run_online truncates metrics.csv to the resumed step; with several processes the primary writes
  # every process's seeds.
  writer = distributed.GatheredWriter(log_lib.MetricsWriter(run_dir) if primary else None, seeds)
  snapshots = resume.Snapshots(run_dir / "progress", FLAGS.checkpoint_every)
  states, _, history = loops.run_online(agent, states, make_env=make_env, num_seeds=seeds,
                                        seed=FLAGS.seed, config=loop_config, metrics_writer=writer,
                                        progress=FLAGS.progress and primary,
                                        desc=f"{FLAGS.agent} {env_id}", snapshots=snapshots)
  writer.close()
  snapshots.discard()
  states = distributed.gather_seeds(states)     # every seed, for the primary's checkpoint
  if primary:
    ckpt.save(loop_config.total_steps, states, {"config": config, "env_id": env_id,
                                                "obs_dim": obs_dim, "act_dim": act_dim})
    log_lib.plot_curves(run_dir / "metrics.csv", run_dir / "curves.png",
                        ["eval/return", "train/critic_loss"], title=f"{FLAGS.agent} on {env_id}")
  ckpt.close()
  final = distributed.gather_seeds(history[-1]["returns"]).mean(1)
  print(f"done in {time.time() - t0:.0f}s; final eval return per seed: "
        + ", ".join(f"{r:.1f}" for r in final) + f"; outputs in {run_dir}")


if __name__ == "__main__":
  common.run(main)
