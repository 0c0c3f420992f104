"""O2PPO: OCR-CFT for on-policy fine-tuning (IQL -> PPO), paper §4.1-4.3, appendix G.3, H.5, Alg. 3.

 1. Policy re-evaluation (§4.1, G.3): V(s) (tanh MLP, as the released code) regressed on the discounted
    Monte-Carlo returns of the offline trajectories, G_t = r_t + gamma G_{t+1} within t's own episode.
    `value_fit_step` over a `ValueFitState`; `o2o_jax.data.returns.mc_returns` computes the targets.
    (The released code misspells the timeout key, so its returns run on across time-limit ends into
    the next episode; here every episode end, terminated, truncated or cut, stops the sum.)
 2. Value alignment = the auxiliary advantage used during fine-tuning (§4.2):
       A_alpha(s, a) = alpha (log pi_ref(a|s) + H(pi_ref(.|s)))                      (eq. 17)
    per action dimension, floored by Clip(x) = softplus(x + 4) - 4                    (eq. 51)
    and averaged over dimensions (the released code's 1/|A|), so A_alpha <= alpha / 2; then scaled by
    |std(A)| of the whole rollout's GAE advantages (H.5: alpha = 2 gives the paper's "x 2 std(A)")
    and mixed
       A'(s, a) = A(s, a) + beta A_alpha(s, a),   beta = max(1 - t / T_beta, 0)       (eq. 18)
    paired per sample (the paper), or broadcast (`aux_pairing="broadcast"`, the released code's
    [T, T] matrix over the rollout), then normalised over the whole rollout once, before the epochs
    (OCR-CFT finetune/online_agent/ppo/ppo.py, `PPO.update`; std with Bessel's correction, torch's).
 3. Constrained fine-tuning (§4.3, G.3): pi_ref = pi_off at the start and later the best evaluated
    policy (or pi_on at an interval), per seed: `init_reference` / `refresh_reference`.
PPO itself (GAE, clipped surrogate, minibatch epochs) is `agents.online.ppo`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import distrax
import flax.struct
import jax
import jax.numpy as jnp

from o2o_jax.agents.common import TrainState, make_train_state
from o2o_jax.agents.o2o import common
from o2o_jax.agents.online import ppo
from o2o_jax.types import PRNGKey, Transition

PAIRINGS = ("paired", "broadcast")


@dataclasses.dataclass(frozen=True)
class Config(ppo.Config):
  # PPO settings of the released O2PPO (reference §5).
  actor_lr: float = 3e-5
  critic_lr: float = 2e-4
  lr_decay_steps: int = 250_000
  # Auxiliary advantage.
  aux: bool = True                    # False: direct PPO fine-tuning from IQL (paper appendix A)
  aux_alpha: float = 2.0              # alpha of eq. 17 (with the std(A) scale: H.5's 2 std(A))
  aux_pairing: str = "paired"         # "paired" (eq. 18) or "broadcast" (released code)
  aux_floor: float = 4.0              # eq. 51: softplus(x + floor) - floor
  aux_clip_per_dim: bool = True       # eq. 51 per dimension (paper); False: on the sum, floor 4|A| (code)
  beta_steps: int = 250_000           # beta = max(1 - t / beta_steps, 0); 500k for (medium-)expert sets
  max_log_std: Optional[float] = None  # log-std cap at the start (log 0.05 for hopper (medium-)expert)
  # Re-evaluation (V fitting).
  value_fit_lr: float = 1e-4


def check_config(config: Config) -> None:
  ppo.check_config(config)
  if config.aux_pairing not in PAIRINGS:
    raise ValueError(f"aux_pairing must be one of {', '.join(PAIRINGS)} (got {config.aux_pairing!r})")
  if config.beta_steps <= 0:
    raise ValueError(f"beta_steps must be positive (got {config.beta_steps})")


# ----------------------------------------------------------------------------- 1. re-evaluation

@flax.struct.dataclass
class ValueFitState:
  value: TrainState                 # V being fitted (Adam, released lr 1e-4)
  offline_actor_params: dict        # pi_off, only evaluated
  config: Config = flax.struct.field(pytree_node=False)


def init_value_fit(key: PRNGKey, obs_dim: int, act_dim: int, config: Config,
                   actor_params: dict) -> ValueFitState:
  del act_dim
  value = ppo.make_value(config)
  return ValueFitState(value=make_train_state(value, value.init(key, jnp.zeros((1, obs_dim))),
                                              config.value_fit_lr),
                       offline_actor_params=actor_params, config=config)


def value_fit_step(state: ValueFitState, batch: Transition, key: PRNGKey):
  """One regression step of V(s) on Monte-Carlo returns; `batch.rewards` holds the returns G."""
  del key

  def loss_fn(params):
    v = state.value.apply_fn(params, batch.observations)
    loss = jnp.mean(jnp.square(v - batch.rewards))
    return loss, {"value_loss": loss, "v_mean": v.mean(), "return_mean": batch.rewards.mean()}

  grads, info = jax.grad(loss_fn, has_aux=True)(state.value.params)
  return state.replace(value=state.value.apply_gradients(grads=grads)), info


def offline_act(state: ValueFitState, observations, key: PRNGKey, explore: bool = False):
  """pi_off's deterministic action (the tanh mean), for evaluating it during re-evaluation."""
  del key, explore
  act_dim = state.offline_actor_params["params"]["log_std"].shape[-1]
  dist = ppo.make_actor(state.config, act_dim).apply(state.offline_actor_params, observations)
  return jnp.clip(dist.mode(), -1.0, 1.0)


# ----------------------------------------------------------------------------- fine-tuning state

@flax.struct.dataclass
class State:
  actor: TrainState                  # pi_on
  value: TrainState                  # V (from re-evaluation)
  offline_actor_params: dict         # pi_off (frozen)
  reference_actor_params: dict       # pi_ref
  best_score: jax.Array              # best evaluation score so far (refresh_reference)
  env_steps: jax.Array               # env steps consumed by updates so far (beta, lr schedules)
  config: Config = flax.struct.field(pytree_node=False)


def cap_log_std(params, max_log_std: Optional[float]):
  """log-std <- min(log-std, cap) (H.5 "clipped standard deviation"; once, at the start)."""
  if max_log_std is None:
    return params
  inner = dict(params["params"])
  inner["log_std"] = jnp.minimum(inner["log_std"], max_log_std)
  return {**params, "params": inner}


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config(),
         actor_params: Optional[dict] = None, value_params: Optional[dict] = None) -> State:
  """pi_on = pi_ref = pi_off = `actor_params` (IQL's Gaussian actor, log-std capped if configured),
  V = `value_params` (the re-evaluated critic); fresh PPO optimisers."""
  if actor_params is None:
    actor_params = ppo.make_actor(config, act_dim).init(jax.random.fold_in(key, 1),
                                                        jnp.zeros((1, obs_dim)))
  actor_params = cap_log_std(actor_params, config.max_log_std)
  base = ppo.init(key, obs_dim, act_dim, config, actor_params, value_params)
  return State(actor=base.actor, value=base.value, offline_actor_params=actor_params,
               reference_actor_params=actor_params, best_score=jnp.array(common.NO_SCORE, jnp.float32),
               env_steps=jnp.zeros((), jnp.int32), config=config)


init_reference = common.init_reference
refresh_reference = common.refresh_reference
adopt_reference = common.adopt_reference
explore = ppo.explore      # (action, log-prob) of pi_on, for rollouts
act = ppo.act


# ----------------------------------------------------------------------------- 2. auxiliary advantage

def aux_advantage_per_dim(actor: TrainState, ref_params, observations, actions):
  """log pi_ref,d(a_d|s) + H(pi_ref,d(.|s)) per action dimension (eq. 17 before alpha); for a
  Gaussian it equals (1 - z_d^2) / 2 with z_d = (a_d - mu_d) / sigma_d."""
  dist = actor.apply_fn(ref_params, observations)
  per_dim = distrax.Normal(dist.loc, dist.scale_diag)
  return per_dim.log_prob(actions) + per_dim.entropy()


def soft_floor(x, floor: float):
  """Clip(x) = softplus(x + floor) - floor (eq. 51): ~x above, > -floor below."""
  return jax.nn.softplus(x + floor) - floor


def auxiliary_advantage(actor: TrainState, ref_params, observations, actions, config: Config):
  """A_alpha(s, a) of eq. 17 with the floor of eq. 51, averaged over action dimensions."""
  g = aux_advantage_per_dim(actor, ref_params, observations, actions)
  if config.aux_clip_per_dim:
    return config.aux_alpha * soft_floor(g, config.aux_floor).mean(-1)
  act_dim = g.shape[-1]
  return config.aux_alpha * soft_floor(g.sum(-1), config.aux_floor * act_dim) / act_dim


def beta_schedule(env_steps, beta_steps: int):
  """beta annealed linearly from 1 to 0 over `beta_steps` env steps (eq. 18, H.5)."""
  return jnp.maximum(1.0 - env_steps / beta_steps, 0.0)


def reference_advantage(advantages, aux):
  """A_ref = A_alpha |std(A)| (H.5), std over the whole rollout's GAE advantages with Bessel's
  correction (the reference's `get_reference_advantage(s, a) * torch.abs(adv.std())`)."""
  return aux * jnp.abs(advantages.std(ddof=1))


def broadcast_rows(advantages, aux, beta):
  """The released code's [T, T] matrix over the rollout, M_ij = (A_i + beta A_ref,j) / (1 + beta),
  normalised over all T^2 entries, as a function `rows(A_rows) -> (B, T)` of some rows' A_i (a
  minibatch's: the surrogate pairs row i's ratio with every column). M is never built: its mean and
  its variance over the grid are those of x_i + y_j, mean(x) + mean(y) and var(x) + var(y), with
  Bessel's correction over T^2 entries; a minibatch's rows are B x T (1 MiB at 128 x 2048 in
  float32, against 16 MiB per seed for the whole matrix)."""
  a_ref = reference_advantage(advantages, aux)
  x, y = advantages / (1.0 + beta), beta * a_ref / (1.0 + beta)
  n = advantages.shape[0] ** 2
  mean = x.mean() + y.mean()
  std = jnp.sqrt((x.var() + y.var()) * n / (n - 1))

  def rows(a_rows):
    return ((a_rows[:, None] + beta * a_ref[None, :]) / (1.0 + beta) - mean) / (std + ppo.ADV_EPS)

  return rows


def mix_advantages(advantages, aux, beta, pairing: str = "paired"):
  """A' = (A + beta A_ref) / (1 + beta) over the whole rollout, normalised over it, with
  A_ref = A_alpha |std(A)| (H.5). 'paired': sample i gets its own A_ref,i (eq. 18), (T,);
  'broadcast': the released code's [T, T] matrix M_ij = (A_i + beta A_ref,j) / (1 + beta) (built
  whole here; the update builds only each minibatch's rows, `broadcast_rows`). The 1 / (1 + beta) is
  the code's; normalisation removes it."""
  if pairing == "paired":
    return ppo.normalize((advantages + beta * reference_advantage(advantages, aux)) / (1.0 + beta))
  if pairing == "broadcast":
    return broadcast_rows(advantages, aux, beta)(advantages)
  raise ValueError(f"unknown aux_pairing {pairing!r}")


# ----------------------------------------------------------------------------- 3. fine-tuning

def update(state: State, rollout: ppo.Rollout, key: PRNGKey):
  """One PPO update with the mixed advantage of eq. 18 (Alg. 3 lines 9-13): GAE, A_alpha of the
  rollout, the mixed advantages normalised over the whole rollout, then the minibatch epochs."""
  c = state.config
  advantages, targets = ppo.compute_advantages(state.value, rollout, c)
  t = state.env_steps + c.rollout_length
  if c.aux:
    beta = beta_schedule(t, c.beta_steps)
    aux = auxiliary_advantage(state.actor, state.reference_actor_params, rollout.observations,
                              rollout.actions, c)
    if c.aux_pairing == "broadcast":   # each minibatch's rows of the rollout's [T, T] matrix
      actor, value, info = ppo.train_epochs(state.actor, state.value, rollout, advantages, targets,
                                            key, c, broadcast_rows(advantages, aux, beta))
    else:
      actor, value, info = ppo.train_epochs(state.actor, state.value, rollout,
                                            mix_advantages(advantages, aux, beta, c.aux_pairing),
                                            targets, key, c)
    info.update(beta=beta, aux_advantage=aux.mean(), aux_positive=jnp.mean(aux > 0))
  else:
    actor, value, info = ppo.train_epochs(state.actor, state.value, rollout,
                                          ppo.normalize(advantages), targets, key, c)
    info["beta"] = jnp.zeros(())
  info.update(advantage_mean=advantages.mean(), advantage_std=advantages.std(),
              log_std=actor.params["params"]["log_std"].mean())
  return state.replace(actor=actor, value=value, env_steps=t), info

