"""Pieces every agent shares: the optimiser-carrying train state (from `o2o_jax.train_state`) and the
critic regression loss."""
from __future__ import annotations

from o2o_jax import losses
# Re-exported: every agent takes the train state from here; it lives in the library layer so that
# building blocks (lagrange) need no agent import.
from o2o_jax.train_state import (TrainState, make_train_state, strong_types,  # noqa: F401
                                  with_learning_rate)


def critic_loss(critic_params, state, batch, targets, key=None):
  """sum_k E[(Q_k(s, a) - y)^2] for the critic ensemble `state.critic` (targets already computed)."""
  del key
  q = state.critic.apply_fn(critic_params, batch.observations, batch.actions)
  loss = losses.critic_mse(q, targets)
  return loss, {"critic_loss": loss, "q_mean": q.mean(), "target_mean": targets.mean()}

