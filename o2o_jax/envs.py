"""Gymnasium env construction, one host env per seed, batched evaluation, dataset/env checks.

Envs are plain gymnasium envs stepped on the host (MuJoCo is not jittable); everything that involves
a network is batched over seeds (and over evaluation episodes) into one device call per env step.
Episode ends are handled here, not by a vector env's auto-reset, so a reset observation is never
stored as a transition and the final observation of a truncated episode stays real.

Hopper, Walker2d and HalfCheetah (v5, any kwargs, no extra wrappers) are stepped together: all envs of
a `SeedEnvs` or an `Evaluator` advance in one `mujoco.batch.Batch` call on a C++ thread pool, and their
observations, rewards and terminations are computed for all envs at once with numpy (`MujocoBatch`).
The results are bit-identical to each env's own `step` (tests/test_accelerator.py compares them);
resets still go through gymnasium. Other envs are stepped one by one as before.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable, List, Optional, Tuple

import numpy as np

from o2o_jax.errors import DatasetError, O2OError

ENV_IDS = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
}


def resolve_env_id(name: str) -> str:
  """'hopper' -> 'Hopper-v5'; full gymnasium ids pass through."""
  if name in ENV_IDS:
    return ENV_IDS[name]
  if "-v" in name:
    return name
  raise O2OError(f"unknown env '{name}': use one of {', '.join(ENV_IDS)} or a gymnasium id such as "
                 "Hopper-v5")


_MUJOCO_WARNINGS_SEEN: set = set()


def _mujoco_warning_once(message: str) -> None:
  if message not in _MUJOCO_WARNINGS_SEEN:
    _MUJOCO_WARNINGS_SEEN.add(message)
    print(f"WARNING (MuJoCo, shown once): {message}", file=sys.stderr)


def _dedupe_mujoco_warnings() -> None:
  """MuJoCo prints its warnings on every model compile; HalfCheetah-v5's XML ('settotalmass is
  deprecated') would otherwise fill a run's log once per env built. A handler the user installed
  is left alone."""
  try:
    import mujoco
  except ImportError:
    return
  if mujoco.get_mju_user_warning() is None:
    mujoco.set_mju_user_warning(_mujoco_warning_once)


def make_env(env_id: str, spec_json: Optional[str] = None, max_episode_steps: Optional[int] = None):
  """Builds an env whose actions live in [-1, 1]. `spec_json` (a dataset's stored EnvSpec) wins, so the
  env is exactly the one the data came from (kwargs included)."""
  import gymnasium as gym
  from gymnasium.wrappers import RescaleAction
  _dedupe_mujoco_warnings()
  if spec_json:
    from gymnasium.envs.registration import EnvSpec
    env = gym.make(EnvSpec.from_json(spec_json), max_episode_steps=max_episode_steps)
  else:
    try:
      env = gym.make(env_id, max_episode_steps=max_episode_steps)
    except gym.error.Error as e:
      raise O2OError(f"cannot make env '{env_id}': {e}") from None
  space = env.action_space
  if not (np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0)):
    env = RescaleAction(env, -1.0, 1.0)
  return env


def env_dims(env) -> Tuple[int, int]:
  return int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))


def check_dataset_matches_env(dataset, env) -> None:
  """Raises DatasetError when the dataset's observation/action sizes differ from the env's."""
  obs_dim, act_dim = env_dims(env)
  if (dataset.observation_dim, dataset.action_dim) != (obs_dim, act_dim):
    raise DatasetError(
        f"dataset '{dataset.dataset_id}' has observations of size {dataset.observation_dim} and actions "
        f"of size {dataset.action_dim}, but env {env.spec.id if env.spec else env} has {obs_dim} and "
        f"{act_dim}: pass the env the dataset was collected on (its id is stored in the dataset)")


def dataset_env_id(dataset) -> str:
  env_id = dataset.env_id
  if env_id is None:
    raise DatasetError(f"dataset '{dataset.dataset_id}' stores no env spec: pass --env explicitly")
  return env_id


# ----------------------------------------------------------------------------- batched MuJoCo stepping

ENV_THREADS_VAR = "O2O_JAX_ENV_THREADS"
MIN_THREADED_CPUS = 8


def env_threads(num_envs: int) -> int:
  """Threads that step `num_envs` MuJoCo simulations: $O2O_JAX_ENV_THREADS if set (a count; 'off'
  steps every env through gymnasium, one by one), else one per simulation up to the CPUs this process
  may use, on machines of at least `MIN_THREADED_CPUS` CPUs (with fewer, waking a thread costs more
  than the step it takes over: measured on 2 shared cores, 5 Hopper envs took 290 us on 1 thread
  and 380 us on 2). The threads sleep between calls, and the online loop never steps envs while the
  device computes, so they take no CPU from XLA."""
  given = os.environ.get(ENV_THREADS_VAR, "")
  if given.isdigit() and int(given) > 0:
    return min(num_envs, int(given))
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:   # not Linux
    cpus = os.cpu_count() or 1
  return max(1, min(num_envs, cpus)) if cpus >= MIN_THREADED_CPUS else 1


def _locomotion_kind(env):
  """('hopper' | 'walker2d' | 'halfcheetah', unwrapped env, max_episode_steps) when `env` is one of
  gymnasium's v5 locomotion envs wrapped only by `gym.make`'s passive wrappers (time limit, order
  enforcing, env checker) and not rendering; else None. Subclasses are refused: they may change the
  step."""
  try:
    from gymnasium.envs.mujoco import half_cheetah_v5, hopper_v5, walker2d_v5
    from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit
  except ImportError:
    return None
  max_steps, layer = None, env
  while layer is not getattr(layer, "unwrapped", layer):
    if type(layer) is TimeLimit:
      max_steps = layer._max_episode_steps
    elif type(layer) not in (OrderEnforcing, PassiveEnvChecker):
      return None
    layer = layer.env
  kinds = {hopper_v5.HopperEnv: "hopper", walker2d_v5.Walker2dEnv: "walker2d",
           half_cheetah_v5.HalfCheetahEnv: "halfcheetah"}
  kind = kinds.get(type(layer))
  if kind is None or getattr(layer, "render_mode", None) is not None:
    return None
  return kind, layer, max_steps


_PARAMS = {   # the attributes each kind's step reads (gymnasium 1.x, v5 envs)
    "hopper": ("_forward_reward_weight", "_ctrl_cost_weight", "_healthy_reward",
               "_terminate_when_unhealthy", "_healthy_state_range", "_healthy_z_range",
               "_healthy_angle_range", "_exclude_current_positions_from_observation", "frame_skip"),
    "walker2d": ("_forward_reward_weight", "_ctrl_cost_weight", "_healthy_reward",
                 "_terminate_when_unhealthy", "_healthy_z_range", "_healthy_angle_range",
                 "_exclude_current_positions_from_observation", "frame_skip"),
    "halfcheetah": ("_forward_reward_weight", "_ctrl_cost_weight",
                    "_exclude_current_positions_from_observation", "frame_skip"),
}


class MujocoBatch:
  """Steps gymnasium's Hopper, Walker2d or HalfCheetah (v5) envs of one configuration together.

  The simulations run in one `mujoco.batch.Batch` (one MjData each, on each env's own MjModel, on
  `env_threads(n)` threads; MuJoCo documents the batch as bit-identical to a loop of `mj_step`), and
  the observation, reward and termination of every env are computed with numpy over all envs at
  once, each in the same floating-point operations as the env's own `step`. Resets stay with
  gymnasium (its seeding and reset noise): after an env is reset, `load(i)` copies its state in.
  `create` returns None for anything else (other envs, other wrappers, rendering, mixed settings),
  and the caller then steps the envs one by one."""

  def __init__(self, kind: str, units, max_steps: Optional[int], nthread: int):
    import mujoco
    from mujoco import batch as mj_batch
    self.kind, self.units, self.max_steps = kind, units, max_steps
    self.p = {name: getattr(units[0], name) for name in _PARAMS[kind]}
    self.dt = units[0].dt
    self.frame_skip = units[0].frame_skip
    self.batch = mj_batch.Batch(units[0].model, len(units), nthread=nthread, persistent=True)
    self.batch.set_models([u.model for u in units])
    self.qpos, self.qvel, self.ctrl = (self.batch.bind(f) for f in ("qpos", "qvel", "ctrl"))
    self._spec = mujoco.mjtState.mjSTATE_INTEGRATION
    self._get_state = mujoco.mj_getState
    for i in range(len(units)):
      self.load(i)

  @classmethod
  def create(cls, envs, nthread: Optional[int] = None) -> Optional["MujocoBatch"]:
    if not envs or os.environ.get(ENV_THREADS_VAR) == "off":
      return None
    found = [_locomotion_kind(e) for e in envs]
    if any(f is None for f in found) or len({(f[0], f[2]) for f in found}) != 1:
      return None
    kind, _, max_steps = found[0]
    units = [f[1] for f in found]
    try:
      from mujoco import batch as _  # noqa: F401  (MuJoCo >= 3.5)
    except ImportError:
      return None

    def settings(u):
      return tuple(repr(getattr(u, name)) for name in _PARAMS[kind]) + (repr(u.dt),)
    if len({settings(u) for u in units}) != 1:
      return None
    return cls(kind, units, max_steps, env_threads(len(units)) if nthread is None else nthread)

  def load(self, i: int) -> None:
    """Env i's current state (after a gymnasium reset) becomes simulation i's."""
    u = self.units[i]
    self._get_state(u.model, u.data, self.batch.state[i], self._spec)

  def step(self, actions: np.ndarray, ids: Optional[np.ndarray] = None):
    """Steps every env (or those in `ids`) with `actions` (one row each). Returns (observations
    float64, rewards float64, terminated bool), one row per stepped env, as the envs' own `step`
    computes them."""
    actions = np.asarray(actions)
    if ids is None:
      x_before = self.qpos[:, 0].copy()
      self.ctrl[:] = actions
      self.batch.step(nstep=self.frame_skip)
      qpos, qvel = self.qpos, self.qvel
    else:
      x_before = self.qpos[ids, 0]
      self.ctrl[ids] = actions
      self.batch.step(ids, nstep=self.frame_skip)
      qpos, qvel = self.qpos[ids], self.qvel[ids]
    p = self.p
    x_velocity = (qpos[:, 0] - x_before) / self.dt
    forward_reward = p["_forward_reward_weight"] * x_velocity
    ctrl_cost = p["_ctrl_cost_weight"] * np.sum(np.square(actions), axis=1)
    position = qpos[:, 1:] if p["_exclude_current_positions_from_observation"] else qpos
    if self.kind == "halfcheetah":
      obs = np.concatenate((position, qvel), axis=1)
      return obs, forward_reward - ctrl_cost, np.zeros(len(qpos), bool)
    obs = np.concatenate((position, np.clip(qvel, -10, 10)), axis=1)
    z, angle = qpos[:, 1], qpos[:, 2]
    (min_z, max_z), (min_angle, max_angle) = p["_healthy_z_range"], p["_healthy_angle_range"]
    healthy = (min_z < z) & (z < max_z) & (min_angle < angle) & (angle < max_angle)
    if self.kind == "hopper":
      state = np.concatenate((qpos, qvel), axis=1)[:, 2:]
      min_state, max_state = p["_healthy_state_range"]
      healthy &= np.all(np.logical_and(min_state < state, state < max_state), axis=1)
    healthy_reward = healthy * p["_healthy_reward"]
    reward = (forward_reward + healthy_reward) - ctrl_cost
    terminated = ~healthy & bool(p["_terminate_when_unhealthy"])
    return obs, reward, terminated

  def close(self) -> None:
    self.batch = self.qpos = self.qvel = self.ctrl = None


class SeedEnvs:
  """One env per seed on the host, stepped together (`MujocoBatch`) where the env allows it, else one
  by one; auto-resets ended episodes.

  `step` returns the real next observation (for the transition) and, separately, the observation
  to act on next (the reset observation where an episode ended)."""

  def __init__(self, make: Callable[[], object], num_seeds: int, seed: int):
    from o2o_jax import distributed
    self.envs = [make() for _ in range(num_seeds)]
    self.seed = seed
    # Env seeds follow the global seed index (`distributed`: a process's slice of a larger run).
    self.index = distributed.seed_offset(num_seeds) + np.arange(num_seeds)
    self.obs = np.stack([e.reset(seed=seed * 1000 + int(i))[0] for i, e in zip(self.index, self.envs)]
                        ).astype(np.float32)
    self.episode_return = np.zeros(num_seeds)
    self.episode_length = np.zeros(num_seeds, np.int64)
    self.completed: List[List[float]] = [[] for _ in range(num_seeds)]
    for i, e in zip(self.index, self.envs):
      e.action_space.seed(seed * 1000 + int(i))
    self.batch = MujocoBatch.create(self.envs)     # None: stepped one by one through gymnasium

  def random_actions(self) -> np.ndarray:
    return np.stack([e.action_space.sample() for e in self.envs]).astype(np.float32)

  def step(self, actions: np.ndarray):
    if self.batch is not None:
      return self._step_batch(actions)
    n = len(self.envs)
    next_obs = np.empty_like(self.obs)
    rewards = np.empty(n, np.float32)
    terminated = np.empty(n, bool)
    truncated = np.empty(n, bool)
    obs_after = np.empty_like(self.obs)
    for i, env in enumerate(self.envs):
      o, r, term, trunc, _ = env.step(actions[i])
      next_obs[i], rewards[i], terminated[i], truncated[i] = o, r, term, trunc
      self.episode_return[i] += r
      self.episode_length[i] += 1
      if term or trunc:
        self.completed[i].append(float(self.episode_return[i]))
        self.episode_return[i] = 0.0
        self.episode_length[i] = 0
        o, _ = env.reset()
      obs_after[i] = o
    self.obs = obs_after
    return next_obs, rewards, terminated, truncated

  def _step_batch(self, actions: np.ndarray):
    """`step` with every env advanced in one `MujocoBatch` call (the same results)."""
    obs, r, terminated = self.batch.step(actions)
    self.episode_return += r
    self.episode_length += 1
    max_steps = self.batch.max_steps
    truncated = (self.episode_length >= max_steps if max_steps is not None
                 else np.zeros(len(self.envs), bool))
    next_obs = obs.astype(np.float32)
    obs_after = next_obs.copy()
    for i in np.flatnonzero(terminated | truncated):
      self.completed[i].append(float(self.episode_return[i]))
      self.episode_return[i] = 0.0
      self.episode_length[i] = 0
      obs_after[i] = self.envs[i].reset()[0]
      self.batch.load(i)
    self.obs = obs_after
    return next_obs, r.astype(np.float32), terminated, truncated

  def restart(self, epoch: int) -> None:
    """Ends every seed's episode here (a time-limit cut: the stored transitions bootstrap) and
    resets the envs and action spaces with seeds derived from (seed, epoch). The online loop does
    this at each snapshot, so a run resumed from a snapshot sees the very same env streams."""
    for j, env in enumerate(self.envs):
      reset_seed = (self.seed * 1000 + int(self.index[j])) * 7919 + epoch
      self.obs[j] = env.reset(seed=reset_seed)[0]
      env.action_space.seed(reset_seed)
      if self.batch is not None:
        self.batch.load(j)
    self.episode_return[:] = 0.0
    self.episode_length[:] = 0
    self.completed = [[] for _ in self.envs]   # episode statistics restart too (as after a resume)

  def at_episode_start(self) -> bool:
    return bool((self.episode_length == 0).all())

  def close(self):
    if self.batch is not None:
      self.batch.close()
    for e in self.envs:
      e.close()


class Evaluator:
  """Runs `episodes` evaluation episodes for each of S seeds, all S*E envs batched in one policy call
  per step, on envs separate from the training envs. Fixed reset seeds make evaluations comparable
  (across seeds, checkpoints and runs)."""

  def __init__(self, make: Callable[[], object], num_seeds: int, episodes: int, seed: int = 10_000):
    self.num_seeds, self.episodes, self.seed = num_seeds, episodes, seed
    self.envs = [make() for _ in range(num_seeds * episodes)]
    self.obs_dim, self.act_dim = env_dims(self.envs[0])
    self.batch = None    # a MujocoBatch, made at the first run (after the envs' first reset)

  def run(self, policy: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`policy` maps observations (S, E, obs_dim) to actions (S, E, act_dim). Returns (S, E) returns."""
    s, e = self.num_seeds, self.episodes
    obs = np.stack([env.reset(seed=self.seed + (i % e))[0] for i, env in enumerate(self.envs)])
    if self.batch is None:
      self.batch = MujocoBatch.create(self.envs) or False
    if self.batch:
      return self._run_batch(policy, obs.reshape(s, e, -1).astype(np.float32))
    obs = obs.reshape(s, e, -1).astype(np.float32)
    returns = np.zeros(s * e)
    active = np.ones(s * e, bool)
    while active.any():
      actions = np.asarray(policy(obs)).reshape(s * e, -1)
      flat = obs.reshape(s * e, -1)
      for i in np.nonzero(active)[0]:
        o, r, term, trunc, _ = self.envs[i].step(actions[i])
        returns[i] += r
        flat[i] = o
        if term or trunc:
          active[i] = False
      obs = flat.reshape(s, e, -1)
    return returns.reshape(s, e)

  def _run_batch(self, policy, obs: np.ndarray) -> np.ndarray:
    """`run` with the active envs advanced in one `MujocoBatch` call per step (the same results)."""
    s, e = self.num_seeds, self.episodes
    for i in range(s * e):
      self.batch.load(i)
    returns = np.zeros(s * e)
    length = np.zeros(s * e, np.int64)
    active = np.arange(s * e)
    flat = obs.reshape(s * e, -1)
    max_steps = self.batch.max_steps
    while active.size:
      actions = np.asarray(policy(flat.reshape(s, e, -1))).reshape(s * e, -1)
      o, r, terminated = self.batch.step(actions[active], active)
      returns[active] += r
      length[active] += 1
      flat[active] = o
      ended = terminated | (length[active] >= max_steps if max_steps is not None else False)
      active = active[~ended]
    return returns.reshape(s, e)

  def close(self):
    if self.batch:
      self.batch.close()
    for env in self.envs:
      env.close()


def spec_id(spec_json: Optional[str]) -> Optional[str]:
  if not spec_json:
    return None
  try:
    return json.loads(spec_json)["id"]
  except (ValueError, KeyError, TypeError):
    return None
