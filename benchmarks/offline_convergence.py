"""Has an offline run converged? Issue #22: every O2O row of the grid starts from an offline policy
whose evaluation curve is flat over the last 20% of its steps.

  python -m benchmarks.offline_convergence 'runs/pretrain/cql/o2o_hopper_medium-v0/*' [--tail=0.2]

Per run directory (a glob, or folders searched for metrics.csv): the seed-mean normalised score at
each evaluation, and over the evaluations in the last `--tail` fraction of the steps the *drift*: how
far a least-squares line through them moves across that window. Flat: |drift| <= `--tolerance`
points (default 5, the slack of the paper's pi_on >= pi_off - 5 reading) with at least 3 evaluations
in the window. A line rather than the first and last evaluations: hopper's single evaluations swing
by 20+ points, and a fit over the window averages that out without hiding a trend.
"""
from __future__ import annotations

import csv
import glob
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
MIN_EVALS = 3


def define_flags():
  """Defined only when run as a script, so that importing this module (tests) leaves absl's global
  flags free."""
  flags.DEFINE_float("tail", 0.2, "The window: this last fraction of the run's steps.")
  flags.DEFINE_float("tolerance", 5.0, "Largest |drift| (normalised points) across the window that "
                     "counts as flat.")
  flags.DEFINE_string("out", None, "Markdown file to write the table to (default: print only).")


def seed_mean_curve(metrics_csv: Path) -> Tuple[np.ndarray, np.ndarray]:
  """(steps, seed-mean normalised score) of a run's evaluations, from its metrics.csv."""
  with open(metrics_csv) as f:
    rows = [r for r in csv.DictReader(f) if r.get("eval/normalized_score") not in (None, "")]
  if not rows:
    raise SystemExit(f"{metrics_csv} has no evaluation (no eval/normalized_score values)")
  return (np.array([int(float(r["step"])) for r in rows]),
          np.array([float(r["eval/normalized_score"]) for r in rows]))


def tail_drift(steps, scores, tail: float = 0.2) -> Tuple[float, int]:
  """(drift, evaluations in the window): the change of the least-squares line through the scores at
  the evaluations with step >= (1 - tail) x the last step, from the window's start to its end. NaN
  with fewer than MIN_EVALS evaluations in the window."""
  steps, scores = np.asarray(steps, float), np.asarray(scores, float)
  start = (1.0 - tail) * steps.max()
  inside = steps >= start
  if inside.sum() < MIN_EVALS:
    return float("nan"), int(inside.sum())
  slope = np.polyfit(steps[inside], scores[inside], 1)[0]
  return float(slope * (steps.max() - start)), int(inside.sum())


def find_runs(patterns: List[str]) -> List[Path]:
  runs = []
  for pattern in patterns:
    for match in sorted(glob.glob(pattern, recursive=True)):
      runs += sorted(p.parent for p in Path(match).glob("**/metrics.csv"))
  if not runs:
    raise SystemExit(f"no metrics.csv under {', '.join(patterns)}: give pretrain run directories")
  return list(dict.fromkeys(runs))


def table(runs: List[Path], tail: float, tolerance: float) -> str:
  lines = [f"| run | steps | last score | evals in the last {tail:.0%} | drift | flat (abs drift <= "
           f"{tolerance:g}) |", "|---|---|---|---|---|---|"]
  for run in runs:
    steps, scores = seed_mean_curve(run / "metrics.csv")
    drift, n = tail_drift(steps, scores, tail)
    flat: Optional[bool] = None if np.isnan(drift) else abs(drift) <= tolerance
    lines.append(f"| {run} | {steps.max()} | {scores[-1]:.1f} | {n} | {drift:+.1f} | "
                 f"{'too few evaluations' if flat is None else ('yes' if flat else 'no')} |")
  return "\n".join(lines) + "\n"


def main(argv):
  text = table(find_runs(argv[1:]), FLAGS.tail, FLAGS.tolerance)
  print(text, end="")
  if FLAGS.out:
    Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.out).write_text(text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
