"""Pytrees shared by every module: transitions/batches, and small PRNG helpers."""
from __future__ import annotations

from typing import Any, Dict

import flax.struct
import jax
import jax.numpy as jnp

PRNGKey = jax.Array
Params = Any
Metrics = Dict[str, jax.Array]


@flax.struct.dataclass
class Transition:
  """A batch (or a whole dataset) of transitions; every leaf has the transition axis first.

  `terminals` is 1.0 where the episode *terminated* (bootstrapping stops). Time-limit truncations are
  not terminals: their next observation is real and the TD target bootstraps from it.
  """
  observations: jax.Array
  actions: jax.Array
  rewards: jax.Array
  next_observations: jax.Array
  terminals: jax.Array

  @property
  def masks(self) -> jax.Array:
    """1 - terminal: the factor in front of gamma * V(s') in a TD target."""
    return 1.0 - self.terminals

  def __len__(self) -> int:
    return self.rewards.shape[0]


def empty_transitions(size: int, obs_dim: int, act_dim: int, leading=()) -> Transition:
  shape = tuple(leading) + (size,)
  return Transition(
      observations=jnp.zeros(shape + (obs_dim,), jnp.float32),
      actions=jnp.zeros(shape + (act_dim,), jnp.float32),
      rewards=jnp.zeros(shape, jnp.float32),
      next_observations=jnp.zeros(shape + (obs_dim,), jnp.float32),
      terminals=jnp.zeros(shape, jnp.float32),
  )


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
  """One independent PRNG key per seed of a vmapped run (seed axis first; in a multi-process run,
  this process's slice, see `distributed.split_seeds`)."""
  from o2o_jax import distributed
  return distributed.split_seeds(jax.random.PRNGKey(seed), num_seeds)


def take_index(tree, index):
  """Leaf-wise `x[index]` — picks one seed out of a seed-vmapped pytree."""
  return jax.tree_util.tree_map(lambda x: x[index], tree)


def stack_trees(trees):
  """Stacks pytrees of equal structure along a new leading axis."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)
