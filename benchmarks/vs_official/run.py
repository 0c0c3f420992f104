"""Side by side with the official OCR-CFT code (QinwenLuo/OCR-CFT) on the same local dataset (issue #19).

  export MINARI_DATASETS_PATH=<store holding the dataset>    # default: the package's shipped datasets
  python -m benchmarks.vs_official.run --official_dir=<OCR-CFT checkout> \
      --official_python=<python with torch, pyrallis, tensorboardX, minari, gymnasium[mujoco], pyyaml> \
      --dataset=o2o/hopper/medium-v0 --agent=o2td3 --seeds=3 --budget=quick
  python -m benchmarks.vs_official.run ... --agent=o2sac --official_seeds=1 --seeds=3

Per seed, the official chain, unmodified, from a scratch copy of the checkout (the user's checkout is
read only; nothing is downloaded): `offline/td3_bc.py` -> `finetune/O2TD3.py` (--agent=o2td3) or
`offline/cql.py` -> `finetune/O2SAC.py` (--agent=o2sac), on our Minari dataset through the `d4rl`,
`gym` and `wandb` stand-ins of `benchmarks/vs_corl/shim/`. The offline scripts take the step counts on
their command line; the fine-tuning scripts let their per-dataset YAML
(`config/finetune/<O2X>/<env>/<level>_v2.yaml`) override the command line, so the copy's YAML is
rewritten with our budget's `ope_steps`, `align_steps`, `online_steps`, `warmup_steps`, `eval_freq`,
`n_episodes`, `log_freq` (evaluation interval during alignment) and `device: cpu`; every other key
stays the released value. Networks are the official sizes, which its code fixes: O2TD3 actor 2x256,
critic 2x256 (LayerNorm); O2SAC actor 3x256, critic 3x256 (LayerNorm).

Then ours: `experiments.finetune --agent=<agent> --budget=<budget>` with --hidden_dims/--critic_hidden
at those same sizes, all seeds vmapped in one program, the same step counts.

Step counts (both sides): `o2o_jax.recipes.ocr_cft.BUDGETS[budget]` and `QUICK_PRETRAIN_STEPS`, i.e. at
--budget=quick offline 100k (TD3+BC) / 10k (CQL), re-evaluation 50k, alignment 5k, online 10k,
warm-up 1k, evaluation every 2k env steps with 5 episodes (offline every 5k, alignment every 5k).
--pretrain_steps ... --eval_episodes override any of them for both sides (a smoke test); a run with
overrides is tagged `<budget>-custom-<hash>` so it never mixes with the budget's own.

Measured per seed (see `report.py`): π_off, π_on, their difference, the actor's drift after alignment
(RMS of π_on − π_off on the first --drift_states dataset states; the official side by
`official_drift.py` under the official Python, ours from the alignment checkpoint as
`benchmarks/actor_drift.py`), the early online minimum and the final score.

Resumable: each finished piece leaves a marker (`*.done`, `drift.json`) under
--work_dir/<tag>/...; a rerun skips it. Outputs: --work_dir (checkout copy, models, logs, our runs;
gitignored `runs/` by default) and --out/<agent>__<dataset>__<tag>.json, then `report.write(--out)`
(table.md).

Stand-ins and settings the official code needs here (nothing in its code is changed):
- the `d4rl`/`gym`/`wandb` stand-ins of benchmarks/vs_corl/shim (the fine-tuning scripts use only the
  old-gym API those already give: `seed`, 4-tuple `step`, `TimeLimit.truncated`,
  `get_normalized_score`, `gym.wrappers.TransformObservation`);
- `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`: torch >= 2.6 loads checkpoints with weights_only=True, and the
  official CQL checkpoint pickles a module object (`sac_log_alpha`), which O2SAC.py's `torch.load`
  then refuses; the released code ran on torch 2.4 (weights_only=False);
- `--device cpu` / YAML `device: cpu` (its default is cuda).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from absl import app, flags

FLAGS = flags.FLAGS
SHIM = Path(__file__).resolve().parents[1] / "vs_corl" / "shim"
DRIFT_SCRIPT = Path(__file__).resolve().parent / "official_drift.py"
# agent -> (official offline script, official fine-tuning script, YAML folder, offline model folder,
#           fine-tuned model folder, our offline algo)
CHAINS = {"o2td3": ("td3_bc.py", "O2TD3.py", "O2TD3", "TD3_BC", "TD3_BC_toTD3", "td3bc"),
          "o2sac": ("cql.py", "O2SAC.py", "O2SAC", "CQL", "CQL_toSAC", "cql")}
# The official network sizes (fixed in its code: net.py DeterministicPolicy 2x256, TanhGaussianPolicy
# 3x256; CriticFunction n_hidden 2 for O2TD3, q_n_hidden_layers 3 for O2SAC).
NETWORKS = {"o2td3": {"actor": "256,256", "critic": "256,256"},
            "o2sac": {"actor": "256,256,256", "critic": "256,256,256"}}
STEP_KEYS = ("pretrain_steps", "reevaluate_steps", "align_steps", "online_steps", "warmup_steps",
             "eval_every", "eval_episodes")


def define_flags():
  flags.DEFINE_string("official_dir", None, "A checkout of QinwenLuo/OCR-CFT (read only; never "
                      "downloaded by this script).")
  flags.DEFINE_string("official_python", "python", "Interpreter with the official code's needs (torch, "
                      "pyrallis, tensorboardX, tqdm, pyyaml) plus minari and gymnasium[mujoco] for the "
                      "stand-ins; usually a separate virtual environment.")
  flags.DEFINE_string("dataset", "o2o/hopper/medium-v0", "Minari dataset id.")
  flags.DEFINE_enum("agent", "o2td3", list(CHAINS), "o2td3 (TD3+BC -> O2TD3) or o2sac (CQL -> O2SAC).")
  flags.DEFINE_integer("seeds", 3, "Seeds of each side (ours vmapped, the official one after another).")
  flags.DEFINE_integer("official_seeds", None, "Official seeds if not --seeds (e.g. 1 for o2sac).")
  flags.DEFINE_enum("budget", "quick", ["quick", "paper"], "Step counts: o2o_jax.recipes.ocr_cft.BUDGETS.")
  for k in STEP_KEYS:
    flags.DEFINE_integer(k, None, f"Override the budget's {k} on both sides (e.g. a smoke test).")
  flags.DEFINE_integer("drift_states", 20_000, "Dataset states the drift is measured on.")
  flags.DEFINE_integer("official_threads", 1, "Torch threads of the official runs (OMP_NUM_THREADS).")
  flags.DEFINE_list("sides", ["official", "ours"], "Whose runs to run now (finished runs of the other "
                    "side are still collected).")
  flags.DEFINE_string("work_dir", "runs/vs_official", "Scratch folder: checkout copy, models, logs, "
                      "our run directories.")
  flags.DEFINE_string("out", "benchmarks/results/vs_official", "Results folder (JSON + table.md).")
  flags.DEFINE_bool("report", True, "Write table.md at the end.")
  flags.mark_flag_as_required("official_dir")


# ----------------------------------------------------------------------------- configuration

def step_counts(budget: str, agent: str, overrides: Dict[str, int]) -> Dict[str, int]:
  """Both sides' step counts: the budget's (as experiments.finetune resolves them) with overrides."""
  from o2o_jax.recipes import ocr_cft
  b = ocr_cft.BUDGETS[budget]
  algo = CHAINS[agent][5]
  steps = {"pretrain_steps": ocr_cft.pretrain_steps(budget, algo),
           **{k: int(b[k]) for k in STEP_KEYS if k != "pretrain_steps"},
           "pretrain_eval_every": int(b["pretrain_eval_every"]),
           "align_eval_every": int(b["align_eval_every"])}
  steps.update({k: int(v) for k, v in overrides.items() if v is not None})
  if steps["online_steps"] % steps["eval_every"]:
    raise SystemExit(f"online_steps ({steps['online_steps']}) must be a multiple of eval_every "
                     f"({steps['eval_every']}): the official code evaluates only at multiples")
  return steps


def run_tag(budget: str, overrides: Dict[str, int]) -> str:
  given = {k: v for k, v in sorted(overrides.items()) if v is not None}
  if not given:
    return budget
  return f"{budget}-custom-{hashlib.sha1(json.dumps(given).encode()).hexdigest()[:8]}"


def slug(dataset_id: str) -> str:
  return dataset_id.replace("/", "_")


def official_env_name(dataset_id: str) -> str:
  from o2o_jax import presets
  return f"{presets.d4rl_name(dataset_id)}-v2"


def official_yaml(checkout: Path, agent: str, env_name: str) -> Path:
  """config/finetune/<O2X>/<env>/<level>_v2.yaml, as `utils.load_train_config_auto` builds it."""
  head, rest = env_name.split("-")[0], "_".join(env_name.split("-")[1:])
  path = checkout / "config" / "finetune" / CHAINS[agent][2] / head.lower() / f"{rest.lower()}.yaml"
  if not path.exists():
    raise SystemExit(f"the official code has no config {path}: pick a dataset it was tuned for")
  return path


def edit_yaml(text: str, values: Dict[str, object]) -> str:
  """The YAML with each `key: value` line of `values` replaced (flat YAML, one key per line, as the
  released configs are); a key the file lacks is appended (the dataclass would use its default)."""
  lines = text.splitlines()
  for key, value in values.items():
    rendered = f"{key}: {value}"
    pat = re.compile(rf"^{re.escape(key)}\s*:")
    hits = [i for i, line in enumerate(lines) if pat.match(line)]
    if hits:
      for i in hits:
        lines[i] = rendered
    else:
      lines.append(rendered)
  return "\n".join(lines) + "\n"


def yaml_values(steps: Dict[str, int]) -> Dict[str, object]:
  return {"ope_steps": steps["reevaluate_steps"], "align_steps": steps["align_steps"],
          "online_steps": steps["online_steps"], "warmup_steps": steps["warmup_steps"],
          "eval_freq": steps["eval_every"], "n_episodes": steps["eval_episodes"],
          "log_freq": min(steps["align_eval_every"], steps["align_steps"]) or 1, "device": "cpu"}


def dataset_store(dataset_id: str) -> str:
  """MINARI_DATASETS_PATH for the official process: the caller's, if it holds the dataset, else the
  store our loader finds it in (the package's shipped datasets)."""
  from o2o_jax.data import find_dataset_path
  given = os.environ.get("MINARI_DATASETS_PATH")
  if given and (Path(given) / dataset_id).exists():
    return given
  store = find_dataset_path(dataset_id)     # <store>/<dataset id>
  for _ in Path(dataset_id).parts:
    store = store.parent
  return str(store)


# ----------------------------------------------------------------------------- official side

def prepare_checkout(src: Path, dst: Path, agent: str, env_name: str, steps: Dict[str, int]) -> Path:
  """A scratch copy of the checkout (without .git and any trained models or logs in it), its YAML
  rewritten with our step counts. Made once per tag; the YAML is checked on every call."""
  if not (dst / ".copied").exists():
    if dst.exists():
      shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", "__pycache__", "model", "log"))
    (dst / ".copied").write_text(str(src))
  yaml_path = official_yaml(dst, agent, env_name)
  original = official_yaml(src, agent, env_name).read_text()
  yaml_path.write_text(edit_yaml(original, yaml_values(steps)))
  return dst


def official_env(dataset_id: str, checkout: Path) -> Dict[str, str]:
  env = dict(os.environ, O2O_DATASET=dataset_id, MINARI_DATASETS_PATH=dataset_store(dataset_id),
             PYTHONPATH=os.pathsep.join([str(SHIM), str(checkout)]),
             OMP_NUM_THREADS=str(FLAGS.official_threads), MKL_NUM_THREADS=str(FLAGS.official_threads),
             TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
  env.pop("O2O_LOG", None)
  return env


def _run(cmd: List[str], cwd: Path, env: Dict[str, str], log: Path, what: str) -> float:
  t0 = time.time()
  with open(log, "w") as f:
    f.write("$ " + " ".join(cmd) + f"\n(cwd {cwd})\n")
    f.flush()
    rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
  if rc != 0:
    raise SystemExit(f"{what} failed (exit {rc}); see {log}")
  return time.time() - t0


def run_official_seed(agent: str, dataset_id: str, seed: int, checkout: Path, work: Path,
                      steps: Dict[str, int]) -> Dict:
  """offline script -> fine-tuning script -> drift, each skipped when its marker exists."""
  offline_script, finetune_script, _, offline_alg, finetuned, _ = CHAINS[agent]
  env_name = official_env_name(dataset_id)
  env = official_env(dataset_id, checkout)
  seed_dir = work / f"seed{seed}"
  seed_dir.mkdir(parents=True, exist_ok=True)
  py = FLAGS.official_python
  off_done, ft_done, drift_file = (seed_dir / "offline.done", seed_dir / "finetune.done",
                                   seed_dir / "drift.json")
  if not off_done.exists():
    # A new offline actor invalidates this seed's fine-tuning checkpoints (its ope/align are reused).
    shutil.rmtree(checkout / "finetune" / "model" / finetuned / env_name / str(seed), ignore_errors=True)
    ft_done.unlink(missing_ok=True)
    drift_file.unlink(missing_ok=True)
    cmd = [py, offline_script, "--env", env_name, "--device", "cpu", "--seed", str(seed),
           "--max_timesteps", str(steps["pretrain_steps"]),
           "--eval_freq", str(min(steps["pretrain_eval_every"], steps["pretrain_steps"])),
           "--n_episodes", str(steps["eval_episodes"])]
    print(f"[vs_official] official {offline_script} seed {seed} ({time.strftime('%H:%M:%S')})", flush=True)
    wall = _run(cmd, checkout / "offline", env, seed_dir / "offline.log", f"official {offline_script}")
    off_done.write_text(json.dumps({"wall_s": wall, "cmd": cmd}))
  if not ft_done.exists():
    drift_file.unlink(missing_ok=True)
    cmd = [py, finetune_script, "--env", env_name, "--seed", str(seed), "--device", "cpu"]
    print(f"[vs_official] official {finetune_script} seed {seed} ({time.strftime('%H:%M:%S')})",
          flush=True)
    wall = _run(cmd, checkout / "finetune", env, seed_dir / "finetune.log", f"official {finetune_script}")
    ft_done.write_text(json.dumps({"wall_s": wall, "cmd": cmd}))
  if not drift_file.exists():
    cmd = [py, str(DRIFT_SCRIPT), "--checkout", str(checkout), "--agent", agent, "--env", env_name,
           "--seed", str(seed), "--states", str(FLAGS.drift_states), "--out", str(drift_file)]
    _run(cmd, checkout / "finetune", env, seed_dir / "drift.log", "official drift measurement")
  return collect_official_seed(agent, dataset_id, seed, checkout, seed_dir)


def collect_official_seed(agent: str, dataset_id: str, seed: int, checkout: Path, seed_dir: Path) -> Dict:
  from benchmarks.vs_official import report
  env_name = official_env_name(dataset_id)
  data_json = checkout / "finetune" / "model" / CHAINS[agent][4] / env_name / str(seed) / "data_True.json"
  if not data_json.exists():
    # refer_with_optimal_pi is True in every released YAML; fall back to whichever exists.
    found = sorted(data_json.parent.glob("data_*.json"))
    if not found:
      raise SystemExit(f"no data_*.json from the official fine-tuning under {data_json.parent}")
    data_json = found[0]
  data = json.loads(data_json.read_text())
  steps, curve = report.official_curve(data)
  log_text = (seed_dir / "finetune.log").read_text(errors="replace")
  parsed = report.parse_official_stdout(log_text)
  pi_off = parsed["pi_off"] if parsed["pi_off"] is not None else float(data["eval_returns"][0])
  drift = json.loads((seed_dir / "drift.json").read_text())
  walls = {k: json.loads((seed_dir / f"{k}.done").read_text())["wall_s"] for k in ("offline", "finetune")}
  rates = {k: report.tqdm_rates((seed_dir / f"{k}.log").read_text(errors="replace"))
           for k in ("offline", "finetune")}
  return {"seed": seed, "pi_off": pi_off, "pi_on": parsed["pi_on"], "drift_rms": drift["drift_rms"],
          "drift_max": drift["drift_max"], "curve_steps": steps, "curve": curve,
          "final": curve[-1] if curve else None, "wall_s": walls, "tqdm_rates": rates,
          "data_json": str(data_json)}


# ----------------------------------------------------------------------------- our side

def run_ours(agent: str, dataset_id: str, seeds: int, steps: Dict[str, int], work: Path) -> Dict:
  run_root = work / "runs"
  marker = work / "ours.done"
  nets = NETWORKS[agent]
  if not marker.exists():
    cmd = [sys.executable, "-m", "experiments.finetune", f"--agent={agent}", f"--dataset={dataset_id}",
           f"--seeds={seeds}", "--seed=0", f"--budget={FLAGS.budget}",
           f"--hidden_dims={nets['actor']}", f"--critic_hidden={nets['critic']}",
           f"--out_dir={run_root}", "--run_name=vs_official", "--progress=false"]
    cmd += [f"--{k}={steps[k]}" for k in STEP_KEYS if getattr(FLAGS, k) is not None]
    print(f"[vs_official] ours {agent} on {dataset_id}, {seeds} seeds vmapped "
          f"({time.strftime('%H:%M:%S')})", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "ours.log", "a") as f:
      f.write("$ " + " ".join(cmd) + "\n")
      f.flush()
      t0 = time.time()
      rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
      raise SystemExit(f"our {agent} run failed (exit {rc}); see {work / 'ours.log'}")
    marker.write_text(json.dumps({"wall_s": time.time() - t0, "cmd": cmd}))
  return collect_ours(agent, dataset_id, run_root, work)


def our_drift(align_dir: Path, n_states: int) -> Dict[str, List[float]]:
  """Per seed RMS and max |gap| of π_on − π_off on the first `n_states` normalised dataset states,
  from the alignment checkpoint (as `benchmarks/actor_drift.py`)."""
  import jax
  import numpy as np
  from o2o_jax import recipe
  from o2o_jax.agents.o2o.common import actor_drift
  from o2o_jax.data import prepared
  run = recipe.load_run(align_dir)
  agent, states, meta = run.module, run.states, run.meta
  data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"],
                            meta["reward_transform"]["scale"])
  obs = data.device.observations[:n_states]
  key = jax.random.PRNGKey(0)
  on, off = jax.vmap(lambda s: (agent.act(s, obs, key, explore=False),
                                agent.offline_act(s, obs, key)))(states)
  return {"rms": np.asarray(jax.vmap(actor_drift)(on, off), np.float64).tolist(),
          "max": np.abs(np.asarray(on - off, np.float64)).max(axis=(1, 2)).tolist()}


def collect_ours(agent: str, dataset_id: str, run_root: Path, work: Path) -> Dict:
  from benchmarks.vs_official import report
  from o2o_jax import runs
  ft = runs.run_dir_for(str(run_root), "finetune", agent, dataset_id, "vs_official")
  al = runs.run_dir_for(str(run_root), "align", agent, dataset_id, "vs_official")
  summary = json.loads((ft / "summary.json").read_text())
  drift_file = work / "drift.json"
  if not drift_file.exists():
    drift_file.write_text(json.dumps(our_drift(al, FLAGS.drift_states)))
  drift = json.loads(drift_file.read_text())
  steps, curves = report.our_seed_curves(ft / "metrics.csv")
  rows = []
  for i in range(summary["seeds"]):
    rows.append({"seed": i, "pi_off": summary["offline"][i], "pi_on": summary["aligned"][i],
                 "drift_rms": drift["rms"][i], "drift_max": drift["max"][i],
                 "curve_steps": steps[i], "curve": curves[i], "final": summary["final"][i]})
  return {"seeds": rows, "wall_s": json.loads((work / "ours.done").read_text())["wall_s"],
          "run_dirs": {"align": str(al), "finetune": str(ft)}}


# ----------------------------------------------------------------------------- main

def main(argv):
  del argv
  agent, dataset_id = FLAGS.agent, FLAGS.dataset
  overrides = {k: getattr(FLAGS, k) for k in STEP_KEYS}
  steps = step_counts(FLAGS.budget, agent, overrides)
  tag = run_tag(FLAGS.budget, overrides)
  work = Path(FLAGS.work_dir).resolve() / tag / agent / slug(dataset_id)
  out = Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  result_file = out / f"{agent}__{slug(dataset_id)}__{tag}.json"
  result = json.loads(result_file.read_text()) if result_file.exists() else {}
  result.update(agent=agent, dataset=dataset_id, tag=tag, budget=FLAGS.budget, steps=steps,
                networks=NETWORKS[agent], official_dir=str(Path(FLAGS.official_dir).resolve()))
  print(f"[vs_official] {agent} on {dataset_id}, tag {tag}: {json.dumps(steps)}; work dir {work}",
        flush=True)

  n_official = FLAGS.official_seeds or FLAGS.seeds
  checkout = work / "official" / "checkout"
  if "official" in FLAGS.sides:
    prepare_checkout(Path(FLAGS.official_dir).resolve(), checkout, agent, official_env_name(dataset_id),
                     steps)
    # Seeds already in the results file are kept (a later session's checkout has no work dir); the
    # file is rewritten after each seed, so a finished seed survives the session that ran it.
    have = {row["seed"]: row for row in result.get("official", {}).get("seeds", [])}
    for s in range(n_official):
      if s not in have:
        have[s] = run_official_seed(agent, dataset_id, s, checkout, work / "official", steps)
        result["official"] = {"seeds": [have[k] for k in sorted(have)]}
        result_file.write_text(json.dumps(result, indent=1))
  elif (work / "official").exists():
    done = [s for s in range(n_official) if (work / "official" / f"seed{s}" / "drift.json").exists()]
    if done:
      have = {row["seed"]: row for row in result.get("official", {}).get("seeds", [])}
      have.update({s: collect_official_seed(agent, dataset_id, s, checkout, work / "official" / f"seed{s}")
                   for s in done})
      result["official"] = {"seeds": [have[k] for k in sorted(have)]}
  if "ours" in FLAGS.sides:
    result["ours"] = run_ours(agent, dataset_id, FLAGS.seeds, steps, work / "ours")
  elif (work / "ours" / "ours.done").exists():
    result["ours"] = collect_ours(agent, dataset_id, work / "ours" / "runs", work / "ours")
  wall = {}
  if result.get("official"):
    for k in ("offline", "finetune"):
      wall[f"official {k} (all seeds)"] = sum(s["wall_s"][k] for s in result["official"]["seeds"])
  if result.get("ours"):
    wall["ours (all phases, all seeds)"] = result["ours"]["wall_s"]
  result["wall_s"] = wall
  result["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
  result_file.write_text(json.dumps(result, indent=1))
  print(f"[vs_official] results -> {result_file}", flush=True)
  if FLAGS.report:
    from benchmarks.vs_official import report
    report.write(out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
