"""SAMG: state-action-conditional offline-to-online RL with offline model guidance (Zhang et al., 2024),
on CQL, AWAC, IQL or Cal-QL (`Config.base`). The paper's equations were stripped from our copy; they are
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
its latent statistics are frozen too. Cal-QL (`calql`) is a CQL-family base: its offline critic is
the calibrated one, and online it runs as CORL's Cal-QL does after the switch (`calql.online_config`:
no calibration, alpha_cql = cql_alpha_online), i.e. CQL's losses, the offline term below included.
The base algorithm's own losses are unchanged: SAMG swaps the bootstrap value through the bases'
`next_value_hook`. Online the buffer is small and holds online data only, seeded with transitions of
the offline policy (`loops.collect_prefill`, called by o2o_jax/recipes/samg.py).

Two extras of the paper's practice (App. C), both pure functions of traced values (jit/vmap-safe):
  CQL offline penalty (App. C.1: CQL's conservative term "is unrestricted in our paradigm and may
      cause algorithm divergence. So we add an offline version of the term still weighted by the
      distribution-aware weight"): on a batch of offline rows (s, a) ~ D, beside CQL's own term on
      the online batch,
        L_off = w_off alpha_cql sum_i mean_b p(s_b, a_b) gap_i(s_b, a_b),
        gap_i(s, a) = T logsumexp_j((Q_i(s, a_j) - log q(a_j)) / T) - Q_i(s, a)   (CQL's, per row)
      The paper gives no formula; this is its sentence read literally: CQL's term on offline
      samples, each weighted by p. w_off = `cql_offline_penalty` (1: the same alpha_cql; 0: off).
  Guidance cut-off (App. C.4: "we cut the offline guidance and revert to the vanilla algorithms
      after a specific period of time in practice"): p := 0 once `guidance_steps` SAMG updates are
      done, so eq. (4) becomes the base's own target and L_off vanishes. The paper gives no length;
      None (the default) keeps the guidance for the whole run.
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
from o2o_jax.agents.o2o import calql
from o2o_jax.agents.offline import awac, cql, iql
from o2o_jax.agents.online import sac
from o2o_jax.errors import O2OError
from o2o_jax.types import PRNGKey, Transition

BASES = {"cql": cql, "awac": awac, "iql": iql, "calql": calql}
CQL_BASES = ("cql", "calql")     # a cql.State (critic under .sac) and CQL's conservative term
WEIGHT_AT = ("sa", "next")


@dataclasses.dataclass(frozen=True)
class Config:
  base: str = "iql"                                  # cql | awac | iql | calql
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
  # acting: Gaussian noise for a deterministic base actor, as CORL's `finetune/iql.py` (the paper's
  # base code) acts when `iql_deterministic`: a + clip(N(0, expl_noise^2), -noise_clip, noise_clip),
  # then clipped to the action bounds; CORL's defaults expl_noise = 0.03, noise_clip = 0.5.
  exploration_noise: float = 0.03
  exploration_noise_clip: float = 0.5
  # CQL base only (paper App. C.1): weight w_off of the p-weighted conservative term on offline rows,
  # relative to alpha_cql (0: off). Applied by `update_with_offline` (offline rows in the batch).
  cql_offline_penalty: float = 1.0
  # guidance cut-off (paper App. C.4): SAMG updates with offline guidance; None: the whole run
  guidance_steps: Optional[int] = None

  def resolved(self, act_dim: int) -> "Config":
    """Fills the defaults that depend on the env (latent size, base config); checks the choices."""
    if self.base not in BASES:
      raise O2OError(f"SAMG base must be one of {', '.join(BASES)} (got {self.base!r})")
    if self.weight_at not in WEIGHT_AT:
      raise O2OError(f"SAMG weight_at must be 'sa' or 'next' (got {self.weight_at!r})")
    if not 0.0 <= self.threshold <= 1.0:
      raise O2OError(f"SAMG threshold must lie in [0, 1] (got {self.threshold})")
    if self.exploration_noise < 0 or self.exploration_noise_clip < 0:
      raise O2OError("SAMG exploration noise and its clip must not be negative (got "
                     f"{self.exploration_noise}, {self.exploration_noise_clip})")
    if self.cql_offline_penalty < 0:
      raise O2OError(f"SAMG cql_offline_penalty must not be negative (got {self.cql_offline_penalty})")
    if self.guidance_steps is not None and self.guidance_steps < 0:
      raise O2OError(f"SAMG guidance_steps must not be negative (got {self.guidance_steps})")
    return dataclasses.replace(
        self, base_config=self.base_config or online_base_config(self.base, BASES[self.base].Config()),
        latent_dim=self.latent_dim or 2 * act_dim,
        cvae_hidden_dims=tuple(self.cvae_hidden_dims),
        cvae_decoder_hidden_dims=(None if self.cvae_decoder_hidden_dims is None
                                  else tuple(self.cvae_decoder_hidden_dims)))

  @property
  def uses_offline_rows(self) -> bool:
    """Whether an update wants offline rows beside the online batch (the CQL offline penalty)."""
    return self.base in CQL_BASES and self.cql_offline_penalty > 0


def online_base_config(base: str, config):
  """The base's Config for online training: Cal-QL's after CORL's switch (`calql.online_config`),
  the others' as they are."""
  return calql.online_config(config) if base == "calql" else config


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


# ----------------------------------------------------------------------------- paper App. C extras

def guidance_active(updates, guidance_steps: Optional[int]):
  """Paper App. C.4: the offline guidance holds for the first `guidance_steps` SAMG updates (a
  static int; None: always). `updates` is a traced counter: the switch is a jnp comparison."""
  if guidance_steps is None:
    return jnp.ones(jnp.shape(updates), bool)
  return jnp.asarray(updates) < guidance_steps


def gate_weights(weights, updates, guidance_steps: Optional[int]):
  """p after the cut-off: p while the guidance is active, 0 afterwards (the vanilla base algorithm)."""
  return jnp.where(guidance_active(updates, guidance_steps), weights, 0.0)


def weighted_penalty(gaps, weights):
  """Paper App. C.1's offline CQL term per critic: mean_b p_b gap_{i,b}; gaps (N, B), p (B,) -> (N,)."""
  return jnp.mean(weights * gaps, axis=-1)


def per_row_conservative_gap(critic_params, sac_state: sac.State, batch: Transition, q_data, key):
  """CQL's conservative gap (`cql.conservative_gap`) of each row separately: (N, B), with
  gap[:, b] = T logsumexp_j((Q(s_b, a_j) - log q(a_j)) / T) - Q(s_b, a_b) (its mean over b is CQL's)."""
  rows = jax.tree_util.tree_map(lambda x: x[:, None], batch)                 # B batches of one row
  keys = jax.random.split(key, batch.rewards.shape[0])
  one = lambda row, q, k: cql.conservative_gap(critic_params, sac_state, row, q, k)
  return jax.vmap(one, in_axes=(0, 1, 0), out_axes=1)(rows, q_data[..., None], keys)


def cql_offline_penalty(critic_params, sac_state: sac.State, offline: Transition, weights, key, *,
                        alpha_prime, config: Config):
  """L_off = w_off alpha_cql sum_i mean_b p_b gap_i(s_b, a_b) on offline rows (paper App. C.1; see the
  module docstring). In CQL's Lagrange form the term is scaled and shifted as CQL's own:
  alpha' w_off alpha_cql sum_i mean_b p_b (gap_i,b - target_action_gap)."""
  c = sac_state.config
  q = sac_state.critic.apply_fn(critic_params, offline.observations, offline.actions)   # (N, B)
  gaps = per_row_conservative_gap(critic_params, sac_state, offline, q, key)
  if c.lagrange:
    per_critic = alpha_prime * c.cql_alpha * weighted_penalty(gaps - c.target_action_gap, weights)
  else:
    per_critic = c.cql_alpha * weighted_penalty(gaps, weights)
  return config.cql_offline_penalty * per_critic.sum(), gaps.mean(-1)


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
  updates: jax.Array          # int32: SAMG updates done online (the guidance cut-off's clock)
  config: Config = flax.struct.field(pytree_node=False)

  @property
  def actor(self):
    return self.base.actor

  @property
  def step(self):
    return self.base.step


def _critic(config: Config, base_state):
  return base_state.sac.critic if config.base in CQL_BASES else base_state.critic


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
               updates=jnp.zeros((), jnp.int32), config=config)


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
  """p(s, a), eq. (3), for observations in the agent's (normalised) convention; 0 once the guidance
  is cut off (`Config.guidance_steps`, paper App. C.4)."""
  c = state.config
  if c.cvae_raw_states:
    observations = observations * state.obs_std + state.obs_mean
  means = encoder_means(state.cvae_params, c, observations, actions)
  p = confidence_weight(means, state.latent_mean, state.latent_std, c.threshold)
  return gate_weights(p, state.updates, c.guidance_steps)


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


def _cql_update(state: State, batch: Transition, offline: Transition, key: PRNGKey):
  """The CQL-family base's update (`cql.update`, or `calql.update`, which is it online) with the
  p-weighted offline term (`cql_offline_penalty`) added to the critic loss; with p = 0 on every
  offline row it equals the base's update exactly (tests/test_samg.py pins this)."""
  c = state.config
  p_off = jax.lax.stop_gradient(weight(state, offline.observations, offline.actions))

  def offline_term(critic_params, sac_state, k, ap):
    extra, off_gap = cql_offline_penalty(critic_params, sac_state, offline, p_off, k,
                                         alpha_prime=ap, config=c)
    return extra, {"samg_offline_penalty": extra, "samg_offline_gap": off_gap.mean()}

  new, info = BASES[c.base].update(state.base, batch, key, next_value_hook=next_value_hook(state),
                                   extra_critic_loss=offline_term)
  return new, {**info, "samg_offline_weight": p_off.mean()}


def update(state: State, batch: Transition, key: PRNGKey, offline: Optional[Transition] = None):
  """One step of the base algorithm with the mixed Bellman target, eq. (4). The online loop stores
  rewards with the offline reward transform, so Q and Q_off share one scale. `offline`: rows of the
  offline data for the CQL base's p-weighted offline term (paper App. C.1); without them (or for
  AWAC/IQL, or with `cql_offline_penalty = 0`) the base's own losses are used unchanged."""
  c = state.config
  if offline is not None and c.uses_offline_rows:
    base, info = _cql_update(state, batch, offline, key)
  else:
    base, info = BASES[c.base].update(state.base, batch, key, next_value_hook=next_value_hook(state))
  p = weight(state, batch.observations, batch.actions)      # p(s, a) of the batch, for the logs
  info = {**info, "samg_weight": p.mean(), "samg_weight_nonzero": (p > 0).mean(),
          "samg_guidance": guidance_active(state.updates, c.guidance_steps).astype(jnp.float32)}
  return state.replace(base=base, updates=state.updates + 1), info


OFFLINE_FRACTION = 0.5     # `update_with_offline`'s batches: as many offline rows as online rows


def split_offline_rows(batch: Transition):
  """[offline rows | online rows] in equal halves, as `replay.sample_mixed(..., 0.5)` draws them."""
  n = batch.rewards.shape[0]
  if n % 2:
    raise O2OError(f"update_with_offline needs an even batch: offline rows then online rows (got {n})")
  return (jax.tree_util.tree_map(lambda x: x[:n // 2], batch),
          jax.tree_util.tree_map(lambda x: x[n // 2:], batch))


def update_with_offline(state: State, batch: Transition, key: PRNGKey):
  """`update` for the online loop when the CQL offline term is on: `batch` holds offline rows, then
  as many online rows (loops' `offline_fraction=OFFLINE_FRACTION`, twice the online batch size)."""
  offline, online = split_offline_rows(batch)
  return update(state, online, key, offline=offline)


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  """The base algorithm's acting rule. A deterministic base actor (IQL's) explores as CORL's
  `finetune/iql.py` does when `iql_deterministic`: noise = clip(expl_noise N(0, 1), -noise_clip,
  noise_clip), action = clip(pi(s) + noise, -1, 1)."""
  c = state.config
  k_act, k_noise = jax.random.split(key)
  action = BASES[c.base].act(state.base, observations, k_act, explore)
  if explore and c.base == "iql" and c.base_config.deterministic and c.exploration_noise > 0:
    noise = jnp.clip(c.exploration_noise * jax.random.normal(k_noise, action.shape),
                     -c.exploration_noise_clip, c.exploration_noise_clip)
    action = jnp.clip(action + noise, -1.0, 1.0)
  return action
