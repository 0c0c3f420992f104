"""Conservative Q-Learning (Kumar et al., 2020), the CORL variant: SAC plus the conservative penalty.

  critic_i: L = E_D[(Q_i(s,a) - y)^2] + alpha_cql * (E_s[T logsumexp_j((Q_i(s,a_j) - log q(a_j)) / T)] - E_D[Q_i(s,a)])
            y = r + gamma (1-d) min_k Q'_k(s', a'), a' ~ pi(.|s')        (no entropy in the backup)
            a_j: 10 uniform on [-1,1]^|A| (log q = |A| log 0.5), 10 from pi(.|s), 10 from pi(.|s')
            (evaluated at s), each with its own log-density (importance weights).
  Lagrange form (AntMaze): the penalty is alpha' alpha_cql (diff - gap), log alpha' maximises it.
  A lower bound on the policy actions' Q-values (`policy_q_floor`, Cal-QL's calibration) replaces
  Q(s,a_j) by max(Q(s,a_j), floor(s)) for the 20 policy actions inside the logsumexp (None: CQL's own).
  actor / temperature: SAC's (`sac.update_actor`).
The SAC state, networks, target and actor update are reused from `sac` (composition, no copy).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import losses
from o2o_jax.agents.common import TrainState, make_train_state
from o2o_jax.agents.online import sac
from o2o_jax.types import PRNGKey, Transition


@dataclasses.dataclass(frozen=True)
class Config(sac.Config):
  hidden_dims: Sequence[int] = (256, 256, 256)
  actor_lr: float = 3e-5
  critic_lr: float = 3e-4
  alpha_lr: float = 3e-5
  backup_entropy: bool = False
  log_std_min: float = -20.0
  learnable_log_std_scale: bool = True
  orthogonal_init: bool = True
  # CORL cql.py: the critics pass orthogonal_init to `init_module_weights` (orthogonal sqrt 2, head
  # 1e-2); `TanhGaussianPolicy` calls it without the flag (PyTorch default, xavier(1e-2) head).
  actor_init: str = "tanh_gaussian_policy"
  critic_init: str = "corl_cql_critic"
  cql_alpha: float = 10.0
  cql_n_actions: int = 10
  cql_temperature: float = 1.0
  lagrange: bool = False
  target_action_gap: float = 0.8
  alpha_prime_lr: float = 3e-4


@flax.struct.dataclass
class State:
  sac: sac.State
  alpha_prime: TrainState          # params {"log_alpha_prime": scalar}; used when config.lagrange

  @property
  def config(self) -> Config:
    return self.sac.config

  @property
  def actor(self):
    return self.sac.actor

  @property
  def step(self):
    return self.sac.step


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config()) -> State:
  return State(sac=sac.init(key, obs_dim, act_dim, config),
               alpha_prime=make_train_state(None, {"log_alpha_prime": jnp.zeros((), jnp.float32)},
                                            config.alpha_prime_lr))


def alpha_prime(state: State):
  return jnp.clip(jnp.exp(state.alpha_prime.params["log_alpha_prime"]), 0.0, 1e6)


def conservative_gap(critic_params, state: sac.State, batch: Transition, q_data, key, q_floor=None):
  """Per critic member: E_s[T logsumexp_j((Q(s,a_j) - log q(a_j))/T)] - E_D[Q(s,a)] -> (N,).
  `q_floor` (B,), when given, lower-bounds the Q-values of the actions from pi(.|s) and pi(.|s') (not
  the uniform ones): max(Q(s,a_j), q_floor(s)) (Cal-QL; CORL `finetune/cal_ql.py` `CalQL._q_loss`)."""
  c = state.config
  b, m = batch.rewards.shape[0], c.cql_n_actions
  act_dim = batch.actions.shape[-1]
  k_rand, k_cur, k_next = jax.random.split(key, 3)
  repeat = lambda x: jnp.repeat(x[:, None], m, axis=1)                     # (B, M, ...)
  obs, next_obs = repeat(batch.observations), repeat(batch.next_observations)
  random_actions = jax.random.uniform(k_rand, (b, m, act_dim), minval=-1.0, maxval=1.0)
  random_log_density = jnp.full((b, m), act_dim * np.log(0.5))
  cur_actions, cur_log_pi = sac.policy(state, obs).sample_and_log_prob(seed=k_cur)
  next_actions, next_log_pi = sac.policy(state, next_obs).sample_and_log_prob(seed=k_next)
  sg = jax.lax.stop_gradient
  q_of = lambda a: state.critic.apply_fn(critic_params, obs, sg(a))       # (N, B, M)
  q_policy = q_of if q_floor is None else lambda a: jnp.maximum(q_of(a), q_floor[None, :, None])
  q_samples = jnp.concatenate([q_of(random_actions), q_policy(next_actions), q_policy(cur_actions)],
                              axis=-1)
  log_q = jnp.concatenate([random_log_density, sg(next_log_pi), sg(cur_log_pi)], axis=-1)
  ood = losses.cql_logsumexp(q_samples, log_q[None], c.cql_temperature)  # (N, B)
  return (ood - q_data).mean(-1)


def critic_loss(critic_params, state: sac.State, batch: Transition, targets, key, *, alpha_prime,
                q_floor=None):
  c = state.config
  q = state.critic.apply_fn(critic_params, batch.observations, batch.actions)
  td = losses.critic_mse(q, targets)
  gap = conservative_gap(critic_params, state, batch, q, key, q_floor)
  if c.lagrange:
    penalty = alpha_prime * c.cql_alpha * (gap - c.target_action_gap)
  else:
    penalty = c.cql_alpha * gap
  loss = td + penalty.sum()
  return loss, {"critic_loss": loss, "td_loss": td, "cql_gap": gap, "q_mean": q.mean(),
                "target_mean": targets.mean()}


def update(state: State, batch: Transition, key: PRNGKey, next_value_hook=None, extra_critic_loss=None,
           policy_q_floor=None):
  """One CQL step (critic with the conservative penalty, actor, temperature, alpha').
  Every gradient is taken at the step's starting parameters, as CORL's `ContinuousCQL.train` does:
  the actor and temperature losses are built before the critic step (the actor ascends the
  *pre-update* critic), and the critic's target and sampled actions come from the pre-update actor.
  `next_value_hook(batch, next_actions, next_values) -> next_values`, when given, rewrites the
  bootstrap values of the TD target (SAMG's mixed target); None keeps the algorithm's own.
  `extra_critic_loss(critic_params, sac_state, key, alpha_prime) -> (loss, metrics)`, when given, is
  added to the critic loss (SAMG's p-weighted offline penalty); alpha' still follows CQL's own gap.
  `policy_q_floor` (B,), when given, lower-bounds the policy actions' Q inside the conservative term
  (`conservative_gap`'s `q_floor`: Cal-QL's calibration); None keeps CQL's.
  """
  c = state.config
  k_critic, k_actor = jax.random.split(key)
  ap = jax.lax.stop_gradient(alpha_prime(state)) if c.lagrange else 1.0
  loss_fn = functools.partial(critic_loss, alpha_prime=ap, q_floor=policy_q_floor)
  if extra_critic_loss is not None:
    def loss_fn(critic_params, sac_state, b, targets, k):   # noqa: F811 (the extended loss)
      loss, info = critic_loss(critic_params, sac_state, b, targets, k, alpha_prime=ap,
                               q_floor=policy_q_floor)
      extra, extra_info = extra_critic_loss(critic_params, sac_state, jax.random.fold_in(k, 1), ap)
      return loss + extra, {**info, **extra_info, "critic_loss": loss + extra}
  after_actor, actor_info = sac.update_actor(state.sac, batch, k_actor)
  s, critic_info = sac.update_critic(state.sac, batch, k_critic, loss_fn=loss_fn,
                                     next_value_hook=next_value_hook)
  s = s.replace(actor=after_actor.actor, temperature=after_actor.temperature)
  gap = critic_info.pop("cql_gap")
  new_alpha_prime = state.alpha_prime
  if c.lagrange:
    def alpha_prime_loss(params):   # log alpha' maximises the penalty (gap detached)
      a = jnp.clip(jnp.exp(params["log_alpha_prime"]), 0.0, 1e6)
      return -jnp.mean(a * c.cql_alpha * (jax.lax.stop_gradient(gap) - c.target_action_gap))
    new_alpha_prime = state.alpha_prime.apply_gradients(
        grads=jax.grad(alpha_prime_loss)(state.alpha_prime.params))
  state = State(sac=s.replace(step=s.step + 1), alpha_prime=new_alpha_prime)
  return state, {**critic_info, **actor_info, "cql_gap": gap.mean(), "alpha_prime": alpha_prime(state)}


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  return sac.act(state.sac, observations, key, explore)
