"""Update rate of one offline algorithm's 1-seed chunk under several XLA_FLAGS settings (issue #19:
TD3+BC's 1-seed rate must be >= 2x CORL's on the CPU; it misses on some hosts).

  python -m benchmarks.xla_flags_probe --algo=td3bc --flags="" --flags="--xla_cpu_use_xnnpack=true"

Each setting runs in its own process (XLA reads XLA_FLAGS once), timing `lax.scan` chunks of --chunk
updates for --seconds after a warm-up call; the settings alternate for --rounds rounds so that a
change in the machine's load hits them alike. Prints updates/s per setting and round, and each
setting's median against the first one's. Run it on a quiet machine.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_string("algo", "td3bc", "Offline algorithm (registry name).")
flags.DEFINE_string("dataset", "o2o/hopper/medium-v0", "Minari dataset id.")
flags.DEFINE_multi_string("flags", [""], "XLA_FLAGS settings to compare (repeat the flag); the "
                          "first is the baseline.")
flags.DEFINE_integer("chunk", 500, "Updates per jitted call (vs_corl's speed part uses 500).")
flags.DEFINE_float("seconds", 10.0, "Measured seconds per setting and round.")
flags.DEFINE_integer("rounds", 2, "Rounds over the settings.")
flags.DEFINE_bool("child", False, "Internal: time one setting in this process and print JSON.")
FLAGS = flags.FLAGS


def time_one_setting() -> float:
  import jax
  from o2o_jax import loops, presets
  from o2o_jax.agents import registry
  from o2o_jax.data import prepared
  agent = registry.get(FLAGS.algo, registry.OFFLINE)
  config = agent.Config(**presets.offline_preset(FLAGS.algo, FLAGS.dataset, "corl")["config"])
  data = prepared.load_data(FLAGS.dataset)
  obs_dim, act_dim = data.device.observations.shape[-1], data.device.actions.shape[-1]
  program = loops.multi_seed_offline_chunk(loops.make_offline_chunk(agent.update, 256, FLAGS.chunk))
  states = loops.init_states(agent, jax.random.split(jax.random.PRNGKey(0), 1), obs_dim, act_dim,
                             config)
  keys = jax.random.split(jax.random.PRNGKey(1), 1)
  states, _ = program(states, keys, data.device)
  jax.block_until_ready(states)
  n, t0 = 0, time.time()
  while time.time() - t0 < FLAGS.seconds:
    states, _ = program(states, keys, data.device)
    jax.block_until_ready(states)
    n += FLAGS.chunk
  return n / (time.time() - t0)


def main(argv):
  del argv
  if FLAGS.child:
    print(json.dumps({"rate": time_one_setting()}), flush=True)
    return
  rates = {s: [] for s in FLAGS.flags}
  for r in range(FLAGS.rounds):
    for setting in FLAGS.flags:
      env = dict(os.environ, XLA_FLAGS=setting)
      out = subprocess.run([sys.executable, "-m", "benchmarks.xla_flags_probe", "--child",
                            f"--algo={FLAGS.algo}", f"--dataset={FLAGS.dataset}",
                            f"--chunk={FLAGS.chunk}", f"--seconds={FLAGS.seconds}"],
                           env=env, capture_output=True, text=True)
      if out.returncode != 0:
        print(f"round {r} [{setting or 'defaults'}]: failed: {out.stderr.strip().splitlines()[-1:]}",
              flush=True)
        continue
      rate = json.loads(out.stdout.strip().splitlines()[-1])["rate"]
      rates[setting].append(rate)
      print(f"round {r} [{setting or 'defaults'}]: {rate:.1f} upd/s", flush=True)
  base = statistics.median(rates[FLAGS.flags[0]]) if rates[FLAGS.flags[0]] else float("nan")
  print(f"\n| XLA_FLAGS | {FLAGS.algo} 1-seed upd/s (rounds) | median vs first |\n|---|---|---|")
  for setting, rs in rates.items():
    med = statistics.median(rs) if rs else float("nan")
    print(f"| `{setting or 'defaults'}` | {', '.join(f'{x:.0f}' for x in rs)} | {med / base:.2f}x |")


if __name__ == "__main__":
  app.run(main)
