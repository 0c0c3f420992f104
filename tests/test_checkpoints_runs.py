"""Orbax checkpoints of seed-vmapped states, run directories, metrics.csv and curves."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training.train_state import TrainState

from o2o_jax import runs
from o2o_jax.checkpoints import Checkpointer
from o2o_jax.data import replay
from o2o_jax.errors import CheckpointError, RunDirError
from o2o_jax.logging import MetricsWriter, plot_curves, read_csv
from o2o_jax.types import Transition

NUM_SEEDS, OBS_DIM, ACT_DIM = 3, 4, 2


class _TinyNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(ACT_DIM)(x)


# One module and optimizer object for every state: TrainState's static fields (apply_fn, tx) are part
# of the pytree structure, so a template must share them.
_NET, _TX = _TinyNet(), optax.adam(1e-3)


@jax.jit
def _build_state(key, items: Transition):
  def one(k):
    params = _NET.init(k, jnp.zeros((1, OBS_DIM)))
    return TrainState.create(apply_fn=_NET.apply, params=params, tx=_TX)

  init_key, rng_key = jax.random.split(key)
  train = jax.vmap(one)(jax.random.split(init_key, NUM_SEEDS))
  buffer = jax.vmap(replay.insert)(replay.init(5, OBS_DIM, ACT_DIM, num_seeds=NUM_SEEDS), items)
  return {"agent": train, "buffer": buffer, "rng": jax.random.split(rng_key, NUM_SEEDS)}


def _make_state(seed: int):
  """A seed-vmapped agent-like state: a TrainState per seed (params + Adam state, from a vmapped
  init) plus a replay buffer with different contents per seed. Built under one jit (compiled once)."""
  rng = np.random.default_rng(seed)
  n = 3
  items = Transition(
      observations=rng.normal(size=(NUM_SEEDS, n, OBS_DIM)).astype(np.float32),
      actions=rng.uniform(-1, 1, (NUM_SEEDS, n, ACT_DIM)).astype(np.float32),
      rewards=rng.normal(size=(NUM_SEEDS, n)).astype(np.float32),
      next_observations=rng.normal(size=(NUM_SEEDS, n, OBS_DIM)).astype(np.float32),
      terminals=(rng.uniform(size=(NUM_SEEDS, n)) < 0.5).astype(np.float32))
  state = _build_state(jax.random.PRNGKey(seed), items)
  state["env_steps"] = jnp.int32(1000 * seed)
  return state


@pytest.fixture(scope="module")
def states():
  return {seed: _make_state(seed) for seed in (1, 2, 3)}


def _template():
  return _make_state(0)  # same structure/shapes/dtypes, different values


def test_round_trip_is_bit_exact(states, tmp_path):
  state = states[1]
  obs_mean = np.array([0.1, -2.5, 3.25, 1e-7], np.float32)
  meta = {"config": {"agent": "o2sac", "lr": 3e-4, "hidden": (8, 8)},
          "dataset_id": "test/hopper/random-v0", "obs_mean": obs_mean,
          "obs_std": np.ones(OBS_DIM, np.float32) * np.float32(0.3), "reward_scale": np.float32(0.1),
          "num_seeds": np.int64(NUM_SEEDS), "normalize": np.bool_(True),
          "returns": jnp.array([1.5, 2.5])}
  ckpt = Checkpointer(tmp_path / "checkpoints")
  ckpt.save(7, state, meta)
  assert ckpt.all_steps() == [7] and ckpt.latest_step() == 7
  ckpt.close()

  template = _template()
  restored, restored_meta, step = Checkpointer(tmp_path / "checkpoints").restore(template)
  assert step == 7
  # Same structure (TrainState, Transition, ReplayBuffer nodes), dtypes, shapes and bits.
  chex.assert_trees_all_equal_structs(restored, state)
  chex.assert_trees_all_equal_dtypes(restored, state)
  chex.assert_trees_all_equal(restored, state)
  assert isinstance(restored["agent"], TrainState)
  assert isinstance(restored["buffer"], replay.ReplayBuffer)
  chex.assert_shape(restored["agent"].params["params"]["Dense_0"]["kernel"],
                    (NUM_SEEDS, OBS_DIM, ACT_DIM))
  np.testing.assert_array_equal(restored["buffer"].pointer, [3, 3, 3])
  assert restored["agent"].apply_fn is not None  # static fields come from the template
  # the restored state is not just the template
  assert not np.array_equal(restored["agent"].params["params"]["Dense_0"]["kernel"],
                            template["agent"].params["params"]["Dense_0"]["kernel"])

  # Metadata: numpy values come back as JSON numbers/lists with the exact same values.
  assert restored_meta["dataset_id"] == "test/hopper/random-v0"
  assert restored_meta["config"] == {"agent": "o2sac", "lr": 3e-4, "hidden": [8, 8]}
  np.testing.assert_array_equal(np.asarray(restored_meta["obs_mean"], np.float32), obs_mean)
  np.testing.assert_array_equal(np.asarray(restored_meta["obs_std"], np.float32), meta["obs_std"])
  assert np.float32(restored_meta["reward_scale"]) == np.float32(0.1)
  assert restored_meta["num_seeds"] == 3 and isinstance(restored_meta["num_seeds"], int)
  assert restored_meta["normalize"] is True
  assert restored_meta["returns"] == [1.5, 2.5]
  assert Checkpointer(tmp_path / "checkpoints").read_metadata()["dataset_id"] == meta["dataset_id"]


def test_restore_without_checkpoint_raises(tmp_path):
  ckpt = Checkpointer(tmp_path / "empty")
  assert ckpt.latest_step() is None
  with pytest.raises(CheckpointError, match="no checkpoint found"):
    ckpt.restore({"x": jnp.zeros(2)})
  with pytest.raises(CheckpointError, match="no checkpoint found"):
    ckpt.read_metadata()


def _garble_step(directory: Path, step: int) -> int:
  """Truncates/garbles every data file of a step (the commit markers stay, so the step is listed)."""
  count = 0
  for f in sorted((directory / str(step)).rglob("*")):
    if f.is_file() and f.name not in ("commit_success.txt", "_CHECKPOINT_METADATA"):
      data = f.read_bytes()
      f.write_bytes(b"\x00garbage\xff" + data[: len(data) // 3][::-1])
      count += 1
  return count


def test_corrupt_latest_falls_back_to_previous(states, tmp_path, caplog):
  directory = tmp_path / "checkpoints"
  ckpt = Checkpointer(directory, max_to_keep=2)
  for step, seed in ((10, 1), (20, 2), (30, 3)):
    ckpt.save(step, states[seed], {"step": step})
  assert ckpt.all_steps() == [20, 30]  # max_to_keep=2 dropped step 10
  assert not (directory / "10").exists()
  ckpt.close()
  assert _garble_step(directory, 30) >= 3

  resumed = Checkpointer(directory, max_to_keep=2)
  with caplog.at_level(logging.WARNING, logger="o2o_jax.checkpoints"):
    restored, meta, step = resumed.restore(_template())
  assert step == 20 and meta == {"step": 20}
  chex.assert_trees_all_equal(restored, states[2])
  warnings = [r for r in caplog.records if r.name == "o2o_jax.checkpoints"]
  assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
  assert "30" in warnings[0].getMessage() and "20" in warnings[0].getMessage()

  # An explicitly requested corrupt step is not silently replaced by another one.
  with pytest.raises(CheckpointError, match="step 30"):
    resumed.restore(_template(), step=30)
  # Every step corrupt: a CheckpointError that names them all.
  _garble_step(directory, 20)
  with pytest.raises(CheckpointError) as info:
    Checkpointer(directory, max_to_keep=2).restore(_template())
  assert "step 30" in str(info.value) and "step 20" in str(info.value)


def test_restore_with_wrong_template_raises(states, tmp_path):
  ckpt = Checkpointer(tmp_path / "checkpoints")
  ckpt.save(1, {"w": jnp.zeros((3, 4))}, {})
  with pytest.raises(CheckpointError, match="cannot restore"):
    ckpt.restore({"w": jnp.zeros((3, 4)), "extra": jnp.zeros(2)})


# --- run directories -----------------------------------------------------------------------------


def _config(**overrides):
  cfg = {"agent": "o2sac", "dataset": "test/hopper/random-v0", "seed": 0, "num_seeds": 3,
         "lr": 3e-4, "restart": False, "log_every": 100, "path": Path("/x/y")}
  cfg.update(overrides)
  return cfg


def test_prepare_run_dir_fresh_resume_conflict_restart(tmp_path):
  run_dir = runs.run_dir_for(str(tmp_path), "offline", "o2sac", "test/hopper/random-v0", "r1")
  assert run_dir == tmp_path / "offline" / "o2sac" / "test_hopper_random-v0" / "r1"

  assert runs.prepare_run_dir(run_dir, _config()) is False  # fresh
  saved = json.loads((run_dir / "config.json").read_text())
  assert saved["lr"] == 3e-4 and saved["path"] == "/x/y"  # non-JSON values stored as str
  assert runs.read_config(run_dir) == saved

  (run_dir / "metrics.csv").write_text("step\n1\n")
  assert runs.prepare_run_dir(run_dir, _config()) is True  # same config: resume
  # Keys that may change between an interrupted run and its resumption.
  assert runs.prepare_run_dir(run_dir, _config(restart=True, log_every=7)) is True
  assert (run_dir / "metrics.csv").exists()

  with pytest.raises(RunDirError) as info:
    runs.prepare_run_dir(run_dir, _config(lr=1e-3))
  msg = str(info.value)
  assert "lr" in msg and "0.0003" in msg and "0.001" in msg and "--restart" in msg
  assert "seed" not in msg  # only the differing keys are named
  with pytest.raises(RunDirError, match="new_key"):
    runs.prepare_run_dir(run_dir, _config(new_key=1))
  assert json.loads((run_dir / "config.json").read_text()) == saved  # never overwritten

  # restart=True wipes the directory and starts fresh with the new config.
  assert runs.prepare_run_dir(run_dir, _config(lr=1e-3), restart=True) is False
  assert not (run_dir / "metrics.csv").exists()
  assert runs.read_config(run_dir)["lr"] == 1e-3


def test_prepare_run_dir_refuses_foreign_directories(tmp_path):
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(RunDirError, match="not an o2o_jax run"):
    runs.prepare_run_dir(foreign, _config())
  assert (foreign / "notes.txt").read_text() == "mine"
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text("{not json")
  with pytest.raises(RunDirError, match="--restart"):
    runs.prepare_run_dir(broken, _config())
  with pytest.raises(RunDirError, match="no config.json"):
    runs.read_config(tmp_path / "nothing")


# --- metrics.csv and curves ----------------------------------------------------------------------


def test_metrics_writer_rows_new_columns_and_per_seed(tmp_path):
  writer = MetricsWriter(tmp_path, tensorboard=False)
  row = writer.write(0, {"train/loss": np.array([1.0, 2.0, 3.0]), "train/alpha": 0.5})
  assert row == {"step": 0, "train/loss": 2.0, "train/alpha": 0.5}  # seed axis -> mean
  writer.write(10, {"train/loss": jnp.array([0.5, 0.5, 0.5]), "train/alpha": 0.25})
  # A new column (the first evaluation) appears later: per-seed columns for eval/return.
  row = writer.write(20, {"train/loss": 0.1, "eval/return": np.array([10.0, 20.0, 60.0]),
                          "eval/normalized_score": np.array([1.0, 2.0, 6.0])})
  assert row["eval/return"] == 30.0 and row["eval/return/seed2"] == 60.0
  writer.close()

  with open(tmp_path / "metrics.csv") as f:
    lines = list(csv.reader(f))
  assert lines[0] == ["step", "train/loss", "train/alpha", "eval/return", "eval/return/seed0",
                      "eval/return/seed1", "eval/return/seed2", "eval/normalized_score",
                      "eval/normalized_score/seed0", "eval/normalized_score/seed1",
                      "eval/normalized_score/seed2"]
  assert len(lines) == 4 and all(len(line) == len(lines[0]) for line in lines)
  rows = read_csv(tmp_path / "metrics.csv")
  assert [float(r["step"]) for r in rows] == [0, 10, 20]
  assert [r["train/alpha"] for r in rows] == ["0.5", "0.25", ""]  # missing value: empty cell
  assert rows[0]["eval/return"] == "" and float(rows[2]["eval/return/seed1"]) == 20.0
  assert float(rows[2]["eval/normalized_score/seed0"]) == 1.0
  # train/loss is not a per-seed key: no per-seed columns for it.
  assert not any(k.startswith("train/loss/") for k in rows[0])

  # A writer reopened on the same run (resume) keeps appending under the existing header,
  # and truncate_after drops rows logged after a checkpoint.
  again = MetricsWriter(tmp_path, tensorboard=False)
  again.write(30, {"train/loss": 0.05, "eval/return": np.array([1.0, 2.0, 3.0])})
  again.truncate_after(20)
  again.close()
  rows = read_csv(tmp_path / "metrics.csv")
  assert [float(r["step"]) for r in rows] == [0, 10, 20]
  assert len(rows[0]) == len(lines[0])


def test_metrics_writer_merges_metrics_of_one_step_into_one_row(tmp_path):
  writer = MetricsWriter(tmp_path, tensorboard=False)
  writer.write(5, {"train/loss": 1.0})
  merged = writer.write(5, {"eval/return": np.array([1.0, 3.0])})
  assert merged == {"step": 5, "train/loss": 1.0, "eval/return": 2.0, "eval/return/seed0": 1.0,
                    "eval/return/seed1": 3.0}
  assert not (tmp_path / "metrics.csv").exists()   # the row is still open
  writer.write(6, {"train/loss": 0.5})               # a new step closes the previous row
  assert [r["step"] for r in read_csv(tmp_path / "metrics.csv")] == ["5"]
  writer.close()
  rows = read_csv(tmp_path / "metrics.csv")
  assert [(r["step"], r["train/loss"], r["eval/return"]) for r in rows] == [
      ("5", "1.0", "2.0"), ("6", "0.5", "")]


def test_metrics_writer_tensorboard_and_plot(tmp_path):
  writer = MetricsWriter(tmp_path)
  for step in range(0, 50, 10):
    writer.write(step, {"train/loss": 1.0 / (step + 1),
                        "eval/return": np.array([step, step + 1.0, step + 2.0]),
                        "eval/normalized_score": np.array([np.nan, 1.0, 2.0])})
  writer.close()
  events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert len(events) == 1 and events[0].stat().st_size > 0

  out = plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png", title="tiny")
  assert out == str(tmp_path / "curves.png")
  data = (tmp_path / "curves.png").read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
  # No eval column -> nothing to plot, no file.
  noeval = MetricsWriter(tmp_path / "noeval", tensorboard=False)
  noeval.write(0, {"train/loss": 1.0})
  noeval.close()
  assert plot_curves(tmp_path / "noeval" / "metrics.csv", tmp_path / "none.png") is None
  assert not (tmp_path / "none.png").exists()
