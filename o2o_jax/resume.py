"""What makes a long loop survive a crash: resumable snapshots of the whole run state, a clean stop
on SIGINT/SIGTERM, and the divergence guard.

- `Snapshots`: orbax checkpoints of a running phase under `<run>/progress/` (the last two kept,
  atomic writes; a corrupt latest one falls back to the previous with a warning). They hold what the
  loop needs to continue exactly (agent states, replay buffers, PRNG keys) plus JSON metadata (the
  step, the evaluation history). The phase's *result* checkpoint stays in `<run>/checkpoints/`.
- `StopSignals`: while active, SIGINT/SIGTERM only set a flag; the loop saves a snapshot at the next
  step and raises `Interrupted`, which the launchers turn into a clean exit (code 130).
- `Session`: the boilerplate a resumable loop shares (restore + log line, fault injection, the
  snapshot decision, the stop after a signal).
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

from o2o_jax.errors import DivergenceError, Interrupted, O2OError


class Snapshots:
  """Resumable snapshots of a running loop, every `every` steps (0: never). In a multi-process run
  each process keeps its own seeds' snapshots in `<directory>/process<index>/`."""

  def __init__(self, directory: str | Path, every: int, max_to_keep: int = 2):
    from o2o_jax.checkpoints import Checkpointer
    self.directory = self._root = Path(directory)
    if jax.process_count() > 1:
      self.directory = self._root / f"process{jax.process_index()}"
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
    if self._root != self.directory:      # the last process out removes the shared progress/
      try:
        self._root.rmdir()
      except OSError:                     # not empty yet (or already gone)
        pass

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


def decode_history(meta: Dict[str, Any]):
  """The evaluation history [{"step", "returns" (S, E)}] of a snapshot's metadata."""
  return [{"step": h["step"], "returns": np.asarray(h["returns"])} for h in meta.get("history", [])]


class Session:
  """What every resumable loop does around its own steps, as a context manager (SIGINT/SIGTERM only
  set a flag inside it):

    session = Session(snapshots, "cvae", log=log)           # snapshots None: not resumable
    payload, meta, step = session.restore(template)         # the template itself when none exists
    with session:
      while step < end:
        ...one step or chunk (ending at session.next_due(step))...
        session.fault.at(step)
        if session.due(step, end):
          session.save(step, payload, metadata)
        session.stop_if_requested(step, cleanup)            # raises errors.Interrupted
  """

  def __init__(self, snapshots: Optional[Snapshots], phase: str, unit: str = "step", log=print):
    self.snapshots, self.phase, self.unit, self.log = snapshots, phase, unit, log
    self.fault = FaultInjection(phase)
    self.signals = StopSignals()

  def restore(self, template: Any) -> Tuple[Any, Dict[str, Any], int]:
    """(payload, metadata, step) of the latest snapshot, or (template, {}, 0) if there is none."""
    found = self.snapshots.restore(template) if self.snapshots is not None else None
    payload, meta, step = found if found is not None else (template, {}, 0)
    if jax.process_count() > 1:    # every process must resume at the same step (`distributed`)
      from o2o_jax import distributed
      steps = distributed.gather_seeds(np.array([step]))
      if len(set(steps.tolist())) > 1:
        raise O2OError(f"[{self.phase}] the processes' latest snapshots are at different steps "
                       f"({', '.join(f'process {i}: {s}' for i, s in enumerate(steps))}), e.g. after a "
                       "crash during a save: delete the newer ones under <run>/progress/process<i>/ "
                       "so that every process has the same latest step, then rerun")
    if found is None:
      return template, {}, 0
    self.log(f"[{self.phase}] resuming from the snapshot at {self.unit} {step} "
             f"({self.snapshots.directory})")
    return payload, meta, step

  def next_due(self, step: int) -> float:
    """The next periodic snapshot step after `step` (chunks of a loop end there)."""
    return self.snapshots.next_due(step) if self.snapshots is not None else float("inf")

  def due(self, step: int, end: int, since: Optional[int] = None) -> bool:
    """Whether to snapshot at `step`: a signal arrived, or a multiple of `every` lies in
    (since, step] (default: `step` is one). Never at `end`, where the loop's result is saved."""
    if self.snapshots is None or step >= end:
      return False
    if self.signals.requested is not None:
      return True
    since = step - 1 if since is None else since
    return self.snapshots.every > 0 and self.snapshots.next_due(since) <= step

  def save(self, step: int, payload: Any, metadata: Optional[Dict[str, Any]] = None) -> None:
    self.snapshots.save(step, payload, {"phase": self.phase, **(metadata or {})})

  def last_good(self) -> Optional[int]:
    return self.snapshots.latest_step() if self.snapshots is not None else None

  def check_finite(self, counts, *, step: int, states, metrics=None) -> None:
    check_finite(counts, phase=self.phase, step=step, states=states, metrics=metrics,
                 last_good=self.last_good())

  def stop_if_requested(self, step: int, cleanup=()) -> None:
    """After a signal (and the snapshot `due` asked for): runs `cleanup` and raises Interrupted."""
    if self.signals.requested is not None:
      for close in cleanup:
        close()
      raise interrupted(self.phase, self.signals.requested, f"{self.unit} {step}", self.snapshots)

  def __enter__(self):
    self.signals.__enter__()
    return self

  def __exit__(self, *exc):
    return self.signals.__exit__(*exc)
