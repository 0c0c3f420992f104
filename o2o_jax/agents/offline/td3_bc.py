"""TD3+BC (Fujimoto & Gu, 2021): TD3 with a behaviour-cloning term in the actor loss.

  actor: L(theta) = -lambda * E_D[Q_1(s, pi(s))] + E_{D,j}[(pi(s)_j - a_j)^2],
         lambda = alpha / E|Q_1(s, pi(s))|  (detached), alpha = 2.5
The BC term is the mean over batch *and* action dimensions (`F.mse_loss(pi, action)` in the authors'
and CORL's `TD3_BC.train`); alpha = 2.5 was tuned for that scale.
The critic, target smoothing and delayed updates are TD3's (`td3.make_update`): nothing is copied.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from o2o_jax import networks
from o2o_jax.agents.online import td3


@dataclasses.dataclass(frozen=True)
class Config(td3.Config):
  alpha: float = 2.5


State = td3.State
init = td3.init
act = td3.act


def q_normalizer(q, alpha: float):
  """lambda = alpha / mean|Q| with the mean detached (TD3+BC's scale-free Q weight)."""
  return alpha / jax.lax.stop_gradient(jnp.abs(q).mean())


def actor_objective(actor_params, state: td3.State, batch):
  actions = state.actor.apply_fn(actor_params, batch.observations)
  q = networks.first_critic(state.critic.apply_fn, state.critic.params, batch.observations, actions)
  lam = q_normalizer(q, state.config.alpha)
  bc = jnp.mean(jnp.square(actions - batch.actions))
  loss = -lam * q.mean() + bc
  return loss, {"actor_loss": loss, "bc_loss": bc, "lambda": lam}


update = td3.make_update(actor_objective)
