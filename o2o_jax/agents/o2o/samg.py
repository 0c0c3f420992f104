"""SAMG: state-action-conditional offline-to-online RL with offline model guidance (Zhang et al., 2024),
on CQL, AWAC or IQL (`Config.base`). The paper's equations were stripped from our copy; they are
rebuilt in shared/reference/baselines.md §9 and the numbers below refer to the paper's equations.

  (2) C-VAE on D:   L = E||s' - D(z, s, a)||^2 + beta_KL KL(q(z|s,a) || N(0, I)),  z ~ q(z|s,a)
                    (encoder on (s, a), decoder reconstructs the next state; beta_KL may be annealed)
      latent fit:   m_j, s_j = mean / std over D of the encoder means mu_j(s, a)
  (3) weight:       p_int(s,a) = 1/d_z sum_j 2 (1 - Phi(|mu_j(s,a) - m_j| / s_j))   (two-sided tail)
                    p(s,a) = p_int if p_int >= p_m (threshold) else 0
  (4) target:       y = r + gamma (1-d) [(1 - p) Q'(s', a') + p Q_off(s', a')],  a' ~ pi(.|s')
                    IQL mixes its value target instead: (1 - p) V(s') + p V_off(s')
  (5) equivalently  y = r + r_in + gamma (1-d) Q'(s', a'),  r_in = gamma (1-d) p (Q_off - Q')
Q_off (min over the twin critics) or V_off is the offline critic, frozen at the switch; the C-VAE and
its latent statistics are frozen too. The base algorithm's own losses are unchanged: SAMG only swaps
the bootstrap value through the bases' `next_value_hook`. Online there is no offline data: a small
buffer seeded with transitions of the offline policy (experiments/pipeline_samg.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
from jax.scipy.special import erfc

from o2o_jax import networks
from o2o_jax.agents.common import TrainState, make_train_state
from o2o_jax.agents.offline import awac, cql, iql
from o2o_jax.errors import O2OError
from o2o_jax.types import PRNGKey, Transition

BASES = {"cql": cql, "awac": awac, "iql": iql}
WEIGHT_AT = ("sa", "next")


@dataclasses.dataclass(frozen=True)
class Config:
  base: str = "iql"                                  # cql | awac | iql
  base_config: Any = None                            # the base's Config (None: its defaults)
  # C-VAE, eq. (2). CPQ/BCQ layout 750-750 [recon]; latent 2|A| when None.
  cvae_hidden_dims: Sequence[int] = (750, 750)
  cvae_decoder_hidden_dims: Optional[Sequence[int]] = None   # smaller = the "simplified decoder"
  latent_dim: Optional[int] = None
  cvae_lr: float = 1e-3
  kl_weight: float = 0.5                             # beta_KL (BCQ's 0.5)
  kl_anneal_steps: int = 0                           # beta_KL ramps linearly from 0 (0: no annealing)
  cvae_raw_states: bool = True                       # paper: do not normalise the C-VAE's states
  # weight, eq. (3)
  threshold: float = 0.5                             # p_m^off: p = 0 below it
  weight_at: str = "sa"                              # "sa": p(s, a) of the transition; "next": p(s', a')
  # acting: Gaussian noise for a deterministic base actor (CORL's IQL on hopper-medium)
  exploration_noise: float = 0.1

  def resolved(self, act_dim: int) -> "Config":
    """Fills the defaults that depend on the env (latent size, base config); checks the choices."""
    if self.base not in BASES:
      raise O2OError(f"SAMG base must be one of {', '.join(BASES)} (got {self.base!r})")
    if self.weight_at not in WEIGHT_AT:
      raise O2OError(f"SAMG weight_at must be 'sa' or 'next' (got {self.weight_at!r})")
    if not 0.0 <= self.threshold <= 1.0:
      raise O2OError(f"SAMG threshold must lie in [0, 1] (got {self.threshold})")
    return dataclasses.replace(
        self, base_config=self.base_config or BASES[self.base].Config(),
        latent_dim=self.latent_dim or 2 * act_dim,
        cvae_hidden_dims=tuple(self.cvae_hidden_dims),
        cvae_decoder_hidden_dims=(None if self.cvae_decoder_hidden_dims is None
                                  else tuple(self.cvae_decoder_hidden_dims)))


# ----------------------------------------------------------------------------- C-VAE, eq. (2)

@flax.struct.dataclass
class CVAEState:
  vae: TrainState
  config: Config = flax.struct.field(pytree_node=False)


def cvae_module(config: Config, obs_dim: int) -> networks.CVAE:
  return networks.CVAE(out_dim=obs_dim, latent_dim=config.latent_dim,
                       hidden_dims=tuple(config.cvae_hidden_dims),
                       decoder_hidden_dims=config.cvae_decoder_hidden_dims)


def cvae_init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config) -> CVAEState:
  config = config.resolved(act_dim)
  module = cvae_module(config, obs_dim)
  k_init, k_sample = jax.random.split(key)
  params = module.init(k_init, jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim)), k_sample)
  return CVAEState(vae=make_train_state(module, params, config.cvae_lr), config=config)


def kl_coefficient(step, config: Config):
  """beta_KL at a C-VAE step: constant, or a linear ramp from 0 over `kl_anneal_steps` (KL annealing)."""
  if config.kl_anneal_steps <= 0:
    return jnp.float32(config.kl_weight)
  return config.kl_weight * jnp.minimum(1.0, step / config.kl_anneal_steps)


def gaussian_kl(mean, std):
  """KL(N(mean, std^2) || N(0, 1)) per latent dimension."""
  return 0.5 * (jnp.square(mean) + jnp.square(std) - 1.0) - jnp.log(std)


def cvae_loss(params, state: CVAEState, batch: Transition, key: PRNGKey):
  """Negative ELBO, eq. (2): MSE(s', s'_hat) + beta_KL KL(q(z|s,a) || N(0, I)) (BCQ's means)."""
  recon, mean, std = state.vae.apply_fn(params, batch.observations, batch.actions, key)
  recon_loss = jnp.mean(jnp.square(recon - batch.next_observations))
  kl = jnp.mean(gaussian_kl(mean, std))
  beta = kl_coefficient(state.vae.step, state.config)
  loss = recon_loss + beta * kl
  return loss, {"cvae_loss": loss, "recon_loss": recon_loss, "kl": kl, "kl_weight": beta,
                "latent_mean_abs": jnp.abs(mean).mean(), "latent_std": std.mean()}


def cvae_update(state: CVAEState, batch: Transition, key: PRNGKey):
  """One C-VAE step. `batch` holds the C-VAE's states (raw when `cvae_raw_states`)."""
  grads, info = jax.grad(cvae_loss, has_aux=True)(state.vae.params, state, batch, key)
  return state.replace(vae=state.vae.apply_gradients(grads=grads)), info


def encoder_means(cvae_params, config: Config, observations, actions):
  """mu_phi(s, a): the encoder means (the C-VAE's own state convention)."""
  module = cvae_module(config, observations.shape[-1])
  return module.apply(cvae_params, observations, actions, method=networks.CVAE.encode)[0]


def latent_statistics(means, axis=0):
  """Per-dimension normal fit N(m_j, s_j^2) to the encoder means of the offline data."""
  return means.mean(axis), jnp.maximum(means.std(axis), 1e-6)


# ----------------------------------------------------------------------------- weight, eq. (3)

def confidence_weight(means, latent_mean, latent_std, threshold: float):
  """p(s,a), eq. (3): mean over latent dims of the two-sided tail 2(1 - Phi(|mu - m| / s)), which is
  1 at the offline mode and falls to 0 far from it; set to 0 below `threshold`."""
  z = jnp.abs(means - latent_mean) / latent_std
  p_int = jnp.mean(erfc(z / jnp.sqrt(2.0)), axis=-1)      # 2 (1 - Phi(z)) = erfc(z / sqrt 2)
  return jnp.where(p_int >= threshold, p_int, 0.0)


def mixed_next_value(next_values, offline_next_values, weights):
  """Eq. (4): (1 - p) Q'(s', a') + p Q_off(s', a') (or V for IQL)."""
  return (1.0 - weights) * next_values + weights * offline_next_values


# ----------------------------------------------------------------------------- agent

@flax.struct.dataclass
class State:
  base: Any                   # the base agent's state (cql.State / awac.State / iql.State), trained on
  offline_params: Any         # frozen Q_off critic params (CQL/AWAC) or V_off value params (IQL)
  cvae_params: Any            # frozen C-VAE
  latent_mean: jax.Array      # (d_z,) m_j
  latent_std: jax.Array       # (d_z,) s_j
  obs_mean: jax.Array         # the agent's observation normalisation, undone for a raw-state C-VAE
  obs_std: jax.Array
  config: Config = flax.struct.field(pytree_node=False)

  @property
  def actor(self):
    return self.base.actor

  @property
  def step(self):
    return self.base.step


def _critic(config: Config, base_state):
  return base_state.sac.critic if config.base == "cql" else base_state.critic


def frozen_offline_params(config: Config, base_state):
  """What SAMG freezes at the switch: V_off's params for IQL, the Q_off ensemble's otherwise."""
  return base_state.value.params if config.base == "iql" else _critic(config, base_state).params


def from_offline(base_state, cvae_params, latent_mean, latent_std, obs_mean, obs_std,
                 config: Config) -> State:
  """The SAMG state at the offline -> online switch (one seed; vmap it for many)."""
  return State(base=base_state, offline_params=frozen_offline_params(config, base_state),
               cvae_params=cvae_params, latent_mean=jnp.asarray(latent_mean, jnp.float32),
               latent_std=jnp.asarray(latent_std, jnp.float32),
               obs_mean=jnp.asarray(obs_mean, jnp.float32), obs_std=jnp.asarray(obs_std, jnp.float32),
               config=config)


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config()) -> State:
  """A fresh SAMG state (untrained base and C-VAE, standard latent statistics): a restore template
  and a test fixture. A real run builds its state with `from_offline`."""
  config = config.resolved(act_dim)
  k_base, k_cvae = jax.random.split(key)
  base = BASES[config.base].init(k_base, obs_dim, act_dim, config.base_config)
  cvae = cvae_init(k_cvae, obs_dim, act_dim, config)
  d = config.latent_dim
  return from_offline(base, cvae.vae.params, jnp.zeros(d), jnp.ones(d), jnp.zeros(obs_dim),
                      jnp.ones(obs_dim), config)


def weight(state: State, observations, actions):
  """p(s, a), eq. (3), for observations in the agent's (normalised) convention."""
  c = state.config
  if c.cvae_raw_states:
    observations = observations * state.obs_std + state.obs_mean
  means = encoder_means(state.cvae_params, c, observations, actions)
  return confidence_weight(means, state.latent_mean, state.latent_std, c.threshold)


def offline_next_value(state: State, next_observations, next_actions):
  """Q_off(s', a') = min_k of the frozen critics, or V_off(s') for IQL."""
  if state.config.base == "iql":
    return state.base.value.apply_fn(state.offline_params, next_observations)
  return _critic(state.config, state.base).apply_fn(state.offline_params, next_observations,
                                                    next_actions).min(0)


def _policy_mode(state: State, observations):
  return BASES[state.config.base].act(state.base, observations, jax.random.PRNGKey(0), False)


def next_value_hook(state: State):
  """The bases' `next_value_hook` for SAMG: (batch, a', next values) -> eq. (4)'s mixed values."""
  c = state.config

  def weights_of(b, next_actions):
    if c.weight_at == "next":
      a = next_actions if next_actions is not None else _policy_mode(state, b.next_observations)
      return weight(state, b.next_observations, a)
    return weight(state, b.observations, b.actions)

  def hook(b, next_actions, next_values):
    p = jax.lax.stop_gradient(weights_of(b, next_actions))
    return mixed_next_value(next_values, offline_next_value(state, b.next_observations, next_actions), p)

  return hook


def update(state: State, batch: Transition, key: PRNGKey):
  """One step of the base algorithm with the mixed Bellman target, eq. (4). The online loop stores
  rewards with the offline reward transform, so Q and Q_off share one scale."""
  c = state.config
  base, info = BASES[c.base].update(state.base, batch, key, next_value_hook=next_value_hook(state))
  p = weight(state, batch.observations, batch.actions)      # p(s, a) of the batch, for the logs
  info = {**info, "samg_weight": p.mean(), "samg_weight_nonzero": (p > 0).mean()}
  return state.replace(base=base), info


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  """The base algorithm's acting rule; a deterministic base actor explores with Gaussian noise."""
  c = state.config
  k_act, k_noise = jax.random.split(key)
  action = BASES[c.base].act(state.base, observations, k_act, explore)
  if explore and c.base == "iql" and c.base_config.deterministic and c.exploration_noise > 0:
    action = jnp.clip(action + c.exploration_noise * jax.random.normal(k_noise, action.shape), -1.0, 1.0)
  return action
