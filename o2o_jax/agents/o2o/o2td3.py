"""O2TD3: OCR-CFT for a deterministic offline policy (TD3+BC -> TD3), paper §4 and appendix G.2.

Three phases, each a pure step over one `State` (vmap it over seeds):

 1. `reevaluate_step`  policy re-evaluation, eq. 6 as fitted Q-evaluation of the frozen pi_off:
       y = r + gamma (1-d) min_i Q'_i(s', clip(pi_off(s') + clip(eps, +-c), +-1))
 2. `align_step`       value alignment, eqs. 15-16 (as the released code computes them):
       a. = pi_off(s),  A = min_i Q'_i(s, a.)                                  (anchor)
       a~ = clip(pi_on(s) + clip(eps, +-c), +-1),  d = min(||a~ - a.|| / sqrt|A|, sigma)
       Q* = A / (1 + k d^2) if A >= 0 else A (1 + k d^2)                        (never above A)
       L = sum_i (Q_i(s, a~) - min(Q*, Q'_i(s, a~)))^2 + sum_i (Q_i(s, a.) - A)^2
     with the actor trained on -Q_1(s, pi_on(s)) every step and the targets frozen. Both gradients
     are taken at the step's starting parameters: a~ is built from the actor *before* its step and
     the actor ascends the critic before its step (official `online_agent/td3.py`,
     `TD3.align_value`: `noisy_action` is built from `self.actor(state)` under no_grad before
     `actor_optimizer.step()`). `finish_alignment` then copies the aligned critics (and actor) into
     the targets.
 3. `finetune_step`    constrained fine-tuning, eqs. 45-47:
       y = r + gamma (1-d) [min_i Q'_i(s', a~') - lambda P],  P = mean_{B x |A|} (pi_on(s') - pi_ref(s'))^2
       every `policy_freq` steps: the lambda step (`lagrange`, f = (pi_ref(s) - pi_on(s))^2 per action
       dimension), then the actor on -Q_1 / mean|Q_1| + lambda mean (pi_on(s) - pi_ref(s))^2, then Polyak.
Where the released code and the paper differ, the code is followed (BUILD_NOTES.md lists each case).

Initialisation: the actor is the offline TD3+BC actor (initialised by the offline algorithm's
scheme; this module's actor init only matters for a fresh actor, without `actor_params`). The critic is
new here and follows the official `finetune/O2TD3.py` (`CriticFunction` -> `net.py` `MLP`):
`critic_init="ocr_cft"`, every layer orthogonal with gain 1.0, the output layer included, biases 0.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import lagrange, losses, networks
from o2o_jax.agents.common import TrainState, critic_loss, make_train_state
from o2o_jax.agents.o2o import common
from o2o_jax.agents.offline.td3_bc import q_normalizer
from o2o_jax.types import PRNGKey, Transition


@dataclasses.dataclass(frozen=True)
class Config:
  hidden_dims: Sequence[int] = (256, 256)        # actor (must match the offline actor)
  critic_hidden_dims: Sequence[int] = (256, 256)
  critic_layer_norm: bool = True
  critic_init: str = "ocr_cft"                    # networks.INIT_SCHEMES (official net.py MLP)
  actor_lr: float = 1e-4
  critic_lr: float = 3e-4
  discount: float = 0.99
  tau: float = 0.005                              # Polyak rate
  policy_noise: float = 0.2
  noise_clip: float = 0.5
  policy_freq: int = 2
  exploration_noise: float = 0.1
  distance_k: float = 1.0                         # k of eq. 15
  lambda_init: float = 1.0
  lambda_lr: float = 5e-5
  omega: float = 0.7
  tau_start: float = 0.0025                       # constraint threshold schedule (per action dim)
  tau_end: float = 0.04
  tau_steps: int = 100_000
  constrain: bool = True                          # False: direct fine-tuning (lambda = 0)
  normalize_actor_q: bool = True                  # the code's 1/mean|Q| actor normalisation


@flax.struct.dataclass
class State:
  actor: TrainState                  # pi_on
  critic: TrainState
  target_actor_params: dict
  target_critic_params: dict
  offline_actor_params: dict         # pi_off (frozen)
  reference_actor_params: dict       # pi_ref
  lagrange: TrainState               # log lambda
  best_score: jax.Array              # best evaluation score so far (refresh_reference)
  step: jax.Array                    # fine-tuning updates so far
  config: Config = flax.struct.field(pytree_node=False)


def make_networks(config: Config, act_dim: int):
  return (networks.DeterministicActor(act_dim, tuple(config.hidden_dims)),
          networks.CriticEnsemble(2, tuple(config.critic_hidden_dims), layer_norm=config.critic_layer_norm,
                                  **networks.init_options(config.critic_init)))


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config(),
         actor_params: Optional[dict] = None) -> State:
  """pi_on = pi_off = pi_ref = `actor_params` (the offline actor; freshly initialised if None) and
  fresh critics (the offline critic is never used)."""
  actor, critic = make_networks(config, act_dim)
  actor_params, critic_params = common.init_networks(key, obs_dim, act_dim, actor, critic, actor_params)
  return State(actor=make_train_state(actor, actor_params, config.actor_lr),
               critic=make_train_state(critic, critic_params, config.critic_lr),
               target_actor_params=actor_params, target_critic_params=critic_params,
               offline_actor_params=actor_params, reference_actor_params=actor_params,
               lagrange=lagrange.init(config.lambda_init, config.lambda_lr),
               best_score=jnp.array(common.NO_SCORE, jnp.float32), step=jnp.zeros((), jnp.int32),
               config=config)


def pi(state: State, params, observations):
  return state.actor.apply_fn(params, observations)


def smoothed(state: State, actions, key):
  c = state.config
  return losses.smoothed_target_action(actions, key, c.policy_noise, c.noise_clip)


# ----------------------------------------------------------------------------- 1. re-evaluation

def reevaluate_step(state: State, batch: Transition, key: PRNGKey):
  """Fitted Q-evaluation of the frozen pi_off (eq. 6 with pi = pi_off), Polyak targets."""
  c = state.config
  next_a = smoothed(state, pi(state, state.offline_actor_params, batch.next_observations), key)
  next_q = state.critic.apply_fn(state.target_critic_params, batch.next_observations, next_a).min(0)
  targets = losses.td_target(batch.rewards, batch.masks, c.discount, next_q)
  grads, info = jax.grad(critic_loss, has_aux=True)(state.critic.params, state, batch, targets)
  critic = state.critic.apply_gradients(grads=grads)
  return state.replace(critic=critic, target_critic_params=losses.polyak(
      state.target_critic_params, critic.params, c.tau)), info


# ----------------------------------------------------------------------------- 2. alignment

def calibrated_value(anchor, distance, k: float):
  """Eq. 15 as the code computes it: A / (1 + k d^2) for A >= 0 and A (1 + k d^2) for A < 0, so the
  calibrated value never exceeds the anchor A (a negative anchor is pushed further down)."""
  factor = 1.0 + k * jnp.square(distance)
  return jnp.where(anchor >= 0, anchor / factor, anchor * factor)


def action_distance(a, b, cap: float):
  """d = ||a - b||_2 / sqrt(|A|), capped at `cap` (the policy noise)."""
  return jnp.minimum(jnp.linalg.norm(a - b, axis=-1) / np.sqrt(a.shape[-1]), cap)


def align_targets(state: State, observations, key):
  """(a~, per-critic targets min(Q*, Q'_i(s, a~)) (2, B), a., anchor A (B,))."""
  c = state.config
  anchor_actions = pi(state, state.offline_actor_params, observations)
  anchor = state.critic.apply_fn(state.target_critic_params, observations, anchor_actions).min(0)
  noisy = smoothed(state, pi(state, state.actor.params, observations), key)
  q_star = calibrated_value(anchor, action_distance(noisy, anchor_actions, c.policy_noise), c.distance_k)
  q_noisy = state.critic.apply_fn(state.target_critic_params, observations, noisy)     # (2, B)
  return noisy, jnp.minimum(q_star[None], q_noisy), anchor_actions, anchor


def align_critic_loss(critic_params, state: State, observations, key):
  noisy, targets, anchor_actions, anchor = align_targets(state, observations, key)
  sg = jax.lax.stop_gradient
  q_align = state.critic.apply_fn(critic_params, observations, noisy)
  q_retain = state.critic.apply_fn(critic_params, observations, anchor_actions)
  align = jnp.sum(jnp.mean(jnp.square(q_align - sg(targets)), axis=-1))                # eq. 16
  retain = losses.critic_mse(q_retain, anchor)
  return align + retain, {"align_loss": align, "retain_loss": retain, "q_anchor": anchor.mean(),
                          "q_policy": q_align.mean()}


def plain_actor_loss(actor_params, state: State, observations):
  actions = pi(state, actor_params, observations)
  q = networks.first_critic(state.critic.apply_fn, state.critic.params, observations, actions)
  drift = common.actor_drift(actions, pi(state, state.offline_actor_params, observations))
  return -q.mean(), {"actor_loss": -q.mean(), "actor_drift": jax.lax.stop_gradient(drift)}


def align_step(state: State, batch: Transition, key: PRNGKey):
  """The actor step on -Q_1 and the eq. 16 critic step, both at the step's starting parameters
  (official `TD3.align_value`): the noisy action a~ comes from the actor before its step, and the
  actor ascends the critic before its step. Targets stay frozen."""
  critic_grads, info = jax.grad(align_critic_loss, has_aux=True)(state.critic.params, state,
                                                                  batch.observations, key)
  actor_grads, actor_info = jax.grad(plain_actor_loss, has_aux=True)(state.actor.params, state,
                                                                      batch.observations)
  return state.replace(actor=state.actor.apply_gradients(grads=actor_grads),
                       critic=state.critic.apply_gradients(grads=critic_grads)), {**info, **actor_info}


def finish_alignment(state: State) -> State:
  """Targets <- the aligned critics and the aligned actor (released code)."""
  return state.replace(target_critic_params=state.critic.params,
                       target_actor_params=state.actor.params)


# ----------------------------------------------------------------------------- 3. fine-tuning

def lambda_value(state: State):
  return lagrange.value(state.lagrange) if state.config.constrain else jnp.zeros(())


def finetune_tau(state: State):
  c = state.config
  return lagrange.tau_schedule(state.step, c.tau_start, c.tau_end, c.tau_steps)


def finetune_actor_loss(actor_params, state: State, observations, lam):
  c = state.config
  actions = pi(state, actor_params, observations)
  q = networks.first_critic(state.critic.apply_fn, state.critic.params, observations, actions)
  weight = q_normalizer(q, 1.0) if c.normalize_actor_q else 1.0
  constraint = jnp.mean(jnp.square(actions - pi(state, state.reference_actor_params, observations)))
  loss = -weight * q.mean() + lam * constraint                                           # eq. 45
  return loss, {"actor_loss": loss, "actor_constraint": constraint}


def lambda_step(state: State, observations) -> tuple:
  """The multiplier's step (eq. 47) on f = (pi_ref(s) - pi_on(s))^2 per action dimension; lambda
  stays at 0 without the constraint. Returns (state, {lambda, constraint, tau})."""
  c, tau = state.config, finetune_tau(state)
  f = jnp.square(pi(state, state.reference_actor_params, observations)
                 - pi(state, state.actor.params, observations))
  if not c.constrain:
    return state, {"lambda": jnp.zeros(()), "constraint": f.mean(), "tau": tau}
  lag, info = lagrange.update(state.lagrange, f, tau, c.omega)
  return state.replace(lagrange=lag), info


def finetune_step(state: State, batch: Transition, key: PRNGKey):
  c = state.config
  lam = jax.lax.stop_gradient(lambda_value(state))
  # Critic (eq. 46): TD3 target minus lambda times the batch-mean squared deviation at s'.
  next_on = pi(state, state.actor.params, batch.next_observations)
  penalty = jnp.mean(jnp.square(next_on - pi(state, state.reference_actor_params, batch.next_observations)))
  next_a = smoothed(state, pi(state, state.target_actor_params, batch.next_observations), key)
  next_q = state.critic.apply_fn(state.target_critic_params, batch.next_observations, next_a).min(0)
  targets = losses.td_target(batch.rewards, batch.masks, c.discount, next_q - lam * penalty)
  grads, critic_info = jax.grad(critic_loss, has_aux=True)(state.critic.params, state, batch, targets)
  state = state.replace(critic=state.critic.apply_gradients(grads=grads))

  def delayed(s):
    s, lag_info = lambda_step(s, batch.observations)                                     # eq. 47
    grads, info = jax.grad(finetune_actor_loss, has_aux=True)(s.actor.params, s, batch.observations, lam)
    actor = s.actor.apply_gradients(grads=grads)
    s = s.replace(actor=actor,
                  target_actor_params=losses.polyak(s.target_actor_params, actor.params, c.tau),
                  target_critic_params=losses.polyak(s.target_critic_params, s.critic.params, c.tau))
    return s, {**info, **lag_info}

  def skip(s):
    shapes = jax.eval_shape(lambda: delayed(s)[1])
    return s, jax.tree_util.tree_map(lambda x: jnp.full(x.shape, jnp.nan, x.dtype), shapes)

  state, info = jax.lax.cond(state.step % c.policy_freq == 0, delayed, skip, state)
  return state.replace(step=state.step + 1), {**critic_info, **info, "critic_penalty": penalty}


# ----------------------------------------------------------------------------- reference policy

init_reference = common.init_reference
refresh_reference = common.refresh_reference
adopt_reference = common.adopt_reference


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  """pi_on(s) (+ N(0, sigma_e) when exploring), clipped to the box, so the stored action is the one
  the env executes (the released code stores the noiseless action: a bug, fixed here)."""
  actions = pi(state, state.actor.params, observations)
  if explore:
    noise = state.config.exploration_noise * jax.random.normal(key, actions.shape)
    actions = jnp.clip(actions + noise, -1.0, 1.0)
  return actions


def offline_act(state: State, observations, key: PRNGKey, explore: bool = False):
  """pi_off's deterministic action (to evaluate the offline policy)."""
  del key, explore
  return pi(state, state.offline_actor_params, observations)


update = finetune_step
