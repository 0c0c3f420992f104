"""Shared fixtures: an isolated Minari store and tiny datasets built with Minari's own API.

Every test session gets its own `MINARI_DATASETS_PATH` and `O2O_JAX_CACHE` (temporary folders), so
nothing is read from or written to the user's `~/.minari` or `~/.cache`.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest

# The suite's CPU time is mostly XLA compiling many small programs (tiny networks, a fresh process per
# launcher test), not running them. LLVM's expensive optimisations buy nothing at these sizes: without
# them the suite needs ~40% less CPU (measured on tests/test_o2ppo.py: 119 s -> 71 s). Set here, before
# JAX starts, so the launcher subprocesses inherit it. The HLO is the same; elementwise approximations
# may differ in the last bits (tanh inside a fusion never rounds to exactly 1.0 at -O0, see
# test_networks). O2O_JAX_TEST_FULL_XLA=1 keeps XLA's defaults.
# XLA also splits each program's LLVM module into parts compiled on parallel threads: on 2 cores that
# the two pytest-xdist workers already fill, the split only adds CPU (a tiny CQL chunk's compile,
# quiet, 3 alternating runs: 2.12-2.24 s of CPU split, 1.63-1.95 s in one part; the same numbers out).
FAST_COMPILE_XLA_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                          "--xla_cpu_parallel_codegen_split_count=1")
# XLA's MLIR fusion emitters (its default) cost as much again: with the classic LLVM IR emitters a tiny
# CQL chunk compiles in 2.3-2.7 s of CPU instead of 4.9-5.6 s (jax 0.10.2, session 23; BUILD_NOTES "The
# test suite in CI"). Two programs of different structure may then round the same sums differently in
# the last bit, so a test that asserts two programs bit-identical (`@pytest.mark.default_fusion_emitters`)
# runs in a child pytest with XLA's own emitters: the exactness it pins is that of a user's run.
CLASSIC_EMITTERS_XLA_FLAG = "--xla_cpu_use_fusion_emitters=false"
_DEFAULT_EMITTERS = os.environ.get("O2O_JAX_TEST_FUSION_EMITTERS") == "default"   # in that child
if not os.environ.get("O2O_JAX_TEST_FULL_XLA"):
  flags = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_XLA_FLAGS}"
  if not _DEFAULT_EMITTERS:
    flags += f" {CLASSIC_EMITTERS_XLA_FLAG}"
  os.environ["XLA_FLAGS"] = " ".join(dict.fromkeys(flags.split()))   # xdist workers inherit, re-add

# The other half of the suite's compile time is the same small programs compiled again: by each test
# that builds fresh closures, and by every launcher subprocess. One persistent XLA cache per test run,
# shared by the pytest-xdist workers (they inherit its folder) and the subprocesses they start
# (`experiments.common.enable_compilation_cache` leaves an explicit JAX_COMPILATION_CACHE_DIR alone),
# caches every program, however fast it compiled (measured: tests/test_ocr_cft.py 57 s CPU cold,
# 52 s with the cache empty at the start, 19 s when another process had filled it). The executables
# are the ones XLA would build; O2O_JAX_TEST_XLA_CACHE=off turns it off.
_TEST_XLA_CACHE = None      # set in the process that made the folder (the controller), which removes it
if os.environ.get("O2O_JAX_TEST_XLA_CACHE", "").lower() not in ("0", "off", "false"):
  if not os.environ.get("O2O_JAX_TEST_XLA_CACHE_DIR"):     # xdist workers inherit the controller's
    import tempfile
    _TEST_XLA_CACHE = tempfile.mkdtemp(prefix="o2o_jax_test_xla_")
    os.environ["O2O_JAX_TEST_XLA_CACHE_DIR"] = _TEST_XLA_CACHE
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["O2O_JAX_TEST_XLA_CACHE_DIR"]
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_pyfunc_call(pyfuncitem):
  """A `default_fusion_emitters` test runs in a child pytest with XLA's own fusion emitters."""
  if (pyfuncitem.get_closest_marker("default_fusion_emitters") is None or _DEFAULT_EMITTERS
      or CLASSIC_EMITTERS_XLA_FLAG not in os.environ.get("XLA_FLAGS", "").split()):
    return None
  import subprocess
  import sys
  flags = [f for f in os.environ["XLA_FLAGS"].split() if f != CLASSIC_EMITTERS_XLA_FLAG]
  env = dict(os.environ, O2O_JAX_TEST_FUSION_EMITTERS="default", XLA_FLAGS=" ".join(flags))
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid],
                        cwd=pyfuncitem.config.rootpath, env=env, capture_output=True, text=True, timeout=900)
  if proc.returncode != 0 or "1 passed" not in proc.stdout:
    pytest.fail(f"in the child pytest with XLA's default fusion emitters:\n{proc.stdout[-6000:]}"
                f"{proc.stderr[-2000:]}", pytrace=False)
  return True


def pytest_sessionfinish(session, exitstatus):
  """The process that made the run's XLA cache removes it."""
  import shutil
  if _TEST_XLA_CACHE:
    shutil.rmtree(_TEST_XLA_CACHE, ignore_errors=True)


# Hopper-v5 with a 30-step limit under a uniform-random policy, per reset/action seed:
#   seed 0 -> 26 steps, terminated     seed 1 -> 13 steps, terminated
#   seed 4 -> 30 steps, truncated      seed 5 -> 26 steps, terminated
#   seed 9 -> 30 steps, truncated      seed 6 -> 19 steps, terminated
# (the fixture asserts that both kinds of episode end occur, so a MuJoCo/gymnasium change that alters
# these trajectories fails loudly instead of silently weakening the tests).
HOPPER_SEEDS = (0, 1, 4, 5, 9, 6)
HOPPER_MAX_STEPS = 30
HOPPER_DATASET_ID = "test/hopper/random-v0"
REF_MIN, REF_MAX = -10.0, 90.0


@dataclasses.dataclass(frozen=True)
class RawEpisode:
  """One episode exactly as the env produced it (observations hold T+1 rows)."""
  seed: int
  observations: np.ndarray   # (T+1, obs_dim) float64
  actions: np.ndarray        # (T, act_dim) float32
  rewards: np.ndarray        # (T,) float64
  terminations: np.ndarray   # (T,) bool
  truncations: np.ndarray    # (T,) bool

  def __len__(self) -> int:
    return len(self.rewards)


@dataclasses.dataclass(frozen=True)
class TinyDataset:
  dataset_id: str
  episodes: List[RawEpisode]
  ref_min_score: Optional[float]
  ref_max_score: Optional[float]
  env_id: str


def collect_random_episodes(env_id: str, seeds: Sequence[int],
                            max_episode_steps: int) -> List[RawEpisode]:
  """Uniform-random-policy episodes, one per seed (the seed drives both reset and action sampling)."""
  import gymnasium as gym
  env = gym.make(env_id, max_episode_steps=max_episode_steps)
  episodes = []
  for seed in seeds:
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    observations, actions, rewards, terms, truncs = [obs], [], [], [], []
    while True:
      action = env.action_space.sample()
      obs, reward, terminated, truncated, _ = env.step(action)
      observations.append(obs)
      actions.append(action)
      rewards.append(reward)
      terms.append(terminated)
      truncs.append(truncated)
      if terminated or truncated:
        break
    episodes.append(RawEpisode(seed=seed, observations=np.asarray(observations, np.float64),
                               actions=np.asarray(actions, np.float32),
                               rewards=np.asarray(rewards, np.float64),
                               terminations=np.asarray(terms, bool),
                               truncations=np.asarray(truncs, bool)))
  env.close()
  return episodes


def create_minari_dataset(dataset_id: str, episodes: Sequence[RawEpisode], env_id: str,
                          max_episode_steps: Optional[int] = None,
                          ref_min_score: Optional[float] = None,
                          ref_max_score: Optional[float] = None) -> str:
  """Writes `episodes` as a Minari dataset in the current `$MINARI_DATASETS_PATH` via Minari's API."""
  import gymnasium as gym
  import minari
  from minari.data_collector import EpisodeBuffer
  buffers = [EpisodeBuffer(id=i, seed=ep.seed, observations=ep.observations, actions=ep.actions,
                           rewards=ep.rewards, terminations=ep.terminations,
                           truncations=ep.truncations)
             for i, ep in enumerate(episodes)]
  env = gym.make(env_id, max_episode_steps=max_episode_steps)
  try:
    minari.create_dataset_from_buffers(
        dataset_id, buffers, env=env, eval_env=env_id, algorithm_name="uniform-random",
        author="o2o_jax tests", author_email="tests@example.com",
        code_permalink="https://example.com/o2o_jax", description="tiny test dataset",
        ref_min_score=ref_min_score, ref_max_score=ref_max_score)
  finally:
    env.close()
  return dataset_id


@pytest.fixture(scope="session", autouse=True)
def isolated_stores(tmp_path_factory) -> Dict[str, str]:
  """Session-wide `MINARI_DATASETS_PATH` and `O2O_JAX_CACHE` in temporary folders (restored after)."""
  paths = {"MINARI_DATASETS_PATH": str(tmp_path_factory.mktemp("minari_datasets")),
           "O2O_JAX_CACHE": str(tmp_path_factory.mktemp("o2o_jax_cache"))}
  saved = {k: os.environ.get(k) for k in paths}
  os.environ.update(paths)
  yield paths
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_hopper_dataset(isolated_stores) -> TinyDataset:
  """6 random-policy Hopper-v5 episodes (30-step limit): some terminated, some truncated."""
  episodes = collect_random_episodes("Hopper-v5", HOPPER_SEEDS, HOPPER_MAX_STEPS)
  terminated = [bool(ep.terminations[-1]) for ep in episodes]
  truncated = [bool(ep.truncations[-1]) and not ep.terminations[-1] for ep in episodes]
  assert any(terminated) and any(truncated), "need both terminated and time-limit-truncated episodes"
  for ep in episodes:  # only the last step of an episode may end it
    assert not ep.terminations[:-1].any() and not ep.truncations[:-1].any()
    assert ep.observations.shape == (len(ep) + 1, 11) and ep.actions.shape == (len(ep), 3)
  assert all(len(ep) == HOPPER_MAX_STEPS for ep, tr in zip(episodes, truncated) if tr)
  create_minari_dataset(HOPPER_DATASET_ID, episodes, "Hopper-v5", HOPPER_MAX_STEPS,
                        ref_min_score=REF_MIN, ref_max_score=REF_MAX)
  return TinyDataset(HOPPER_DATASET_ID, episodes, REF_MIN, REF_MAX, "Hopper-v5")


_unique = itertools.count()


@pytest.fixture(scope="session")
def make_dataset(isolated_stores) -> Callable[..., TinyDataset]:
  """Factory for extra datasets: `make_dataset(name, env_id="Hopper-v5", seeds=(0, 1), max_steps=10,
  edit=None, refs=(None, None))`. `edit(episodes) -> episodes` may corrupt the raw data (e.g. put a
  NaN in) before it is written. Ids are made unique per call."""

  def _make(name: str, env_id: str = "Hopper-v5", seeds: Sequence[int] = (0, 1),
            max_steps: int = 10, edit: Optional[Callable] = None,
            refs=(None, None)) -> TinyDataset:
    episodes = collect_random_episodes(env_id, seeds, max_steps)
    if edit is not None:
      episodes = edit(episodes)
    dataset_id = f"test/{name}-{next(_unique)}-v0"
    create_minari_dataset(dataset_id, episodes, env_id, max_steps, ref_min_score=refs[0],
                          ref_max_score=refs[1])
    return TinyDataset(dataset_id, list(episodes), refs[0], refs[1], env_id)

  return _make


@pytest.fixture(scope="session")
def halfcheetah_dataset(make_dataset) -> TinyDataset:
  """A dataset of a different env (obs 17 / act 6) to check against Hopper-v5 (obs 11 / act 3)."""
  return make_dataset("halfcheetah-random", env_id="HalfCheetah-v5", seeds=(0,), max_steps=8)


class Crash(Exception):
  """What `crash_at` raises: a stand-in for SIGKILL inside the test process."""


@pytest.fixture
def crash_at(monkeypatch):
  """`crash_at(phase, step)`: the next loop of `phase` dies when it reaches `step`, by the real
  fault-injection hook (O2O_JAX_FAULT, `resume.FaultInjection`) sending SIGUSR1, whose handler here
  raises `Crash` (no snapshot is taken, as after a SIGKILL). `crash_at(None)` disarms it."""
  import signal

  def handler(signum, frame):
    raise Crash(f"crashed by the fault injection ({signal.Signals(signum).name})")

  saved = signal.signal(signal.SIGUSR1, handler)

  def arm(phase, step=0):
    if phase is None:
      monkeypatch.delenv("O2O_JAX_FAULT", raising=False)
    else:
      monkeypatch.setenv("O2O_JAX_FAULT", f"SIGUSR1:{phase}:{step}")

  yield arm
  signal.signal(signal.SIGUSR1, saved)


@pytest.fixture(scope="session")
def same_outputs():
  """`same_outputs(run_dir, ref_dir)` asserts that two runs of a phase wrote the same metrics.csv rows
  (without the wall-clock perf/* columns) and the same latest result checkpoint, bit for bit."""
  import csv

  import jax
  import orbax.checkpoint as ocp

  def metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
      return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in csv.DictReader(f)]

  def checkpoint(run_dir):
    ckpt = run_dir / "checkpoints"
    step = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    return step, jax.tree_util.tree_leaves(ocp.PyTreeCheckpointer().restore(str(ckpt / str(step) / "state")))

  def check(run_dir, ref_dir):
    assert metrics(run_dir) == metrics(ref_dir), run_dir
    (step, leaves), (ref_step, ref_leaves) = checkpoint(run_dir), checkpoint(ref_dir)
    assert step == ref_step and len(leaves) == len(ref_leaves), run_dir
    for a, b in zip(leaves, ref_leaves):
      np.testing.assert_array_equal(a, b)

  return check


# Every XLA executable the CPU backend builds keeps its own memory mappings (code, constants) for as
# long as JAX's caches hold it, and JAX caches every program a test jits. Linux caps a process at
# vm.max_map_count = 65,530 mappings; one pytest-xdist worker that runs half the suite passed it and
# died with a segfault inside XLA's compiler (measured in a clean-clone CI: worker maps 7.6k after
# 1 min, 43.5k after 20 min, crash at 88%). Clearing JAX's caches releases them (measured on three
# modules in one process: 6,696 -> 11,116 -> 20,022 maps without, back to ~930 after each module
# with). So the caches are cleared after each test module, and after any test that leaves the worker
# above MAP_COUNT_CLEAR_AT (one module reached 31,871 maps on its own). The persistent compilation
# cache above still serves the recompiles. O2O_JAX_TEST_MAPS_LOG=<file> appends
# "pid module maps-before maps-after" per clear to watch it.
MAP_COUNT_CLEAR_AT = 20_000


def _memory_map_count() -> int:
  try:
    with open(f"/proc/{os.getpid()}/maps") as f:
      return sum(1 for _ in f)
  except OSError:      # not Linux
    return -1


def _release_compiled_programs(where: str) -> None:
  import gc
  import jax
  before = _memory_map_count()
  jax.clear_caches()
  gc.collect()
  log = os.environ.get("O2O_JAX_TEST_MAPS_LOG")
  if log:
    with open(log, "a") as f:
      f.write(f"{os.getpid()} {where} {before} {_memory_map_count()}\n")


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs_per_module(request):
  yield
  _release_compiled_programs(request.module.__name__)


@pytest.fixture(autouse=True)
def release_compiled_programs_past_threshold(request):
  yield
  if _memory_map_count() > MAP_COUNT_CLEAR_AT:
    _release_compiled_programs(request.node.nodeid)
