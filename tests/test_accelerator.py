"""The accelerator benchmark (benchmarks/accelerator.py, issue #23) and the batched env stepping it
relies on.

- `--tiny` runs every item end to end in a subprocess (the same code paths as the GPU run, tiny
  sizes), so the script a GPU lease runs cannot rot between leases.
- `envs.MujocoBatch`: Hopper, Walker2d and HalfCheetah stepped together give bit for bit what each
  env's own gymnasium `step` gives, resets, time limits and the evaluator included.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import accelerator
from o2o_jax import envs

ROOT = Path(__file__).resolve().parents[1]


def _finite_positive(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_tiny_run_writes_every_item_with_sane_numbers(tmp_path):
  out = tmp_path / "acc"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  proc = subprocess.run([sys.executable, "-m", "benchmarks.accelerator", f"--out={out}", "--tiny",
                         "--budget_s=600"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  r = json.loads((out / "accelerator.json").read_text())
  md = (out / "accelerator.md").read_text()
  assert set(accelerator.ITEMS) <= set(r["items"]), r["items"].keys()
  for key, got in r["items"].items():
    assert "skipped" not in got and "error" not in got, (key, got)
    assert accelerator.ITEM_TITLES[key] in md
  # 1-2: a rate and a compile time for every row and seed count.
  rows = {**r["items"]["td3bc"]["rows"], **r["items"]["updates"]["rows"]}
  # (--tiny leaves out the re-evaluation and alignment rows: the same code as these, compiled again.)
  assert {"td3bc/pretrain", "cql/pretrain", "o2td3/finetune", "o2sac/finetune"} <= set(rows)
  for name, row in rows.items():
    assert row["seed_updates_per_s"] and row["compile_s"], name
    assert all(_finite_positive(v) for v in row["seed_updates_per_s"].values()), (name, row)
    assert all(_finite_positive(v) for v in row["compile_s"].values()), (name, row)
  assert rows["o2sac/finetune"]["utd"] == 10
  # 3: both agents' loops, the host share in (0, 1], the mocked loop above MuJoCo's floor.
  online = r["items"]["online"]
  for agent in ("o2td3", "o2sac"):
    row = online["rows"][agent]
    assert row["seeds"] == 5 and _finite_positive(row["env_steps_per_s"]), row
    assert _finite_positive(row["update_only_us_per_env_step"]) and 0 < row["host_share"] <= 1, row
  host = online["host"]
  assert set(host["loop"]) >= {"gymnasium, one by one", "batch, 1 thread"}
  for k, us in host["loop"].items():
    assert _finite_positive(us) and 0 < host["floor"][k] <= host["env_step"][k], (k, host)
    assert _finite_positive(host["eval"][k]), (k, host)
  # 4: every phase ran and was timed; both pipelines projected against their targets.
  pipe = r["items"]["pipeline"]
  assert list(pipe["phases"]) == ["pretrain", "reevaluate", "align", "finetune"]
  for name, m in pipe["phases"].items():
    assert m["steps"] > 0 and m["wall_s"] >= m["compile_s"] > 0 and m["evals"] >= 1, (name, m)
  for agent in ("o2td3", "o2sac"):
    p = pipe["projection"]["pipelines"][agent]
    assert not p["missing_phases"] and _finite_positive(p["total_s"]) and p["meets"] in (True, False)
    assert p["target_s"] == accelerator.TARGETS[f"{agent}_pipeline_s"]
  assert "against" in md and "target" in md
  # 5: compile times per program, items 1-4 all represented.
  programs = r["items"]["compile"]["programs"]
  assert {c["item"] for c in programs} >= {"td3bc", "updates", "online", "pipeline"}
  assert all(c["seconds"] > 0 for c in programs)


def test_budget_guard_skips_items_and_says_so(tmp_path):
  out = tmp_path / "acc"
  proc = subprocess.run([sys.executable, "-m", "benchmarks.accelerator", f"--out={out}", "--sizes=cpu",
                         "--budget_s=0", "--items=pipeline,compile"], cwd=ROOT,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  r = json.loads((out / "accelerator.json").read_text())
  assert "skipped" in r["items"]["pipeline"] and "budget" in r["items"]["pipeline"]["skipped"]
  assert "skipped: " in (out / "accelerator.md").read_text()


# ------------------------------------------------------------------------------ batched env stepping

def _rollout(env_id, batched: bool, monkeypatch, max_steps, n=3, steps=200, seed=0):
  monkeypatch.setenv(envs.ENV_THREADS_VAR, "2" if batched else "off")
  make = lambda: envs.make_env(env_id, max_episode_steps=max_steps)
  train = envs.SeedEnvs(make, n, seed)
  assert (train.batch is not None) == batched
  rng = np.random.default_rng(seed)
  record = []
  for t in range(steps):
    if t == steps // 2:
      train.restart(t)
    a = rng.uniform(-1, 1, (n, train.envs[0].action_space.shape[0])).astype(np.float32)
    record.append(train.step(a) + (train.obs.copy(),))
  evaluator = envs.Evaluator(make, 2, 3)
  policy = lambda obs: np.tanh(3 * obs[..., :evaluator.act_dim]).astype(np.float32)
  returns = [evaluator.run(policy), evaluator.run(policy)]
  assert bool(evaluator.batch) == batched
  train.close()
  evaluator.close()
  return record, train.completed, returns


@pytest.mark.parametrize("env_id, max_steps", [("Hopper-v5", 40), ("Walker2d-v5", 30),
                                               ("HalfCheetah-v5", 25), ("Hopper-v5", None)])
def test_batched_stepping_is_bit_identical_to_gymnasium(env_id, max_steps, monkeypatch):
  one_by_one = _rollout(env_id, False, monkeypatch, max_steps)
  batched = _rollout(env_id, True, monkeypatch, max_steps)
  ends = np.zeros(2, int)
  for a, b in zip(one_by_one[0], batched[0]):
    for x, y in zip(a, b):
      assert x.dtype == y.dtype and np.array_equal(x, y)
    ends += [a[2].sum(), a[3].sum()]
  assert one_by_one[1] == batched[1]
  for x, y in zip(one_by_one[2], batched[2]):
    np.testing.assert_array_equal(x, y)
  # The rollouts exercised episode ends: terminations (Hopper, Walker2d) and time limits.
  if env_id != "HalfCheetah-v5":
    assert ends[0] > 0
  if max_steps is not None:
    assert ends[1] > 0


def test_other_envs_and_wrappers_are_stepped_one_by_one():
  from gymnasium.wrappers import ClipAction
  assert envs.MujocoBatch.create([envs.make_env("Hopper-v5")]) is not None
  assert envs.MujocoBatch.create([ClipAction(envs.make_env("Hopper-v5"))]) is None
  assert envs.MujocoBatch.create([envs.make_env("Ant-v5")]) is None        # cfrc_ext: not batched
  assert envs.MujocoBatch.create([envs.make_env("Pendulum-v1")]) is None
  # Mixed settings (here the healthy range) cannot share one computation.
  import gymnasium as gym
  mixed = [gym.make("Hopper-v5"), gym.make("Hopper-v5", healthy_z_range=(0.5, 10.0))]
  assert envs.MujocoBatch.create(mixed) is None


def test_env_threads(monkeypatch):
  monkeypatch.setenv(envs.ENV_THREADS_VAR, "3")
  assert envs.env_threads(5) == 3 and envs.env_threads(2) == 2
  monkeypatch.delenv(envs.ENV_THREADS_VAR)
  assert 1 <= envs.env_threads(50) <= max(1, os.cpu_count() or 1)
