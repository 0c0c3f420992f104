"""IQL online fine-tuning as CORL runs it (`algorithms/finetune/iql.py`, `train`): the offline IQL
objective continues unchanged online (`agents.offline.iql`, reference §2.2):

  value:  L_V = E_B[ |tau - 1(u < 0)| u^2 ],  u = min_k Q'_k(s, a) - V(s)
  critic: L_Q = sum_k E_B[(r + gamma (1-d) V(s') - Q_k(s, a))^2]
  actor:  L_pi = -E_B[ min(exp(beta (min_k Q'_k(s,a) - V(s))), 100) log pi(a|s) ]

with B drawn uniformly from one replay buffer that starts as the whole offline dataset
(`ReplayBuffer.load_d4rl_dataset`) and gets every online transition appended (`add_transition`),
one update per env step from the first one (o2o_jax/recipes/iql_way.py sets this up).

What CORL does at the switch, and this module reproduces:
  - nothing is re-initialised: the same networks, the same Adam moments, the same trainer;
  - the actor's learning-rate schedule keeps stepping. CORL builds `CosineAnnealingLR(actor_optimizer,
    T_max = offline_iterations)` and calls `step()` after every actor update, offline and online alike.
    PyTorch's chainable form of that schedule is the cosine continued past T_max, so at total update
    count n the rate is  lr(n) = lr_0 (1 + cos(pi n / T)) / 2: it reaches 0 at the switch (n = T) and
    rises again online (`corl_actor_schedule`). optax's `cosine_decay_schedule` (the offline run's)
    stays at 0 after T, so `start_online` swaps in the continued cosine and keeps the optimizer state
    (its update count included). `online_actor_lr` (not CORL's) instead gives a constant rate with
    fresh Adam moments, O3F's reconstruction (`o3f.start_online`);
  - exploration: a ~ pi(.|s) clipped to the action box (the Gaussian actor); the deterministic
    actor (CORL's hopper-medium setting) explores with a + clip(N(0, 0.03^2), -0.5, 0.5), clipped
    (`expl_noise`, `noise_clip`). Evaluation: the policy mean.

The state is IQL's own (`iql.State`) with this module's Config (a subclass of `iql.Config`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from o2o_jax.agents.common import with_learning_rate
from o2o_jax.agents.o2o import o3f
from o2o_jax.agents.offline import iql
from o2o_jax.types import PRNGKey


@dataclasses.dataclass(frozen=True)
class Config(iql.Config):
  exploration_noise: float = 0.03         # CORL finetune/iql.py expl_noise (deterministic actor only)
  exploration_noise_clip: float = 0.5     # CORL noise_clip
  online_actor_lr: Optional[float] = None  # None: CORL's continued cosine; a value: constant (O3F's)


update = iql.update      # the offline objective, unchanged


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config()) -> iql.State:
  """A fresh IQL state in its online form (`start_online`): the template a fine-tuning checkpoint
  restores into."""
  return start_online(iql.init(key, obs_dim, act_dim, config), config)


@functools.lru_cache(maxsize=None)     # one schedule object per (rate, T): see with_learning_rate
def corl_actor_schedule(actor_lr: float, offline_steps: int):
  """lr(n) = actor_lr (1 + cos(pi n / T)) / 2 at update count n, T = `offline_steps`: PyTorch's
  CosineAnnealingLR(T_max=T) stepped past T_max (CORL finetune/iql.py `actor_lr_schedule`). Equal
  to optax.cosine_decay_schedule(actor_lr, T) for n <= T."""
  def schedule(count):
    return actor_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * count / offline_steps))
  return schedule


def start_online(state: iql.State, config: Config) -> iql.State:
  """The switch: `config` replaces the offline one; every network keeps its parameters and Adam
  state (at `config`'s learning rates); the actor's rate follows `corl_actor_schedule` over the
  offline run's `max_steps` (or, with `online_actor_lr`, is constant with fresh moments)."""
  state = state.replace(critic=with_learning_rate(state.critic, config.critic_lr),
                        value=with_learning_rate(state.value, config.value_lr), config=config)
  if config.online_actor_lr is not None:
    return o3f.start_online(state, config)
  schedule = corl_actor_schedule(config.actor_lr, config.max_steps)
  return state.replace(actor=with_learning_rate(state.actor, schedule))


def act(state: iql.State, observations, key: PRNGKey, explore: bool = True):
  """CORL's acting rule online: a sample of the Gaussian actor, clipped; the deterministic actor's
  output plus clipped Gaussian noise, clipped. Evaluation (explore=False): the mean / the output."""
  c = state.config
  k_act, k_noise = jax.random.split(key)
  action = iql.act(state, observations, k_act, explore)
  if explore and c.deterministic and c.exploration_noise > 0:
    noise = jnp.clip(c.exploration_noise * jax.random.normal(k_noise, action.shape),
                     -c.exploration_noise_clip, c.exploration_noise_clip)
    action = jnp.clip(action + noise, -1.0, 1.0)
  return action
