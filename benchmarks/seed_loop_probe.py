"""How much of one seed's update rate survives when N seeds share one program (issue #19: CQL's
5-seed rate must be >= 0.9x its 1-seed rate, seed-updates per second).

  python -m benchmarks.seed_loop_probe --algo=cql            # 3x256, hopper-medium, CORL preset

Times `lax.scan` chunks of --chunk updates for 1 seed (plain, and inside a `lax.map` of one), N
seeds `vmap`ped, N seeds under `lax.map` (one after another inside one program) and N seeds as
one jitted 1-seed call each from the host, each for
--seconds after a warm-up call, and prints seed-updates/s and the ratio to 1 seed. Run it on a
quiet machine. (XLA_FLAGS="--xla_cpu_multi_thread_eigen=false" does not make this jaxlib's CPU
dots single-threaded: per-thread CPU ticks show the caller and one pool thread busy either way.)
"""
from __future__ import annotations

import time

import jax
from absl import app, flags

flags.DEFINE_string("algo", "cql", "Offline algorithm (registry name).")
flags.DEFINE_string("dataset", "o2o/hopper/medium-v0", "Minari dataset id.")
flags.DEFINE_integer("seeds", 5, "Seeds of the multi-seed programs.")
flags.DEFINE_integer("chunk", 100, "Updates per jitted call.")
flags.DEFINE_float("seconds", 25.0, "Measured seconds per program.")
flags.DEFINE_integer("repeats", 1, "Rounds of (1 seed, vmap, lax.map).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from o2o_jax import presets
  from o2o_jax import loops
  from o2o_jax.agents import registry
  from o2o_jax.data import prepared
  agent = registry.get(FLAGS.algo, registry.OFFLINE)
  config = agent.Config(**presets.offline_preset(FLAGS.algo, FLAGS.dataset, "corl")["config"])
  data = prepared.load_data(FLAGS.dataset)
  obs_dim, act_dim = data.device.observations.shape[-1], data.device.actions.shape[-1]
  chunk = loops.make_offline_chunk(agent.update, 256, FLAGS.chunk)
  vmapped = jax.jit(jax.vmap(chunk, in_axes=(0, 0, None)), donate_argnums=(0,))
  mapped = jax.jit(lambda s, k, d: jax.lax.map(lambda sk: chunk(sk[0], sk[1], d), (s, k)),
                   donate_argnums=(0,))

  single = jax.jit(chunk, donate_argnums=(0,))

  def host_loop(states, keys, data):     # the seeds one after another, each its own 1-seed call
    n = keys.shape[0]
    outs = [single(jax.tree_util.tree_map(lambda x: x[i], states), keys[i], data) for i in range(n)]
    return jax.tree_util.tree_map(lambda *xs: jax.numpy.stack(xs), *outs)

  def rate(fn, seeds):
    states = loops.init_states(agent, jax.random.split(jax.random.PRNGKey(0), seeds), obs_dim,
                               act_dim, config)
    keys = jax.random.split(jax.random.PRNGKey(1), seeds)
    states, _ = fn(states, keys, data.device)
    jax.block_until_ready(states)
    n, t0 = 0, time.time()
    while time.time() - t0 < FLAGS.seconds:
      states, _ = fn(states, keys, data.device)
      jax.block_until_ready(states)
      n += FLAGS.chunk
    return n * seeds / (time.time() - t0)

  for r in range(FLAGS.repeats):
    one, one_lm = rate(vmapped, 1), rate(mapped, 1)
    vm, lm = rate(vmapped, FLAGS.seeds), rate(mapped, FLAGS.seeds)
    hl = rate(host_loop, FLAGS.seeds)
    print(f"[{FLAGS.algo}] round {r}: 1 seed {one:.1f} upd/s (lax.map of 1: {one_lm:.1f}); "
          f"{FLAGS.seeds} seeds vmap {vm:.1f} seed-upd/s ({vm / one:.2f}x), lax.map {lm:.1f} "
          f"({lm / one:.2f}x), host loop of 1-seed calls {hl:.1f} ({hl / one:.2f}x)", flush=True)


if __name__ == "__main__":
  app.run(main)
