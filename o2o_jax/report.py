"""A paper-style report of O2O fine-tuning runs: tables, learning curves and rliable statistics.

  python -m experiments.report 'runs/finetune/**' --out=benchmarks/results/grid_quick

Input: online fine-tuning run directories (`runs/finetune/<agent>/<dataset>/<run-name>/`, written by
experiments.finetune and the agents' pipelines): config.json, metrics.csv (per-seed columns
`eval/normalized_score/seed<i>`; step 0 is the policy the online phase starts from) and, once the run
finished, summary.json. Complete and partial runs mix freely:

  - an unfinished run (no summary.json) contributes its last evaluation, marked `*` with its step;
  - several run directories of one agent on one dataset (e.g. seeds 0-4 and 5-9) are pooled; if their
    evaluations differ (different lengths), they are pooled on their common steps and marked `†`;
  - an agent without a run on a dataset leaves `—` in that cell;
  - π_off / π_on come from summary.json, else from metrics.csv's step-0 row (their mean), else from the
    earlier phases' metrics.csv found through config.json's "from" links; otherwise `?`.

Output (a folder): report.md (every table, with the command line and the budget at its head),
table2.csv, table3.csv, early.csv, iqm.csv, improvement.csv, profiles.csv, runs.csv, curves.png,
curves_early.png, performance_profiles.png and commands.txt.

Scores are D4RL-normalised (100 = the expert reference). Standard deviations are over seeds (ddof 0,
as the runs' summaries). The rliable statistics (Agarwal et al., NeurIPS 2021) take the final scores
/ 100 as a runs x tasks matrix (seeds x datasets) per agent.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from o2o_jax.errors import O2OError

SCORE = "eval/normalized_score"
# Curve-grid columns: (title, base agent names in display order). A label's base is its text before
# the first '-' (e.g. "o2td3-presetcorl" -> "o2td3"); anything unlisted goes to "other".
GROUPS = (("TD3-way", ("o2td3", "direct_td3", "proto_td3")),
          ("SAC-way", ("o2sac", "direct_sac", "proto", "aca", "calql", "samg_calql", "off2on")),
          ("IQL/PPO-way", ("o2ppo", "direct_ppo", "iql_ft", "awac_ft", "pex")),
          ("other", ()))
OCR_CFT = ("o2td3", "o2sac", "o2ppo")
ALIGNED = ("o2td3", "o2sac")          # the OCR-CFT agents with a value-alignment phase (π_on)
# Direct fine-tuning: the O2O agent with every OCR-CFT component switched off (its run-name suffix).
DIRECT = {"o2td3": ("direct_td3", ("-noreevaluate", "-noalign", "-noconstrain")),
          "o2sac": ("direct_sac", ("-noreevaluate", "-noalign", "-noconstrain")),
          "o2ppo": ("direct_ppo", ("-noaux",))}
# Run-name suffixes that make a different method variant (ablations, presets).
VARIANT = re.compile(r"-(?:no[a-z_]+|preset[a-z0-9_]+|broadcast)")
OFFLINE_PHASES = ("reevaluate", "pretrain", "zfit")     # phases whose last evaluation is π_off
LEVELS = ("random", "medium-replay", "medium", "medium-expert", "expert")
OUTPUTS = ("report.md", "table2.csv", "table3.csv", "early.csv", "iqm.csv", "improvement.csv",
           "profiles.csv", "runs.csv", "curves.png", "curves_early.png", "performance_profiles.png")
UNFINISHED, UNEVEN, MISSING, UNKNOWN = "*", "†", "—", "?"


# ----------------------------------------------------------------------------- per-seed numbers

@dataclasses.dataclass
class Seeds:
  """One number per seed. `per_seed` False: only their mean was recorded (every entry holds it), so
  the mean is right when pooled but the spread is unknown."""
  values: np.ndarray
  per_seed: bool = True

  @property
  def mean(self) -> float:
    return float(np.mean(self.values))

  @property
  def std(self) -> float:
    return float(np.std(self.values)) if self.per_seed else math.nan

  @staticmethod
  def pooled(items: Sequence[Optional["Seeds"]]) -> Optional["Seeds"]:
    if not items or any(i is None for i in items):
      return None
    return Seeds(np.concatenate([i.values for i in items]), all(i.per_seed for i in items))


def _seeds(values, n: int) -> Optional[Seeds]:
  """Seeds from a per-seed list, or from a single mean (a number) repeated n times."""
  if values is None or values == "":
    return None
  if isinstance(values, (list, tuple)):
    return Seeds(np.asarray(values, np.float64)) if len(values) else None
  value = float(values)
  return None if math.isnan(value) else Seeds(np.full(n, value), per_seed=n == 1)


# ----------------------------------------------------------------------------- one run directory

@dataclasses.dataclass
class Run:
  path: Path
  label: str                  # the method: config/summary "label", else derived (`run_label`)
  dataset: str
  seed: int
  seeds: int
  planned: Optional[int]      # planned online steps (config "steps")
  budget: Optional[str]       # config "budget" when recorded
  steps: np.ndarray           # evaluation steps, ascending; 0 = the policy the online phase starts from
  curve: np.ndarray           # (evaluations, seeds) normalised scores
  per_seed: bool              # False: the curve holds the seed mean only (repeated)
  final: Seeds
  finished: bool              # summary.json written
  pi_off: Optional[Seeds]
  pi_on: Optional[Seeds]
  warmup: int = 0             # online steps before the first update (config "warmup_steps")
  data: Optional[str] = None  # SHA-1 (12 digits) of the data it trained on, from launch.json

  @property
  def last_step(self) -> int:
    return int(self.steps[-1])


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def run_label(config: Dict[str, Any], summary: Dict[str, Any], run_name: str) -> str:
  """The method a run belongs to: an explicit "label" (config, then summary) wins; else the agent,
  renamed direct_td3 / direct_sac / direct_ppo when its run name carries the direct fine-tuning
  switches, with any other variant suffix (-noalign, -presetcorl, ...) kept, and ACA's offline
  actor when it is not SAC+ML."""
  for source in (config, summary):
    if source.get("label"):
      return str(source["label"])
  agent = str(config.get("agent") or summary.get("agent") or "unknown")
  tokens = VARIANT.findall(run_name)
  if agent in DIRECT and all(t in tokens for t in DIRECT[agent][1]):
    tokens = [t for t in tokens if t not in DIRECT[agent][1]]
    agent = DIRECT[agent][0]
  if agent == "aca" and config.get("offline_algo") not in (None, "sacml"):
    tokens.insert(0, f"-{config['offline_algo']}")
  return agent + "".join(tokens)


def read_evals(run_dir: Path, seeds: int) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], bool,
                                                   Dict[str, str]]:
  """(steps, (evaluations, seeds) scores, per_seed, first row) of metrics.csv's evaluation rows;
  (None, None, False, {}) without any."""
  path = run_dir / "metrics.csv"
  if not path.exists():
    return None, None, False, {}
  with open(path, newline="") as f:
    rows = [r for r in csv.DictReader(f) if r.get(SCORE) not in (None, "")]
  if not rows:
    return None, None, False, {}
  columns = [f"{SCORE}/seed{i}" for i in range(seeds)]
  per_seed = seeds == 1 or all(c in rows[0] for c in columns)
  if seeds == 1 or not per_seed:
    columns = [SCORE] * seeds
  steps = np.asarray([float(r["step"]) for r in rows]).astype(np.int64)
  values = np.asarray([[float(r[c]) if r[c] not in ("", None) else math.nan for c in columns]
                       for r in rows])
  order = np.argsort(steps, kind="stable")
  return steps[order], values[order], per_seed, rows[int(order[0])]


def _resolve_link(link: str, run_dir: Path) -> Optional[Path]:
  """An earlier phase's run directory from a "from" entry: as written (relative to the working
  directory then), or the same <phase>/<agent>/<dataset>/<name> under this run's root (a copied
  runs folder)."""
  path = Path(link)
  candidates = [path] if path.is_absolute() else [path, run_dir / path]
  parents = run_dir.resolve().parents
  if len(path.parts) >= 4 and len(parents) > 3:
    candidates.append(parents[3] / Path(*path.parts[-4:]))
  return next((c for c in candidates if (c / "config.json").exists()), None)


def _last_eval(run_dir: Path, seeds: int) -> Optional[Seeds]:
  _, values, per_seed, _ = read_evals(run_dir, seeds)
  return None if values is None else Seeds(values[-1], per_seed)


def scores_from_links(run_dir: Path, config: Dict[str, Any], seeds: int) -> Dict[str, Seeds]:
  """{"offline": π_off, "aligned": π_on} (those found) from the last evaluations of the earlier
  phases reached through "from" links: the alignment run gives π_on (a skipped one: π_on = π_off),
  the first re-evaluation / pretrain / z-fit run with an evaluation gives π_off."""
  found: Dict[str, Seeds] = {}
  skipped_align, seen = False, set()
  current, cfg = run_dir, config
  while cfg.get("from") and len(seen) < 8:
    current = _resolve_link(str(cfg["from"]), current)
    if current is None or current.resolve() in seen:
      break
    seen.add(current.resolve())
    cfg = _read_json(current / "config.json") or {}
    phase = cfg.get("phase")
    if phase == "align" and "aligned" not in found and not skipped_align:
      skipped_align = bool(cfg.get("skipped"))
      last = None if skipped_align else _last_eval(current, seeds)
      if last is not None:
        found["aligned"] = last
    elif phase in OFFLINE_PHASES:
      last = _last_eval(current, seeds)
      if last is not None:
        found["offline"] = last
        break
  if skipped_align and "offline" in found:
    found["aligned"] = found["offline"]
  return found


def _summary_curve(summary: Dict[str, Any], seeds: int) -> Tuple[np.ndarray, np.ndarray]:
  """(steps, curve) from summary.json alone (no metrics.csv): the start score at step 0, then the
  seed-mean curve."""
  start = summary.get("aligned", summary.get("offline"))
  steps = [int(s) for s in summary.get("curve_steps", [])]
  means = [float(m) for m in summary.get("curve_mean", [])]
  if start is not None and (not steps or steps[0] != 0):
    steps, means = [0] + steps, [float(np.mean(start))] + means
  return np.asarray(steps, np.int64), np.repeat(np.asarray(means, np.float64)[:, None], seeds, 1)


def load_run(run_dir: Path) -> Tuple[Optional[Run], str]:
  """(the run, "") or (None, why it is left out)."""
  config = _read_json(run_dir / "config.json")
  if config is None:
    return None, "config.json missing or not valid JSON"
  summary = _read_json(run_dir / "summary.json") or {}
  dataset = config.get("dataset") or summary.get("dataset")
  if not dataset:
    return None, "config.json names no dataset"
  seeds = int(config.get("seeds") or summary.get("seeds") or 1)
  steps, curve, per_seed, first = read_evals(run_dir, seeds)
  if steps is None and summary:
    (steps, curve), per_seed = _summary_curve(summary, seeds), False
  if steps is None or not len(steps):
    return None, "no evaluation yet"
  final = _seeds(summary.get("final"), seeds) or Seeds(curve[-1], per_seed)
  linked = None

  def start_score(key: str) -> Optional[Seeds]:
    nonlocal linked
    score = _seeds(summary.get(key), seeds) or _seeds(first.get(f"eval/{key}_score"), seeds)
    if score is None:
      linked = scores_from_links(run_dir, config, seeds) if linked is None else linked
      score = linked.get(key)
    return score

  planned = config.get("steps") or (summary.get("curve_steps") or [None])[-1]
  launch = _read_json(run_dir / "launch.json")
  launch = launch if isinstance(launch, dict) else {}
  data = launch.get("data") if isinstance(launch.get("data"), dict) else {}
  return Run(path=run_dir, label=run_label(config, summary, run_dir.name), dataset=str(dataset),
             seed=int(config.get("seed", 0)), seeds=seeds,
             planned=int(planned) if planned else None,
             budget=config.get("budget") or launch.get("budget"), steps=steps,
             curve=curve, per_seed=per_seed, final=final, finished=bool(summary),
             pi_off=start_score("offline"), pi_on=start_score("aligned"),
             warmup=int(config.get("warmup_steps") or 0), data=data.get("sha1")), ""


def _is_online_run(path: Path) -> bool:
  """A fine-tuning run directory (or one whose config.json cannot be read: load_run says so)."""
  if not (path / "config.json").exists():
    return False
  config = _read_json(path / "config.json")
  return config is None or config.get("phase") == "finetune" or (path / "summary.json").exists()


def _outermost(folders: Iterable[Path]) -> List[Path]:
  """The folders not inside another one of them (each is searched recursively once)."""
  kept: List[Path] = []
  for folder in sorted({f.resolve() for f in folders}, key=lambda f: len(f.parts)):
    if not any(folder == k or k in folder.parents for k in kept):
      kept.append(folder)
  return kept


def find_run_dirs(globs: Sequence[str]) -> List[Path]:
  """The online fine-tuning run directories the globs name: each match is a run directory, or a
  folder searched recursively for them (a matched file stands for its folder). A glob that matches
  nothing, or no run directory, is an O2OError naming it."""
  if not globs:
    raise O2OError("no run directories given: pass one or more globs, e.g. 'runs/finetune/**'")
  found: Dict[Path, None] = {}
  for pattern in globs:
    matches = sorted(glob.glob(pattern, recursive=True)) if pattern else []
    runs = [c for folder in _outermost(Path(m) if Path(m).is_dir() else Path(m).parent for m in matches)
            for c in sorted(p.parent for p in folder.rglob("config.json"))
            if _is_online_run(c)]
    if not runs:
      what = "matches nothing" if not matches else "matches no online fine-tuning run directory"
      raise O2OError(f"run glob {pattern!r} {what} (a run directory holds config.json, metrics.csv "
                     "and, once finished, summary.json, e.g. runs/finetune/o2td3/<dataset>/seed0x5)")
    found.update((r.resolve(), None) for r in runs)
  return list(found)


# ----------------------------------------------------------------------------- one table cell

@dataclasses.dataclass
class Cell:
  """An agent (label) on one dataset: its runs' seeds pooled."""
  label: str
  dataset: str
  runs: List[Run]
  steps: np.ndarray
  curve: np.ndarray           # (evaluations, pooled seeds)
  per_seed: bool
  uneven: bool                # runs of different lengths, pooled on their common evaluation steps

  @property
  def seeds(self) -> int:
    return self.curve.shape[1]

  @property
  def final_step(self) -> int:
    return int(self.steps[-1])

  @property
  def planned(self) -> Optional[int]:
    known = [r.planned for r in self.runs if r.planned]
    return min(known) if known else None

  @property
  def finished(self) -> bool:
    return all(r.finished for r in self.runs)

  @property
  def warmup(self) -> int:
    """Online steps before the first gradient update (the longest of its runs')."""
    return max(r.warmup for r in self.runs)

  @property
  def final(self) -> Seeds:
    if self.uneven:
      return Seeds(self.curve[-1], self.per_seed)
    return Seeds.pooled([r.final for r in self.runs])

  @property
  def pi_off(self) -> Optional[Seeds]:
    return Seeds.pooled([r.pi_off for r in self.runs])

  @property
  def pi_on(self) -> Optional[Seeds]:
    return Seeds.pooled([r.pi_on for r in self.runs])

  @property
  def markers(self) -> str:
    return (UNEVEN if self.uneven else "") + ("" if self.finished else UNFINISHED)

  def status(self) -> str:
    """'' for a finished cell; else why its numbers are provisional."""
    notes = []
    if not self.finished:
      notes.append(f"step {fmt_steps(self.final_step)} of {fmt_steps(self.planned)}")
    if self.uneven:
      lengths = sorted({r.last_step for r in self.runs})
      notes.append(f"{self.seeds} seeds pooled on common steps ≤ {fmt_steps(self.final_step)}; run "
                   f"lengths {', '.join(fmt_steps(n) for n in lengths)}")
    return "; ".join(notes)


def make_cell(runs: List[Run]) -> Optional[Cell]:
  step_sets = [set(r.steps.tolist()) for r in runs]
  common = np.asarray(sorted(set.intersection(*step_sets)), np.int64)
  if not len(common):
    return None
  curve = np.concatenate([r.curve[np.searchsorted(r.steps, common)] for r in runs], axis=1)
  return Cell(label=runs[0].label, dataset=runs[0].dataset, runs=runs, steps=common, curve=curve,
              per_seed=all(r.per_seed for r in runs), uneven=any(s != step_sets[0] for s in step_sets))


def group_runs(runs: Iterable[Run]) -> Tuple[Dict[Tuple[str, str], Cell], List[str]]:
  """({(dataset, label): cell}, notes). Runs of one label, dataset and seed range are the same seeds
  twice: the one furthest along is kept, the others noted."""
  by_seeds: Dict[Tuple, Run] = {}
  notes = []
  for run in sorted(runs, key=lambda r: (not r.finished, -r.last_step, str(r.path))):
    key = (run.label, run.dataset, run.seed, run.seeds)
    if key in by_seeds:
      notes.append(f"{shown(run.path)}: left out, the same seeds as {shown(by_seeds[key].path)}")
      continue
    by_seeds[key] = run
  pooled: Dict[Tuple[str, str], List[Run]] = {}
  for run in sorted(by_seeds.values(), key=lambda r: (r.seed, str(r.path))):
    pooled.setdefault((run.dataset, run.label), []).append(run)
  cells = {}
  for key, members in pooled.items():
    cell = make_cell(members)
    if cell is None:
      notes.append(f"{key[1]} on {key[0]}: its runs share no evaluation step; left out")
    else:
      cells[key] = cell
  return cells, notes


# ----------------------------------------------------------------------------- ordering and text

def base_agent(label: str) -> str:
  return label.split("-", 1)[0]


def group_of(label: str) -> int:
  for i, (_, members) in enumerate(GROUPS):
    if base_agent(label) in members:
      return i
  return len(GROUPS) - 1


def label_key(label: str):
  members = GROUPS[group_of(label)][1]
  base = base_agent(label)
  return (group_of(label), members.index(base) if base in members else len(members), label)


def dataset_key(dataset: str):
  """hopper < halfcheetah ... by name, then random, medium-replay, medium, medium-expert, expert."""
  parts = re.sub(r"-v\d+$", "", dataset).split("/")
  env, level = (parts[-2], parts[-1]) if len(parts) >= 2 else (parts[0].split("-", 1) + [""])[:2]
  return (env, LEVELS.index(level) if level in LEVELS else len(LEVELS), dataset)


def fmt_steps(n: Optional[int]) -> str:
  if n is None:
    return "?"
  for unit, size in (("M", 1_000_000), ("k", 1_000)):
    if n >= size:
      return f"{n // size}{unit}" if n % size == 0 else f"{n / size:.1f}{unit}"
  return str(n)


def fmt(x: Optional[float], signed: bool = False) -> str:
  if x is None or not math.isfinite(x):
    return UNKNOWN
  return f"{x:+.1f}" if signed else f"{x:.1f}"


def fmt_mean_std(s: Seeds) -> str:
  return fmt(s.mean) + (f" ± {fmt(s.std)}" if s.per_seed else " (mean only)")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def write_csv(path: Path, rows: List[Dict[str, Any]], fields: Sequence[str]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fields)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                       for k, v in row.items()})


def budget_line(runs: Sequence[Run]) -> str:
  """'Budget: ...' from the runs' configs: the recorded budget name and the planned online steps."""
  kinds: Dict[Tuple, List[str]] = {}
  for run in runs:
    kinds.setdefault((run.budget, run.planned), []).append(run.label)
  parts = []
  for (budget, planned), labels in sorted(kinds.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0)):
    steps = f"{planned:,} online steps" if planned else "online steps unknown"
    text = f"{budget} ({steps})" if budget else f"{steps} (budget name not recorded)"
    if len(kinds) > 1:
      text += " for " + ", ".join(sorted(set(labels), key=label_key))
    parts.append(text)
  return "Budget: " + "; ".join(parts)


def _pi_off_mean(cell: Cell) -> Optional[float]:
  return None if cell.pi_off is None else cell.pi_off.mean


def _cell_text(value: str, cell: Cell) -> str:
  status = cell.status()
  return value + cell.markers + (f" ({status})" if status else "")


# ----------------------------------------------------------------------------- the tables

@dataclasses.dataclass
class Grid:
  cells: Dict[Tuple[str, str], Cell]
  datasets: List[str]
  labels: List[str]

  def get(self, dataset: str, label: str) -> Optional[Cell]:
    return self.cells.get((dataset, label))

  def present(self, labels: Optional[Sequence[str]] = None):
    """(dataset, label, cell) of every existing cell."""
    for dataset in self.datasets:
      for label in labels or self.labels:
        cell = self.get(dataset, label)
        if cell is not None:
          yield dataset, label, cell


def make_grid(cells: Dict[Tuple[str, str], Cell]) -> Grid:
  return Grid(cells, sorted({d for d, _ in cells}, key=dataset_key),
              sorted({l for _, l in cells}, key=label_key))


def table2(grid: Grid) -> Tuple[List[Dict[str, Any]], str]:
  """Final score mean ± std per dataset x agent, δ = final − π_off, and a total row per agent."""
  rows, lines = [], []
  for dataset in grid.datasets:
    line = [dataset]
    for label in grid.labels:
      cell = grid.get(dataset, label)
      if cell is None:
        line.append(MISSING)
        continue
      final, pi_off = cell.final, _pi_off_mean(cell)
      delta = None if pi_off is None else final.mean - pi_off
      rows.append(dict(dataset=dataset, agent=label, seeds=cell.seeds, final_mean=final.mean,
                       final_std=final.std, pi_off=pi_off, delta=delta, final_step=cell.final_step,
                       planned_steps=cell.planned, finished=cell.finished, uneven=cell.uneven,
                       note=cell.status()))
      line.append(_cell_text(f"{fmt_mean_std(final)} (δ {fmt(delta, signed=True)})", cell))
    lines.append(line)
  total = ["**total**"]
  for label in grid.labels:
    mine = [r for r in rows if r["agent"] == label]
    final = sum(r["final_mean"] for r in mine)
    delta = None if any(r["delta"] is None for r in mine) else sum(r["delta"] for r in mine)
    partial = len(mine) < len(grid.datasets)
    rows.append(dict(dataset="total", agent=label, seeds=None, final_mean=final, final_std=None,
                     pi_off=None, delta=delta, final_step=None, planned_steps=None,
                     finished=all(r["finished"] for r in mine), uneven=any(r["uneven"] for r in mine),
                     note=f"{len(mine)} of {len(grid.datasets)} datasets" if partial else ""))
    total.append(f"{fmt(final)} (δ {fmt(delta, signed=True)})"
                 + (f" ({len(mine)} of {len(grid.datasets)} datasets)" if partial else ""))
  lines.append(total)
  return rows, markdown_table(["dataset"] + grid.labels, lines)


def table3(grid: Grid) -> Tuple[List[Dict[str, Any]], str]:
  """π_off against π_on (after value alignment) per dataset for every OCR-CFT agent."""
  labels = [l for l in grid.labels if base_agent(l) in OCR_CFT]
  rows, lines = [], []
  for dataset, label, cell in grid.present(labels):
    pi_off, pi_on = cell.pi_off, cell.pi_on
    aligned = base_agent(label) in ALIGNED
    gap = None if pi_off is None or pi_on is None else pi_on.mean - pi_off.mean
    rows.append(dict(dataset=dataset, agent=label, seeds=cell.seeds,
                     pi_off_mean=None if pi_off is None else pi_off.mean,
                     pi_off_std=None if pi_off is None else pi_off.std,
                     pi_on_mean=None if pi_on is None else pi_on.mean,
                     pi_on_std=None if pi_on is None else pi_on.std, pi_on_minus_pi_off=gap,
                     has_alignment=aligned))
    on_text = (fmt_mean_std(pi_on) if pi_on is not None
               else UNKNOWN if aligned else "n/a (no alignment phase; starts from π_off)")
    check = UNKNOWN if gap is None else ("yes" if gap >= -5 else "**no**")
    lines.append([dataset, label, UNKNOWN if pi_off is None else fmt_mean_std(pi_off), on_text,
                  fmt(gap, signed=True), check if aligned else "n/a"])
  return rows, markdown_table(["dataset", "agent", "π_off", "π_on", "π_on − π_off",
                               "π_on ≥ π_off − 5"], lines)


def early_window(cell: Cell, early: float) -> int:
  """The last step of the early phase: `early` x the planned online steps (else x the last step)."""
  return int(early * (cell.planned or cell.final_step))


def early_stats(cell: Cell, early: float) -> Dict[str, Any]:
  """Minimum of the seed-mean curve over steps [0, early x planned] (step 0, the starting policy,
  included) and the dip below π_off: max(0, π_off − min)."""
  end = early_window(cell, early)
  mean = cell.curve.mean(1)
  inside = cell.steps <= end
  finite = mean[inside][np.isfinite(mean[inside])]      # a non-finite evaluation is not a minimum
  low = float(finite.min()) if finite.size else math.nan
  pi_off = _pi_off_mean(cell)
  return dict(window_end=end, evals_in_window=int(inside.sum()),
              online_evals_in_window=int((inside & (cell.steps > 0)).sum()), start=float(mean[0]),
              early_min=low, pi_off=pi_off,
              dip=None if pi_off is None or math.isnan(low) else max(0.0, pi_off - low),
              window_complete=cell.final_step >= end, warmup_steps=cell.warmup,
              # a window the warm-up covers holds no update: its minimum cannot show a collapse
              window_in_warmup=end <= cell.warmup)


def early_table(grid: Grid, early: float) -> Tuple[List[Dict[str, Any]], str]:
  rows, lines = [], []
  for dataset in grid.datasets:
    line = [dataset]
    for label in grid.labels:
      cell = grid.get(dataset, label)
      if cell is None:
        line.append(MISSING)
        continue
      s = early_stats(cell, early)
      rows.append(dict(dataset=dataset, agent=label, seeds=cell.seeds, **s))
      text = f"{fmt(s['early_min'])} (dip {fmt(s['dip'])}; ≤ {fmt_steps(s['window_end'])}"
      text += "" if s["online_evals_in_window"] else ", no online evaluation in the window"
      text += f", inside the {fmt_steps(s['warmup_steps'])} warm-up: no update yet" if s["window_in_warmup"] else ""
      text += ")" if s["window_complete"] else f", window not reached{UNFINISHED})"
      line.append(text + (UNEVEN if cell.uneven else ""))
    lines.append(line)
  return rows, markdown_table(["dataset"] + grid.labels, lines)


# ----------------------------------------------------------------------------- rliable statistics

def score_matrices(grid: Grid) -> Tuple[Dict[str, np.ndarray], Dict[str, List[str]], List[str]]:
  """({label: (runs, tasks) final scores / 100}, {label: its datasets}, notes). A label's runs are
  its first n seeds on each dataset, n the fewest it has. Cells with the seed mean only, or with a
  non-finite final score, are left out."""
  matrices, tasks, notes = {}, {}, []
  for label in grid.labels:
    usable = lambda c: c.final.per_seed and bool(np.all(np.isfinite(c.final.values)))
    cells = [(d, c) for d, l, c in grid.present([label]) if usable(c)]
    skipped = [d for d, l, c in grid.present([label]) if not usable(c)]
    if skipped:
      notes.append(f"{label}: left out of the rliable statistics on {', '.join(skipped)} "
                   "(only the seed mean was recorded, or a final score is not finite)")
    if not cells:
      continue
    n = min(c.final.values.size for _, c in cells)
    if any(c.final.values.size != n for _, c in cells):
      notes.append(f"{label}: the first {n} seeds of each dataset enter the rliable statistics "
                   "(datasets with more seeds are cut)")
    matrices[label] = np.stack([c.final.values[:n] for _, c in cells], axis=1) / 100.0
    tasks[label] = [d for d, _ in cells]
  return matrices, tasks, notes


def iqm_fn(scores: np.ndarray) -> np.ndarray:
  from rliable import metrics
  return np.array([metrics.aggregate_iqm(scores)])


def poi_fn(scores_x: np.ndarray, scores_y: np.ndarray) -> np.ndarray:
  from rliable import metrics
  return np.array([metrics.probability_of_improvement(scores_x, scores_y)])


@contextlib.contextmanager
def numpy_seed(seed: int):
  """NumPy's global random state seeded with `seed` inside, restored after. rliable's stratified
  bootstraps draw their resamples with `np.random.choice` (its `random_state` argument reaches only
  arch's own generator, which they do not use), so the global state is what makes them reproducible."""
  saved = np.random.get_state()
  np.random.seed(seed)
  try:
    yield
  finally:
    np.random.set_state(saved)


def interval_estimate(scores, func: Callable, reps: int, seed: int):
  """(point estimate, (lower, upper) 95% CI) of `func` by rliable's stratified bootstrap, each estimate
  from the same seed, so one agent's numbers do not depend on which others are in the report."""
  from rliable import library as rly
  with numpy_seed(seed):
    points, intervals = rly.get_interval_estimates({"x": scores}, func, reps=reps)
  return points["x"], intervals["x"]


def iqm_table(matrices, tasks, reps: int, seed: int) -> Tuple[List[Dict[str, Any]], str]:
  rows = []
  for label, scores in matrices.items():
    point, ci = interval_estimate(scores, iqm_fn, reps, seed)
    rows.append(dict(agent=label, iqm=float(point[0]), ci_low=float(ci[0, 0]),
                     ci_high=float(ci[1, 0]), runs=scores.shape[0], tasks=scores.shape[1],
                     datasets=" ".join(tasks[label])))
  lines = [[r["agent"], f"{r['iqm']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
            f"{r['runs']} × {r['tasks']}"] for r in rows]
  return rows, markdown_table(["agent", "IQM [95% CI]", "seeds × datasets"], lines)


def direct_counterpart(label: str) -> Optional[str]:
  base = base_agent(label)
  return DIRECT[base][0] + label[len(base):] if base in DIRECT else None


def improvement_table(matrices, tasks, reps: int, seed: int) -> Tuple[List[Dict[str, Any]], str]:
  """P(O2* > its direct counterpart) on the datasets both have, with its 95% CI."""
  rows = []
  for label in matrices:
    other = direct_counterpart(label)
    if other not in matrices:
      continue
    common = [d for d in tasks[label] if d in tasks[other]]
    if not common:
      continue
    x = matrices[label][:, [tasks[label].index(d) for d in common]]
    y = matrices[other][:, [tasks[other].index(d) for d in common]]
    point, ci = interval_estimate((x, y), poi_fn, reps, seed)
    rows.append(dict(x=label, y=other, probability=float(point[0]), ci_low=float(ci[0, 0]),
                     ci_high=float(ci[1, 0]), runs_x=x.shape[0], runs_y=y.shape[0],
                     tasks=len(common), datasets=" ".join(common)))
  lines = [[f"P({r['x']} > {r['y']})", f"{r['probability']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
            f"{r['runs_x']} / {r['runs_y']} × {r['tasks']}"] for r in rows]
  return rows, markdown_table(["comparison", "probability [95% CI]", "seeds (x / y) × datasets"], lines)


def profile_taus(matrices: Dict[str, np.ndarray]) -> np.ndarray:
  top = max(1.0, max(float(np.max(m)) for m in matrices.values()))
  return np.linspace(0.0, math.ceil(top * 10) / 10, 81)


def performance_profiles(matrices, reps: int, seed: int, colors: Dict[str, Any], path: Path):
  """Score distributions (fraction of runs with score > τ) with 95% CIs, plotted with rliable."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from rliable import library as rly
  from rliable import plot_utils
  taus = profile_taus(matrices)
  profiles, cis = {}, {}
  for label, scores in matrices.items():
    profiles[label], cis[label] = interval_estimate(
        scores, lambda s: rly.score_distributions(s, taus), reps, seed)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  plot_utils.plot_performance_profiles(profiles, taus, performance_profile_cis=cis,
                                       colors={l: colors[l] for l in profiles}, ax=ax,
                                       xlabel=r"normalised score / 100 ($\tau$)",
                                       ylabel=r"fraction of runs with score > $\tau$")
  ax.legend(loc="upper right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  rows = [dict(agent=l, tau=float(t), fraction=float(profiles[l][i]), ci_low=float(cis[l][0, i]),
               ci_high=float(cis[l][1, i])) for l in profiles for i, t in enumerate(taus)]
  return rows


# ----------------------------------------------------------------------------- learning curves

def label_colors(labels: Sequence[str]) -> Dict[str, Any]:
  import matplotlib
  cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
  return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _plot_cell(ax, cell: Cell, color, zoom: bool):
  mean = cell.curve.mean(1)
  ax.plot(cell.steps, mean, color=color, lw=1.6, marker="." if zoom else None,
          label=cell.label + cell.markers)
  if cell.per_seed and cell.seeds > 1:
    std = cell.curve.std(1)
    ax.fill_between(cell.steps, mean - std, mean + std, color=color, alpha=0.2, lw=0)
  if cell.pi_off is not None:
    ax.axhline(cell.pi_off.mean, color=color, ls="--", lw=0.9)


def _zoom(ax, cells: Sequence[Cell], early: float) -> None:
  """Limits a panel to the early window (or to the first online evaluation, if that comes later),
  the window's end dotted, with the y range of what is visible there."""
  end = max(early_window(c, early) for c in cells)
  first = min((int(c.steps[1]) for c in cells if len(c.steps) > 1), default=end)
  right = max(end, first, 1) * 1.05
  ax.axvline(end, color="grey", ls=":", lw=1)
  ax.set_xlim(0, right)
  visible = []
  for c in cells:
    inside = c.steps <= right
    mean, std = c.curve[inside].mean(1), c.curve[inside].std(1)
    visible += [mean - std, mean + std] + ([[c.pi_off.mean]] if c.pi_off is not None else [])
  visible = np.concatenate(visible)
  visible = visible[np.isfinite(visible)]
  if visible.size:
    pad = max(1.0, 0.08 * float(visible.max() - visible.min()))
    ax.set_ylim(float(visible.min()) - pad, float(visible.max()) + pad)


def plot_grid(grid: Grid, colors: Dict[str, Any], path: Path, early: Optional[float] = None) -> None:
  """Rows datasets x columns agent groups: mean ± std over seeds, π_off dashed (in the agent's colour).
  With `early`, each panel shows the steps up to the early window (or the first online evaluation,
  if later), the window's end dotted."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  groups = sorted({group_of(l) for l in grid.labels})
  fig, axes = plt.subplots(len(grid.datasets), len(groups), squeeze=False,
                           figsize=(4.4 * len(groups), 3.0 * len(grid.datasets) + 0.6))
  for i, dataset in enumerate(grid.datasets):
    for j, group in enumerate(groups):
      ax = axes[i, j]
      cells = [c for _, l, c in grid.present() if c.dataset == dataset and group_of(l) == group]
      for cell in cells:
        _plot_cell(ax, cell, colors[cell.label], zoom=early is not None)
      if early is not None and cells:
        _zoom(ax, cells, early)
      if cells:
        ax.legend(fontsize=7, loc="best")
      else:
        ax.text(0.5, 0.5, "no run", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_xticks([])
        ax.set_yticks([])
      ax.grid(alpha=0.3)
      ax.set_title(f"{dataset} — {GROUPS[group][0]}", fontsize=9)
      if i == len(grid.datasets) - 1:
        ax.set_xlabel("online step")
      if j == 0:
        ax.set_ylabel("normalised score")
  what = (f"first {early:.0%} of the online steps (dotted: its end)" if early is not None
          else "mean ± std over seeds")
  fig.suptitle(f"Fine-tuning curves, {what}; dashed: π_off", fontsize=10)
  # tight_layout ignores the suptitle: keep ~0.4 inch above the panels for it
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
  fig.savefig(path, dpi=100)
  plt.close(fig)


# ----------------------------------------------------------------------------- the report

def shown(path: Path) -> str:
  """A path relative to the working directory when it lies inside it (so a committed report does not
  carry this machine's absolute paths)."""
  try:
    return str(path.resolve().relative_to(Path.cwd().resolve()))
  except ValueError:
    return str(path)


def runs_table(runs: Sequence[Run]) -> Tuple[List[Dict[str, Any]], str]:
  rows = [dict(path=shown(r.path), agent=r.label, dataset=r.dataset, seed=r.seed, seeds=r.seeds,
               finished=r.finished, last_step=r.last_step, planned_steps=r.planned,
               pi_off_known=r.pi_off is not None, pi_on_known=r.pi_on is not None, data=r.data)
          for r in sorted(runs, key=lambda r: (dataset_key(r.dataset), label_key(r.label), r.seed))]
  lines = [[r["agent"], r["dataset"], f"{r['seed']}..{r['seed'] + r['seeds'] - 1}",
            "finished" if r["finished"] else f"step {fmt_steps(r['last_step'])} of "
            f"{fmt_steps(r['planned_steps'])}{UNFINISHED}", r["data"] or "", f"`{r['path']}`"]
           for r in rows]
  return rows, markdown_table(["agent", "dataset", "seeds", "status", "data", "run directory"], lines)


def data_notes(runs: Sequence[Run]) -> List[str]:
  """One note per dataset whose runs do not all carry one recorded version of the data (launch.json's
  "data" SHA-1; a regeneration on another host type changes it under the same id): which agents
  trained on which version, and which have no record (runs made before it was recorded)."""
  by_dataset: Dict[str, Dict[Optional[str], set]] = {}
  for run in runs:
    by_dataset.setdefault(run.dataset, {}).setdefault(run.data, set()).add(run.label)
  notes = []
  for dataset in sorted(by_dataset, key=dataset_key):
    versions = by_dataset[dataset]
    known = sorted(v for v in versions if v)
    if not known or (len(known) == 1 and None not in versions):
      continue
    parts = [f"SHA-1 {v} for {', '.join(sorted(versions[v], key=label_key))}" for v in known]
    if None in versions:
      parts.append(f"not recorded for {', '.join(sorted(versions[None], key=label_key))}")
    verdict = (f"{len(known)} versions of the data" if len(known) > 1 else
               "one recorded version of the data, and runs whose data is not recorded")
    notes.append(f"{dataset}: {verdict} ({'; '.join(parts)}): compare its agents with care")
  return notes


def write_commands(out: Path, command: str) -> None:
  """commands.txt: this report's command line replaces an earlier one; other lines (e.g. the runs'
  own commands) are kept."""
  path = out / "commands.txt"
  keep = [l for l in (path.read_text().splitlines() if path.exists() else [])
          if not l.startswith("python -m experiments.report")]
  path.write_text("\n".join(keep + [command]) + "\n")


LEGEND = (f"Markers: `{UNFINISHED}` unfinished run (no summary.json): its last evaluation, at the step "
          f"given; `{UNEVEN}` runs of different lengths pooled on their common evaluation steps; "
          f"`{MISSING}` no run of that agent on that dataset; `{UNKNOWN}` unknown (π_off not found in "
          "summary.json, metrics.csv or the earlier phases); \"mean only\": only the seed mean was "
          "recorded. Scores are normalised (100 = expert); ± is the std over seeds.")


def make_report(globs: Sequence[str], out_dir: str | Path, *, early: float = 0.1, reps: int = 2000,
                seed: int = 0, command: str = "", log=print) -> Dict[str, Any]:
  """Reads the run directories the globs name and writes the report folder; returns its tables
  (lists of the CSV rows) by name."""
  if not 0 < early <= 1:
    raise O2OError(f"--early must lie in (0, 1] (got {early})")
  if reps < 1:
    raise O2OError(f"--reps must be positive (got {reps})")
  runs, notes = [], []
  for path in find_run_dirs(globs):
    run, why = load_run(path)
    if run is None:
      notes.append(f"{shown(path)}: left out, {why}")
    else:
      runs.append(run)
  if not runs:
    raise O2OError("none of the run directories has an evaluation yet: " + "; ".join(notes))
  cells, grouping_notes = group_runs(runs)
  notes += grouping_notes + data_notes(runs)
  grid = make_grid(cells)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  for name in OUTPUTS:
    (out / name).unlink(missing_ok=True)
  budget = budget_line(runs)
  colors = label_colors(grid.labels)
  tables: Dict[str, Any] = {}
  sections = ["# O2O fine-tuning report", "", f"Command: `{command}`" if command else "", "",
              budget, "", f"{len(runs)} run directories ({sum(r.finished for r in runs)} finished), "
              f"{len(grid.datasets)} datasets, {len(grid.labels)} agents.", "", LEGEND, ""]

  def section(title: str, name: str, result, intro: str = ""):
    rows, md = result
    tables[name] = rows
    if rows:
      write_csv(out / f"{name}.csv", rows, list(rows[0]))
    sections.extend([f"## {title}", "", budget, ""] + ([intro, ""] if intro else [])
                    + [md if rows else "(nothing to show)", ""])

  section("Table 2: final normalised score", "table2", table2(grid),
          "Mean ± std over seeds of the last evaluation; δ = final − π_off (seed means). The total "
          "row sums over the datasets.")
  section("Table 3: π_off against π_on", "table3", table3(grid),
          "π_off: the offline policy; π_on: after value alignment (OCR-CFT). The paper's claim: "
          "π_on ≥ π_off − 5.")
  section(f"Early stability: first {early:.0%} of the online steps", "early", early_table(grid, early),
          f"Minimum of the seed-mean curve over the steps 0 … {early:g} × the planned online steps "
          "(step 0, the starting policy, included; ≤ the window's last step), and the dip below π_off = "
          "max(0, π_off − min). A window the off-policy warm-up covers holds no gradient update, so "
          "it cannot show a collapse: it is marked, and a larger --early reads past it.")
  matrices, task_names, matrix_notes = score_matrices(grid)
  notes += matrix_notes
  rliable_intro = (f"Final scores / 100 as a seeds × datasets matrix per agent; 95% "
                   f"stratified-bootstrap CIs ({reps} replications, NumPy seed {seed}).")
  if len({tuple(t) for t in task_names.values()}) > 1:
    rliable_intro += (" The agents do not all have the same datasets (iqm.csv lists each one's): "
                      "compare aggregates only between agents on the same datasets.")
  if matrices:
    section("Aggregate: IQM (rliable)", "iqm", iqm_table(matrices, task_names, reps, seed),
            rliable_intro)
    section("Probability of improvement over direct fine-tuning (rliable)", "improvement",
            improvement_table(matrices, task_names, reps, seed),
            "P(X > Y): the probability that a run of X scores above a run of Y on a dataset, averaged "
            "over the datasets both have.")
    tables["profiles"] = performance_profiles(matrices, reps, seed, colors,
                                              out / "performance_profiles.png")
    write_csv(out / "profiles.csv", tables["profiles"],
              ["agent", "tau", "fraction", "ci_low", "ci_high"])
    sections += ["## Performance profiles (rliable)", "", budget, "", rliable_intro, "",
                 "![performance profiles](performance_profiles.png)", ""]
  plot_grid(grid, colors, out / "curves.png")
  plot_grid(grid, colors, out / "curves_early.png", early=early)
  sections += ["## Learning curves", "", budget, "", "![curves](curves.png)", "",
               f"The first {early:.0%}:", "", "![first steps](curves_early.png)", ""]
  section("Runs", "runs", runs_table(runs))
  if notes:
    sections += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
  (out / "report.md").write_text("\n".join(sections))
  if command:
    write_commands(out, command)
  log(f"[report] {len(runs)} runs, {len(grid.labels)} agents x {len(grid.datasets)} datasets -> {out}")
  return tables
