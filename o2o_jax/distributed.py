"""Seeds over several processes (hosts): `jax.distributed`, one slice of the seeds per process.

Seeds never interact, so each process trains its own slice of a run's seeds as an ordinary vmapped
program on its local devices (sharded over them by `sharding`), steps only the envs of those seeds,
and talks to the others only where outputs meet:

- PRNG keys and env seeds follow a seed's *global* index: `split_seeds(key, n)` is this process's
  slice of `jax.random.split(key, n * process_count)`, `seed_offset(n)` the first global index, so
  process p of P running n seeds each reproduces seeds p*n .. p*n+n-1 of a one-process run of n*P.
- Metrics and evaluation returns are gathered along the seed axis (`gather_seeds`, a
  `process_allgather`) and written by the primary process (index 0) only; result checkpoints hold
  every seed and are written by the primary; every process reads them back whole and takes its slice
  (`local_slice`).
- Resumable snapshots stay per process (`<run>/progress/process<p>/`): each process saves and
  restores its own seeds, replay buffer and keys.

With one process (the default) every function here is the identity or the plain JAX call, so a
single-process run is unchanged. CPU collectives go through gloo.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np

from o2o_jax.errors import O2OError


def initialize(coordinator_address: Optional[str], num_processes: int, process_id: Optional[int]):
  """Joins a multi-process run (a no-op for `num_processes` 1). Call before any other JAX work."""
  if num_processes <= 1:
    return
  if not coordinator_address or process_id is None:
    raise O2OError("a multi-process run needs --coordinator_address=<host:port> (the same in every "
                   "process) and --process_id=<0..num_processes-1> (one per process)")
  if not 0 <= process_id < num_processes:
    raise O2OError(f"--process_id={process_id} is outside 0..{num_processes - 1}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                             process_id=process_id)


# Where a process's seeds sit in the run (`local_seed_count`, `seed_offset`, `split_seeds`,
# `local_slice`) is read through these two functions, so a test can run one seed as seed i of N
# (patching them) and compare it with an N-seed run; the collectives below ask JAX itself.
def process_count() -> int:
  return jax.process_count()


def process_index() -> int:
  return jax.process_index()


def is_primary() -> bool:
  """The process that writes the run directory's shared files (metrics, checkpoints, plots)."""
  return jax.process_index() == 0


def local_seed_count(total: int) -> int:
  """This process's number of seeds of a run of `total` seeds (an error unless P divides it)."""
  p = process_count()
  if total % p:
    raise O2OError(f"--seeds={total} cannot be split evenly over {p} processes: use a multiple of {p}")
  return total // p


def seed_offset(local_seeds: int) -> int:
  """The global index of this process's first seed."""
  return process_index() * local_seeds


def split_seeds(key: jax.Array, local_seeds: int) -> jax.Array:
  """One key per local seed: this process's slice of `jax.random.split(key, all seeds)`."""
  p = process_count()
  if p == 1:
    return jax.random.split(key, local_seeds)
  start = seed_offset(local_seeds)
  return jax.random.split(key, local_seeds * p)[start:start + local_seeds]


def local_slice(tree: Any, local_seeds: int) -> Any:
  """This process's seeds of a pytree holding every seed (seed axis first)."""
  if process_count() == 1:
    return tree
  start = seed_offset(local_seeds)
  return jax.tree_util.tree_map(lambda x: x[start:start + local_seeds], tree)


def gather_seeds(tree: Any) -> Any:
  """Every process's seeds, concatenated along the seed axis in process order (host numpy arrays).
  A collective: every process calls it at the same point with the same structure."""
  tree = jax.device_get(tree)
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils
  return jax.device_get(multihost_utils.process_allgather(tree, tiled=True))


def barrier(name: str) -> None:
  """Waits until every process has arrived here (a no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


class GatheredWriter:
  """A metrics writer for a process's seed slice: `write(step, row)` gathers the row's per-seed arrays
  (leading axis = local seeds) over the processes, and the primary writes the full row; scalars are
  the primary's. Every process must call `write` at the same steps with the same array keys."""

  def __init__(self, writer, local_seeds: int):
    self.writer, self.local_seeds = writer, local_seeds

  def write(self, step: int, row) -> None:
    if jax.process_count() == 1:
      return self.writer.write(step, row)
    per_seed = {k: np.asarray(v) for k, v in row.items()
                if np.ndim(v) >= 1 and np.shape(v)[0] == self.local_seeds}
    gathered = gather_seeds(per_seed)
    if self.writer is not None:
      self.writer.write(step, {**row, **gathered})

  def __getattr__(self, name):   # flush, close, truncate_after: the primary's writer only
    if self.writer is None:
      return lambda *args, **kwargs: None
    return getattr(self.writer, name)


class GatheredCheckpointer:
  """A result checkpointer for a process's seed slice: `save` gathers the state and the metadata's
  per-seed arrays over the processes, the primary writes them, and every process waits until it
  has (a later phase reads the checkpoint in every process); reading methods pass through
  (checkpoints hold every seed: take this process's with `local_slice`)."""

  def __init__(self, checkpointer, local_seeds: int):
    self.checkpointer, self.local_seeds = checkpointer, local_seeds

  def save(self, step: int, state: Any, metadata=None) -> None:
    if jax.process_count() == 1:
      return self.checkpointer.save(step, state, metadata)
    metadata = dict(metadata or {})
    per_seed = {k: np.asarray(v) for k, v in metadata.items()
                if np.ndim(v) >= 1 and np.shape(v)[0] == self.local_seeds}
    state, per_seed = gather_seeds((state, per_seed))
    if is_primary():
      self.checkpointer.save(step, state, {**metadata, **per_seed})
    barrier(f"saved {self.checkpointer.directory} {step}")   # the others may read it next

  def __getattr__(self, name):
    return getattr(self.checkpointer, name)
