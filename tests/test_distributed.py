"""Seeds over several processes (`jax.distributed`, CPU collectives): two processes running 2 seeds
each give the same per-seed results as one process running 4 seeds, and process 0 writes them all.

`train_online` is the cheapest launcher that crosses every multi-process path of a loop (global seed
keys and env seeds, gathered metrics and checkpoint, the shared run directory). The phase chain of
`finetune` (checkpoints restored and sliced per process) was checked the same way by hand, 2x2 vs
1x4 equal to print precision (BUILD_NOTES, "Seeds over processes"); it costs ~3x this test's CPU.
O2PPO's chain (its recipe, the on-policy loop, per-seed reward scalers) is checked 2x1 vs 1x2
below (~40-60 s)."""
import csv
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

TINY = ["--agent=td3", "--env=hopper", "--seeds=4", "--budget=quick", "--total_steps=300",
        "--start_steps=100", "--eval_every=150", "--eval_episodes=1", "--hidden_dims=8,8",
        "--batch_size=16", "--progress=false", "--checkpoint_every=100"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "-m", "experiments.train_online", *TINY, *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=600):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out


def _per_seed_columns(csv_path, last="seed3"):
  with open(csv_path) as f:
    rows = list(csv.DictReader(f))
  keys = sorted(k for k in rows[0] if "/seed" in k)
  assert any(k.endswith(f"/{last}") for k in keys), keys
  return keys, np.array([[float(r[k]) if r[k] else np.nan for k in keys] for r in rows])


def test_two_processes_of_two_seeds_equal_one_process_of_four(tmp_path):
  import jax
  from o2o_jax import loops
  from o2o_jax.agents.online import td3
  from o2o_jax.checkpoints import Checkpointer
  from o2o_jax.types import seed_keys
  port = _free_port()
  multi = [_launch(f"--out_dir={tmp_path / 'multi'}", "--num_processes=2",
                   f"--coordinator_address=localhost:{port}", f"--process_id={i}") for i in range(2)]
  printed = [_finish(p) for p in multi]
  _finish(_launch(f"--out_dir={tmp_path / 'single'}"))
  assert all("final eval return per seed" in out for out in printed)

  multi_dir, single_dir = (tmp_path / root / "online" / "td3" / "Hopper-v5" / "seed0x4"
                           for root in ("multi", "single"))
  # Process 0 wrote every seed's metrics and one checkpoint of all 4 seeds, equal to one process's.
  (keys_m, m), (keys_s, s) = (_per_seed_columns(d / "metrics.csv") for d in (multi_dir, single_dir))
  assert keys_m == keys_s
  np.testing.assert_allclose(m, s, rtol=1e-4, atol=1e-4)
  template = loops.init_shapes(td3, seed_keys(0, 4), 11, 3, td3.Config(hidden_dims=(8, 8)))
  states = [Checkpointer(d / "checkpoints").restore(template)[0] for d in (multi_dir, single_dir)]
  for x, y in zip(*(jax.tree_util.tree_leaves(st) for st in states)):
    assert x.shape[0] == 4
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-4)
  assert not (multi_dir / "progress").exists()      # both processes' snapshots were removed


def test_seeds_that_do_not_split_over_the_processes_give_one_line(tmp_path):
  port = _free_port()
  procs = [_launch("--seeds=3", f"--out_dir={tmp_path}", f"--coordinator_address=localhost:{port}",
                   "--num_processes=2", f"--process_id={i}") for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2
    assert "--seeds=3 cannot be split evenly over 2 processes" in err


# ----------------------------------------------------------------------------- O2PPO

O2PPO_TINY = ["--agent=o2ppo", "--seeds=2", "--budget=quick", "--pretrain_steps=40",
              "--reevaluate_steps=20", "--online_steps=128", "--ppo_rollout_length=64",
              "--ppo_minibatches=4", "--o2ppo_epochs=2", "--eval_every=64", "--eval_episodes=1",
              "--hidden_dims=8,8", "--o2ppo_value_hidden=8,8", "--batch_size=16",
              "--o2ppo_value_batch_size=16", "--progress=false", "--checkpoint_every=64",
              "--o2ppo_reward_scaling=dynamic"]   # one reward scaler per seed, in every process
_FINETUNE = "import experiments.finetune as f; from absl import app; app.run(f.main)"


def _launch_o2ppo(log_dir, *args):
  """One launcher process whose output goes to files: orbax logs enough to fill a pipe, and a process
  blocked on a full pipe would stall the other one in a collective."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  name = f"o2ppo{len(list(log_dir.glob('*.out')))}"
  out, err = open(log_dir / f"{name}.out", "w+"), open(log_dir / f"{name}.err", "w+")
  proc = subprocess.Popen([sys.executable, "-c", _FINETUNE, *O2PPO_TINY, *args], env=env, stdout=out,
                          stderr=err, text=True)
  proc.logs = (out, err)
  return proc


def _finish_logged(proc, timeout=600):
  proc.wait(timeout=timeout)
  out, err = proc.logs
  for f in (out, err):
    f.flush()
    f.seek(0)
  text, errors = out.read(), err.read()
  out.close()
  err.close()
  assert proc.returncode == 0, errors[-3000:]
  return text


def test_o2ppo_two_processes_of_one_seed_equal_one_process_of_two(tiny_hopper_dataset, tmp_path):
  """O2PPO over `jax.distributed`: the whole chain (IQL pre-training, re-evaluation with the dynamic
  reward scaler's dataset pass, PPO fine-tuning) in two processes of one seed each gives one
  process's two seeds: the per-seed metrics, the final states and every seed's reward-scaler state
  (issue #19: seeds never interact). (A multi-process run cannot start `--from` a one-process run's
  checkpoint: orbax refuses its single-device sharding in process 1, "Topology mismatch".)"""
  import jax
  from o2o_jax import runs
  from o2o_jax.agents.o2o import o2ppo
  from o2o_jax.checkpoints import Checkpointer
  from o2o_jax.types import seed_keys
  ds_flag = f"--dataset={tiny_hopper_dataset.dataset_id}"
  ds = tiny_hopper_dataset.dataset_id.replace("/", "_")
  port = _free_port()
  multi = [_launch_o2ppo(tmp_path, ds_flag, f"--out_dir={tmp_path / 'multi'}", "--num_processes=2",
                         f"--coordinator_address=localhost:{port}", f"--process_id={i}")
           for i in range(2)]
  printed = [_finish_logged(p) for p in multi]
  _finish_logged(_launch_o2ppo(tmp_path, ds_flag, f"--out_dir={tmp_path / 'single'}"))
  assert all("final fine-tuned" in out for out in printed)

  multi_dir, single_dir = (tmp_path / root / "finetune" / "o2ppo" / ds / "seed0x2"
                           for root in ("multi", "single"))
  keys_m, m = _per_seed_columns(multi_dir / "metrics.csv", last="seed1")
  keys_s, s = _per_seed_columns(single_dir / "metrics.csv", last="seed1")
  assert keys_m == keys_s
  np.testing.assert_allclose(m, s, rtol=1e-4, atol=1e-4)
  config = runs.config_from_dict(o2ppo.Config, runs.read_config(single_dir)["agent_config"])
  template = jax.eval_shape(jax.vmap(lambda k: o2ppo.init(k, 11, 3, config)), seed_keys(0, 2))
  (state_m, meta_m, _), (state_s, meta_s, _) = (Checkpointer(d / "checkpoints").restore(template)
                                                for d in (multi_dir, single_dir))
  for x, y in zip(jax.tree_util.tree_leaves(state_m), jax.tree_util.tree_leaves(state_s)):
    assert x.shape[0] == 2
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-4)
  for k in ("count", "mean", "m2", "running"):
    assert len(meta_s[f"reward_scaler_{k}"]) == 2
    np.testing.assert_allclose(meta_m[f"reward_scaler_{k}"], meta_s[f"reward_scaler_{k}"], rtol=1e-5)
  assert not (multi_dir / "progress").exists()      # both processes' snapshots were removed


# ----------------------------------------------------------------------------- every other recipe

# Tiny settings per agent whose 2-process run is not checked elsewhere (O2SAC: test_equivalence.py;
# O2PPO: above). Each recipe runs on the one runner, so `--num_processes` takes the same path.
# (O3F's phases, a pretrain and the shared off-policy online phase, are the ones O2SAC's test crosses.)
RECIPE_TINY = {
    "aca": ["--pretrain_steps=20", "--online_steps=40", "--warmup_steps=0", "--aca_top_n=2"],
    "samg_cql": ["--pretrain_steps=20", "--samg_cvae_steps=20", "--samg_cvae_hidden=8",
                 "--online_steps=40", "--warmup_steps=0", "--samg_prefill=10"],
}
_COMMON = ["--seeds=2", "--budget=quick", "--eval_every=20", "--eval_episodes=1", "--hidden_dims=8,8",
           "--batch_size=16", "--progress=false", "--checkpoint_every=20"]


def _launch_agent(log_dir, name, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out, err = open(log_dir / f"{name}.out", "w+"), open(log_dir / f"{name}.err", "w+")
  proc = subprocess.Popen([sys.executable, "-c", _FINETUNE, *args], env=env, stdout=out, stderr=err,
                          text=True)
  proc.logs = (out, err)
  return proc


@pytest.mark.parametrize("agent", sorted(RECIPE_TINY))
def test_every_recipe_splits_its_seeds_over_processes(agent, tiny_hopper_dataset, tmp_path):
  """2 processes x 1 seed of the agent's whole recipe equal 1 process x 2 seeds: the fine-tuning
  run's per-seed metrics and summary (every earlier phase restored and sliced per process)."""
  import json
  args = [f"--agent={agent}", f"--dataset={tiny_hopper_dataset.dataset_id}", *_COMMON,
          *RECIPE_TINY[agent]]
  port = _free_port()
  multi = [_launch_agent(tmp_path, f"p{i}", *args, f"--out_dir={tmp_path / 'multi'}",
                         "--num_processes=2", f"--coordinator_address=localhost:{port}",
                         f"--process_id={i}") for i in range(2)]
  for p in multi:
    _finish_logged(p)
  _finish_logged(_launch_agent(tmp_path, "single", *args, f"--out_dir={tmp_path / 'single'}"))
  ds = tiny_hopper_dataset.dataset_id.replace("/", "_")
  multi_dir, single_dir = (tmp_path / root / "finetune" / agent / ds / "seed0x2"
                           for root in ("multi", "single"))
  keys_m, m = _per_seed_columns(multi_dir / "metrics.csv", last="seed1")
  keys_s, s = _per_seed_columns(single_dir / "metrics.csv", last="seed1")
  assert keys_m == keys_s
  np.testing.assert_allclose(m, s, rtol=1e-4, atol=1e-4)
  summaries = [json.loads((d / "summary.json").read_text()) for d in (multi_dir, single_dir)]
  for key in ("offline", "final", "best"):
    np.testing.assert_allclose(summaries[0][key], summaries[1][key], rtol=1e-4, atol=1e-4)
