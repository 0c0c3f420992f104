"""Discounted Monte-Carlo returns-to-go of an offline dataset, per episode: G_t = r_t + gamma G_{t+1}
within t's own episode. Every episode end stops the sum, whether the episode terminated, was
truncated by a time limit or was cut by the dataset (O2PPO's re-evaluation targets, paper §4.1).
Cal-QL's V^mu (`calibration_returns`) also cuts at observation discontinuities and has CORL's
sparse-reward case; `TransitionWithReturns` carries it beside each transition."""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax.types import Transition


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


# ----------------------------------------------------------------------------- Cal-QL's V^mu

@flax.struct.dataclass
class TransitionWithReturns(Transition):
  """Transitions with the Monte-Carlo return-to-go of each row (Cal-QL's V^mu(s), CORL
  `finetune/cal_ql.py` `ReplayBuffer._mc_returns`). A dataset of this type is sampled by the offline
  loop like any other (`replay.sample_offline` gathers every field), so its batches carry the returns."""
  mc_returns: jax.Array


def with_returns(transitions: Transition, mc_returns) -> TransitionWithReturns:
  return TransitionWithReturns(**{f.name: getattr(transitions, f.name)
                                  for f in dataclasses.fields(Transition)},
                               mc_returns=jnp.asarray(mc_returns, jnp.float32))


def discontinuity_flags(observations, next_observations, tol: float = 1e-6) -> np.ndarray:
  """1.0 at t where the next row does not continue t's trajectory, ||o_{t+1} - o'_t|| > tol (CORL
  `get_return_to_go`'s split of a flat dataset); the last row has no successor and is not flagged."""
  flags = np.zeros(len(observations), np.float32)
  gap = np.linalg.norm(np.asarray(observations[1:], np.float32)
                       - np.asarray(next_observations[:-1], np.float32), axis=-1)
  flags[:-1] = gap > tol
  return flags


def calibration_returns(dataset, discount: float, rewards: Optional[np.ndarray] = None,
                        failure_reward: Optional[float] = None) -> jax.Array:
  """Cal-QL's V^mu of every row (CORL `finetune/cal_ql.py` `get_return_to_go`): the discounted
  return-to-go G_t = r_t + gamma (1 - end_t) G_{t+1} of `mc_returns`, the sum cut at every episode
  end (terminated, truncated or cut by the dataset) and wherever the observations are discontinuous
  (`discontinuity_flags`; a Minari episode is continuous by construction, so this only matters for
  a dataset whose episodes are concatenated). `rewards`: the rewards to sum (default the dataset's),
  e.g. after the reward transform. `failure_reward` (CORL `is_sparse_reward`): a segment whose last
  reward equals it never reached the goal, and each of its rows gets r_fail / (1 - gamma)."""
  rewards = np.asarray(dataset.transitions.rewards if rewards is None else rewards, np.float32)
  ends = episode_end_flags(dataset.size, dataset.episode_starts, dataset.episode_lengths)
  ends = np.maximum(ends, discontinuity_flags(dataset.transitions.observations,
                                              dataset.transitions.next_observations))
  ends[-1] = 1.0                               # the dataset's end cuts the last segment
  g = jax.jit(mc_returns, static_argnums=2)(jnp.asarray(rewards), jnp.asarray(ends), discount)
  if failure_reward is None:
    return g
  segment = np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64)   # segment id of each row
  failed = rewards[np.flatnonzero(ends)] == np.float32(failure_reward)      # per segment, its last reward
  return jnp.where(jnp.asarray(failed[segment]), jnp.float32(failure_reward / (1.0 - discount)), g)
