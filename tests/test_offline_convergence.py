"""The grid's convergence check of an offline run (issue #22: flat over the last 20% of its steps),
benchmarks/offline_convergence.py, on hand-computed curves."""
import math

import pytest

from benchmarks import offline_convergence as oc


def test_drift_is_the_fitted_lines_change_across_the_last_fifth():
  steps = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
  # Window [80, 100]: 40, 43, 46 lie on a line of slope 0.3 per step, 20 steps long: drift 6.0.
  assert oc.tail_drift(steps, [0, 5, 9, 20, 25, 30, 35, 40, 43, 46]) == (pytest.approx(6.0), 3)
  # A swing with no trend (30, 50, 30) is flat however large the swing; the curve before the
  # window does not count.
  assert oc.tail_drift(steps, [90, 0, 0, 0, 0, 0, 0, 30, 50, 30]) == (pytest.approx(0.0), 3)
  drift, n = oc.tail_drift([50, 100], [1.0, 2.0])       # one evaluation in [80, 100]
  assert math.isnan(drift) and n == 1


def test_the_table_reads_seed_means_from_metrics_csv(tmp_path):
  run = tmp_path / "pretrain" / "cql" / "d" / "run_x2"
  run.mkdir(parents=True)
  (run / "metrics.csv").write_text(
      "step,train/q,eval/normalized_score,eval/normalized_score/seed0\n"
      "50,1.0,,\n"                       # a training row: no evaluation
      "80,1.0,40.0,39.0\n90,1.0,43.0,44.0\n100,1.0,46.0,45.0\n")
  text = oc.table(oc.find_runs([str(tmp_path / "pretrain" / "*")]), tail=0.2, tolerance=5.0)
  assert text.splitlines()[2] == f"| {run} | 100 | 46.0 | 3 | +6.0 | no |"
  assert oc.table([run], tail=0.2, tolerance=6.5).splitlines()[2].endswith("| +6.0 | yes |")
  with pytest.raises(SystemExit, match="no metrics.csv under"):
    oc.find_runs([str(tmp_path / "nothing*")])
