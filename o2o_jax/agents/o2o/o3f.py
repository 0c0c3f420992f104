"""O3F: offline-to-online fine-tuning with optimistic action selection (Mark et al., 2022).

The training objective never changes: IQL (`agents.offline.iql`) with an ensemble of m = 5 critics,
offline and online alike (paper §5.3; reference §4a). Only the way actions are taken online changes
(Algorithm 1, lines 2-4), at every env step:

  a ~ pi(.|s)                                  (the IQL policy sample; its output if deterministic)
  c_i ~ N(a, sigma^2 I), i = 1..N              (N = 100; sigma 0.2 locomotion, 0.05 elsewhere)
  f(s, c) = Q_mean(s, c) + omega Q_std(s, c)   (eq. 2; mean / population std over the m critics)
  a_t = argmax_i f(s, c_i)

`act(state, obs, key, explore=True)` is that selection, one jit-able, seed-vmappable function (one
forward pass of N candidates x m critics); `explore=False` is the deterministic policy mean (used
for evaluation, reconstructed: the paper does not say).

Reconstructed items (reference §4, each a Config option, see BUILD_NOTES.md):
  - `v_target`: reduction of the m critics in IQL's value target u = Q(s,a) - V(s): "min" (IQL's
    double-Q min carried to 5 critics, default) or "mean".
  - `clip_candidates`: candidates are clipped to the action box [-1, 1] (default True).
  - `online_actor_lr`: the actor learning rate from the switch on. IQL's fine-tuning configs do not
    decay it (CORL's offline cosine schedule has reached 0 by then); `start_online` swaps in a
    constant-rate optimizer.

Rewards: the IQL O3F builds on normalises locomotion rewards to r * 1000 / (max - min episode
return) of the dataset (CORL `iql.py` `modify_reward`; AntMaze: r - 1), which sets the scale its
beta = 3 AWR temperature and expectile were tuned at. The O3F chain's 'official' pre-training preset
(o2o_jax.presets) applies that transform; it travels in the checkpoint metadata and is applied to
the offline buffer and every online reward alike (o2o_jax.data.prepared.load_data /
o2o_jax.phase.train_online).

The state is IQL's own (`iql.State`), with this module's Config (a subclass of `iql.Config`), so an
IQL checkpoint with any number of critics can be fine-tuned with O3F as it is.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from o2o_jax.agents.common import make_train_state, with_learning_rate
from o2o_jax.agents.offline import iql
from o2o_jax.types import PRNGKey

# Gym-MuJoCo locomotion envs, where the paper's sigma is 0.2 (0.05 on AntMaze, kitchen, ...).
LOCOMOTION = ("hopper", "halfcheetah", "walker2d", "ant", "humanoid", "swimmer")


@dataclasses.dataclass(frozen=True)
class Config(iql.Config):
  num_critics: int = 5                 # paper §5.3: 5 Q-functions instead of IQL's 2
  num_candidates: int = 100            # N
  sigma: float = 0.2                   # candidate std (locomotion; `sigma_for_env`)
  omega: float = 0.0                   # optimism weight of eq. 2 (0 = mean-Q ranking, the default)
  clip_candidates: bool = True         # [recon] clip candidates to [-1, 1]
  online_actor_lr: float = 3e-4        # [recon] constant actor lr online (IQL fine-tuning: no decay)


def sigma_for_env(env_name: str) -> float:
  """The paper's candidate std: 0.2 on locomotion tasks, 0.05 on every other task (§5.3)."""
  return 0.2 if env_name.lower() in LOCOMOTION else 0.05


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config()) -> iql.State:
  if config.v_target not in ("min", "mean"):
    raise ValueError(f"v_target must be 'min' or 'mean' (got {config.v_target!r})")
  return iql.init(key, obs_dim, act_dim, config)


# ----------------------------------------------------------------------------- training (IQL's own)

# O3F keeps IQL's own objective online; `config.v_target` picks min or mean over the m critics.
update = iql.update


def start_online(state: iql.State, config: Config) -> iql.State:
  """The switch: same networks and losses; `config` (the online action-selection settings) replaces
  the offline one and the actor gets a constant learning rate (fresh Adam moments). The critic and
  V keep their Adam moments at `config`'s rates (the offline run's unless overridden online)."""
  actor = make_train_state(None, state.actor.params, config.online_actor_lr).replace(
      apply_fn=state.actor.apply_fn)
  return state.replace(actor=actor, critic=with_learning_rate(state.critic, config.critic_lr),
                       value=with_learning_rate(state.value, config.value_lr), config=config)


# ----------------------------------------------------------------------------- action selection

def sample_candidates(key: PRNGKey, actions, num: int, sigma: float, clip: bool = True):
  """c_i ~ N(a, sigma^2 I), i = 1..num: shape (*batch, num, act_dim) for actions (*batch, act_dim)."""
  noise = jax.random.normal(key, actions.shape[:-1] + (num, actions.shape[-1]), actions.dtype)
  candidates = actions[..., None, :] + sigma * noise
  return jnp.clip(candidates, -1.0, 1.0) if clip else candidates


def score_candidates(state: iql.State, observations, candidates):
  """f(s, c) = Q_mean(s, c) + omega Q_std(s, c) (eq. 2), the std the population std over the m
  critics; observations (*batch, obs_dim), candidates (*batch, N, act_dim) -> scores (*batch, N)."""
  obs = jnp.broadcast_to(observations[..., None, :],
                         candidates.shape[:-1] + observations.shape[-1:])
  q = state.critic.apply_fn(state.critic.params, obs, candidates)          # (m, *batch, N)
  score = q.mean(0)
  if state.config.omega != 0.0:
    score = score + state.config.omega * q.std(0)
  return score


def select_candidate(state: iql.State, observations, candidates):
  """a_t = argmax_i f(s, c_i) (Algorithm 1, line 4)."""
  best = jnp.argmax(score_candidates(state, observations, candidates), axis=-1)
  return jnp.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]


def policy_action(state: iql.State, observations, key: PRNGKey):
  """a ~ pi(.|s) (Algorithm 1, line 2): IQL's exploration action (its output if deterministic)."""
  return iql.act(state, observations, key, True)


def act(state: iql.State, observations, key: PRNGKey, explore: bool = True):
  """Optimistic action selection when exploring; the deterministic policy mean otherwise."""
  if not explore:
    return iql.act(state, observations, key, False)
  k_policy, k_candidates = jax.random.split(key)
  c = state.config
  candidates = sample_candidates(k_candidates, policy_action(state, observations, k_policy),
                                 c.num_candidates, c.sigma, c.clip_candidates)
  return select_candidate(state, observations, candidates)
