"""AWAC (Nair et al., 2020), CORL's settings.

  critic: y = r + gamma (1-d) min_k Q'_k(s', a'),  a' ~ pi(.|s')   (no entropy term)
  actor:  L_pi = -E_D[ min(exp(A / lambda), 100) log pi(a|s) ],
          A = min_k Q_k(s, a) - min_k Q_k(s, a~),  a~ ~ pi(.|s),  lambda = 1/3 (MuJoCo)
Gaussian actor (no tanh, state-independent log-std), 3x256 networks; actions clipped at acting time.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp

from o2o_jax import losses, networks
from o2o_jax.agents.common import TrainState, critic_loss, make_train_state
from o2o_jax.agents.offline.iql import EXP_ADV_MAX
from o2o_jax.types import PRNGKey, Transition


@dataclasses.dataclass(frozen=True)
class Config:
  hidden_dims: Sequence[int] = (256, 256, 256)
  actor_lr: float = 3e-4
  critic_lr: float = 3e-4
  discount: float = 0.99
  tau: float = 0.005
  awac_lambda: float = 1.0 / 3.0
  num_critics: int = 2


@flax.struct.dataclass
class State:
  actor: TrainState
  critic: TrainState
  target_critic_params: dict
  step: jax.Array
  config: Config = flax.struct.field(pytree_node=False)


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config()) -> State:
  hidden = tuple(config.hidden_dims)
  actor = networks.GaussianActor(act_dim, hidden, tanh_mean=False)
  critic = networks.CriticEnsemble(config.num_critics, hidden)
  ka, kc = jax.random.split(key)
  obs, act_ = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
  critic_params = critic.init(kc, obs, act_)
  return State(actor=make_train_state(actor, actor.init(ka, obs), config.actor_lr),
               critic=make_train_state(critic, critic_params, config.critic_lr),
               target_critic_params=critic_params, step=jnp.zeros((), jnp.int32), config=config)


def awac_weights(advantages, awac_lambda: float):
  """min(exp(A / lambda), 100), detached."""
  return jax.lax.stop_gradient(jnp.minimum(jnp.exp(advantages / awac_lambda), EXP_ADV_MAX))




def actor_loss(actor_params, state: State, batch: Transition, key: PRNGKey):
  dist = state.actor.apply_fn(actor_params, batch.observations)
  pi_actions = jax.lax.stop_gradient(jnp.clip(dist.sample(seed=key), -1.0, 1.0))
  q = lambda a: state.critic.apply_fn(state.critic.params, batch.observations, a).min(0)
  advantages = q(batch.actions) - q(pi_actions)
  weights = awac_weights(advantages, state.config.awac_lambda)
  loss = -jnp.mean(weights * dist.log_prob(batch.actions))
  return loss, {"actor_loss": loss, "awac_weight_mean": weights.mean()}


def update(state: State, batch: Transition, key: PRNGKey, next_value_hook=None):
  """One AWAC step (critic, actor, target).
  `next_value_hook(batch, next_actions, next_values) -> next_values`, when given, rewrites the
  bootstrap values of the TD target (SAMG's mixed target); None keeps the algorithm's own.
  """
  c = state.config
  k_next, k_actor = jax.random.split(key)
  next_actions = jnp.clip(state.actor.apply_fn(state.actor.params, batch.next_observations)
                          .sample(seed=k_next), -1.0, 1.0)
  next_q = state.critic.apply_fn(state.target_critic_params, batch.next_observations, next_actions).min(0)
  if next_value_hook is not None:
    next_q = next_value_hook(batch, next_actions, next_q)
  targets = losses.td_target(batch.rewards, batch.masks, c.discount, next_q)
  g, q_info = jax.grad(critic_loss, has_aux=True)(state.critic.params, state, batch, targets)
  state = state.replace(critic=state.critic.apply_gradients(grads=g))
  g, a_info = jax.grad(actor_loss, has_aux=True)(state.actor.params, state, batch, k_actor)
  state = state.replace(actor=state.actor.apply_gradients(grads=g), step=state.step + 1,
                        target_critic_params=losses.polyak(state.target_critic_params,
                                                           state.critic.params, c.tau))
  return state, {**q_info, **a_info}


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  dist = state.actor.apply_fn(state.actor.params, observations)
  return jnp.clip(dist.sample(seed=key) if explore else dist.mode(), -1.0, 1.0)
