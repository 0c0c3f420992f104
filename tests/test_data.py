"""Minari dataset -> flat arrays: values vs the raw episodes, the npz cache, scores and errors."""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import chex
import gymnasium as gym
import numpy as np
import pytest

from o2o_jax import envs
from o2o_jax.data import minari_io
from o2o_jax.data.minari_io import (find_dataset_path, list_datasets, load_dataset,
                                    normalized_score)
from o2o_jax.errors import DatasetError


def _concat(episodes, fn, dtype=None):
  out = np.concatenate([np.asarray(fn(ep)) for ep in episodes], axis=0)
  return out if dtype is None else out.astype(dtype)


def _assert_matches_raw(ds, episodes):
  tr = ds.transitions
  np.testing.assert_array_equal(tr.observations,
                                _concat(episodes, lambda e: e.observations[:-1], np.float32))
  np.testing.assert_array_equal(tr.next_observations,
                                _concat(episodes, lambda e: e.observations[1:], np.float32))
  np.testing.assert_array_equal(tr.actions, _concat(episodes, lambda e: e.actions, np.float32))
  np.testing.assert_array_equal(tr.rewards, _concat(episodes, lambda e: e.rewards, np.float32))
  np.testing.assert_array_equal(tr.terminals,
                                _concat(episodes, lambda e: e.terminations, np.float32))
  np.testing.assert_array_equal(
      ds.timeouts, _concat(episodes, lambda e: e.truncations & ~e.terminations))


def test_load_matches_raw_episodes(tiny_hopper_dataset):
  raw = tiny_hopper_dataset.episodes
  ds = load_dataset(tiny_hopper_dataset.dataset_id)
  n = sum(len(ep) for ep in raw)
  lengths = np.array([len(ep) for ep in raw])

  assert ds.dataset_id == tiny_hopper_dataset.dataset_id
  assert (ds.size, ds.observation_dim, ds.action_dim) == (n, 11, 3)
  chex.assert_shape([ds.transitions.observations, ds.transitions.next_observations], (n, 11))
  chex.assert_shape(ds.transitions.actions, (n, 3))
  chex.assert_shape([ds.transitions.rewards, ds.transitions.terminals, ds.timeouts], (n,))
  for leaf in dataclasses.astuple(ds.transitions):
    assert leaf.dtype == np.float32
  assert ds.timeouts.dtype == bool

  _assert_matches_raw(ds, raw)

  # Episode bookkeeping.
  np.testing.assert_array_equal(ds.episode_lengths, lengths)
  np.testing.assert_array_equal(ds.episode_starts, np.concatenate([[0], np.cumsum(lengths)[:-1]]))
  np.testing.assert_allclose(ds.episode_returns, [ep.rewards.sum() for ep in raw], rtol=1e-12)
  assert ds.episode_returns.dtype == np.float64

  # Exactly one episode end per episode: either a terminal or a timeout on its last row, never both.
  last = ds.episode_starts + ds.episode_lengths - 1
  ends = ds.transitions.terminals.astype(bool) | ds.timeouts
  np.testing.assert_array_equal(np.nonzero(ends)[0], last)
  assert not (ds.transitions.terminals.astype(bool) & ds.timeouts).any()
  n_term = sum(bool(ep.terminations[-1]) for ep in raw)
  assert ds.transitions.terminals.sum() == n_term
  assert ds.timeouts.sum() == len(raw) - n_term
  assert 0 < n_term < len(raw)

  # The flattening is a pure shift inside an episode: s'_t == s_{t+1} except across episode ends.
  inner = np.setdiff1d(np.arange(n - 1), last)
  np.testing.assert_array_equal(ds.transitions.next_observations[inner],
                                ds.transitions.observations[inner + 1])
  assert not np.array_equal(ds.transitions.next_observations[last[:-1]],
                            ds.transitions.observations[last[:-1] + 1])

  # Device copy of the same data.
  dev = ds.device_transitions()
  chex.assert_trees_all_equal(dev, ds.transitions)


def test_terminated_and_truncated_on_the_same_step_is_a_terminal(make_dataset):
  # Seed 1 falls at step 13 (terminated), seed 4 runs to the 30-step limit (truncated). Mark the fall
  # as truncated too, as when an episode terminates exactly at the time limit.
  def both_flags(episodes):
    first = episodes[0]
    truncations = first.truncations.copy()
    truncations[-1] = True
    return [dataclasses.replace(first, truncations=truncations)] + list(episodes[1:])

  tiny = make_dataset("term-and-trunc", seeds=(1, 4), max_steps=30, edit=both_flags)
  assert [len(ep) for ep in tiny.episodes] == [13, 30]
  assert tiny.episodes[0].terminations[-1] and tiny.episodes[0].truncations[-1]
  ds = load_dataset(tiny.dataset_id)
  _assert_matches_raw(ds, tiny.episodes)
  np.testing.assert_array_equal(np.nonzero(ds.transitions.terminals)[0], [12])
  np.testing.assert_array_equal(np.nonzero(ds.timeouts)[0], [42])  # the terminal is no timeout
  np.testing.assert_array_equal(ds.transitions.masks[[12, 42]], [0.0, 1.0])


def test_obs_statistics_and_metadata(tiny_hopper_dataset):
  raw = tiny_hopper_dataset.episodes
  ds = load_dataset(tiny_hopper_dataset.dataset_id)
  obs = _concat(raw, lambda e: e.observations[:-1], np.float64)
  assert ds.obs_mean.dtype == np.float32 and ds.obs_std.dtype == np.float32
  chex.assert_shape([ds.obs_mean, ds.obs_std], (11,))
  np.testing.assert_allclose(ds.obs_mean, obs.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ds.obs_std, obs.std(0) + 1e-3, rtol=1e-5, atol=1e-6)
  # the +1e-3 is really there: a constant feature would otherwise give std 0.
  assert (ds.obs_std >= 1e-3).all()

  assert ds.ref_min_score == -10.0 and ds.ref_max_score == 90.0
  assert ds.env_id == "Hopper-v5"
  assert envs.spec_id(ds.env_spec) == "Hopper-v5"
  assert envs.dataset_env_id(ds) == "Hopper-v5"
  assert Path(ds.path) == Path(minari_io._minari_root()) / tiny_hopper_dataset.dataset_id


def test_normalized_score_hand_values(tiny_hopper_dataset):
  ds = load_dataset(tiny_hopper_dataset.dataset_id)
  assert ds.normalized_score(40.0) == pytest.approx(50.0)
  np.testing.assert_allclose(ds.normalized_score(np.array([-10.0, 90.0, 140.0, -60.0])),
                             [0.0, 100.0, 150.0, -50.0])
  np.testing.assert_allclose(normalized_score([[1.0, 3.0]], 1.0, 5.0), [[0.0, 50.0]])
  assert normalized_score(40.0, -10.0, 90.0).dtype == np.float64


def test_normalized_score_without_refs(make_dataset):
  with pytest.raises(DatasetError, match="ref_min_score") as info:
    normalized_score(10.0, None, 90.0, dataset_id="some/ds-v0")
  assert "some/ds-v0" in str(info.value)
  with pytest.raises(DatasetError):
    normalized_score(10.0, 0.0, None)

  tiny = make_dataset("norefs", seeds=(2,), max_steps=6)
  ds = load_dataset(tiny.dataset_id)
  assert ds.ref_min_score is None and ds.ref_max_score is None
  with pytest.raises(DatasetError, match=tiny.dataset_id):
    ds.normalized_score(1.0)


def test_second_load_hits_npz_cache(tiny_hopper_dataset, isolated_stores, monkeypatch):
  dataset_id = tiny_hopper_dataset.dataset_id
  cache = minari_io._cache_file(find_dataset_path(dataset_id))
  assert Path(isolated_stores["O2O_JAX_CACHE"]) in cache.parents  # not in the user's home
  cache.unlink(missing_ok=True)

  first = load_dataset(dataset_id)
  assert cache.exists()
  assert not list(cache.parent.glob("*.tmp*"))  # the atomic-write temp file is gone

  def _no_flatten(_):
    raise AssertionError("the cached arrays should have been used")

  monkeypatch.setattr(minari_io, "_flatten", _no_flatten)
  start = time.perf_counter()
  second = load_dataset(dataset_id)
  elapsed = time.perf_counter() - start
  assert elapsed < 2.0
  chex.assert_trees_all_equal(second.transitions, first.transitions)
  for name in ("timeouts", "episode_starts", "episode_lengths", "episode_returns", "obs_mean",
               "obs_std"):
    np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    assert getattr(second, name).dtype == getattr(first, name).dtype

  # use_cache=False really re-flattens (and then our patched _flatten is hit).
  with pytest.raises(AssertionError, match="cached arrays"):
    load_dataset(dataset_id, use_cache=False)


def test_corrupt_cache_is_rebuilt(tiny_hopper_dataset):
  dataset_id = tiny_hopper_dataset.dataset_id
  reference = load_dataset(dataset_id)
  cache = minari_io._cache_file(find_dataset_path(dataset_id))
  assert cache.exists()
  cache.write_bytes(b"not an npz file")
  rebuilt = load_dataset(dataset_id)
  chex.assert_trees_all_equal(rebuilt.transitions, reference.transitions)
  with np.load(cache) as f:  # rewritten as a valid cache
    np.testing.assert_array_equal(f["rewards"], reference.transitions.rewards)


def test_unknown_dataset_id(tiny_hopper_dataset):
  bad = "nope/hopper/expert-v9"
  with pytest.raises(DatasetError) as info:
    load_dataset(bad)
  msg = str(info.value)
  assert bad in msg
  assert tiny_hopper_dataset.dataset_id in msg  # lists what is available locally
  assert "experiments.make_dataset" in msg


def test_list_datasets_sees_the_store(tiny_hopper_dataset):
  found = list_datasets()
  assert tiny_hopper_dataset.dataset_id in found
  assert Path(found[tiny_hopper_dataset.dataset_id]) == find_dataset_path(
      tiny_hopper_dataset.dataset_id)
  assert list(found) == sorted(found)


def _set_nan(field, episode_index, row, col=0):
  def edit(episodes):
    episodes = list(episodes)
    ep = episodes[episode_index]
    arr = getattr(ep, field).copy()
    if arr.ndim == 1:
      arr[row] = np.nan
    else:
      arr[row, col] = np.nan
    episodes[episode_index] = dataclasses.replace(ep, **{field: arr})
    return episodes
  return edit


@pytest.mark.parametrize(
    "raw_field, episode_index, row, expected_field, first_transition",
    [
        # O[3] of episode 0 is both observations[3] and next_observations[2]: observations is
        # checked first.
        ("observations", 0, 3, "observations", 3),
        # The final observation of episode 0 (10 steps) is only a next observation.
        ("observations", 0, 10, "next_observations", 9),
        ("actions", 1, 2, "actions", 10 + 2),
        ("rewards", 1, 0, "rewards", 10),
    ])
def test_nan_in_data_names_the_field(make_dataset, raw_field, episode_index, row, expected_field,
                                     first_transition):
  # seeds 9 and 4 both run to the 10-step limit, so episode 1 starts at transition 10.
  tiny = make_dataset(f"nan-{raw_field}", seeds=(9, 4), max_steps=10,
                      edit=_set_nan(raw_field, episode_index, row))
  assert [len(ep) for ep in tiny.episodes] == [10, 10]
  with pytest.raises(DatasetError) as info:
    load_dataset(tiny.dataset_id)
  msg = str(info.value)
  assert f"'{expected_field}'" in msg
  assert tiny.dataset_id in msg
  assert f"first at transition {first_transition}" in msg


def test_dataset_env_mismatch(tiny_hopper_dataset, halfcheetah_dataset):
  cheetah = load_dataset(halfcheetah_dataset.dataset_id)
  assert (cheetah.observation_dim, cheetah.action_dim) == (17, 6)
  assert cheetah.env_id == "HalfCheetah-v5"
  hopper_env = gym.make("Hopper-v5")
  try:
    with pytest.raises(DatasetError) as info:
      envs.check_dataset_matches_env(cheetah, hopper_env)
    msg = str(info.value)
    for size in ("17", "6", "11", "3"):
      assert size in msg
    assert "Hopper-v5" in msg and halfcheetah_dataset.dataset_id in msg
    # The matching pair passes silently.
    envs.check_dataset_matches_env(load_dataset(tiny_hopper_dataset.dataset_id), hopper_env)
  finally:
    hopper_env.close()


def test_make_env_from_dataset_spec(tiny_hopper_dataset):
  ds = load_dataset(tiny_hopper_dataset.dataset_id)
  env = envs.make_env(ds.env_id, ds.env_spec)
  try:
    assert envs.env_dims(env) == (11, 3)
    assert env.spec.max_episode_steps == 30  # the stored spec (30-step limit) wins
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    np.testing.assert_array_equal(env.action_space.high, 1.0)
    envs.check_dataset_matches_env(ds, env)
  finally:
    env.close()


def test_find_dataset_path_falls_back_to_package(tiny_hopper_dataset, isolated_stores, tmp_path,
                                                 monkeypatch):
  src = find_dataset_path(tiny_hopper_dataset.dataset_id)
  package = tmp_path / "package_datasets"
  shutil.copytree(src, package / tiny_hopper_dataset.dataset_id)
  empty_store = tmp_path / "empty_store"
  empty_store.mkdir()
  monkeypatch.setattr(minari_io, "PACKAGE_DATASETS", package)
  monkeypatch.setenv("MINARI_DATASETS_PATH", str(empty_store))

  path = find_dataset_path(tiny_hopper_dataset.dataset_id)
  assert path == package / tiny_hopper_dataset.dataset_id
  assert list_datasets() == {tiny_hopper_dataset.dataset_id: str(path)}
  ds = load_dataset(tiny_hopper_dataset.dataset_id)
  assert Path(ds.path) == path
  _assert_matches_raw(ds, tiny_hopper_dataset.episodes)

  # When the local store also has it, the local store wins.
  monkeypatch.setenv("MINARI_DATASETS_PATH", isolated_stores["MINARI_DATASETS_PATH"])
  assert find_dataset_path(tiny_hopper_dataset.dataset_id) == src
  assert list_datasets()[tiny_hopper_dataset.dataset_id] == str(src)


def test_unopenable_dataset_is_a_dataset_error(tiny_hopper_dataset, tmp_path, monkeypatch):
  src = find_dataset_path(tiny_hopper_dataset.dataset_id)
  store = tmp_path / "store"
  dst = store / "broken" / "ds-v0"
  shutil.copytree(src, dst)
  (dst / "data" / "metadata.json").write_text("{ this is not json")
  monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
  with pytest.raises(DatasetError, match="broken/ds-v0.*cannot be opened"):
    load_dataset("broken/ds-v0")


def test_fingerprint_hashes_rewards_and_actions_with_or_without_the_cache(make_dataset):
  """`minari_io.fingerprint` (what the recipe runner writes to each run's launch.json as "data"):
  size, episodes, mean return and reference scores by hand from the raw episodes, the SHA-1 of the
  float32 rewards then actions; the same whether it reads the flat cache or flattens the set."""
  import hashlib
  tiny = make_dataset("fingerprint", seeds=(0, 1), refs=(1.0, 11.0))
  rewards = np.concatenate([np.asarray(ep.rewards, np.float32) for ep in tiny.episodes])
  actions = np.concatenate([np.asarray(ep.actions, np.float32) for ep in tiny.episodes])
  sha = hashlib.sha1(rewards.tobytes() + actions.tobytes()).hexdigest()[:12]
  returns = [float(np.sum(ep.rewards, dtype=np.float64)) for ep in tiny.episodes]
  expected = {"id": tiny.dataset_id, "sha1": sha, "transitions": len(rewards), "episodes": 2,
              "mean_return": round(sum(returns) / 2, 1), "ref_min_score": 1.0, "ref_max_score": 11.0}
  cache = minari_io._cache_file(find_dataset_path(tiny.dataset_id))
  cache.unlink(missing_ok=True)
  assert minari_io.fingerprint(tiny.dataset_id) == expected       # no cache: flattens (and writes it)
  assert cache.exists()
  assert minari_io.fingerprint(tiny.dataset_id) == expected       # from the cache


def test_fingerprint_tells_two_generations_of_one_id_apart(make_dataset):
  """Two sets of the same size whose rollouts differ in one reward (as a regeneration on another
  host type gives) get different SHA-1s."""
  def nudge(episodes):
    episodes[0].rewards[3] += 1e-3
    return episodes
  a = minari_io.fingerprint(make_dataset("fp-a").dataset_id)
  b = minari_io.fingerprint(make_dataset("fp-b", edit=nudge).dataset_id)
  assert (a["transitions"], a["episodes"]) == (b["transitions"], b["episodes"])
  assert a["sha1"] != b["sha1"]
