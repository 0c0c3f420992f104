"""ACA: Actor-Critic Alignment for offline-to-online RL (Yu & Zhang, ICML 2023), reference §3.

Soft optimality pi ∝ exp(Q) gives the aligned critic Q~(s, a) = log pi0(a|s) + Z(s): the offline Q is
discarded and the online critic is rebuilt around the offline actor pi0 and a state baseline Z.

Offline stage, SAC+ML (`offline_step`, also `update` for the registry name "sacml"), one batch,
  Q_k:   SAC critic, y = r + gamma (1-d) (min_k Q'_k(s',a') - alpha log pi(a'|s'))          (§3a)
  Z_j:   L_Z = sum_j E_D[(log pi(a|s) + Z_j(s) - y_Z)^2],                                    (§3a)
         y_Z = r + gamma (1-d) [log pi(a'|s') + min_j Z_j(s') - alpha log pi(a'|s')], a' ~ pi(.|s'),
         the current Z under stop-gradient (no target network)
  actor: L_pi = lambda E[alpha log pi(a~|s) - min_k Q_k(s,a~)] - E_D[log pi(a|s)],
         lambda = alpha_ML / E|Q| (detached), alpha_ML = 30                                 (§3a)
  temperature: SAC's, on its own sample a ~ pi(.|s) of the actor before this step.
Order of one step (d3rlpy's `SAC._update`, kept by the official `SACML._update`): temperature ->
Q (+ Polyak) -> Z -> actor, so Q's and Z's targets and the actor loss use the alpha after this
step's temperature step.
From any other stochastic offline actor (CQL, IQL, AWAC, BC): `fit_baseline_step` fits Z alone with
pi = pi0 fixed and alpha fixed (`init_alpha`, default 1) [recon, §3e].

Switch (`start_online`, §3b): Q is dropped; R_k := Z_k (first-layer action weights 0, so R_k(s,a) =
Z_k(s)); target := R; pi0 := the offline actor (frozen), pi := pi0; log alpha := 0; w := w0; fresh
optimizers, the actor's with its gradient norm clipped at 0.25. Hence at the switch
  Q(s, a) = Z(s) + w0 c(log pi0(a|s))  (= Z(s) + log pi0(a|s) for w0 = 1 away from the clip).

Online (`online_update`), the re-parameterised critic
  Q_k(s,a) = R_k(s,a) + w_t c(log pi0(a|s)),  c(x) = softplus(x - x_clip) + x_clip,           (§3a)
  x_clip(s) = min_± log pi0(mu0 ± beta sigma0 | s) (pre-tanh space for the squashed policy),
  critic: sum_k E[(R_k(s,a) + w c(log pi0(a|s)) - y)^2],
          y = r + gamma (1-d) [min_k R'_k(s',a') + w c(log pi0(a'|s')) - alpha log pi(a'|s')],
  actor:  E[alpha log pi(a~|s) - min_k R_k(s,a~) - w c(log pi0(a~|s))]  (gradient through a~ and c),
  temperature: SAC's with target entropy -c_H |A|, on its own sample a ~ pi(.|s),
  w_t = max(w_{t-1} - w0 / (K 1000), w_min) per update.
Order of one step (official `aca_agent/aca.py`, `ACA._update`): temperature -> critic (+ Polyak)
-> actor -> w, so the critic target and the actor loss use the alpha after this step's
temperature step.
The log pi0 terms carry no gradient into the critic. Acting: a ~ pi online, tanh(mu) for evaluation.
The SAC pieces (target, critic step, temperature step) come from `agents.online.sac`.

States are not normalised in ACA's own chain (the official `run_sacml.py` and `run_aca.py` build
SACML and ACA without a d3rlpy `scaler`): `o2o_jax.recipes.aca` pretrains SAC+ML on raw
observations. Initialisation: Q, R and Z follow d3rlpy's default encoders and heads (PyTorch's
nn.Linear default, `critic_init="torch"`), independent of the actor's options, which follow the
offline actor (SAC+ML: also d3rlpy's default).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from o2o_jax import losses, networks
from o2o_jax.agents.common import TrainState, make_train_state
from o2o_jax.agents.online import sac
from o2o_jax.types import PRNGKey, Transition

ACTOR_KINDS = ("tanh_gaussian", "gaussian")

# Per-dataset settings of the official code (§3d): clip beta, (w0, K, w_min), top-N trajectories,
# entropy coefficient c_H. alpha_ML = 30 everywhere (the Config default).
DATASET_PRESETS = {
    "random": dict(clip_beta=7.0, w_init=1.0, w_decay_k=10.0, w_min=0.0, top_n_trajectories=0,
                   entropy_coef=1.0),
    "medium": dict(clip_beta=7.0, w_init=1.0, w_decay_k=40.0, w_min=0.5, top_n_trajectories=0,
                   entropy_coef=1.0),
    "medium-replay": dict(clip_beta=7.0, w_init=1.0, w_decay_k=40.0, w_min=0.5, top_n_trajectories=50,
                          entropy_coef=1.0),
    "medium-expert": dict(clip_beta=15.0, w_init=1.0, w_decay_k=100.0, w_min=1.0,
                          top_n_trajectories=50, entropy_coef=1.0),
    "expert": dict(clip_beta=15.0, w_init=1.0, w_decay_k=100.0, w_min=1.0, top_n_trajectories=50,
                   entropy_coef=1.0),
    "antmaze": dict(clip_beta=3.0, w_init=1.0, w_decay_k=200.0, w_min=0.5, top_n_trajectories=0,
                    entropy_coef=0.5),
}


@dataclasses.dataclass(frozen=True)
class Config(sac.Config):
  hidden_dims: Sequence[int] = (256, 256)
  log_std_min: float = -20.0                     # d3rlpy's squashed Gaussian
  log_std_max: float = 2.0
  critic_init: str = "torch"                     # Q, R and Z (networks.INIT_SCHEMES): d3rlpy's default
  actor_kind: str = "tanh_gaussian"              # or "gaussian": IQL/AWAC's state-independent log std
  gaussian_tanh_mean: bool = True                # "gaussian" kind: mean = tanh(.) (IQL) or linear (AWAC)
  # offline SAC+ML
  ml_alpha: float = 30.0                         # alpha_ML
  baseline_lr: float = 3e-4                      # Z
  # online
  clip_beta: Optional[float] = 7.0               # None: c(x) = x (no lower clip)
  w_init: float = 1.0                            # w0
  w_decay_k: float = 40.0                        # K: w falls by w0 / (K 1000) per update
  w_min: float = 0.5
  entropy_coef: float = 1.0                      # c_H: online target entropy -c_H |A|
  online_init_alpha: float = 1.0                 # temperature reset at the switch
  actor_grad_clip: Optional[float] = 0.25
  top_n_trajectories: int = 0                    # online buffer seeded with the top-N offline episodes


def dataset_preset(env: str, level: str) -> dict:
  """The §3d row of a dataset: AntMaze by env, MuJoCo by level (unknown levels: the medium row)."""
  if env.startswith("antmaze"):
    return dict(DATASET_PRESETS["antmaze"])
  return dict(DATASET_PRESETS.get(level, DATASET_PRESETS["medium"]))


@flax.struct.dataclass
class State:
  actor: TrainState                  # pi (offline: the SAC+ML actor; online: fine-tuned from pi0)
  critic: TrainState                 # offline: Q_k; online: R_k
  target_critic_params: dict
  temperature: TrainState            # {"log_alpha"}
  baseline: TrainState               # Z_j(s)
  offline_actor_params: dict         # pi0 (frozen online)
  weight: jax.Array                  # w_t
  step: jax.Array
  config: Config = flax.struct.field(pytree_node=False)


def make_networks(config: Config, act_dim: int):
  """(actor, critic ensemble, baseline ensemble); critic and baseline share one layout so that R can
  be initialised from Z."""
  hidden = tuple(config.hidden_dims)
  if config.actor_kind == "tanh_gaussian":
    actor = networks.TanhGaussianActor(act_dim, hidden, config.log_std_min, config.log_std_max,
                                       orthogonal_init=config.orthogonal_init,
                                       learnable_log_std_scale=config.learnable_log_std_scale)
  elif config.actor_kind == "gaussian":
    actor = networks.GaussianActor(act_dim, hidden, config.log_std_min, config.log_std_max,
                                   tanh_mean=config.gaussian_tanh_mean,
                                   orthogonal_init=config.orthogonal_init)
  else:
    raise ValueError(f"actor_kind must be one of {ACTOR_KINDS} (got {config.actor_kind!r})")
  critic_hidden = tuple(config.critic_hidden_dims or config.hidden_dims)
  init = networks.init_options(config.critic_init)
  critic = networks.CriticEnsemble(config.num_critics, critic_hidden, layer_norm=config.layer_norm, **init)
  baseline = networks.ValueEnsemble(config.num_critics, critic_hidden, layer_norm=config.layer_norm, **init)
  return actor, critic, baseline


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config(),
         actor_params: Optional[dict] = None) -> State:
  """Offline-stage state; `actor_params` (another offline actor, pi0) for the Z-fit path."""
  if config.target_entropy is None:
    config = dataclasses.replace(config, target_entropy=-float(act_dim))
  actor, critic, baseline = make_networks(config, act_dim)
  k_actor, k_critic, k_base = jax.random.split(key, 3)
  obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
  if actor_params is None:
    actor_params = actor.init(k_actor, obs)
  critic_params = critic.init(k_critic, obs, act)
  return State(actor=make_train_state(actor, actor_params, config.actor_lr),
               critic=make_train_state(critic, critic_params, config.critic_lr),
               target_critic_params=critic_params,
               temperature=make_train_state(None, {"log_alpha": jnp.log(jnp.float32(config.init_alpha))},
                                            config.alpha_lr),
               baseline=make_train_state(baseline, baseline.init(k_base, obs), config.baseline_lr),
               offline_actor_params=actor_params, weight=jnp.float32(config.w_init),
               step=jnp.zeros((), jnp.int32), config=config)


# ----------------------------------------------------------------------------- densities

def _squashed(dist) -> bool:
  return isinstance(dist, networks.TanhGaussian)


def log_prob_pre_tanh(dist, u):
  """log-density of the action f(u) at the pre-squash point u (f = tanh for the squashed policy,
  the identity otherwise); no atanh, so it is exact at saturated actions."""
  if _squashed(dist):
    return dist.distribution.log_prob(u) - dist.bijector.forward_log_det_jacobian(u)
  return dist.log_prob(u)


def sample_pre_tanh(dist, key):
  """(a, u, log pi(a|s)) with a = f(u), u reparameterised."""
  if _squashed(dist):
    u = dist.distribution.sample(seed=key)
    return jnp.tanh(u), u, log_prob_pre_tanh(dist, u)
  a = dist.sample(seed=key)
  return a, a, dist.log_prob(a)


def clip_threshold(dist, beta: float):
  """x_clip(s) = min_± log pi0(mu0 ± beta sigma0 | s), in pre-tanh space for the squashed policy."""
  base = dist.distribution if _squashed(dist) else dist
  mu, sigma = base.loc, base.scale_diag
  return jnp.minimum(log_prob_pre_tanh(dist, mu + beta * sigma), log_prob_pre_tanh(dist, mu - beta * sigma))


def smooth_clip(x, x_clip):
  """c(x) = softplus(x - x_clip) + x_clip: ~x above x_clip, ~x_clip below."""
  return jax.nn.softplus(x - x_clip) + x_clip


def clipped_log_prob(dist, log_probs, beta: Optional[float]):
  return log_probs if beta is None else smooth_clip(log_probs, clip_threshold(dist, beta))


def reference_policy(state: State, observations):
  return state.actor.apply_fn(state.offline_actor_params, observations)


def reference_term(state: State, observations, actions=None, pre_tanh=None):
  """c(log pi0(a|s)), at given actions or at pre-squash points (exact for sampled actions)."""
  dist0 = reference_policy(state, observations)
  logp0 = log_prob_pre_tanh(dist0, pre_tanh) if pre_tanh is not None else dist0.log_prob(actions)
  return clipped_log_prob(dist0, logp0, state.config.clip_beta)


def aligned_q(state: State, critic_params, observations, actions):
  """Q_k(s, a) = R_k(s, a) + w_t c(log pi0(a|s)): shape (K, batch)."""
  r = state.critic.apply_fn(critic_params, observations, actions)
  return r + state.weight * reference_term(state, observations, actions)[None]


# ----------------------------------------------------------------------------- offline: SAC+ML, Z

def baseline_loss(baseline_params, state: State, batch: Transition, key: PRNGKey):
  """L_Z of the aligned critic log pi(a|s) + Z_j(s), pi = the state's actor (§3a)."""
  pi = sac.policy(state, batch.observations)
  logp_data = jax.lax.stop_gradient(pi.log_prob(batch.actions))
  next_a, next_logp = sac.policy(state, batch.next_observations).sample_and_log_prob(seed=key)
  next_z = state.baseline.apply_fn(state.baseline.params, batch.next_observations).min(0)
  next_v = next_logp + next_z - sac.alpha(state) * next_logp
  targets = losses.td_target(batch.rewards, batch.masks, state.config.discount, next_v)
  z = state.baseline.apply_fn(baseline_params, batch.observations)
  loss = losses.critic_mse(logp_data[None] + z, targets)
  return loss, {"baseline_loss": loss, "z_mean": z.mean(), "logp_data": logp_data.mean()}


def update_baseline(state: State, batch: Transition, key: PRNGKey):
  grads, info = jax.grad(baseline_loss, has_aux=True)(state.baseline.params, state, batch, key)
  return state.replace(baseline=state.baseline.apply_gradients(grads=grads)), info


def sacml_actor_loss(actor_params, state: State, batch: Transition, key: PRNGKey):
  """lambda E[alpha log pi(a~|s) - min_k Q_k(s,a~)] - E_D[log pi(a|s)], lambda = alpha_ML / E|Q|."""
  dist = sac.policy(state, batch.observations, actor_params)
  actions, log_probs = dist.sample_and_log_prob(seed=key)
  q = state.critic.apply_fn(state.critic.params, batch.observations, actions).min(0)
  lam = state.config.ml_alpha / jnp.maximum(jax.lax.stop_gradient(jnp.abs(q).mean()), 1e-6)
  rl = losses.sac_actor_loss(sac.alpha(state), log_probs, q)
  ml = -dist.log_prob(batch.actions).mean()
  loss = lam * rl + ml
  return loss, {"actor_loss": loss, "ml_loss": ml, "ml_lambda": lam, "entropy": -log_probs.mean(),
                "log_probs": log_probs}


def update_temperature(state: State, observations, key: PRNGKey):
  """d3rlpy's `update_temp` (official `sacml_impl.py` / `aca_impl.py`): SAC's temperature step on a
  fresh sample a ~ pi(.|s) of the current actor, without gradient into the actor."""
  _, log_probs = sac.policy(state, observations).sample_and_log_prob(seed=key)
  return sac.update_temperature(state, jax.lax.stop_gradient(log_probs))


def update_actor(state: State, batch: Transition, key: PRNGKey, loss_fn):
  """One actor step on `loss_fn(params, state, batch, key)` (no temperature step: it comes first)."""
  grads, info = jax.grad(loss_fn, has_aux=True)(state.actor.params, state, batch, key)
  info.pop("log_probs")
  return state.replace(actor=state.actor.apply_gradients(grads=grads)), info


def offline_step(state: State, batch: Transition, key: PRNGKey):
  """One SAC+ML step in the official order (`SACML._update`): temperature, Q (SAC critic + Polyak),
  Z, actor (§3a)."""
  k_temp, k_critic, k_base, k_actor = jax.random.split(key, 4)
  state, temp_info = update_temperature(state, batch.observations, k_temp)
  state, critic_info = sac.update_critic(state, batch, k_critic)
  state, base_info = update_baseline(state, batch, k_base)
  state, actor_info = update_actor(state, batch, k_actor, sacml_actor_loss)
  return state.replace(step=state.step + 1), {**critic_info, **base_info, **actor_info, **temp_info}


update = offline_step      # the offline algorithm "sacml" of the registry


def fit_baseline_step(state: State, batch: Transition, key: PRNGKey):
  """Z alone, with pi = pi0 (the state's actor, never updated) and alpha fixed [recon, §3e]."""
  state, info = update_baseline(state, batch, key)
  return state.replace(step=state.step + 1), info


# ----------------------------------------------------------------------------- the switch

def critic_from_baseline(baseline_params, act_dim: int):
  """R_k := Z_k: every layer copied, the first layer's action rows set to 0 (the critic's input is
  [s, a]), so R_k(s, a) = Z_k(s) for every a (§3b)."""
  z = baseline_params["params"]["VmapValueNet_0"]
  first = z["MLP_0"]["Dense_0"]
  kernel = first["kernel"]                                    # (K, obs_dim, hidden)
  zeros = jnp.zeros(kernel.shape[:-2] + (act_dim, kernel.shape[-1]), kernel.dtype)
  mlp = {**z["MLP_0"], "Dense_0": {**first, "kernel": jnp.concatenate([kernel, zeros], axis=-2)}}
  return {"params": {"VmapCritic_0": {**z, "MLP_0": mlp}}}


def start_online(state: State, act_dim: int, config: Optional[Config] = None) -> State:
  """§3b: drop Q, R := Z, target := R, pi0 := pi (frozen copy), alpha := online_init_alpha, w := w0,
  fresh optimizers (actor gradient clipped); `config` may carry the online settings (preset)."""
  c = config or state.config
  c = dataclasses.replace(c, target_entropy=-c.entropy_coef * float(act_dim))
  actor, critic, _ = make_networks(c, act_dim)
  r_params = critic_from_baseline(state.baseline.params, act_dim)
  return state.replace(
      actor=make_train_state(actor, state.actor.params, c.actor_lr, grad_clip=c.actor_grad_clip),
      critic=make_train_state(critic, r_params, c.critic_lr), target_critic_params=r_params,
      temperature=make_train_state(None, {"log_alpha": jnp.log(jnp.float32(c.online_init_alpha))},
                                   c.alpha_lr),
      offline_actor_params=state.actor.params, weight=jnp.float32(c.w_init),
      step=jnp.zeros((), jnp.int32), config=c)


# ----------------------------------------------------------------------------- online

def online_target(state: State, batch: Transition, key: PRNGKey):
  """y = r + gamma (1-d) [min_k R'_k(s',a') + w c(log pi0(a'|s')) - alpha log pi(a'|s')]."""
  next_a, next_u, next_logp = sample_pre_tanh(sac.policy(state, batch.next_observations), key)
  next_r = state.critic.apply_fn(state.target_critic_params, batch.next_observations, next_a).min(0)
  next_ref = reference_term(state, batch.next_observations, pre_tanh=next_u)
  next_v = next_r + state.weight * next_ref - sac.alpha(state) * next_logp
  return jax.lax.stop_gradient(losses.td_target(batch.rewards, batch.masks, state.config.discount, next_v))


def online_critic_loss(critic_params, state: State, batch: Transition, targets, ref_data):
  q = state.critic.apply_fn(critic_params, batch.observations, batch.actions) + state.weight * ref_data[None]
  loss = losses.critic_mse(q, targets)
  return loss, {"critic_loss": loss, "q_mean": q.mean(), "target_mean": targets.mean(),
                "ref_term": ref_data.mean()}


def online_actor_loss(actor_params, state: State, batch: Transition, key: PRNGKey):
  """E[alpha log pi(a~|s) - min_k R_k(s,a~) - w c(log pi0(a~|s))], gradient through a~ and c."""
  a, u, logp = sample_pre_tanh(sac.policy(state, batch.observations, actor_params), key)
  r = state.critic.apply_fn(state.critic.params, batch.observations, a).min(0)
  ref = reference_term(state, batch.observations, pre_tanh=u)
  loss = jnp.mean(sac.alpha(state) * logp - r - state.weight * ref)
  return loss, {"actor_loss": loss, "entropy": -logp.mean(), "log_probs": logp,
                "ref_logp_policy": ref.mean()}


def online_update(state: State, batch: Transition, key: PRNGKey):
  """One online step in the official order (`ACA._update`): temperature, critic (+ Polyak), actor
  (clipped gradient), then w decays."""
  c = state.config
  k_temp, k_target, k_actor = jax.random.split(key, 3)
  state, temp_info = update_temperature(state, batch.observations, k_temp)
  targets = online_target(state, batch, k_target)
  ref_data = jax.lax.stop_gradient(reference_term(state, batch.observations, batch.actions))
  grads, critic_info = jax.grad(online_critic_loss, has_aux=True)(state.critic.params, state, batch,
                                                                  targets, ref_data)
  critic = state.critic.apply_gradients(grads=grads)
  state = state.replace(critic=critic, target_critic_params=losses.polyak(
      state.target_critic_params, critic.params, c.tau))
  state, actor_info = update_actor(state, batch, k_actor, online_actor_loss)
  weight = jnp.maximum(state.weight - c.w_init / (c.w_decay_k * 1000.0), c.w_min)
  info = {**critic_info, **actor_info, **temp_info, "w": state.weight}
  return state.replace(weight=weight.astype(jnp.float32), step=state.step + 1), info


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  """a ~ pi online; the deterministic mean (tanh(mu) when squashed) for evaluation."""
  dist = sac.policy(state, observations)
  return jnp.clip(dist.sample(seed=key) if explore else dist.mode(), -1.0, 1.0)

