"""PROTO: iterative policy-regularised offline-to-online RL (Li et al., 2023, arXiv 2305.15669), on a
CQL checkpoint (SAC-PROTO, agent `proto`) and on a TD3+BC checkpoint (TD3-PROTO, agent `proto_td3`),
as OCR-CFT re-implemented it (paper App. C.4; shared/reference/baselines.md §8). Reference code:
Facebear-ljx/PROTO @eadb8b7, `actor.py` / `critic.py` / `learner.py` (SAC) and `actor_td3.py` /
`critic_td3.py` / `learner_td3.py` (TD3), driven by `train_finetune{,_td3}.py`.

The constraint is to pi_k, a Polyak-averaged copy of the online actor (`target_online_actor`), with a
weight eta_t that decays linearly over the updates (`train_finetune.py`, after every online update):
  eta_0 = `temp` (2 on MuJoCo),  eta_t = max(eta_{t-1} - eta_0 d / T_max, eta_min),  d = 0.9, T_max = 1e6.
The update at step t uses eta_{t-1} (the schedule moves after it), so the first online update uses eta_0;
`state.eta` holds it, set after each update from the update count (`eta_after`).

SAC-PROTO, one update (`learner.py` `_update_jit_online`, UTD 1):
  critic (`critic.py` `update_q_online`), a' ~ pi(.|s'), pi and pi_k before this update:
    y = r + gamma m [min_k Q'_k(s', a') - alpha log pi(a'|s') - eta (log pi(a'|s') - log pi_k(a'|s'))]
    L = sum_k E[(Q_k(s, a) - y)^2], then Q' <- Polyak(Q', Q, tau)       (both backup terms only with
                                                                        `backup_entropy`, MuJoCo: on)
  actor (`actor.py` `update_online`) on the updated critic, a~ ~ pi(.|s) reparameterised:
    L = E[-mean_k Q_k(s, a~) + alpha log pi(a~|s) + eta (log pi(a~|s) - log pi_k(a~|s))]
    (the MEAN over the critics here, the min in the target)
  alpha (`actor.py` `update_alpha`): L = alpha (H - H_target), H = -E[log pi(a~|s)] of the actor step,
    H_target = -|A|/2, alpha_0 = 0.01
  pi_k <- Polyak(pi_k, pi, tau_actor)   (every update; tau_actor 0.005 on MuJoCo)

TD3-PROTO, one update (`learner_td3.py` `_update_jit_online`; the actor, pi_k and Q' move every
`policy_freq` = 2 critic steps):
  critic (`critic_td3.py` `update_q_online`): n = clip(N(0, 0.2^2), +-0.5),
    y = r + gamma m [min_k Q'_k(s', pi_k(s')) - eta mean_{B x |A|}(pi(s') + n - pi_k(s'))^2]
    (the critic at the noise-free pi_k(s'); the noise only in the trust-region term, one batch mean)
  actor (`actor_td3.py` `update_online`): L = -lambda E[Q_1(s, pi(s))] + eta mean_{B x |A|}(pi(s) - pi_k(s))^2,
    lambda = 2.5 / E|Q_1(s, pi(s))| (detached; TD3+BC's `q_normalizer`)
  pi_k <- Polyak(pi_k, pi, tau_actor), Q' <- Polyak(Q', Q, tau)   (with the actor)
  acting: clip(pi(s) + clip(N(0, 0.2^2), +-0.5), +-1)  (`learner_td3.py` `sample_actions`)

The switch (`learner.py` `offline2online`): the online actor and pi_k are hard copies of the offline
actor; the critic (with its Adam moments) and its target continue from the offline run; the actor's
optimiser and alpha start fresh. The 50/50 sampler and the online buffer's 10k offline rows are the
recipe's (o2o_jax/recipes/proto.py).

Composition: SAC-PROTO's state is `sac.State` plus pi_k and eta, and its update is SAC's critic step
(`sac.update_critic` with the KL backup through `sac.soft_td_target`'s `next_regularizer`) and actor
step (`sac.update_actor` with PROTO's actor and temperature losses). TD3-PROTO's state is `td3.State`
plus eta, pi_k being its target actor (moved at `tau_actor`), and its update is `td3.make_update`
with PROTO's actor objective and target. Deviations (BUILD_NOTES): the critic is the checkpoint's (no
LayerNorm, PROTO's has it), and its loss sums the two members' MSEs (PROTO averages them).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from o2o_jax import losses, networks
from o2o_jax.agents.common import TrainState, make_train_state
from o2o_jax.agents.offline import cql, td3_bc
from o2o_jax.agents.online import sac, td3
from o2o_jax.errors import O2OError
from o2o_jax.types import PRNGKey, Transition


@dataclasses.dataclass(frozen=True)
class Config(sac.Config):
  """SAC-PROTO. The network fields are the CQL run's (the recipe copies them, `NETWORK_FIELDS`); the
  defaults are CQL's so that a default Config fits a default CQL checkpoint. The rest is PROTO's
  (`learner.py`, `train_finetune.py`, `2online_mujoco.sh`)."""
  hidden_dims: Sequence[int] = cql.Config.hidden_dims
  log_std_min: float = cql.Config.log_std_min
  learnable_log_std_scale: bool = cql.Config.learnable_log_std_scale
  orthogonal_init: bool = cql.Config.orthogonal_init
  actor_init: Optional[str] = cql.Config.actor_init
  critic_init: Optional[str] = cql.Config.critic_init
  actor_lr: float = 3e-4                 # Learner actor_lr; the online actor's Adam is fresh
  critic_lr: float = 3e-4
  alpha_lr: float = 3e-4                 # `log_alpha` uses the actor's learning rate
  init_alpha: float = 0.01               # `init_temperature = 0.01`
  target_entropy: Optional[float] = None  # None -> -|A|/2 (`actions.shape[1] * -1. / 2`)
  backup_entropy: bool = True            # `entropy_backup`: alpha log pi and the KL in the target
  eta0: float = 2.0                      # `temp`
  eta_min: float = 0.0                   # `min_temp_online`
  decay: float = 0.9                     # `decay_speed`
  eta_horizon: int = 1_000_000           # `max_steps`, the T_max of the schedule (updates)
  tau_actor: float = 0.005               # pi_k's Polyak rate


@dataclasses.dataclass(frozen=True)
class TD3Config(td3_bc.Config):
  """TD3-PROTO. hidden_dims, num_critics and layer_norm are the TD3+BC run's (`TD3_NETWORK_FIELDS`);
  lambda's scale is TD3+BC's `alpha` (2.5, `lmbda`). PROTO's (`learner_td3.py`,
  `train_finetune_td3.py`, `2online_mujoco_td3.sh`) otherwise."""
  exploration_noise: float = 0.2         # acting: clip(N(0, 0.2^2), +-0.5)
  exploration_noise_clip: float = 0.5
  backup_trust_region: bool = True       # `entropy_backup`: the trust-region term in the target
  eta0: float = 2.0                      # `temp` (the MuJoCo script's --temp=2)
  eta_min: float = 0.0
  decay: float = 0.9
  eta_horizon: int = 1_000_000
  tau_actor: float = 0.005


# The fields of a Config that fix the networks: taken from the offline run, never changed online.
NETWORK_FIELDS = ("hidden_dims", "critic_hidden_dims", "num_critics", "layer_norm", "log_std_min",
                  "log_std_max", "learnable_log_std_scale", "orthogonal_init", "actor_init",
                  "critic_init")
TD3_NETWORK_FIELDS = ("hidden_dims", "num_critics", "layer_norm")


def check_config(config) -> None:
  """One-line O2OError for schedule or rate values PROTO cannot run with."""
  for name in ("eta0", "eta_min", "decay"):
    if getattr(config, name) < 0:
      raise O2OError(f"PROTO {name} must not be negative (got {getattr(config, name)})")
  if config.eta_horizon < 1:
    raise O2OError(f"PROTO eta_horizon must be at least 1 update (got {config.eta_horizon})")
  if not 0.0 <= config.tau_actor <= 1.0:
    raise O2OError(f"PROTO tau_actor must lie in [0, 1] (got {config.tau_actor})")


@flax.struct.dataclass
class State(sac.State):
  """sac.State (pi = `actor`) with pi_k's parameters and the current weight eta."""
  prior_actor_params: dict
  eta: jax.Array


@flax.struct.dataclass
class TD3State(td3.State):
  """td3.State whose `target_actor_params` are pi_k, with the current weight eta."""
  eta: jax.Array


def eta_after(config, updates) -> jax.Array:
  """eta after `updates` updates: eta_t = max(eta_{t-1} - eta_0 d / T_max, eta_min) (`train_finetune.py`:
  `loss_temp_online`), in closed form, max(eta_0 - t eta_0 d / T_max, eta_min): the recursion in
  float32 drifts (100k updates from 2 end at 1.8212, not 1.82; PROTO's is float64)."""
  step = config.eta0 * config.decay / config.eta_horizon
  return jnp.maximum(config.eta0 - jnp.asarray(updates, jnp.float32) * step,
                     config.eta_min).astype(jnp.float32)


def _fresh_optimizer(train_state: TrainState, learning_rate: float) -> TrainState:
  """The same parameters with a fresh Adam (PROTO's online actor is a new optimiser's)."""
  return make_train_state(None, train_state.params, learning_rate).replace(apply_fn=train_state.apply_fn)


def _continued_optimizer(train_state: TrainState, learning_rate: float) -> TrainState:
  """The same parameters and Adam moments, stepping at `learning_rate` (PROTO's critic keeps its
  optimiser across the switch; Adam's state does not depend on the rate)."""
  return train_state.replace(tx=make_train_state(None, train_state.params, learning_rate).tx)


# ============================================================================ SAC-PROTO (agent proto)

def resolved(config: Config, act_dim: int) -> Config:
  """`config` with target_entropy -|A|/2 when None."""
  if config.target_entropy is None:
    config = dataclasses.replace(config, target_entropy=-act_dim / 2.0)
  return config


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config()) -> State:
  """A fresh SAC-PROTO state (its shapes: a run's restore template); pi_k = pi, eta = eta_0."""
  s = sac.init(key, obs_dim, act_dim, resolved(config, act_dim))
  return State(**{f.name: getattr(s, f.name) for f in dataclasses.fields(sac.State)},
               prior_actor_params=s.actor.params, eta=jnp.float32(config.eta0))


def from_cql(offline: cql.State, config: Config) -> State:
  """The switch from a CQL state (`learner.py` `offline2online`): pi and pi_k = the offline actor (pi
  with a fresh Adam at `actor_lr`), the critic with its Adam moments and its target as they are,
  alpha fresh at `init_alpha`, eta = eta_0. `config` must be `resolved`. Per seed (vmap it)."""
  if config.target_entropy is None:
    raise ValueError("from_cql needs a resolved config: proto.resolved(config, act_dim)")
  s = offline.sac
  return State(actor=_fresh_optimizer(s.actor, config.actor_lr),
               critic=_continued_optimizer(s.critic, config.critic_lr),
               target_critic_params=s.target_critic_params,
               temperature=make_train_state(None, {"log_alpha": jnp.log(jnp.float32(config.init_alpha))},
                                            config.alpha_lr),
               step=jnp.zeros((), jnp.int32), config=config,
               prior_actor_params=s.actor.params, eta=jnp.float32(config.eta0))


from_offline = from_cql


def log_ratio_to_prior(state: State, observations, actions, log_probs):
  """log pi(a|s) - log pi_k(a|s), with log pi(a|s) the sample's own (`log_probs`): PROTO's
  single-sample KL estimate."""
  return log_probs - sac.policy(state, observations, state.prior_actor_params).log_prob(actions)


def kl_backup(state: State):
  """The target's trust-region term eta (log pi(a'|s') - log pi_k(a'|s')) as `sac.soft_td_target`'s
  `next_regularizer` (`critic.py` `value_reg`), or None without `backup_entropy`."""
  if not state.config.backup_entropy:
    return None
  return lambda batch, next_actions, next_log_probs: state.eta * log_ratio_to_prior(
      state, batch.next_observations, next_actions, next_log_probs)


def td_target(state: State, batch: Transition, key: PRNGKey):
  """y = r + gamma m [min_k Q'_k(s', a') - alpha log pi(a'|s') - eta (log pi - log pi_k)(a'|s')]."""
  return sac.soft_td_target(state, batch, key, next_regularizer=kl_backup(state))


def actor_loss(actor_params, state: State, batch: Transition, key: PRNGKey):
  """E[-mean_k Q_k(s, a~) + alpha log pi(a~|s) + eta (log pi(a~|s) - log pi_k(a~|s))], a~ ~ pi
  reparameterised (`actor.py` `update_online`: `q = qs.mean(axis=0)`)."""
  dist = sac.policy(state, batch.observations, actor_params)
  actions, log_probs = dist.sample_and_log_prob(seed=key)
  q = state.critic.apply_fn(state.critic.params, batch.observations, actions).mean(0)
  kl = log_ratio_to_prior(state, batch.observations, actions, log_probs)
  loss = losses.sac_actor_loss(sac.alpha(state), log_probs, q) + state.eta * kl.mean()
  return loss, {"actor_loss": loss, "entropy": -log_probs.mean(), "kl": kl.mean(),
                "log_probs": log_probs}


def temperature_loss(log_alpha, log_probs, target_entropy: float):
  """alpha (H - H_target), H = -E[log pi] of the actor step, detached (`actor.py` `update_alpha`:
  `temperature * (entropy - target_entropy)`); its gradient in log alpha is alpha (H - H_target)."""
  return jnp.exp(log_alpha) * jax.lax.stop_gradient(-jnp.mean(log_probs) - target_entropy)


def update(state: State, batch: Transition, key: PRNGKey):
  """One SAC-PROTO update: critic (KL backup, pi, pi_k, alpha and eta before this update), actor and
  alpha on the updated critic, then pi_k's Polyak step and eta's decay."""
  c = state.config
  k_critic, k_actor = jax.random.split(key)
  state, critic_info = sac.update_critic(state, batch, k_critic, target_fn=td_target)
  state, actor_info = sac.update_actor(state, batch, k_actor, loss_fn=actor_loss,
                                       temperature_loss=temperature_loss)
  info = {**critic_info, **actor_info, "eta": state.eta}
  return state.replace(
      prior_actor_params=losses.polyak(state.prior_actor_params, state.actor.params, c.tau_actor),
      eta=eta_after(c, state.step + 1), step=state.step + 1), info


act = sac.act     # a ~ pi(.|s) (in [-1, 1] by the tanh); the mode when not exploring


# ============================================================================ TD3-PROTO (agent proto_td3)

def init_td3(key: PRNGKey, obs_dim: int, act_dim: int, config: TD3Config = TD3Config()) -> TD3State:
  """A fresh TD3-PROTO state (its shapes: a run's restore template); pi_k = pi, eta = eta_0."""
  s = td3.init(key, obs_dim, act_dim, config)
  return TD3State(**{f.name: getattr(s, f.name) for f in dataclasses.fields(td3.State)},
                  eta=jnp.float32(config.eta0))


def from_td3bc(offline: td3.State, config: TD3Config) -> TD3State:
  """The switch from a TD3+BC state (`learner_td3.py` `offline2online`): pi and pi_k = the offline
  actor (pi with a fresh Adam), the critic with its Adam moments and its target as they are (TD3+BC's
  own target actor is dropped), eta = eta_0. Per seed (vmap it)."""
  return TD3State(actor=_fresh_optimizer(offline.actor, config.actor_lr),
                  critic=_continued_optimizer(offline.critic, config.critic_lr),
                  target_actor_params=offline.actor.params,
                  target_critic_params=offline.target_critic_params,
                  step=jnp.zeros((), jnp.int32), config=config, eta=jnp.float32(config.eta0))


def trust_region_target(state: TD3State, batch: Transition, key: PRNGKey):
  """y = r + gamma m [min_k Q'_k(s', pi_k(s')) - eta mean_{B x |A|}(pi(s') + n - pi_k(s'))^2],
  n = clip(N(0, sigma^2), +-c) (`critic_td3.py` `update_q_online`, as written: the critic at the
  noise-free pi_k(s'), the noisy pi(s') unclipped and only in the batch-mean trust-region term)."""
  c = state.config
  next_pi = state.actor.apply_fn(state.actor.params, batch.next_observations)
  next_prior = state.actor.apply_fn(state.target_actor_params, batch.next_observations)
  next_q = state.critic.apply_fn(state.target_critic_params, batch.next_observations,
                                 next_prior).min(0)
  if c.backup_trust_region:
    noise = jnp.clip(c.policy_noise * jax.random.normal(key, next_pi.shape), -c.noise_clip, c.noise_clip)
    next_q = next_q - state.eta * jnp.mean(jnp.square(next_pi + noise - next_prior))
  return losses.td_target(batch.rewards, batch.masks, c.discount, next_q)


def trust_region_actor_objective(actor_params, state: TD3State, batch: Transition):
  """-lambda E[Q_1(s, pi(s))] + eta mean_{B x |A|}(pi(s) - pi_k(s))^2, lambda = alpha / E|Q_1| detached
  (`actor_td3.py` `update_online`; its `q1, q1 = critic(...)` keeps the second member, equal in law)."""
  actions = state.actor.apply_fn(actor_params, batch.observations)
  q = networks.first_critic(state.critic.apply_fn, state.critic.params, batch.observations, actions)
  lam = td3_bc.q_normalizer(q, state.config.alpha)
  prior = state.actor.apply_fn(state.target_actor_params, batch.observations)
  trust = jnp.mean(jnp.square(actions - prior))
  loss = -lam * q.mean() + state.eta * trust
  return loss, {"actor_loss": loss, "trust_region": trust, "lambda": lam}


_td3_update = td3.make_update(trust_region_actor_objective, trust_region_target)


def update_td3(state: TD3State, batch: Transition, key: PRNGKey):
  """One TD3-PROTO update: TD3's critic step on the trust-region target, every `policy_freq` steps the
  actor step, pi_k (target actor, at `tau_actor`) and Q' Polyak steps; then eta's decay (every update,
  as `train_finetune_td3.py` decays it every env step)."""
  eta = state.eta
  state, info = _td3_update(state, batch, key)       # counts the update (`step`)
  return state.replace(eta=eta_after(state.config, state.step)), {**info, "eta": eta}


def act_td3(state: TD3State, observations, key: PRNGKey, explore: bool = True):
  """clip(pi(s) + clip(N(0, 0.2^2), +-0.5), +-1) when exploring, pi(s) otherwise."""
  actions = state.actor.apply_fn(state.actor.params, observations)
  if explore:
    c = state.config
    actions = losses.smoothed_target_action(actions, key, c.exploration_noise, c.exploration_noise_clip)
  return actions
