"""The skeleton every offline-kind phase shares (issue #20): a phase that runs `loops.run_offline`
over the dataset, an offline algorithm's pre-training or a fit with a frozen actor (re-evaluation,
alignment, O2PPO's V, ACA's Z). What differs per phase is data (`OfflinePhase`, `Training`), not
branches here:

  spec = OfflinePhase(phase="align", agent="o2td3", dataset_id=..., run_name=..., config={...},
                      loop=loops.OfflineConfig(...), score_key="online_score", ...)
  run_dir = run_offline_phase(spec, build, log)     # build(run_dir) -> Training, only if it must run

`run_offline_phase`
  (a) resolves `<out_dir>/<phase>/<agent>/<dataset>/<run_name>` and writes or checks config.json
      (`runs.prepare_run_dir`: a different run there is a one-line error);
  (b) returns a finished run of the same config as it is ("[<phase>] reusing the finished run ...");
  (c) calls `build(run_dir)` for the states, data and checkpoint metadata, then opens the metrics
      writer and the result checkpointer for this process's seeds and the resumable snapshots;
  (d) runs `loops.run_offline`, whose `on_eval` saves the result checkpoint with the metadata, the
      step and the per-seed normalised score under `score_key` (the states passed through
      `spec.finish` first at the last step, e.g. align's `finish_alignment`). A 0-step phase (an
      ablation) evaluates the initial states once and saves them at step 0;
  (e) closes everything, discards the snapshots, plots `plot_keys` into curves.png, logs
      `spec.summary(final per-seed scores, timing)` and returns the run directory.

Every off-policy online phase (O2TD3/O2SAC, O3F, ACA, SAMG fine-tuning) shares the online skeleton
the same way: `run_online_phase(OnlinePhase(...), build, log)` with `build(run_dir) -> OnlineTraining`
resolves the run directory, reuses a finished run (printing its summary.txt), runs `loops.run_online`
(`train_online`), saves the final checkpoint, plots and writes summary.{json,txt} (`write_summary`).
An on-policy online phase (O2PPO's PPO fine-tuning) is the same skeleton around `onpolicy.run_onpolicy`:
`run_online_phase(OnPolicyPhase(...), build, log)` with `build(run_dir) -> OnPolicyTraining`. Both
online loops share one evaluation hook, step-0 row, final checkpoint, plot and summary (`_online_run`).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from o2o_jax import compile_time, distributed, loops, resume, runs
from o2o_jax import logging as log_lib
from o2o_jax.checkpoints import Checkpointer
from o2o_jax.types import Transition

if TYPE_CHECKING:
  from o2o_jax import onpolicy
  from o2o_jax.data import prepared

# Steps (offline updates or online env steps) between resumable snapshots of a running phase.
CHECKPOINT_EVERY = 10_000


def summary_line(name: str, scores) -> str:
  """`name`, the per-seed scores, their mean and std on one line."""
  scores = np.asarray(scores, np.float64)
  return (f"{name:<24s} " + " ".join(f"{x:7.1f}" for x in scores)
          + f"   mean {scores.mean():6.1f} +- {scores.std():5.1f}")


def plot(run_dir: Path, keys: Sequence[str], title: str) -> None:
  """curves.png from the run's metrics.csv (by the primary process, which wrote it)."""
  if distributed.is_primary():
    log_lib.plot_curves(run_dir / "metrics.csv", run_dir / "curves.png", list(keys), title=title)


def writer_and_checkpointer(run_dir: Path, local_seeds: int, keep_rows: bool = True):
  """The metrics writer and the result checkpointer of a phase. `keep_rows`: the loop resumes and
  truncates metrics.csv itself (to the snapshot's step); otherwise the phase starts from scratch.
  Both take this process's `local_seeds` and, in a multi-process run, gather every process's seeds
  into the primary's files."""
  writer = log_lib.MetricsWriter(run_dir) if distributed.is_primary() else None
  if writer is not None and not keep_rows:
    writer.truncate_after(0)
  return (distributed.GatheredWriter(writer, local_seeds),
          distributed.GatheredCheckpointer(Checkpointer(run_dir / "checkpoints"), local_seeds))


def snapshots(run_dir: Path, checkpoint_every: Optional[int]) -> resume.Snapshots:
  """The resumable snapshots of a phase (`checkpoint_every` None: the default interval)."""
  return resume.Snapshots(run_dir / "progress",
                          CHECKPOINT_EVERY if checkpoint_every is None else checkpoint_every)


@dataclasses.dataclass(frozen=True)
class OfflinePhase:
  """What an offline-kind phase is, known before its run directory is touched.

  `config` is the run's config.json (it must hold 'seeds' and 'seed': the seeds trained, vmapped,
  and the base seed of the loop's PRNG); `loop.num_steps` is the phase's length (0: evaluate the
  initial states once, the ablations). `phase` names the run directory's first level, the log
  prefix, the snapshots and the fault-injection point; `agent` the second level. `score_key`: the
  checkpoint metadata key of the per-seed normalised score. `finish(states) -> states` (seed-batched)
  runs on the final states before they are saved. `summary(scores, timing) -> line`: the line logged
  at the end (gathered per-seed final scores, e.g. "12s (3 compilations, 4s)"); None logs nothing."""
  phase: str
  agent: str
  dataset_id: str
  run_name: str
  config: Mapping[str, Any]
  loop: loops.OfflineConfig
  score_key: str = "eval_score"
  desc: Optional[str] = None                 # progress bar label (default: the phase)
  finish: Optional[Callable] = None
  summary: Optional[Callable[[np.ndarray, str], str]] = None
  plot_keys: Sequence[str] = ()              # curves.png (none: no plot)
  plot_title: str = ""
  out_dir: str = "runs"
  restart: bool = False
  progress: bool = True
  checkpoint_every: Optional[int] = CHECKPOINT_EVERY


@dataclasses.dataclass(frozen=True)
class Training:
  """What the phase trains, built once it must run: `learner` (update, act: the evaluated policy),
  the seed-stacked `states` of this process's seeds, the `dataset` it trains on (on the device),
  `env` (a `prepared.Data`: make_env, observation statistics, normalized_score) and the result
  checkpoint's `metadata` (the step and the score are added at each save)."""
  learner: loops.Learner
  states: Any
  dataset: Transition
  env: "prepared.Data"
  metadata: Mapping[str, Any]


def prepare(spec, log=print):
  """(run_dir, done): the phase's (`OfflinePhase`, `OnlinePhase` or `OnPolicyPhase`) run directory
  with its config.json written or checked; `done` if it holds a finished run of the same config
  (logged as reused)."""
  online = isinstance(spec, (OnlinePhase, OnPolicyPhase))
  steps = spec.loop.total_steps if online else spec.loop.num_steps
  run_dir = runs.run_dir_for(spec.out_dir, spec.phase, spec.agent, spec.dataset_id, spec.run_name)
  resumed = runs.prepare_run_dir(run_dir, dict(spec.config), restart=spec.restart)
  if resumed and runs.finished(run_dir, steps):
    log(f"[{spec.phase}] reusing the finished run {run_dir}")
    return run_dir, True
  return run_dir, False


def run_offline_phase(spec: OfflinePhase, build: Callable[[Path], Training], log=print) -> Path:
  """Runs (or reuses) the offline-kind phase `spec`; `build(run_dir)` makes its `Training` only when
  the phase must run (it may log the phase's start line). Returns the run directory."""
  run_dir, done = prepare(spec, log)
  if done:
    return run_dir
  t = build(run_dir)
  steps, local = spec.loop.num_steps, distributed.local_seed_count(spec.config["seeds"])
  writer, ckpt = writer_and_checkpointer(run_dir, local, keep_rows=steps > 0)
  snaps = snapshots(run_dir, spec.checkpoint_every)
  t0, c0 = time.time(), compile_time.snapshot()
  last = {}

  def on_eval(step, s, returns):
    score = t.env.normalized_score(returns).mean(1)
    last["score"] = score
    if spec.finish is not None and step >= steps:
      s = spec.finish(s)
    ckpt.save(step, s, {**t.metadata, "step": step, spec.score_key: score})
    return s

  if steps == 0:
    evaluation = loops.Evaluation(t.learner.act, t.env.make_env, local, spec.loop.eval_episodes,
                                  t.env.obs_mean, t.env.obs_std)
    on_eval(0, t.states, evaluation.run(t.states)[0])
    evaluation.close()
  else:
    loops.run_offline(t.learner, t.states, t.dataset, make_env=t.env.make_env, num_seeds=local,
                      seed=spec.config["seed"], config=spec.loop, obs_mean=t.env.obs_mean,
                      obs_std=t.env.obs_std, metrics_writer=writer,
                      normalized_score=t.env.normalized_score, on_eval=on_eval, snapshots=snaps,
                      phase=spec.phase, progress=spec.progress and distributed.is_primary(),
                      desc=spec.desc or spec.phase, log=log)
  writer.close()
  ckpt.close()
  snaps.discard()
  if spec.plot_keys:
    plot(run_dir, spec.plot_keys, spec.plot_title)
  if spec.summary is not None:
    timing = f"{time.time() - t0:.0f}s ({(compile_time.snapshot() - c0).describe()})"
    log(spec.summary(distributed.gather_seeds(last["score"]), timing))
  return run_dir


# ----------------------------------------------------------------------------- online phases

@dataclasses.dataclass(frozen=True)
class OnlinePhase:
  """What an off-policy online phase is, known before its run directory is touched: `config` is the
  run's config.json ('seeds', 'seed': the seeds trained and the loop's base seed), `loop` the online
  loop (`online_loop`), `agent` the run directory's second level, the summary's agent and the
  progress label ("finetune <agent>"); `plot_keys` go into curves.png."""
  agent: str
  dataset_id: str
  run_name: str
  config: Mapping[str, Any]
  loop: loops.OnlineConfig
  plot_keys: Sequence[str] = ("eval/normalized_score",)
  out_dir: str = "runs"
  restart: bool = False
  progress: bool = True
  checkpoint_every: Optional[int] = CHECKPOINT_EVERY
  phase: str = "finetune"


@dataclasses.dataclass(frozen=True)
class OnlineTraining:
  """What the online phase trains, built once it must run: `learner`, this process's seed-stacked
  `states`, `data` (a `prepared.Data`: env, statistics, offline rows, reward transform), the final
  checkpoint's `metadata`, `start_scores` (per seed, e.g. {"offline": pi_off's}; the last one is step
  0 of the curve), `on_eval(step, states, per-seed score) -> states` and `prefill` (buffer rows with
  scaled rewards, r * scale)."""
  learner: loops.Learner
  states: Any
  data: "prepared.Data"
  metadata: Mapping[str, Any]
  start_scores: Mapping[str, np.ndarray]
  on_eval: Optional[Callable] = None
  prefill: Optional[Transition] = None


def online_loop(total_steps: int, start_steps: int, eval_every: int, eval_episodes: int,
                **fields) -> loops.OnlineConfig:
  """The online loop of a phase: warm-up with the policy's actions, a buffer holding every online
  step and a log row every min(1000, eval_every) steps unless `fields` say otherwise."""
  fields = {"random_warmup": False, "log_every": min(1000, eval_every), **fields,
            "buffer_size": fields.get("buffer_size") or total_steps}
  return loops.OnlineConfig(total_steps=total_steps, start_steps=start_steps, eval_every=eval_every,
                            eval_episodes=eval_episodes, **fields)


def run_online_phase(spec, build: Callable[[Path], Any], log=print) -> Path:
  """Runs (or reuses, printing its summary.txt) the online phase `spec`: an `OnlinePhase` whose
  `build(run_dir)` makes its `OnlineTraining`, or an `OnPolicyPhase` whose `build` makes its
  `OnPolicyTraining`, only when the phase must run. Returns the run directory."""
  run_dir, done = prepare(spec, log)
  if done:
    summary = run_dir / "summary.txt"
    print(summary.read_text() if summary.exists() else "")
    return run_dir
  train = train_onpolicy if isinstance(spec, OnPolicyPhase) else train_online
  train(spec, run_dir, build(run_dir), log)
  return run_dir


def train_online(spec: OnlinePhase, run_dir: Path, t: OnlineTraining, log=print) -> Dict[str, Any]:
  """`loops.run_online` on the dataset's env with evaluation every `spec.loop.eval_every` steps, the
  final checkpoint, curves.png and summary.{json,txt}; returns the summary. Online rewards are stored
  with the offline data's reward scale (`data.reward_scale`); a reward shift (`data.reward_shift`,
  e.g. AntMaze's 10r - 5) is not stored: every buffer holds r * scale and the shift is added to each
  batch inside the update (`prepared.shift_rewards`), so offline and online rows get the same
  transform. Resumable: snapshots every `spec.checkpoint_every` env steps under <run_dir>/progress."""
  from o2o_jax.data import prepared
  cfg, learner, data = spec.loop, t.learner, t.data
  if data.reward_shift:
    learner = loops.Learner(prepared.shift_rewards(learner.update, data.reward_shift), learner.act,
                            getattr(learner, "sampler", None))
    data = data.without_shift()
  # The offline rows go to the device step when a batch mixes them in (or the agent's own sampler
  # draws from them, Off2On's).
  uses_offline = (cfg.offline_fraction > 0 or cfg.offline_union
                  or getattr(learner, "sampler", None) is not None)

  def loop(local, writer, snaps, on_eval):
    return loops.run_online(
        learner, t.states, make_env=data.make_env, num_seeds=local, seed=spec.config["seed"],
        config=cfg, offline=data.device if uses_offline else None,
        obs_mean=data.obs_mean, obs_std=data.obs_std, metrics_writer=writer,
        callbacks=loops.OnlineCallbacks(on_eval=on_eval), normalized_score=data.normalized_score,
        progress=spec.progress and distributed.is_primary(), desc=f"{spec.phase} {spec.agent}",
        prefill=t.prefill, snapshots=snaps, phase=spec.phase, reward_scale=data.reward_scale,
        log=log)[2]

  return _online_run(spec, run_dir, t, data, loop, spec.agent,
                     f"{spec.agent} fine-tuning on {spec.dataset_id}")


def _online_run(spec, run_dir: Path, t, data: "prepared.Data", loop: Callable, label: str, title: str,
                final_meta: Callable[[], Mapping[str, Any]] = dict) -> Dict[str, Any]:
  """The skeleton of both online loops: the metrics writer, result checkpointer and snapshots; step 0
  of the curve (unless resuming); `loop(local seeds, writer, snapshots, on_eval) -> eval history`,
  whose `on_eval` scores the returns, calls `t.on_eval(step, states, score) -> states` and saves the
  final checkpoint (`t.metadata`, the step, per-seed 'final_score', `final_meta()`); then
  curves.png (`title`) and summary.{json,txt} (`label`: the summary's agent)."""
  seeds, steps = spec.config["seeds"], spec.loop.total_steps
  local = distributed.local_seed_count(seeds)
  writer, ckpt = writer_and_checkpointer(run_dir, local)
  snaps = snapshots(run_dir, spec.checkpoint_every)

  def on_eval(step, s, returns):
    score = data.normalized_score(returns).mean(1)
    if t.on_eval is not None:
      s = t.on_eval(step, s, score)
    if step >= steps:
      ckpt.save(step, s, {**t.metadata, "phase": spec.phase, "step": step, "final_score": score,
                          **final_meta()})
    return s

  t0 = time.time()
  if snaps.latest_step() is None:
    # Step 0 of the curve: the policy the online phase starts from (the last of `start_scores`).
    writer.write(0, {"eval/normalized_score": list(t.start_scores.values())[-1],
                     **{f"eval/{k}_score": v for k, v in t.start_scores.items()}})
  history = loop(local, writer, snaps, on_eval)
  writer.close()
  ckpt.close()
  snaps.discard()
  # Every process's seeds (collectives, in the same order everywhere); the primary writes the files.
  scores = [(h["step"], distributed.gather_seeds(data.normalized_score(h["returns"]).mean(1)))
            for h in history]
  start = {k: distributed.gather_seeds(np.asarray(v)) for k, v in t.start_scores.items()}
  plot(run_dir, spec.plot_keys, title)
  return write_summary(run_dir, dataset_id=spec.dataset_id, agent_name=label, seeds=seeds,
                       start_scores=start, scores=scores, wall_time_s=time.time() - t0)


# ----------------------------------------------------------------------------- on-policy phases

@dataclasses.dataclass(frozen=True)
class OnPolicyPhase(OnlinePhase):
  """What an on-policy online phase is (O2PPO's PPO fine-tuning), known before its run directory is
  touched: as `OnlinePhase`, with `loop` the on-policy loop (`onpolicy.OnPolicyConfig`). `label`:
  the summary's agent and the progress label ("<phase> <label>"; default `agent`, which names the
  run directory), `plot_title` curves.png's (default "<label> fine-tuning on <dataset>")."""
  loop: "onpolicy.OnPolicyConfig"
  label: Optional[str] = None
  plot_title: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class OnPolicyTraining:
  """What the on-policy phase trains, built once it must run: `agent` (explore, update, act: see
  `onpolicy`), this process's seed-stacked `states`, `data` (a `prepared.Data`: env, statistics),
  the final checkpoint's `metadata`, `start_scores` (as `OnlineTraining`'s), `on_eval(step, states,
  per-seed score) -> states` and `reward_fn` (the rewards the update sees, e.g. a per-seed
  `onpolicy.RewardScaler`; one with `state(running)` has every seed's state saved in the final
  checkpoint's metadata as reward_scaler_<key>)."""
  agent: Any
  states: Any
  data: "prepared.Data"
  metadata: Mapping[str, Any]
  start_scores: Mapping[str, np.ndarray]
  on_eval: Optional[Callable] = None
  reward_fn: Optional[Callable] = None


def train_onpolicy(spec: OnPolicyPhase, run_dir: Path, t: OnPolicyTraining, log=print) -> Dict[str, Any]:
  """`onpolicy.run_onpolicy` on the dataset's env with evaluation every `spec.loop.eval_every` env
  steps, the final checkpoint, curves.png and summary.{json,txt}; returns the summary. Resumable:
  snapshots every `spec.checkpoint_every` env steps (at rollout boundaries) under <run_dir>/progress."""
  from o2o_jax import onpolicy
  label = spec.label or spec.agent

  def loop(local, writer, snaps, on_eval):
    return onpolicy.run_onpolicy(
        t.agent, t.states, make_env=t.data.make_env, num_seeds=local, seed=spec.config["seed"],
        config=spec.loop, obs_mean=t.data.obs_mean, obs_std=t.data.obs_std, metrics_writer=writer,
        on_eval=on_eval, normalized_score=t.data.normalized_score, reward_fn=t.reward_fn,
        progress=spec.progress and distributed.is_primary(), desc=f"{spec.phase} {label}",
        snapshots=snaps, phase=spec.phase, log=log)[1]

  def final_meta():     # with every seed's reward-scaler state (per-seed arrays, gathered)
    if not hasattr(t.reward_fn, "state"):
      return {}
    return {f"reward_scaler_{k}": np.asarray(v) for k, v in t.reward_fn.state(True).items()}

  return _online_run(spec, run_dir, t, t.data, loop, label,
                     spec.plot_title or f"{label} fine-tuning on {spec.dataset_id}", final_meta)


# Labels of the starting scores in the summary (keys of `start_scores`).
START_LABELS = {"offline": "pi_off (offline)", "aligned": "pi_on (after alignment)"}


def write_summary(run_dir: Path, *, dataset_id: str, agent_name: str, seeds: int,
                  start_scores: Mapping[str, np.ndarray], scores, wall_time_s: float) -> Dict[str, Any]:
  """summary.json / summary.txt of an online phase (printed too). `scores`: [(step, per-seed)]."""
  all_scores = np.stack([np.asarray(sc) for _, sc in scores])
  summary = {"dataset": dataset_id, "agent": agent_name, "seeds": seeds,
             **{k: np.asarray(v).tolist() for k, v in start_scores.items()},
             "best": all_scores.max(0).tolist(), "final": all_scores[-1].tolist(),
             "curve_steps": [int(st) for st, _ in scores],
             "curve_mean": [float(np.mean(sc)) for _, sc in scores], "wall_time_s": wall_time_s}
  if distributed.is_primary():
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
  lines = [f"normalised scores on {dataset_id} ({seeds} seeds; per seed, mean +- std)"]
  lines += [summary_line(START_LABELS.get(k, k), v) for k, v in start_scores.items()]
  lines += [summary_line("best fine-tuned", summary["best"]),
            summary_line("final fine-tuned", summary["final"])]
  if distributed.is_primary():
    (run_dir / "summary.txt").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  return summary
