"""Gymnasium env construction, one host env per seed, batched evaluation, dataset/env checks.

Envs are plain gymnasium envs stepped on the host (MuJoCo is not jittable); everything that involves
a network is batched over seeds (and over evaluation episodes) into one device call per env step.
Episode ends are handled here, not by a vector env's auto-reset, so a reset observation is never
stored as a transition and the final observation of a truncated episode stays real.
"""
from __future__ import annotations

import json
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


class SeedEnvs:
  """One env per seed, stepped sequentially on the host; auto-resets ended episodes.

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

  def random_actions(self) -> np.ndarray:
    return np.stack([e.action_space.sample() for e in self.envs]).astype(np.float32)

  def step(self, actions: np.ndarray):
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

  def restart(self, epoch: int) -> None:
    """Ends every seed's episode here (a time-limit cut: the stored transitions bootstrap) and
    resets the envs and action spaces with seeds derived from (seed, epoch). The online loop does
    this at each snapshot, so a run resumed from a snapshot sees the very same env streams."""
    for j, env in enumerate(self.envs):
      reset_seed = (self.seed * 1000 + int(self.index[j])) * 7919 + epoch
      self.obs[j] = env.reset(seed=reset_seed)[0]
      env.action_space.seed(reset_seed)
    self.episode_return[:] = 0.0
    self.episode_length[:] = 0
    self.completed = [[] for _ in self.envs]   # episode statistics restart too (as after a resume)

  def at_episode_start(self) -> bool:
    return bool((self.episode_length == 0).all())

  def close(self):
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

  def run(self, policy: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`policy` maps observations (S, E, obs_dim) to actions (S, E, act_dim). Returns (S, E) returns."""
    s, e = self.num_seeds, self.episodes
    obs = np.stack([env.reset(seed=self.seed + (i % e))[0] for i, env in enumerate(self.envs)])
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

  def close(self):
    for env in self.envs:
      env.close()


def spec_id(spec_json: Optional[str]) -> Optional[str]:
  if not spec_json:
    return None
  try:
    return json.loads(spec_json)["id"]
  except (ValueError, KeyError, TypeError):
    return None
