"""experiments.report on small synthetic run directories, against hand-computed numbers.

The runs (normalised scores per seed; steps 0 = the policy the online phase starts from):

  hopper (H), 1k planned steps, evaluations every 250:
    o2td3       seed0x2, finished: π_off [40, 44], π_on [50, 54]; 250 [30, 40]; 1k final [80, 90]
    direct_td3  seed0x2-noreevaluate-noalign-noconstrain, finished: π_off = start [40, 44];
                250 [20, 22]; 500 [30, 30]; 1k final [50, 60]
                seed2x1-...-noconstrain, unfinished at 500: start [42], 250 [24], 500 [33]
                -> different lengths: 3 seeds pooled on steps 0, 250, 500
    o2sac       seed0x2, unfinished (10k planned) at 4k: start (π_on) [30, 34]; 1k [20, 24];
                4k [60, 64.2]; π_off and π_on only through the "from" links (align -> reevaluate)
  walker2d (W):
    o2td3       seed0x2, finished: π_off [60, 62], π_on [58, 62]; 250 [55, 59]; 1k final [70, 72]
    o2ppo       seed0x2, summary.json only (no metrics.csv): π_off [20, 30]; final [40, 50]
  direct_td3, o2sac on W: no run (missing cells); o2ppo on H: none.
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from o2o_jax import report
from o2o_jax.errors import O2OError
from o2o_jax.logging import MetricsWriter

H, W = "o2o/hopper/medium-v0", "o2o/walker2d/medium-v0"
S = "eval/normalized_score"
EARLY, REPS, SEED = 0.25, 200, 3
DIRECT = "-noreevaluate-noalign-noconstrain"


def write_run(root, phase, agent, dataset, name, evals, *, seed=0, seeds=2, steps=1000, extra=None,
              first_row=None, summary=None, metrics=True):
  """A run directory as the launchers write it: config.json, metrics.csv through MetricsWriter (with
  a training-only row between evaluations, its eval cells empty), and summary.json if given."""
  run = root / phase / agent / dataset.replace("/", "_") / name
  run.mkdir(parents=True)
  config = {"phase": phase, "agent": agent, "dataset": dataset, "seeds": seeds, "seed": seed,
            "steps": steps, **(extra or {})}
  (run / "config.json").write_text(json.dumps(config))
  if metrics:
    writer = MetricsWriter(run, tensorboard=False)
    for i, (step, scores) in enumerate(sorted(evals.items())):
      writer.write(step, {S: np.asarray(scores), **((first_row or {}) if i == 0 else {})})
      writer.write(step + 1, {"train/critic_loss": 1.0})
    writer.close()
  if summary is not None:
    (run / "summary.json").write_text(json.dumps({"dataset": dataset, "agent": agent, "seeds": seeds,
                                                  **summary}))
  return run


def finished_summary(evals, **start):
  scores = [v for s, v in sorted(evals.items()) if s > 0]
  return {**start, "best": np.max(scores, 0).tolist(), "final": list(scores[-1]),
          "curve_steps": [s for s in sorted(evals) if s > 0],
          "curve_mean": [float(np.mean(v)) for v in scores], "wall_time_s": 1.0}


def make_runs(root):
  quick = {"budget": "quick"}
  evals = {0: [50, 54], 250: [30, 40], 500: [60, 62], 750: [70, 74], 1000: [80, 90]}
  write_run(root, "finetune", "o2td3", H, "seed0x2", evals, extra=quick,
            first_row={"eval/offline_score": [40, 44], "eval/aligned_score": [50, 54]},
            summary=finished_summary(evals, offline=[40, 44], aligned=[50, 54]))
  evals = {0: [40, 44], 250: [20, 22], 500: [30, 30], 750: [35, 45], 1000: [50, 60]}
  write_run(root, "finetune", "o2td3", H, "seed0x2" + DIRECT, evals, extra=quick,
            summary=finished_summary(evals, offline=[40, 44], aligned=[40, 44]))
  write_run(root, "finetune", "o2td3", H, "seed2x1" + DIRECT, {0: [42], 250: [24], 500: [33]},
            seed=2, seeds=1, extra=quick, first_row={"eval/offline_score": [42]})
  evals = {0: [58, 62], 250: [55, 59], 500: [65, 66], 750: [68, 70], 1000: [70, 72]}
  write_run(root, "finetune", "o2td3", W, "seed0x2", evals, extra=quick,
            summary=finished_summary(evals, offline=[60, 62], aligned=[58, 62]))
  # o2sac: unfinished, its start scores only in the earlier phases (a copied runs folder: the "from"
  # links are relative to another working directory).
  write_run(root, "reevaluate", "o2sac", H, "seed0x2", {50: [36, 40]}, steps=50,
            extra={"from": "elsewhere/runs/pretrain/cql/o2o_hopper_medium-v0/seed0x2"})
  write_run(root, "align", "o2sac", H, "seed0x2", {2500: [10, 10], 5000: [30, 34]}, steps=5000,
            extra={"from": "runs/reevaluate/o2sac/o2o_hopper_medium-v0/seed0x2"})
  write_run(root, "finetune", "o2sac", H, "seed0x2", {0: [30, 34], 1000: [20, 24], 4000: [60, 64.2]},
            steps=10_000, extra={"from": "runs/align/o2sac/o2o_hopper_medium-v0/seed0x2"})
  evals = {250: [20, 24], 500: [30, 30], 750: [35, 45], 1000: [40, 50]}
  write_run(root, "finetune", "o2ppo", W, "seed0x2", evals, metrics=False,
            summary=finished_summary(evals, offline=[20, 30]))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  make_runs(root)
  out = root.parent / "report"
  tables = report.make_report([str(root / "finetune" / "*"), str(root / "finetune" / "o2td3")], out,
                              early=EARLY, reps=REPS, seed=SEED, command="python -m experiments.report x",
                              log=lambda *_: None)
  return root, out, tables


def rows_of(out, name):
  with open(out / f"{name}.csv") as f:
    return {(r.get("dataset"), r.get("agent")): r for r in csv.DictReader(f)}


def num(row, key):
  return float(row[key])


def test_table2_means_stds_deltas_and_totals(made):
  _, out, _ = made
  t = rows_of(out, "table2")
  assert set(t) == {(H, "o2td3"), (H, "direct_td3"), (H, "o2sac"), (W, "o2td3"), (W, "o2ppo"),
                    ("total", "o2td3"), ("total", "direct_td3"), ("total", "o2sac"), ("total", "o2ppo")}
  expected = {(H, "o2td3"): (85, 5, 42, 43), (W, "o2td3"): (71, 1, 61, 10),
              (H, "direct_td3"): (31, np.sqrt(2), 42, -11), (H, "o2sac"): (62.1, 2.1, 38, 24.1),
              (W, "o2ppo"): (45, 5, 25, 20)}
  for key, (mean, std, pi_off, delta) in expected.items():
    r = t[key]
    np.testing.assert_allclose([num(r, "final_mean"), num(r, "final_std"), num(r, "pi_off"),
                                num(r, "delta")], [mean, std, pi_off, delta], atol=1e-9, err_msg=str(key))
  np.testing.assert_allclose([num(t["total", "o2td3"], "final_mean"), num(t["total", "o2td3"], "delta")],
                             [156, 53])
  np.testing.assert_allclose(num(t["total", "direct_td3"], "final_mean"), 31)
  assert t["total", "direct_td3"]["note"] == "1 of 2 datasets"
  md = (out / "report.md").read_text()
  assert "85.0 ± 5.0 (δ +43.0)" in md and "71.0 ± 1.0 (δ +10.0)" in md
  assert "156.0 (δ +53.0)" in md and "31.0 (δ -11.0) (1 of 2 datasets)" in md


def test_missing_cells_are_marked(made):
  _, out, _ = made
  md = (out / "report.md").read_text()
  table = md.split("## Table 2")[1].split("## ")[0]
  walker = next(l for l in table.splitlines() if l.startswith(f"| {W} |"))
  cells = [c.strip() for c in walker.strip("|").split("|")]
  header = next(l for l in table.splitlines() if l.startswith("| dataset |"))
  labels = [c.strip() for c in header.strip("|").split("|")][1:]
  assert labels == ["o2td3", "direct_td3", "o2sac", "o2ppo"]          # the groups' order
  assert cells[2] == report.MISSING and cells[3] == report.MISSING    # direct_td3, o2sac on walker2d


def test_unfinished_run_uses_its_last_evaluation_and_is_marked(made):
  _, out, _ = made
  r = rows_of(out, "table2")[H, "o2sac"]
  assert r["finished"] == "False" and r["final_step"] == "4000" and r["planned_steps"] == "10000"
  assert "62.1 ± 2.1 (δ +24.1)* (step 4k of 10k)" in (out / "report.md").read_text()


def test_different_lengths_are_pooled_on_common_steps_and_marked(made):
  _, out, _ = made
  r = rows_of(out, "table2")[H, "direct_td3"]
  assert r["seeds"] == "3" and r["final_step"] == "500" and r["uneven"] == "True"
  assert ("31.0 ± 1.4 (δ -11.0)†* (step 500 of 1k; 3 seeds pooled on common steps ≤ 500; run "
          "lengths 500, 1k)") in (out / "report.md").read_text()


def test_table3_pi_off_against_pi_on_follows_from_links(made):
  _, out, _ = made
  t = rows_of(out, "table3")
  assert set(t) == {(H, "o2td3"), (W, "o2td3"), (H, "o2sac"), (W, "o2ppo")}   # OCR-CFT agents only
  expected = {(H, "o2td3"): (42, 2, 52, 2), (W, "o2td3"): (61, 1, 60, 2), (H, "o2sac"): (38, 2, 32, 2)}
  for key, values in expected.items():
    np.testing.assert_allclose([num(t[key], k) for k in ("pi_off_mean", "pi_off_std", "pi_on_mean",
                                                         "pi_on_std")], values, err_msg=str(key))
  np.testing.assert_allclose(num(t[H, "o2sac"], "pi_on_minus_pi_off"), -6)
  assert t[W, "o2ppo"]["pi_on_mean"] == "" and t[W, "o2ppo"]["has_alignment"] == "False"
  md = (out / "report.md").read_text().split("## Table 3")[1].split("## ")[0]
  assert f"| {H} | o2sac | 38.0 ± 2.0 | 32.0 ± 2.0 | -6.0 | **no** |" in md
  assert f"| {W} | o2td3 | 61.0 ± 1.0 | 60.0 ± 2.0 | -1.0 | yes |" in md
  assert "n/a (no alignment phase" in md


def test_early_minimum_and_dip(made):
  _, out, _ = made
  t = rows_of(out, "early")
  # window: 0.25 x planned steps (250; o2sac 2500), step 0 included
  expected = {(H, "o2td3"): (250, 35, 7), (H, "direct_td3"): (250, 22, 20), (W, "o2td3"): (250, 57, 4),
              (H, "o2sac"): (2500, 22, 16), (W, "o2ppo"): (250, 22, 3)}
  for key, (end, low, dip) in expected.items():
    np.testing.assert_allclose([num(t[key], "window_end"), num(t[key], "early_min"), num(t[key], "dip")],
                               [end, low, dip], err_msg=str(key))
  assert "35.0 (dip 7.0; ≤ 250)" in (out / "report.md").read_text()


def test_rliable_numbers_match_a_direct_call(made):
  from rliable import library as rly
  from rliable import metrics
  _, out, _ = made
  matrices = {"o2td3": np.array([[80, 70], [90, 72]]) / 100, "direct_td3": np.array([[30], [30], [33]]) / 100,
              "o2sac": np.array([[60], [64.2]]) / 100, "o2ppo": np.array([[40], [50]]) / 100}
  iqm = rows_of(out, "iqm")
  for label, m in matrices.items():
    np.random.seed(SEED)     # rliable's stratified bootstrap draws from NumPy's global state
    point, ci = rly.get_interval_estimates(
        {label: m}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=REPS)
    row = iqm[None, label]
    np.testing.assert_allclose([num(row, "iqm"), num(row, "ci_low"), num(row, "ci_high")],
                               [point[label][0], ci[label][0, 0], ci[label][1, 0]], err_msg=label)
  pair = (matrices["o2td3"][:, :1], matrices["direct_td3"])        # hopper, the dataset both have
  np.random.seed(SEED)
  point, ci = rly.get_interval_estimates(
      {"p": pair}, lambda x, y: np.array([metrics.probability_of_improvement(x, y)]), reps=REPS)
  with open(out / "improvement.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["x"], r["y"], r["tasks"]) for r in rows] == [("o2td3", "direct_td3", "1")]
  np.testing.assert_allclose([num(rows[0], "probability"), num(rows[0], "ci_low"),
                              num(rows[0], "ci_high")], [point["p"][0], ci["p"][0, 0], ci["p"][1, 0]])
  with open(out / "profiles.csv") as f:
    profile = [r for r in csv.DictReader(f) if r["agent"] == "o2td3"]
  taus = np.linspace(0.0, 1.0, 81)
  np.testing.assert_allclose([float(r["tau"]) for r in profile], taus)
  np.testing.assert_allclose([float(r["fraction"]) for r in profile],
                             rly.score_distributions(matrices["o2td3"], taus))


def test_the_budget_name_comes_from_launch_json_when_the_config_has_none(tmp_path):
  """The recipe runner records the budget in launch.json (`runs.record_launch`), not config.json."""
  evals = {0: [40, 44], 500: [50, 60]}
  run = write_run(tmp_path, "finetune", "o2sac", H, "seed0x2", evals,
                  summary=finished_summary(evals, offline=[40, 44]))
  (run / "launch.json").write_text(json.dumps({"budget": "quick"}))
  out = tmp_path / "report"
  report.make_report([str(tmp_path / "finetune")], out, early=EARLY, reps=REPS, seed=SEED,
                     command="x", log=lambda *_: None)
  assert (out / "report.md").read_text().splitlines()[4] == "Budget: quick (1,000 online steps)"


def test_runs_on_different_versions_of_one_dataset_are_noted(tmp_path):
  """launch.json's "data" (the recipe runner's fingerprint of the dataset) goes to runs.csv, and a
  dataset whose runs trained on different versions of its data, or partly on unrecorded data, gets a
  note naming the agents of each; one version throughout gets none."""
  evals = {0: [40, 44], 500: [50, 60]}
  def run(agent, dataset, sha):
    path = write_run(tmp_path, "finetune", agent, dataset, "seed0x2", evals,
                     summary=finished_summary(evals, offline=[40, 44]))
    if sha:
      (path / "launch.json").write_text(json.dumps({"budget": "quick", "data": {"sha1": sha}}))
  run("o2td3", H, None)
  run("o2sac", H, "aaaaaaaaaaaa")
  run("direct_sac", H, "aaaaaaaaaaaa")
  run("o2td3", W, "bbbbbbbbbbbb")
  run("o2sac", W, "cccccccccccc")
  run("o2td3", "o2o/halfcheetah/medium-v0", "dddddddddddd")
  run("o2sac", "o2o/halfcheetah/medium-v0", "dddddddddddd")
  out = tmp_path / "report"
  report.make_report([str(tmp_path / "finetune")], out, early=EARLY, reps=REPS, seed=SEED,
                     command="x", log=lambda *_: None)
  notes = (out / "report.md").read_text().split("## Notes")[1].strip().splitlines()
  assert notes == [
      f"- {H}: one recorded version of the data, and runs whose data is not recorded (SHA-1 "
      "aaaaaaaaaaaa for o2sac, direct_sac; not recorded for o2td3): compare its agents with care",
      f"- {W}: 2 versions of the data (SHA-1 bbbbbbbbbbbb for o2td3; SHA-1 cccccccccccc for o2sac): "
      "compare its agents with care"]
  with open(out / "runs.csv") as f:
    rows = {(r["agent"], r["dataset"]): r["data"] for r in csv.DictReader(f)}
  assert rows[("o2sac", H)] == "aaaaaaaaaaaa" and rows[("o2td3", H)] == ""


def test_an_early_window_inside_the_warm_up_is_marked(tmp_path):
  """The quick budget's 10% window (1k steps) is the off-policy agents' whole warm-up: no update has
  run, so its minimum cannot show a collapse. Window 0.25 x 1,000 = 250: inside a 300-step
  warm-up, past a 200-step one."""
  evals = {0: [40, 44], 250: [38, 40], 500: [10, 12], 1000: [50, 60]}
  for agent, warmup in (("o2td3", 300), ("o2sac", 200)):
    write_run(tmp_path, "finetune", agent, H, "seed0x2", evals, extra={"warmup_steps": warmup},
              summary=finished_summary(evals, offline=[40, 44]))
  out = tmp_path / "report"
  report.make_report([str(tmp_path / "finetune")], out, early=EARLY, reps=REPS, seed=SEED,
                     command="x", log=lambda *_: None)
  rows = rows_of(out, "early")
  assert rows[(H, "o2td3")]["window_in_warmup"] == "True"
  assert rows[(H, "o2sac")]["window_in_warmup"] == "False"
  assert num(rows[(H, "o2td3")], "warmup_steps") == 300
  text = (out / "report.md").read_text()
  assert "39.0 (dip 3.0; ≤ 250, inside the 300 warm-up: no update yet)" in text
  assert "39.0 (dip 3.0; ≤ 250)" in text                      # o2sac's cell: past its warm-up


def test_report_folder_files_budget_and_command(made):
  root, out, _ = made
  for name in ("report.md", "table2.csv", "table3.csv", "early.csv", "iqm.csv", "improvement.csv",
               "profiles.csv", "runs.csv", "curves.png", "curves_early.png", "performance_profiles.png",
               "commands.txt"):
    assert (out / name).stat().st_size > 0, name
  md = (out / "report.md").read_text()
  budget = ("Budget: 1,000 online steps (budget name not recorded) for o2ppo; 10,000 online steps "
            "(budget name not recorded) for o2sac; quick (1,000 online steps) for o2td3, direct_td3")
  assert md.splitlines()[4] == budget
  sections = md.split("\n## ")[1:]
  assert len(sections) == 8 and all(budget in s for s in sections if not s.startswith("Notes")), md
  assert md.splitlines()[2] == "Command: `python -m experiments.report x`"
  assert (out / "commands.txt").read_text() == "python -m experiments.report x\n"
  with open(out / "runs.csv") as f:
    assert len(list(csv.DictReader(f))) == 6   # the two globs overlap: each run directory once


def test_run_labels():
  assert report.run_label({"agent": "o2td3"}, {}, "seed0x5" + DIRECT) == "direct_td3"
  assert report.run_label({"agent": "o2sac"}, {}, "seed0x5-presetcorl" + DIRECT) == "direct_sac-presetcorl"
  assert report.run_label({"agent": "o2td3"}, {}, "seed0x5-noconstrain") == "o2td3-noconstrain"
  assert report.run_label({"agent": "o2ppo"}, {"agent": "ppo"}, "seed0x5-noaux") == "direct_ppo"
  assert report.run_label({"agent": "aca", "offline_algo": "cql"}, {}, "seed0x5-cql") == "aca-cql"
  assert report.run_label({"agent": "o2td3", "label": "direct_td3"}, {}, "seed0x5") == "direct_td3"
  assert report.run_label({"agent": "samg_cql"}, {"label": "x"}, "seed0x5") == "x"


def test_glob_without_run_directories_is_an_error(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(O2OError, match="'.*empty' matches no online fine-tuning run directory"):
    report.find_run_dirs([str(tmp_path / "empty")])
  with pytest.raises(O2OError, match="no run directories given"):
    report.find_run_dirs([])


def test_launcher_empty_glob_is_one_line_and_exit_2(tmp_path):
  missing = str(tmp_path / "nothing" / "*")
  res = subprocess.run([sys.executable, "-m", "experiments.report", f"--out={tmp_path / 'out'}", missing],
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                       timeout=300)
  assert res.returncode == 2, res.stderr
  assert res.stderr.strip().splitlines() == [f"error: run glob {missing!r} matches nothing (a run "
                                             "directory holds config.json, metrics.csv and, once "
                                             "finished, summary.json, e.g. "
                                             "runs/finetune/o2td3/<dataset>/seed0x5)"]
  assert not (tmp_path / "out").exists()


def test_every_grouped_method_is_a_registered_agent():
  """The curve grid's columns name agents as the runner names their run directories (a misspelt
  name, e.g. 'cal_ql' for calql, would drop the method into 'other')."""
  from o2o_jax import recipes
  grouped = [a for _, agents in report.GROUPS for a in agents]
  assert len(grouped) == len(set(grouped))
  assert set(grouped) <= set(recipes.RECIPES)
