"""Off2On: balanced replay and a pessimistic Q-ensemble (Lee, Seo, Lee, Abbeel, Shin; CoRL 2022).

Reference: shlee94/Off2OnRL @6f298fa -- `rlkit/rlkit/torch/sac/ours.py` (`OursTrainer.compute_loss`),
`rlkit/examples/ours.py` (`ParallelTanhGaussianPolicy`, the switch), `rlkit/rlkit/core/
batch_rl_algorithm.py` (`OurRLAlgorithm`: the initial max priority, the three batches per update),
`rlkit/rlkit/data_management/prioritized_replay_buffer.py` (`SegmentTree`, `PriorityReplayBuffer`).
Paper §4.1 (balanced replay, eqs. 3-5) and §4.2 (pessimistic Q-ensemble, eq. 6);
docs: ../shared/reference/baselines.md §7.

Ensemble (N = 5 CQL agents pre-trained offline, each a twin critic (Q1_i, Q2_i) and an actor pi_i).
The N members are ONE module each: the actors are one `TanhGaussianActor` applied with `jax.vmap`
over member-stacked parameters, the critics one `CriticEnsemble` of N x 2 heads (member i = heads
2i, 2i+1).

  policy   (ParallelTanhGaussianPolicy.forward; eq. 6) moment matching in pre-tanh space:
             mu_bar = mean_i mu_i,   sigma_bar^2 = mean_i (mu_i^2 + sigma_i^2) - mu_bar^2
                                               = mean_i sigma_i^2 + mean_i (mu_i - mu_bar)^2
             (the second form is the same number without the cancellation), sigma_bar clipped to
             [e^-20, e^2]; pi_bar = tanh(N(mu_bar, sigma_bar^2)). Acting samples pi_bar, evaluation
             takes tanh(mu_bar) (MakeDeterministic).
  critic   ("QF Loss") plain SAC per member, one a' ~ pi_bar(.|s') shared by all members:
             y_i = r + gamma (1-d) [min(Q1'_i, Q2'_i)(s', a') - alpha log pi_bar(a'|s')]
             L_Q = sum_i E[(Q1_i(s,a) - y_i)^2 + (Q2_i(s,a) - y_i)^2]
  actor    ("Policy and Alpha Loss") L_pi = E[alpha log pi_bar(a~|s) - (1/N) sum_i min(Q1_i, Q2_i)(s, a~)],
             a~ ~ pi_bar reparameterised: the gradient reaches every member's actor through mu_bar, sigma_bar.
  alpha    L = -E[log alpha (log pi_bar(a~|s) + H)], H = -|A|, a fresh alpha = 1 at the switch.
  w_psi    ("IS Weight network") the density ratio w = ReLU(MLP(s, a)), 2x256, last bias 1, trained
           with the Jensen-Shannon variational bound (eq. 4), offline rows against online-only rows:
             L_psi = E_{D_off}[-log(2 / (w + 1) + 1e-10)] - E_{B_on}[log(2 w / (w + 1) + 1e-10)]
  priority ("Updating the priority buffer"; eq. 5) for every transition of the RL batch:
             p = clip(w(s,a)^{1/T} / (mean_{offline batch} w^{1/T} + 1e-10), 0.001, 1000),  T = 5
  replay   (OurRLAlgorithm.__init__, SegmentTree) the prioritised buffer holds D at priority 1 and
           every online transition; its running max priority starts at p_max = |D| f / ((1-f) 1000)
           (f = init_online_fraction = 0.5: the first 1000 online rows carry a share f of the mass),
           each write-back raises it to the largest priority written, and a new online row enters at
           it. RL batches are drawn in proportion to priority (stratified segments).

Every gradient of a step is taken at its starting parameters, as `compute_loss` builds all losses
before any optimiser step: the priorities come from the pre-update w_psi, the actor and alpha losses
see the pre-update critic, the critic target the pre-update pi_bar and alpha.

Where the priorities live: in the agent state, one sum tree per seed whose leaves are [D's rows, the
online buffer's rows] (`State.tree`, `replay.sum_tree`: O(B log N) per draw and per write-back, as
the reference's `SegmentTree`), with the running max and the buffer position up to which online rows
have entered. `sample_batch` (this module's `sampler`, which the online loop calls instead of its own
sampling, `loops.Learner`) admits the new online rows at the running max and draws the RL batch
(`replay.sum_tree_sample`, `replay.gather_union` over D and the buffer) and the two plain batches of
w_psi (uniform over D; uniform over the online buffer, which holds only online steps); `update`
writes the RL batch's new priorities back (`replay.sum_tree_set`). All of it is pure and per seed.

Where this differs from the reference, and why:
  - one update per env step from the first online step (OCR-CFT's schedule; the reference runs 1000
    updates after each 1000-step epoch, 10x in the first);
  - the members are CORL CQL runs (OCR-CFT's checkpoints: 3x256, states normalised, as the CQL run
    recorded), not rlkit CQL 2x256 on raw states;
  - D's rows at time-limit ends stay in the replay: the reference skips them because its s' is the
    next row of D4RL's flat arrays (the next episode's first state there); ours carry their true s';
  - the online buffer holds every online step (100k at the paper budget, under the reference's 250k
    FIFO, so nothing is evicted in either), and the sum tree has the next power of 2 >= |D| + that
    many leaves;
  - online rows enter the tree at most a batch's worth per draw (`admit_online_rows`): exact for the
    loop's one row per update; a warm-up's rows enter over the first draws.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import losses, networks
from o2o_jax.agents.common import TrainState, make_train_state
from o2o_jax.agents.online import sac
from o2o_jax.data import replay
from o2o_jax.errors import O2OError
from o2o_jax.types import PRNGKey, Transition

# ours.py: `new_priority = normalized_weight.clamp(0.001, 1000)`.
PRIORITY_MIN, PRIORITY_MAX = 1e-3, 1e3
# batch_rl_algorithm.py `OurRLAlgorithm.__init__`: p_max = M f / ((1 - f) N), N = 1000 online rows.
ONLINE_ROWS_AT_START = 1000
# ours.py: the 1e-10 in the JS bound's logs and the priority normaliser.
EPS = 1e-10


@dataclasses.dataclass(frozen=True)
class Config(sac.Config):
  # The members' networks: CORL CQL's (agents.offline.cql.Config); the recipe copies the pre-trained
  # run's own (`ARCHITECTURE`). Learning rates, tau, gamma, alpha: ours.py (3e-4 each, 5e-3, 0.99, 1).
  hidden_dims: Sequence[int] = (256, 256, 256)
  log_std_min: float = -20.0
  learnable_log_std_scale: bool = True
  orthogonal_init: bool = True
  actor_init: str = "tanh_gaussian_policy"
  critic_init: str = "corl_cql_critic"
  ensemble_size: int = 5                  # N
  ratio_hidden_dims: Sequence[int] = (256, 256)
  ratio_lr: float = 3e-4                  # weight_net_lr
  priority_temperature: float = 5.0       # T
  online_fraction: float = 0.5            # f, init_online_fraction
  # Rows of the prioritised replay, set by the recipe: the offline dataset's and the online buffer's
  # (the leaves of `State.tree`; 0 and 0: no prioritised replay).
  offline_rows: int = 0
  online_rows: int = 0


# The Config fields that shape the members' networks, taken from the pre-trained CQL run.
ARCHITECTURE = ("hidden_dims", "critic_hidden_dims", "num_critics", "layer_norm", "log_std_min",
                "log_std_max", "learnable_log_std_scale", "orthogonal_init", "actor_init",
                "critic_init")


def _symmetric_uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class DensityRatio(nn.Module):
  """w_psi(s, a) = ReLU(MLP(s, a)) >= 0 (ours.py: rlkit `ConcatMlp` + `w_activation`). rlkit's init:
  hidden kernels U(+-1/sqrt(fan)) with its fan taken from the torch weight's first axis (the output
  width), hidden biases 0; the last kernel U(+-3e-3), its bias filled with 1 (w starts near 1)."""
  hidden_dims: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, observations, actions):
    x = jnp.concatenate([observations, actions], axis=-1)
    for width in self.hidden_dims:
      x = nn.relu(nn.Dense(width, kernel_init=nn.initializers.variance_scaling(
          1.0 / 3.0, "fan_out", "uniform"))(x))
    w = nn.Dense(1, kernel_init=_symmetric_uniform(3e-3), bias_init=nn.initializers.constant(1.0))(x)
    return nn.relu(w[..., 0])


@flax.struct.dataclass
class State:
  sac: sac.State              # actor: the N members' parameters stacked; critic: N x num_critics heads
  ratio: TrainState           # w_psi
  tree: jax.Array             # sum tree over the priorities of D's rows, then the online buffer's
  max_priority: jax.Array     # the running max, at which new online rows enter
  admitted_pointer: jax.Array  # int32: the buffer's pointer and size when online rows last entered
  admitted_size: jax.Array

  @property
  def config(self) -> Config:
    return self.sac.config

  @property
  def step(self):
    return self.sac.step


@flax.struct.dataclass
class Batch(Transition):
  """What one update reads (`sample_batch`): the RL batch drawn by priority (the Transition fields)
  with its rows' `indices` in [D, online buffer], and the (s, a) of w_psi's two plain batches."""
  indices: jax.Array
  offline_observations: jax.Array
  offline_actions: jax.Array
  online_observations: jax.Array
  online_actions: jax.Array


def make_networks(config: Config, act_dim: int):
  """(member actor, critic ensemble of N x num_critics heads, w_psi): one module each."""
  heads = config.ensemble_size * config.num_critics
  actor, critic = sac.make_networks(dataclasses.replace(config, num_critics=heads), act_dim)
  return actor, critic, DensityRatio(tuple(config.ratio_hidden_dims))


def initial_max_priority(offline_rows: int, online_fraction: float) -> float:
  """p_max = |D| f / ((1 - f) 1000): the first 1000 online rows at p_max carry the share f of the
  sampling mass against D's rows at priority 1."""
  return offline_rows * online_fraction / ((1.0 - online_fraction) * ONLINE_ROWS_AT_START)


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config()) -> State:
  """A fresh ensemble (for shapes and tests; the recipe starts from the CQL members,
  `from_members`), a fresh alpha = 1 and w_psi, and the prioritised replay's initial priorities."""
  if config.ensemble_size < 1:
    raise O2OError(f"ensemble_size must be at least 1 (got {config.ensemble_size})")
  if config.target_entropy is None:
    config = dataclasses.replace(config, target_entropy=-float(act_dim))
  actor, critic, ratio = make_networks(config, act_dim)
  k_actor, k_critic, k_ratio = jax.random.split(key, 3)
  obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
  actor_params = jax.vmap(lambda k: actor.init(k, obs))(jax.random.split(k_actor, config.ensemble_size))
  critic_params = critic.init(k_critic, obs, act)
  temperature = make_train_state(None, {"log_alpha": jnp.log(jnp.float32(config.init_alpha))},
                                 config.alpha_lr)
  s = sac.State(actor=make_train_state(actor, actor_params, config.actor_lr),
                critic=make_train_state(critic, critic_params, config.critic_lr),
                target_critic_params=critic_params, temperature=temperature,
                step=jnp.zeros((), jnp.int32), config=config)
  initial = jnp.concatenate([jnp.ones((config.offline_rows,), jnp.float32),     # D at priority 1
                             jnp.zeros((config.online_rows,), jnp.float32)])   # no online row yet
  return State(sac=s, ratio=make_train_state(ratio, ratio.init(k_ratio, obs, act), config.ratio_lr),
               tree=replay.sum_tree(initial),
               max_priority=jnp.float32(initial_max_priority(config.offline_rows,
                                                             config.online_fraction)),
               admitted_pointer=jnp.zeros((), jnp.int32), admitted_size=jnp.zeros((), jnp.int32))


def from_members(key: PRNGKey, actor_params, critic_params, obs_dim: int, act_dim: int,
                 config: Config) -> State:
  """The switch (ours.py `experiment`): the N pre-trained members' actors (leaves (N, ...)) and twin
  critics (leaves (N, num_critics, ...)) with the target critics copied from the critics, fresh
  optimisers, a fresh alpha = 1 and a fresh w_psi (from `key`)."""
  state = init(key, obs_dim, act_dim, config)
  s = state.sac
  heads = jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), critic_params)
  actor = make_train_state(None, actor_params, config.actor_lr).replace(apply_fn=s.actor.apply_fn)
  critic = make_train_state(None, heads, config.critic_lr).replace(apply_fn=s.critic.apply_fn)
  return state.replace(sac=s.replace(actor=actor, critic=critic, target_critic_params=heads))


# ----------------------------------------------------------------------------- the ensemble

def moment_match(locs, scales, log_std_min: float = -20.0, log_std_max: float = 2.0):
  """(mu_bar, sigma_bar) of the members' pre-tanh Gaussians (member axis first): the mean and the
  standard deviation of their equal-weight mixture, sigma_bar clipped to [e^log_std_min,
  e^log_std_max] (ours.py: LOG_SIG_MIN, LOG_SIG_MAX = -20, 2, the CQL actors' own bounds)."""
  loc = jnp.mean(locs, axis=0)
  variance = jnp.mean(jnp.square(scales), axis=0) + jnp.mean(jnp.square(locs - loc), axis=0)
  return loc, jnp.clip(jnp.sqrt(variance), np.exp(log_std_min), np.exp(log_std_max))


def member_moments(state: sac.State, observations, params=None):
  """(mu_i, sigma_i) of every member's pre-tanh Gaussian: leaves (N, ..., |A|)."""
  params = state.actor.params if params is None else params

  def one(p):
    normal = state.actor.apply_fn(p, observations).distribution
    return normal.loc, normal.scale_diag
  return jax.vmap(one)(params)


def ensemble_policy(state: sac.State, observations, params=None) -> networks.TanhGaussian:
  """pi_bar(.|s) = tanh(N(mu_bar, sigma_bar^2)), the moment-matched ensemble policy."""
  locs, scales = member_moments(state, observations, params)
  c = state.config
  return networks.TanhGaussian(*moment_match(locs, scales, c.log_std_min, c.log_std_max))


def member_min_q(state: sac.State, critic_params, observations, actions):
  """min_k Q_ik(s, a) per member: (N, B)."""
  q = state.critic.apply_fn(critic_params, observations, actions)
  return q.reshape((state.config.ensemble_size, state.config.num_critics) + q.shape[1:]).min(1)


def ensemble_td_target(state: sac.State, batch: Transition, key: PRNGKey):
  """y_i = r + gamma (1-d) [min_k Q'_ik(s', a') - alpha log pi_bar(a'|s')], one a' ~ pi_bar for all
  members: (N, B)."""
  next_actions, next_log_probs = ensemble_policy(state, batch.next_observations).sample_and_log_prob(
      seed=key)
  next_q = member_min_q(state, state.target_critic_params, batch.next_observations, next_actions)
  next_v = losses.soft_value(next_q, next_log_probs[None], sac.alpha(state))
  return losses.td_target(batch.rewards[None], batch.masks[None], state.config.discount, next_v)


def ensemble_critic_loss(critic_params, state: sac.State, batch: Transition, targets, key=None):
  """sum_i sum_k E[(Q_ik(s, a) - y_i)^2] (ours.py: qf1_loss + qf2_loss, each summed over members)."""
  del key
  q = state.critic.apply_fn(critic_params, batch.observations, batch.actions)
  q = q.reshape((state.config.ensemble_size, state.config.num_critics) + q.shape[1:])
  loss = jnp.sum(jnp.mean(jnp.square(q - jax.lax.stop_gradient(targets)[:, None]), axis=-1))
  return loss, {"critic_loss": loss, "q_mean": q.mean(), "target_mean": targets.mean()}


def ensemble_actor_loss(actor_params, state: sac.State, batch: Transition, key: PRNGKey):
  """E[alpha log pi_bar(a~|s) - mean_i min_k Q_ik(s, a~)], a~ ~ pi_bar (reparameterised)."""
  actions, log_probs = ensemble_policy(state, batch.observations, actor_params).sample_and_log_prob(
      seed=key)
  q = member_min_q(state, state.critic.params, batch.observations, actions).mean(0)
  loss = losses.sac_actor_loss(sac.alpha(state), log_probs, q)
  return loss, {"actor_loss": loss, "entropy": -log_probs.mean(), "log_probs": log_probs}


# ----------------------------------------------------------------------------- balanced replay

def js_ratio_loss(w_offline, w_online):
  """The JS variational bound of w_psi (eq. 4; ours.py weight_loss): offline rows push w down, online
  rows push it up, so w approaches d_online / d_offline."""
  offline_term = -jnp.log(2.0 / (w_offline + 1.0) + EPS)
  online_term = jnp.log(2.0 * w_online / (w_online + 1.0) + EPS)
  return jnp.mean(offline_term) - jnp.mean(online_term)


def batch_priorities(w_batch, w_offline, temperature: float):
  """p = clip(w^{1/T} / (mean_offline-batch w^{1/T} + 1e-10), 0.001, 1000) (eq. 5)."""
  sharpened = jnp.power(w_batch, 1.0 / temperature)
  normalizer = jnp.mean(jnp.power(w_offline, 1.0 / temperature)) + EPS
  return jnp.clip(sharpened / normalizer, PRIORITY_MIN, PRIORITY_MAX)


def priorities(state: State) -> jax.Array:
  """Every row's priority: D's rows, then the online buffer's."""
  c = state.config
  return replay.sum_tree_leaves(state.tree)[:c.offline_rows + c.online_rows]


def admit_online_rows(state: State, buffer: replay.ReplayBuffer, window: int) -> State:
  """The online rows written since the last call enter at the running max priority (SegmentTree
  `append` at `self.max`), at most `window` of them per call, oldest first (the online loop writes
  one row per update; a longer backlog, e.g. a warm-up's rows, enters over the next calls). Rows are
  found from the buffer's pointer and size against the ones recorded at the last admission (fewer
  than `capacity` rows are written in between)."""
  capacity = buffer.capacity
  written = (buffer.pointer - state.admitted_pointer) % capacity
  written = jnp.where((written == 0) & (buffer.size > state.admitted_size), capacity, written)
  window = min(window, capacity)
  offsets = jnp.arange(window)
  leaves = state.config.offline_rows + (state.admitted_pointer + offsets) % capacity
  current = replay.sum_tree_leaves(state.tree)[leaves]
  values = jnp.where(offsets < written, state.max_priority, current)
  admitted = jnp.minimum(written, window).astype(jnp.int32)
  return state.replace(tree=replay.sum_tree_set(state.tree, leaves, values),
                       admitted_pointer=(state.admitted_pointer + admitted) % capacity,
                       admitted_size=jnp.minimum(state.admitted_size + admitted, capacity))


def sample_batch(state: State, buffer: replay.ReplayBuffer, offline: Transition, key: PRNGKey,
                 batch_size: int):
  """(state with the new online rows admitted, Batch): `batch_size` RL rows of D and the buffer in
  proportion to priority, and `batch_size` uniform rows each of D and of the online buffer for w_psi
  (OurRLAlgorithm._train: weight_net_batch_size = batch_size = 256)."""
  if offline is None:
    raise O2OError("off2on's sampler draws from the offline dataset: pass it to the online loop")
  c = state.config
  if (c.offline_rows, c.online_rows) != (offline.rewards.shape[0], buffer.capacity):
    raise O2OError(f"off2on's priorities cover {c.offline_rows} offline + {c.online_rows} online "
                   f"rows but the replay has {offline.rewards.shape[0]} + {buffer.capacity}: set "
                   "Config.offline_rows and online_rows to the dataset's and the buffer's sizes")
  state = admit_online_rows(state, buffer, batch_size)
  k_rl, k_offline, k_online = jax.random.split(key, 3)
  indices = replay.sum_tree_sample(state.tree, k_rl, batch_size)
  rl = replay.gather_union(offline, buffer, indices)
  off = replay.sample_offline(offline, k_offline, batch_size)
  on = replay.sample(buffer, k_online, batch_size)
  return state, Batch(**{f.name: getattr(rl, f.name) for f in dataclasses.fields(Transition)},
                      indices=indices, offline_observations=off.observations,
                      offline_actions=off.actions, online_observations=on.observations,
                      online_actions=on.actions)


sampler = sample_batch       # the online loop draws Off2On's batches with it (loops.Learner)


# ----------------------------------------------------------------------------- the update

def update(state: State, batch: Batch, key: PRNGKey):
  """One Off2On step (ours.py `train_from_torch`): w_psi's JS step, the actor and alpha, the
  ensemble critic and its target, then the RL batch's priorities written back (from the pre-update
  w_psi) and the running max raised."""
  c = state.config
  k_actor, k_critic = jax.random.split(key)

  def ratio_loss(params):
    w_offline = state.ratio.apply_fn(params, batch.offline_observations, batch.offline_actions)
    w_online = state.ratio.apply_fn(params, batch.online_observations, batch.online_actions)
    return js_ratio_loss(w_offline, w_online), (w_offline, w_online)

  (r_loss, (w_offline, w_online)), grads = jax.value_and_grad(ratio_loss, has_aux=True)(
      state.ratio.params)
  w_batch = state.ratio.apply_fn(state.ratio.params, batch.observations, batch.actions)
  new_priorities = batch_priorities(w_batch, w_offline, c.priority_temperature)

  after_actor, actor_info = sac.update_actor(state.sac, batch, k_actor, loss_fn=ensemble_actor_loss)
  s, critic_info = sac.update_critic(state.sac, batch, k_critic, loss_fn=ensemble_critic_loss,
                                     target_fn=ensemble_td_target)
  s = s.replace(actor=after_actor.actor, temperature=after_actor.temperature, step=s.step + 1)
  new_state = state.replace(sac=s, ratio=state.ratio.apply_gradients(grads=grads),
                            tree=replay.sum_tree_set(state.tree, batch.indices, new_priorities),
                            max_priority=jnp.maximum(state.max_priority, new_priorities.max()))
  return new_state, {**critic_info, **actor_info, "ratio_loss": r_loss,
                     "w_offline": w_offline.mean(), "w_online": w_online.mean(),
                     "w_batch": w_batch.mean(), "priority_mean": new_priorities.mean(),
                     "max_priority": new_state.max_priority,
                     "online_share": jnp.mean((batch.indices >= c.offline_rows).astype(jnp.float32))}


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  """A sample of pi_bar (exploration), or tanh(mu_bar) (evaluation)."""
  dist = ensemble_policy(state.sac, observations)
  return dist.sample(seed=key) if explore else dist.mode()
