"""Fingerprints of every offline-kind phase's run directory, to check that a refactoring of the phase
code leaves the runs bit-identical (issue #20: one library skeleton for the offline phases).

  PYTHONPATH=$PWD python -m benchmarks.phase_identity --out=/tmp/identity_before.json   # unchanged tree
  ... change the code ...
  PYTHONPATH=$PWD python -m benchmarks.phase_identity --out=/tmp/identity_after.json \
      --compare=/tmp/identity_before.json                                              # exit 1 on a diff

It runs `experiments.finetune` as subprocesses (cwd: this repository, PYTHONPATH: this repository,
JAX on the CPU) on the embedded dataset (o2o/hopper/medium-v0) with 2 seeds and tiny step counts:

  o2td3          pretrain (td3bc), reevaluate, align, finetune
  o2td3_skips    --reevaluate=false --align=false: reevaluate at 0 steps (the ablation) and skip_phase
  o2td3_part     --buffer=part: the buffer seeded with the top offline episodes
  o2ppo          pretrain (iql), reevaluate (the V fit), finetune
  aca_cql        pretrain (cql), zfit (Z fitted to the CQL actor), finetune
  samg_cql       pretrain (cql), cvae (the C-VAE), finetune
  o3f            pretrain (iql5), finetune (the buffer starts as the whole dataset)

and writes, per scenario and per phase run directory (relative path), a fingerprint: metrics.csv
without its timing/throughput columns (perf/*, time*, wall*), config.json, and a SHA-256 of every
array leaf of the final result checkpoint (restored without a template, so by orbax's own tree) and
of its JSON metadata, and an online phase's summary.json without its wall_time_s. The scenario's output root is replaced by '<out>' everywhere, so runs in
different directories compare equal. Each scenario's output root is removed first.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--seeds=2", "--budget=quick", "--eval_episodes=1", "--hidden_dims=8,8", "--batch_size=16",
          "--progress=false", "--checkpoint_every=20"]
SCENARIOS = {
    "o2td3": ["--agent=o2td3", "--pretrain_steps=40", "--reevaluate_steps=20", "--align_steps=20",
              "--online_steps=60", "--warmup_steps=20", "--eval_every=30", "--critic_hidden=8,8"],
    "o2td3_skips": ["--agent=o2td3", "--pretrain_steps=40", "--reevaluate_steps=20", "--align_steps=20",
                    "--online_steps=60", "--warmup_steps=20", "--eval_every=30", "--critic_hidden=8,8",
                    "--reevaluate=false", "--align=false"],
    "o2td3_part": ["--agent=o2td3", "--pretrain_steps=40", "--reevaluate_steps=20", "--align_steps=20",
                   "--online_steps=60", "--warmup_steps=20", "--eval_every=30", "--critic_hidden=8,8",
                   "--buffer=part"],
    "o2ppo": ["--agent=o2ppo", "--pretrain_steps=40", "--reevaluate_steps=20", "--online_steps=128",
              "--ppo_rollout_length=64", "--ppo_minibatches=4", "--o2ppo_epochs=2", "--eval_every=64",
              "--o2ppo_value_hidden=8,8", "--o2ppo_value_batch_size=16"],
    "aca_cql": ["--agent=aca", "--offline_algo=cql", "--pretrain_steps=30", "--aca_zfit_steps=20",
                "--critic_hidden=8,8", "--online_steps=40", "--warmup_steps=10", "--eval_every=20"],
    "samg_cql": ["--agent=samg_cql", "--pretrain_steps=40", "--samg_cvae_steps=40", "--samg_cvae_hidden=8",
                 "--online_steps=40", "--samg_prefill=20", "--eval_every=20"],
    "o3f": ["--agent=o3f", "--pretrain_steps=40", "--online_steps=40", "--eval_every=20",
            "--o3f_num_candidates=8"],
}
DROP_PREFIXES = ("perf/", "time", "wall")


def _metrics(path: Path, root: str):
  if not path.exists():
    return None
  rows = list(csv.reader(io.StringIO(path.read_text())))
  keep = [i for i, c in enumerate(rows[0]) if not c.startswith(DROP_PREFIXES)]
  return "\n".join(",".join(r[i] for i in keep if i < len(r)) for r in rows).replace(root, "<out>")


def _checkpoint(ckpt_dir: Path, root: str):
  import numpy as np
  import orbax.checkpoint as ocp
  import jax
  steps = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
  if not steps:
    return None
  with ocp.CheckpointManager(ckpt_dir.absolute(), item_names=("state", "meta")) as manager:
    restored = manager.restore(steps[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                  meta=ocp.args.JsonRestore()))
  leaves = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(restored["state"])[0]:
    x = np.asarray(leaf)
    leaves[jax.tree_util.keystr(path)] = (f"{x.dtype}{list(x.shape)} "
                                          + hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest())
  meta = json.dumps(restored["meta"], sort_keys=True).replace(root, "<out>")
  return {"steps": steps, "leaves": leaves, "meta_sha256": hashlib.sha256(meta.encode()).hexdigest(),
          "meta": json.loads(meta)}


def _summary(path: Path, root: str):
  if not path.exists():
    return None
  summary = json.loads(path.read_text().replace(root, "<out>"))
  summary.pop("wall_time_s", None)
  return summary


def fingerprint(root: Path):
  out = {}
  for cfg in sorted(root.rglob("config.json")):
    run = cfg.parent
    out[str(run.relative_to(root))] = {
        "config": json.loads(cfg.read_text().replace(str(root), "<out>")),
        "metrics": _metrics(run / "metrics.csv", str(root)),
        "checkpoint": _checkpoint(run / "checkpoints", str(root)) if (run / "checkpoints").exists() else None,
        "summary": _summary(run / "summary.json", str(root)),
        "files": sorted(str(p.relative_to(run)) for p in run.iterdir()
                        if p.name not in ("tensorboard",)),
    }
  return out


def run_scenario(name: str, args, work: Path):
  root = work / name
  shutil.rmtree(root, ignore_errors=True)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("O2O_JAX_FAULT", None)
  t0 = time.time()
  res = subprocess.run([sys.executable, "-m", "experiments.finetune", f"--out_dir={root}", *COMMON, *args],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
  if res.returncode != 0:
    raise SystemExit(f"{name} failed ({res.returncode}):\n{res.stderr[-4000:]}")
  print(f"{name}: {time.time() - t0:.0f}s", flush=True)
  return fingerprint(root)


def compare(a, b, where=""):
  """Paths at which two fingerprints differ."""
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in sorted(set(a) | set(b)) for d in compare(a.get(k), b.get(k), f"{where}/{k}")]
  return [] if a == b else [where]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="JSON file of the fingerprints")
  parser.add_argument("--work", default="/tmp/phase_identity", help="root of the scenarios' run dirs")
  parser.add_argument("--only", default=None, help="comma-separated scenarios (default: all)")
  parser.add_argument("--compare", default=None, help="an earlier --out file to compare with")
  a = parser.parse_args()
  names = a.only.split(",") if a.only else list(SCENARIOS)
  prints = {n: run_scenario(n, SCENARIOS[n], Path(a.work)) for n in names}
  Path(a.out).write_text(json.dumps(prints, indent=1, sort_keys=True))
  if a.compare:
    ref = json.loads(Path(a.compare).read_text())
    diffs = compare({n: ref.get(n) for n in names}, prints)
    print("identical" if not diffs else "DIFFERENT:\n  " + "\n  ".join(diffs))
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
  main()
