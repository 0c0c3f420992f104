"""Table of `benchmarks.vs_official.run`'s results (one `<agent>__<dataset>__<tag>.json` per comparison in
its --out folder) and the parsing both sides' outputs need. Pure Python + numpy: no JAX, no torch.

  python -m benchmarks.vs_official.report --out=benchmarks/results/vs_official

Per seed and as mean ± std (population std, ddof=0, as `benchmarks/o2o_table.py`), for the official
OCR-CFT code and for ours:
- π_off: the offline policy's score before re-evaluation. Official: the "After offline training"
  evaluation `finetune/O2TD3.py` / `O2SAC.py` print (also entry 0 of their `data_True.json`). Ours:
  `summary.json` "offline".
- π_on: the actor after value alignment. Official: the evaluation printed after "After reconstruct".
  Ours: `summary.json` "aligned".
- drift: RMS over dataset states and action dimensions of π_on(s) − π_off(s), deterministic actions,
  on the first N states of the dataset normalised with the dataset's own mean and std + 1e-3 (both
  sides compute the same statistics). Official: `official_drift.py` on the saved actors; ours: the
  alignment checkpoint, as `benchmarks/actor_drift.py`.
- early min: the minimum over π_on (the policy the online phase starts from) and the online
  evaluations within the first `early` fraction of the online steps. When that window holds no
  evaluation (quick budget: 10% of 10k steps = 1k < the first evaluation at 2k) it is widened to the
  first evaluation, and the table says so.
- final: the evaluation at the last online step.
Scores are normalised (x100) against the dataset's own reference returns on both sides (the `gym`
stand-in's `get_normalized_score` reads them from the dataset, as our evaluation does).

Acceptance (issue #19): our seed-mean π_on − π_off and drift each lie within the official runs'
spread, taken as [min, max] over the official seeds.
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

EARLY_FRACTION = 0.1
_NUM = r"(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|-?nan|-?inf)"
_SCORE = re.compile(r"D4RL score:\s*" + _NUM)
_TQDM = re.compile(r"(\d+)/(\d+) \[([^\]\n\r]*)\]")           # one tqdm drawing: n/total [...]
_RATE = re.compile(_NUM + r"\s*(it/s|s/it)$")


# ------------------------------------------------------------------------------ official outputs

def parse_official_stdout(text: str) -> Dict[str, Optional[float]]:
  """π_off and π_on from the official fine-tuning script's output (stdout and stderr together; tqdm's
  carriage returns are fine). π_off: the first "D4RL score:" after "After offline training"; π_on:
  the first after "After reconstruct". Either is None when its block is missing (e.g. a crash)."""
  def first_after(marker: str, stop: Optional[str] = None) -> Optional[float]:
    i = text.find(marker)
    if i < 0:
      return None
    j = text.find(stop, i) if stop else -1
    m = _SCORE.search(text, i, j if j >= 0 else len(text))
    return float(m.group(1)) if m else None
  return {"pi_off": first_after("After offline training", "After reconstruct"),
          "pi_on": first_after("After reconstruct")}


def official_curve(data: Dict) -> Tuple[List[int], List[float]]:
  """The online evaluation curve from the official `data_True.json` ({"steps", "eval_returns"}):
  entry 0 is π_off at step 0 (dropped here), then one score every `eval_freq` env steps."""
  steps, scores = list(data["steps"]), [float(x) for x in data["eval_returns"]]
  if len(steps) != len(scores):
    raise ValueError(f"data json: {len(steps)} steps but {len(scores)} scores")
  return [int(s) for s in steps[1:]], scores[1:]


def tqdm_rates(text: str) -> List[Tuple[int, float]]:
  """(total, iterations/s) of every finished tqdm bar in a log, in order (the official scripts' offline
  training, re-evaluation and alignment loops), for the time estimate."""
  order: List[Tuple[int, float]] = []
  fresh = True       # a drawing below 100% seen since the last finished one: a new bar
  for m in _TQDM.finditer(text):
    n, total = int(m.group(1)), int(m.group(2))
    rm = _RATE.search(m.group(3).strip())
    if n != total or total == 0 or rm is None:
      fresh = True
      continue
    rate, unit = float(rm.group(1)), rm.group(2)
    rate = rate if unit == "it/s" else (1.0 / rate if rate else float("nan"))
    if order and not fresh and order[-1][0] == total:
      order[-1] = (total, rate)     # tqdm redraws a finished bar when it closes: keep the last
    else:
      order.append((total, rate))
    fresh = False
  return order


# ------------------------------------------------------------------------------ our outputs

def our_seed_curves(metrics_csv: Path) -> Tuple[List[List[int]], List[List[float]]]:
  """Per seed, the online evaluation steps (> 0) and scores from our finetune run's metrics.csv
  (per-seed columns `eval/normalized_score/seed<i>`, or the single-seed `eval/normalized_score`)."""
  with open(metrics_csv) as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise ValueError(f"{metrics_csv} has no rows")
  cols = sorted((c for c in rows[0] if c.startswith("eval/normalized_score/seed")),
                key=lambda c: int(c.rsplit("seed", 1)[1])) or ["eval/normalized_score"]
  steps, scores = [], []
  for c in cols:
    pts = [(int(float(r["step"])), float(r[c])) for r in rows if r.get(c) not in (None, "")]
    pts = [p for p in pts if p[0] > 0]
    steps.append([s for s, _ in pts])
    scores.append([v for _, v in pts])
  return steps, scores


# ------------------------------------------------------------------------------ derived numbers

def early_min(start: float, steps: Sequence[int], scores: Sequence[float], online_steps: int,
              early: float = EARLY_FRACTION) -> Tuple[float, int]:
  """(min over `start` and the evaluations at steps <= early x online_steps, the window's end). If no
  evaluation falls in that window, the window ends at the first evaluation instead."""
  end = int(early * online_steps)
  if steps and min(steps) > end:
    end = int(min(steps))
  inside = [v for s, v in zip(steps, scores) if 0 < s <= end]
  return float(min([start] + inside)), end


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
  a = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
  if a.size == 0:
    return float("nan"), float("nan")
  return float(a.mean()), float(a.std())


def seed_rows(side: Dict, online_steps: int, early: float = EARLY_FRACTION) -> List[Dict]:
  """The table's numbers for each seed of one side ({"seeds": [{seed, pi_off, pi_on, drift_rms,
  curve_steps, curve, ...}]})."""
  rows = []
  for s in side["seeds"]:
    pi_off, pi_on = _f(s.get("pi_off")), _f(s.get("pi_on"))
    steps, curve = s.get("curve_steps", []), s.get("curve", [])
    start = pi_on if not math.isnan(pi_on) else pi_off
    emin, end = early_min(start, steps, curve, online_steps, early) if steps else (float("nan"), 0)
    final = _f(s.get("final", curve[-1] if curve else None))
    rows.append({"seed": s["seed"], "pi_off": pi_off, "pi_on": pi_on, "gain": pi_on - pi_off,
                 "drift": _f(s.get("drift_rms")), "drift_max": _f(s.get("drift_max")),
                 "early_min": emin, "early_end": end, "final": final,
                 "last_step": int(steps[-1]) if steps else 0})
  return rows


def _f(x) -> float:
  return float("nan") if x is None else float(x)


KEYS = ("pi_off", "pi_on", "gain", "drift", "early_min", "final")


def acceptance(official: List[Dict], ours: List[Dict], keys=("gain", "drift")) -> Dict[str, Dict]:
  """For each key: our seed mean, the official [min, max] over seeds, and whether it lies inside (None
  when fewer than two official seeds make no spread)."""
  out = {}
  for k in keys:
    off = [r[k] for r in official if not math.isnan(r[k])]
    mine, _ = mean_std([r[k] for r in ours])
    if len(off) < 2 or math.isnan(mine):
      out[k] = {"ours": mine, "low": min(off) if off else float("nan"),
                "high": max(off) if off else float("nan"), "inside": None}
      continue
    low, high = min(off), max(off)
    out[k] = {"ours": mine, "low": low, "high": high, "inside": bool(low <= mine <= high),
              "ours_seeds_inside": sum(low <= r[k] <= high for r in ours if not math.isnan(r[k]))}
  return out


# ------------------------------------------------------------------------------ table

NAMES = {"pi_off": "π_off", "pi_on": "π_on", "gain": "π_on − π_off", "drift": "drift RMS",
         "early_min": "early min", "final": "final"}


def _fmt(x: float, nd: int = 1) -> str:
  return "–" if x is None or math.isnan(x) else f"{x:.{nd}f}"


def section(result: Dict, early: float = EARLY_FRACTION) -> str:
  st = result["steps"]
  online = int(st["online_steps"])
  sides = {k: seed_rows(result[k], online, early) for k in ("official", "ours") if result.get(k)}
  nets = result.get("networks", {})
  lines = [f"## {result['agent'].upper()} on {result['dataset']} ({result.get('tag', '')})", "",
           f"Steps: offline {st['pretrain_steps']:,}, re-evaluation {st['reevaluate_steps']:,}, "
           f"alignment {st['align_steps']:,}, online {online:,} (warm-up {st['warmup_steps']:,}), "
           f"evaluation every {st['eval_every']:,} env steps x {st['eval_episodes']} episodes. Networks: "
           f"actor {nets.get('actor', '?')}, critic {nets.get('critic', '?')}. Official: "
           f"{len(result.get('official', {}).get('seeds', []))} seed(s) run one after the other; ours: "
           f"{len(result.get('ours', {}).get('seeds', []))} seeds vmapped in one program.", ""]
  ends = {r["early_end"] for rows in sides.values() for r in rows}
  window = ", ".join(f"{e:,}" for e in sorted(ends)) or "–"
  widened = any(e > int(early * online) for e in ends)
  lines += [f"| side | seed | π_off | π_on | π_on − π_off | drift RMS (max abs gap) | early min "
            f"(steps ≤ {window}) | final |", "|---|---|---|---|---|---|---|---|"]
  for name, rows in sides.items():
    for r in rows:
      lines.append(f"| {name} | {r['seed']} | {_fmt(r['pi_off'])} | {_fmt(r['pi_on'])} | "
                   f"{_fmt(r['gain'])} | {_fmt(r['drift'], 3)} ({_fmt(r['drift_max'], 2)}) | "
                   f"{_fmt(r['early_min'])} | {_fmt(r['final'])} |")
    ms = {k: mean_std([r[k] for r in rows]) for k in KEYS}
    cell = lambda k, nd=1: f"{_fmt(ms[k][0], nd)} ± {_fmt(ms[k][1], nd)}"
    lines.append(f"| **{name}** | mean ± std | {cell('pi_off')} | {cell('pi_on')} | {cell('gain')} | "
                 f"{cell('drift', 3)} | {cell('early_min')} | {cell('final')} |")
  lines.append("")
  if widened:
    lines.append(f"The first {early:.0%} of the online steps ({int(early * online):,}) holds no "
                 "evaluation, so the early window runs to the first evaluation; π_on (the online "
                 "start) is always included.")
  if "official" in sides and "ours" in sides:
    acc = acceptance(sides["official"], sides["ours"])
    lines.append("")
    lines.append("Acceptance (issue #19): our seed-mean π_on − π_off and actor drift after alignment "
                 "lie within the official runs' spread ([min, max] over the official seeds).")
    lines.append("")
    for k, a in acc.items():
      verdict = ("n/a (fewer than 2 official seeds)" if a["inside"] is None else
                 ("**inside**" if a["inside"] else "**outside**")
                 + f", {a['ours_seeds_inside']}/{len(sides['ours'])} of our seeds inside")
      nd = 3 if k == "drift" else 1
      lines.append(f"- {NAMES[k]}: ours {_fmt(a['ours'], nd)}, official [{_fmt(a['low'], nd)}, "
                   f"{_fmt(a['high'], nd)}] → {verdict}")
    verdicts = [a["inside"] for a in acc.values()]
    lines.append("")
    lines.append("Result: " + ("**met**" if all(v is True for v in verdicts) else
                               "not applicable (one official seed)" if any(v is None for v in verdicts)
                               else "**not met**: the note must show the cause with a measurement"))
  wall = result.get("wall_s", {})
  if wall:
    lines += ["", "Wall time (s) on this machine: " + ", ".join(f"{k} {v:,.0f}" for k, v in wall.items())]
  if result.get("note"):
    lines += ["", result["note"]]
  return "\n".join(lines) + "\n"


def write(out: Path, early: float = EARLY_FRACTION) -> Path:
  """table.md from every result JSON in `out` (one section each)."""
  out = Path(out)
  files = sorted(p for p in out.glob("*__*.json"))
  if not files:
    raise SystemExit(f"no results (<agent>__<dataset>__<tag>.json) in {out}")
  parts = ["# Side by side with the official OCR-CFT code (issue #19)", "",
           "Made by `python -m benchmarks.vs_official.report` from `benchmarks.vs_official.run`'s "
           "results; see that module's docstring for how each number is measured. Normalised "
           "scores (x100, the dataset's own reference returns); std is the population std over "
           "seeds.", ""]
  parts += [section(json.loads(p.read_text()), early) for p in files]
  table = out / "table.md"
  table.write_text("\n".join(parts))
  print(table.read_text())
  return table


if __name__ == "__main__":
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="benchmarks/results/vs_official")
  parser.add_argument("--early", type=float, default=EARLY_FRACTION)
  args = parser.parse_args()
  write(Path(args.out), args.early)
