"""pi_off and pi_on of an alignment run, evaluated with many episodes (is a pi_on < pi_off - 5 real?).

  python -m benchmarks.policy_eval runs/align/o2sac/o2o_hopper_medium-v0/seed0x5 [more] --episodes=50

The phases score a policy on a few episodes (the quick budget: 5 for pi_on, the offline run's last
evaluation for pi_off), and a single hopper episode can end anywhere between a fall at step 50 and a
full 1000 steps. This reads an O2SAC/O2TD3 alignment checkpoint, evaluates the frozen offline actor
(`offline_act`) and the aligned one (`act`), both deterministic, on `--episodes` fresh episodes per
seed (evaluation reset seeds start at --reset_seed, away from the phases' 10,000), and prints per
seed the mean normalised score with its standard error, and pi_on - pi_off with its own.
`--action_noise=σ` adds N(0, σ²) to every action of both policies (clipped to the action box): is the
expert's return fragile to a perturbation of the size of alignment's drift (`train/actor_drift`)?
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a script, so that importing this module (tests) leaves absl's global
  flags free."""
  flags.DEFINE_integer("episodes", 50, "Evaluation episodes per seed and policy.")
  flags.DEFINE_integer("reset_seed", 50_000, "First reset seed of the evaluation episodes.")
  flags.DEFINE_string("out", "", "Optional JSON file for the per-seed, per-episode scores.")
  flags.DEFINE_float("action_noise", 0.0, "Std of Gaussian noise added to each action of both "
                     "policies (clipped to the env's action box); 0: the deterministic policies.")


def with_action_noise(policy, sigma: float, low, high, seed: int = 0):
  """`policy` with N(0, sigma²) added to its actions and clipped to [low, high]; sigma 0: `policy`."""
  if sigma <= 0:
    return policy
  rng = np.random.default_rng(seed)

  def noisy(*args):
    a = np.asarray(policy(*args))
    return np.clip(a + sigma * rng.standard_normal(a.shape), low, high).astype(a.dtype)
  return noisy


def _scores(act, states, data, seeds):
  from o2o_jax import envs, loops
  evaluator = envs.Evaluator(data.make_env, seeds, FLAGS.episodes, seed=FLAGS.reset_seed)
  policy = loops.make_eval_policy(act, data.obs_mean, data.obs_std)
  env = data.make_env()
  policy = with_action_noise(policy, FLAGS.action_noise, env.action_space.low, env.action_space.high,
                             seed=FLAGS.reset_seed)
  env.close()
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
    noise = f", action noise σ {FLAGS.action_noise:g}" if FLAGS.action_noise > 0 else ""
    print(f"{run_dir} ({run.config['agent']}, {FLAGS.episodes} episodes per seed and policy{noise}; "
          "mean ± standard error)")
    print(f"{'seed':>4}  {'pi_off':>13}  {'pi_on':>13}  {'pi_on - pi_off':>14}")
    for i in range(seeds):
      print(f"{i:>4}  {_fmt(off[i])}  {_fmt(on[i])}  {_fmt(on[i] - off[i])}")
    # Seed mean: per episode index the mean over seeds, then mean and standard error over episodes.
    print(f"{'mean':>4}  {_fmt(off.mean(0))}  {_fmt(on.mean(0))}  {_fmt(on.mean(0) - off.mean(0))}")
    report[str(run_dir)] = {"pi_off": off.tolist(), "pi_on": on.tolist(), "episodes": FLAGS.episodes,
                            "reset_seed": FLAGS.reset_seed, "action_noise": FLAGS.action_noise}
  if FLAGS.out:
    Path(FLAGS.out).write_text(json.dumps(report))


if __name__ == "__main__":
  define_flags()
  app.run(main)
