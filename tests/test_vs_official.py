"""The official OCR-CFT side-by-side benchmark's own pieces on synthetic inputs (benchmarks/vs_official):
parsing the official scripts' output and our run files, the early minimum, the acceptance check, the
YAML rewrite and the table. No torch, no official checkout."""
import json

import pytest

from benchmarks.vs_official import report, run

# What finetune/O2TD3.py prints (stdout and stderr, tqdm bars with carriage returns in between).
O2TD3_LOG = (
    "$ python O2TD3.py --env hopper-medium-v2 --seed 0 --device cpu\n"
    "---------------------------------------\nAfter offline training\n"
    "Evaluation over 5 episodes: eval: 1346.120 , D4RL score: 55.147  \n"
    "---------------------------------------\nDataset size: 100000\n"
    "  0%|          | 0/50000 [00:00<?, ?it/s]\r 50%|#####     | 25000/50000 [01:00<01:00, 410.2it/s]"
    "\r100%|##########| 50000/50000 [02:00<00:00, 400.0it/s]\r100%|##########| 50000/50000 "
    "[02:00<00:00, 415.5it/s]\n"
    "  0%|          | 0/5000 [00:00<?, ?it/s]\r100%|##########| 5000/5000 [00:40<00:00, 1.60s/it]\n"
    "-----------After reconstruct-----------\n"
    "Evaluation over 5 episodes: eval: 1450.000 , D4RL score: 59.990  \n"
    "---------------------------------------\n")


def test_official_stdout_gives_pi_off_and_pi_on():
  assert report.parse_official_stdout(O2TD3_LOG) == {"pi_off": pytest.approx(55.147),
                                                     "pi_on": pytest.approx(59.99)}
  # O2SAC.py's banner differs; a run that died during alignment has no π_on.
  sac = "--------After offline training--------\nEvaluation over 2 episodes: eval: 1.0 , D4RL score: -3.5e-1 \n"
  assert report.parse_official_stdout(sac) == {"pi_off": pytest.approx(-0.35), "pi_on": None}
  assert report.parse_official_stdout("Traceback ...") == {"pi_off": None, "pi_on": None}


def test_official_curve_drops_the_offline_entry():
  """data_True.json: entry 0 is π_off at step 0, then one evaluation per eval_freq."""
  steps, curve = report.official_curve({"steps": [0, 2000, 4000], "eval_returns": [55.0, 40.0, 70.5]})
  assert (steps, curve) == ([2000, 4000], [40.0, 70.5])
  with pytest.raises(ValueError):
    report.official_curve({"steps": [0, 2000], "eval_returns": [1.0]})


def test_tqdm_rates_one_per_bar_last_drawing_and_seconds_per_iteration():
  """The 50k bar is drawn at 100% twice (the close redraws it): one entry, the last rate; 1.60 s/it
  is 0.625 it/s."""
  rates = report.tqdm_rates(O2TD3_LOG)
  assert [t for t, _ in rates] == [50000, 5000]
  assert rates[0][1] == pytest.approx(415.5) and rates[1][1] == pytest.approx(0.625)
  # Two bars of the same length, one after the other, stay two.
  two = ("0/100 [00:00<?, ?it/s]\r100/100 [00:01<00:00, 90.0it/s]\n"
         "0/100 [00:00<?, ?it/s]\r100/100 [00:02<00:00, 45.0it/s]\n")
  assert report.tqdm_rates(two) == [(100, 90.0), (100, 45.0)]


def test_our_seed_curves_per_seed_columns_and_single_seed(tmp_path):
  csv = tmp_path / "metrics.csv"
  csv.write_text("step,eval/normalized_score,eval/normalized_score/seed0,eval/normalized_score/seed1,"
                 "eval/offline_score,train/critic_loss\n"
                 "0,52.0,50.0,54.0,42.0,\n1,,,,,1.0\n2000,35.0,30.0,40.0,,\n2001,,,,,1.0\n"
                 "4000,61.0,60.0,62.0,,\n")
  steps, curves = report.our_seed_curves(csv)
  assert steps == [[2000, 4000], [2000, 4000]]
  assert curves == [[30.0, 60.0], [40.0, 62.0]]
  csv.write_text("step,eval/normalized_score,train/critic_loss\n0,50.0,\n1,,2.0\n2000,45.0,\n")
  assert report.our_seed_curves(csv) == ([[2000]], [[45.0]])


def test_early_min_includes_the_start_and_widens_to_the_first_evaluation():
  # 10% of 100k = 10k: the evaluations at 1k..10k count, 11k does not; the start (π_on) counts.
  steps = list(range(1000, 12000, 1000))
  scores = [60, 55, 58, 61, 62, 63, 64, 65, 66, 67, 20]
  assert report.early_min(59.0, steps, scores, 100_000) == (55.0, 10_000)
  assert report.early_min(50.0, steps, scores, 100_000) == (50.0, 10_000)
  # Quick budget: 10% of 10k = 1k holds no evaluation (every 2k): the window ends at 2k.
  assert report.early_min(59.0, [2000, 4000], [40.0, 10.0], 10_000) == (40.0, 2000)


def _side(values):
  return [{"seed": i, "gain": g, "drift": d} for i, (g, d) in enumerate(values)]


def test_acceptance_uses_the_official_min_max_spread():
  official = _side([(4.0, 0.10), (6.0, 0.14), (9.0, 0.12)])
  inside = report.acceptance(official, _side([(5.0, 0.11), (7.0, 0.13)]))
  assert inside["gain"]["inside"] and inside["drift"]["inside"]
  assert inside["gain"]["ours"] == pytest.approx(6.0) and inside["gain"]["ours_seeds_inside"] == 2
  outside = report.acceptance(official, _side([(-3.0, 0.30), (1.0, 0.20)]))
  assert outside["gain"]["inside"] is False and outside["drift"]["inside"] is False
  assert (outside["drift"]["low"], outside["drift"]["high"]) == (0.10, 0.14)
  assert report.acceptance(official[:1], _side([(5.0, 0.11)]))["gain"]["inside"] is None


def test_yaml_rewrite_replaces_only_the_given_keys_and_appends_missing_ones():
  text = "align_steps: 500000\ndevice: cuda\neval_freq: 1000\nn_episodes: 10\nonline_steps: 100000\n"
  out = run.edit_yaml(text, {"align_steps": 5000, "device": "cpu", "eval_freq": 2000, "warmup_steps": 1000})
  assert out.splitlines() == ["align_steps: 5000", "device: cpu", "eval_freq: 2000", "n_episodes: 10",
                              "online_steps: 100000", "warmup_steps: 1000"]
  values = run.yaml_values({"reevaluate_steps": 50_000, "align_steps": 5_000, "online_steps": 10_000,
                            "warmup_steps": 1_000, "eval_every": 2_000, "eval_episodes": 5,
                            "align_eval_every": 5_000})
  assert values == {"ope_steps": 50_000, "align_steps": 5_000, "online_steps": 10_000,
                    "warmup_steps": 1_000, "eval_freq": 2_000, "n_episodes": 5, "log_freq": 5_000,
                    "device": "cpu"}


def test_official_yaml_path_and_tags(tmp_path):
  """`utils.load_train_config_auto`: 'hopper-medium-replay-v2' -> O2TD3/hopper/medium_replay_v2.yaml."""
  path = tmp_path / "config" / "finetune" / "O2TD3" / "hopper" / "medium_replay_v2.yaml"
  path.parent.mkdir(parents=True)
  path.write_text("env: hopper-medium-replay-v2\n")
  assert run.official_yaml(tmp_path, "o2td3", "hopper-medium-replay-v2") == path
  with pytest.raises(SystemExit):
    run.official_yaml(tmp_path, "o2sac", "hopper-medium-replay-v2")
  assert run.run_tag("quick", {"align_steps": None}) == "quick"
  custom = run.run_tag("quick", {"align_steps": 100, "online_steps": None})
  assert custom.startswith("quick-custom-") and custom != run.run_tag("quick", {"align_steps": 200})


def test_step_counts_are_the_quick_budget():
  """Both sides get o2o_jax.recipes.ocr_cft' quick budget: TD3+BC 100k / CQL 10k offline, 50k / 5k / 10k,
  evaluation every 2k with 5 episodes; an online count that is not a multiple of it is refused."""
  steps = run.step_counts("quick", "o2td3", {})
  assert {k: steps[k] for k in run.STEP_KEYS} == {
      "pretrain_steps": 100_000, "reevaluate_steps": 50_000, "align_steps": 5_000,
      "online_steps": 10_000, "warmup_steps": 1_000, "eval_every": 2_000, "eval_episodes": 5}
  assert run.step_counts("quick", "o2sac", {"align_steps": 100})["pretrain_steps"] == 10_000
  with pytest.raises(SystemExit):
    run.step_counts("quick", "o2td3", {"online_steps": 3000})


def _seed(seed, pi_off, pi_on, drift, curve, steps=(2000, 4000)):
  return {"seed": seed, "pi_off": pi_off, "pi_on": pi_on, "drift_rms": drift, "drift_max": 2 * drift,
          "curve_steps": list(steps), "curve": curve, "final": curve[-1]}


def test_table_per_seed_mean_std_and_acceptance(tmp_path):
  result = {"agent": "o2td3", "dataset": "o2o/hopper/medium-v0", "tag": "quick",
            "steps": {"pretrain_steps": 100_000, "reevaluate_steps": 50_000, "align_steps": 5_000,
                      "online_steps": 4_000, "warmup_steps": 1_000, "eval_every": 2_000,
                      "eval_episodes": 5},
            "networks": {"actor": "256,256", "critic": "256,256"},
            "official": {"seeds": [_seed(0, 50.0, 54.0, 0.10, [40.0, 70.0]),
                                   _seed(1, 52.0, 60.0, 0.20, [65.0, 75.0])]},
            "ours": {"seeds": [_seed(0, 51.0, 57.0, 0.15, [58.0, 72.0]),
                               _seed(1, 49.0, 54.0, 0.12, [60.0, 74.0])]},
            "wall_s": {"ours (all phases, all seeds)": 100.0}}
  (tmp_path / "o2td3__o2o_hopper_medium-v0__quick.json").write_text(json.dumps(result))
  text = report.write(tmp_path).read_text()
  assert "| official | 0 | 50.0 | 54.0 | 4.0 | 0.100 (0.20) | 40.0 | 70.0 |" in text
  # early window: 10% of 4k = 400 holds no evaluation -> up to the first one at 2k; min(π_on, 2k).
  assert "| ours | 1 | 49.0 | 54.0 | 5.0 | 0.120 (0.24) | 54.0 | 74.0 |" in text
  assert "| **official** | mean ± std | 51.0 ± 1.0 | 57.0 ± 3.0 | 6.0 ± 2.0 | 0.150 ± 0.050 |" in text
  # ours: gain mean 5.5 in [4, 8], drift mean 0.135 in [0.10, 0.20].
  assert "- π_on − π_off: ours 5.5, official [4.0, 8.0] → **inside**, 2/2 of our seeds inside" in text
  assert "Result: **met**" in text
  assert "steps ≤ 2,000" in text
  result["ours"]["seeds"][0]["drift_rms"] = 0.5
  (tmp_path / "o2td3__o2o_hopper_medium-v0__quick.json").write_text(json.dumps(result))
  text = report.write(tmp_path).read_text()
  assert "drift RMS: ours 0.310, official [0.100, 0.200] → **outside**" in text
  assert "Result: **not met**" in text
