"""experiments.finetune end to end on a tiny dataset: every phase, reuse, --from, ablations, errors."""
import json
import os
import subprocess
import sys

import pytest

TINY = ["--agent=o2td3", "--seeds=2", "--budget=quick", "--pretrain_steps=40", "--reevaluate_steps=20",
        "--align_steps=20", "--online_steps=60", "--warmup_steps=20", "--eval_every=30",
        "--eval_episodes=1", "--hidden_dims=8,8", "--critic_hidden=8,8", "--batch_size=16",
        "--progress=false"]


def finetune(*args, timeout=900):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
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
  from experiments import phases
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
  phases.finetune(align_dir=align_dir, online_steps=40, warmup_steps=20, eval_every=40, eval_episodes=1,
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
