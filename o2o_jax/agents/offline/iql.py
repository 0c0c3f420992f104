"""Implicit Q-Learning (Kostrikov et al., 2022), CORL's settings.

  value:  L_V = E_D[ |tau - 1(u < 0)| u^2 ],  u = min_k Q'_k(s, a) - V(s)            (expectile)
  critic: L_Q = sum_k E_D[(r + gamma (1-d) V(s') - Q_k(s, a))^2]
  actor:  L_pi = -E_D[ min(exp(beta (min_k Q'_k(s,a) - V(s))), 100) log pi(a|s) ]     (AWR)
          deterministic variant: E_D[ min(exp(beta A), 100) ||pi(s) - a||^2 ]
Order per step (CORL `ImplicitQLearning.train`): V(s') for the Q target is read *before* the value
step, then value, actor (with the value step's advantage), critic, Polyak target.
The actor's learning rate follows a cosine decay over `max_steps`.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax

from o2o_jax import losses, networks
from o2o_jax.agents.common import TrainState, critic_loss, make_train_state
from o2o_jax.types import PRNGKey, Transition

EXP_ADV_MAX = 100.0


@dataclasses.dataclass(frozen=True)
class Config:
  hidden_dims: Sequence[int] = (256, 256)
  actor_lr: float = 3e-4
  critic_lr: float = 3e-4
  value_lr: float = 3e-4
  discount: float = 0.99
  tau: float = 0.005
  expectile: float = 0.7
  beta: float = 3.0                     # inverse temperature of the AWR weights
  deterministic: bool = False           # CORL's hopper-medium(-replay) setting
  max_steps: int = 1_000_000            # horizon of the actor's cosine learning-rate decay
  num_critics: int = 2
  v_target: str = "min"                 # reduction over the critics in the value target ("mean": O3F)


@flax.struct.dataclass
class State:
  actor: TrainState
  critic: TrainState
  value: TrainState
  target_critic_params: dict
  step: jax.Array
  config: Config = flax.struct.field(pytree_node=False)


def make_networks(config: Config, act_dim: int):
  hidden = tuple(config.hidden_dims)
  actor = (networks.DeterministicActor(act_dim, hidden) if config.deterministic
           else networks.GaussianActor(act_dim, hidden, tanh_mean=True))
  return actor, networks.CriticEnsemble(config.num_critics, hidden), networks.ValueNet(hidden)


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config()) -> State:
  actor, critic, value = make_networks(config, act_dim)
  ka, kc, kv = jax.random.split(key, 3)
  obs, act_ = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
  critic_params = critic.init(kc, obs, act_)
  actor_lr = optax.cosine_decay_schedule(config.actor_lr, config.max_steps)
  return State(actor=make_train_state(actor, actor.init(ka, obs), actor_lr),
               critic=make_train_state(critic, critic_params, config.critic_lr),
               value=make_train_state(value, value.init(kv, obs), config.value_lr),
               target_critic_params=critic_params, step=jnp.zeros((), jnp.int32), config=config)


def awr_weights(advantages, beta: float):
  """min(exp(beta * A), 100), detached."""
  return jax.lax.stop_gradient(jnp.minimum(jnp.exp(beta * advantages), EXP_ADV_MAX))


def value_loss(value_params, state: State, batch: Transition, target_q):
  v = state.value.apply_fn(value_params, batch.observations)
  loss = losses.expectile_loss(target_q - v, state.config.expectile).mean()
  return loss, {"value_loss": loss, "v_mean": v.mean(), "advantage": target_q - v}


def actor_loss(actor_params, state: State, batch: Transition, advantages):
  weights = awr_weights(advantages, state.config.beta)
  out = state.actor.apply_fn(actor_params, batch.observations)
  if state.config.deterministic:
    per_sample = jnp.sum(jnp.square(out - batch.actions), axis=-1)
  else:
    per_sample = -out.log_prob(batch.actions)
  loss = jnp.mean(weights * per_sample)
  return loss, {"actor_loss": loss, "awr_weight_mean": weights.mean()}




def update(state: State, batch: Transition, key: PRNGKey, next_value_hook=None,
           train_actor: bool = True):
  """One IQL step (value, actor, critic, target).
  `next_value_hook(batch, None, next_values) -> next_values`, when given, rewrites the
  bootstrap values of the TD target (SAMG's mixed target); None keeps the algorithm's own.
  `train_actor=False` leaves the actor as it is (PEX trains its own policy after this step).
  """
  del key  # IQL is deterministic given the batch
  c = state.config
  target_qs = state.critic.apply_fn(state.target_critic_params, batch.observations, batch.actions)
  target_q = target_qs.mean(0) if c.v_target == "mean" else target_qs.min(0)
  next_v = state.value.apply_fn(state.value.params, batch.next_observations)   # pre-update V (CORL)
  g, v_info = jax.grad(value_loss, has_aux=True)(state.value.params, state, batch, target_q)
  value = state.value.apply_gradients(grads=g)
  advantages = v_info.pop("advantage")
  actor, a_info = state.actor, {}
  if train_actor:
    g, a_info = jax.grad(actor_loss, has_aux=True)(state.actor.params, state, batch, advantages)
    actor = state.actor.apply_gradients(grads=g)
  if next_value_hook is not None:
    next_v = next_value_hook(batch, None, next_v)
  targets = losses.td_target(batch.rewards, batch.masks, c.discount, next_v)
  g, q_info = jax.grad(critic_loss, has_aux=True)(state.critic.params, state, batch, targets)
  critic = state.critic.apply_gradients(grads=g)
  state = state.replace(actor=actor, critic=critic, value=value, step=state.step + 1,
                        target_critic_params=losses.polyak(state.target_critic_params, critic.params, c.tau))
  return state, {**v_info, **a_info, **q_info}


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  out = state.actor.apply_fn(state.actor.params, observations)
  if state.config.deterministic:
    return out
  return jnp.clip(out.sample(seed=key) if explore else out.mode(), -1.0, 1.0)
