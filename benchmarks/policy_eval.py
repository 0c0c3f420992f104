"""pi_off and pi_on of an alignment run, evaluated with many episodes (is a pi_on < pi_off - 5 real?).

  python -m benchmarks.policy_eval runs/align/o2sac/o2o_hopper_medium-v0/seed0x5 [more] --episodes=50

The phases score a policy on a few episodes (the quick budget: 5 for pi_on, the offline run's last
evaluation for pi_off), and a single hopper episode can end anywhere between a fall at step 50 and a
full 1000 steps. This reads an O2SAC/O2TD3 alignment checkpoint, evaluates the frozen offline actor
(`offline_act`) and the aligned one (`act`), both deterministic, on `--episodes` fresh episodes per
seed (evaluation reset seeds start at --reset_seed, away from the phases' 10,000), and prints per
seed the mean normalised score with its standard error, and pi_on - pi_off with its own.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("episodes", 50, "Evaluation episodes per seed and policy.")
flags.DEFINE_integer("reset_seed", 50_000, "First reset seed of the evaluation episodes.")
flags.DEFINE_string("out", "", "Optional JSON file for the per-seed, per-episode scores.")


def _scores(act, states, data, seeds):
  from o2o_jax import envs, loops
  evaluator = envs.Evaluator(data.make_env, seeds, FLAGS.episodes, seed=FLAGS.reset_seed)
  policy = loops.make_eval_policy(act, data.obs_mean, data.obs_std)
  steps = iter(range(10**9))
  try:
    returns = evaluator.run(lambda o: policy(states, o, next(steps)))
  finally:
    evaluator.close()
  return np.asarray(data.normalized_score(returns), np.float64)   # [seeds, episodes]


def _fmt(x):
  m, se = x.mean(), x.std(ddof=1) / np.sqrt(x.size) if x.size > 1 else float("nan")
  return f"{m:6.1f} ± {se:4.1f}"


def main(argv):
  from o2o_jax import recipe
  from o2o_jax.data import prepared
  report = {}
  for run_dir in argv[1:]:
    run = recipe.load_run(Path(run_dir), phases=("align",), want="an O2SAC/O2TD3 alignment run")
    meta, states, agent = run.meta, run.states, run.module
    data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"],
                              meta["reward_transform"]["scale"])
    seeds = run.config["seeds"]
    off = _scores(lambda s, o, k, e: agent.offline_act(s, o, k), states, data, seeds)
    on = _scores(agent.act, states, data, seeds)
    print(f"{run_dir} ({run.config['agent']}, {FLAGS.episodes} episodes per seed and policy; "
          "mean ± standard error)")
    print(f"{'seed':>4}  {'pi_off':>13}  {'pi_on':>13}  {'pi_on - pi_off':>14}")
    for i in range(seeds):
      print(f"{i:>4}  {_fmt(off[i])}  {_fmt(on[i])}  {_fmt(on[i] - off[i])}")
    # Seed mean: per episode index the mean over seeds, then mean and standard error over episodes.
    print(f"{'mean':>4}  {_fmt(off.mean(0))}  {_fmt(on.mean(0))}  {_fmt(on.mean(0) - off.mean(0))}")
    report[str(run_dir)] = {"pi_off": off.tolist(), "pi_on": on.tolist(), "episodes": FLAGS.episodes,
                            "reset_seed": FLAGS.reset_seed}
  if FLAGS.out:
    Path(FLAGS.out).write_text(json.dumps(report))


if __name__ == "__main__":
  app.run(main)
