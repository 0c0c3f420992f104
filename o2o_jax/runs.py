"""Run directories: `runs/<phase>/<agent>/<dataset>/<run-name>/` holding config.json, metrics.csv,
tensorboard/, checkpoints/ and curves.png. Re-running the same command in the same directory resumes;
a directory that holds a *different* run is refused, never silently overwritten. A finished phase's
result (its checkpoint and the agent Config in its config.json) is read back with `finished`,
`config_from_dict` and `restore_result`."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable

import jax
import numpy as np

from o2o_jax import distributed
from o2o_jax.checkpoints import Checkpointer
from o2o_jax.errors import RunDirError

# Keys that may differ between an interrupted run and its resumption.
RESUME_TOLERANT_KEYS = frozenset({"restart", "checkpoint_every", "log_every", "progress", "run_dir"})


def run_dir_for(root: str, phase: str, agent: str, dataset: str, run_name: str) -> Path:
  return Path(root) / phase / agent / dataset.replace("/", "_") / run_name


def prepare_run_dir(run_dir: str | Path, config: Dict[str, Any], restart: bool = False,
                    tolerant: Iterable[str] = RESUME_TOLERANT_KEYS) -> bool:
  """Creates the run dir and writes config.json. Returns True if an existing run of the same config
  is there to resume. Raises RunDirError if the directory holds a different run. In a multi-process
  run (`distributed`) the primary process does this and the others wait for it."""
  if distributed.process_count() == 1:
    return _prepare_run_dir(Path(run_dir), config, restart, tolerant)
  resumed = (_prepare_run_dir(Path(run_dir), config, restart, tolerant)
             if distributed.is_primary() else True)
  distributed.barrier(f"prepared {run_dir}")
  return resumed


def _prepare_run_dir(run_dir: Path, config: Dict[str, Any], restart: bool,
                     tolerant: Iterable[str]) -> bool:
  cfg_path = run_dir / "config.json"
  config = json.loads(json.dumps(config, default=str))
  if run_dir.exists() and restart:
    shutil.rmtree(run_dir)
  if cfg_path.exists():
    try:
      old = json.loads(cfg_path.read_text())
    except ValueError:
      raise RunDirError(f"{cfg_path} is not valid JSON: remove {run_dir} or pass --restart") from None
    tolerant = set(tolerant)
    diff = sorted(k for k in set(old) | set(config)
                  if k not in tolerant and old.get(k) != config.get(k))
    if diff:
      details = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff[:5])
      raise RunDirError(f"output directory {run_dir} already holds a different run ({details}); "
                        "choose another --run_name / --out_dir, or pass --restart to overwrite it")
    return True
  if run_dir.exists() and any(p.name != "config.json" for p in run_dir.iterdir()):
    raise RunDirError(f"output directory {run_dir} is not empty and has no config.json: it is not "
                      "an o2o_jax run; choose another --run_name / --out_dir")
  run_dir.mkdir(parents=True, exist_ok=True)
  cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True))
  return False


# What launched a run, beside its config.json: written after each phase by the recipe runner and
# never compared on resume (so runs made before a field existed still resume). The report reads the
# budget name from here ("quick" / "paper"), which no phase's config records.
LAUNCH_FILE = "launch.json"


def record_launch(run_dir: str | Path, **fields: Any) -> None:
  """Merges `fields` into `run_dir`/launch.json (the primary process; a missing run_dir is skipped)."""
  path = Path(run_dir) / LAUNCH_FILE
  if not distributed.is_primary() or not path.parent.is_dir():
    return
  old = read_launch(run_dir)
  if any(old.get(k) != v for k, v in fields.items()):
    path.write_text(json.dumps({**old, **fields}, indent=1, sort_keys=True))


def read_launch(run_dir: str | Path) -> Dict[str, Any]:
  """launch.json of `run_dir`, {} when absent or unreadable."""
  try:
    return json.loads((Path(run_dir) / LAUNCH_FILE).read_text())
  except (OSError, ValueError):
    return {}


def read_config(run_dir: str | Path) -> Dict[str, Any]:
  path = Path(run_dir) / "config.json"
  if not path.exists():
    raise RunDirError(f"{run_dir} is not a run directory (no config.json): pass the folder a "
                      "launcher printed as its run directory")
  return json.loads(path.read_text())


def config_from_dict(cls, values: Dict[str, Any]):
  """A frozen agent Config from its JSON form (lists back to tuples)."""
  names = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})


def finished(run_dir: Path, steps: int) -> bool:
  return (run_dir / "config.json").exists() and Checkpointer(run_dir / "checkpoints").latest_step() == steps


# Checkpoint metadata holding one value per seed (sliced like the states in a multi-process run).
PER_SEED_META = ("eval_score", "offline_score", "online_score", "final_score")


def restore_result(run_dir: Path, template):
  """(state, metadata) of a phase's result checkpoint; `template` holds every seed of the run. In a
  multi-process run (`o2o_jax.distributed`) both come back as this process's seed slice."""
  state, meta, step = Checkpointer(run_dir / "checkpoints").restore(template)
  if distributed.process_count() > 1:
    local = distributed.local_seed_count(jax.tree_util.tree_leaves(template)[0].shape[0])
    state = distributed.local_slice(state, local)
    meta = {k: distributed.local_slice(np.asarray(v), local) if k in PER_SEED_META else v
            for k, v in meta.items()}
  return state, meta
