"""A functional replay buffer: a fixed-capacity pytree with pure `insert` and `sample`.

Every function is jit-able and vmappable: a seed-vmapped run holds a buffer whose leaves carry the
seed axis first (`jax.vmap(init...)` or `init(..., num_seeds=S)`) and calls `jax.vmap(insert)`.
Mixed sampling draws a fixed fraction of each batch from the offline arrays, passed unbatched
(`in_axes=None`), so the dataset lives once on the device and is shared by all seeds.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from o2o_jax.errors import O2OError

from o2o_jax.types import Transition, empty_transitions


@flax.struct.dataclass
class ReplayBuffer:
  data: Transition        # leaves shaped (capacity, ...)
  pointer: jax.Array      # int32: next row to write
  size: jax.Array         # int32: rows filled so far (<= capacity)

  @property
  def capacity(self) -> int:
    return self.data.rewards.shape[-1]


def init(capacity: int, obs_dim: int, act_dim: int, num_seeds: int | None = None) -> ReplayBuffer:
  """An empty buffer; with `num_seeds`, one buffer per seed stacked on a leading axis."""
  lead = () if num_seeds is None else (num_seeds,)
  return ReplayBuffer(data=empty_transitions(capacity, obs_dim, act_dim, lead),
                      pointer=jnp.zeros(lead, jnp.int32), size=jnp.zeros(lead, jnp.int32))


def insert(buffer: ReplayBuffer, transitions: Transition) -> ReplayBuffer:
  """Writes one transition (leaves without a batch axis) or a batch (leading axis n), wrapping
  around at capacity (oldest rows are overwritten first)."""
  batched = transitions.rewards.ndim == 1
  if not batched:
    transitions = jax.tree_util.tree_map(lambda x: x[None], transitions)
  n = transitions.rewards.shape[0]
  capacity = buffer.capacity
  rows = (buffer.pointer + jnp.arange(n)) % capacity
  data = jax.tree_util.tree_map(lambda store, new: store.at[rows].set(new.astype(store.dtype)),
                                buffer.data, transitions)
  return ReplayBuffer(data=data, pointer=(buffer.pointer + n) % capacity,
                      size=jnp.minimum(buffer.size + n, capacity))


def insert_lockstep(buffers: ReplayBuffer, transitions: Transition) -> ReplayBuffer:
  """Inserts one transition per seed into seed-stacked buffers (leaves (S, capacity, ...)) that are
  filled in lockstep (all seeds share pointer and size, as in the online loop).

  Equivalent to `jax.vmap(insert)`, but writes with one dynamic-update-slice at a shared row, which
  XLA performs in place on a donated buffer; the vmapped scatter costs a pass over the whole buffer
  per insert (measured: +7 ms per env step at capacity 300k)."""
  row = buffers.pointer[0]
  data = jax.tree_util.tree_map(
      lambda store, new: jax.lax.dynamic_update_slice_in_dim(
          store, new[:, None].astype(store.dtype), row, axis=1), buffers.data, transitions)
  capacity = buffers.capacity
  return ReplayBuffer(data=data, pointer=(buffers.pointer + 1) % capacity,
                      size=jnp.minimum(buffers.size + 1, capacity))


def gather(data: Transition, indices: jax.Array) -> Transition:
  return jax.tree_util.tree_map(lambda x: jnp.take(x, indices, axis=0), data)


def sample(buffer: ReplayBuffer, key: jax.Array, batch_size: int) -> Transition:
  """Uniform sample with replacement from the filled rows. An empty buffer is an error when its size
  is known on the host (eager calls); inside `jit` the loops only sample after inserting."""
  if not isinstance(buffer.size, jax.core.Tracer) and int(jnp.min(buffer.size)) == 0:
    raise O2OError("cannot sample from an empty replay buffer: insert transitions first")
  indices = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
  return gather(buffer.data, indices)


def sample_offline(data: Transition, key: jax.Array, batch_size: int) -> Transition:
  """Uniform sample from flat offline arrays (a `Transition` of the whole dataset)."""
  indices = jax.random.randint(key, (batch_size,), 0, data.rewards.shape[0])
  return gather(data, indices)


def offline_count(batch_size: int, offline_fraction: float) -> int:
  return int(round(batch_size * offline_fraction))


def sample_mixed(offline: Transition, buffer: ReplayBuffer, key: jax.Array, batch_size: int,
                 offline_fraction: float) -> Transition:
  """round(batch_size * offline_fraction) rows from the offline data, the rest from the buffer
  (offline rows first). `offline_fraction=0.5` is the paper's symmetric sampling (H.2)."""
  n_off = offline_count(batch_size, offline_fraction)
  n_on = batch_size - n_off
  k_off, k_on = jax.random.split(key)
  parts = []
  if n_off:
    parts.append(sample_offline(offline, k_off, n_off))
  if n_on:
    parts.append(sample(buffer, k_on, n_on))
  return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)


def sample_union(offline: Transition, buffer: ReplayBuffer, key: jax.Array,
                 batch_size: int) -> Transition:
  """Uniform over the offline data and the buffer's filled rows together, as if the buffer had been
  initialised with the whole dataset (OCR-CFT table 6 'All', IQL/AWAC-style fine-tuning), without
  copying the dataset into every seed's buffer."""
  n_off = offline.rewards.shape[0]
  indices = jax.random.randint(key, (batch_size,), 0, n_off + buffer.size)
  return gather_union(offline, buffer, indices)


def gather_union(offline: Transition, buffer: ReplayBuffer, indices: jax.Array) -> Transition:
  """Rows of the offline data and the buffer seen as one array: index i < |offline| is offline row
  i, index |offline| + j is buffer row j (`sample_union`; Off2On's prioritised draw)."""
  n_off = offline.rewards.shape[0]
  from_offline = indices < n_off
  off = gather(offline, jnp.minimum(indices, n_off - 1))
  on = gather(buffer.data, jnp.clip(indices - n_off, 0, buffer.capacity - 1))
  return jax.tree_util.tree_map(
      lambda a, b: jnp.where(from_offline.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), off, on)


# ----------------------------------------------------------------------------- a sum tree
# A device-side sum tree (Off2On's prioritised replay; the reference's `SegmentTree`,
# prioritized_replay_buffer.py): one float32 array of 2L nodes, L a power of 2, node 1 the root, node i
# the sum of nodes 2i and 2i+1, leaf j at node L + j (node 0 unused). Writing B leaves recomputes
# their ancestors from their children (as `SegmentTree._propagate`), drawing B rows descends from the
# root: O(B log L) either way, pure and vmappable.

def sum_tree(priorities: jax.Array, num_leaves: int | None = None) -> jax.Array:
  """The sum tree of `priorities` (non-negative), with L = the next power of 2 >= `num_leaves`
  (default: their count) leaves; leaves past the priorities hold 0."""
  n = priorities.shape[-1]
  leaves = 1 << max(int(num_leaves or n) - 1, 0).bit_length()
  if n > leaves:
    raise ValueError(f"{n} priorities do not fit a sum tree of {leaves} leaves")
  levels = [jnp.zeros((leaves,), jnp.float32).at[:n].set(priorities.astype(jnp.float32))]
  while levels[0].shape[0] > 1:
    levels.insert(0, levels[0].reshape(-1, 2).sum(1))
  return jnp.concatenate([jnp.zeros((1,), jnp.float32)] + levels)


def sum_tree_leaves(tree: jax.Array) -> jax.Array:
  """Every leaf's priority (L of them)."""
  return tree[tree.shape[-1] // 2:]


def sum_tree_set(tree: jax.Array, indices: jax.Array, values: jax.Array) -> jax.Array:
  """Leaves `indices` set to `values` (a repeated index must carry one value) and every ancestor
  recomputed as the sum of its two children, level by level up to the root."""
  leaves = tree.shape[-1] // 2
  nodes = leaves + indices
  tree = tree.at[nodes].set(values.astype(tree.dtype))

  def level(_, carry):
    tree, nodes = carry
    nodes = nodes // 2
    return tree.at[nodes].set(tree[2 * nodes] + tree[2 * nodes + 1]), nodes

  return jax.lax.fori_loop(0, leaves.bit_length() - 1, level, (tree, nodes))[0]


def sum_tree_sample(tree: jax.Array, key: jax.Array, batch_size: int) -> jax.Array:
  """`batch_size` leaves drawn in proportion to their priority (leaves at 0 never), by stratified
  segment sampling as PriorityReplayBuffer._get_samples_from_segments: the total mass is cut into
  `batch_size` equal segments, one point drawn uniformly in each, and each point found by descending
  from the root (SegmentTree._retrieve). Leaf j's expected count is batch_size p_j / sum(p)."""
  leaves = tree.shape[-1] // 2
  total = tree[1]
  points = (jnp.arange(batch_size) + jax.random.uniform(key, (batch_size,))) * (total / batch_size)
  points = jnp.minimum(points, jnp.nextafter(total, jnp.zeros_like(total)))

  def level(_, carry):
    nodes, points = carry
    left, right = tree[2 * nodes], tree[2 * nodes + 1]
    # Right when the point is past the left mass, unless the right subtree is empty (a point that
    # float rounding put at its subtree's very end stays on mass).
    go_right = (points >= left) & (right > 0)
    return 2 * nodes + go_right, jnp.where(go_right, points - left, points)

  nodes, _ = jax.lax.fori_loop(0, leaves.bit_length() - 1, level,
                               (jnp.ones((batch_size,), jnp.int32), points))
  return (nodes - leaves).astype(jnp.int32)


def from_transitions(data: Transition, capacity: int | None = None) -> ReplayBuffer:
  """A buffer pre-filled with `data` (e.g. the offline dataset appended to, as Off2On/WSRL do)."""
  n = data.rewards.shape[0]
  capacity = capacity or n
  if capacity < n:
    raise ValueError(f"capacity {capacity} is smaller than the {n} transitions to pre-fill")
  obs_dim, act_dim = data.observations.shape[-1], data.actions.shape[-1]
  return insert(init(capacity, obs_dim, act_dim), data)
