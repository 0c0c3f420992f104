"""Soft Actor-Critic (Haarnoja et al., 2018) with automatic temperature, as pure functions.

  critic:      L(phi)   = sum_i E[(Q_i(s,a) - y)^2],  y = r + gamma (1-d) (min_j Q'_j(s',a') - alpha log pi(a'|s'))
  actor:       L(theta) = E[alpha log pi(a~|s) - min_i Q_i(s,a~)]
  temperature: L(alpha) = E[-log alpha (log pi(a~|s) + H_target)],  H_target = -|A|  (the references' form)

The pieces (`critic_loss`, `update_critic`, `update_actor`, `update_temperature`) are public so the
offline (CQL) and O2O (O2SAC, ACA, SAMG) agents compose them instead of copying them.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from o2o_jax import losses, networks
from o2o_jax.agents.common import TrainState, critic_loss, make_train_state
from o2o_jax.types import Metrics, PRNGKey, Transition


@dataclasses.dataclass(frozen=True)
class Config:
  hidden_dims: Sequence[int] = (256, 256)
  critic_hidden_dims: Optional[Sequence[int]] = None   # defaults to hidden_dims
  num_critics: int = 2
  actor_lr: float = 3e-4
  critic_lr: float = 3e-4
  alpha_lr: float = 3e-4
  discount: float = 0.99
  tau: float = 0.005
  init_alpha: float = 1.0
  autotune_alpha: bool = True
  target_entropy: Optional[float] = None               # None -> -|A|
  backup_entropy: bool = True                           # subtract alpha log pi in the TD target
  layer_norm: bool = False
  log_std_min: float = -5.0
  log_std_max: float = 2.0
  learnable_log_std_scale: bool = False                 # CORL's CQL actor
  orthogonal_init: bool = False
  # Named init schemes (networks.INIT_SCHEMES) of the actor and the critics; None: orthogonal_init's.
  actor_init: Optional[str] = None
  critic_init: Optional[str] = None


@flax.struct.dataclass
class State:
  actor: TrainState
  critic: TrainState
  target_critic_params: dict
  temperature: TrainState          # params: {"log_alpha": scalar}
  step: jax.Array
  config: Config = flax.struct.field(pytree_node=False)


def make_networks(config: Config, act_dim: int):
  actor = networks.TanhGaussianActor(act_dim, tuple(config.hidden_dims), config.log_std_min,
                                     config.log_std_max,
                                     learnable_log_std_scale=config.learnable_log_std_scale,
                                     **networks.scheme_options(config.actor_init, config.orthogonal_init))
  critic = networks.CriticEnsemble(config.num_critics,
                                   tuple(config.critic_hidden_dims or config.hidden_dims),
                                   layer_norm=config.layer_norm,
                                   **networks.scheme_options(config.critic_init, config.orthogonal_init))
  return actor, critic


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config()) -> State:
  if config.target_entropy is None:
    config = dataclasses.replace(config, target_entropy=-float(act_dim))
  actor, critic = make_networks(config, act_dim)
  k_actor, k_critic = jax.random.split(key)
  obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
  actor_params = actor.init(k_actor, obs)
  critic_params = critic.init(k_critic, obs, act)
  temperature = make_train_state(None, {"log_alpha": jnp.log(jnp.float32(config.init_alpha))},
                                 config.alpha_lr)
  return State(actor=make_train_state(actor, actor_params, config.actor_lr),
               critic=make_train_state(critic, critic_params, config.critic_lr),
               target_critic_params=critic_params, temperature=temperature,
               step=jnp.zeros((), jnp.int32), config=config)


def alpha(state: State) -> jax.Array:
  return jnp.exp(state.temperature.params["log_alpha"])


def policy(state: State, observations, params=None):
  return state.actor.apply_fn(state.actor.params if params is None else params, observations)


def soft_td_target(state: State, batch: Transition, key: PRNGKey, next_value_hook=None,
                   next_regularizer=None) -> jax.Array:
  """y = r + gamma (1-d) (min_j Q'_j(s', a') - alpha log pi(a'|s')), a' ~ pi(.|s').
  `next_value_hook(batch, a', min_j Q'_j(s', a')) -> values` (SAMG) rewrites the bootstrap Q before
  the entropy term; None keeps SAC's own. `next_regularizer(batch, a', log pi(a'|s')) -> values` is
  subtracted after it (PROTO's KL to pi_k); None: nothing."""
  next_actions, next_log_probs = policy(state, batch.next_observations).sample_and_log_prob(seed=key)
  next_q = state.critic.apply_fn(state.target_critic_params, batch.next_observations,
                                 next_actions).min(0)
  if next_value_hook is not None:
    next_q = next_value_hook(batch, next_actions, next_q)
  if state.config.backup_entropy:
    next_q = losses.soft_value(next_q, next_log_probs, alpha(state))
  if next_regularizer is not None:
    next_q = next_q - next_regularizer(batch, next_actions, next_log_probs)
  return losses.td_target(batch.rewards, batch.masks, state.config.discount, next_q)




def update_critic(state: State, batch: Transition, key: PRNGKey, loss_fn=critic_loss,
                  next_value_hook=None, target_fn=None):
  """One critic step on `loss_fn(params, state, batch, targets, key)` then the Polyak target update.
  `target_fn(state, batch, key) -> targets` replaces SAC's `soft_td_target` (Off2On's per-member
  targets under the ensemble policy)."""
  k_target, k_loss = jax.random.split(key)
  if target_fn is None:
    targets = soft_td_target(state, batch, k_target, next_value_hook)
  else:
    targets = target_fn(state, batch, k_target)
  grads, info = jax.grad(loss_fn, has_aux=True)(state.critic.params, state, batch, targets, k_loss)
  critic = state.critic.apply_gradients(grads=grads)
  target = losses.polyak(state.target_critic_params, critic.params, state.config.tau)
  return state.replace(critic=critic, target_critic_params=target), info


def actor_loss(actor_params, state: State, batch: Transition, key: PRNGKey):
  dist = policy(state, batch.observations, actor_params)
  actions, log_probs = dist.sample_and_log_prob(seed=key)
  q = state.critic.apply_fn(state.critic.params, batch.observations, actions).min(0)
  loss = losses.sac_actor_loss(alpha(state), log_probs, q)
  return loss, {"actor_loss": loss, "entropy": -log_probs.mean(), "log_probs": log_probs}


def update_temperature(state: State, log_probs, loss=losses.temperature_loss) -> tuple:
  """One step on `loss(log_alpha, log_probs, target_entropy)` (default the references' form)."""
  if not state.config.autotune_alpha:
    return state, {"alpha": alpha(state)}
  def loss_fn(params):
    return loss(params["log_alpha"], log_probs, state.config.target_entropy)
  grads = jax.grad(loss_fn)(state.temperature.params)
  state = state.replace(temperature=state.temperature.apply_gradients(grads=grads))
  return state, {"alpha": alpha(state)}


def update_actor(state: State, batch: Transition, key: PRNGKey, loss_fn=actor_loss,
                 temperature_loss=losses.temperature_loss):
  """One actor step on `loss_fn(params, state, batch, key)` then one temperature step on
  `temperature_loss` (PROTO passes its own form)."""
  grads, info = jax.grad(loss_fn, has_aux=True)(state.actor.params, state, batch, key)
  state = state.replace(actor=state.actor.apply_gradients(grads=grads))
  state, temp_info = update_temperature(state, info.pop("log_probs"), temperature_loss)
  return state, {**info, **temp_info}


def update(state: State, batch: Transition, key: PRNGKey) -> tuple[State, Metrics]:
  """One SAC gradient step (critic, actor, temperature, target)."""
  k_critic, k_actor = jax.random.split(key)
  state, critic_info = update_critic(state, batch, k_critic)
  state, actor_info = update_actor(state, batch, k_actor)
  return state.replace(step=state.step + 1), {**critic_info, **actor_info}


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  dist = policy(state, observations)
  return dist.sample(seed=key) if explore else dist.mode()
