"""Off2On (issue #21 item 4): its defining mechanisms on hand-computed cases, each named with where it
lives in the reference (shlee94/Off2OnRL @6f298fa), and seed independence of the update. The recipe
(2 seeds, --config. override, crash + exact resume) runs in tests/test_method_contract.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from o2o_jax import recipe as recipe_lib
from o2o_jax import recipes
from o2o_jax.agents.o2o import off2on
from o2o_jax.agents.online import sac
from o2o_jax.data import replay
from o2o_jax.errors import O2OError
from random_batches import random_transitions

OBS, ACT, B = 5, 2, 16
N_OFF, N_ON = 40, 24       # rows of the offline data and of the online buffer
CFG = off2on.Config(hidden_dims=(8, 8), ratio_hidden_dims=(8, 8), ensemble_size=2,
                    offline_rows=N_OFF, online_rows=N_ON)


# Jitted once, shared by the tests (one compilation each).
sample = jax.jit(off2on.sample_batch, static_argnums=4)
update = jax.jit(off2on.update)
from_members = jax.jit(off2on.from_members, static_argnums=(3, 4, 5))


def _rows(key, n):
  return random_transitions(key, n, OBS, ACT)


@pytest.fixture(scope="module")
def setup():
  """A state whose two members are distinct CQL-shaped agents (`from_members`), the offline rows and
  a buffer holding 5 online rows."""
  member = sac.Config(**{k: getattr(CFG, k) for k in off2on.ARCHITECTURE})
  members = jax.jit(jax.vmap(lambda k: sac.init(k, OBS, ACT, member)))(
      jax.random.split(jax.random.PRNGKey(0), 2))
  state = from_members(jax.random.PRNGKey(1), members.actor.params, members.critic.params, OBS, ACT,
                       CFG)
  offline = _rows(jax.random.PRNGKey(2), N_OFF)
  buffer = replay.insert(replay.init(N_ON, OBS, ACT), _rows(jax.random.PRNGKey(3), 5))
  return state, members, offline, buffer


def test_critic_loss_sums_every_member_and_twin(setup):
  """ours.py `compute_loss`: qf1_loss + qf2_loss, each the sum over the N members of the batch-mean
  squared error to y_i: L = sum_i sum_k mean_b (Q_ik(s, a) - y_i)^2 (a mean over members would
  scale the gradient and the logged loss by 1 / (2N))."""
  state = setup[0].sac
  batch = _rows(jax.random.PRNGKey(7), B)
  targets = jax.random.normal(jax.random.PRNGKey(8), (CFG.ensemble_size, B))
  loss, info = off2on.ensemble_critic_loss(state.critic.params, state, batch, targets)
  q = np.asarray(state.critic.apply_fn(state.critic.params, batch.observations, batch.actions),
                 np.float64).reshape(CFG.ensemble_size, 2, B)
  expected = sum(np.mean((q[i, k] - np.asarray(targets[i], np.float64)) ** 2)
                 for i in range(CFG.ensemble_size) for k in range(2))
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(info["critic_loss"]) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- balanced replay

def test_priority_formula_on_a_hand_computed_case():
  """ours.py `compute_loss` "Updating the priority buffer": p = clip(w^(1/T) / (mean_offline
  w^(1/T) + 1e-10), 0.001, 1000), T = 5. Offline w = (1, 32): w^(1/5) = (1, 2), mean 1.5."""
  w_batch = jnp.array([0.0, 1.0, 32.0, 243.0, 2000.0 ** 5])
  p = off2on.batch_priorities(w_batch, jnp.array([1.0, 32.0]), 5.0)
  #             0 -> clipped up   1/1.5    2/1.5    3/1.5   2000/1.5 -> clipped down
  np.testing.assert_allclose(p, [0.001, 2 / 3, 4 / 3, 2.0, 1000.0], rtol=1e-5)


def test_initial_max_priority_formula(setup):
  """OurRLAlgorithm.__init__: transitions.max = M f / ((1 - f) 1000): the first 1000 online rows carry
  the share f of the sampling mass against D at priority 1 (|D| = 2000: 1000 x 2 against 2000 x 1)."""
  assert off2on.initial_max_priority(2000, 0.5) == pytest.approx(2.0)
  assert off2on.initial_max_priority(2000, 0.75) == pytest.approx(6.0)     # 1000 x 6 = 3 x 2000
  state = setup[0]
  assert float(state.max_priority) == pytest.approx(N_OFF * 0.5 / (0.5 * 1000))
  np.testing.assert_array_equal(off2on.priorities(state), [1.0] * N_OFF + [0.0] * N_ON)  # no online row yet


def test_sum_tree_draws_in_proportion_to_priority():
  """`replay.sum_tree_sample` (PriorityReplayBuffer._get_samples_from_segments, SegmentTree._retrieve):
  128k draws (2000 batches of 64, one fixed key) from 9 leaves (a 16-leaf tree) against p / sum(p):
  leaves at 0 (and the padding) never drawn, and the chi-square statistic over the others below its
  1e-4 quantile (df 6: 27.9). Stratification only lowers the variance below the multinomial's, so
  the bound is conservative. Every share is also within 0.01 of its priority's."""
  p = np.array([1.0, 2.0, 0.0, 4.0, 0.5, 0.0, 8.0, 3.0, 1.0], np.float32)
  tree = replay.sum_tree(jnp.asarray(p))
  draws = jax.jit(jax.vmap(lambda k: replay.sum_tree_sample(tree, k, 64)))(
      jax.random.split(jax.random.PRNGKey(0), 2000)).ravel()
  counts = np.bincount(np.asarray(draws), minlength=16)
  assert counts[[2, 5]].sum() == 0 and counts[len(p):].sum() == 0
  positive = p > 0
  expected = draws.size * p[positive] / p.sum()
  chi2 = float(np.sum((counts[:len(p)][positive] - expected) ** 2 / expected))
  assert chi2 < stats.chi2.ppf(1 - 1e-4, positive.sum() - 1), (counts, expected)
  np.testing.assert_allclose(counts[:len(p)] / draws.size, p / p.sum(), atol=0.01)


def test_sum_tree_write_keeps_every_node_the_sum_of_its_children():
  """SegmentTree.update/_propagate: after writing leaves (a repeated index included) every node
  equals the tree rebuilt from the new leaves, the root the new total."""
  tree = replay.sum_tree(jnp.arange(1.0, 12.0))
  new = jax.jit(replay.sum_tree_set)(tree, jnp.array([0, 7, 7, 10]), jnp.array([5.0, 0.0, 0.0, 2.5]))
  leaves = np.arange(1.0, 12.0)
  leaves[[0, 7, 10]] = [5.0, 0.0, 2.5]
  np.testing.assert_array_equal(new, replay.sum_tree(jnp.asarray(leaves), 16))
  assert float(new[1]) == leaves.sum()


def test_new_online_rows_enter_at_the_running_max_and_write_back_raises_it(setup):
  """SegmentTree.append at `self.max` (set to p_max at the switch) and `update` raising it to the
  largest priority written: 5 online rows enter at p_max; after a write-back above it, 2 more rows
  enter at the new max and the earlier ones keep theirs."""
  state, _, offline, buffer = setup
  p_max = N_OFF * 0.5 / (0.5 * 1000)
  s, batch = sample(state, buffer, offline, jax.random.PRNGKey(4), B)
  p = off2on.priorities(s)
  np.testing.assert_allclose(p[N_OFF:N_OFF + 5], p_max)
  np.testing.assert_array_equal(p[N_OFF + 5:], 0.0)           # unwritten rows: never drawn
  np.testing.assert_array_equal(p[:N_OFF], 1.0)
  s = s.replace(tree=replay.sum_tree_set(s.tree, jnp.array([3]), jnp.array([7.0])),
                max_priority=jnp.float32(7.0))
  more = replay.insert(buffer, _rows(jax.random.PRNGKey(5), 2))
  s2, _ = sample(s, more, offline, jax.random.PRNGKey(6), B)
  np.testing.assert_allclose(off2on.priorities(s2)[N_OFF + 5:N_OFF + 7], 7.0)
  np.testing.assert_allclose(off2on.priorities(s2)[N_OFF:N_OFF + 5], p_max)
  # A buffer that wrapped around: the overwritten rows enter anew at the max, at most a batch's worth
  # (B = 16 of the 24) per draw, oldest first; the next draw admits the rest.
  wrapped = replay.insert(more, _rows(jax.random.PRNGKey(7), N_ON))
  s3, _ = sample(s2.replace(max_priority=jnp.float32(9.0)), wrapped, offline, jax.random.PRNGKey(8), B)
  order = (7 + np.arange(N_ON)) % N_ON                        # the rows from the oldest pending on
  np.testing.assert_allclose(off2on.priorities(s3)[N_OFF + order[:B]], 9.0)
  np.testing.assert_allclose(off2on.priorities(s3)[N_OFF + order[B:]],
                             off2on.priorities(s2)[N_OFF + order[B:]])
  s4, _ = sample(s3, wrapped, offline, jax.random.PRNGKey(8), B)
  np.testing.assert_allclose(off2on.priorities(s4)[N_OFF:], 9.0)
  assert float(s4.tree[1]) == pytest.approx(float(off2on.priorities(s4).sum()))


def test_rl_batch_rows_come_from_the_union_of_data_and_buffer(setup):
  state, _, offline, buffer = setup
  # All mass on offline row 7 and online row 2: the batch holds only those rows.
  p = jnp.zeros(N_OFF + N_ON).at[7].set(1.0).at[N_OFF + 2].set(1.0)
  s = state.replace(tree=replay.sum_tree(p), admitted_pointer=buffer.pointer,
                    admitted_size=buffer.size)
  _, batch = sample(s, buffer, offline, jax.random.PRNGKey(9), B)
  assert set(np.asarray(batch.indices).tolist()) == {7, N_OFF + 2}
  for i, index in enumerate(np.asarray(batch.indices)):
    source, row = (offline, index) if index < N_OFF else (buffer.data, index - N_OFF)
    np.testing.assert_array_equal(batch.observations[i], source.observations[row])
    np.testing.assert_array_equal(batch.rewards[i], source.rewards[row])
  # w_psi's plain batches: uniform over D and over the filled online rows.
  first = lambda x: np.asarray(x[:, 0])
  assert np.isin(first(batch.online_observations), first(buffer.data.observations[:5])).all()
  assert np.isin(first(batch.offline_observations), first(offline.observations)).all()


def test_update_writes_back_the_batch_priorities_from_the_pre_update_ratio(setup):
  """ours.py: the RL batch's rows get p from w_psi *before* its step (torch.no_grad, before
  `weight_optimizer.step`); the other rows keep theirs; the running max rises to the largest p."""
  state, _, offline, buffer = setup
  s, batch = sample(state, buffer, offline, jax.random.PRNGKey(10), B)
  new, info = update(s, batch, jax.random.PRNGKey(11))
  w = lambda o, a: s.ratio.apply_fn(s.ratio.params, o, a)
  expected = off2on.batch_priorities(w(batch.observations, batch.actions),
                                     w(batch.offline_observations, batch.offline_actions), 5.0)
  np.testing.assert_allclose(off2on.priorities(new)[batch.indices], expected, rtol=1e-6)
  untouched = np.setdiff1d(np.arange(N_OFF + N_ON), np.asarray(batch.indices))
  np.testing.assert_array_equal(off2on.priorities(new)[untouched], off2on.priorities(s)[untouched])
  assert float(new.tree[1]) == pytest.approx(float(off2on.priorities(new).sum()), rel=1e-6)
  assert float(new.max_priority) == pytest.approx(max(float(s.max_priority), float(expected.max())))
  assert not np.allclose(jax.tree_util.tree_leaves(new.ratio.params)[0],
                         jax.tree_util.tree_leaves(s.ratio.params)[0])     # w_psi did step
  assert 0.0 <= float(info["online_share"]) <= 1.0


def test_js_ratio_loss_on_a_hand_computed_case():
  """ours.py weight_loss = mean(-log(2/(w_off+1) + 1e-10) - log(2 w_on/(w_on+1) + 1e-10)) (eq. 4):
  w = (1, 3) on both sides gives (log 2 - log 1.5) / 2; w_on = 0 hits the 1e-10 floor."""
  w = jnp.array([1.0, 3.0])
  assert float(off2on.js_ratio_loss(w, w)) == pytest.approx(0.5 * np.log(4 / 3), rel=1e-5)
  assert float(off2on.js_ratio_loss(jnp.array([0.0]), jnp.array([0.0]))) == pytest.approx(
      -np.log(2.0) - np.log(1e-10), rel=1e-5)
  # Its minimiser is the density ratio: the same (s, a) on both sides (ratio 1) has derivative
  # 1/(w+1) - 1/(w(w+1)), zero at w = 1, negative below, positive above.
  grad = jax.jit(jax.vmap(jax.grad(lambda w: off2on.js_ratio_loss(w[None], w[None]))))(
      jnp.array([0.5, 1.0, 2.0]))
  np.testing.assert_allclose(grad, [1 / 1.5 - 1 / 0.75, 0.0, 1 / 3 - 1 / 6], atol=1e-6)


def test_density_ratio_net_starts_near_one(setup):
  """weight_net.last_fc.bias.data.fill_(1.0), last kernel U(+-3e-3): w(s, a) ~ 1 at the switch."""
  state, _, rows, _ = setup
  w = jax.jit(state.ratio.apply_fn)(state.ratio.params, rows.observations, rows.actions)
  assert np.all(np.abs(np.asarray(w) - 1.0) < 0.05)
  np.testing.assert_array_equal(state.ratio.params["params"]["Dense_2"]["bias"], [1.0])


# ----------------------------------------------------------------------------- the ensemble

def test_moment_matching_on_a_hand_computed_case():
  """ParallelTanhGaussianPolicy.forward: mu_bar = mean mu_i, sigma_bar^2 = mean(mu_i^2 + sigma_i^2) -
  mu_bar^2, clipped to [e^-20, e^2]. Members (mu, sigma) = (0, 1) and (2, 1): mu_bar 1,
  sigma_bar^2 = (1 + 5) / 2 - 1 = 2; tiny and huge spreads hit the clip."""
  locs = jnp.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
  scales = jnp.array([[1.0, 1e-12, 20.0], [1.0, 1e-12, 20.0]])
  loc, scale = off2on.moment_match(locs, scales)
  np.testing.assert_allclose(loc, [1.0, 0.0, 0.0], atol=1e-7)
  np.testing.assert_allclose(scale, [np.sqrt(2.0), np.exp(-20.0), np.exp(2.0)], rtol=1e-6)


def test_ensemble_policy_matches_its_members_and_acts_with_tanh_mu_bar(setup):
  """The members' actors are one module applied over stacked parameters: member m's (mu, sigma) is
  the CQL member m's own actor output; pi_bar is their moment match; evaluation is tanh(mu_bar)."""
  state, members, offline, _ = setup
  obs = offline.observations[:4]
  locs, scales = jax.jit(off2on.member_moments)(state.sac, obs)
  own = jax.jit(jax.vmap(lambda p: (lambda d: (d.loc, d.scale_diag))(
      members.actor.apply_fn(p, obs).distribution)))(members.actor.params)   # each member alone
  np.testing.assert_allclose(locs, own[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(scales, own[1], rtol=1e-5, atol=1e-6)
  loc, _ = off2on.moment_match(locs, scales)
  evaluate = jax.jit(lambda s, o: off2on.act(s, o, jax.random.PRNGKey(0), False))
  np.testing.assert_allclose(evaluate(state, obs), jnp.tanh(loc), rtol=1e-5, atol=1e-6)


def test_critic_target_is_per_member_with_one_shared_next_action(setup):
  """ours.py "QF Loss": y_i = r + gamma (1-d) [min(Q1'_i, Q2'_i)(s', a') - alpha log pi_bar(a'|s')],
  a' ~ pi_bar shared; member i's twin pair is its own CQL critic (heads 2i, 2i+1)."""
  state, members, offline, _ = setup
  batch = jax.tree_util.tree_map(lambda x: x[:B], offline)
  key = jax.random.PRNGKey(12)
  y = jax.jit(off2on.ensemble_td_target)(state.sac, batch, key)
  a_next, logp = jax.jit(lambda s, o: off2on.ensemble_policy(s, o).sample_and_log_prob(seed=key))(
      state.sac, batch.next_observations)
  # Each member's own twin critic, applied alone: (members, 2, B) -> min over its pair.
  q = jax.jit(jax.vmap(lambda p: members.critic.apply_fn(p, batch.next_observations, a_next)))(
      members.critic.params).min(1)
  expected = batch.rewards + 0.99 * (1 - batch.terminals) * (q - 1.0 * logp)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_actor_loss_averages_the_members_twin_minima(setup):
  """ours.py: policy_loss = mean(alpha log_pi - mean_i min(Q1_i, Q2_i)(s, a~))."""
  state, members, offline, _ = setup
  batch = jax.tree_util.tree_map(lambda x: x[:B], offline)
  key = jax.random.PRNGKey(13)
  loss, _ = jax.jit(off2on.ensemble_actor_loss)(state.sac.actor.params, state.sac, batch, key)
  a, logp = jax.jit(lambda s, o: off2on.ensemble_policy(s, o).sample_and_log_prob(seed=key))(
      state.sac, batch.observations)
  q = jax.jit(jax.vmap(lambda p: members.critic.apply_fn(p, batch.observations, a)))(
      members.critic.params).min(1).mean(0)
  np.testing.assert_allclose(loss, jnp.mean(1.0 * logp - q), rtol=1e-5)


# ----------------------------------------------------------------------------- purity

def test_vmapped_update_and_sampler_equal_per_seed_calls(setup):
  """Two seeds (own members, w_psi, priorities, buffers and keys) in one vmapped sample + update equal
  the two separate calls: nothing is pooled over the seed axis."""
  state, members, offline, buffer = setup
  scaled = lambda tree, c: jax.tree_util.tree_map(lambda x: x * c, tree)
  other = from_members(jax.random.PRNGKey(20), scaled(members.actor.params, 1.1),
                              scaled(members.critic.params, 0.9), OBS, ACT, CFG)
  other = other.replace(tree=replay.sum_tree_set(other.tree, jnp.arange(N_OFF),
                                                 jnp.linspace(0.5, 2.0, N_OFF)))
  states = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), state, other)
  buffers = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), buffer,
                                   replay.insert(buffer, _rows(jax.random.PRNGKey(21), 3)))
  keys = jax.random.split(jax.random.PRNGKey(22), 2)

  def step(s, buf, k, sample_fn, update_fn):
    s, batch = sample_fn(s, buf, offline, k, B)
    return update_fn(s, batch, jax.random.fold_in(k, 1))

  both = jax.jit(jax.vmap(lambda s, b, k: step(s, b, k, off2on.sample_batch, off2on.update)))(
      states, buffers, keys)
  for i in range(2):      # one seed alone: the jitted single-seed functions the other tests compiled
    take = lambda t: jax.tree_util.tree_map(lambda x: x[i], t)
    chex.assert_trees_all_close(take(both), step(take(states), take(buffers), keys[i], sample, update),
                                rtol=1e-5, atol=1e-6)


def test_recipe_refuses_a_bad_online_fraction_in_one_line():
  recipe = recipes.get("off2on")
  ctx = recipe_lib.Context.build(recipe, {"budget": "quick"}, {"off2on_online_fraction": 1.0})
  with pytest.raises(O2OError, match=r"^--off2on_online_fraction must lie in \[0, 1\) \(got 1.0\)$"):
    recipe_lib.check(recipe, ctx)
