"""An offline dataset prepared for a training phase: observations normalised, rewards transformed, the
transitions on the device once, and the dataset's evaluation environment beside them.

Every phase of a run prepares its data the same way from the previous phase's checkpoint metadata
(observation statistics, `reward_transform`), so offline and online rows see one transform. A reward
transform is r * scale + shift; the online phase's buffers hold r * scale only (`Data.without_shift`)
and the shift is added to every batch inside the update (`shift_rewards`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Tuple

import jax.numpy as jnp
import numpy as np

from o2o_jax import envs
from o2o_jax.data.minari_io import load_dataset
from o2o_jax.errors import O2OError
from o2o_jax.types import Transition


@dataclasses.dataclass
class Data:
  dataset: Any
  env_id: str
  make_env: Callable
  obs_mean: np.ndarray
  obs_std: np.ndarray
  reward_scale: float
  device: Transition           # normalised observations, rewards r * scale + shift, on the device once
  reward_shift: float = 0.0

  def normalized_score(self, returns):
    return self.dataset.normalized_score(returns)

  def without_shift(self) -> "Data":
    """The same data with rewards r * scale only (what the online phase's buffers hold; the shift is
    added to every batch inside the update, `shift_rewards`). Shares every other array."""
    if not self.reward_shift:
      return self
    rewards = jnp.asarray(self.dataset.transitions.rewards * self.reward_scale)
    return dataclasses.replace(self, device=self.device.replace(rewards=rewards), reward_shift=0.0)


def shift_rewards(update: Callable, shift: float) -> Callable:
  """`update(state, batch, key, ...)` with `shift` added to the batch's rewards (the additive part of
  the reward transform, e.g. AntMaze's 10r - 5 or r - 1), for buffers holding r * scale."""
  if not shift:
    return update

  def shifted(state, batch, key, *args, **kwargs):
    return update(state, batch.replace(rewards=batch.rewards + jnp.float32(shift)), key, *args, **kwargs)
  return shifted


def reward_transform(meta: Dict[str, Any]) -> Tuple[float, float]:
  """(scale, shift) of a checkpoint's reward transform (older checkpoints: no shift)."""
  t = meta["reward_transform"]
  return float(t["scale"]), float(t.get("shift", 0.0))


def load_data(dataset_id: str, obs_mean=None, obs_std=None, reward_scale: float = 1.0,
              normalize_states: bool = True, batch_size: int = 256,
              reward_shift: float = 0.0) -> Data:
  dataset = load_dataset(dataset_id)
  if batch_size > dataset.size:
    raise O2OError(f"--batch_size ({batch_size}) is larger than the dataset ({dataset.size} transitions)")
  env_id = envs.dataset_env_id(dataset)
  make_env = lambda: envs.make_env(env_id, dataset.eval_env_spec)
  probe = make_env()
  envs.check_dataset_matches_env(dataset, probe)
  probe.close()
  if obs_mean is None:
    obs_mean = dataset.obs_mean if normalize_states else np.zeros_like(dataset.obs_mean)
    obs_std = dataset.obs_std if normalize_states else np.ones_like(dataset.obs_std)
  mean, std = np.asarray(obs_mean, np.float32), np.asarray(obs_std, np.float32)
  t = dataset.transitions
  device = Transition(observations=jnp.asarray((t.observations - mean) / std),
                      actions=jnp.asarray(t.actions),
                      rewards=jnp.asarray(t.rewards * reward_scale + np.float32(reward_shift)),
                      next_observations=jnp.asarray((t.next_observations - mean) / std),
                      terminals=jnp.asarray(t.terminals))
  return Data(dataset, env_id, make_env, mean, std, float(reward_scale), device, float(reward_shift))
