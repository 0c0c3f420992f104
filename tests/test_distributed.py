"""Seeds over several processes (`jax.distributed`, CPU collectives): two processes running 2 seeds
each give the same per-seed results as one process running 4 seeds, and process 0 writes them all."""
import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np

# Pretrain (offline loop) -> re-evaluation of pi_off (0 steps) -> alignment skipped -> fine-tuning
# (online loop): every way a phase reads, gathers and writes seeds, at the least compile time.
TINY = ["--agent=o2td3", "--seeds=4", "--budget=quick", "--pretrain_steps=40", "--reevaluate=false",
        "--align=false", "--online_steps=60", "--warmup_steps=20", "--eval_every=30",
        "--eval_episodes=1", "--hidden_dims=8,8", "--critic_hidden=8,8", "--batch_size=16",
        "--progress=false", "--checkpoint_every=20"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "-m", "experiments.finetune", *TINY, *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=900):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out


def _per_seed_columns(csv_path):
  with open(csv_path) as f:
    rows = list(csv.DictReader(f))
  keys = sorted(k for k in rows[0] if "/seed" in k)
  assert any(k.endswith("/seed3") for k in keys), keys
  return keys, np.array([[float(r[k]) if r[k] else np.nan for k in keys] for r in rows])


def test_two_processes_of_two_seeds_equal_one_process_of_four(tiny_hopper_dataset, tmp_path):
  import jax
  from experiments import phases
  dataset = f"--dataset={tiny_hopper_dataset.dataset_id}"
  port = _free_port()
  multi = [_launch(dataset, f"--out_dir={tmp_path / 'multi'}", "--num_processes=2",
                   f"--coordinator_address=localhost:{port}", f"--process_id={i}") for i in range(2)]
  single = _launch(dataset, f"--out_dir={tmp_path / 'single'}")
  printed = [_finish(p) for p in multi]
  _finish(single)
  assert "final fine-tuned" in printed[0]

  name = tiny_hopper_dataset.dataset_id.replace("/", "_")
  run = "seed0x4-noreevaluate-noalign"
  for phase, agent, run_name in (("pretrain", "td3bc", "seed0x4"), ("finetune", "o2td3", run)):
    multi_dir, single_dir = (tmp_path / root / phase / agent / name / run_name
                             for root in ("multi", "single"))
    # The primary wrote every seed's metrics and a checkpoint of all 4 seeds, equal to one process's.
    (keys_m, m), (keys_s, s) = (_per_seed_columns(d / "metrics.csv") for d in (multi_dir, single_dir))
    assert keys_m == keys_s
    np.testing.assert_allclose(m, s, rtol=1e-4, atol=1e-4, err_msg=phase)
    assert not (multi_dir / "progress").exists()
  summary = [json.loads((tmp_path / root / "finetune" / "o2td3" / name / run / "summary.json")
                        .read_text()) for root in ("multi", "single")]
  for key in ("offline", "aligned", "best", "final"):
    assert len(summary[0][key]) == 4
    np.testing.assert_allclose(summary[0][key], summary[1][key], rtol=1e-4, atol=1e-4)
  states = [phases._restore_o2o(tmp_path / root / "finetune" / "o2td3" / name / run)[3]
            for root in ("multi", "single")]
  for x, y in zip(*(jax.tree_util.tree_leaves(s) for s in states)):
    assert x.shape[0] == 4
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-4)


def test_seeds_that_do_not_split_over_the_processes_give_one_line(tmp_path):
  port = _free_port()
  procs = [_launch("--seeds=3", f"--out_dir={tmp_path}", f"--coordinator_address=localhost:{port}",
                   "--num_processes=2", f"--process_id={i}") for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2
    assert "--seeds=3 cannot be split evenly over 2 processes" in err
