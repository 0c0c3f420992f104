"""Run outputs a researcher reads: metrics.csv, TensorBoard events, curves.png, progress bars."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence

import numpy as np


def _scalar(v) -> float:
  return float(np.asarray(v).mean())


class MetricsWriter:
  """Appends rows `{step, **metrics}` to `metrics.csv` and TensorBoard. A row may add new columns
  (the CSV is rewritten once with the wider header). Values with a seed axis are logged as their
  mean, with per-seed columns `<name>/seed<i>` for the few keys named in `per_seed_keys`."""

  def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True,
               per_seed_keys: Sequence[str] = ("eval/return", "eval/normalized_score")):
    self.run_dir = Path(run_dir)
    self.run_dir.mkdir(parents=True, exist_ok=True)
    self.csv_path = self.run_dir / "metrics.csv"
    self.per_seed_keys = tuple(per_seed_keys)
    self._fields = None
    self._pending: Optional[Dict[str, float]] = None
    if self.csv_path.exists():
      with open(self.csv_path) as f:
        self._fields = next(csv.reader(f), None)
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), flush_secs=30)

  def _flatten(self, metrics: Mapping[str, object]) -> Dict[str, float]:
    row = {}
    for k, v in metrics.items():
      arr = np.asarray(v, dtype=np.float64)
      row[k] = float(arr.mean()) if arr.size else math.nan
      if k in self.per_seed_keys and arr.ndim == 1 and arr.size > 1:
        for i, x in enumerate(arr):
          row[f"{k}/seed{i}"] = float(x)
    return row

  def write(self, step: int, metrics: Mapping[str, object]) -> Dict[str, float]:
    """Adds metrics to the row of `step` (train and eval metrics of one step share a row). A row
    reaches metrics.csv when a later step is written, or on flush()/close()."""
    step = int(step)
    if self._pending is not None and self._pending["step"] != step:
      self.flush()
    if self._pending is None:
      self._pending = {"step": step}
    flat = self._flatten(metrics)
    self._pending.update(flat)
    if self._tb is not None:
      for k, v in flat.items():
        if math.isfinite(v):
          self._tb.add_scalar(k, v, global_step=step)
    return dict(self._pending)

  def flush(self) -> None:
    row, self._pending = self._pending, None
    if row is None:
      return
    if self._fields is None:
      self._fields = list(row)
      with open(self.csv_path, "w", newline="") as f:
        csv.writer(f).writerow(self._fields)
    elif any(k not in self._fields for k in row):
      old = read_csv(self.csv_path)
      self._fields += [k for k in row if k not in self._fields]
      with open(self.csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, self._fields)
        w.writeheader()
        w.writerows(old)
    with open(self.csv_path, "a", newline="") as f:
      csv.DictWriter(f, self._fields).writerow(row)
    if self._tb is not None:
      self._tb.flush()

  def truncate_after(self, step: int) -> None:
    """Drops rows logged after `step` (used when a run resumes from an earlier checkpoint)."""
    self.flush()
    if not self.csv_path.exists():
      return
    rows = [r for r in read_csv(self.csv_path) if float(r["step"]) <= step]
    with open(self.csv_path, "w", newline="") as f:
      w = csv.DictWriter(f, self._fields)
      w.writeheader()
      w.writerows(rows)

  def close(self):
    self.flush()
    if self._tb is not None:
      self._tb.close()


def read_csv(path) -> list:
  with open(path) as f:
    return list(csv.DictReader(f))


def plot_curves(csv_path, out_png, keys: Optional[Iterable[str]] = None, title: str = "") -> Optional[str]:
  """Learning curves (each key vs step; per-seed columns drawn thin behind the mean)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = read_csv(csv_path)
  if not rows:
    return None
  fields = list(rows[0])
  keys = [k for k in (keys or [f for f in fields if f.startswith("eval/") and "/seed" not in f])
          if k in fields]
  if not keys:
    return None
  fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
  for ax, key in zip(axes[0], keys):
    pts = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in ("", None)]
    pts = [(s, v) for s, v in pts if math.isfinite(v)]
    for f in fields:
      if f.startswith(key + "/seed"):
        sp = [(float(r["step"]), float(r[f])) for r in rows if r.get(f) not in ("", None)]
        if sp:
          ax.plot(*zip(*sp), lw=0.7, alpha=0.4)
    if pts:
      ax.plot(*zip(*pts), lw=2.0, color="k", label="mean over seeds")
    ax.set_xlabel("step")
    ax.set_title(key)
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return str(out_png)


def progress(total: int, desc: str, initial: int = 0, disable: Optional[bool] = None):
  """A tqdm bar with ETA; `bar.set_postfix(eval=...)` shows the latest evaluation."""
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, smoothing=0.05,
              mininterval=1.0, disable=disable, unit="step")
