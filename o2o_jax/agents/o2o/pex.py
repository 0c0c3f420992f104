"""PEX: Policy Expansion for offline-to-online RL (Zhang, Xu & Yu, ICLR 2023), on IQL's learner
(`agents.offline.iql`). Reference: Haichao-Zhang/PEX @b0ae11e, `pex/algorithms/pex.py` (class PEX:
`__init__`, `select_action`, `policy_update`) over `pex/algorithms/iql.py` (`IQL.update`);
shared/reference/baselines.md §6.

Policy set at the switch (`start_online`): Pi = {pi_beta, pi_theta}, pi_beta = the offline IQL
actor, frozen; pi_theta a new, randomly initialised Gaussian policy (tanh mean, state-independent
log-std in [-5, 2], `pex/networks/policy.py`). Critic, target critic and V come from the IQL
checkpoint and keep training; their optimizers are new (PEX builds fresh Adam optimizers and loads
only the networks' weights).

Composite policy (`select`, PEX.select_action), for a state s:
  a1 = mode of pi_beta(s)                      (deterministic)
  a2 ~ pi_theta(.|s)
  P(w = i) = softmax(alpha_inv [min_k Q_k(s, a1), min_k Q_k(s, a2)])_i,   alpha_inv = 10,
             Q the current (not target) critics
  a = a_w
At evaluation a2 is the mode of pi_theta with probability 1 - eps and w the argmax of the logits
with probability 1 - eps (eps = 0.1, `epsilon_greedy_sample`); exploring, both are plain samples.

Update (`update`, PEX.update = IQL.update with PEX.policy_update), in the reference's order:
  1. V, Q and the Polyak target exactly as IQL (`iql.update(..., train_actor=False)`):
       L_V = E_B[|tau - 1(u < 0)| u^2], u = min_k Q'_k(s, a) - V(s);  Q_k -> r + gamma (1-d) V(s')
  2. pi_theta by AWR on actions proposed by the composite policy, not the buffer's (`actor_loss`):
       a~ = select(s)  (exploring),   A = min_k Q'_k(s, a~) - V(s)   (target critic and V after step 1)
       L_theta = -E_B[ min(exp(beta A), 100) log pi_theta(a~|s) ]
The batches are half offline data, half online buffer, updates start after 5000 online steps, one
per env step (`main_online.py`; set by o2o_jax/recipes/pex.py).

The state is IQL's (`actor` is pi_theta) plus pi_beta's parameters and apply function. A
deterministic IQL actor (CORL's hopper-medium setting; PEX's own offline IQL is Gaussian) can be
pi_beta too: its output is its mode. pi_theta is always Gaussian.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from o2o_jax import networks
from o2o_jax.agents.common import TrainState, make_train_state, with_learning_rate
from o2o_jax.agents.offline import iql
from o2o_jax.errors import O2OError
from o2o_jax.types import PRNGKey, Transition


@dataclasses.dataclass(frozen=True)
class Config(iql.Config):
  """IQL's Config (the offline run's, carried over; `deterministic` is pi_beta's actor type) plus
  PEX's own settings (`main_online.py` argparse defaults, `pex/networks/policy.py`)."""
  inv_temperature: float = 10.0        # alpha_inv of the Boltzmann selection
  eval_epsilon: float = 0.1            # epsilon_greedy_sample(eps=0.1) at evaluation
  online_actor_lr: float = 3e-4        # pi_theta, constant (PEX: use_lr_scheduler=False)
  online_log_std_min: float = -5.0     # pi_theta's log-std range (PEX LOG_STD_MIN, LOG_STD_MAX)
  online_log_std_max: float = 2.0

  def checked(self) -> "Config":
    if self.inv_temperature < 0:
      raise O2OError(f"PEX inv_temperature must not be negative (got {self.inv_temperature})")
    if not 0.0 <= self.eval_epsilon <= 1.0:
      raise O2OError(f"PEX eval_epsilon must lie in [0, 1] (got {self.eval_epsilon})")
    return self


@flax.struct.dataclass
class State(iql.State):
  """IQL's state with `actor` = pi_theta, plus the frozen pi_beta."""
  offline_actor_params: dict
  offline_actor_apply: Callable = flax.struct.field(pytree_node=False)


# One module per (config, act_dim): the states of later runs in the process share its static fields.
@functools.lru_cache(maxsize=None)
def online_policy(config: Config, act_dim: int) -> networks.GaussianActor:
  """pi_theta: IQL's Gaussian actor class (tanh mean, state-independent log-std), PEX's log-std range."""
  return networks.GaussianActor(act_dim, tuple(config.hidden_dims), tanh_mean=True,
                                log_std_min=config.online_log_std_min,
                                log_std_max=config.online_log_std_max)


def restart_optimizer(train_state: TrainState) -> TrainState:
  """The same parameters and learning rate with new Adam moments (PEX's fresh optimizers)."""
  return train_state.replace(step=jnp.zeros_like(train_state.step),
                             opt_state=train_state.tx.init(train_state.params))


def start_online(offline: iql.State, key: PRNGKey, obs_dim: int, act_dim: int,
                 config: Config) -> State:
  """Policy expansion at the switch: pi_beta := the IQL actor (frozen), pi_theta := a new policy
  (initialised with `key`); Q, Q' and V carried over with fresh optimizers."""
  config = config.checked()
  policy = online_policy(config, act_dim)
  # (with_learning_rate: the process-wide optimizer object, so later runs reuse the compiled loops)
  pi_theta = with_learning_rate(make_train_state(policy, policy.init(key, jnp.zeros((1, obs_dim))),
                                                config.online_actor_lr), config.online_actor_lr)
  return State(actor=pi_theta,
               critic=restart_optimizer(with_learning_rate(offline.critic, config.critic_lr)),
               value=restart_optimizer(with_learning_rate(offline.value, config.value_lr)),
               target_critic_params=offline.target_critic_params,
               step=jnp.zeros_like(offline.step), config=config,
               offline_actor_params=offline.actor.params,
               offline_actor_apply=offline.actor.apply_fn)


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config()) -> State:
  """A fresh PEX state (random pi_beta, Q, V): the template a PEX checkpoint restores into."""
  k_iql, k_policy = jax.random.split(key)
  return start_online(iql.init(k_iql, obs_dim, act_dim, config), k_policy, obs_dim, act_dim, config)


# ----------------------------------------------------------------------------- the composite policy

class Selection(NamedTuple):
  actions: jax.Array          # a_w, unclipped (as PEX's select_action returns it)
  offline_actions: jax.Array  # a1, pi_beta's mode
  online_actions: jax.Array   # a2, from pi_theta
  choice: jax.Array           # w: 0 = pi_beta, 1 = pi_theta
  probs: jax.Array            # softmax of the logits, (..., 2)


def offline_mode(state: State, observations):
  """a1 = the mode of pi_beta (the deterministic actor's output)."""
  out = state.offline_actor_apply(state.offline_actor_params, observations)
  return out if state.config.deterministic else out.mode()


def selection_logits(state: State, observations, offline_actions, online_actions):
  """alpha_inv [min_k Q_k(s, a1), min_k Q_k(s, a2)] with the current critics: (..., 2)."""
  q = lambda a: state.critic.apply_fn(state.critic.params, observations, a).min(0)
  return state.config.inv_temperature * jnp.stack([q(offline_actions), q(online_actions)], axis=-1)


def epsilon_greedy(key: PRNGKey, greedy, sample, epsilon: float, batch_shape):
  """PEX's `epsilon_greedy_sample`: per state (of `batch_shape`), the greedy value with probability
  1 - epsilon, else the sample."""
  keep = jax.random.uniform(key, batch_shape) > epsilon
  return jnp.where(keep.reshape(batch_shape + (1,) * (greedy.ndim - len(batch_shape))), greedy, sample)


def select(state: State, observations, key: PRNGKey, evaluate: bool = False) -> Selection:
  """The composite policy's action for observations (..., obs_dim) (PEX.select_action)."""
  c = state.config
  k_a2, k_w, k_greedy_a2, k_greedy_w = jax.random.split(key, 4)
  a1 = offline_mode(state, observations)
  dist = state.actor.apply_fn(state.actor.params, observations)
  a2 = dist.sample(seed=k_a2)
  batch_shape = a2.shape[:-1]
  if evaluate:
    a2 = epsilon_greedy(k_greedy_a2, dist.mode(), a2, c.eval_epsilon, batch_shape)
  logits = selection_logits(state, observations, a1, a2)
  w = jax.random.categorical(k_w, logits, axis=-1)
  if evaluate:
    w = epsilon_greedy(k_greedy_w, jnp.argmax(logits, axis=-1), w, c.eval_epsilon, batch_shape)
  actions = jnp.where((w == 1)[..., None], a2, a1)
  return Selection(actions, a1, a2, w, jax.nn.softmax(logits, axis=-1))


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  """The composite policy's action, clipped to the action box (the env's)."""
  return jnp.clip(select(state, observations, key, evaluate=not explore).actions, -1.0, 1.0)


# ----------------------------------------------------------------------------- update

def actor_loss(actor_params, state: State, batch: Transition, key: PRNGKey):
  """PEX.policy_update: AWR of pi_theta on the composite policy's actions a~ (exploring), weighted
  with min_k Q'_k(s, a~) - V(s)."""
  chosen = select(state, batch.observations, key)
  actions = jax.lax.stop_gradient(chosen.actions)
  target_q = state.critic.apply_fn(state.target_critic_params, batch.observations, actions).min(0)
  v = state.value.apply_fn(state.value.params, batch.observations)
  weights = iql.awr_weights(target_q - v, state.config.beta)
  log_probs = state.actor.apply_fn(actor_params, batch.observations).log_prob(actions)
  loss = -jnp.mean(weights * log_probs)
  return loss, {"actor_loss": loss, "awr_weight_mean": weights.mean(),
                "online_policy_prob": chosen.probs[..., 1].mean(),
                "online_policy_chosen": chosen.choice.mean()}


def update(state: State, batch: Transition, key: PRNGKey):
  """One PEX step: IQL's V, Q and target steps, then pi_theta on the selector's actions."""
  state, info = iql.update(state, batch, key, train_actor=False)
  g, a_info = jax.grad(actor_loss, has_aux=True)(state.actor.params, state, batch, key)
  return state.replace(actor=state.actor.apply_gradients(grads=g)), {**info, **a_info}
