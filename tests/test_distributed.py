"""Seeds over several processes (`jax.distributed`, CPU collectives): two processes running 2 seeds
each give the same per-seed results as one process running 4 seeds, and process 0 writes them all.

`train_online` is the cheapest launcher that crosses every multi-process path of a loop (global seed
keys and env seeds, gathered metrics and checkpoint, the shared run directory). The phase chain of
`finetune` (checkpoints restored and sliced per process) was checked the same way by hand, 2x2 vs
1x4 equal to print precision (BUILD_NOTES, "Seeds over processes"); it costs ~3x this test's CPU."""
import csv
import os
import socket
import subprocess
import sys

import numpy as np

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


def _per_seed_columns(csv_path):
  with open(csv_path) as f:
    rows = list(csv.DictReader(f))
  keys = sorted(k for k in rows[0] if "/seed" in k)
  assert any(k.endswith("/seed3") for k in keys), keys
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
