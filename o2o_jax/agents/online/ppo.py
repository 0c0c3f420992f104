"""PPO (Schulman et al., 2017) as pure functions, with the settings of the PPO that O2PPO builds on
(Uni-O4 / the released OCR-CFT code, reference §5):

  GAE:      delta_t = r_t + gamma (1 - term_t) V(s'_t) - V(s_t)
            A_t     = delta_t + gamma lambda (1 - done_t) A_{t+1},    V-target = A_t + V(s_t)
            (done = terminated or truncated resets the recursion; only a termination stops the
            bootstrap: a time-limit end bootstraps from V of the real final observation)
  actor:    L_pi = -E[min(r A, clip(r, 1 - eps, 1 + eps) A)] - c_H E[H(pi(.|s))],
            r = pi(a|s) / pi_old(a|s), A normalised once over the whole rollout before the epochs
            (A - mean) / (std + 1e-5), std with Bessel's correction as torch's `Tensor.std`
            (OCR-CFT finetune/online_agent/ppo/ppo.py, `PPO.update`, "Trick 1")
  critic:   L_V = E[(V(s) - V-target)^2]  (no value clipping)
  Adam eps 1e-5, global grad-norm clip 0.5, learning rates decayed linearly in env steps,
  `epochs` passes over the rollout in `num_minibatches` shuffled minibatches — all of it one
  `lax.scan` (epochs) over a `lax.scan` (minibatches) inside one call.

Everything is per seed; `jax.vmap(update)` trains S seeds' rollouts in one program.
The actor is `networks.GaussianActor` (tanh mean, state-independent log-std: the IQL actor), so an
IQL policy is fine-tuned as is. The rollout stores the raw Gaussian sample and its log-probability
and the env executes the sample clipped to the box (`store_clipped_actions=True`: the released code's
log-probability of the clipped action, which biases densities when sigma is wide).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from o2o_jax import networks
from o2o_jax.agents.common import TrainState, make_train_state
from o2o_jax.types import PRNGKey

ADV_EPS = 1e-5   # advantage normalisation: (A - mean) / (std + 1e-5), over the rollout


@dataclasses.dataclass(frozen=True)
class Config:
  hidden_dims: Sequence[int] = (256, 256)                # actor
  value_hidden_dims: Sequence[int] = (256, 256, 256)     # critic (Uni-O4: 3 x 256, tanh)
  value_tanh: bool = True
  log_std_min: float = -10.0                             # released PPO clamps log-std to [-10, 2]
  log_std_max: float = 2.0
  tanh_mean: bool = True                                 # IQL's actor: tanh mean (AWAC's: False)
  actor_lr: float = 3e-4
  critic_lr: float = 3e-4
  lr_decay_steps: int = 1_000_000                        # lr <- lr0 (1 - t / lr_decay_steps); 0: constant
  discount: float = 0.99
  gae_lambda: float = 0.95
  clip_eps: float = 0.2
  entropy_coef: float = 0.01
  rollout_length: int = 2048                             # env steps per seed per update
  num_minibatches: int = 16
  epochs: int = 10
  max_grad_norm: float = 0.5
  adam_eps: float = 1e-5
  store_clipped_actions: bool = False                    # True: log-prob of clip(a) (released code)

  @property
  def minibatch_size(self) -> int:
    return self.rollout_length // self.num_minibatches


def check_config(config: Config) -> None:
  """Raises ValueError for settings the update cannot run with (launchers turn it into O2OError)."""
  if config.rollout_length < 1 or config.num_minibatches < 1 or config.epochs < 1:
    raise ValueError("rollout_length, num_minibatches and epochs must be positive")
  if config.rollout_length < 2:
    raise ValueError("the rollout length must be at least 2 (its advantages are normalised by their "
                     "standard deviation)")
  if config.rollout_length % config.num_minibatches:
    raise ValueError(f"the rollout length ({config.rollout_length}) must be a multiple of the number "
                     f"of minibatches ({config.num_minibatches})")


@flax.struct.dataclass
class Rollout:
  """T consecutive env steps of one seed (leaves (T, ...); seed-vmapped: (S, T, ...)).
  Episodes may end inside a rollout; the env then resets, so observations[t+1] != next_observations[t]
  exactly where dones[t] = 1."""
  observations: jax.Array       # (T, obs_dim) normalised
  actions: jax.Array            # (T, act_dim) the sampled action (the env executed its clip to +-1)
  log_probs: jax.Array          # (T,) log pi_old(a|s) of that action
  rewards: jax.Array            # (T,)
  next_observations: jax.Array  # (T, obs_dim) the real next observation (final one at a truncation)
  terminals: jax.Array          # (T,) 1.0: terminated (no bootstrap)
  dones: jax.Array              # (T,) 1.0: episode ended (terminated or truncated): GAE resets


@flax.struct.dataclass
class State:
  actor: TrainState
  value: TrainState
  env_steps: jax.Array          # env steps consumed by updates so far
  config: Config = flax.struct.field(pytree_node=False)


# ----------------------------------------------------------------------------- networks

def make_actor(config: Config, act_dim: int) -> networks.GaussianActor:
  return networks.GaussianActor(act_dim, tuple(config.hidden_dims), log_std_min=config.log_std_min,
                                log_std_max=config.log_std_max, tanh_mean=config.tanh_mean)


def make_value(config: Config) -> networks.ValueNet:
  return networks.ValueNet(tuple(config.value_hidden_dims), tanh_activation=config.value_tanh)


def learning_rate(lr0: float, config: Config):
  """Linear decay in env steps, lowered once per rollout as the released code (lr0 during the first
  update): optax counts gradient steps, epochs * num_minibatches per rollout."""
  if not config.lr_decay_steps:
    return lr0
  per_update = config.epochs * config.num_minibatches

  def schedule(count):
    t = (count // per_update) * config.rollout_length
    return lr0 * jnp.maximum(1.0 - t / config.lr_decay_steps, 0.0)

  return schedule


def make_actor_state(config: Config, act_dim: int, params) -> TrainState:
  return make_train_state(make_actor(config, act_dim), params, learning_rate(config.actor_lr, config),
                          grad_clip=config.max_grad_norm, eps=config.adam_eps)


def make_value_state(config: Config, params) -> TrainState:
  return make_train_state(make_value(config), params, learning_rate(config.critic_lr, config),
                          grad_clip=config.max_grad_norm, eps=config.adam_eps)


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config(),
         actor_params: Optional[dict] = None, value_params: Optional[dict] = None) -> State:
  """A fresh PPO state; `actor_params` / `value_params` start from given networks (e.g. IQL's actor)."""
  ka, kv = jax.random.split(key)
  obs = jnp.zeros((1, obs_dim))
  if actor_params is None:
    actor_params = make_actor(config, act_dim).init(ka, obs)
  if value_params is None:
    value_params = make_value(config).init(kv, obs)
  return State(actor=make_actor_state(config, act_dim, actor_params),
               value=make_value_state(config, value_params),
               env_steps=jnp.zeros((), jnp.int32), config=config)


# ----------------------------------------------------------------------------- acting

def sample_action(actor: TrainState, params, observations, key: PRNGKey, clip: bool = False):
  """(a, log pi(a|s)) with a ~ pi(.|s): the raw Gaussian sample (the env executes clip(a, -1, 1)),
  or with `clip` the clipped action and its density (the released code)."""
  dist = actor.apply_fn(params, observations)
  actions = dist.sample(seed=key)
  if clip:
    actions = jnp.clip(actions, -1.0, 1.0)
  return actions, dist.log_prob(actions)


def explore(state: State, observations, key: PRNGKey):
  """(action, log-prob) stored in the rollout; the loop sends clip(action, -1, 1) to the env."""
  return sample_action(state.actor, state.actor.params, observations, key,
                       state.config.store_clipped_actions)


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  dist = state.actor.apply_fn(state.actor.params, observations)
  return jnp.clip(dist.sample(seed=key) if explore else dist.mode(), -1.0, 1.0)


# ----------------------------------------------------------------------------- advantages

def gae(rewards, values, next_values, terminals, dones, discount: float, gae_lambda: float):
  """Generalised advantage estimation over one rollout (time axis first). Returns (A, V-targets)."""
  deltas = rewards + discount * (1.0 - terminals) * next_values - values

  def backward(next_adv, x):
    delta, done = x
    adv = delta + discount * gae_lambda * (1.0 - done) * next_adv
    return adv, adv

  _, advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, dones), reverse=True)
  return advantages, advantages + values


def compute_advantages(value: TrainState, rollout: Rollout, config: Config):
  """GAE with the critic before the update (V of s and of the real s')."""
  v = value.apply_fn(value.params, rollout.observations)
  next_v = value.apply_fn(value.params, rollout.next_observations)
  return gae(rollout.rewards, v, next_v, rollout.terminals, rollout.dones, config.discount,
             config.gae_lambda)


def normalize(advantages):
  """(A - mean) / (std + 1e-5) over every entry; the std with Bessel's correction (n - 1), as torch's
  `Tensor.std` in the reference. `update` applies it once to the whole rollout, before the epochs."""
  return (advantages - advantages.mean()) / (advantages.std(ddof=1) + ADV_EPS)


# ----------------------------------------------------------------------------- losses

def clipped_surrogate(log_probs, old_log_probs, advantages, clip_eps: float):
  """-E[min(r A, clip(r, 1-eps, 1+eps) A)]. `advantages` (B,) pairs sample i with A_i; (B, T) rows
  pair the ratio of row i with every A_ij (the released O2PPO's broadcast), averaged."""
  ratio = jnp.exp(log_probs - old_log_probs)
  r = ratio.reshape(ratio.shape + (1,) * (advantages.ndim - ratio.ndim))
  surrogate = jnp.minimum(r * advantages, jnp.clip(r, 1.0 - clip_eps, 1.0 + clip_eps) * advantages)
  return -surrogate.mean(), ratio


def actor_loss(params, actor: TrainState, mb: Rollout, advantages, config: Config):
  dist = actor.apply_fn(params, mb.observations)
  log_probs = dist.log_prob(mb.actions)
  surrogate, ratio = clipped_surrogate(log_probs, mb.log_probs, advantages, config.clip_eps)
  entropy = dist.entropy().mean()
  loss = surrogate - config.entropy_coef * entropy
  log_ratio = log_probs - mb.log_probs
  return loss, {"actor_loss": surrogate, "entropy": entropy,
                "approx_kl": jnp.mean(jnp.exp(log_ratio) - 1.0 - log_ratio),
                "clip_fraction": jnp.mean(jnp.abs(ratio - 1.0) > config.clip_eps)}


def value_loss(params, value: TrainState, mb: Rollout, targets):
  v = value.apply_fn(params, mb.observations)
  loss = jnp.mean(jnp.square(v - targets))
  return loss, {"value_loss": loss, "v_mean": v.mean()}


# ----------------------------------------------------------------------------- update

def train_epochs(actor: TrainState, value: TrainState, rollout: Rollout, advantages, targets,
                 key: PRNGKey, config: Config, minibatch_advantages: Optional[Callable] = None):
  """`config.epochs` passes of shuffled minibatches (a scan over epochs of a scan over minibatches):
  on each, the actor step, then the critic step (the released order). `advantages` (T,) are the
  per-sample advantages, already shaped over the whole rollout (normalised), and shuffled with it;
  `minibatch_advantages(A_mb)`, if given, maps a minibatch's entries to what its surrogate pairs
  with its ratios ((B,), or (B, T) rows: O2PPO's broadcast). Returns (actor, value, mean metrics)."""
  n, mb_size = config.rollout_length, config.minibatch_size
  samples = (rollout, advantages, targets)

  def minibatch_step(carry, mb):
    actor, value = carry
    mb_rollout, mb_adv, mb_targets = mb
    shaped = mb_adv if minibatch_advantages is None else minibatch_advantages(mb_adv)
    grads, a_info = jax.grad(actor_loss, has_aux=True)(actor.params, actor, mb_rollout, shaped, config)
    actor = actor.apply_gradients(grads=grads)
    grads, v_info = jax.grad(value_loss, has_aux=True)(value.params, value, mb_rollout, mb_targets)
    value = value.apply_gradients(grads=grads)
    return (actor, value), {**a_info, **v_info}

  def epoch(carry, k):
    perm = jax.random.permutation(k, n)
    mbs = jax.tree_util.tree_map(
        lambda x: x[perm].reshape((config.num_minibatches, mb_size) + x.shape[1:]), samples)
    return jax.lax.scan(minibatch_step, carry, mbs)

  (actor, value), metrics = jax.lax.scan(epoch, (actor, value), jax.random.split(key, config.epochs))
  return actor, value, jax.tree_util.tree_map(jnp.mean, metrics)


def update(state: State, rollout: Rollout, key: PRNGKey):
  """One PPO update on a rollout of `config.rollout_length` steps: GAE, the advantages normalised
  over the whole rollout, then the minibatch epochs."""
  c = state.config
  advantages, targets = compute_advantages(state.value, rollout, c)
  actor, value, info = train_epochs(state.actor, state.value, rollout, normalize(advantages), targets,
                                    key, c)
  info["advantage_mean"] = advantages.mean()
  info["log_std"] = actor.params["params"]["log_std"].mean()
  return state.replace(actor=actor, value=value, env_steps=state.env_steps + c.rollout_length), info
