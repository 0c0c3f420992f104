"""The Lagrange multiplier of OCR-CFT's constrained fine-tuning, shared by O2SAC and O2TD3.

  L(lambda) = min_{lambda >= 0} -lambda E[w (f - tau)],  w = |omega - 1(u > 0)|,  u = tau - f   (eqs. 39/47 with 49)

as the released code computes it: lambda = exp(log lambda) (so lambda >= 0 with no clamp), the loss
lambda * mean(w * (tau - f)) with f detached, w = 0.3 on samples that satisfy the constraint (f < tau)
and 0.7 on samples that violate it (the paper's eq. 49 writes the indicator reversed; the code
matches the paper's wording "a large weight to negative coefficients"), Adam with lr 5e-5 on log lambda.
Gradient descent on log lambda raises lambda while the constraint is violated and lets it decay toward
0 while it holds.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from o2o_jax.train_state import TrainState, make_train_state


def init(initial_value: float = 1.0, learning_rate: float = 5e-5) -> TrainState:
  return make_train_state(None, {"log_lambda": jnp.log(jnp.float32(initial_value))}, learning_rate)


def value(state: TrainState) -> jax.Array:
  return jnp.exp(state.params["log_lambda"])


def constraint_weights(f, tau, omega: float = 0.7):
  """w = |omega - 1(tau - f > 0)|: 1 - omega where the constraint holds, omega where it is violated."""
  return jnp.abs(omega - (tau - f > 0).astype(f.dtype))


def loss(log_lambda, f, tau, omega: float = 0.7):
  """lambda * mean(w * (tau - f)), f and w detached (eq. 39/47 with the weighting of eq. 49)."""
  f = jax.lax.stop_gradient(f)
  return jnp.exp(log_lambda) * jnp.mean(constraint_weights(f, tau, omega) * (tau - f))


def update(state: TrainState, f, tau, omega: float = 0.7):
  """One Adam step on log lambda given constraint values f (any shape) and the threshold tau."""
  grads = jax.grad(lambda p: loss(p["log_lambda"], f, tau, omega))(state.params)
  state = state.apply_gradients(grads=grads)
  return state, {"lambda": value(state), "constraint": jnp.mean(f), "tau": jnp.asarray(tau, jnp.float32)}


def tau_schedule(env_step, tau_start: float, tau_end: float, steps: int = 100_000):
  """tau_t = min(tau_end, tau_start + (tau_end - tau_start) t / steps): linear over the first
  `steps` env steps of fine-tuning, flat afterwards."""
  frac = jnp.minimum(jnp.asarray(env_step, jnp.float32) / steps, 1.0)
  return tau_start + (tau_end - tau_start) * frac
