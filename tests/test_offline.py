"""Offline agents (TD3+BC, BC) on hand-computed cases, and the pretrain launcher end to end."""
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax import loops
from o2o_jax.agents.offline import bc, td3_bc
from o2o_jax.types import Transition

OBS, ACT = 4, 2


def test_td3bc_q_normaliser_hand_case():
  q = jnp.array([1.0, -3.0, 2.0])          # mean |Q| = 2
  assert float(td3_bc.q_normalizer(q, 2.5)) == pytest.approx(1.25)
  # lambda is detached: d(lambda * mean Q)/dQ = lambda / n, no term from lambda itself
  g = jax.grad(lambda q: td3_bc.q_normalizer(q, 2.5) * q.mean())(q)
  np.testing.assert_allclose(g, [1.25 / 3] * 3, rtol=1e-6)


def test_td3bc_actor_objective_hand_case():
  """The BC term is the mean over batch *and* action dims: CORL `algorithms/offline/td3_bc.py`,
  `TD3_BC.train`: `actor_loss = -lmbda * q.mean() + F.mse_loss(pi, action)` (the authors' code too)."""
  cfg = td3_bc.Config(hidden_dims=(8,))
  state = td3_bc.init(jax.random.PRNGKey(0), OBS, ACT, cfg)
  # Actor outputs constant 0.5, critic Q = [sum(a), 2 * sum(a)] per member.
  state = state.replace(
      actor=state.actor.replace(apply_fn=lambda p, o: jnp.full((o.shape[0], ACT), 0.5)),
      critic=state.critic.replace(apply_fn=lambda p, o, a: jnp.stack([a.sum(-1), 2 * a.sum(-1)])))
  batch = Transition(jnp.zeros((3, OBS)), jnp.array([[0.5, 0.5], [1.0, 0.5], [-0.5, 0.5]]),
                     jnp.zeros(3), jnp.zeros((3, OBS)), jnp.zeros(3))
  loss, info = td3_bc.actor_objective(state.actor.params, state, batch)
  # Q_1 = 1 for every row -> lambda = 2.5 / 1; BC = mean over 3 rows x 2 dims of (0.5 - a)^2
  # = (0 + 0 + 0.25 + 0 + 1 + 0) / 6  (summing over dims first would give 1.25 / 3)
  assert float(info["lambda"]) == pytest.approx(2.5)
  assert float(info["bc_loss"]) == pytest.approx(1.25 / 6)
  assert float(loss) == pytest.approx(-2.5 + 1.25 / 6)


def test_td3bc_actor_step_evaluates_q1_only():
  """The actor ascends Q_1 alone (CORL `td3_bc.py` `TD3_BC.train`: `q = self.critic_1(state, pi)`), so
  its step never evaluates Q_2: the same objective through the whole ensemble costs ~1.4x the FLOPs."""
  state = td3_bc.init(jax.random.PRNGKey(0), OBS, ACT, td3_bc.Config(hidden_dims=(8, 8)))
  batch = Transition(jnp.ones((3, OBS)), jnp.full((3, ACT), 0.1), jnp.zeros(3), jnp.ones((3, OBS)),
                     jnp.zeros(3))

  def through_both(actor_params):
    actions = state.actor.apply_fn(actor_params, batch.observations)
    q = state.critic.apply_fn(state.critic.params, batch.observations, actions)[0]
    return -td3_bc.q_normalizer(q, 2.5) * q.mean() + jnp.mean(jnp.square(actions - batch.actions))

  ours = jax.grad(lambda p: td3_bc.actor_objective(p, state, batch)[0])
  chex.assert_trees_all_close(ours(state.actor.params), jax.grad(through_both)(state.actor.params),
                              rtol=1e-6, atol=1e-7)

  def flops(fn):
    cost = jax.jit(fn).lower(state.actor.params).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]

  assert flops(ours) < 0.8 * flops(jax.grad(through_both))              # measured 0.70


@pytest.mark.parametrize("actor_type", bc.ACTOR_TYPES)
def test_bc_clones_a_teacher(actor_type):
  """BC on actions of a known teacher a = tanh(W s) recovers it (mode close to the teacher)."""
  key = jax.random.PRNGKey(0)
  obs = jax.random.normal(key, (512, OBS))
  w = jnp.array([[0.8, -0.5], [0.3, 0.9], [-0.6, 0.2], [0.1, 0.4]])
  data = Transition(obs, jnp.zeros((512, ACT)), jnp.zeros(512), obs, jnp.zeros(512))
  data = bc.relabel_actions(data, lambda o, k: jnp.tanh(o @ w), key, chunk=200)
  cfg = bc.Config(actor_type=actor_type, hidden_dims=(32, 32), actor_lr=3e-3, entropy_weight=0.0)
  state = bc.init(key, OBS, ACT, cfg)
  chunk = jax.jit(loops.make_offline_chunk(bc.update, 128, 400))
  state, metrics = chunk(state, jax.random.PRNGKey(1), data)
  pred = bc.act(state, obs, key, explore=False)
  err = float(jnp.mean(jnp.abs(pred - data.actions)))
  assert err < 0.15, err
  assert int(state.step) == 400


def test_bc_entropy_term_widens_the_policy():
  """eq. 52: a positive entropy weight keeps the cloned Gaussian wider than pure likelihood."""
  key = jax.random.PRNGKey(0)
  obs = jax.random.normal(key, (256, OBS))
  data = Transition(obs, jnp.tanh(obs[:, :ACT]), jnp.zeros(256), obs, jnp.zeros(256))
  stds = []
  for lam in (0.0, 1.0):
    cfg = bc.Config(actor_type="gaussian", hidden_dims=(16,), actor_lr=1e-2, entropy_weight=lam)
    state = bc.init(key, OBS, ACT, cfg)
    state, _ = jax.jit(loops.make_offline_chunk(bc.update, 128, 300))(state, key, data)
    stds.append(float(jnp.exp(state.actor.params["params"]["log_std"]).mean()))
  assert stds[1] > 2 * stds[0], stds


def test_pretrain_launcher_writes_a_restorable_checkpoint(tiny_hopper_dataset, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.pretrain", "--algo=td3bc",
         f"--dataset={tiny_hopper_dataset.dataset_id}", "--seeds=2", "--budget=quick",
         "--num_steps=40", "--eval_every=20", "--eval_episodes=1", "--hidden_dims=8,8",
         "--batch_size=16", f"--out_dir={tmp_path}", "--progress=false"]
  res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  run = tmp_path / "pretrain" / "td3bc" / tiny_hopper_dataset.dataset_id.replace("/", "_") / "seed0x2"
  from o2o_jax.checkpoints import Checkpointer
  ckpt = Checkpointer(run / "checkpoints")
  assert ckpt.all_steps() == [20, 40]
  template = loops.init_states(td3_bc, jax.random.split(jax.random.PRNGKey(0), 2), 11, 3,
                               td3_bc.Config(hidden_dims=(8, 8)))
  state, meta, step = ckpt.restore(template)
  assert step == 40 and int(state.step[0]) == 40
  assert meta["dataset_id"] == tiny_hopper_dataset.dataset_id and len(meta["obs_mean"]) == 11
  # Round trip of the restored state is bit-exact.
  ckpt.save(41, state, meta)
  again, _, _ = ckpt.restore(template, step=41)
  chex.assert_trees_all_equal(again, state)
  assert (run / "curves.png").exists()


def test_pretrain_rejects_batch_larger_than_dataset(tiny_hopper_dataset, tmp_path):
  res = subprocess.run([sys.executable, "-m", "experiments.pretrain", "--algo=td3bc",
                        f"--dataset={tiny_hopper_dataset.dataset_id}", "--batch_size=100000",
                        f"--out_dir={tmp_path}"], capture_output=True, text=True, timeout=300)
  assert res.returncode == 2 and "larger than the dataset" in res.stderr
  res = subprocess.run([sys.executable, "-m", "experiments.pretrain", "--algo=dqn",
                        f"--out_dir={tmp_path}"], capture_output=True, text=True, timeout=300)
  # an unknown algorithm fails at flag parsing (absl's enum check), naming the valid choices
  assert res.returncode != 0 and "value should be one of <td3bc|cql|iql|awac|bc>" in res.stderr
  assert "Traceback" not in res.stderr


# --- CQL, IQL, AWAC ------------------------------------------------------------------------------

from o2o_jax import losses
from o2o_jax.agents.offline import awac, cql, iql


def test_cql_logsumexp_with_importance_weights_hand_case():
  q = jnp.array([[1.0, 2.0]])
  log_q = jnp.array([[0.0, np.log(2.0)]])
  expected = np.log(np.e ** 1 + np.e ** 2 / 2)
  assert float(losses.cql_logsumexp(q, log_q, 1.0)[0]) == pytest.approx(expected, rel=1e-6)
  # temperature T: T * log sum exp((q - log q)/T)
  expected_t = 2.0 * np.log(np.exp(1 / 2) + np.exp((2 - np.log(2)) / 2))
  assert float(losses.cql_logsumexp(q, log_q, 2.0)[0]) == pytest.approx(expected_t, rel=1e-6)


def test_awr_and_awac_weights_are_clipped_at_100():
  np.testing.assert_allclose(iql.awr_weights(jnp.array([0.0, 1.0, 10.0]), 3.0),
                             [1.0, np.exp(3.0), 100.0], rtol=1e-6)
  np.testing.assert_allclose(awac.awac_weights(jnp.array([0.0, 0.5, 5.0]), 1.0 / 3.0),
                             [1.0, np.exp(1.5), 100.0], rtol=1e-6)
  g = jax.grad(lambda a: iql.awr_weights(a, 3.0).sum())(jnp.array([0.5]))
  assert float(g[0]) == 0.0    # detached


def test_iql_value_is_the_expectile_of_q():
  """With Q'(s, a) fixed, V(s) -> the tau-expectile of Q over the dataset's actions."""
  cfg = iql.Config(hidden_dims=(16,), value_lr=1e-2, expectile=0.9)
  state = iql.init(jax.random.PRNGKey(0), OBS, ACT, cfg)
  qs = jnp.array([0.0, 1.0, 2.0, 10.0])
  obs = jnp.zeros((4, OBS))
  batch = Transition(obs, jnp.zeros((4, ACT)), jnp.zeros(4), obs, jnp.zeros(4))
  step = jax.jit(lambda s: s.value.apply_gradients(grads=jax.grad(
      lambda p: iql.value_loss(p, s, batch, qs)[0])(s.value.params)))
  for _ in range(4000):
    state = state.replace(value=step(state))
  v = float(state.value.apply_fn(state.value.params, obs[:1])[0])
  # e solves 0.9 * sum_{q>e}(q-e) = 0.1 * sum_{q<e}(e-q): 0.9 (10 - e) = 0.1 (3e - 3) -> e = 7.75
  assert v == pytest.approx(7.75, abs=0.1)


def test_cql_penalty_pushes_down_unseen_actions():
  """On data whose actions are all 0, CQL's Q at a = 0 ends above Q at random actions; without the
  penalty (alpha_cql = 0) there is no such gap."""
  key = jax.random.PRNGKey(0)
  obs = jax.random.normal(key, (256, OBS))
  data = Transition(obs, jnp.zeros((256, ACT)), jnp.ones(256), obs, jnp.ones(256))
  gaps = []
  for alpha in (0.0, 5.0):
    cfg = cql.Config(hidden_dims=(32, 32), cql_alpha=alpha, critic_lr=1e-3, cql_n_actions=4)
    state = cql.init(key, OBS, ACT, cfg)
    state, m = jax.jit(loops.make_offline_chunk(cql.update, 64, 300))(state, key, data)
    q = lambda a: state.sac.critic.apply_fn(state.sac.critic.params, obs, a).min(0).mean()
    rand = jax.random.uniform(jax.random.PRNGKey(3), (256, ACT), minval=-1, maxval=1)
    gaps.append(float(q(jnp.zeros((256, ACT))) - q(rand)))
  assert gaps[1] > gaps[0] + 0.5, gaps


@pytest.mark.parametrize("module, cfg", [
    (cql, cql.Config(hidden_dims=(8, 8), lagrange=True)),
    (iql, iql.Config(hidden_dims=(8, 8))),
    (iql, iql.Config(hidden_dims=(8, 8), deterministic=True)),
    (awac, awac.Config(hidden_dims=(8, 8))),
])
def test_offline_agents_update_and_act(module, cfg):
  state = module.init(jax.random.PRNGKey(0), OBS, ACT, cfg)
  obs = jax.random.normal(jax.random.PRNGKey(1), (16, OBS))
  batch = Transition(obs, jnp.tanh(obs[:, :ACT]), jnp.ones(16), obs, jnp.zeros(16))
  new, info = jax.jit(module.update)(state, batch, jax.random.PRNGKey(2))
  assert int(new.step) == 1 and all(np.isfinite(np.asarray(v)).all() for v in info.values())
  a = module.act(new, obs, jax.random.PRNGKey(3), explore=True)
  assert a.shape == (16, ACT) and float(jnp.abs(a).max()) <= 1.0


def test_presets_follow_corl():
  from o2o_jax import presets
  assert presets.dataset_env_and_level("o2o/hopper/medium-replay-v0") == ("hopper", "medium-replay")
  assert presets.dataset_env_and_level("mujoco/halfcheetah/expert-v0") == ("halfcheetah", "expert")
  p = presets.offline_preset("iql", "o2o/hopper/medium-v0")
  assert p == {"config": {"deterministic": True, "tau": 0.001}, "normalize_reward": True}
  assert presets.offline_preset("iql", "o2o/hopper/medium-expert-v0")["config"] == {"expectile": 0.5, "beta": 6.0}
  assert presets.offline_preset("iql", "o2o/walker2d/medium-v0") == {"config": {}, "normalize_reward": False}
  assert presets.offline_preset("cql", "o2o/hopper/medium-v0")["normalize_reward"]
  assert presets.offline_preset("iql", "o2o/hopper/medium-v0", "none")["config"] == {}
  assert presets.reward_scale(np.array([100.0, 600.0])) == pytest.approx(2.0)


def _fake_state(params, apply_fn, lr):
  from o2o_jax.agents.common import make_train_state
  return make_train_state(None, params, lr).replace(apply_fn=apply_fn)


def test_iql_q_target_uses_the_value_before_its_step():
  """CORL `algorithms/offline/iql.py`, `ImplicitQLearning.train`: `next_v = self.vf(next_observations)`
  is read under no_grad *before* `_update_v`, so the Q target is r + gamma (1-d) V_old(s').
  Hand case: V(s) = w with w = 2 (the value step moves it by ~lr = 0.5), r = 1, gamma = 0.99, d = 0:
  target = 1 + 0.99 * 2 = 2.98 (V_new would give 2.98 +- 0.495)."""
  cfg = iql.Config(hidden_dims=(8,), discount=0.99)
  state = iql.init(jax.random.PRNGKey(0), OBS, ACT, cfg)
  ones = lambda o: jnp.ones(o.shape[0])
  state = state.replace(
      value=_fake_state({"w": jnp.float32(2.0)}, lambda p, o: p["w"] * ones(o), 0.5),
      critic=_fake_state({"q": jnp.array([1.0, 3.0])},
                         lambda p, o, a: p["q"][:, None] * ones(o)[None], 1e-3),
      target_critic_params={"q": jnp.array([1.0, 3.0])})
  obs = jnp.zeros((4, OBS))
  batch = Transition(obs, jnp.zeros((4, ACT)), jnp.ones(4), obs, jnp.zeros(4))
  new, info = iql.update(state, batch, jax.random.PRNGKey(1))
  assert abs(float(new.value.params["w"]) - 2.0) > 0.4          # the value step did move V
  assert float(info["target_mean"]) == pytest.approx(1.0 + 0.99 * 2.0, rel=1e-6)


def test_cql_actor_ascends_the_critic_before_its_step():
  """CORL `algorithms/offline/cql.py`, `ContinuousCQL.train`: the policy loss (and alpha loss) are built
  before `_q_loss`, and the actor steps before the critics do, so the actor ascends the *pre-update*
  critic. Hand case: Q(s, a) = c * sum(a) with c = +1; data actions 1, target y = -10, so the critic
  step (Adam, lr 2) moves c to about -1. An actor that ascends the old critic raises its mean
  head's bias (dQ/dmu > 0); one that used the updated critic would lower it."""
  cfg = cql.Config(hidden_dims=(8,), cql_alpha=0.0, critic_lr=2.0, actor_lr=1e-2, init_alpha=0.01)
  state = cql.init(jax.random.PRNGKey(0), OBS, ACT, cfg)
  def crit(p, o, a):     # (members, *batch), for the (B,) data and the (B, M) sampled actions alike
    q = a.sum(-1) * jnp.ones(o.shape[:-1])
    return p["c"].reshape((-1,) + (1,) * q.ndim) * q[None]
  c0 = {"c": jnp.array([1.0, 1.0])}
  state = state.replace(sac=state.sac.replace(critic=_fake_state(c0, crit, 2.0),
                                              target_critic_params=c0))
  obs = jax.random.normal(jax.random.PRNGKey(1), (64, OBS))
  batch = Transition(obs, jnp.ones((64, ACT)), jnp.full(64, -10.0), obs, jnp.ones(64))
  new, _ = cql.update(state, batch, jax.random.PRNGKey(2))
  np.testing.assert_allclose(new.sac.critic.params["c"], [-1.0, -1.0], atol=1e-3)  # the critic flipped
  mean_bias = lambda s: s.sac.actor.params["params"]["Dense_0"]["bias"]     # the mean head
  moved = mean_bias(new) - mean_bias(state)
  assert (moved > 0).all(), moved


def test_temperature_loss_is_minus_log_alpha_times_the_entropy_gap():
  """CORL `cql.py` and OCR-CFT `finetune/online_agent/sac.py`, `_alpha_and_alpha_loss`:
  `alpha_loss = -(self.log_alpha() * (log_pi + self.target_entropy).detach()).mean()`.
  Hand case: alpha = 2, log pi = [-1, -3], target entropy -2 -> loss = -log 2 * mean([-3, -5]) =
  4 log 2, and d loss / d log alpha = 4 (the -alpha form would give 8)."""
  log_alpha = jnp.log(2.0)
  lp = jnp.array([-1.0, -3.0])
  assert float(losses.temperature_loss(log_alpha, lp, -2.0)) == pytest.approx(4 * np.log(2.0), rel=1e-6)
  assert float(jax.grad(losses.temperature_loss)(log_alpha, lp, -2.0)) == pytest.approx(4.0, rel=1e-6)


def test_cql_networks_use_corls_initialisation():
  """CORL `algorithms/offline/cql.py`, `init_module_weights`: the critics (`FullyConnectedQFunction`,
  built with `orthogonal_init=True`) get orthogonal(sqrt 2) hidden kernels and an orthogonal(1e-2)
  head; `TanhGaussianPolicy` calls it without the flag, so its hidden layers keep nn.Linear's default
  U(+-1/sqrt(fan_in)) and its head is xavier_uniform(gain 1e-2); every bias the scheme sets is 0."""
  state = cql.init(jax.random.PRNGKey(0), 11, 3, cql.Config())
  critic = jax.tree_util.tree_map(lambda x: x[0], state.sac.critic.params["params"])["VmapCritic_0"]
  layers = [critic["MLP_0"][f"Dense_{i}"]["kernel"] for i in range(3)]
  for k in layers:                     # orthogonal(sqrt 2): 2 I on the smaller side's Gram matrix
    gram = np.asarray(k.T @ k if k.shape[0] >= k.shape[1] else k @ k.T)
    np.testing.assert_allclose(gram, 2.0 * np.eye(gram.shape[0]), atol=1e-4)
  head = np.asarray(critic["Dense_0"]["kernel"])
  assert head.shape == (256, 1) and np.linalg.norm(head) == pytest.approx(1e-2, rel=1e-4)
  actor = state.sac.actor.params["params"]
  first = np.asarray(actor["MLP_0"]["Dense_0"]["kernel"])          # fan_in 11
  assert np.abs(first).max() <= 1 / np.sqrt(11) and np.abs(first).max() > 0.9 / np.sqrt(11)
  mean_head = np.asarray(actor["Dense_0"]["kernel"])               # xavier(1e-2), fan 256 -> 3
  bound = 1e-2 * np.sqrt(6 / (256 + 3))
  assert np.abs(mean_head).max() <= bound and np.abs(mean_head).max() > 0.9 * bound
