"""The CORL side-by-side benchmark's own pieces: its `d4rl` stand-in hands CORL exactly the arrays our
loader trains on, and its update-rate and score parsing (benchmarks/vs_corl)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.vs_corl import report, run

SHIM = Path(run.__file__).resolve().parent / "shim"


def test_d4rl_stand_in_returns_our_loaders_arrays(tmp_path):
  """CORL's scripts call `d4rl.qlearning_dataset(env)`; the stand-in must give the same transitions,
  terminals and timeouts as `o2o_jax.data.load_dataset` (shipped o2o/hopper/medium-v0)."""
  from o2o_jax.data import find_dataset_path, load_dataset
  ds = load_dataset("o2o/hopper/medium-v0")
  store = find_dataset_path("o2o/hopper/medium-v0").parents[2]
  out = tmp_path / "arrays.npz"
  code = ("import d4rl, numpy as np, sys; d = d4rl.qlearning_dataset(None); "
          "np.savez(sys.argv[1], **d); print(*d4rl.ref_scores())")
  env = dict(os.environ, PYTHONPATH=str(SHIM), MINARI_DATASETS_PATH=str(store),
             O2O_DATASET="o2o/hopper/medium-v0")
  proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = np.load(out)
  t = ds.transitions
  for name, ours in (("observations", t.observations), ("actions", t.actions), ("rewards", t.rewards),
                     ("next_observations", t.next_observations), ("terminals", t.terminals),
                     ("timeouts", ds.timeouts.astype(np.float32))):
    np.testing.assert_array_equal(got[name], np.asarray(ours, np.float32), err_msg=name)
  low, high = map(float, proc.stdout.split())
  assert (low, high) == pytest.approx((ds.ref_min_score, ds.ref_max_score))


def _jsonl(path, rows):
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_corl_update_rate_skips_warmup_and_evaluations(tmp_path):
  """Stamps every 250 updates; the interval holding an evaluation (2.0 s extra) and the first 500
  updates are left out: the median of 250/1.0, 250/1.25, 250/1.0 is 250 upd/s."""
  log = tmp_path / "speed.jsonl"
  _jsonl(log, [{"step": 250, "time": 0.0, "kind": "stamp"}, {"step": 500, "time": 5.0, "kind": "stamp"},
               {"step": 750, "time": 6.0, "kind": "stamp"}, {"step": 1000, "time": 7.25, "kind": "stamp"},
               {"step": 1000, "time": 9.0, "kind": "eval", "d4rl_normalized_score": 1.0},
               {"step": 1250, "time": 10.0, "kind": "stamp"}, {"step": 1500, "time": 11.0, "kind": "stamp"}])
  assert run.corl_update_rate(log) == pytest.approx(250.0)


def test_summary_compares_final_scores_with_the_tolerance(tmp_path):
  """CORL finals 50, 54 (mean 52, sample std 2.83) vs ours 40, 42, 44 (mean 42): |diff| 10 > max(5, 2.83)
  -> not within; the curves are read on their common steps."""
  logs = []
  for i, final in enumerate((50.0, 54.0)):
    p = tmp_path / f"seed{i}.jsonl"
    _jsonl(p, [{"step": 5, "time": 0, "kind": "eval", "d4rl_normalized_score": 10.0},
               {"step": 10, "time": 1, "kind": "eval", "d4rl_normalized_score": final}])
    logs.append(str(p))
  csv = tmp_path / "metrics.csv"
  csv.write_text("step,eval/normalized_score/seed0,eval/normalized_score/seed1,eval/normalized_score/seed2\n"
                 "5,1,2,3\n10,40,42,44\n")
  s = report.summarise({"corl_logs": logs, "ours_metrics": str(csv)})
  assert s["corl_final"][:3] == pytest.approx((52.0, np.sqrt(8.0), 2))
  assert s["ours_final"][:3] == pytest.approx((42.0, 2.0, 3))
  assert s["diff"] == pytest.approx(-10.0) and s["tolerance"] == pytest.approx(5.0) and not s["within"]
  # last-3 means over the two evaluations there are: CORL 30, 32 -> 31; ours 20.5, 22, 23.5 -> 22
  assert s["corl_tail"][0] == pytest.approx(31.0) and s["ours_tail"][0] == pytest.approx(22.0)
  assert not s["tail_within"]


def test_a_finished_piece_keeps_what_another_invocation_wrote_meanwhile(tmp_path):
  """A CORL score run takes hours; a speed measurement written to results.json in the meantime must
  survive the score run's write (session 14 lost one that way)."""
  results_file = tmp_path / "results.json"
  run.record(results_file, "cql|d", corl_updates_per_s=[9.6])        # the speed run, meanwhile
  run.record(results_file, "cql|d", corl_logs=["seed0.jsonl"], steps=50_000)   # the score run's end
  run.record(results_file, "iql|d", steps=1)
  assert json.loads(results_file.read_text()) == {
      "cql|d": {"corl_updates_per_s": [9.6], "corl_logs": ["seed0.jsonl"], "steps": 50_000},
      "iql|d": {"steps": 1}}
