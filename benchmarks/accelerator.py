"""The accelerator benchmark (issue #23): every GPU number the targets need, in one call that fits a lease.

  python -m benchmarks.accelerator --out=DIR                # sizes by device: 'gpu' on a GPU, else 'cpu'
  python -m benchmarks.accelerator --out=DIR --tiny         # CI: the same code paths, tiny sizes, seconds
  python -m benchmarks.accelerator --out=DIR --items=online --host_baseline=/tmp/base   # before/after
  bash benchmarks/accelerator.sh "$OUT"                     # on the GPU machine (see that script)

Items (each written to DIR/accelerator.{json,md} as soon as it is done, so a lease that ends early
still leaves every finished item; `--budget_s` skips what no longer fits and says so):
  1 td3bc     TD3+BC's paper-size update (256x256, batch 256) with 1/5/16/64 seeds vmapped (scan chunks,
              `loops.run_offline`'s program): seed-updates/s and 5 seeds x 1M against 430 s.
  2 updates   the same for CQL (3x256, 10 random + 10 + 10 policy actions), O2TD3's and O2SAC's
              fine-tuning steps (O2SAC: UTD 10 = 10 of these per env step), and at 5 seeds the
              re-evaluation and alignment steps item 4 projects with.
  3 online    `loops.run_online` with 5 seeds, O2TD3 (UTD 1) and O2SAC (UTD 10): env-steps/s, the
              update-only time per env step, and the host share, from the same loop with the device
              work mocked to zero (an agent whose update and act are trivial jitted functions on a state
              of as many leaves). MuJoCo's own step cost alone (the floor), and how the envs are spread
              over the CPU cores: training and evaluation steps with 1 thread and with all of them.
  4 pipeline  one end-to-end 5-seed O2TD3 run (o2o_jax.recipes.ocr_cft: pretrain -> reevaluate -> align ->
              finetune) at reduced step counts with the paper's intervals, timed phase by phase
              (compile, evaluation, checkpoint saves, the rest); from it and items 1-3, the paper
              pipeline's wall time per phase for O2TD3 (target 20 min) and O2SAC (target 1 h).
  5 compile   compile time of every program built above.

Rates are timed as benchmarks/throughput.py times them: every configuration of a row in turn,
`rounds` times over (`timed_rounds`), medians over rounds, ratios within a round.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from benchmarks import throughput as tp

ITEMS = ("td3bc", "updates", "online", "pipeline", "compile")
ITEM_TITLES = {"td3bc": "1. TD3+BC update, seeds vmapped", "updates": "2. CQL, O2TD3 and O2SAC steps",
               "online": "3. The online loop, 5 seeds", "pipeline": "4. End to end, and the paper pipeline",
               "compile": "5. Compile times"}
TARGETS = {"td3bc_5x1M_s": 430.0, "o2td3_pipeline_s": 20 * 60.0, "o2sac_pipeline_s": 3600.0}
DATASET = "o2o/hopper/medium-v0"           # the embedded dataset (item 4); items 1-3 only take its presets
PIPELINE_SEEDS = 5
# The paper pipeline (ocr_cft.BUDGETS["paper"]): steps, evaluations (10 episodes of <= 1000 steps), and
# checkpoint saves: a checkpoint per evaluation (pretrain, reevaluate, align; finetune: the final one)
# plus a resumable snapshot every 10k steps (--checkpoint_every's default), none at the end.
PAPER = {"pretrain": {"steps": 1_000_000, "evals": 100, "saves": 100 + 99},
         "reevaluate": {"steps": 500_000, "evals": 1, "saves": 1 + 49},
         "align": {"steps": 500_000, "evals": 10, "saves": 10 + 49},
         "finetune": {"steps": 100_000, "evals": 100, "saves": 1 + 9}}
EVAL_STEPS = 1000                          # an evaluation episode's length with a trained policy (cap)


@dataclasses.dataclass(frozen=True)
class Sizes:
  name: str
  hidden: int                   # networks not at their own size (tiny only)
  own_dims: bool                # every network at its agent's own (paper) size
  batch: int
  seeds: tuple                  # seed counts of items 1-2
  chunk: int                    # updates per scan call
  seconds: float                # timing per configuration, all rounds together
  rounds: int
  dataset_size: int
  online_seconds: float         # item 3: target length of a timed online run
  online_steps: tuple           # item 3: (min, max) timed env steps
  online_warmup: int
  host_steps: int               # item 3: timed env steps of the mocked loop
  eval_envs_steps: int          # item 3: evaluation steps timed per thread setting
  pipeline: Dict[str, int]      # item 4's reduced run
  row_need_s: float             # a row of items 1-2 is skipped with less time left than this
  phase_rows: tuple = ("o2td3", "o2sac")   # item 2's re-evaluation and alignment rows
  host_warmup: int = 60         # item 3: untimed env steps of the mocked loop (programs compiled)
  eval_episodes: int = 10       # item 3: the evaluation step is timed on seeds x this many envs
  host_rounds: int = 9          # item 3: interleaved rounds of the host-side measurements


SIZES = {
    "gpu": Sizes("gpu", 256, True, 256, (1, 5, 16, 64), chunk=500, seconds=1.5, rounds=3,
                 dataset_size=1_000_000, online_seconds=4.0, online_steps=(300, 3000), online_warmup=100,
                 host_steps=500, eval_envs_steps=100,
                 pipeline=dict(pretrain=20_000, pretrain_eval_every=10_000, reevaluate=10_000,
                               align=10_000, align_eval_every=50_000, online=3_000, warmup=1_000,
                               eval_every=1_000, eval_episodes=10, checkpoint_every=10_000),
                 row_need_s=25.0),
    "cpu": Sizes("cpu", 256, True, 256, (1, 5, 16), chunk=2, seconds=2.4, rounds=3,
                 dataset_size=100_000, online_seconds=4.0, online_steps=(10, 300), online_warmup=6,
                 host_steps=300, eval_envs_steps=50,
                 pipeline=dict(pretrain=300, pretrain_eval_every=150, reevaluate=100, align=100,
                               align_eval_every=100, online=40, warmup=10, eval_every=20,
                               eval_episodes=10, checkpoint_every=100),
                 row_need_s=40.0),
    "tiny": Sizes("tiny", 8, False, 8, (2,), chunk=4, seconds=0.04, rounds=2,
                  dataset_size=256, online_seconds=0.2, online_steps=(8, 16), online_warmup=4,
                  host_steps=40, eval_envs_steps=10,
                  pipeline=dict(pretrain=8, pretrain_eval_every=4, reevaluate=4, align=4,
                                align_eval_every=4, online=8, warmup=4, eval_every=4, eval_episodes=1,
                                checkpoint_every=4, hidden=8),
                  row_need_s=0.0, phase_rows=(), host_warmup=10, eval_episodes=2, host_rounds=2),
}


def settings(sz: Sizes, utd: int = 1) -> tp.Settings:
  return tp.Settings(hidden=sz.hidden, batch_size=sz.batch, utd=utd, dataset=DATASET,
                     dataset_size=sz.dataset_size, own_dims=sz.own_dims)


# ----------------------------------------------------------------------------- the run and its budget

class Run:
  """The results so far, the time budget, and the writer (after every item)."""

  def __init__(self, out: Path, sz: Sizes, budget_s: float, log: Callable[[str], None] = print):
    import jax
    self.out, self.sz, self.budget_s, self.log = out, sz, budget_s, log
    self.t0 = time.perf_counter()
    self.programs: Dict[Any, Any] = {}     # compiled update programs, per (agent, phase, utd)
    self.interrupted = False
    device = jax.devices()[0]
    self.results: Dict[str, Any] = {
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
        "platform": device.platform, "devices": len(jax.devices()), "jax": jax.__version__,
        "python": platform.python_version(), "host": platform.processor() or platform.machine(),
        "cpus": _cpus(), "sizes": dataclasses.asdict(sz), "budget_s": budget_s,
        "targets": TARGETS, "items": {}, "compile": [], "notes": []}
    try:
      import mujoco
      self.results["mujoco"] = mujoco.__version__
    except ImportError:
      pass

  def elapsed(self) -> float:
    return time.perf_counter() - self.t0

  def left(self) -> float:
    return self.budget_s - self.elapsed()

  def compiled(self, program: str, seconds: float, item: str) -> None:
    self.results["compile"].append({"program": program, "seconds": float(seconds), "item": item})

  def skip_note(self, what: str, need: float) -> str:
    return (f"skipped: {self.left():.0f} s of the {self.budget_s:.0f} s budget left at "
            f"{self.elapsed():.0f} s, {what} needs about {need:.0f} s")

  def item(self, key: str, fn: Callable[["Run"], Dict[str, Any]], need_s: float) -> None:
    """Runs an item (or an item's second pass, which extends the first's results) unless the budget
    left is below `need_s`; writes the results either way."""
    before = self.results["items"].get(key)
    if self.left() < need_s:
      note = self.skip_note(f"item {key}", need_s)
      if before is None:
        self.results["items"][key] = {"skipped": note}
      else:
        before["skipped_pass"] = note
      self.log(f"[{key}] {note}")
    else:
      self.log(f"[{key}] {ITEM_TITLES[key]}{' (all seed counts)' if before else ''} "
               f"(at {self.elapsed():.0f} s)")
      t0 = time.perf_counter()
      try:
        result = fn(self)
      except (KeyboardInterrupt, _interrupted()):   # the caller's time limit: keep what is written
        note = f"interrupted at {self.elapsed():.0f} s (the time limit)"
        if before is None:
          self.results["items"][key] = {"skipped": note}
        else:
          before["skipped_pass"] = note
        self.results["notes"].append(f"item {key} {note}; the items after it did not run")
        self.interrupted = True
        self.write()
        return
      except Exception:   # one failing item must not lose the others
        traceback.print_exc()
        result = ({**before, "error_pass": traceback.format_exc()} if before
                  else {"error": traceback.format_exc()})
      result["wall_s"] = time.perf_counter() - t0 + (before or {}).get("wall_s", 0.0)
      self.results["items"][key] = result
    self.write()

  def write(self) -> None:
    self.results["wall_s"] = self.elapsed()
    self.out.mkdir(parents=True, exist_ok=True)
    (self.out / "accelerator.json").write_text(json.dumps(_jsonable(self.results), indent=1))
    (self.out / "accelerator.md").write_text(markdown(self.results))


def _interrupted():
  from o2o_jax.errors import Interrupted      # what a phase raises after SIGINT/SIGTERM
  return Interrupted


def _cpus() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return x


# ----------------------------------------------------------------------------- items 1-2: update rates

def update_row(run: Run, agent: str, phase: str, seeds: Sequence[int], utd: int = 1,
               item: str = "updates") -> Dict[str, Any]:
  """Seed-updates/s of one (agent, phase) step as `loops.run_offline` runs it (a seed-vmapped scan
  of `chunk` updates on batches sampled from a shared dataset), every seed count timed in turn.
  Programs compiled for an earlier call on the same row are reused (`run.programs`), so a second
  pass with more seed counts re-times the first pass's counts in the same rounds without compiling
  them again."""
  import jax
  from o2o_jax import loops
  from o2o_jax.types import seed_keys
  sz = run.sz
  s = settings(sz, utd)
  cached = run.programs.setdefault((agent, phase, utd), {})
  out: Dict[str, Any] = {"agent": agent, "phase": phase, "utd": utd, "seeds": list(seeds),
                         "chunk": sz.chunk, "compile_s": {}}
  new = [n for n in seeds if n not in cached]
  if new:
    spec = tp.build(tp.select([agent], [phase])[0], s)
    t0 = time.perf_counter()
    states = tp.init_states(spec, max(new))
    jax.block_until_ready(states)
    out["init_s"] = time.perf_counter() - t0
    data = tp.transitions(s.dataset_size, jax.random.PRNGKey(2))
    batch = jax.tree_util.tree_map(lambda x: x[:s.batch_size], data)
    one = jax.tree_util.tree_map(lambda x: x[0], states)
    cost = tp.jaxpr_cost(jax.make_jaxpr(spec.update)(one, batch, jax.random.PRNGKey(1)).jaxpr)
    run.programs[(agent, phase, utd, "gflop")] = cost["flops"] / 1e9
    fn = tp.chunk_fn(spec, s, sz.chunk)
    for n in new:
      h = [loops.unalias(jax.tree_util.tree_map(lambda x: x[:n], states))]
      keys = seed_keys(1, n)
      t0 = time.perf_counter()
      compiled = fn.lower(h[0], keys, data).compile()
      seconds = time.perf_counter() - t0
      run.compiled(f"{agent}/{phase} scan chunk, {n} seed(s)", seconds, item)

      def call(h=h, keys=keys, compiled=compiled, data=data):
        h[0], m = compiled(h[0], keys, data)
        jax.block_until_ready(m)
      cached[n] = (call, seconds)
    del states
  out["gflop_per_update"] = run.programs[(agent, phase, utd, "gflop")]
  out["compile_s"] = {n: cached[n][1] for n in seeds}
  rates = tp.timed_rounds({n: cached[n][0] for n in seeds}, sz.seconds / sz.rounds, sz.rounds)
  seed_rates = {n: np.asarray(rates[n]) * sz.chunk * n for n in seeds}
  out["seed_updates_per_s"] = {n: float(np.median(r)) for n, r in seed_rates.items()}
  out["rounds"] = {n: [float(x) for x in r] for n, r in seed_rates.items()}
  out["vmap_ratio"] = {n: tp.median_ratio(r, seed_rates[seeds[0]]) for n, r in seed_rates.items()}
  out["gflops"] = {n: out["gflop_per_update"] * v for n, v in out["seed_updates_per_s"].items()}
  if PIPELINE_SEEDS in out["seed_updates_per_s"]:
    per_program = out["seed_updates_per_s"][PIPELINE_SEEDS] / PIPELINE_SEEDS   # updates/s, 5 seeds
    out["updates_per_s_5_seeds"] = per_program
    out["s_per_1M_updates_5_seeds"] = 1e6 / per_program
    if utd > 1:
      out["env_steps_per_s_5_seeds"] = per_program / utd
  run.log(f"  {agent}/{phase}: " + ", ".join(
      f"{n} seed(s) {out['seed_updates_per_s'][n]:.0f} seed-upd/s (x{out['vmap_ratio'][n]:.2f}, "
      f"compile {out['compile_s'][n]:.1f} s)" for n in seeds))
  return out


def rows(run: Run, specs, item: str, previous: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """Measures (agent, phase, seeds, utd) rows in order, skipping those the budget no longer fits
  (a row measured by an earlier pass then keeps that pass's numbers, and says so)."""
  out = dict(previous or {})
  for agent, phase, seeds, utd in specs:
    name = f"{agent}/{phase}"
    need = run.sz.row_need_s * (len(seeds) / 4 + 0.5)
    if "seed_updates_per_s" in out.get(name, {}):
      need = max(need, predicted_row_s(run, out[name], seeds))
    if run.left() < need:
      note = run.skip_note(f"{name} at {', '.join(map(str, seeds))} seeds", need)
      if "seed_updates_per_s" in out.get(name, {}):
        out[name] = {**out[name], "skipped_pass": note}
      else:
        out[name] = {"skipped": note}
      run.log(f"  {name}: {note}")
      continue
    try:
      out[name] = update_row(run, agent, phase, seeds, utd, item)
    except Exception:
      traceback.print_exc()
      out[name] = {"error": traceback.format_exc()}
  return out


def predicted_row_s(run: Run, row: Dict[str, Any], seeds: Sequence[int]) -> float:
  """Time a second pass over `seeds` will take, from the first pass's rates (larger seed counts at
  the largest measured one's seed-updates/s) and compile times: every configuration runs at least
  two chunk calls per round."""
  known = row["seed_updates_per_s"]
  top = max(known)
  calls = sum(2 * run.sz.chunk * n / known.get(n, known[top]) for n in seeds)
  new = [n for n in seeds if n not in known]
  return run.sz.rounds * calls + 1.2 * max(row["compile_s"].values()) * len(new)


FIRST_PASS_MAX_SEEDS = PIPELINE_SEEDS   # pass 1: up to 5 seeds (what the projections need); pass 2: all


def seed_passes(seeds: Sequence[int]):
  first = tuple(n for n in seeds if n <= FIRST_PASS_MAX_SEEDS) or tuple(seeds[:1])
  return first, (tuple(seeds) if len(first) < len(seeds) else None)


def item_td3bc(run: Run, all_seeds: bool = False) -> Dict[str, Any]:
  first, full = seed_passes(run.sz.seeds)
  if all_seeds and full is None:
    return run.results["items"]["td3bc"]
  previous = run.results["items"].get("td3bc", {}).get("rows") if all_seeds else None
  out = {"rows": rows(run, [("td3bc", "pretrain", full if all_seeds else first, 1)], "td3bc", previous)}
  row = out["rows"]["td3bc/pretrain"]
  if "s_per_1M_updates_5_seeds" in row:
    out["projection"] = {"what": "5 seeds x 1M TD3+BC updates (one 5-seed program, updates only)",
                         "seconds": row["s_per_1M_updates_5_seeds"],
                         "target_s": TARGETS["td3bc_5x1M_s"],
                         "meets": row["s_per_1M_updates_5_seeds"] < TARGETS["td3bc_5x1M_s"]}
  return out


def item_updates(run: Run, all_seeds: bool = False) -> Dict[str, Any]:
  first, full = seed_passes(run.sz.seeds)
  if all_seeds and full is None:
    return run.results["items"]["updates"]
  seeds = full if all_seeds else first
  specs = [("cql", "pretrain", seeds, 1), ("o2td3", "finetune", seeds, 1),
           ("o2sac", "finetune", seeds, 10)]
  if not all_seeds:   # the other phases of the two pipelines, at 5 seeds, for item 4's projection
    five = tuple(n for n in first if n == PIPELINE_SEEDS) or first[-1:]
    specs += [(agent, phase, five, 1) for agent in run.sz.phase_rows for phase in ("reevaluate", "align")]
  previous = run.results["items"].get("updates", {}).get("rows") if all_seeds else None
  return {"rows": rows(run, specs, "updates", previous)}


# ----------------------------------------------------------------------------- item 3: the online loop

def _mock_state_class():
  import flax.struct
  import jax

  @flax.struct.dataclass
  class MockState:
    step: jax.Array
    leaves: tuple
  return MockState


@functools.lru_cache(maxsize=None)
def mock_learner(num_leaves: int, act_dim: int):
  """(init, Learner), cached so that the loop's jitted programs (cached per function) compile once:
  a state of `num_leaves` leaves (a step counter and tiny arrays, so dispatching
  the per-step programs costs what it costs for a real state of that many leaves) whose update
  returns it unchanged and whose action is uniform noise: the device work is (nearly) zero."""
  import jax
  import jax.numpy as jnp
  from o2o_jax import loops
  MockState = _mock_state_class()

  @jax.jit
  @jax.vmap
  def init(key):
    return MockState(step=jnp.zeros((), jnp.int32),
                     leaves=tuple(jnp.zeros((2,), jnp.float32) for _ in range(num_leaves - 1)))

  def update(state, batch, key):
    return state.replace(step=state.step + 1), {"loss": jnp.zeros(())}

  def act(state, obs, key, explore):
    return jax.random.uniform(key, obs.shape[:-1] + (act_dim,), minval=-1.0, maxval=1.0)

  return init, loops.Learner(update, act)


def mock_loop(num_seeds: int, steps: int, num_leaves: int, env_id: str = tp.ENV_ID,
              warmup: int = 60, clock: Optional["PhysicsClock"] = None) -> Dict[str, float]:
  """Host time per env step of `loops.run_online` with the mock learner: `num_seeds` seeds, the
  fine-tuning phase's setting (policy actions from the start, half of each batch from an offline
  dataset). Only the public loop API is used, so an older tree runs it too (--host_baseline). With
  `clock` (patched in), also the MuJoCo physics time of the same timed steps."""
  import jax
  from o2o_jax import envs, loops
  from o2o_jax.types import seed_keys
  init, learner = mock_learner(num_leaves, tp.ACT)
  states = init(seed_keys(0, num_seeds))
  data = tp.transitions(1000, jax.random.PRNGKey(2))
  config = loops.OnlineConfig(total_steps=steps + warmup, start_steps=max(1, warmup // 2),
                              random_warmup=False, eval_every=10 ** 9, eval_episodes=1,
                              buffer_size=steps + warmup, batch_size=8, offline_fraction=0.5,
                              log_every=1000)
  marks = {}
  start = clock.spent if clock is not None else 0.0

  def on_step(t, *_):
    if t in (warmup, steps + warmup):
      marks[t] = time.perf_counter()
      if clock is not None:
        clock.on = t == warmup

  loops.run_online(learner, states, make_env=lambda: envs.make_env(env_id), num_seeds=num_seeds,
                   seed=0, config=config, offline=data, callbacks=loops.OnlineCallbacks(on_step=on_step),
                   progress=False)
  out = {"us_per_env_step": 1e6 * (marks[steps + warmup] - marks[warmup]) / steps}
  if clock is not None:
    out["mujoco_us_per_env_step"] = 1e6 * (clock.spent - start) / steps
  return out


@contextlib.contextmanager
def env_threads(value: Optional[str]):
  """$O2O_JAX_ENV_THREADS for the envs built inside (None: the default)."""
  from o2o_jax import envs
  old = os.environ.get(envs.ENV_THREADS_VAR)
  if value is None:
    os.environ.pop(envs.ENV_THREADS_VAR, None)
  else:
    os.environ[envs.ENV_THREADS_VAR] = value
  try:
    yield
  finally:
    if old is None:
      os.environ.pop(envs.ENV_THREADS_VAR, None)
    else:
      os.environ[envs.ENV_THREADS_VAR] = old


class PhysicsClock:
  """Seconds spent in MuJoCo's physics calls while `on` (`mujoco.batch.Batch.step`, and `mj_step`
  where gymnasium steps the envs one by one), by patching them inside `patched()`."""

  def __init__(self):
    self.spent, self.on = 0.0, False

  def _timed(self, fn):
    def timed(*args, **kwargs):
      if not self.on:
        return fn(*args, **kwargs)
      t0 = time.perf_counter()
      try:
        return fn(*args, **kwargs)
      finally:
        self.spent += time.perf_counter() - t0
    return timed

  @contextlib.contextmanager
  def patched(self):
    import mujoco
    from mujoco import batch as mj_batch
    mj_step, batch_step = mujoco.mj_step, mj_batch.Batch.step
    mujoco.mj_step, mj_batch.Batch.step = self._timed(mj_step), self._timed(batch_step)
    try:
      yield self
    finally:
      mujoco.mj_step, mj_batch.Batch.step = mj_step, batch_step


def mujoco_floor(num_envs: int, steps: int, env_id: str = tp.ENV_ID) -> Dict[str, float]:
  """MuJoCo's own step cost alone: `SeedEnvs` stepped with uniform random actions (episodes end and
  reset as in the loop), timing only the physics calls."""
  from o2o_jax import envs
  train = envs.SeedEnvs(lambda: envs.make_env(env_id), num_envs, 0)
  rng = np.random.default_rng(0)
  actions = rng.uniform(-1, 1, (steps, num_envs, train.envs[0].action_space.shape[0])).astype(np.float32)
  with PhysicsClock().patched() as clock:
    clock.on = True
    t0 = time.perf_counter()
    for a in actions:
      train.step(a)
    wall = time.perf_counter() - t0
  threads = train.batch.batch.nthread if train.batch is not None else 0
  train.close()
  return {"mujoco_us_per_env_step": 1e6 * clock.spent / steps,
          "env_step_us_per_env_step": 1e6 * wall / steps, "threads": threads}


def eval_step_cost(num_seeds: int, episodes: int, steps: int, env_id: str = tp.ENV_ID) -> Dict[str, float]:
  """Host time of one evaluation step (all num_seeds x episodes envs active; the policy a numpy
  function, so no device time): an Evaluator whose envs never terminate early, `steps` long."""
  import gymnasium as gym
  from o2o_jax import envs
  kwargs = {"terminate_when_unhealthy": False} if env_id.split("-")[0] in ("Hopper", "Walker2d") else {}
  make = lambda: gym.make(env_id, max_episode_steps=steps, **kwargs)
  ev = envs.Evaluator(make, num_seeds, episodes)
  rng = np.random.default_rng(0)
  table = rng.uniform(-1, 1, (64, num_seeds, episodes, ev.act_dim)).astype(np.float32)
  calls = [0]

  def policy(obs):
    calls[0] += 1
    return table[calls[0] % 64]
  t0 = time.perf_counter()
  ev.run(policy)
  wall = time.perf_counter() - t0
  threads = ev.batch.batch.nthread if ev.batch else 0
  ev.close()
  return {"us_per_eval_step": 1e6 * wall / calls[0], "envs": num_seeds * episodes, "threads": threads}


def state_leaves(agent: str, phase: str, s: tp.Settings) -> int:
  import jax
  spec = tp.build(tp.select([agent], [phase])[0], s)
  shapes = jax.eval_shape(lambda k: spec.init(k, tp.OBS, tp.ACT, spec.config), jax.random.PRNGKey(0))
  return len(jax.tree_util.tree_leaves(shapes))


def online_row(run: Run, agent: str, utd: int, est_env_steps_per_s: Optional[float]) -> Dict[str, Any]:
  """`loops.run_online` at 5 seeds (throughput.measure_online), the update-only time per env step
  (the loop's per-step programs called back to back), and the host time of the same loop mocked."""
  import jax
  from o2o_jax import compile_time, loops
  from o2o_jax.data import replay
  from o2o_jax.types import seed_keys
  sz = run.sz
  s = settings(sz, utd)
  spec = tp.build(tp.select([agent], ["finetune"])[0], s)
  states = tp.init_states(spec, PIPELINE_SEEDS)
  data = tp.transitions(s.dataset_size, jax.random.PRNGKey(2))
  lo, hi = sz.online_steps
  steps = int(np.clip((est_env_steps_per_s or lo / sz.online_seconds) * sz.online_seconds, lo, hi))
  c0, t0 = compile_time.snapshot(), time.perf_counter()
  res = tp.measure_online(spec, states, data, s, steps, num_seeds=PIPELINE_SEEDS, warmup=sz.online_warmup)
  compiled = compile_time.snapshot() - c0
  out = {"agent": agent, "utd": utd, "seeds": PIPELINE_SEEDS, "steps": steps,
         "env_steps_per_s": res["env_steps_per_s"], "us_per_env_step": 1e6 / res["env_steps_per_s"],
         "run_s": time.perf_counter() - t0, "compile_s": compiled.seconds, "programs": compiled.programs}
  run.compiled(f"{agent} online loop programs (insert, UTD {utd} update + act, act, eval policy)",
               compiled.seconds, "online")
  # The update-only time per env step: the loop's two per-step programs, back to back.
  mixing = {"offline_fraction": 0.0, "offline_union": False, **spec.online}
  fns = loops.online_functions(spec.update, spec.act, s.batch_size, utd, mixing["offline_fraction"],
                               mixing["offline_union"])
  # The loop's own buffer shape (run_online: capacity min(buffer_size, total_steps)), so the loop's
  # compiled programs serve this timing too.
  buffer = replay.init(min(10_000, steps + sz.online_warmup), tp.OBS, tp.ACT, PIPELINE_SEEDS)
  row = jax.tree_util.tree_map(lambda x: np.asarray(x[:PIPELINE_SEEDS]), data)
  h = {"states": loops.unalias(states), "buffer": fns.insert(buffer, row), "keys": seed_keys(3, PIPELINE_SEEDS)}
  offline = data if mixing["offline_fraction"] > 0 or mixing["offline_union"] else None

  def device_step():
    h["buffer"] = fns.insert(h["buffer"], row)
    h["states"], action, h["keys"], _ = fns.update(h["states"], h["buffer"], row.observations, h["keys"],
                                                   offline)
    np.asarray(action)
  device_step()
  calls = {"device": device_step}
  rate = tp.timed_rounds(calls, min(1.0, sz.seconds) / sz.rounds, sz.rounds)["device"]
  out["update_only_us_per_env_step"] = 1e6 / float(np.median(rate))
  leaves = state_leaves(agent, "finetune", s)
  host = mock_loop(PIPELINE_SEEDS, sz.host_steps, leaves, warmup=sz.host_warmup)
  out["state_leaves"] = leaves
  out["host_us_per_env_step"] = host["us_per_env_step"]
  out["host_share"] = min(1.0, host["us_per_env_step"] / out["us_per_env_step"])
  out["host_share_by_update_only"] = max(0.0, 1 - out["update_only_us_per_env_step"] / out["us_per_env_step"])
  run.log(f"  {agent} online, 5 seeds, UTD {utd}: {out['env_steps_per_s']:.1f} env-steps/s "
          f"({out['us_per_env_step']:.0f} us/step; update-only {out['update_only_us_per_env_step']:.0f} us, "
          f"mocked loop {out['host_us_per_env_step']:.0f} us: host share {100 * out['host_share']:.0f}%)")
  return out


def host_section(run: Run, leaves: int) -> Dict[str, Any]:
  """The mocked loop's host time per env step at 5 seeds with the env threads at 1 and at every
  CPU, MuJoCo's floor, and an evaluation step's cost at 5 x 10 envs, all interleaved."""
  sz = run.sz
  cpus = _cpus()
  settings_ = {"gymnasium, one by one": "off", "batch, 1 thread": "1"}
  if cpus > 1:
    settings_[f"batch, {cpus} threads"] = str(cpus)
  out: Dict[str, Any] = {"cpus": cpus, "state_leaves": leaves, "env": tp.ENV_ID,
                         "seeds": PIPELINE_SEEDS, "eval_envs": PIPELINE_SEEDS * sz.eval_episodes,
                         "loop": {}, "floor": {}, "eval": {}}
  mock_loop(PIPELINE_SEEDS, 10, leaves, warmup=sz.host_warmup)     # compile the mock loop's programs
  samples = {k: {"loop": [], "loop_mujoco": [], "floor": [], "step": [], "eval": []} for k in settings_}
  for _ in range(sz.host_rounds):
    for name, value in settings_.items():
      with env_threads(value), PhysicsClock().patched() as clock:
        got = mock_loop(PIPELINE_SEEDS, sz.host_steps, leaves, warmup=sz.host_warmup, clock=clock)
      samples[name]["loop"].append(got["us_per_env_step"])
      samples[name]["loop_mujoco"].append(got["mujoco_us_per_env_step"])
      with env_threads(value):
        f = mujoco_floor(PIPELINE_SEEDS, sz.host_steps)
        samples[name]["floor"].append(f["mujoco_us_per_env_step"])
        samples[name]["step"].append(f["env_step_us_per_env_step"])
        samples[name]["eval"].append(
            eval_step_cost(PIPELINE_SEEDS, sz.eval_episodes, sz.eval_envs_steps)["us_per_eval_step"])
  for name, got in samples.items():
    out["loop"][name] = float(np.median(got["loop"]))
    out["floor"][name] = float(np.median(got["floor"]))
    out["eval"][name] = float(np.median(got["eval"]))
    out.setdefault("env_step", {})[name] = float(np.median(got["step"]))
    out.setdefault("best", {})[name] = {k: float(np.min(v)) for k, v in got.items()}
  out["rounds"] = samples
  above_floor(out)
  run.log("  mocked loop (host only), 5 seeds: " + "; ".join(
      f"{k}: {out['loop'][k]:.0f} us/step (MuJoCo {out['floor'][k]:.0f}, env step {out['env_step'][k]:.0f}); "
      f"eval step {out['eval_envs']} envs {out['eval'][k]:.0f} us" for k in out["loop"]))
  return out


def above_floor(host: Dict[str, Any]) -> None:
  """The mocked loop's time besides MuJoCo's physics, both timed over the same env steps: the median
  and the smallest over rounds."""
  for k, got in host["rounds"].items():
    if "loop_mujoco" not in got:
      continue
    diffs = np.asarray(got["loop"]) - np.asarray(got["loop_mujoco"])
    host.setdefault("loop_mujoco_us", {})[k] = float(np.median(got["loop_mujoco"]))
    host.setdefault("above_floor_us", {})[k] = float(np.median(diffs))
    host.setdefault("above_floor_best_us", {})[k] = float(np.min(diffs))


def host_baseline(run: Run, baseline: Path, leaves: int) -> Dict[str, Any]:
  """Before/after: the mocked loop run by this tree and by an older one (`baseline`, a folder holding
  an `o2o_jax` package, e.g. `git archive <rev> o2o_jax | tar -x -C DIR`), one child process each,
  rounds alternating so that both see the same machine."""
  sz = run.sz
  root = Path(__file__).resolve().parents[1]
  trees = {"before": str(Path(baseline).resolve()), "after": str(root)}
  procs = {}
  for name, tree in trees.items():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tree, str(root),
                                                                     os.environ.get("PYTHONPATH")]))}
    # cwd = the tree: `python -m` puts the working directory first on sys.path, before PYTHONPATH.
    procs[name] = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.accelerator", "--host_child", f"--leaves={leaves}",
         f"--host_steps={sz.host_steps}"], cwd=tree, env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
  out: Dict[str, Any] = {"trees": trees, "rounds": {k: [] for k in trees}, "seeds": PIPELINE_SEEDS,
                         "state_leaves": leaves, "steps": sz.host_steps}
  try:
    for p in procs.values():          # each child: its package's path, then a warm-up round
      out.setdefault("packages", []).append(p.stdout.readline().strip())
    for _ in range(sz.host_rounds + 1):
      for name, p in procs.items():
        p.stdin.write("go\n")
        p.stdin.flush()
        out["rounds"][name].append(float(p.stdout.readline()))
  finally:
    for p in procs.values():
      p.stdin.close()
      p.wait(timeout=60)
  if len(set(out["packages"])) != len(trees):
    raise RuntimeError(f"both child processes imported the same o2o_jax: {out['packages']}")
  for name in trees:
    out["rounds"][name] = out["rounds"][name][1:]      # the first round compiled
    out[f"{name}_us_per_env_step"] = float(np.median(out["rounds"][name]))
    out[f"{name}_best_us_per_env_step"] = float(np.min(out["rounds"][name]))
  out["speedup"] = tp.median_ratio(out["rounds"]["before"], out["rounds"]["after"])
  out["speedup_best"] = out["before_best_us_per_env_step"] / out["after_best_us_per_env_step"]
  run.log(f"  before/after (mocked loop, 5 seeds): {out['before_us_per_env_step']:.0f} -> "
          f"{out['after_us_per_env_step']:.0f} us/step (x{out['speedup']:.2f} within rounds); best rounds "
          f"{out['before_best_us_per_env_step']:.0f} -> {out['after_best_us_per_env_step']:.0f} "
          f"(x{out['speedup_best']:.2f})")
  return out


def host_child(leaves: int, steps: int) -> int:
  """--host_child: print the o2o_jax in use, then one mocked-loop time per 'go' line on stdin."""
  import o2o_jax
  print(Path(o2o_jax.__file__).parent, flush=True)
  for line in sys.stdin:
    if line.strip() != "go":
      break
    print(mock_loop(PIPELINE_SEEDS, steps, leaves)["us_per_env_step"], flush=True)
  return 0


def item_online(run: Run, baseline: Optional[Path] = None, label: Optional[str] = None) -> Dict[str, Any]:
  updates = run.results["items"].get("updates", {}).get("rows", {})
  out: Dict[str, Any] = {"rows": {}}
  for agent, utd in (("o2td3", 1), ("o2sac", 10)):
    est = updates.get(f"{agent}/finetune", {}).get("updates_per_s_5_seeds")
    need = 1.5 * run.sz.row_need_s
    if run.left() < need:
      out["rows"][agent] = {"skipped": run.skip_note(f"{agent} online", need)}
      continue
    try:
      out["rows"][agent] = online_row(run, agent, utd, est / utd if est else None)
    except Exception:
      traceback.print_exc()
      out["rows"][agent] = {"error": traceback.format_exc()}
  leaves = out["rows"].get("o2td3", {}).get("state_leaves") or state_leaves("o2td3", "finetune",
                                                                            settings(run.sz))
  if run.left() < run.sz.row_need_s:
    out["host"] = {"skipped": run.skip_note("the host measurements", run.sz.row_need_s)}
  else:
    out["host"] = host_section(run, leaves)
  if baseline is not None:
    out["before_after"] = host_baseline(run, baseline, leaves)
    out["before_after"]["label"] = label or str(baseline)
  return out


# ----------------------------------------------------------------------------- item 4: end to end

class PhaseClock:
  """Evaluation and checkpoint-save time (and counts) inside the phases, by wrapping
  `envs.Evaluator.run` and `checkpoints.Checkpointer.save` while active."""

  def __init__(self):
    self.eval_s = self.save_s = 0.0
    self.evals = self.eval_steps = self.saves = 0

  @contextlib.contextmanager
  def active(self):
    from o2o_jax import checkpoints, envs
    run_, save = envs.Evaluator.run, checkpoints.Checkpointer.save
    clock = self

    def timed_run(ev, policy):
      def counted(obs):
        clock.eval_steps += 1
        return policy(obs)
      t0 = time.perf_counter()
      try:
        return run_(ev, counted)
      finally:
        clock.eval_s += time.perf_counter() - t0
        clock.evals += 1

    def timed_save(ck, *a, **k):
      t0 = time.perf_counter()
      try:
        return save(ck, *a, **k)
      finally:
        clock.save_s += time.perf_counter() - t0
        clock.saves += 1
    envs.Evaluator.run, checkpoints.Checkpointer.save = timed_run, timed_save
    try:
      yield self
    finally:
      envs.Evaluator.run, checkpoints.Checkpointer.save = run_, save


def item_pipeline(run: Run) -> Dict[str, Any]:
  """The 5-seed O2TD3 pipeline at reduced steps, phase by phase, then the projections."""
  from o2o_jax import compile_time, recipe, recipes
  p = run.sz.pipeline
  hidden = (p["hidden"],) * 2 if "hidden" in p else None
  out: Dict[str, Any] = {"agent": "o2td3", "seeds": PIPELINE_SEEDS, "dataset": DATASET, "steps": {},
                         "phases": {}}
  common = dict(progress=False, checkpoint_every=p["checkpoint_every"], batch_size=run.sz.batch,
                log=lambda m: run.log("    " + m))
  with tempfile.TemporaryDirectory() as tmp:
    common["out_dir"] = tmp

    def phase(name, steps, fn):
      clock, c0, t0 = PhaseClock(), compile_time.snapshot(), time.perf_counter()
      with clock.active():
        result = fn()
      compiled = compile_time.snapshot() - c0
      wall = time.perf_counter() - t0
      out["phases"][name] = {"steps": steps, "wall_s": wall, "compile_s": compiled.seconds,
                             "programs": compiled.programs, "eval_s": clock.eval_s,
                             "evals": clock.evals, "eval_steps": clock.eval_steps,
                             "save_s": clock.save_s, "saves": clock.saves}
      run.compiled(f"pipeline {name} (all its programs)", compiled.seconds, "pipeline")
      run.log(f"  {name}: {steps} steps in {wall:.1f} s ({compiled.seconds:.1f} s compiling, "
              f"{clock.evals} evaluations {clock.eval_s:.1f} s, {clock.saves} saves {clock.save_s:.1f} s)")
      return result

    # The o2td3 recipe as the launcher runs it (o2o_jax.recipe.run), each phase timed.
    o2td3 = recipes.get("o2td3")
    settings = dict(dataset=DATASET, seeds=PIPELINE_SEEDS, seed=0, pretrain_steps=p["pretrain"],
                    pretrain_eval_every=p["pretrain_eval_every"], eval_episodes=p["eval_episodes"],
                    hidden_dims=hidden, critic_hidden=hidden, reevaluate_steps=p["reevaluate"],
                    align_steps=p["align"], align_eval_every=p["align_eval_every"],
                    online_steps=p["online"], warmup_steps=p["warmup"], eval_every=p["eval_every"],
                    **{k: v for k, v in common.items() if k != "log"})
    ctx = recipe.Context.build(o2td3, settings, log=common["log"])
    steps = {"pretrain": p["pretrain"], "reevaluate": p["reevaluate"], "align": p["align"],
             "finetune": p["online"]}
    recipe.run(o2td3, ctx, around=lambda ph, thunk: phase(ph.name, steps[ph.name], thunk))
  out["wall_s_reduced"] = sum(v["wall_s"] for v in out["phases"].values())
  out["projection"] = project(run, out["phases"])
  return out


# Per phase of each pipeline: the item-1/2/3 row whose rate the projection uses, and how one of the
# phase's steps maps to it (an online env step is one loop step).
RATE_ROWS = {"o2td3": {"pretrain": ("td3bc", "td3bc/pretrain"), "reevaluate": ("updates", "o2td3/reevaluate"),
                       "align": ("updates", "o2td3/align"), "finetune": ("online", "o2td3")},
             "o2sac": {"pretrain": ("updates", "cql/pretrain"), "reevaluate": ("updates", "o2sac/reevaluate"),
                       "align": ("updates", "o2sac/align"), "finetune": ("online", "o2sac")}}


def _step_seconds(run: Run, item: str, row: str) -> Optional[float]:
  got = run.results["items"].get(item, {}).get("rows", {}).get(row, {})
  if item == "online":
    return got.get("us_per_env_step", 0) / 1e6 or None
  rate = got.get("updates_per_s_5_seeds")
  return 1.0 / rate if rate else None


def project(run: Run, measured: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  """Paper-pipeline wall time per phase: compile + fixed + steps x step time + evaluations x 1000
  steps x the measured cost of an evaluation step + checkpoint saves at the measured cost.

  From the reduced O2TD3 run: compile (measured), evaluation-step cost (eval time / policy calls),
  save cost (mean time of a save; the paper's count of saves, `PAPER`), fixed = the rest of the
  phase's wall once its updates are taken out at the item 1-3 rate (data loading, init, restore,
  plots). Step times: items 1-3 at 5 seeds (the reduced run's own when missing). O2SAC reuses
  O2TD3's fixed, evaluation and save costs (its networks are larger, its evaluation policy call a
  little slower) and the compile times of its item 2-3 programs."""
  out: Dict[str, Any] = {"model": project.__doc__.split("\n\n")[0].replace("\n  ", " "),
                         "assumptions": [], "pipelines": {}}
  for agent in ("o2td3", "o2sac"):
    total, table, missing = 0.0, {}, []
    for name, paper in PAPER.items():
      m = measured.get(name)
      item, row = RATE_ROWS[agent][name]
      step_s = _step_seconds(run, item, row)
      if m is None:
        missing.append(name)
        continue
      rest = m["wall_s"] - m["compile_s"] - m["eval_s"] - m["save_s"]
      if step_s is None:     # no rate measured: the reduced run's own (overheads included)
        step_s, fixed = rest / max(1, m["steps"]), 0.0
        source = "reduced run"
      else:
        fixed = max(0.0, rest - m["steps"] * step_s)
        source = f"item {item}: {row}"
      compile_s = m["compile_s"]
      if agent == "o2sac":
        compile_s = _o2sac_compile(run, name, m["compile_s"])
      eval_step_s = m["eval_s"] / max(1, m["eval_steps"])
      save_s = m["save_s"] / max(1, m["saves"])
      parts = {"compile_s": compile_s, "fixed_s": fixed, "steps_s": paper["steps"] * step_s,
               "evals_s": paper["evals"] * EVAL_STEPS * eval_step_s, "saves_s": paper["saves"] * save_s}
      parts["total_s"] = sum(parts.values())
      parts.update(step_ms=1e3 * step_s, step_source=source, paper_steps=paper["steps"],
                   paper_evals=paper["evals"], eval_step_ms=1e3 * eval_step_s, save_ms=1e3 * save_s)
      table[name] = parts
      total += parts["total_s"]
    key = f"{agent}_pipeline_s"
    out["pipelines"][agent] = {"phases": table, "total_s": total, "target_s": TARGETS[key],
                               "meets": (total < TARGETS[key]) if not missing else None,
                               "missing_phases": missing}
  out["assumptions"] = [
      f"every evaluation runs {EVAL_STEPS} steps (episodes of a trained hopper policy end at the "
      "1000-step limit at most; the reduced run's weak policies end earlier)",
      "5 seeds in one process; evaluation: 10 episodes per seed, all 50 envs stepped together",
      "O2SAC's fixed, evaluation and save costs are O2TD3's (measured); its step times are its own",
      "a save costs what the reduced run's saves cost on average (its online snapshots hold a smaller "
      "replay buffer than the paper's 100k-step one)"]
  return out


def _o2sac_compile(run: Run, phase: str, o2td3_compile: float) -> float:
  """O2SAC's compile time for a phase: its own programs' where items 2-3 compiled them, scaled from
  O2TD3's phase compile by the ratio of the two agents' step compiles otherwise."""
  rows_ = run.results["items"].get("updates", {}).get("rows", {})
  td3 = run.results["items"].get("td3bc", {}).get("rows", {})
  pairs = {"pretrain": (rows_.get("cql/pretrain"), td3.get("td3bc/pretrain")),
           "reevaluate": (rows_.get("o2sac/reevaluate"), rows_.get("o2td3/reevaluate")),
           "align": (rows_.get("o2sac/align"), rows_.get("o2td3/align")),
           "finetune": (rows_.get("o2sac/finetune"), rows_.get("o2td3/finetune"))}
  sac, td = pairs[phase]
  try:
    n = PIPELINE_SEEDS if PIPELINE_SEEDS in sac["compile_s"] else max(sac["compile_s"])
    return o2td3_compile * sac["compile_s"][n] / td["compile_s"][n]
  except (TypeError, KeyError, ValueError, ZeroDivisionError):
    return o2td3_compile


# ----------------------------------------------------------------------------- item 5 and the report

def item_compile(run: Run) -> Dict[str, Any]:
  programs = sorted(run.results["compile"], key=lambda c: -c["seconds"])
  return {"programs": programs, "total_s": sum(c["seconds"] for c in programs)}


def _fmt_s(x: Optional[float]) -> str:
  if x is None:
    return "–"
  if x >= 120:
    return f"{x / 60:.1f} min"
  return f"{x:.1f} s" if x >= 1 else f"{1e3 * x:.1f} ms"


def _meets(flag) -> str:
  return {True: "meets", False: "misses", None: "incomplete"}[flag]


def markdown(r: Dict[str, Any]) -> str:
  items = r["items"]
  sz = r["sizes"]
  lines = [f"# Accelerator benchmark on {r['device']} (jax {r['jax']}, {r['cpus']} CPUs)", "",
           f"Sizes '{sz['name']}': networks {'at their own (paper) sizes' if sz['own_dims'] else sz['hidden']}, "
           f"batch {sz['batch']}, seeds {', '.join(map(str, sz['seeds']))}, scan chunk {sz['chunk']}, "
           f"{sz['rounds']} interleaved rounds. Wall {r.get('wall_s', 0):.0f} s of a {r['budget_s']:.0f} s "
           "budget.", ""]
  lines += [f"- {n}" for n in r.get("notes", [])]
  for key in ITEMS:
    lines += ["", f"## {ITEM_TITLES[key]}", ""]
    got = items.get(key)
    if got is None:
      lines.append("not run (not selected, or the run ended before it).")
      continue
    if "skipped" in got or "error" in got:
      lines.append(got.get("skipped") or "failed: " + got["error"].strip().splitlines()[-1])
      continue
    lines += _MD[key](got, r)
    if "skipped_pass" in got:
      lines += ["", f"Second pass (every seed count) {got['skipped_pass']}."]
    if "error_pass" in got:
      lines += ["", "Second pass (every seed count) failed: " + got["error_pass"].strip().splitlines()[-1]]
  return "\n".join(lines) + "\n"


def _md_rows(got, r) -> List[str]:
  seeds = r["sizes"]["seeds"]
  lines = ["| step | GFLOP/update | " + " | ".join(f"x{n} seed-upd/s (ratio)" for n in seeds)
           + " | compile s (per seed count) | 5 seeds: upd/s, 1M updates |",
           "|---|---|" + "---|" * len(seeds) + "---|---|"]
  for name, row in got["rows"].items():
    if "seed_updates_per_s" not in row:
      why = row.get("skipped") or "failed: " + row.get("error", "").strip().splitlines()[-1]
      lines.append(f"| {name} | {why} |" + " |" * (len(seeds) + 2))
      continue
    cells = " | ".join(f"{row['seed_updates_per_s'][n]:.0f} ({row['vmap_ratio'][n]:.2f})"
                       if n in row["seed_updates_per_s"] else "–" for n in seeds)
    comp = ", ".join(f"{row['compile_s'][n]:.1f}" for n in row["compile_s"])
    five = (f"{row['updates_per_s_5_seeds']:.0f}, {_fmt_s(row['s_per_1M_updates_5_seeds'])}"
            if "updates_per_s_5_seeds" in row else "–")
    if row.get("utd", 1) > 1 and "env_steps_per_s_5_seeds" in row:
      five += f" (UTD {row['utd']}: {row['env_steps_per_s_5_seeds']:.0f} env-steps/s)"
    lines.append(f"| {name} | {row['gflop_per_update']:.3f} | {cells} | {comp} | {five} |")
  notes = [f"- {name}: {row['skipped_pass']}" for name, row in got["rows"].items() if "skipped_pass" in row]
  return lines + ([""] + notes if notes else [])


def _md_td3bc(got, r) -> List[str]:
  lines = _md_rows(got, r)
  p = got.get("projection")
  if p:
    lines += ["", f"**Projection: {p['what']}: {_fmt_s(p['seconds'])} against the {p['target_s']:.0f} s "
              f"target ({_meets(p['meets'])}).** Compile once per run on top (table)."]
  return lines


def _md_updates(got, r) -> List[str]:
  return _md_rows(got, r) + ["", "Projections of these rates against the targets: item 4 (the paper "
                             "pipelines, phase by phase)."]


def _md_online(got, r) -> List[str]:
  lines = ["| agent | UTD | env-steps/s (5 seeds) | us/env step | update-only us | mocked loop (host) us "
           "| host share | compile s |", "|---|---|---|---|---|---|---|---|"]
  for agent, row in got.get("rows", {}).items():
    if "env_steps_per_s" not in row:
      why = row.get("skipped") or "failed: " + row.get("error", "").strip().splitlines()[-1]
      lines.append(f"| {agent} | {why} |" + " |" * 6)
      continue
    lines.append(f"| {agent} | {row['utd']} | {row['env_steps_per_s']:.1f} | {row['us_per_env_step']:.0f} | "
                 f"{row['update_only_us_per_env_step']:.0f} | {row['host_us_per_env_step']:.0f} | "
                 f"{100 * row['host_share']:.0f}% | {row['compile_s']:.1f} |")
  lines += ["", "Host share: the mocked loop's time per env step (same seeds, env, state leaf count; "
            "update and act trivial) over the real loop's."]
  h = got.get("host", {})
  if "loop" in h:
    lines += ["", f"Host side alone, {h['seeds']} seeds of {h['env']}, {h['state_leaves']}-leaf state "
              f"({h['cpus']} CPUs):", "",
              "| env threads | mocked loop us/env step | of which MuJoCo physics | loop besides the physics "
              "| MuJoCo physics alone (floor) | env stepping alone (physics + obs/reward/resets) | "
              f"evaluation step, {h['eval_envs']} envs |", "|---|---|---|---|---|---|---|"]
    for k in h["loop"]:
      b = h.get("best", {}).get(k, {})
      best = lambda key: f" ({b[key]:.0f})" if key in b else ""
      above = h.get("above_floor_best_us", {})
      inside = (f"{h['loop_mujoco_us'][k]:.0f}{best('loop_mujoco')} | {h['above_floor_us'][k]:.0f}"
                + (f" ({above[k]:.0f})" if k in above else "")) if k in h.get("loop_mujoco_us", {}) else "– | –"
      lines.append(f"| {k} | {h['loop'][k]:.0f}{best('loop')} | {inside} | {h['floor'][k]:.0f}{best('floor')} | "
                   f"{h['env_step'][k]:.0f}{best('step')} | {h['eval'][k]:.0f}{best('eval')} |")
    lines += ["", f"Medians over {len(h['rounds'][next(iter(h['rounds']))]['loop'])} interleaved rounds "
              "(in brackets: the best round, the least disturbed by other load)."]
    lines += ["", "Training envs: one MuJoCo simulation per seed, all stepped by one `mujoco.batch.Batch` "
              "call (`envs.MujocoBatch`); evaluation: all seeds x episodes envs in one such call. Threads: "
              "`envs.env_threads` (one per simulation up to the CPUs on machines of >= 8 CPUs, else 1; "
              "$O2O_JAX_ENV_THREADS overrides). Items 3-4 ran with the default; the rows above set it. "
              "With the device on a GPU the CPUs are otherwise idle while the envs step."]
  elif "skipped" in h:
    lines += ["", h["skipped"]]
  ba = got.get("before_after")
  if ba:
    lines += ["", f"Before/after, mocked loop, {ba['seeds']} seeds (child processes, {len(ba['rounds']['after'])} "
              f"rounds alternating; before = {ba.get('label', ba['trees']['before'])}): "
              f"**{ba['before_us_per_env_step']:.0f} -> {ba['after_us_per_env_step']:.0f} us per env step** "
              f"(medians; x{ba['speedup']:.2f}, the median of the per-round ratios); best rounds "
              f"{ba['before_best_us_per_env_step']:.0f} -> {ba['after_best_us_per_env_step']:.0f} "
              f"(x{ba['speedup_best']:.2f})."]
  return lines


def _md_pipeline(got, r) -> List[str]:
  lines = [f"Reduced run: {got['agent']}, {got['seeds']} seeds on {got['dataset']}, "
           f"{_fmt_s(got['wall_s_reduced'])} in all.", "",
           "| phase | steps | wall | compile | evaluations | saves |", "|---|---|---|---|---|---|"]
  for name, m in got["phases"].items():
    lines.append(f"| {name} | {m['steps']} | {_fmt_s(m['wall_s'])} | {_fmt_s(m['compile_s'])} ({m['programs']}) | "
                 f"{m['evals']} in {_fmt_s(m['eval_s'])} ({m['eval_steps']} steps) | "
                 f"{m['saves']} in {_fmt_s(m['save_s'])} |")
  proj = got["projection"]
  for agent, p in proj["pipelines"].items():
    lines += ["", f"**{agent.upper()} paper pipeline, 5 seeds: {_fmt_s(p['total_s'])} against "
              f"{_fmt_s(p['target_s'])} ({_meets(p['meets'])}).**", "",
              "| phase | steps | step time (source) | compile | fixed | steps | evaluations | saves | total |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, t in p["phases"].items():
      lines.append(f"| {name} | {t['paper_steps']} | {t['step_ms']:.3f} ms ({t['step_source']}) | "
                   f"{_fmt_s(t['compile_s'])} | {_fmt_s(t['fixed_s'])} | {_fmt_s(t['steps_s'])} | "
                   f"{t['paper_evals']} x {EVAL_STEPS} x {t['eval_step_ms']:.2f} ms = {_fmt_s(t['evals_s'])} | "
                   f"{_fmt_s(t['saves_s'])} | {_fmt_s(t['total_s'])} |")
  lines += ["", "Model: " + proj["model"]] + [f"- {a}" for a in proj["assumptions"]]
  return lines


def _md_compile(got, r) -> List[str]:
  lines = [f"{len(got['programs'])} programs, {_fmt_s(got['total_s'])} in all.", "",
           "| program | item | seconds |", "|---|---|---|"]
  lines += [f"| {c['program']} | {c['item']} | {c['seconds']:.2f} |" for c in got["programs"]]
  return lines


_MD = {"td3bc": _md_td3bc, "updates": _md_updates, "online": _md_online, "pipeline": _md_pipeline,
       "compile": _md_compile}


# ----------------------------------------------------------------------------- CLI

NEEDS = {"td3bc": 0.10, "updates": 0.25, "online": 0.15, "pipeline": 0.20, "compile": 0.0}


def main(argv: Optional[Sequence[str]] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", help="Output folder (accelerator.json, accelerator.md).")
  ap.add_argument("--tiny", action="store_true", help="Tiny sizes (CI): the same code paths in seconds.")
  ap.add_argument("--sizes", choices=sorted(SIZES), default=None,
                  help="Sizes (default: gpu on a GPU, cpu otherwise; --tiny = tiny).")
  ap.add_argument("--budget_s", type=float, default=None,
                  help="Wall-time budget (default: gpu 450, cpu 1200, tiny 120): an item or row that no "
                       "longer fits is skipped and recorded as such.")
  ap.add_argument("--items", default=",".join(ITEMS), help=f"Items to run, of {', '.join(ITEMS)}.")
  ap.add_argument("--host_baseline", default=None,
                  help="Folder holding an older o2o_jax: item 3 also times the mocked loop before/after.")
  ap.add_argument("--host_baseline_label", default=None,
                  help="What --host_baseline holds, for the report (e.g. 'git HEAD abc1234').")
  ap.add_argument("--note", action="append", default=[],
                  help="A line for the report's notes (e.g. the machine's load); repeatable.")
  ap.add_argument("--host_child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--leaves", type=int, default=0, help=argparse.SUPPRESS)
  ap.add_argument("--host_steps", type=int, default=0, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.host_child:
    return host_child(args.leaves, args.host_steps)
  if not args.out:
    ap.error("--out is required")
  import jax
  name = "tiny" if args.tiny else args.sizes or ("gpu" if jax.devices()[0].platform == "gpu" else "cpu")
  sz = SIZES[name]
  budget = args.budget_s if args.budget_s is not None else {"gpu": 450.0, "cpu": 1200.0, "tiny": 120.0}[name]
  chosen = [i.strip() for i in args.items.split(",") if i.strip()]
  unknown = set(chosen) - set(ITEMS)
  if unknown:
    ap.error(f"unknown item(s) {', '.join(sorted(unknown))}: choose from {', '.join(ITEMS)}")
  from o2o_jax import compile_time
  compile_time.install()
  run = Run(Path(args.out), sz, budget, log=lambda m: print(m, flush=True))
  if name == "cpu" and jax.devices()[0].platform == "cpu":
    run.results["notes"].append("CPU sizes: the paper's networks, batch and dataset, fewer seeds "
                                "(1, 5, 16; no 64), short scan chunks and reduced pipeline steps, so "
                                "that the whole script fits its budget on this machine.")
  run.results["notes"] += args.note
  run.write()
  fns = {"td3bc": item_td3bc, "updates": item_updates,
         "online": lambda r: item_online(r, Path(args.host_baseline) if args.host_baseline else None,
                                         args.host_baseline_label),
         "pipeline": item_pipeline, "compile": item_compile}
  # Items 1-2 first at up to 5 seeds (what the projections need), then 3 and 4, then items 1-2 again
  # with every seed count (16, 64: the scaling), so that a short lease loses the scaling first.
  order = [(key, fns[key]) for key in ("td3bc", "updates", "online", "pipeline")]
  if seed_passes(sz.seeds)[1] is not None:
    order += [("td3bc", functools.partial(item_td3bc, all_seeds=True)),
              ("updates", functools.partial(item_updates, all_seeds=True))]
  order.append(("compile", item_compile))
  for key, fn in order:
    if key in chosen and run.interrupted:
      break
    if key in chosen:
      # The compile summary costs nothing and always runs; the others need their share of the budget.
      need = -float("inf") if key == "compile" else NEEDS[key] * budget if name != "tiny" else 0.0
      if key in run.results["items"] and "rows" not in run.results["items"][key]:
        continue     # the first pass was skipped or failed: so is the second
      run.item(key, fn, need_s=need)
  run.write()
  print((run.out / "accelerator.md").read_text())
  failed = [k for k, v in run.results["items"].items() if "error" in v]
  failed_rows = [f"{k}: {name}" for k, v in run.results["items"].items()
                 for name, row in (v.get("rows") or {}).items() if "error" in row]
  if failed or failed_rows:
    print(f"failed: {', '.join(failed + failed_rows)}", file=sys.stderr)
    return 1
  return 3 if run.interrupted else 0


if __name__ == "__main__":
  sys.exit(main())
