"""Side by side with CORL's own PyTorch code on the same local dataset (issue #19).

  python -m benchmarks.vs_corl.run --corl_dir=<CORL checkout> --corl_python=<python with torch> \
      --datasets=o2o/hopper/medium-v0,o2o/walker2d/medium-v0 --algos=td3bc,iql --seeds=3 --steps=50000

For each dataset and algorithm it trains
- CORL's unmodified single-file script (`algorithms/offline/<algo>.py` with its own
  `configs/offline/<algo>/<env>/<level>_v2.yaml`), one process per seed, run one after the other, on
  our dataset through the stand-ins in `benchmarks/vs_corl/shim/` (the user's checkout is never
  downloaded or modified);
- our `experiments.pretrain` with the same hyperparameters (`--preset=corl`), the same update count,
  evaluation interval and episodes, all seeds vmapped in one program;
then measures the update rate of both, back to back in this same invocation (run it on a quiet
machine): CORL's from the wall-clock stamps of a short run without evaluations at torch's default
thread count, ours from timed `lax.scan` chunks of the same update on the same data at 1 and 5 seeds
(compile excluded, like CORL's warmed-up loop). Every finished piece is kept
under --out, so a rerun continues where the last one stopped. `benchmarks.vs_corl.report` writes the
table and curves.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a script, so importing this module (tests) leaves absl's global
  flags free for the launchers."""
  flags.DEFINE_string("corl_dir", None, "A checkout of corl-team/CORL (never downloaded by this script).")
  flags.DEFINE_string("corl_python", "python", "Interpreter with CORL's requirements (torch, pyrallis, "
                      "minari, gymnasium[mujoco]); usually a separate virtual environment.")
  flags.DEFINE_list("datasets", ["o2o/hopper/medium-v0", "o2o/walker2d/medium-v0"], "Minari dataset ids.")
  flags.DEFINE_list("algos", ["td3bc", "iql"], "Algorithms: td3bc, iql, cql.")
  flags.DEFINE_integer("seeds", 3, "Seeds of each implementation (CORL's run one after the other).")
  flags.DEFINE_integer("steps", 50_000, "Gradient updates per run.")
  flags.DEFINE_integer("eval_every", 5_000, "Updates between evaluations.")
  flags.DEFINE_integer("eval_episodes", 10, "Evaluation episodes.")
  flags.DEFINE_list("corl_seeds_for", [], "algo=N pairs that override --seeds for CORL (e.g. cql=1: its "
                    "PyTorch run is slow).")
  flags.DEFINE_list("speed_seeds", ["1", "5"], "Seed counts of our update-rate measurement.")
  flags.DEFINE_float("speed_seconds", 20.0, "Seconds each of our update-rate measurements runs.")
  flags.DEFINE_integer("speed_steps", 3000, "Updates of CORL's update-rate run (no evaluation).")
  flags.DEFINE_integer("score_threads", 1, "Torch threads of CORL's score runs (OMP_NUM_THREADS): several "
                       "runs share the machine, and oversubscribed OpenMP threads spin. The update-rate "
                       "run uses torch's default (all cores), like ours.")
  flags.DEFINE_list("parts", ["scores", "speed"], "What to run: scores, speed.")
  flags.DEFINE_list("sides", ["corl", "ours"], "Whose score runs to run now (the other side's finished "
                    "runs are still reported).")
  flags.DEFINE_string("out", "benchmarks/results/vs_corl", "Results folder.")
  flags.mark_flag_as_required("corl_dir")

CORL_SCRIPT = {"td3bc": "td3_bc", "iql": "iql", "cql": "cql"}
# Our networks at CORL's sizes: TD3+BC and IQL 2x256, CQL 3x256 (`q_n_hidden_layers: 3`).
HIDDEN = {"td3bc": "256,256", "iql": "256,256", "cql": "256,256,256"}
SHIM = Path(__file__).resolve().parent / "shim"


def corl_config(corl_dir: Path, algo: str, dataset_id: str) -> Path:
  from o2o_jax import presets
  env, level = presets.dataset_env_and_level(dataset_id)
  path = corl_dir / "configs" / "offline" / CORL_SCRIPT[algo] / env / f"{level.replace('-', '_')}_v2.yaml"
  if not path.exists():
    raise SystemExit(f"CORL has no config {path}: pick a dataset CORL tunes for (hopper, halfcheetah, "
                     "walker2d x medium, medium-replay, medium-expert, expert)")
  return path


def slug(dataset_id: str) -> str:
  return dataset_id.replace("/", "_")


def run_corl(algo: str, dataset_id: str, seed: int, out: Path, speed: bool = False) -> Path:
  """One CORL run; its JSON-lines log (evaluations + wall-clock stamps) is the result. `speed`: a
  short run without evaluations at torch's default thread count, stamped every 250 updates."""
  from o2o_jax import presets
  name = "speed" if speed else f"seed{seed}"
  log = out / "corl" / algo / slug(dataset_id) / f"{name}.jsonl"
  done = log.with_suffix(".done")
  if done.exists() and not speed:
    return log
  log.parent.mkdir(parents=True, exist_ok=True)
  log.unlink(missing_ok=True)
  corl_dir = Path(FLAGS.corl_dir).resolve()
  env = dict(os.environ, O2O_DATASET=dataset_id, O2O_LOG=str(log.resolve()),
             PYTHONPATH=os.pathsep.join([str(SHIM), str(corl_dir)]),
             O2O_STAMP_EVERY="250" if speed else "1000")
  if not speed:
    env["OMP_NUM_THREADS"] = str(FLAGS.score_threads)
  steps, eval_every = (FLAGS.speed_steps, 10 * FLAGS.speed_steps) if speed else (FLAGS.steps,
                                                                                  FLAGS.eval_every)
  cmd = [FLAGS.corl_python, str(corl_dir / "algorithms" / "offline" / f"{CORL_SCRIPT[algo]}.py"),
         "--config_path", str(corl_config(corl_dir, algo, dataset_id)),
         "--env", f"{presets.d4rl_name(dataset_id)}-v2", "--device", "cpu",
         "--max_timesteps", str(steps), "--eval_freq", str(eval_every),
         "--n_episodes", str(FLAGS.eval_episodes), "--seed", str(seed)]   # checkpoints_path defaults to None (no saving)
  t0 = time.time()
  with open(log.with_suffix(".stdout"), "w") as f:
    rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=out).returncode
  if rc != 0:
    raise SystemExit(f"CORL {algo} seed {seed} failed (exit {rc}); see {log.with_suffix('.stdout')}")
  done.write_text(json.dumps({"wall_s": time.time() - t0, "cmd": cmd}))
  return log


def run_ours(algo: str, dataset_id: str, seeds: int, out: Path) -> Path:
  run_dir = out / "ours" / "runs"
  name = f"{algo}_{slug(dataset_id)}_x{seeds}"
  marker = out / "ours" / f"{name}.done"
  if not marker.exists():
    cmd = [sys.executable, "-m", "experiments.pretrain", f"--algo={algo}", f"--dataset={dataset_id}",
           f"--seeds={seeds}", f"--num_steps={FLAGS.steps}", f"--eval_every={FLAGS.eval_every}",
           f"--eval_episodes={FLAGS.eval_episodes}", f"--hidden_dims={HIDDEN[algo]}", "--preset=corl",
           "--budget=paper", f"--out_dir={run_dir}", f"--run_name={name}", "--progress=false"]
    t0 = time.time()
    (out / "ours").mkdir(parents=True, exist_ok=True)
    with open(out / "ours" / f"{name}.log", "a") as f:
      rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
      raise SystemExit(f"our {algo} run failed (exit {rc}); see {out / 'ours' / (name + '.log')}")
    marker.write_text(json.dumps({"wall_s": time.time() - t0, "cmd": cmd}))
  found = list(run_dir.glob(f"**/{name}/metrics.csv"))
  if not found:
    raise SystemExit(f"no metrics.csv for our run {name} under {run_dir}")
  return found[0]


def corl_update_rate(log: Path, skip: int = 500) -> float:
  """Median training updates per second between consecutive stamps with no evaluation between
  them, after the first `skip` updates (warm-up)."""
  rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
  rates, prev = [], None
  for row in rows:
    if row["step"] is not None and row["step"] < skip:
      continue
    if row["kind"] == "eval":
      prev = None
      continue
    if prev is not None and row["step"] > prev["step"]:
      rates.append((row["step"] - prev["step"]) / (row["time"] - prev["time"]))
    prev = row
  if not rates:
    raise SystemExit(f"{log} has no pair of training stamps: run more steps than 2 stamps")
  rates.sort()
  return rates[len(rates) // 2]


def our_update_rate(algo: str, dataset_id: str, seeds: int) -> float:
  """Seed-updates/s of our jitted update chunk (lax.scan over 500 updates) on the same data."""
  import jax
  import numpy as np
  from o2o_jax import presets
  from o2o_jax import loops
  from o2o_jax.agents import registry
  from o2o_jax.data import prepared
  preset = presets.offline_preset(algo, dataset_id, "corl")
  data = prepared.load_data(dataset_id)
  agent = registry.get(algo, registry.OFFLINE)
  config = agent.Config(**{**preset["config"],
                           "hidden_dims": tuple(int(h) for h in HIDDEN[algo].split(","))})
  if hasattr(config, "max_steps"):
    config = type(config)(**{**config.__dict__, "max_steps": FLAGS.steps})
  states = loops.init_states(agent, jax.random.split(jax.random.PRNGKey(0), seeds),
                             data.device.observations.shape[-1], data.device.actions.shape[-1], config)
  chunk = loops.offline_chunk_fn(agent.update, 256, 500)
  keys = jax.random.split(jax.random.PRNGKey(1), seeds)
  states, _ = chunk(states, keys, data.device)            # compile + warm-up
  jax.block_until_ready(states)
  n, t0 = 0, time.time()
  while time.time() - t0 < FLAGS.speed_seconds:
    states, _ = chunk(states, keys, data.device)
    jax.block_until_ready(states)
    n += 500
  return float(np.float64(n * seeds) / (time.time() - t0))


def record(results_file: Path, key: str, **fields) -> dict:
  """Merges `fields` into results.json's entry `key`, reading the file afresh: a score run takes hours,
  and another invocation (a speed measurement, say) may have written the file meanwhile."""
  results = json.loads(results_file.read_text()) if results_file.exists() else {}
  results.setdefault(key, {}).update(fields)
  results_file.write_text(json.dumps(results, indent=1))
  return results


def main(argv):
  del argv
  out = Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  corl_seeds = {k: int(v) for k, v in (p.split("=") for p in FLAGS.corl_seeds_for)}
  results_file = out / "results.json"
  results = json.loads(results_file.read_text()) if results_file.exists() else {}
  for dataset_id in FLAGS.datasets:
    for algo in FLAGS.algos:
      key = f"{algo}|{dataset_id}"
      entry = {}
      if "scores" in FLAGS.parts:
        n_corl = corl_seeds.get(algo, FLAGS.seeds)
        if "corl" in FLAGS.sides:
          logs = []
          for seed in range(n_corl):
            print(f"[vs_corl] CORL {algo} on {dataset_id}, seed {seed} ({time.strftime('%H:%M:%S')})",
                  flush=True)
            logs.append(str(run_corl(algo, dataset_id, seed, out)))
          entry.update(corl_logs=logs, steps=FLAGS.steps)
        if "ours" in FLAGS.sides:
          print(f"[vs_corl] ours {algo} on {dataset_id}, {FLAGS.seeds} seeds vmapped "
                f"({time.strftime('%H:%M:%S')})", flush=True)
          entry.update(ours_metrics=str(run_ours(algo, dataset_id, FLAGS.seeds, out)), steps=FLAGS.steps)
      if "speed" in FLAGS.parts:
        print(f"[vs_corl] update rates of {algo} on {dataset_id}", flush=True)
        entry["corl_updates_per_s"] = [corl_update_rate(run_corl(algo, dataset_id, 0, out, speed=True))]
        entry["ours_seed_updates_per_s"] = {s: our_update_rate(algo, dataset_id, int(s))
                                            for s in FLAGS.speed_seeds}
        entry["speed_measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        from o2o_jax import loops
        entry["ours_seed_loop"] = loops.seed_loop()
        print(f"[vs_corl] speed {algo} on {dataset_id}: CORL {entry['corl_updates_per_s']} upd/s, "
              f"ours {entry['ours_seed_updates_per_s']} seed-upd/s", flush=True)
      results = record(results_file, key, **entry)
  from benchmarks.vs_corl import report
  if any("corl_logs" in e and "ours_metrics" in e or "corl_updates_per_s" in e for e in results.values()):
    report.write(out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
