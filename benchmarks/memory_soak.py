"""Host-memory soak test: a long online run with periodic resumable snapshots, RSS sampled from
/proc while it runs. Flat RSS means no leak in the loop, the replay buffer or the snapshots.

  python -m benchmarks.memory_soak --steps=500000 --checkpoint_every=10000

Writes benchmarks/results/memory_soak.{csv,json}. Small networks (the subject is host memory, not
learning); TD3 on Hopper-v5, 1 seed.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 500_000, "Online env steps.")
flags.DEFINE_integer("checkpoint_every", 10_000, "Steps between resumable snapshots.")
flags.DEFINE_integer("sample_every_s", 10, "Seconds between RSS samples.")
flags.DEFINE_string("out", "benchmarks/results/memory_soak", "Output path stem (.csv, .json).")


def rss_mb(pid: int) -> float:
  for line in Path(f"/proc/{pid}/status").read_text().splitlines():
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 1024
  return float("nan")


def main(argv):
  del argv
  run_root = tempfile.mkdtemp(prefix="o2o_soak_")
  cmd = [sys.executable, "-m", "experiments.train_online", "--agent=td3", "--env=hopper",
         f"--total_steps={FLAGS.steps}", "--start_steps=1000", "--hidden_dims=32,32",
         f"--eval_every={max(FLAGS.steps // 10, 1)}", "--eval_episodes=1", "--progress=false",
         f"--checkpoint_every={FLAGS.checkpoint_every}", f"--out_dir={run_root}"]
  t0 = time.time()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  samples = []
  while proc.poll() is None:
    try:
      samples.append((time.time() - t0, rss_mb(proc.pid)))
    except OSError:
      break
    time.sleep(FLAGS.sample_every_s)
  output = proc.stdout.read()
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".csv").write_text("seconds,rss_mb\n" + "".join(f"{t:.0f},{m:.1f}\n" for t, m in samples))
  # Steady state: after the first 10% of the run (compilation, buffer allocation, first snapshot).
  steady = [m for t, m in samples if t >= 0.1 * samples[-1][0]] if samples else []
  result = {"command": " ".join(cmd[1:]), "exit_code": proc.returncode, "wall_s": time.time() - t0,
            "rss_mb_first": samples[0][1] if samples else None,
            "rss_mb_steady_start": steady[0] if steady else None,
            "rss_mb_end": samples[-1][1] if samples else None,
            "rss_mb_max": max(m for _, m in samples) if samples else None,
            "tail": output[-600:]}
  out.with_suffix(".json").write_text(json.dumps(result, indent=1))
  print(json.dumps({k: v for k, v in result.items() if k != "tail"}, indent=1))


if __name__ == "__main__":
  app.run(main)
