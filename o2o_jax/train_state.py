"""The optimiser-carrying train state: a building block below the agents, so that library modules such
as `lagrange` can hold one without importing an agent package."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """flax's TrainState (params, apply_fn, tx, opt_state, step)."""


def make_train_state(module, params, learning_rate, grad_clip: float | None = None,
                     eps: float = 1e-8) -> TrainState:
  tx = optax.adam(learning_rate, eps=eps)
  if grad_clip is not None:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
  apply_fn = None if module is None else module.apply
  return strong_types(TrainState.create(apply_fn=apply_fn, params=params, tx=tx))


def with_learning_rate(state: TrainState, learning_rate) -> TrainState:
  """`state` stepping with `make_train_state`'s Adam at `learning_rate` (a rate or a schedule), its
  moments and update count kept: a restored optimizer given an online Config's rate (the optimizer
  state's form must stay: a constant rate for a constant one, a schedule for a schedule). The
  optimizer is one object per rate, so states made by separate runs in one process share their
  static fields and the jitted loops compiled for one run serve the next."""
  return state.replace(tx=_adam(learning_rate))


@functools.lru_cache(maxsize=None)
def _adam(learning_rate):
  return optax.adam(learning_rate, eps=1e-8)


def strong_types(tree):
  """Replaces weakly-typed leaves (python scalars such as TrainState.step=0) by strongly-typed
  arrays: a weak leaf turns strong after the first update, which would trigger a recompilation."""
  return jax.tree_util.tree_map(lambda x: jnp.array(x, dtype=jnp.asarray(x).dtype), tree)
