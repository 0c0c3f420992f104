"""TD3 (Fujimoto et al., 2018) as pure functions: clipped double-Q with target policy smoothing and
delayed actor/target updates.

  critic: y = r + gamma (1-d) min_j Q'_j(s', clip(pi'(s') + clip(eps, -c, c), -1, 1))
  actor:  L(theta) = -E[Q_1(s, pi(s))]          (every `policy_freq` critic steps)

`make_update(actor_objective)` lets TD3+BC and O2TD3 swap the actor objective without copying the rest.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from o2o_jax import losses, networks
from o2o_jax.agents.common import TrainState, critic_loss, make_train_state
from o2o_jax.types import PRNGKey, Transition


@dataclasses.dataclass(frozen=True)
class Config:
  hidden_dims: Sequence[int] = (256, 256)
  num_critics: int = 2
  actor_lr: float = 3e-4
  critic_lr: float = 3e-4
  discount: float = 0.99
  tau: float = 0.005
  policy_noise: float = 0.2
  noise_clip: float = 0.5
  policy_freq: int = 2
  exploration_noise: float = 0.1
  layer_norm: bool = False
  # networks.INIT_SCHEMES. "torch" (PyTorch nn.Linear's default): the TD3 and TD3+BC of CORL and of
  # the TD3+BC authors. The official OCR-CFT `offline/td3_bc.py` builds both on `net.py` `MLP`
  # ("ocr_cft"), which the `official` preset selects for the O2TD3 chain.
  actor_init: str = "torch"
  critic_init: str = "torch"


@flax.struct.dataclass
class State:
  actor: TrainState
  critic: TrainState
  target_actor_params: dict
  target_critic_params: dict
  step: jax.Array
  config: Config = flax.struct.field(pytree_node=False)


def make_networks(config: Config, act_dim: int):
  return (networks.DeterministicActor(act_dim, tuple(config.hidden_dims),
                                     **networks.init_options(config.actor_init)),
          networks.CriticEnsemble(config.num_critics, tuple(config.hidden_dims),
                                  layer_norm=config.layer_norm,
                                  **networks.init_options(config.critic_init)))


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config()) -> State:
  actor, critic = make_networks(config, act_dim)
  k_actor, k_critic = jax.random.split(key)
  obs, act_ = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
  actor_params, critic_params = actor.init(k_actor, obs), critic.init(k_critic, obs, act_)
  return State(actor=make_train_state(actor, actor_params, config.actor_lr),
               critic=make_train_state(critic, critic_params, config.critic_lr),
               target_actor_params=actor_params, target_critic_params=critic_params,
               step=jnp.zeros((), jnp.int32), config=config)


def td_target(state: State, batch: Transition, key: PRNGKey) -> jax.Array:
  c = state.config
  next_actions = losses.smoothed_target_action(
      state.actor.apply_fn(state.target_actor_params, batch.next_observations), key,
      c.policy_noise, c.noise_clip)
  next_q = state.critic.apply_fn(state.target_critic_params, batch.next_observations,
                                 next_actions).min(0)
  return losses.td_target(batch.rewards, batch.masks, c.discount, next_q)




def update_critic(state: State, batch: Transition, key: PRNGKey, target_fn=td_target,
                  loss_fn=critic_loss):
  targets = target_fn(state, batch, key)
  grads, info = jax.grad(loss_fn, has_aux=True)(state.critic.params, state, batch, targets)
  return state.replace(critic=state.critic.apply_gradients(grads=grads)), info


def td3_actor_objective(actor_params, state: State, batch: Transition):
  """-E[Q_1(s, pi(s))]."""
  actions = state.actor.apply_fn(actor_params, batch.observations)
  q = networks.first_critic(state.critic.apply_fn, state.critic.params, batch.observations, actions)
  loss = -q.mean()
  return loss, {"actor_loss": loss}


def update_actor_and_targets(state: State, batch: Transition, actor_objective=td3_actor_objective):
  grads, info = jax.grad(actor_objective, has_aux=True)(state.actor.params, state, batch)
  actor = state.actor.apply_gradients(grads=grads)
  tau = state.config.tau
  # A Config with its own `tau_actor` moves the target actor at that rate (TD3-PROTO's pi_k).
  actor_tau = getattr(state.config, "tau_actor", tau)
  return state.replace(
      actor=actor,
      target_actor_params=losses.polyak(state.target_actor_params, actor.params, actor_tau),
      target_critic_params=losses.polyak(state.target_critic_params, state.critic.params, tau)), info


def make_update(actor_objective: Callable = td3_actor_objective, target_fn: Callable = td_target,
                critic_loss_fn: Callable = critic_loss):
  """Builds a TD3-style update(state, batch, key) with the given actor objective / critic target."""

  def update(state, batch: Transition, key: PRNGKey) -> tuple:
    state, critic_info = update_critic(state, batch, key, target_fn, critic_loss_fn)
    _, actor_info_shape = jax.eval_shape(actor_objective, state.actor.params, state, batch)

    def with_actor(s):
      return update_actor_and_targets(s, batch, actor_objective)

    def without_actor(s):
      return s, jax.tree_util.tree_map(lambda x: jnp.full(x.shape, jnp.nan, x.dtype), actor_info_shape)

    # Delayed policy updates: the actor and both targets move every `policy_freq` critic steps.
    state, actor_info = jax.lax.cond(state.step % state.config.policy_freq == 0, with_actor,
                                     without_actor, state)
    return state.replace(step=state.step + 1), {**critic_info, **actor_info}

  return update


update = make_update()


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  actions = state.actor.apply_fn(state.actor.params, observations)
  if explore:
    noise = state.config.exploration_noise * jax.random.normal(key, actions.shape)
    actions = jnp.clip(actions + noise, -1.0, 1.0)
  return actions
