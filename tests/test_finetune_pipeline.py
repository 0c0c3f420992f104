"""experiments.finetune end to end on a tiny dataset: every phase, reuse, --from, ablations, errors."""
import json
import os
import subprocess
import sys

import pytest

TINY = ["--agent=o2td3", "--seeds=2", "--budget=quick", "--pretrain_steps=40", "--reevaluate_steps=20",
        "--align_steps=20", "--online_steps=60", "--warmup_steps=20", "--eval_every=30",
        "--eval_episodes=1", "--hidden_dims=8,8", "--critic_hidden=8,8", "--batch_size=16",
        "--progress=false", "--checkpoint_every=20"]


def finetune(*args, timeout=900, fault=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("O2O_JAX_FAULT", None)
  if fault:
    env["O2O_JAX_FAULT"] = fault     # e.g. SIGKILL:finetune:50 (o2o_jax.resume.FaultInjection)
  return subprocess.run([sys.executable, "-m", "experiments.finetune", *args], env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pipeline(tiny_hopper_dataset, tmp_path_factory):
  out = tmp_path_factory.mktemp("runs")
  res = finetune(f"--dataset={tiny_hopper_dataset.dataset_id}", f"--out_dir={out}", *TINY)
  assert res.returncode == 0, res.stderr[-4000:]
  return out, res, tiny_hopper_dataset.dataset_id


def test_every_phase_writes_its_run_dir_and_the_summary(pipeline):
  out, res, dataset_id = pipeline
  ds = dataset_id.replace("/", "_")
  for phase, agent in (("pretrain", "td3bc"), ("reevaluate", "o2td3"), ("align", "o2td3"),
                       ("finetune", "o2td3")):
    run = out / phase / agent / ds / "seed0x2"
    assert (run / "config.json").exists() and (run / "checkpoints").exists(), phase
  summary = json.loads((out / "finetune" / "o2td3" / ds / "seed0x2" / "summary.json").read_text())
  assert len(summary["offline"]) == 2 and len(summary["final"]) == 2
  for line in ("pi_off (offline)", "pi_on (after alignment)", "best fine-tuned", "final fine-tuned"):
    assert line in res.stdout
  metrics = (out / "finetune" / "o2td3" / ds / "seed0x2" / "metrics.csv").read_text()
  for col in ("train/lambda", "train/constraint", "train/tau", "eval/normalized_score/seed1"):
    assert col in metrics.splitlines()[0]


def test_quick_offline_steps_per_algorithm_and_the_flag_wins(pipeline):
  from o2o_jax.recipes import ocr_cft
  assert ocr_cft.pretrain_steps("quick", "td3bc") == 100_000     # O2TD3's source (BUILD_NOTES)
  assert ocr_cft.pretrain_steps("quick", "cql") == ocr_cft.BUDGETS["quick"]["pretrain_steps"] == 10_000
  assert ocr_cft.pretrain_steps("paper", "td3bc") == 1_000_000
  assert ocr_cft.pretrain_steps("quick", "td3bc", given=40) == 40
  out, _, dataset_id = pipeline      # the launcher honours --pretrain_steps=40 over the quick default
  cfg = json.loads((out / "pretrain" / "td3bc" / dataset_id.replace("/", "_") / "seed0x2" /
                    "config.json").read_text())
  assert cfg["loop_config"]["num_steps"] == 40


def test_rerun_reuses_every_finished_phase(pipeline):
  out, _, dataset_id = pipeline
  res = finetune(f"--dataset={dataset_id}", f"--out_dir={out}", *TINY)
  assert res.returncode == 0, res.stderr[-3000:]
  assert res.stdout.count("reusing the finished run") == 4


def test_direct_finetuning_from_an_align_run(pipeline):
  out, _, dataset_id = pipeline
  align_dir = out / "align" / "o2td3" / dataset_id.replace("/", "_") / "seed0x2"
  res = finetune(f"--from={align_dir}", f"--out_dir={out}", "--constrain=false", *TINY)
  assert res.returncode == 0, res.stderr[-3000:]
  run = out / "finetune" / "o2td3" / dataset_id.replace("/", "_") / "seed0x2-noconstrain"
  rows = (run / "metrics.csv").read_text().splitlines()
  lam = rows[0].split(",").index("train/lambda")
  assert all(float(r.split(",")[lam]) == 0.0 for r in rows[1:] if r.split(",")[lam] not in ("", "nan"))


def test_interval_reference_runs_to_the_end(pipeline):
  """`--reference=interval:N` refreshes pi_ref <- pi_on every N env steps; the refresh used to store
  an infinite best score, which the divergence guard stopped at the first refresh."""
  out, _, dataset_id = pipeline
  align_dir = out / "align" / "o2td3" / dataset_id.replace("/", "_") / "seed0x2"
  res = finetune(f"--from={align_dir}", f"--out_dir={out}", "--reference=interval:30",
                 "--run_name=interval", *TINY)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "pi_ref <- pi_on every 30 env steps" in res.stdout
  summary = json.loads((out / "finetune" / "o2td3" / dataset_id.replace("/", "_") / "interval" /
                        "summary.json").read_text())
  assert len(summary["final"]) == 2


def test_bad_from_and_flags(pipeline, tmp_path):
  out, _, dataset_id = pipeline
  run = out / "finetune" / "o2td3" / dataset_id.replace("/", "_") / "seed0x2"
  res = finetune(f"--from={run}", f"--out_dir={out}", *TINY)
  assert res.returncode == 2 and "is a 'finetune' run" in res.stderr
  res = finetune(f"--from={tmp_path}", *TINY)
  assert res.returncode == 2 and "not a run directory" in res.stderr
  res = finetune("--dataset=o2o/nowhere/medium-v0", f"--out_dir={tmp_path}", *TINY)
  assert res.returncode == 2 and "unknown dataset id 'o2o/nowhere/medium-v0'" in res.stderr
  assert "Traceback" not in res.stderr


def test_phase_launchers_chain_by_from(pipeline, tmp_path):
  out, _, dataset_id = pipeline
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  pre = out / "pretrain" / "td3bc" / dataset_id.replace("/", "_") / "seed0x2"
  run = lambda m, *a: subprocess.run([sys.executable, "-m", m, *a, f"--out_dir={tmp_path}",
                                      "--progress=false", "--batch_size=16", "--eval_episodes=1"],
                                     env=env, capture_output=True, text=True, timeout=600)
  res = run("experiments.reevaluate", f"--from={pre}", "--steps=10", "--critic_hidden=8,8")
  assert res.returncode == 0, res.stderr[-3000:]
  re_dir = tmp_path / "reevaluate" / "o2td3" / dataset_id.replace("/", "_") / "seed0x2"
  res = run("experiments.align", f"--from={re_dir}", "--steps=10")
  assert res.returncode == 0, res.stderr[-3000:]
  assert (tmp_path / "align" / "o2td3" / dataset_id.replace("/", "_") / "seed0x2" / "checkpoints").exists()
  res = run("experiments.reevaluate", f"--from={pre}", "--agent=o2sac", "--steps=10")
  assert res.returncode == 2 and "does not fit o2sac" in res.stderr


@pytest.mark.parametrize("buffer", ["all", "part"])
def test_buffer_initialisations_of_table_6(pipeline, tmp_path, buffer, monkeypatch):
  """--buffer=all samples from the dataset and the online buffer together; --buffer=part seeds each
  seed's buffer with the top-50 episodes (all 6 of the tiny dataset): both run to the summary."""
  from o2o_jax.recipes import ocr_cft
  from o2o_jax import loops
  out, _, dataset_id = pipeline
  align_dir = out / "align" / "o2td3" / dataset_id.replace("/", "_") / "seed0x2"
  seen = {}
  real_run_online = loops.run_online

  def spy(*args, **kwargs):
    seen.update(kwargs)
    states, buffers, history = real_run_online(*args, **kwargs)
    seen["buffer_size"] = buffers.size
    return states, buffers, history

  monkeypatch.setattr(loops, "run_online", spy)
  ocr_cft.finetune(align_dir=align_dir, online_steps=40, warmup_steps=20, eval_every=40, eval_episodes=1,
                  batch_size=16, buffer=buffer, out_dir=str(tmp_path), progress=False)
  summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
  assert len(summary["final"]) == 2
  if buffer == "all":
    assert seen["config"].offline_union and seen["offline"] is not None and seen["prefill"] is None
    assert list(seen["buffer_size"]) == [40, 40]
  else:
    from o2o_jax.data import load_dataset
    n = int(seen["prefill"].rewards.shape[0])
    assert seen["offline"] is None and n == load_dataset(dataset_id).size   # 6 episodes < 50
    assert list(seen["buffer_size"]) == [n + 40, n + 40]


def test_sigkill_mid_phase_then_rerun_equals_the_uninterrupted_run(pipeline, tmp_path, same_outputs):
  """The run is SIGKILLed during pretraining (after its snapshot at step 20), rerun and SIGKILLed
  again in the online phase (after its snapshot at env step 40), then rerun to the end: every
  phase's metrics and the final agent states equal the uninterrupted run's (the `pipeline` fixture,
  same flags) exactly, so resuming loses nothing and the same command is deterministic on CPU."""
  ref_out, _, dataset_id = pipeline
  args = [f"--dataset={dataset_id}", f"--out_dir={tmp_path}", *TINY]
  res = finetune(*args, fault="SIGKILL:pretrain:40")
  assert res.returncode == -9
  ds = dataset_id.replace("/", "_")
  assert (tmp_path / "pretrain" / "td3bc" / ds / "seed0x2" / "progress" / "20").exists()
  res = finetune(*args, fault="SIGKILL:finetune:50")
  assert res.returncode == -9 and "resuming from the snapshot at step 20" in res.stdout
  assert (tmp_path / "finetune" / "o2td3" / ds / "seed0x2" / "progress" / "40").exists()
  res = finetune(*args)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "resuming from the snapshot at env step 40" in res.stdout
  for phase, agent in (("pretrain", "td3bc"), ("reevaluate", "o2td3"), ("align", "o2td3"),
                       ("finetune", "o2td3")):
    mine, ref = tmp_path / phase / agent / ds / "seed0x2", ref_out / phase / agent / ds / "seed0x2"
    same_outputs(mine, ref)
    assert not (mine / "progress").exists()     # snapshots are dropped once the phase finished


def test_sigint_saves_a_snapshot_and_exits_cleanly(pipeline, tmp_path):
  out, _, dataset_id = pipeline
  align_dir = out / "align" / "o2td3" / dataset_id.replace("/", "_") / "seed0x2"
  args = [f"--from={align_dir}", f"--out_dir={tmp_path}", *TINY]
  res = finetune(*args, fault="SIGINT:finetune:30")
  assert res.returncode == 130, res.stderr[-3000:]
  assert "finetune stopped by SIGINT at env step 30" in res.stderr
  assert "rerun the same command to resume" in res.stderr and "Traceback" not in res.stderr
  run = tmp_path / "finetune" / "o2td3" / dataset_id.replace("/", "_") / "seed0x2"
  assert (run / "progress" / "30").exists()
  res = finetune(*args)
  assert res.returncode == 0 and "resuming from the snapshot at env step 30" in res.stdout
  assert (run / "summary.json").exists()


def test_from_a_run_of_another_agent_or_dataset(pipeline, make_dataset, tmp_path):
  out, _, dataset_id = pipeline
  reevaluate_dir = out / "reevaluate" / "o2td3" / dataset_id.replace("/", "_") / "seed0x2"
  res = finetune(f"--from={reevaluate_dir}", f"--out_dir={tmp_path}", *TINY, "--agent=o2sac")
  assert res.returncode == 2 and "is a o2td3 run but --agent=o2sac" in res.stderr
  other = make_dataset("other-hopper")
  res = finetune(f"--from={reevaluate_dir}", f"--dataset={other.dataset_id}", f"--out_dir={tmp_path}",
                  *TINY)
  assert res.returncode == 2 and f"was trained on {dataset_id}" in res.stderr
  assert "Traceback" not in res.stderr


def test_from_a_run_with_missing_or_corrupt_checkpoints(pipeline, tmp_path):
  import shutil
  out, _, dataset_id = pipeline
  reevaluate_dir = out / "reevaluate" / "o2td3" / dataset_id.replace("/", "_") / "seed0x2"
  broken = tmp_path / "broken_run"
  shutil.copytree(reevaluate_dir, broken)
  for step_dir in (broken / "checkpoints").iterdir():
    if step_dir.name.isdigit():
      for f in step_dir.rglob("*"):
        if f.is_file() and f.suffix != ".json" and "meta" not in f.parts:
          f.write_bytes(b"garbage")
  res = finetune(f"--from={broken}", f"--out_dir={tmp_path}", *TINY)
  assert res.returncode == 2 and "cannot restore any checkpoint" in res.stderr, res.stderr[-2000:]
  shutil.rmtree(broken / "checkpoints")
  res = finetune(f"--from={broken}", f"--out_dir={tmp_path}", *TINY)
  assert res.returncode == 2 and "no checkpoint found" in res.stderr
  assert "Traceback" not in res.stderr
