"""End-to-end launcher runs on tiny budgets, and their one-line errors."""
import csv
import os
import re
import subprocess
import sys

import pytest

TINY = ["--budget=quick", "--total_steps=400", "--start_steps=200", "--eval_every=200",
        "--eval_episodes=1", "--hidden_dims=16,16", "--batch_size=32", "--progress=false"]


def launch(module, *args, cwd=None, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("runs")
  res = launch("experiments.train_online", "--agent=td3", "--seeds=2", f"--out_dir={out}", *TINY)
  assert res.returncode == 0, res.stderr[-3000:]
  return out, res


def test_train_online_writes_a_complete_run_dir(online_run):
  out, res = online_run
  run = out / "online" / "td3" / "Hopper-v5" / "seed0x2"
  for name in ("config.json", "metrics.csv", "curves.png", "checkpoints"):
    assert (run / name).exists(), name
  assert list((run / "tensorboard").glob("events.out.tfevents.*"))
  rows = list(csv.DictReader(open(run / "metrics.csv")))
  evals = [r for r in rows if r.get("eval/return")]
  assert [int(r["step"]) for r in evals] == [200, 400]
  assert evals[-1]["eval/return/seed0"] and evals[-1]["eval/return/seed1"]   # per-seed columns
  assert "final eval return per seed" in res.stdout
  # Every launcher ends with its wall time and the part of it spent compiling.
  last = res.stdout.strip().splitlines()[-1]
  assert re.fullmatch(r"\[train_online\] \d+s wall, \d+\.\ds compiling \((\d+) programs?.*\)", last), last
  assert int(re.search(r"\((\d+) program", last).group(1)) > 0


def test_rerun_of_a_finished_run_is_not_retrained(online_run):
  out, _ = online_run
  res = launch("experiments.train_online", "--agent=td3", "--seeds=2", f"--out_dir={out}", *TINY)
  assert res.returncode == 0 and "run already complete" in res.stdout


def test_output_dir_holding_a_different_run_is_refused(online_run):
  out, _ = online_run
  res = launch("experiments.train_online", "--agent=td3", "--seeds=2", f"--out_dir={out}", "--utd=2",
               *TINY)
  assert res.returncode == 2
  assert "already holds a different run" in res.stderr and "--restart" in res.stderr
  assert "Traceback" not in res.stderr


@pytest.mark.parametrize("args, message", [
    (["--env=pogo"], "unknown env 'pogo'"),
    (["--seeds=0"], "--seeds must be at least 1"),
    (["--total_steps=-5"], "--total_steps must be positive"),
])
def test_bad_flags_give_one_line(args, message, tmp_path):
  res = launch("experiments.train_online", f"--out_dir={tmp_path}", *TINY, *args)
  assert res.returncode == 2, res.stderr[-2000:]
  assert message in res.stderr and "Traceback" not in res.stderr
