"""Behaviour cloning of any policy into one of our actor types (paper appendix I, eq. 52).

  stochastic:    min_theta E_{s~D, a~pi_off(.|s)}[-log pi_theta(a|s) - lambda * H(pi_theta(.|s))]   (eq. 52)
  deterministic: min_theta E_{s~D, a~pi_off(.|s)}[||pi_theta(s) - a||^2]

The targets `a` are the batch's actions: dataset actions for plain BC, or actions of another policy
(`relabel_actions`) so a policy from any source (a transformer, another framework) can enter O2O.
For the tanh-Gaussian actor the entropy has no closed form; it is estimated by -log pi(a~|s) of one
reparameterised sample.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from o2o_jax import networks
from o2o_jax.agents.common import TrainState, make_train_state
from o2o_jax.types import PRNGKey, Transition

ACTOR_TYPES = ("tanh_gaussian", "gaussian", "deterministic")


@dataclasses.dataclass(frozen=True)
class Config:
  actor_type: str = "tanh_gaussian"
  hidden_dims: Sequence[int] = (256, 256)
  actor_lr: float = 3e-4
  entropy_weight: float = 0.0          # lambda of eq. 52 (stochastic actors only)


@flax.struct.dataclass
class State:
  actor: TrainState
  step: jax.Array
  config: Config = flax.struct.field(pytree_node=False)


def make_actor(config: Config, act_dim: int):
  if config.actor_type == "tanh_gaussian":
    return networks.TanhGaussianActor(act_dim, tuple(config.hidden_dims))
  if config.actor_type == "gaussian":
    return networks.GaussianActor(act_dim, tuple(config.hidden_dims))
  if config.actor_type == "deterministic":
    return networks.DeterministicActor(act_dim, tuple(config.hidden_dims))
  raise ValueError(f"unknown actor_type {config.actor_type!r}: choose one of {ACTOR_TYPES}")


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config()) -> State:
  actor = make_actor(config, act_dim)
  params = actor.init(key, jnp.zeros((1, obs_dim)))
  return State(actor=make_train_state(actor, params, config.actor_lr),
               step=jnp.zeros((), jnp.int32), config=config)


def loss(actor_params, state: State, batch: Transition, key: PRNGKey):
  out = state.actor.apply_fn(actor_params, batch.observations)
  if state.config.actor_type == "deterministic":
    value = jnp.mean(jnp.sum(jnp.square(out - batch.actions), axis=-1))
    return value, {"bc_loss": value}
  nll = -out.log_prob(batch.actions).mean()
  if state.config.actor_type == "gaussian":
    entropy = out.entropy().mean()
  else:
    entropy = -out.sample_and_log_prob(seed=key)[1].mean()
  value = nll - state.config.entropy_weight * entropy                      # eq. 52
  return value, {"bc_loss": value, "nll": nll, "entropy": entropy}


def update(state: State, batch: Transition, key: PRNGKey):
  grads, info = jax.grad(loss, has_aux=True)(state.actor.params, state, batch, key)
  return state.replace(actor=state.actor.apply_gradients(grads=grads), step=state.step + 1), info


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  out = state.actor.apply_fn(state.actor.params, observations)
  if state.config.actor_type == "deterministic":
    return out
  actions = out.sample(seed=key) if explore else out.mode()
  return jnp.clip(actions, -1.0, 1.0)


def relabel_actions(data: Transition, teacher: Callable, key: PRNGKey, chunk: int = 65536) -> Transition:
  """Replaces the dataset's actions by a ~ teacher(s, key) (one sample per state), in chunks."""
  n = data.rewards.shape[0]
  parts = []
  for i, start in enumerate(range(0, n, chunk)):
    parts.append(teacher(data.observations[start:start + chunk], jax.random.fold_in(key, i)))
  return data.replace(actions=jnp.clip(jnp.concatenate(parts), -1.0, 1.0).astype(jnp.float32))
