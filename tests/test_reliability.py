"""Reliability: the divergence guard, one-line errors for bad input, and property-based tests of the
replay buffer and of the Minari-to-arrays conversion. (Resume after SIGKILL/SIGINT is tested end to end
in test_finetune_pipeline.py.)"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from o2o_jax import envs, loops, resume
from o2o_jax.agents.online import td3
from o2o_jax.data import replay
from o2o_jax.errors import DivergenceError
from o2o_jax.types import Transition, seed_keys


# ------------------------------------------------------------------------------ divergence guard

def _poisoned_update(state, batch, key):
  """TD3's update, with NaN rewards from update 30 on (as a corrupt batch would bring)."""
  batch = batch.replace(rewards=jnp.where(state.step >= 30, jnp.nan, batch.rewards))
  return td3.update(state, batch, key)


def _random_hopper_data(n):
  """n random transitions of Hopper's sizes (11-dim observations, 3-dim actions), seed 0."""
  rng = np.random.default_rng(0)
  return Transition(observations=jnp.asarray(rng.normal(size=(n, 11)), jnp.float32),
                    actions=jnp.asarray(rng.uniform(-1, 1, (n, 3)), jnp.float32),
                    rewards=jnp.asarray(rng.normal(size=n), jnp.float32),
                    next_observations=jnp.asarray(rng.normal(size=(n, 11)), jnp.float32),
                    terminals=jnp.zeros(n, jnp.float32))


def test_nan_in_a_batch_stops_the_run_naming_phase_step_seed_and_keeps_the_snapshot(tmp_path):
  data = _random_hopper_data(500)
  cfg = td3.Config(hidden_dims=(8, 8))
  states = loops.init_states(td3, seed_keys(0, 2), 11, 3, cfg)
  snapshots = resume.Snapshots(tmp_path / "progress", every=20)
  config = loops.OfflineConfig(num_steps=60, batch_size=16, chunk=10, eval_every=60, eval_episodes=1)
  with pytest.raises(DivergenceError) as info:
    loops.run_offline(loops.Learner(_poisoned_update, td3.act), states, data,
                      make_env=lambda: envs.make_env("Hopper-v5"), num_seeds=2, seed=0, config=config,
                      snapshots=snapshots, phase="pretrain", progress=False)
  message = str(info.value)
  # Updates 30..39 form the chunk that ends at step 40; the snapshot at 20 is the last good state.
  assert "pretrain diverged at step 40" in message and "seed(s) 0, 1" in message
  assert "metrics actor_loss, critic_loss" in message and "parameters .actor.params['params']" in message
  assert "last good snapshot (step 20)" in message
  assert snapshots.latest_step() == 20
  restored, meta, step = snapshots.restore(loops.init_states(td3, seed_keys(0, 2), 11, 3, cfg))
  assert step == 20 and meta["phase"] == "pretrain"
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(restored))
  np.testing.assert_array_equal(restored.step, [20, 20])


class _Rows:
  """The metrics writer `run_offline` needs, keeping rows in memory."""

  def __init__(self):
    self.rows = {}

  def truncate_after(self, step):
    self.rows = {s: r for s, r in self.rows.items() if s <= step}

  def write(self, step, row):
    self.rows[step] = row

  def flush(self):
    pass


def test_a_stop_signal_inside_a_chunk_snapshots_there_and_the_resumed_run_is_the_uninterrupted_one(
    tmp_path, monkeypatch):
  """SIGTERM arrives at update 10 of a 40-update chunk. The run stops at the end of the running
  block (one update per block here), not of the chunk: its snapshot is at step 10 and records the
  chunk's first step and metric sums. Rerunning resumes there and finishes the chunk with its own
  keys: the final states are bit-identical to an uninterrupted run's, and so are the logged train
  metrics of that chunk (a mean over all 40 updates, not over the 30 after the resume)."""
  from o2o_jax.errors import Interrupted
  data = _random_hopper_data(200)
  cfg = td3.Config(hidden_dims=(8, 8))
  config = loops.OfflineConfig(num_steps=80, batch_size=16, chunk=40, eval_every=40, eval_episodes=1)
  monkeypatch.setattr(loops, "FIRST_BLOCK", 3)
  monkeypatch.setattr(loops, "BLOCK_SECONDS", 0.0)     # every later block: one update

  def run(name, rows):
    fresh = loops.init_states(td3, seed_keys(0, 2), 11, 3, cfg)
    return loops.run_offline(loops.Learner(td3.update, td3.act), fresh,
                             data, make_env=lambda: envs.make_env("Hopper-v5"), num_seeds=2, seed=0,
                             config=config, snapshots=resume.Snapshots(tmp_path / name, every=40),
                             metrics_writer=rows, phase="pretrain", progress=False, log=lambda *a: None)

  want_states, want_history = run("whole", want_rows := _Rows())
  monkeypatch.setenv("O2O_JAX_FAULT", "SIGTERM:pretrain:10")
  with pytest.raises(Interrupted, match="pretrain stopped by SIGTERM at step 10"):
    run("stopped", rows := _Rows())
  _, meta, step = resume.Snapshots(tmp_path / "stopped", every=40).restore(
      loops.init_states(td3, seed_keys(0, 2), 11, 3, cfg))
  assert step == 10 and meta["chunk"]["origin"] == 0
  monkeypatch.delenv("O2O_JAX_FAULT")
  got_states, got_history = run("stopped", rows)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got_states, want_states)
  assert [h["step"] for h in got_history] == [40, 80]
  for s in (40, 80):
    train = {k: v for k, v in rows.rows[s].items() if k.startswith("train/")}
    assert train and set(train) == {k for k in want_rows.rows[s] if k.startswith("train/")}
    for k, v in train.items():
      np.testing.assert_array_equal(v, want_rows.rows[s][k])


# ------------------------------------------------------------------------------ bad input

def _finetune(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.finetune", *args], env=env,
                        capture_output=True, text=True, timeout=timeout)


TINY = ["--budget=quick", "--progress=false", "--hidden_dims=8,8", "--critic_hidden=8,8",
        "--batch_size=16", "--pretrain_steps=20", "--reevaluate_steps=10", "--align_steps=10",
        "--online_steps=20", "--warmup_steps=10", "--eval_every=20", "--eval_episodes=1"]


@pytest.mark.parametrize("args, message", [
    (["--agent=nope"], "value should be one of"),
    (["--seeds=0"], "--seeds must be at least 1"),
    (["--online_steps=0"], "--online_steps must be positive"),
    (["--pretrain_steps=-1"], "--pretrain_steps must not be negative"),
    (["--tau_start=0.1", "--tau_end=0.01"], "--tau_end (0.01) is below --tau_start (0.1)"),
    (["--batch_size=100000"], "is larger than the dataset"),
    (["--dataset=o2o/nowhere/medium-v0"], "unknown dataset id 'o2o/nowhere/medium-v0'"),
])
def test_bad_flags_give_one_line_and_exit_code(args, message, tiny_hopper_dataset, tmp_path):
  res = _finetune(f"--dataset={tiny_hopper_dataset.dataset_id}", f"--out_dir={tmp_path}", *TINY, *args)
  assert res.returncode in (1, 2), res.stderr[-2000:]      # 1: absl's flag parser, 2: our checks
  assert message in res.stderr and "Traceback" not in res.stderr


def test_dataset_of_another_env_is_refused(tiny_hopper_dataset):
  from o2o_jax.data import load_dataset
  from o2o_jax.errors import DatasetError
  env = envs.make_env("HalfCheetah-v5")
  with pytest.raises(DatasetError, match="has observations of size 11 .* env HalfCheetah-v5 has 17"):
    envs.check_dataset_matches_env(load_dataset(tiny_hopper_dataset.dataset_id), env)
  env.close()


def test_inf_in_data_is_refused(make_dataset):
  from o2o_jax.data import load_dataset
  from o2o_jax.errors import DatasetError

  def put_inf(episodes):
    episodes[0].rewards[1] = np.inf
    return episodes

  tiny = make_dataset("inf-reward", edit=put_inf)
  with pytest.raises(DatasetError, match="rewards"):
    load_dataset(tiny.dataset_id)


# ------------------------------------------------------------------------------ property-based

OBS, ACT = 2, 1
_insert_j = jax.jit(replay.insert)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(1, 6), batches=st.lists(st.integers(1, 5), min_size=1, max_size=6))
def test_replay_buffer_holds_the_last_capacity_transitions(capacity, batches):
  """After any sequence of inserts, the buffer holds exactly the newest min(n, capacity) ids, the
  pointer is n mod capacity, and each id sits in row id mod capacity."""
  buf = replay.init(capacity, OBS, ACT)
  next_id = 0
  for size in batches:
    ids = np.arange(next_id, next_id + size, dtype=np.float32)
    next_id += size
    if size > capacity:        # a batch larger than the buffer: insert row by row (same semantics)
      for i in ids:
        buf = _insert_j(buf, _rows(np.array([i], np.float32)))
    else:
      buf = _insert_j(buf, _rows(ids))
  n = next_id
  assert int(buf.size) == min(n, capacity) and int(buf.pointer) == n % capacity
  stored = np.asarray(buf.data.rewards)[: int(buf.size)]
  assert sorted(stored.tolist()) == list(range(max(0, n - capacity), n))
  for row, i in enumerate(stored):
    assert row == int(i) % capacity
    np.testing.assert_array_equal(np.asarray(buf.data.observations)[row], [i, i])


def _rows(ids):
  return Transition(observations=np.stack([ids, ids], -1), actions=ids[:, None],
                    rewards=ids, next_observations=np.stack([ids, ids], -1) + 1,
                    terminals=np.zeros_like(ids))


# Episode structures: each episode has a length and how it ends (terminated / truncated).
_episode = st.tuples(st.integers(1, 4), st.sampled_from(["terminated", "truncated"]))


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(structure=st.lists(_episode, min_size=1, max_size=5))
def test_minari_to_arrays_on_random_episode_structures(structure, isolated_stores):
  """Any mix of terminated/truncated episodes, single-step ones included, written with Minari and
  read back: transitions line up with the raw episodes (next obs = the following obs, terminals only
  on terminations, timeouts only on truncations, episode starts/lengths/returns)."""
  import minari
  from minari.data_collector import EpisodeBuffer
  from o2o_jax.data import load_dataset
  rng = np.random.default_rng(len(structure))
  buffers, raw = [], []
  for i, (length, end) in enumerate(structure):
    obs = rng.normal(size=(length + 1, 11))
    act = rng.uniform(-1, 1, (length, 3)).astype(np.float32)
    rew = rng.normal(size=length)
    term = np.zeros(length, bool)
    trunc = np.zeros(length, bool)
    (term if end == "terminated" else trunc)[-1] = True
    buffers.append(EpisodeBuffer(id=i, observations=obs, actions=act, rewards=rew,
                                 terminations=term, truncations=trunc))
    raw.append((obs, act, rew, term, trunc))
  dataset_id = f"prop/hopper/s{abs(hash(tuple(structure))) % 10**9}-v0"
  if dataset_id not in minari.list_local_datasets():
    minari.create_dataset_from_buffers(dataset_id, buffers, env="Hopper-v5",
                                       algorithm_name="random", author="test", author_email="t@t",
                                       code_permalink="-")
  ds = load_dataset(dataset_id)
  t = ds.transitions
  assert ds.size == sum(length for length, _ in structure)
  np.testing.assert_array_equal(ds.episode_lengths, [length for length, _ in structure])
  i = 0
  for k, (obs, act, rew, term, trunc) in enumerate(raw):
    n = len(rew)
    assert ds.episode_starts[k] == i
    np.testing.assert_allclose(t.observations[i:i + n], obs[:-1], rtol=1e-6)
    np.testing.assert_allclose(t.next_observations[i:i + n], obs[1:], rtol=1e-6)
    np.testing.assert_allclose(t.actions[i:i + n], act)
    np.testing.assert_allclose(t.rewards[i:i + n], rew, rtol=1e-6)
    np.testing.assert_array_equal(t.terminals[i:i + n], term.astype(np.float32))
    np.testing.assert_array_equal(ds.timeouts[i:i + n], trunc & ~term)
    assert np.isclose(ds.episode_returns[k], rew.sum())
    i += n


def test_empty_dataset_is_refused():
  from o2o_jax.data import minari_io
  from o2o_jax.errors import DatasetError
  arrays = {k: np.zeros((0, 3), np.float32) for k in ("observations", "next_observations", "actions")}
  arrays.update(rewards=np.zeros(0, np.float32), terminals=np.zeros(0, np.float32))
  with pytest.raises(DatasetError, match="'o2o/x/medium-v0' is empty .*regenerate it"):
    minari_io._validate("o2o/x/medium-v0", arrays)
