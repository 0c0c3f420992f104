"""One table of O2O fine-tuning results from the `summary.json` files under a runs folder.

  python -m benchmarks.o2o_table --runs=benchmarks/results/o2o_quick/runs --out=benchmarks/results/o2o_quick/table.md

Per run: π_off (the offline policy's score), π_on (after alignment, OCR-CFT agents), the start of the
online curve, the minimum of the seed-mean curve during the first `--early` fraction of the online
steps (and the dip below the start), best and final seed-mean scores, wall time. Normalised scores.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("runs", "benchmarks/results/o2o_quick/runs", "Root of the run directories.")
flags.DEFINE_string("out", None, "Markdown file to write (default: print only).")
flags.DEFINE_float("early", 0.1, "Fraction of the online steps that counts as the early phase.")


def row(summary_path: Path, early: float) -> dict:
  s = json.loads(summary_path.read_text())
  steps, curve = np.asarray(s["curve_steps"]), np.asarray(s["curve_mean"])
  offline = float(np.mean(s["offline"]))
  start = float(np.mean(s["aligned"])) if "aligned" in s else offline
  horizon = steps.max() if steps.size else 0
  early_scores = curve[steps <= early * horizon]
  early_min = float(min(early_scores.min(), start)) if early_scores.size else start
  return {"run": str(summary_path.parent.relative_to(FLAGS.runs)), "agent": s["agent"],
          "dataset": s["dataset"], "seeds": s["seeds"], "pi_off": offline,
          "pi_on": float(np.mean(s["aligned"])) if "aligned" in s else float("nan"),
          "early_min": early_min, "dip": start - early_min, "best": float(np.mean(s["best"])),
          "final": float(np.mean(s["final"])),
          "final_std": float(np.std(s["final"])), "wall_s": s.get("wall_time_s", float("nan"))}


def main(argv):
  del argv
  rows = [row(p, FLAGS.early) for p in sorted(Path(FLAGS.runs).rglob("summary.json"))]
  head = ("| run | seeds | π_off | π_on | early min (first {:.0%}) | dip | best | final (± std) | "
          "online wall s |\n|---|---|---|---|---|---|---|---|---|".format(FLAGS.early))
  lines = [head] + [
      f"| {r['run']} | {r['seeds']} | {r['pi_off']:.1f} | {r['pi_on']:.1f} | {r['early_min']:.1f} | "
      f"{r['dip']:.1f} | {r['best']:.1f} | {r['final']:.1f} ± {r['final_std']:.1f} | {r['wall_s']:.0f} |"
      for r in rows]
  text = "\n".join(lines) + "\n"
  print(text)
  if FLAGS.out:
    Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.out).write_text(text)


if __name__ == "__main__":
  app.run(main)
