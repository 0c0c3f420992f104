"""PEX and IQL / AWAC online fine-tuning (issue #21, items 2 and 3): each method's defining mechanism
on hand-computed cases, and seed independence of the updates. The runner contract (2 seeds,
--config. override, crash + exact resume) is in tests/test_method_contract.py.

  PEX (Haichao-Zhang/PEX `pex/algorithms/pex.py`): the Boltzmann choice of `select_action`, its
      epsilon-greedy evaluation, the frozen pi_beta, the AWR of `policy_update` on the selector's
      actions, after IQL's V/Q/target steps.
  IQL / AWAC fine-tuning (CORL `algorithms/finetune/{iql,awac}.py`): the offline objective is the
      step the runner scans; the buffer starts as the whole dataset (uniform over it and the online
      rows: `replay.sample_union`, tests/test_replay.py); IQL's actor learning rate continues
      CosineAnnealingLR past the offline steps.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from o2o_jax import loops
from o2o_jax import phase as phase_lib
from o2o_jax import recipe as recipe_lib
from o2o_jax import recipes
from o2o_jax.agents.common import with_learning_rate
from o2o_jax.agents.o2o import iql_ft, pex
from o2o_jax.agents.offline import awac, iql
from o2o_jax.data import load_dataset
from o2o_jax.errors import O2OError
from o2o_jax.recipes import online_from_offline
from o2o_jax.types import seed_keys
from random_batches import random_transitions

OBS, ACT, B = 5, 3, 16
PEX_TINY = pex.Config(hidden_dims=(8, 8))
PEX_UPDATE = jax.jit(pex.update)


def _batch(key, n=B):
  return random_transitions(key, n, OBS, ACT)


@pytest.fixture(scope="module")
def offline_iql():
  return jax.jit(iql.init, static_argnums=(1, 2, 3))(jax.random.PRNGKey(0), OBS, ACT, PEX_TINY)


@pytest.fixture(scope="module")
def pex_state(offline_iql):
  start = jax.jit(pex.start_online, static_argnums=(2, 3, 4))
  return start(offline_iql, jax.random.PRNGKey(1), OBS, ACT, PEX_TINY)


def _closed_form_critic(state):
  """The state with a critic ensemble of known form, Q_k(s, a) = c_k (a_0 + a_1 - 0.5 a_2) + s_0 / 4,
  c = (0.15, 0.25): min_k Q by hand, Q gaps of order 0.1 (logits of order 1)."""
  def apply_fn(params, observations, actions):
    del params
    u = actions[..., 0] + actions[..., 1] - 0.5 * actions[..., 2]
    return jnp.stack([0.15 * u, 0.25 * u]) + observations[..., 0] / 4
  return state.replace(critic=state.critic.replace(apply_fn=apply_fn))


def _min_q_by_hand(observations, actions):
  u = actions[..., 0] + actions[..., 1] - 0.5 * actions[..., 2]
  return np.minimum(0.15 * u, 0.25 * u) + observations[..., 0] / 4


def test_pex_chooses_between_the_policies_by_the_boltzmann_rule(pex_state):
  """PEX.select_action: w ~ Categorical(softmax(alpha_inv [min_k Q(s,a1), min_k Q(s,a2)])), a1 =
  pi_beta's mode, a2 ~ pi_theta, the current critics. Exact probabilities against the closed-form
  critic, then the draws (8 states x 1500 keys, a2 drawn anew each time): among the draws with
  p_i = P(w = 1) < 0.5, and among those with p_i >= 0.5, the count of w = 1 lies within 4 standard
  deviations of sum_i p_i (a sum of independent Bernoulli(p_i)). An argmax choice would miss both
  by more than 8 standard deviations (checked too, so the test can tell the two apart)."""
  state = _closed_form_critic(pex_state)
  obs = np.asarray(_batch(jax.random.PRNGKey(2), 8).observations)
  select = jax.jit(pex.select, static_argnums=3)
  sel = select(state, obs, jax.random.PRNGKey(3), False)
  a1, a2 = np.asarray(sel.offline_actions), np.asarray(sel.online_actions)
  mode = jax.jit(lambda s, o: s.offline_actor_apply(s.offline_actor_params, o).mode())(state, obs)
  np.testing.assert_allclose(a1, mode)                              # a1: pi_beta's mode
  logits = 10.0 * np.stack([_min_q_by_hand(obs, a1), _min_q_by_hand(obs, a2)], -1)
  p_online = np.exp(logits[:, 1] - np.logaddexp(logits[:, 0], logits[:, 1]))
  np.testing.assert_allclose(np.asarray(sel.probs)[:, 1], p_online, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(sel.actions),
                                np.where(np.asarray(sel.choice)[:, None] == 1, a2, a1))
  draws = jax.jit(jax.vmap(lambda k: pex.select(state, obs, k)))(
      jax.random.split(jax.random.PRNGKey(4), 1_500))
  p, w = np.asarray(draws.probs)[..., 1].ravel(), np.asarray(draws.choice).ravel()
  for part in (p < 0.5, p >= 0.5):
    expected, sd = p[part].sum(), np.sqrt((p[part] * (1 - p[part])).sum())
    assert abs(w[part].sum() - expected) < 4 * sd, (w[part].sum(), expected, sd)
    assert abs((p[part] >= 0.5).sum() - expected) > 8 * sd            # argmax: far outside


def test_pex_evaluation_is_epsilon_greedy(pex_state):
  """At evaluation a2 is pi_theta's mode and w the argmax of the logits, each with probability
  1 - eps = 0.9 (`epsilon_greedy_sample(dist, eps=0.1)`); otherwise a sample / a Boltzmann draw."""
  state = _closed_form_critic(pex_state)
  obs = np.asarray(_batch(jax.random.PRNGKey(5), 1).observations)[0]
  n = 4_000
  draws = jax.jit(jax.vmap(lambda k: pex.select(state, obs, k, True)))(
      jax.random.split(jax.random.PRNGKey(6), n))
  mode = np.asarray(state.actor.apply_fn(state.actor.params, obs).mode())
  at_mode = np.all(np.abs(np.asarray(draws.online_actions) - mode) < 1e-5, axis=-1)
  assert abs(at_mode.mean() - 0.9) < 4 * np.sqrt(0.09 / n)          # a sample is never the mode
  probs = np.asarray(draws.probs)
  greedy = np.asarray(draws.choice) == probs.argmax(-1)
  expected = (0.9 + 0.1 * probs.max(-1)).mean()                     # greedy, or drawn and greedy
  assert abs(greedy.mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / n)


def test_pex_switch_freezes_pi_beta_and_keeps_training_the_rest(offline_iql, pex_state):
  """PEX.__init__: pi_beta = the offline IQL actor, pi_theta new; Q, Q' and V from the checkpoint
  with new optimizers. Over updates pi_beta never changes; pi_theta, Q and V do."""
  chex.assert_trees_all_equal(pex_state.offline_actor_params, offline_iql.actor.params)
  chex.assert_trees_all_equal(pex_state.critic.params, offline_iql.critic.params)
  chex.assert_trees_all_equal(pex_state.value.params, offline_iql.value.params)
  chex.assert_trees_all_equal(pex_state.target_critic_params, offline_iql.target_critic_params)
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree_util.tree_leaves(pex_state.critic.opt_state))
  assert jax.tree_util.tree_structure(pex_state.actor.params) == jax.tree_util.tree_structure(
      offline_iql.actor.params)
  assert not np.allclose(pex_state.actor.params["params"]["Dense_0"]["kernel"],
                         offline_iql.actor.params["params"]["Dense_0"]["kernel"])
  state = pex_state
  for i in range(3):
    state, info = PEX_UPDATE(state, _batch(jax.random.PRNGKey(10 + i)), jax.random.PRNGKey(20 + i))
  chex.assert_trees_all_equal(state.offline_actor_params, pex_state.offline_actor_params)
  for name in ("actor", "critic", "value"):
    before, after = getattr(pex_state, name).params, getattr(state, name).params
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before),
                                                        jax.tree_util.tree_leaves(after))), name
  assert 0.0 <= float(info["online_policy_prob"]) <= 1.0


@jax.jit
def _pex_update_by_hand(state, batch, key):
  """PEX.policy_update after IQL.update's V, Q and target steps, written out: a~ = select(s)
  (exploring), A = min_k Q'(s, a~) - V(s) with the updated target critic and V, L = -mean(min(exp(beta
  A), 100) log pi_theta(a~|s)), one Adam step; also L on the buffer's actions and pex.actor_loss."""
  s, _ = iql.update(state, batch, key, train_actor=False)
  chosen = pex.select(s, batch.observations, key).actions

  def loss(params, actions):
    q = s.critic.apply_fn(s.target_critic_params, batch.observations, actions).min(0)
    advantage = q - s.value.apply_fn(s.value.params, batch.observations)
    weights = jax.lax.stop_gradient(jnp.minimum(jnp.exp(s.config.beta * advantage), 100.0))
    return -jnp.mean(weights * s.actor.apply_fn(params, batch.observations).log_prob(actions))

  stepped = s.actor.apply_gradients(grads=jax.grad(loss)(s.actor.params, chosen))
  return (s.replace(actor=stepped), chosen, loss(s.actor.params, chosen),
          loss(s.actor.params, batch.actions), pex.actor_loss(s.actor.params, s, batch, key)[0])


def test_pex_actor_learns_from_the_selectors_actions_after_the_critic_step(pex_state):
  """pi_theta's step uses the composite policy's actions, not the buffer's, and comes after IQL's
  V/Q/target steps (PEX.update = IQL.update, whose last call is PEX.policy_update)."""
  batch, key = _batch(jax.random.PRNGKey(30)), jax.random.PRNGKey(31)
  new, _ = PEX_UPDATE(pex_state, batch, key)
  expected, chosen, loss, loss_buffer, pex_loss = _pex_update_by_hand(pex_state, batch, key)
  assert not np.allclose(chosen, batch.actions)
  np.testing.assert_allclose(pex_loss, loss, rtol=1e-5)
  assert not np.isclose(loss, loss_buffer, rtol=1e-3)
  chex.assert_trees_all_close(new, expected, rtol=1e-5, atol=1e-6)


def test_pex_vmapped_update_equals_per_seed_updates(pex_state):
  """Two seeds in one vmapped update equal two separate updates (nothing pooled across seeds)."""
  other = jax.jit(lambda t: jax.tree_util.tree_map(
      lambda x: x + 0.01 if x.dtype == jnp.float32 else x, t))(pex_state)
  states = jax.jit(lambda a, b: jax.tree_util.tree_map(lambda x, y: jnp.stack([x, y]), a, b))(
      pex_state, other)
  batches = jax.jit(jax.vmap(_batch))(jax.random.split(jax.random.PRNGKey(40), 2))
  keys = jax.random.split(jax.random.PRNGKey(41), 2)
  vmapped = jax.jit(jax.vmap(pex.update))(states, batches, keys)
  take = jax.jit(lambda t, i: jax.tree_util.tree_map(lambda x: x[i], t))
  for i, s in enumerate((pex_state, other)):
    single = PEX_UPDATE(s, take(batches, i), keys[i])
    chex.assert_trees_all_close(take(vmapped, i), single, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- IQL / AWAC fine-tuning

def test_iql_ft_actor_learning_rate_continues_corls_cosine(offline_iql):
  """CORL finetune/iql.py keeps stepping CosineAnnealingLR(T_max = offline steps) online: lr(n) =
  lr0 (1 + cos(pi n / T)) / 2 falls to 0 at the switch (n = T) and rises again (PyTorch's chainable
  form past T_max), where the offline run's optax schedule stays at 0. The switch keeps the actor's
  parameters and Adam state; its optimizer steps at that rate."""
  T, lr0 = 10, 3e-4
  schedule = iql_ft.corl_actor_schedule(lr0, T)
  np.testing.assert_allclose([schedule(n) for n in (0, 5, 10, 15, 20)], [lr0, lr0 / 2, 0, lr0 / 2, lr0],
                             atol=1e-12)
  np.testing.assert_allclose([schedule(n) for n in range(T + 1)],
                             [optax.cosine_decay_schedule(lr0, T)(n) for n in range(T + 1)], rtol=1e-6)
  config = iql_ft.Config(hidden_dims=(8, 8), max_steps=T, actor_lr=lr0)
  # An IQL run of T steps (iql.init's actor optimizer: Adam over optax's cosine decay to T).
  offline = offline_iql.replace(config=config, actor=with_learning_rate(
      offline_iql.actor, optax.cosine_decay_schedule(lr0, T)))
  started = iql_ft.start_online(offline, config)
  chex.assert_trees_all_equal(started.actor.params, offline.actor.params)
  chex.assert_trees_all_equal(started.actor.opt_state, offline.actor.opt_state)

  def first_step_at(state, n):
    """Adam's first step (fresh moments) on a unit gradient at schedule count n: -lr(n)."""
    def step(params, n):
      adam, sched = state.actor.tx.init(params)
      grads = jax.tree_util.tree_map(jnp.ones_like, params)
      return state.actor.tx.update(grads, (adam, sched._replace(count=n)), params)[0]
    return np.asarray(jax.jit(step)(state.actor.params, jnp.int32(n))["params"]["Dense_0"]["bias"])

  for n in (T + 5, 2 * T):
    np.testing.assert_allclose(first_step_at(started, n), -schedule(n), rtol=1e-4)
    np.testing.assert_allclose(first_step_at(offline, n), 0.0, atol=1e-12)     # optax: 0 after T


def test_iql_ft_and_awac_ft_continue_the_offline_objective():
  """The runner scans the offline algorithms' own updates online (CORL calls the same `train` /
  `update` in both stages)."""
  assert recipes.get("iql_ft").phase("finetune").step is iql.update
  assert recipes.get("awac_ft").phase("finetune").step is awac.update
  assert recipes.get("pex").phase("finetune").step is pex.update


@pytest.mark.parametrize("agent", ["iql_ft", "awac_ft"])
def test_buffer_starts_as_the_dataset_and_takes_every_online_step(agent, tiny_hopper_dataset,
                                                                  tmp_path, monkeypatch):
  """The finetune phase's loop: the offline rows (the whole dataset, the run's reward transform)
  sampled uniformly together with the online buffer (`offline_union`: CORL's load_d4rl_dataset, then
  add_transition), no offline-only share, updates from the first env step, UTD 1. The phase is built
  from an in-memory 'pretrain run' and stopped before its loop."""
  module, algo = {"iql_ft": (iql, "iql"), "awac_ft": (awac, "awac")}[agent]
  offline_config = module.Config(hidden_dims=(8, 8))
  states = loops.init_states(module, seed_keys(0, 2), 11, 3, offline_config)
  ds = load_dataset(tiny_hopper_dataset.dataset_id)
  meta = {"dataset_id": tiny_hopper_dataset.dataset_id, "obs_dim": 11, "act_dim": 3,
          "obs_mean": ds.obs_mean, "obs_std": ds.obs_std,
          "reward_transform": {"scale": 2.0, "shift": 0.0}, "eval_score": [1.0, 2.0]}
  config = {"phase": "pretrain", "algo": algo, "dataset": tiny_hopper_dataset.dataset_id,
            "env": "Hopper-v5", "seeds": 2, "seed": 0}
  loaded = recipe_lib.LoadedRun(tmp_path / "pretrain", config, meta, states, module, offline_config)
  monkeypatch.setattr(online_from_offline, "restore", lambda *a: loaded)
  captured = {}
  monkeypatch.setattr(phase_lib, "run_online_phase",
                      lambda spec, build, log: captured.update(spec=spec, training=build(tmp_path)))
  recipe = recipes.get(agent)
  ctx = recipe_lib.Context.build(recipe, {"dataset": tiny_hopper_dataset.dataset_id, "budget": "quick",
                                          "batch_size": 16, "out_dir": str(tmp_path)},
                                 log=lambda *_: None)
  ctx.runs["pretrain"], ctx.phase = tmp_path / "pretrain", recipe.phase("finetune")
  recipe.phase("finetune").run(ctx)
  loop, t = captured["spec"].loop, captured["training"]
  assert loop.offline_union and loop.offline_fraction == 0.0
  assert loop.start_steps == 0 and loop.utd == 1
  assert int(t.data.device.rewards.shape[0]) == ds.size                  # every offline row
  np.testing.assert_allclose(t.data.device.rewards, ds.transitions.rewards * 2.0, rtol=1e-6)
  assert t.data.reward_scale == 2.0                                     # online rewards scaled alike
  chex.assert_trees_all_equal(jax.tree_util.tree_map(np.asarray, t.states.critic.params),
                              jax.tree_util.tree_map(np.asarray, states.critic.params))


@pytest.mark.parametrize("agent", ["iql_ft", "awac_ft", "pex"])
def test_network_overrides_are_refused_before_any_phase_runs(agent, tmp_path):
  """The networks come from the pretrain run: --config.hidden_dims is one line before any work."""
  recipe = recipes.get(agent)
  ctx = recipe_lib.Context.build(recipe, {"out_dir": str(tmp_path)}, overrides={"hidden_dims": "16,16"},
                                 log=lambda *_: None)
  with pytest.raises(O2OError, match=r"^--config.hidden_dims: .* \(--hidden_dims, --preset\) instead$"):
    recipe_lib.check(recipe, ctx)
  assert not any(tmp_path.iterdir())
