"""Orbax checkpoints of whole agent states (seed-vmapped too) plus JSON run metadata.

Layout: `<run>/checkpoints/<step>/{state,meta}` managed by an orbax CheckpointManager (atomic writes,
the last `max_to_keep` kept). Restoring takes a *template* pytree (e.g. a freshly initialised state
with the same config and seed count) so the restored value has the exact structure, dtypes and shapes.
The metadata holds what fine-tuning must reuse: config, dataset id, observation statistics, the
reward transform.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np

from o2o_jax.errors import CheckpointError

_LOG = logging.getLogger(__name__)


def _ocp():
  import orbax.checkpoint as ocp
  return ocp


def _to_json(x):
  if isinstance(x, dict):
    return {str(k): _to_json(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_to_json(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    return x.item()
  return x


class Checkpointer:
  """Saves/restores (state pytree, metadata dict) under `directory` by integer step."""

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
    ocp = _ocp()
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    if jax.process_count() > 1:
      # Process-local in a multi-process run (`distributed`): each process reads whole checkpoints
      # on its own and only the primary writes the shared ones, so no cross-process barrier.
      # Synchronous saves: orbax's background commit threads raced with the next save's temporary
      # directory in this mode (ENOENT on `<step>.orbax-checkpoint-tmp`, then a hung shutdown
      # barrier), and `save` waits for the commit anyway.
      local = jax.process_index()
      self.directory.mkdir(parents=True, exist_ok=True)   # orbax: no `create` with active_processes
      options = ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=False, enable_async_checkpointing=False,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              primary_host=local, active_processes={local}))
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

  def save(self, step: int, state: Any, metadata: Optional[Dict[str, Any]] = None) -> None:
    ocp = _ocp()
    if jax.process_count() > 1:   # orbax refuses process-local jax.Arrays in a multi-process run
      state = jax.device_get(state)
    if step in self._manager.all_steps():   # a resumed run reaching a step it had saved before
      self._manager.delete(step)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(_to_json(metadata or {}))),
        force=True)
    self._manager.wait_until_finished()

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def restore(self, template: Any, step: Optional[int] = None) -> Tuple[Any, Dict[str, Any], int]:
    """Restores the given step (default: latest; if it is corrupt, falls back to older ones with a
    warning). Returns (state, metadata, step)."""
    ocp = _ocp()
    steps = self.all_steps() if step is None else [step]
    if not steps:
      raise CheckpointError(f"no checkpoint found in {self.directory}: run the phase that writes "
                            "it first, or point --from at a run directory that has checkpoints/")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    errors = []
    for s in reversed(steps):
      try:
        restored = self._manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        if s != steps[-1]:
          _LOG.warning("checkpoint %d in %s is unreadable; restored step %d instead", steps[-1],
                       self.directory, s)
        return restored["state"], dict(restored["meta"] or {}), s
      except Exception as e:  # corrupt or incompatible files: try an older one
        errors.append(f"step {s}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    raise CheckpointError(f"cannot restore any checkpoint in {self.directory} ({'; '.join(errors)}); "
                          "the files are corrupt or were written by a different agent/config")

  def read_metadata(self, step: Optional[int] = None) -> Dict[str, Any]:
    ocp = _ocp()
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:
      raise CheckpointError(f"checkpoint {step} in {self.directory} has unreadable metadata "
                            f"({type(e).__name__})") from None
    return dict(restored["meta"] or {})

  def close(self):
    self._manager.close()
