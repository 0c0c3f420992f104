"""o2o_jax.phase: the skeleton of every offline-kind phase (issue #20), on a tiny fake agent over the
tiny Hopper dataset: the result checkpoint holds the metadata and the per-seed score, the snapshots
are gone at the end, a finished run is reused without building anything, a changed config is a
one-line error, and a 0-step phase evaluates the initial states once. The online skeleton
(`run_online_phase`) likewise: final checkpoint, summary.json/txt, reuse of a finished run."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax import loops, phase
from o2o_jax.checkpoints import Checkpointer
from o2o_jax.data import prepared
from o2o_jax.errors import RunDirError

SEEDS = 2


def _update(state, batch, key):
  w = state["w"] + 0.1 * batch.actions.mean(0) + 0.01 * jax.random.normal(key, state["w"].shape)
  return {"w": w}, {"loss": jnp.sum(w ** 2)}


def _act(state, obs, key, explore):
  return jnp.broadcast_to(jnp.tanh(state["w"]), obs.shape[:-1] + state["w"].shape)


LEARNER = loops.Learner(_update, _act)


def _spec(tmp_path, dataset_id, steps=20, **changes):
  config = {"phase": "fake", "seeds": SEEDS, "seed": 3, "steps": steps, "lr": 0.1}
  values = dict(phase="fake", agent="toy", dataset_id=dataset_id, run_name="run", config=config,
                loop=loops.OfflineConfig(num_steps=steps, batch_size=8, chunk=5, eval_every=10,
                                         eval_episodes=1),
                score_key="offline_score", finish=lambda s: {"w": s["w"] * 0 + 7.0},
                summary=lambda scores, timing: f"[fake] scores {len(scores)}",
                plot_keys=("eval/normalized_score", "train/loss"), plot_title="toy",
                out_dir=str(tmp_path), progress=False, checkpoint_every=10)
  values.update(changes)
  return phase.OfflinePhase(**values)


@pytest.fixture
def builder(tiny_hopper_dataset):
  calls = []

  def build(run_dir):
    calls.append(run_dir)
    data = prepared.load_data(tiny_hopper_dataset.dataset_id, batch_size=8)
    states = {"w": jnp.zeros((SEEDS, data.dataset.action_dim), jnp.float32)}
    return phase.Training(LEARNER, states, data.device, data, {"phase": "fake", "what": "toy"})
  return build, calls


def test_runs_saves_the_score_discards_the_snapshots_and_reuses(tiny_hopper_dataset, tmp_path, builder):
  build, calls = builder
  spec = _spec(tmp_path, tiny_hopper_dataset.dataset_id)
  lines = []
  run_dir = phase.run_offline_phase(spec, build, lines.append)
  assert calls == [run_dir] and run_dir == tmp_path / "fake" / "toy" / run_dir.parts[-2] / "run"
  assert lines[-1] == "[fake] scores 2"
  assert not (run_dir / "progress").exists()      # the snapshot at step 10 went with the finish
  assert (run_dir / "curves.png").exists()
  ckpt = Checkpointer(run_dir / "checkpoints")
  assert ckpt.all_steps() == [10, 20]
  state, meta, step = ckpt.restore({"w": np.zeros((SEEDS, 3), np.float32)})
  assert step == 20 and meta["what"] == "toy" and meta["step"] == 20
  np.testing.assert_array_equal(state["w"], 7.0)   # `finish` at the last step only
  assert not np.all(ckpt.restore({"w": np.zeros((SEEDS, 3), np.float32)}, step=10)[0]["w"] == 7.0)
  rows = (run_dir / "metrics.csv").read_text().splitlines()
  header, last = rows[0].split(","), rows[-1].split(",")
  scores = [float(last[header.index(f"eval/normalized_score/seed{i}")]) for i in range(SEEDS)]
  np.testing.assert_allclose(meta["offline_score"], scores, rtol=1e-6)

  # The same phase again: reused, nothing built, nothing rewritten.
  lines.clear()
  assert phase.run_offline_phase(spec, build, lines.append) == run_dir
  assert len(calls) == 1 and lines == [f"[fake] reusing the finished run {run_dir}"]

  # A different config in the same directory: a one-line error, before anything is built.
  changed = dataclasses.replace(spec, config={**spec.config, "lr": 0.2})
  with pytest.raises(RunDirError, match="already holds a different run") as err:
    phase.run_offline_phase(changed, build, lines.append)
  assert "\n" not in str(err.value) and "lr: 0.1 -> 0.2" in str(err.value)
  assert len(calls) == 1


def test_zero_steps_evaluates_the_initial_states_once(tiny_hopper_dataset, tmp_path, builder):
  build, calls = builder
  spec = _spec(tmp_path, tiny_hopper_dataset.dataset_id, steps=0, run_name="zero", finish=None,
               plot_keys=())
  run_dir = phase.run_offline_phase(spec, build, print)
  ckpt = Checkpointer(run_dir / "checkpoints")
  assert ckpt.all_steps() == [0]
  state, meta, _ = ckpt.restore({"w": np.zeros((SEEDS, 3), np.float32)})
  np.testing.assert_array_equal(state["w"], 0.0)
  assert np.shape(meta["offline_score"]) == (SEEDS,)
  assert not (run_dir / "progress").exists() and not (run_dir / "curves.png").exists()


def test_online_phase_saves_the_summary_and_reuses(tiny_hopper_dataset, tmp_path, capsys):
  calls, evals = [], []

  def on_eval(step, s, score):
    evals.append((step, np.shape(score)))
    return s

  def build(run_dir):
    calls.append(run_dir)
    data = prepared.load_data(tiny_hopper_dataset.dataset_id, batch_size=8)
    states = {"w": jnp.zeros((SEEDS, data.dataset.action_dim), jnp.float32)}
    return phase.OnlineTraining(LEARNER, states, data, {"what": "toy"},
                                {"offline": np.array([1.0, 2.0])}, on_eval=on_eval)

  spec = phase.OnlinePhase(
      agent="toy", dataset_id=tiny_hopper_dataset.dataset_id, run_name="run",
      config={"phase": "finetune", "seeds": SEEDS, "seed": 3, "steps": 20},
      loop=phase.online_loop(20, 5, 10, 1, batch_size=8, offline_fraction=0.5),
      out_dir=str(tmp_path), progress=False, checkpoint_every=10)
  assert spec.loop.buffer_size == 20 and not spec.loop.random_warmup and spec.loop.log_every == 10
  lines = []
  run_dir = phase.run_online_phase(spec, build, lines.append)
  assert calls == [run_dir] and run_dir == tmp_path / "finetune" / "toy" / run_dir.parts[-2] / "run"
  assert [st for st, _ in evals] == [10, 20] and evals[-1][1] == (SEEDS,)
  assert not (run_dir / "progress").exists() and (run_dir / "curves.png").exists()
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["agent"] == "toy" and summary["seeds"] == SEEDS and summary["offline"] == [1.0, 2.0]
  assert summary["curve_steps"][-1] == 20 and len(summary["final"]) == SEEDS
  ckpt = Checkpointer(run_dir / "checkpoints")
  assert ckpt.all_steps() == [20]
  _, meta, _ = ckpt.restore({"w": np.zeros((SEEDS, 3), np.float32)})
  assert meta["what"] == "toy" and meta["phase"] == "finetune" and meta["step"] == 20
  np.testing.assert_allclose(meta["final_score"], summary["final"], rtol=1e-6)
  text = (run_dir / "summary.txt").read_text()
  assert "pi_off (offline)" in text and "final fine-tuned" in text

  # Again: reused, nothing built, the summary printed.
  capsys.readouterr()
  lines.clear()
  assert phase.run_online_phase(spec, build, lines.append) == run_dir
  assert len(calls) == 1 and lines == [f"[finetune] reusing the finished run {run_dir}"]
  assert text in capsys.readouterr().out
