"""What makes a long loop survive a crash: resumable snapshots of the whole run state, a clean stop
on SIGINT/SIGTERM, and the divergence guard.

- `Snapshots`: orbax checkpoints of a running phase under `<run>/progress/` (the last two kept,
  atomic writes; a corrupt latest one falls back to the previous with a warning). They hold what the
  loop needs to continue exactly (agent states, replay buffers, PRNG keys) plus JSON metadata (the
  step, the evaluation history). The phase's *result* checkpoint stays in `<run>/checkpoints/`.
- `StopSignals`: while active, SIGINT/SIGTERM only set a flag; the loop saves a snapshot at the next
  step and raises `Interrupted`, which the launchers turn into a clean exit (code 130).
- `nonfinite_count` / `check_finite`: a cheap per-seed count of non-finite values in the agent
  state, computed inside the jitted chunk; a non-zero count stops the run with a message naming the
  phase, step, seed and the offending parameters/metrics, before any checkpoint of the bad state.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax.errors import DivergenceError, Interrupted


class Snapshots:
  """Resumable snapshots of a running loop, every `every` steps (0: never)."""

  def __init__(self, directory: str | Path, every: int, max_to_keep: int = 2):
    from o2o_jax.checkpoints import Checkpointer
    self.directory = Path(directory)
    self.every = int(every)
    self._ckpt = Checkpointer(self.directory, max_to_keep=max_to_keep)

  def due(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def next_due(self, step: int) -> float:
    return (step // self.every + 1) * self.every if self.every > 0 else float("inf")

  def latest_step(self) -> Optional[int]:
    return self._ckpt.latest_step()

  def save(self, step: int, payload: Any, metadata: Dict[str, Any]) -> None:
    self._ckpt.save(step, payload, {**metadata, "step": step})

  def restore(self, template: Any) -> Optional[Tuple[Any, Dict[str, Any], int]]:
    """(payload, metadata, step) of the latest readable snapshot, or None if there is none."""
    if self._ckpt.latest_step() is None:
      return None
    return self._ckpt.restore(template)

  def discard(self) -> None:
    """The phase finished: its result is in checkpoints/, the snapshots (replay buffers) can go."""
    self._ckpt.close()
    shutil.rmtree(self.directory, ignore_errors=True)

  def close(self) -> None:
    self._ckpt.close()


class StopSignals:
  """Context manager: SIGINT/SIGTERM set `requested` instead of killing the process (main thread
  only; elsewhere it is a no-op). A second SIGINT while stopping raises KeyboardInterrupt."""

  def __init__(self):
    self.requested: Optional[str] = None
    self._old = {}

  def _handle(self, signum, frame):
    if self.requested is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)
    self._old = {}
    return False


def interrupted(phase: str, signal_name: str, where: str, snapshots: Optional[Snapshots]):
  """The Interrupted error a loop raises after a signal (and, if resumable, its snapshot)."""
  return Interrupted(f"{phase} stopped by {signal_name} at {where}" + (
      f"; progress saved in {snapshots.directory}, rerun the same command to resume"
      if snapshots is not None else " (no snapshot: this loop is not resumable)"))


def nonfinite_count(tree) -> jax.Array:
  """Number of non-finite entries over the floating-point leaves of `tree` (per seed under vmap)."""
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return sum((jnp.sum(~jnp.isfinite(x)) for x in leaves), jnp.zeros((), jnp.int32))


def _nonfinite_paths(tree, seed: int, limit: int = 3):
  paths = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    x = np.asarray(leaf)
    if x.dtype.kind == "f" and x.ndim >= 1 and not np.isfinite(x[seed]).all():
      paths.append(jax.tree_util.keystr(path))
      if len(paths) == limit:
        break
  return paths


def check_finite(counts, *, phase: str, step: int, states, metrics: Optional[Dict[str, Any]] = None,
                 last_good: Optional[int] = None) -> None:
  """Raises DivergenceError if any seed's count of non-finite state entries is non-zero, naming the
  phase, step, seed, non-finite metrics and parameter paths."""
  counts = np.asarray(counts).reshape(-1)
  bad = np.nonzero(counts)[0]
  if bad.size == 0:
    return
  seed = int(bad[0])
  bad_metrics = []
  for k, v in (metrics or {}).items():
    v = np.asarray(v)
    if v.ndim >= 1 and v.shape[0] == counts.size and not np.isfinite(v[seed]).all():
      bad_metrics.append(k)
  where = (f"metrics {', '.join(sorted(bad_metrics))}; " if bad_metrics else "") + \
      f"parameters {', '.join(_nonfinite_paths(states, seed))}"
  keep = (f"the last good snapshot (step {last_good}) is kept; " if last_good is not None else "")
  raise DivergenceError(
      f"{phase} diverged at step {step}: seed(s) {', '.join(map(str, bad.tolist()))} have non-finite "
      f"values (seed {seed}: {where}); {keep}check the data for NaN/inf, lower the learning rates, "
      "or resume with the same command after fixing the cause")


class FaultInjection:
  """Test hook: with O2O_JAX_FAULT="<SIGNAL>:<phase>:<step>" (e.g. "SIGKILL:finetune:30") the loop of
  that phase sends itself the signal once it reaches the step, so tests can kill or interrupt a run
  at an exact point. Unset (the normal case), `at(step)` is one integer comparison."""

  def __init__(self, phase: str):
    self.step, self.signum = -1, None
    spec = os.environ.get("O2O_JAX_FAULT", "")
    if spec:
      sig, fault_phase, step = spec.split(":")
      if fault_phase == phase:
        self.step, self.signum = int(step), signal.Signals[sig]

  def at(self, step: int) -> None:
    if self.signum is not None and step >= self.step:
      signum, self.signum = self.signum, None     # once
      os.kill(os.getpid(), signum)
