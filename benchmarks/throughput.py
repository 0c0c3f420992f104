"""Update throughput of the agents' jitted steps, against the machine's own matmul rate.

  python -m benchmarks.throughput --agents=sac,td3 --seeds=1,5,16

For each agent: compile time; updates/s with one jit call per update and with lax.scan chunks;
seed-updates/s with S seeds vmapped (scan chunks); achieved GFLOP/s (XLA's cost analysis of one update)
against a 256x256 @ 256x256 matmul chain measured in the same run (the practical roofline); and the
online loop's env-steps/s at UTD 1 next to the update-only rate. Writes JSON + a markdown table to
benchmarks/results/throughput_<device>.{json,md}.
"""
from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("agents", ["sac", "td3"], "Online agents to measure.")
flags.DEFINE_list("seeds", ["1", "5", "16"], "Seed counts to vmap.")
flags.DEFINE_integer("hidden", 256, "Hidden width (two layers).")
flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_integer("chunk", 50, "Updates per lax.scan chunk.")
flags.DEFINE_float("seconds", 5.0, "Measuring time per configuration.")
flags.DEFINE_integer("online_steps", 1500, "Env steps (after warm-up) for the online-loop rate.")
flags.DEFINE_string("out", "benchmarks/results", "Output folder.")

OBS, ACT = 11, 3   # Hopper-v5


def _timeit(fn, seconds):
  """Calls fn() (which must block) until `seconds` pass; returns calls per second."""
  fn()
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    fn()
    n += 1
  return n / (time.perf_counter() - t0)


def matmul_roofline(n=256, seconds=3.0):
  import jax, jax.numpy as jnp
  x, w = jnp.ones((n, n)), jnp.ones((n, n)) / n
  f = jax.jit(lambda x, w: jax.lax.fori_loop(0, 100, lambda i, x: x @ w, x))
  rate = _timeit(lambda: f(x, w).block_until_ready(), seconds)
  return rate * 100 * 2 * n ** 3 / 1e9


def measure_agent(name, seeds_list, roofline):
  import jax
  from o2o_jax import loops
  from o2o_jax.agents import registry
  from o2o_jax.types import Transition, seed_keys
  agent = registry.get(name)
  cfg = agent.Config(hidden_dims=(FLAGS.hidden, FLAGS.hidden))
  n = 100_000
  k = jax.random.split(jax.random.PRNGKey(0), 5)
  data = Transition(jax.random.normal(k[0], (n, OBS)), jax.random.uniform(k[1], (n, ACT), minval=-1, maxval=1),
                    jax.random.normal(k[2], (n,)), jax.random.normal(k[3], (n, OBS)),
                    (jax.random.uniform(k[4], (n,)) < 0.01).astype("float32"))
  state = agent.init(jax.random.PRNGKey(0), OBS, ACT, cfg)
  batch = jax.tree_util.tree_map(lambda x: x[:FLAGS.batch_size], data)
  out = {"agent": name}

  # One jit call per update.
  single = jax.jit(agent.update)
  t0 = time.perf_counter()
  compiled = single.lower(state, batch, jax.random.PRNGKey(0)).compile()
  out["compile_s"] = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  out["gflop_per_update"] = float(cost.get("flops", float("nan"))) / 1e9
  holder = [state]
  key = jax.random.PRNGKey(1)

  def one():
    holder[0], info = single(holder[0], batch, key)
    jax.block_until_ready(info)
  out["updates_per_s_single_call"] = _timeit(one, FLAGS.seconds)

  # Scan chunks, vmapped over seeds; the dataset shared (in_axes=None).
  chunk = loops.make_offline_chunk(agent.update, FLAGS.batch_size, FLAGS.chunk)
  out["seed_updates_per_s"] = {}
  for s in seeds_list:
    states = jax.vmap(lambda kk: agent.init(kk, OBS, ACT, cfg))(seed_keys(0, s))
    fn = loops.vmap_offline_chunk(chunk)
    keys = seed_keys(1, s)
    h = [loops.unalias(states)]

    def run():
      h[0], m = fn(h[0], keys, data)
      jax.block_until_ready(m)
    rate = _timeit(run, FLAGS.seconds) * FLAGS.chunk * s
    out["seed_updates_per_s"][s] = rate
  one_seed = out["seed_updates_per_s"][seeds_list[0]]
  out["updates_per_s_scan"] = one_seed
  out["vmap_ratio"] = {s: r / one_seed for s, r in out["seed_updates_per_s"].items()}
  out["gflops_achieved"] = out["gflop_per_update"] * max(out["seed_updates_per_s"].values())
  out["roofline_fraction"] = out["gflops_achieved"] / roofline
  out["online"] = measure_online(agent, cfg)
  out["online"]["overhead_vs_update_only"] = 1 - out["online"]["env_steps_per_s"] / out["updates_per_s_single_call"]
  return out


def measure_online(agent, cfg):
  import jax
  from o2o_jax import envs, loops
  steps = FLAGS.online_steps
  mk = lambda: envs.make_env("Hopper-v5")
  states = jax.vmap(lambda k: agent.init(k, OBS, ACT, cfg))(jax.random.split(jax.random.PRNGKey(0), 1))
  conf = lambda total: loops.OnlineConfig(total_steps=total, start_steps=100, eval_every=10 ** 9,
                                          eval_episodes=1, buffer_size=10_000)
  # Warm-up run compiles; the measured run reuses the cached executables (same buffer size). The
  # clock runs from step 200 (updates under way) to the last step, before the final evaluation.
  loops.run_online(agent, states, make_env=mk, num_seeds=1, seed=0, config=conf(300), progress=False)
  marks = {}

  def on_step(t, *_):
    if t in (200, steps + 200):
      marks[t] = time.perf_counter()

  loops.run_online(agent, states, make_env=mk, num_seeds=1, seed=0, config=conf(steps + 200),
                   callbacks=loops.OnlineCallbacks(on_step=on_step), progress=False)
  return {"env_steps_per_s": steps / (marks[steps + 200] - marks[200]), "utd": 1}


def main(argv):
  del argv
  import jax
  seeds_list = [int(s) for s in FLAGS.seeds]
  device = jax.devices()[0]
  roofline = matmul_roofline()
  results = {"device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
             "host": platform.processor() or platform.machine(), "jax": jax.__version__,
             "matmul_gflops": roofline, "hidden": FLAGS.hidden, "batch_size": FLAGS.batch_size,
             "chunk": FLAGS.chunk, "agents": []}
  for name in FLAGS.agents:
    r = measure_agent(name, seeds_list, roofline)
    results["agents"].append(r)
    print(json.dumps(r, indent=1))
  results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  out = Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  tag = device.platform
  (out / f"throughput_{tag}.json").write_text(json.dumps(results, indent=1))
  lines = [f"# Throughput on {results['device']} ({results['host']}), jax {results['jax']}", "",
           f"Matmul roofline (256x256 @ 256x256 chain): **{roofline:.1f} GFLOP/s**. "
           f"Networks {FLAGS.hidden}x{FLAGS.hidden}, batch {FLAGS.batch_size}, scan chunk {FLAGS.chunk}.", "",
           "| agent | compile s | GFLOP/update | upd/s (1 call each) | upd/s (scan) | "
           + " | ".join(f"seed-upd/s x{s} (ratio)" for s in seeds_list)
           + " | GFLOP/s (% roofline) | online env-steps/s UTD1 (overhead) |",
           "|" + "---|" * (7 + len(seeds_list))]
  for r in results["agents"]:
    lines.append(
        f"| {r['agent']} | {r['compile_s']:.1f} | {r['gflop_per_update']:.3f} | "
        f"{r['updates_per_s_single_call']:.0f} | {r['updates_per_s_scan']:.0f} | "
        + " | ".join(f"{r['seed_updates_per_s'][s]:.0f} ({r['vmap_ratio'][s]:.2f})" for s in seeds_list)
        + f" | {r['gflops_achieved']:.1f} ({100 * r['roofline_fraction']:.0f}%) | "
          f"{r['online']['env_steps_per_s']:.0f} ({100 * r['online']['overhead_vs_update_only']:.0f}%) |")
  lines.append(f"\nPeak host memory: {results['peak_rss_mb']:.0f} MB.")
  (out / f"throughput_{tag}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
