"""O2SAC: OCR-CFT for a stochastic offline policy (CQL -> SAC), paper §4 and appendix G.1.

Three phases, each a pure step over one `State` (vmap it over seeds); alpha is fixed in phases 1-2:

 1. `reevaluate_step`  policy re-evaluation, eq. 3 as fitted Q-evaluation of the frozen pi_off:
       y = r + gamma (1-d) [min_i Q'_i(s', a') - alpha log pi_off(a'|s')],  a' ~ pi_off(.|s')
 2. `align_step`       value alignment, eqs. 12-13:
       a. = tanh(mu_off(s)) (clipped to +-0.9999),  a ~ pi_on(.|s) (no gradient)
       Q'(s, a) = min(Q'(s, a.) - alpha (log pi_off(a.|s) - log pi_off(a|s)), Q'(s, a))   (eq. 12)
       L = sum_i (Q_i(s, a) - Q'(s, a))^2 + sum_i (Q_i(s, a.) - Q'(s, a.))^2               (eq. 13)
     plus the SAC actor step (eq. 2, fixed alpha) on the pre-update critic, targets frozen. Both
     gradients are taken at the step's starting parameters, so a ~ pi_on comes from the actor
     *before* its step (official `online_agent/sac.py`, `SAC.align_value`: `new_actions` are sampled
     and the critic loss built before `actor_optimizer.step()`); `finish_alignment` then copies the
     aligned critics into the targets.
 3. `finetune_step`    constrained fine-tuning, eqs. 37-39, with KL estimate f = log pi_on(a|s) -
     max(log pi_ref(a|s), -50) (a single-sample estimate summed over action dims):
       lambda step (once per env step: every `utd` updates) -> alpha step -> actor
       E[alpha log pi - min_i Q_i + lambda f] -> critic with
       y = r + gamma (1-d) [min_i Q'_i(s', a') - alpha log pi(a'|s') - lambda f(s', a')] -> Polyak.
     As in the official `SAC.update`, every loss is built at the step's starting parameters before
     any optimiser step: alpha and lambda are the values from before this step, and a' ~ pi(.|s') in
     the critic target comes from the actor *before* this step's actor update (`_q_loss` samples
     `self.actor(next_observations)` before `actor_optimizer.step()`).
The SAC building blocks (policy, temperature step, target update) come from `agents.online.sac`.

Initialisation: the actor is the offline CQL actor (its options come from the offline agent's
config, `o2o_jax.recipes.ocr_cft.ACTOR_FIELDS`, so it was initialised by the offline algorithm's scheme;
this module's actor init only matters for a fresh actor, without `actor_params`). The critic is new
here and follows the official
`finetune/O2SAC.py` (`CriticFunction` -> `net.py` `MLP`): `critic_init="ocr_cft"`, every layer
orthogonal with gain 1.0, the output layer included, biases 0.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from o2o_jax import lagrange, losses, networks
from o2o_jax.agents.common import TrainState, critic_loss, make_train_state
from o2o_jax.agents.o2o import common
from o2o_jax.types import PRNGKey, Transition

LOG_REF_MIN = -50.0        # log pi_ref is clamped from below in fine-tuning (released code)
ANCHOR_CLIP = 0.9999       # the deterministic action tanh(mu) is clipped to +-0.9999


@dataclasses.dataclass(frozen=True)
class Config:
  hidden_dims: Sequence[int] = (256, 256, 256)      # actor (must match the offline CQL actor)
  critic_hidden_dims: Sequence[int] = (256, 256, 256)
  critic_layer_norm: bool = True
  critic_init: str = "ocr_cft"                      # networks.INIT_SCHEMES (official net.py MLP)
  log_std_min: float = -20.0
  log_std_max: float = 2.0
  learnable_log_std_scale: bool = True
  orthogonal_init: bool = True                      # actor only (the offline CQL actor's)
  actor_init: Optional[str] = "tanh_gaussian_policy"  # actor only (the offline CQL actor's)
  actor_lr: float = 1e-4
  critic_lr: float = 3e-4
  alpha_lr: float = 3e-4
  init_alpha: float = 0.2                           # fixed in phases 1-2, tuned online from here
  target_entropy: Optional[float] = None            # None -> -|A|
  discount: float = 0.99
  tau: float = 0.005
  lambda_init: float = 1.0
  lambda_lr: float = 5e-5
  omega: float = 0.7
  tau_start: float = 0.125                          # KL threshold schedule (summed over dims)
  tau_end: float = 2.0
  tau_steps: int = 100_000                          # env steps
  utd: int = 10                                     # updates per env step (lambda: once per env step)
  constrain: bool = True


@flax.struct.dataclass
class State:
  actor: TrainState                  # pi_on
  critic: TrainState
  target_critic_params: dict
  temperature: TrainState            # {"log_alpha"}
  offline_actor_params: dict         # pi_off (frozen)
  reference_actor_params: dict       # pi_ref
  lagrange: TrainState
  best_score: jax.Array
  step: jax.Array                    # fine-tuning updates so far
  config: Config = flax.struct.field(pytree_node=False)


def make_networks(config: Config, act_dim: int):
  actor = networks.TanhGaussianActor(act_dim, tuple(config.hidden_dims), config.log_std_min,
                                     config.log_std_max,
                                     learnable_log_std_scale=config.learnable_log_std_scale,
                                     **networks.scheme_options(config.actor_init, config.orthogonal_init))
  critic = networks.CriticEnsemble(2, tuple(config.critic_hidden_dims), layer_norm=config.critic_layer_norm,
                                   **networks.init_options(config.critic_init))
  return actor, critic


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config(),
         actor_params: Optional[dict] = None) -> State:
  actor, critic = make_networks(config, act_dim)
  actor_params, critic_params = common.init_networks(key, obs_dim, act_dim, actor, critic, actor_params)
  return State(actor=make_train_state(actor, actor_params, config.actor_lr),
               critic=make_train_state(critic, critic_params, config.critic_lr),
               target_critic_params=critic_params,
               temperature=make_train_state(None, {"log_alpha": jnp.log(jnp.float32(config.init_alpha))},
                                            config.alpha_lr),
               offline_actor_params=actor_params, reference_actor_params=actor_params,
               lagrange=lagrange.init(config.lambda_init, config.lambda_lr),
               best_score=jnp.array(common.NO_SCORE, jnp.float32), step=jnp.zeros((), jnp.int32),
               config=config)


def dist(state: State, params, observations):
  return state.actor.apply_fn(params, observations)


def alpha(state: State):
  return jnp.exp(state.temperature.params["log_alpha"])


def min_target_q(state: State, observations, actions):
  return state.critic.apply_fn(state.target_critic_params, observations, actions).min(0)


# ----------------------------------------------------------------------------- 1. re-evaluation

def reevaluate_step(state: State, batch: Transition, key: PRNGKey):
  """FQE of the frozen pi_off with the soft backup at fixed alpha (eq. 3 with pi = pi_off)."""
  c = state.config
  next_a, next_logp = dist(state, state.offline_actor_params, batch.next_observations).sample_and_log_prob(seed=key)
  next_v = losses.soft_value(min_target_q(state, batch.next_observations, next_a), next_logp, alpha(state))
  targets = losses.td_target(batch.rewards, batch.masks, c.discount, next_v)
  grads, info = jax.grad(critic_loss, has_aux=True)(state.critic.params, state, batch, targets)
  critic = state.critic.apply_gradients(grads=grads)
  return state.replace(critic=critic, target_critic_params=losses.polyak(
      state.target_critic_params, critic.params, c.tau)), info


# ----------------------------------------------------------------------------- 2. alignment

def anchor_action(state: State, params, observations):
  """The deterministic action tanh(mu(s)), clipped to +-0.9999."""
  return jnp.clip(dist(state, params, observations).mode(), -ANCHOR_CLIP, ANCHOR_CLIP)


def align_target(state: State, observations, actions):
  """Eq. 12: min(Q'(s, a.) - alpha (log pi_off(a.|s) - log pi_off(a|s)), Q'(s, a)); also returns
  (a., Q'(s, a.))."""
  off = dist(state, state.offline_actor_params, observations)
  anchor_a = anchor_action(state, state.offline_actor_params, observations)
  q_anchor = min_target_q(state, observations, anchor_a)
  calibrated = q_anchor - alpha(state) * (off.log_prob(anchor_a) - off.log_prob(actions))
  return jnp.minimum(calibrated, min_target_q(state, observations, actions)), anchor_a, q_anchor


def align_critic_loss(critic_params, state: State, observations, key):
  actions = jax.lax.stop_gradient(dist(state, state.actor.params, observations).sample(seed=key))
  targets, anchor_a, q_anchor = align_target(state, observations, actions)
  q_align = state.critic.apply_fn(critic_params, observations, actions)
  q_retain = state.critic.apply_fn(critic_params, observations, anchor_a)
  align = losses.critic_mse(q_align, targets)                                         # eq. 13
  retain = losses.critic_mse(q_retain, q_anchor)
  drift = common.actor_drift(anchor_action(state, state.actor.params, observations), anchor_a)
  return align + retain, {"align_loss": align, "retain_loss": retain, "q_anchor": q_anchor.mean(),
                          "q_policy": q_align.mean(), "actor_drift": drift}


def sample_with_kl(actor_params, state: State, observations, key):
  """a ~ pi (reparameterised), log pi(a|s) and the single-sample KL estimate f(s, a) = log pi(a|s) -
  log pi_ref(a|s) (pi_ref's log-density floored at LOG_REF_MIN)."""
  a, logp = dist(state, actor_params, observations).sample_and_log_prob(seed=key)
  f = logp - jnp.maximum(dist(state, state.reference_actor_params, observations).log_prob(a), LOG_REF_MIN)
  return a, logp, f


def sac_actor_loss(actor_params, state: State, observations, key, lam=0.0):
  """E[alpha log pi(a|s) - min_i Q_i(s, a) + lambda f(s, a)], a ~ pi reparameterised (eq. 2 / 37)."""
  a, logp, f = sample_with_kl(actor_params, state, observations, key)
  q = state.critic.apply_fn(state.critic.params, observations, a).min(0)
  loss = jnp.mean(alpha(state) * logp - q + lam * f)
  return loss, {"actor_loss": loss, "entropy": -logp.mean(), "log_probs": logp, "kl": f}


def align_step(state: State, batch: Transition, key: PRNGKey):
  """The SAC actor step at fixed alpha and the eq. 13 critic step, both at the step's starting
  parameters (official `SAC.align_value`): a ~ pi_on for the critic comes from the actor before its
  step, and the actor ascends the critic before its step. Targets stay frozen."""
  k_actor, k_critic = jax.random.split(key)
  critic_grads, info = jax.grad(align_critic_loss, has_aux=True)(state.critic.params, state,
                                                                  batch.observations, k_critic)
  actor_grads, actor_info = jax.grad(sac_actor_loss, has_aux=True)(state.actor.params, state,
                                                                    batch.observations, k_actor)
  actor_info = {k: v for k, v in actor_info.items() if k in ("actor_loss", "entropy")}
  return state.replace(actor=state.actor.apply_gradients(grads=actor_grads),
                       critic=state.critic.apply_gradients(grads=critic_grads)), {**info, **actor_info}


def finish_alignment(state: State) -> State:
  return state.replace(target_critic_params=state.critic.params)


# ----------------------------------------------------------------------------- 3. fine-tuning

def finetune_tau(state: State):
  c = state.config
  return lagrange.tau_schedule(state.step // c.utd, c.tau_start, c.tau_end, c.tau_steps)


def lambda_value(state: State):
  return lagrange.value(state.lagrange) if state.config.constrain else jnp.zeros(())


def lambda_step(state: State, observations, key: PRNGKey) -> tuple:
  """The multiplier's step (eq. 39 with eq. 49's weights) on the KL estimate f of actions sampled
  with `key`; lambda stays at 0 without the constraint. Returns (state, {lambda, constraint, tau})."""
  c, tau = state.config, finetune_tau(state)
  _, _, f = sample_with_kl(state.actor.params, state, observations, key)
  if not c.constrain:
    return state, {"lambda": jnp.zeros(()), "constraint": f.mean(), "tau": tau}
  lag, info = lagrange.update(state.lagrange, f, tau, c.omega)
  return state.replace(lagrange=lag), info


def finetune_step(state: State, batch: Transition, key: PRNGKey):
  c = state.config
  k_lambda, k_actor, k_next = jax.random.split(key, 3)
  lam = jax.lax.stop_gradient(lambda_value(state))          # values before this step's updates
  alpha_now = alpha(state)
  obs = batch.observations

  # lambda step, once per env step: on the first of its `utd` updates (a branch under the loops'
  # lockstep vmap, so the other updates skip its forward pass).
  if c.constrain:
    state = jax.lax.cond(state.step % c.utd == 0, lambda s: lambda_step(s, obs, k_lambda)[0],
                         lambda s: s, state)

  # The critic target (eq. 38) at the step's starting actor, alpha and lambda: a' ~ pi(.|s') is
  # sampled before the actor step below (official `SAC.update` builds `_q_loss` before any step).
  next_a, next_logp = dist(state, state.actor.params, batch.next_observations).sample_and_log_prob(
      seed=k_next)
  next_f = next_logp - jnp.maximum(
      dist(state, state.reference_actor_params, batch.next_observations).log_prob(next_a), LOG_REF_MIN)
  next_v = min_target_q(state, batch.next_observations, next_a) - alpha_now * next_logp - lam * next_f
  targets = losses.td_target(batch.rewards, batch.masks, c.discount, next_v)

  # alpha and actor steps (eq. 37): the actor gradient flows through a into log pi and log pi_ref.
  grads, actor_info = jax.grad(sac_actor_loss, has_aux=True)(state.actor.params, state, obs, k_actor, lam)
  logp = actor_info.pop("log_probs")
  f = actor_info.pop("kl")       # logged: the constraint at the pre-step actor (its own sample)
  lag_info = {"lambda": lambda_value(state), "constraint": f.mean(), "tau": finetune_tau(state)}
  target_entropy = (c.target_entropy if c.target_entropy is not None
                    else -float(batch.actions.shape[-1]))                              # -|A|
  temp_grads = jax.grad(lambda p: losses.temperature_loss(p["log_alpha"], logp, target_entropy))(
      state.temperature.params)
  state = state.replace(temperature=state.temperature.apply_gradients(grads=temp_grads),
                        actor=state.actor.apply_gradients(grads=grads))

  # critic step (eq. 38) on the target built above.
  grads, critic_info = jax.grad(critic_loss, has_aux=True)(state.critic.params, state, batch, targets)
  critic = state.critic.apply_gradients(grads=grads)
  state = state.replace(critic=critic, step=state.step + 1,
                        target_critic_params=losses.polyak(state.target_critic_params, critic.params, c.tau))
  return state, {**critic_info, **actor_info, **lag_info, "alpha": alpha(state)}


# ----------------------------------------------------------------------------- policies

init_reference = common.init_reference
refresh_reference = common.refresh_reference
adopt_reference = common.adopt_reference


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  d = dist(state, state.actor.params, observations)
  if explore:
    return jnp.clip(d.sample(seed=key), -1.0, 1.0)
  return anchor_action(state, state.actor.params, observations)


def offline_act(state: State, observations, key: PRNGKey, explore: bool = False):
  del key, explore
  return anchor_action(state, state.offline_actor_params, observations)


update = finetune_step
