"""Cal-QL (o2o_jax/agents/o2o/calql.py, o2o_jax/recipes/calql.py) and its returns-to-go
(o2o_jax/data/returns.py), against CORL `algorithms/finetune/cal_ql.py`:

- the lower bound max(Q(s, a_j), V^mu(s)) on the policy actions' Q inside CQL's logsumexp is active
  exactly where Q < V^mu (`CalQL._q_loss`, "Cal-QL: bound Q-values with MC return-to-go"), on a hand
  case, per critic and row, and through `calql.update`;
- returns-to-go are exact across a truncation, a termination, a dataset cut and an observation
  discontinuity, and CORL's sparse-reward case (`get_return_to_go`), by hand;
- the offline -> online switch as CORL's `train` makes it (`switch_calibration()`, `cql_alpha =
  cql_alpha_online`);
- seed independence of the update under vmap; presets; the recipe's refusals; SAMG's Cal-QL base.

Fakes: the actor's samples are points whose log pi is a fixed number, and the critics ignore the
action, Q_k(s, a) = u_k s_0, so every term of the logsumexp is known (`tests/test_loss_terms.py`
does the same for CQL).
"""
from __future__ import annotations

import functools
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax import presets
from o2o_jax import recipe as recipe_lib
from o2o_jax import recipes
from o2o_jax.agents.common import make_train_state
from o2o_jax.agents.o2o import calql, samg
from o2o_jax.agents.offline import cql
from o2o_jax.data import prepared, returns
from o2o_jax.errors import O2OError
from o2o_jax.types import Transition, take_index

OBS, ACT, M = 3, 2, 2        # M: cql_n_actions
KEY = jax.random.PRNGKey(0)
GAMMA, ALPHA, ALPHA_ONLINE = 0.9, 2.0, 0.5
LOG_PI = 0.7                 # log pi(a_j|.) the fake actor reports for each of its samples
U = np.array([1.0, 2.0])     # Q_k(s, a) = u_k s_0

# Four rows. Against V^mu: critic 1's Q = (-1, 0.5, 1, 2) is below at rows 0, 1, equal at row 2,
# above at row 3; critic 2's Q = (-2, 1, 2, 4) is below at rows 0, 1 and above at rows 2, 3.
S = np.array([[-1.0, 0.3, 0.1], [0.5, -0.2, 0.4], [1.0, 0.0, -0.3], [2.0, 0.6, 0.2]])
S2 = np.array([[0.4, 0.1, 0.0], [-0.6, 0.2, 0.5], [1.5, -0.4, 0.1], [0.2, 0.3, -0.1]])
A_DATA = np.array([[0.2, -0.4], [0.7, 0.1], [-0.5, 0.9], [0.0, -0.8]])
R = np.array([1.0, -2.0, 0.5, 3.0])
D = np.array([0.0, 1.0, 0.0, 0.0])
V_MU = np.array([0.0, 1.5, 1.0, -3.0])
BATCH = Transition(*(jnp.asarray(x, jnp.float32) for x in (S, A_DATA, R, S2, D)))
CFG = calql.Config(hidden_dims=(8,), critic_hidden_dims=(8,), cql_n_actions=M, discount=GAMMA,
                   cql_alpha=ALPHA, cql_alpha_online=ALPHA_ONLINE)


class PointPolicy:
  """Every sample is tanh(loc), reported at log pi = LOG_PI."""

  def __init__(self, loc):
    self.loc = loc

  def sample_and_log_prob(self, seed):
    return jnp.tanh(self.loc), jnp.full(self.loc.shape[:-1], LOG_PI)

  def sample(self, seed):
    return jnp.tanh(self.loc)

  def mode(self):
    return jnp.tanh(self.loc)


def action_blind_critic(p, o, a):
  """Q_k(s, a) = u_k s_0: (N, *batch)."""
  s0 = o[..., 0] * jnp.ones(a.shape[:-1])
  return p["u"].reshape((-1,) + (1,) * s0.ndim) * s0[None]


def linear_critic(p, o, a):
  """Q_k(s, a) = u_k s_0 + w_k . a: (N, *batch) (the actor's gradient is not zero)."""
  return action_blind_critic(p, o, a) + jnp.einsum("...a,na->n...", a, p["w"])


def point_actor(p, o):
  return PointPolicy(p["b"] + o[..., :ACT])


def fake_state(critic=None, critic_fn=action_blind_critic, config=CFG):
  state = jax.jit(calql.init, static_argnums=(1, 2, 3))(KEY, OBS, ACT, config)   # (jit: fast)
  ts = lambda params, fn: make_train_state(None, jax.tree_util.tree_map(jnp.float32, params),
                                           1e-3).replace(apply_fn=fn)
  critic = {"u": U} if critic is None else critic
  return state.replace(sac=state.sac.replace(
      actor=ts({"b": np.array([0.1, -0.2])}, point_actor), critic=ts(critic, critic_fn),
      target_critic_params=ts(critic, None).params))


def hand_gaps(calibrated: bool):
  """gap[k, b] = log(M e^(q - |A| log 0.5) + 2M e^(Q~ - log pi)) - q, q = u_k s_b0 (the data action's
  Q too), Q~ = max(q, V^mu_b) with the calibration, q without."""
  q = U[:, None] * S[None, :, 0]
  q_policy = np.maximum(q, V_MU[None]) if calibrated else q
  return np.log(M * np.exp(q - ACT * np.log(0.5)) + 2 * M * np.exp(q_policy - LOG_PI)) - q


@functools.partial(jax.jit, static_argnames="calibrated")
def per_row_gaps(state, calibrated: bool):
  """`cql.conservative_gap` of each row of BATCH alone, with V^mu as the floor or without: (N, B)."""
  params = state.sac.critic.params

  def one(r, floor, k):
    q = action_blind_critic(params, r.observations, r.actions)
    return cql.conservative_gap(params, state.sac, r, q, k, floor if calibrated else None)

  rows = jax.tree_util.tree_map(lambda x: x[:, None], BATCH)               # B batches of one row
  return jax.vmap(one, out_axes=1)(rows, jnp.asarray(V_MU, jnp.float32)[:, None],
                                   jax.random.split(KEY, len(R)))


def test_lower_bound_is_active_exactly_where_q_is_below_the_return_to_go():
  """CORL `CalQL._q_loss`: `cql_q1_current_actions = torch.maximum(cql_q1_current_actions,
  lower_bounds)` (and the next-state actions, both critics), before the importance weights are
  subtracted; the uniform actions and the data term keep Q. Per critic and row (hand case above), the
  calibrated gap equals max(q, V^mu)'s and differs from CQL's own exactly where q < V^mu."""
  got = {calibrated: np.asarray(per_row_gaps(fake_state(), calibrated)) for calibrated in (True, False)}
  np.testing.assert_allclose(got[True], hand_gaps(True), rtol=1e-5)
  np.testing.assert_allclose(got[False], hand_gaps(False), rtol=1e-5)
  below = U[:, None] * S[None, :, 0] < V_MU[None]
  np.testing.assert_array_equal(~np.isclose(got[True], got[False], rtol=1e-6, atol=0), below)
  assert below.any() and (~below).any()


def test_calibrated_update_bounds_by_the_batch_returns_and_the_switch_turns_it_off():
  """Through `calql.update` (CORL `CalQL.train`): the step's `cql_gap` (mean over critics and rows,
  at the step's starting parameters) and critic loss sum_k mean_b (q_kb - y_b)^2 + alpha_cql sum_k
  gap_k, y = r + gamma (1-d) min_k Q'_k(s'). Offline the batch's `mc_returns` bound the policy
  actions' Q with alpha_cql = `cql_alpha`; after `calql.start_online` (CORL `train` at t ==
  offline_iterations: `switch_calibration()`, `cql_alpha = cql_alpha_online`) the bound is off
  whatever returns the batch carries, and alpha_cql = `cql_alpha_online`."""
  offline_state = fake_state()
  online_state = calql.start_online(offline_state)
  assert offline_state.config.calibrated and not online_state.config.calibrated
  assert online_state.config.cql_alpha == ALPHA_ONLINE
  q = U[:, None] * S[None, :, 0]
  y = R + GAMMA * (1 - D) * (U[:, None] * S2[None, :, 0]).min(0)
  td = np.sum(np.mean((q - y[None]) ** 2, axis=1))
  batch = returns.with_returns(BATCH, V_MU)
  for state, calibrated, alpha in ((offline_state, True, ALPHA), (online_state, False, ALPHA_ONLINE)):
    _, info = jax.jit(calql.update)(state, batch, KEY)
    gaps = hand_gaps(calibrated).mean(1)
    assert float(info["cql_gap"]) == pytest.approx(gaps.mean(), rel=1e-5)
    assert float(info["critic_loss"]) == pytest.approx(td + alpha * gaps.sum(), rel=1e-5)
  # Online batches have no returns (the online loop's rows): the switched-off update takes them.
  _, info = jax.jit(calql.update)(online_state, BATCH, KEY)
  assert float(info["cql_gap"]) == pytest.approx(hand_gaps(False).mean(), rel=1e-5)
  with pytest.raises(O2OError, match="needs the return-to-go of each row"):
    calql.update(offline_state, BATCH, KEY)


def flat_dataset(rewards, terminals, starts, lengths, observations, next_observations):
  t = Transition(np.asarray(observations, np.float32), np.zeros((len(rewards), ACT), np.float32),
                 np.asarray(rewards, np.float32), np.asarray(next_observations, np.float32),
                 np.asarray(terminals, np.float32))
  return types.SimpleNamespace(transitions=t, size=len(rewards), episode_starts=np.asarray(starts),
                               episode_lengths=np.asarray(lengths))


def chain(n, start):
  """Continuous observations o_t = start + t (one per row) and their successors."""
  o = start + np.arange(n + 1, dtype=np.float32)[:, None] * np.ones((1, OBS), np.float32)
  return o[:-1], o[1:]


def test_returns_to_go_are_exact_across_a_truncation_a_termination_and_a_cut():
  """G_t = r_t + gamma (1 - end_t) G_{t+1} per segment (CORL `get_return_to_go`), gamma = 1/2.
  Episode A (rewards 1, 2, 3) is truncated: no terminal, yet its last row must not sum into B;
  B (4, 5) terminates; C (6, 7) is cut by the dataset's end. By hand: A 2.75, 3.5, 3; B 6.5, 5;
  C 9.5, 7. A sum that stopped at terminals only would carry B into A's rows (A's last row: 6.25)."""
  obs, nxt = zip(*(chain(n, 100.0 * i) for i, n in enumerate((3, 2, 2))))
  ds = flat_dataset([1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 1, 0, 0], [0, 3, 5], [3, 2, 2],
                    np.concatenate(obs), np.concatenate(nxt))
  expected = [2.75, 3.5, 3.0, 6.5, 5.0, 9.5, 7.0]
  np.testing.assert_allclose(returns.calibration_returns(ds, 0.5), expected, rtol=1e-6)
  np.testing.assert_allclose(returns.returns_to_go(ds, 0.5), expected, rtol=1e-6)


def test_returns_to_go_stop_at_a_truncation_even_where_the_observations_continue():
  """An episode end cuts the sum by itself (CORL `get_return_to_go`: `timeouts` end a segment), even
  where the next episode happens to start at the truncated one's last next observation, so that the
  observation split does not see a jump. Hand case, gamma = 1/2: A (1, 2) truncated, B (4, 8)
  continuing A's observations: A 2, 2; B 8, 8 (a sum cut only at terminals and jumps: A 4, 6)."""
  obs, nxt = chain(4, 0.0)                 # one continuous chain split into two listed episodes
  ds = flat_dataset([1, 2, 4, 8], [0, 0, 0, 0], [0, 2], [2, 2], obs, nxt)
  np.testing.assert_allclose(returns.calibration_returns(ds, 0.5), [2.0, 2.0, 8.0, 8.0], rtol=1e-6)


def test_returns_to_go_split_at_an_observation_discontinuity_and_sparse_failures():
  """CORL `get_return_to_go` also ends a segment where observations[t+1] != next_observations[t]
  (an episode list that runs two trajectories together) and, with `is_sparse_reward`, gives every row
  of a segment whose last reward is the failure reward r_fail / (1 - gamma). Hand case, gamma = 1/2:
  one listed episode of 4 rows whose observations jump between rows 1 and 2; rewards (1, 2, -1, -1),
  r_fail = -1: segments (1, 2) -> 2, 2 and (-1, -1) -> -1.5, -1 (sparse: -2, -2)."""
  (o1, n1), (o2, n2) = chain(2, 0.0), chain(2, 50.0)
  ds = flat_dataset([1, 2, -1, -1], [0, 0, 0, 0], [0], [4], np.concatenate([o1, o2]),
                    np.concatenate([n1, n2]))
  np.testing.assert_array_equal(returns.discontinuity_flags(ds.transitions.observations,
                                                            ds.transitions.next_observations),
                                [0, 1, 0, 0])
  np.testing.assert_allclose(returns.calibration_returns(ds, 0.5), [2, 2, -1.5, -1], rtol=1e-6)
  np.testing.assert_allclose(returns.calibration_returns(ds, 0.5, failure_reward=-1.0),
                             [2, 2, -2, -2], rtol=1e-6)


def test_offline_rows_carry_each_episodes_discounted_return(tiny_hopper_dataset):
  """`calql.offline_dataset` (what the pretrain phase samples from) on the tiny Minari dataset (some
  episodes terminated, some truncated): per episode, G_0 = sum_t gamma^t r_t of the transformed
  rewards (x 2 here), and V^mu of the last row is its reward."""
  data = prepared.load_data(tiny_hopper_dataset.dataset_id, reward_scale=2.0, batch_size=16)
  rows = calql.offline_dataset(data, CFG)
  mc, ds = np.asarray(rows.mc_returns), data.dataset
  chex.assert_trees_all_equal(Transition(*(getattr(rows, f) for f in Transition.__dataclass_fields__)),
                              data.device)
  for start, length in zip(ds.episode_starts, ds.episode_lengths):
    r = 2.0 * ds.transitions.rewards[start:start + length].astype(np.float64)
    assert mc[start] == pytest.approx(np.sum(GAMMA ** np.arange(length) * r), rel=1e-5)
    assert mc[start + length - 1] == pytest.approx(r[-1], rel=1e-6)


def test_vmapped_update_equals_per_seed_updates():
  """Two seeds in one vmapped calibrated update (each with its own actor, critics, batch and returns)
  equal two separate updates: nothing is pooled across seeds. (Linear critics in (s_0, a) and the
  point actor keep the compilations small; every step of `calql.update` runs on them.)"""
  w = np.array([[0.5, -1.0], [2.0, 0.3]])
  one = fake_state({"u": U, "w": w}, linear_critic)
  stack = lambda *xs: jnp.stack([jnp.asarray(x, jnp.float32) for x in xs])
  critics = {"u": stack(U, -0.5 * U), "w": stack(w, -w[::-1])}
  states = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), one)
  states = states.replace(sac=states.sac.replace(
      actor=states.sac.actor.replace(params={"b": stack([0.1, -0.2], [-0.4, 0.3])}),
      critic=states.sac.critic.replace(params=critics),
      target_critic_params=jax.tree_util.tree_map(lambda x: 0.9 * x, critics)))

  def batch(k):
    k = jax.random.split(k, 6)
    return returns.with_returns(Transition(
        jax.random.normal(k[0], (16, OBS)), jax.random.uniform(k[1], (16, ACT), minval=-1, maxval=1),
        jax.random.normal(k[2], (16,)), jax.random.normal(k[3], (16, OBS)),
        (jax.random.uniform(k[4], (16,)) < 0.2).astype(jnp.float32)),
        jax.random.normal(k[5], (16,)))

  batches = jax.vmap(batch)(jax.random.split(jax.random.PRNGKey(1), 2))
  keys = jax.random.split(jax.random.PRNGKey(2), 2)
  vmapped, metrics = jax.jit(jax.vmap(calql.update))(states, batches, keys)
  single_update = jax.jit(calql.update)
  for i in range(2):
    single, single_metrics = single_update(take_index(states, i), take_index(batches, i), keys[i])
    chex.assert_trees_all_close(take_index(vmapped, i), single, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(take_index(metrics, i), single_metrics, rtol=1e-5, atol=1e-6)
  moved = lambda tree: jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda a, b: float(jnp.abs(a - b).max()), tree(vmapped), tree(states)))
  assert min(moved(lambda s: s.sac.actor.params)) > 0 and min(moved(lambda s: s.sac.critic.params)) > 0


def test_presets_follow_corls_cal_ql_configs():
  """CORL `finetune/cal_ql.py` TrainConfig on MuJoCo (the agent's defaults: 3x256 actor, 2x256
  critics, alpha_cql 10 offline and online, raw rewards) for both 'official' and 'corl' (OCR-CFT ran
  CORL's code); `configs/finetune/cal_ql/antmaze/*.yaml` on AntMaze."""
  c = calql.Config()
  assert (tuple(c.hidden_dims), tuple(c.critic_hidden_dims)) == ((256,) * 3, (256,) * 2)
  assert (c.cql_alpha, c.cql_alpha_online, c.actor_lr, c.critic_lr, c.alpha_lr) == (10, 10, 3e-5, 3e-4,
                                                                                      3e-5)
  assert not c.lagrange and not c.backup_entropy and c.calibrated and not c.sparse_reward
  for preset in ("official", "corl"):
    assert presets.offline_preset("calql", "o2o/hopper/medium-v0", preset) == {
        "config": {}, "normalize_reward": False}
    maze = presets.offline_preset("calql", "D4RL/antmaze/umaze-v1", preset)
    assert maze["config"]["sparse_reward"] and maze["config"]["cql_alpha_online"] == 5.0
    assert (maze["reward_scale"], maze["reward_shift"], maze["normalize_states"]) == (10.0, -5.0, False)


@pytest.mark.parametrize("override, message", [
    ({"cql_alpha": "3"}, "pass --calql_alpha_online"),
    ({"calibrated": "true"}, "without the calibration")])
def test_recipe_refuses_the_fields_the_switch_sets(override, message):
  recipe = recipes.get("calql")
  ctx = recipe_lib.Context.build(recipe, {}, {}, override, log=lambda *_: None)
  with pytest.raises(O2OError, match=message):
    recipe_lib.check(recipe, ctx)


def test_samg_on_calql_runs_the_switched_base():
  """SAMG's Cal-QL base (the SAMG paper's Table 1 column): CQL-family (its offline term, the critic
  under .sac), its online Config the one after CORL's switch."""
  config = samg.Config(base="calql").resolved(ACT)
  assert not config.base_config.calibrated and config.uses_offline_rows
  assert config.base_config.cql_alpha == config.base_config.cql_alpha_online
