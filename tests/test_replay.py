"""The functional replay buffer: ring-buffer writes, sampling, mixed offline/online batches, vmap/jit.

XLA compile time dominates on CPU, so the buffer functions are jitted once at module level (compiled
once per input shape) and reused by the tests; one test also runs the un-jitted (eager) path.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax.data import replay
from o2o_jax.types import Transition, empty_transitions, stack_trees, take_index

OBS_DIM, ACT_DIM = 3, 2
FRACTIONS = (0.0, 0.25, 0.5, 1.0)

_insert = jax.jit(replay.insert)
_sample = jax.jit(replay.sample, static_argnums=2)


def _transitions(ids) -> Transition:
  """Transitions whose every field encodes its id (so a stored row tells which one it was)."""
  ids = np.asarray(ids, np.float32)
  return Transition(
      observations=ids[..., None] * np.ones(OBS_DIM, np.float32),
      actions=ids[..., None] * np.full(ACT_DIM, 0.5, np.float32),
      rewards=ids,
      next_observations=ids[..., None] * np.ones(OBS_DIM, np.float32) + 0.25,
      terminals=(ids % 2 == 1).astype(np.float32))


def test_init_shapes_and_dtypes():
  buf = replay.init(5, OBS_DIM, ACT_DIM)
  assert buf.capacity == 5
  chex.assert_shape([buf.data.observations, buf.data.next_observations], (5, OBS_DIM))
  chex.assert_shape(buf.data.actions, (5, ACT_DIM))
  chex.assert_shape([buf.data.rewards, buf.data.terminals], (5,))
  assert buf.pointer.dtype == jnp.int32 and buf.size.dtype == jnp.int32
  assert int(buf.pointer) == 0 and int(buf.size) == 0
  seeded = replay.init(5, OBS_DIM, ACT_DIM, num_seeds=4)
  assert seeded.capacity == 5
  chex.assert_shape(seeded.data.observations, (4, 5, OBS_DIM))
  chex.assert_shape([seeded.pointer, seeded.size], (4,))


def test_single_inserts_wrap_around_eager_and_jit():
  for insert in (replay.insert, _insert):
    buf = replay.init(5, OBS_DIM, ACT_DIM)
    for i in range(7):
      buf = insert(buf, _transitions(i))
      assert int(buf.size) == min(i + 1, 5)
      assert int(buf.pointer) == (i + 1) % 5
    assert int(buf.pointer) == 2 and int(buf.size) == 5
    # ids 5 and 6 overwrote slots 0 and 1; slots 2..4 still hold ids 2..4.
    chex.assert_trees_all_equal(buf.data, _transitions([5, 6, 2, 3, 4]))


def test_batched_insert_that_wraps():
  buf = _insert(replay.init(5, OBS_DIM, ACT_DIM), _transitions([0, 1, 2]))
  assert (int(buf.pointer), int(buf.size)) == (3, 3)
  chex.assert_trees_all_equal(take_index(buf.data, slice(0, 3)), _transitions([0, 1, 2]))
  np.testing.assert_array_equal(buf.data.rewards[3:], 0.0)  # untouched rows stay empty
  buf = _insert(buf, _transitions([10, 11, 12]))  # rows 3, 4, 0
  assert (int(buf.pointer), int(buf.size)) == (1, 5)
  chex.assert_trees_all_equal(buf.data, _transitions([12, 1, 2, 10, 11]))
  buf = _insert(buf, _transitions([20, 21, 22]))  # rows 1, 2, 3
  assert (int(buf.pointer), int(buf.size)) == (4, 5)
  chex.assert_trees_all_equal(buf.data, _transitions([12, 20, 21, 22, 11]))


def test_insert_casts_to_buffer_dtype():
  buf = replay.init(5, OBS_DIM, ACT_DIM)
  t = _transitions([1, 2, 3])
  t = t.replace(terminals=np.array([True, False, True]),
                rewards=np.array([1.5, 2.5, 3.5], np.float64))
  out = _insert(buf, t)
  assert out.data.terminals.dtype == jnp.float32 and out.data.rewards.dtype == jnp.float32
  np.testing.assert_array_equal(out.data.terminals, [1.0, 0.0, 1.0, 0.0, 0.0])
  np.testing.assert_array_equal(out.data.rewards, [1.5, 2.5, 3.5, 0.0, 0.0])


def test_sample_only_returns_filled_rows():
  buf = _insert(replay.init(5, OBS_DIM, ACT_DIM), _transitions([7, 8, 9]))
  batch = _sample(buf, jax.random.PRNGKey(0), 64)
  chex.assert_shape(batch.observations, (64, OBS_DIM))
  chex.assert_shape(batch.rewards, (64,))
  rewards = np.asarray(batch.rewards)
  assert set(rewards.tolist()) == {7.0, 8.0, 9.0}  # never an empty (zero) row; all 3 rows drawn
  # Rows stay intact (the fields of one transition are gathered together).
  chex.assert_trees_all_equal(batch, _transitions(rewards))
  # The same key gives the same batch, another key another batch.
  chex.assert_trees_all_equal(_sample(buf, jax.random.PRNGKey(0), 64), batch)
  assert not np.array_equal(_sample(buf, jax.random.PRNGKey(1), 64).rewards, rewards)


@jax.jit
def _mixed_for_all_fractions(offline, buf, key):
  return [replay.sample_mixed(offline, buf, key, 16, f) for f in FRACTIONS]


def test_sample_mixed_offline_count():
  offline = _transitions(-1.0 - np.arange(6))  # offline rows: rewards -1 ... -6
  buf = _insert(replay.init(5, OBS_DIM, ACT_DIM), _transitions([0, 1, 2]))  # online: rewards >= 0
  batches = _mixed_for_all_fractions(offline, buf, jax.random.PRNGKey(0))
  for fraction, batch, n_offline in zip(FRACTIONS, batches, (0, 4, 8, 16)):
    assert replay.offline_count(16, fraction) == n_offline
    chex.assert_shape(batch.observations, (16, OBS_DIM))
    rewards = np.asarray(batch.rewards)
    # offline rows come first, then online rows from the filled part of the buffer only.
    assert set(rewards[:n_offline].tolist()) <= {-1.0, -2.0, -3.0, -4.0, -5.0, -6.0}
    assert set(rewards[n_offline:].tolist()) <= {0.0, 1.0, 2.0}
    assert (rewards < 0).sum() == n_offline
    chex.assert_trees_all_equal(batch, _transitions(rewards))  # whole rows, never mixed fields
  # All-offline batches draw uniformly over the dataset's rows (not just the first few).
  assert len(set(np.asarray(batches[-1].rewards).tolist())) >= 4
  assert len(set(np.asarray(batches[0].rewards).tolist())) == 3  # all-online: every filled row
  # round(), not floor/ceil: 10 * 0.3 = 3, 10 * 0.35 = 3.5 -> 4 (round half to even), 7 * 0.5 -> 4.
  assert [replay.offline_count(b, f) for b, f in [(10, 0.3), (10, 0.35), (7, 0.5), (256, 0.1)]] \
      == [3, 4, 4, 26]


def test_sample_mixed_vmapped_over_seeds():
  num_seeds, batch_size = 3, 12
  offline = _transitions(-1.0 - np.arange(50))  # offline rows: rewards -1 ... -50, all distinct
  buffers = replay.init(5, OBS_DIM, ACT_DIM, num_seeds=num_seeds)
  # seed s's buffer holds ids 100*s + {0, 1, 2}.
  online = stack_trees([_transitions(100.0 * s + np.arange(3)) for s in range(num_seeds)])
  buffers = jax.vmap(_insert)(buffers, online)
  np.testing.assert_array_equal(buffers.size, [3, 3, 3])
  np.testing.assert_array_equal(buffers.pointer, [3, 3, 3])

  keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
  sample = jax.jit(jax.vmap(replay.sample_mixed, in_axes=(None, 0, 0, None, None)),
                   static_argnums=(3, 4))
  batch = sample(offline, buffers, keys, batch_size, 0.25)
  chex.assert_shape(batch.observations, (num_seeds, batch_size, OBS_DIM))
  chex.assert_shape(batch.rewards, (num_seeds, batch_size))
  rewards = np.asarray(batch.rewards)
  # 3 rows per seed from the shared (unbatched) offline arrays...
  assert (rewards[:, :3] <= -1.0).all()
  # ...drawn independently per seed,
  assert not np.array_equal(rewards[0, :3], rewards[1, :3])
  # and 9 rows from each seed's own buffer.
  for s in range(num_seeds):
    assert set(rewards[s, 3:].tolist()) <= {100.0 * s, 100.0 * s + 1, 100.0 * s + 2}
  chex.assert_trees_all_equal(batch, _transitions(rewards))


def test_insert_and_sample_in_one_jitted_loop():
  def run(buf, items, key):
    buf, _ = jax.lax.scan(lambda b, t: (replay.insert(b, t), None), buf, items)
    offline = _transitions(np.full(4, -1.0))
    return buf, replay.sample_mixed(offline, buf, key, 8, 0.5)

  buf, batch = jax.jit(run)(replay.init(5, OBS_DIM, ACT_DIM), _transitions(np.arange(1, 8)),
                            jax.random.PRNGKey(1))
  assert (int(buf.pointer), int(buf.size)) == (2, 5)
  np.testing.assert_array_equal(buf.data.rewards, [6, 7, 3, 4, 5])
  rewards = np.asarray(batch.rewards)
  np.testing.assert_array_equal(rewards[:4], -1.0)
  assert set(rewards[4:].tolist()) <= {3.0, 4.0, 5.0, 6.0, 7.0}


def test_from_transitions_prefills():
  data = _transitions(np.arange(3))
  buf = replay.from_transitions(data, capacity=5)
  assert (buf.capacity, int(buf.size), int(buf.pointer)) == (5, 3, 3)
  chex.assert_trees_all_equal(take_index(buf.data, slice(0, 3)), data)
  exact = replay.from_transitions(data)
  assert (exact.capacity, int(exact.size), int(exact.pointer)) == (3, 3, 0)
  with pytest.raises(ValueError, match="capacity 2"):
    replay.from_transitions(data, capacity=2)


def test_transition_masks_and_len():
  t = _transitions([0, 1, 2])
  np.testing.assert_array_equal(t.masks, [1.0, 0.0, 1.0])
  assert len(t) == 3
  empty = empty_transitions(4, OBS_DIM, ACT_DIM, leading=(2,))
  chex.assert_shape(empty.observations, (2, 4, OBS_DIM))
  assert empty.rewards.dtype == jnp.float32


def test_insert_lockstep_equals_vmapped_insert():
  """The online loop's shared-pointer insert is the vmapped insert, also across the wrap-around."""
  seeds, capacity = 3, 4
  lock = replay.init(capacity, 2, 1, num_seeds=seeds)
  vm = replay.init(capacity, 2, 1, num_seeds=seeds)
  lock_fn = jax.jit(replay.insert_lockstep)
  vm_fn = jax.jit(jax.vmap(replay.insert))
  for t in range(6):
    tr = Transition(observations=jnp.full((seeds, 2), t, jnp.float32) + jnp.arange(seeds)[:, None],
                    actions=jnp.full((seeds, 1), -t, jnp.float32),
                    rewards=jnp.arange(seeds, dtype=jnp.float32) * 10 + t,
                    next_observations=jnp.full((seeds, 2), t + 1, jnp.float32),
                    terminals=jnp.full((seeds,), t % 2, jnp.float32))
    lock, vm = lock_fn(lock, tr), vm_fn(vm, tr)
  chex.assert_trees_all_equal(lock, vm)
  np.testing.assert_array_equal(lock.data.rewards[1], [14.0, 15.0, 12.0, 13.0])


def test_sample_union_is_uniform_over_offline_and_filled_rows():
  """--buffer=all: rows drawn uniformly from the offline data and the buffer's filled rows together
  (never from its empty rows), whole rows, without copying the dataset into the buffer."""
  offline = _transitions(-1.0 - np.arange(6))                                 # 6 offline rows
  buf = _insert(replay.init(10, OBS_DIM, ACT_DIM), _transitions([0, 1]))    # 2 filled of 10
  batch = jax.jit(replay.sample_union, static_argnums=3)(offline, buf, jax.random.PRNGKey(0), 4000)
  rewards = np.asarray(batch.rewards)
  assert set(rewards.tolist()) == {-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, 0.0, 1.0}
  chex.assert_trees_all_equal(batch, _transitions(rewards))
  assert abs((rewards < 0).mean() - 6 / 8) < 0.03          # 3 sigma ~ 0.02 at n = 4000


def test_top_episode_indices(tiny_hopper_dataset):
  from o2o_jax.data import load_dataset
  ds = load_dataset(tiny_hopper_dataset.dataset_id)
  idx = ds.top_episode_indices(2)
  best = np.sort(np.argsort(-ds.episode_returns)[:2])
  expected = np.concatenate([np.arange(ds.episode_starts[i], ds.episode_starts[i] + ds.episode_lengths[i])
                             for i in best])
  np.testing.assert_array_equal(idx, expected)
  assert np.isclose(ds.transitions.rewards[idx].sum(), ds.episode_returns[best].sum(), rtol=1e-5)
  assert ds.top_episode_indices(0).shape == (0,)
