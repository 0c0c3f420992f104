"""Which seed loop the online update step should use on a one-device CPU: `vmap` (the online
default) or `lax.map` of the 1-seed vmapped program (the offline default there, `loops.seed_loop`).

  python -m benchmarks.online_seed_loop_probe --utd=10       # O2SAC's paper sizes, 5 seeds

Times `loops.make_online_step` (the UTD updates on half-offline batches, then the next action) for
--seeds seeds: SAC with O2SAC's paper networks (3x256 actor and critics, LayerNorm, orthogonal),
batch 256, full per-seed buffers of --capacity rows and --offline shared offline rows (random
data: the rate does not depend on the values). --rounds alternating rounds of --steps env steps
after a warm-up call each; prints env steps/s per round. Run it on a quiet machine.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

flags.DEFINE_integer("seeds", 5, "Seeds stepped together.")
flags.DEFINE_integer("utd", 10, "Updates per env step (O2SAC 10, O2TD3 1).")
flags.DEFINE_integer("capacity", 100_000, "Rows of each seed's online buffer (the paper's 100k steps).")
flags.DEFINE_integer("offline", 200_000, "Shared offline rows.")
flags.DEFINE_integer("steps", 30, "Env steps per round and loop.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
FLAGS = flags.FLAGS
OBS, ACT = 17, 6      # HalfCheetah / Walker2d sizes


def _rows(rng, n, lead=()):
  from o2o_jax.types import Transition
  return Transition(observations=jnp.asarray(rng.normal(size=lead + (n, OBS)), jnp.float32),
                    actions=jnp.asarray(rng.uniform(-1, 1, lead + (n, ACT)), jnp.float32),
                    rewards=jnp.asarray(rng.normal(size=lead + (n,)), jnp.float32),
                    next_observations=jnp.asarray(rng.normal(size=lead + (n, OBS)), jnp.float32),
                    terminals=jnp.zeros(lead + (n,), jnp.float32))


def main(argv):
  del argv
  from o2o_jax import loops
  from o2o_jax.agents.online import sac
  from o2o_jax.data import replay
  from o2o_jax.types import seed_keys
  rng, S = np.random.default_rng(0), FLAGS.seeds
  offline = _rows(rng, FLAGS.offline)
  cfg = sac.Config(hidden_dims=(256, 256, 256), layer_norm=True, orthogonal_init=True)
  states = loops.unalias(loops.init_states(sac, seed_keys(0, S), OBS, ACT, cfg))
  buffers = replay.init(FLAGS.capacity, OBS, ACT, S)
  buffers = buffers.replace(data=_rows(rng, FLAGS.capacity, (S,)),
                            size=jnp.full((S,), FLAGS.capacity, buffers.size.dtype))
  one = loops.vmap_lockstep(loops.make_online_step(sac.update, sac.act, 256, FLAGS.utd, 0.5),
                            in_axes=(0, 0, 0, 0, None))

  def mapped(states, buffers, obs, keys, offline):
    def per_seed(args):
      args = jax.tree_util.tree_map(lambda x: x[None], args)
      return jax.tree_util.tree_map(lambda x: x[0], one(*args, offline))
    return jax.lax.map(per_seed, (states, buffers, obs, keys))

  programs = {"vmap": jax.jit(one, donate_argnums=(0,)), "map": jax.jit(mapped, donate_argnums=(0,))}
  obs, keys = jnp.zeros((S, OBS)), seed_keys(1, S)
  for fn in programs.values():
    states, action, keys, _ = fn(states, buffers, obs, keys, offline)
    jax.block_until_ready(action)
  rates = {name: [] for name in programs}
  for _ in range(FLAGS.rounds):
    for name, fn in programs.items():
      t = time.time()
      for _ in range(FLAGS.steps):
        states, action, keys, _ = fn(states, buffers, obs, keys, offline)
      jax.block_until_ready(action)
      rates[name].append(FLAGS.steps / (time.time() - t))
  print(f"UTD {FLAGS.utd}, {S} seeds, env steps/s per round: "
        + "; ".join(f"{n} {', '.join(f'{r:.2f}' for r in rs)}" for n, rs in rates.items()), flush=True)


if __name__ == "__main__":
  app.run(main)
