"""How far pi_on has moved from pi_off, per seed, on the dataset's states (O2TD3/O2SAC runs).

  python -m benchmarks.actor_drift runs/align/o2td3/o2o_walker2d_medium-v0/seed0x5 [more run dirs]

Prints the RMS over states and action dimensions of pi_on(s) - pi_off(s) (deterministic actions),
and the largest per-dimension gap. Alignment logs the same RMS on its batches as train/actor_drift;
this reads a checkpoint, e.g. of a run made before that metric existed.

With --start_gradient, also the slope alignment starts from: the re-evaluated critic's (the align
run's `from`) RMS over states of |grad_a Q_1(s, a)| at a = pi_off(s), per seed. Alignment's actor
ascends Q_1 (O2TD3: -Q_1, O2SAC: its SAC loss), so a steeper start predicts a larger drift.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("states", 20_000, "Dataset states to compare the two policies on.")
flags.DEFINE_bool("start_gradient", False, "Also print the re-evaluated critic's action-gradient "
                  "RMS at pi_off (the slope alignment starts from), per seed.")


def main(argv):
  from o2o_jax import recipe
  from o2o_jax.agents.o2o.common import actor_drift
  from o2o_jax.data import prepared
  for run_dir in argv[1:]:
    run = recipe.load_run(Path(run_dir))
    cfg, agent, states, meta = run.config, run.module, run.states, run.meta
    data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"],
                              meta["reward_transform"]["scale"])
    obs = data.device.observations[:FLAGS.states]
    key = jax.random.PRNGKey(0)
    on, off = jax.vmap(lambda s: (agent.act(s, obs, key, explore=False),
                                  agent.offline_act(s, obs, key)))(states)
    rms = np.asarray(jax.vmap(actor_drift)(on, off))
    gap = np.asarray(on - off)
    fmt = lambda xs: " ".join(f"{x:.3f}" for x in xs)
    print(f"{run_dir} ({cfg['agent']}): RMS per seed {fmt(rms)}; max |gap| per seed "
          f"{fmt(np.abs(gap).max(axis=(1, 2)))}")
    if FLAGS.start_gradient:
      print(f"  start slope |grad_a Q_1(s, pi_off(s))| RMS per seed "
            f"{fmt(start_gradient(recipe.load_run(Path(cfg['from'])), obs))}")


def start_gradient(run, obs):
  """Per seed: sqrt(mean over states of |grad_a Q_1(s, a)|^2) at a = pi_off(s), on `run`'s critic."""
  import jax.numpy as jnp
  agent = run.module

  def per_seed(s):
    a = agent.offline_act(s, obs, jax.random.PRNGKey(0))
    q1 = lambda act: s.critic.apply_fn(s.critic.params, obs, act)[0].sum()
    g = jax.grad(q1)(a)
    return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(g), axis=-1)))
  return np.asarray(jax.jit(jax.vmap(per_seed))(run.states))


if __name__ == "__main__":
  app.run(main)
