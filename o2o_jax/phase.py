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

The helpers (`writer_and_checkpointer`, `snapshots`, `plot`, `summary_line`) serve the online phases
too.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np

from o2o_jax import compile_time, distributed, envs, loops, resume, runs
from o2o_jax import logging as log_lib
from o2o_jax.checkpoints import Checkpointer
from o2o_jax.types import Transition

if TYPE_CHECKING:
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


def prepare(spec: OfflinePhase, log=print):
  """(run_dir, done): the phase's run directory with its config.json written or checked; `done` if
  it holds a finished run of the same config (logged as reused)."""
  run_dir = runs.run_dir_for(spec.out_dir, spec.phase, spec.agent, spec.dataset_id, spec.run_name)
  resumed = runs.prepare_run_dir(run_dir, dict(spec.config), restart=spec.restart)
  if resumed and runs.finished(run_dir, spec.loop.num_steps):
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
    evaluator = envs.Evaluator(t.env.make_env, local, spec.loop.eval_episodes)
    policy = loops.make_eval_policy(t.learner.act, t.env.obs_mean, t.env.obs_std)
    on_eval(0, t.states, evaluator.run(lambda o: policy(t.states, o)))
    evaluator.close()
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
