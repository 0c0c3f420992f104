"""Discounted Monte-Carlo returns-to-go of an offline dataset, per episode: G_t = r_t + gamma G_{t+1}
within t's own episode. Every episode end stops the sum, whether the episode terminated, was
truncated by a time limit or was cut by the dataset (O2PPO's re-evaluation targets, paper §4.1)."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def episode_end_flags(size: int, episode_starts, episode_lengths) -> np.ndarray:
  """1.0 at the last transition of every episode (terminated, truncated or cut by the dataset)."""
  ends = np.zeros(size, np.float32)
  ends[np.asarray(episode_starts) + np.asarray(episode_lengths) - 1] = 1.0
  return ends


def mc_returns(rewards, episode_ends, discount: float):
  """G_t = r_t + gamma (1 - end_t) G_{t+1}: the discounted return to the end of t's episode."""
  def backward(g_next, x):
    r, end = x
    g = r + discount * (1.0 - end) * g_next
    return g, g

  _, g = jax.lax.scan(backward, jnp.zeros((), rewards.dtype), (rewards, episode_ends), reverse=True)
  return g


def returns_to_go(dataset, discount: float, rewards: Optional[np.ndarray] = None) -> jax.Array:
  """The discounted returns-to-go of every transition of `dataset` (an `OfflineDataset`), on the
  device: `mc_returns` over the dataset's episode boundaries. `rewards`: the rewards to sum, in
  dataset order (default: the dataset's own, as float32), e.g. after a reward scaling."""
  if rewards is None:
    rewards = np.asarray(dataset.transitions.rewards, np.float32)
  ends = episode_end_flags(dataset.size, dataset.episode_starts, dataset.episode_lengths)
  return jax.jit(mc_returns, static_argnums=2)(jnp.asarray(rewards), jnp.asarray(ends), discount)
