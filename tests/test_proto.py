"""PROTO (o2o_jax/agents/o2o/proto.py, recipes/proto.py): the decaying trust-region weight eta, the
Polyak-averaged previous policy pi_k, and the trust-region terms of SAC-PROTO (KL) and TD3-PROTO (MSE)
on hand-computed cases; the switch from the CQL / TD3+BC state; seed independence of the updates.
Reference: Facebear-ljx/PROTO @eadb8b7 (`train_finetune{,_td3}.py`, `learner{,_td3}.py`,
`actor{,_td3}.py`, `critic{,_td3}.py`). The runner contract is tests/test_method_contract.py's.

Fakes (tests/test_loss_terms.py's pattern): the actor is a point policy whose every sample is
tanh(b + s[:A]) with the log-density -1.5 + 0.5 s_0 (log_prob(a): a unit Gaussian around b + s[:A]),
or the deterministic tanh(b + s[:A]); the critics are linear, Q_k = w_k.a + u_k.s + c_k, with online and
target parameters that differ and members that disagree. Expected values in float64 numpy."""
import dataclasses
import functools
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax import recipe as recipe_lib
from o2o_jax import recipes
from o2o_jax.agents.common import make_train_state
from o2o_jax.agents.o2o import proto, proto_td3
from o2o_jax.agents.offline import cql, td3_bc
from o2o_jax.errors import O2OError
from o2o_jax.recipes import proto as proto_recipe
from o2o_jax.types import Transition, take_index

OBS, ACT = 3, 2
GAMMA = 0.9
KEY = jax.random.PRNGKey(0)
LOG_2PI = np.log(2 * np.pi)

S = np.array([[0.5, -1.0, 0.3], [-0.2, 0.4, 1.0], [1.2, 0.1, -0.5], [-0.7, -0.6, 0.2]])
S2 = np.array([[0.1, 0.9, -0.4], [0.6, -0.3, 0.2], [-1.0, 0.5, 0.7], [0.3, 0.2, -0.9]])
A_DATA = np.array([[0.2, -0.4], [0.7, 0.1], [-0.5, 0.9], [0.0, -0.8]])
R = np.array([1.0, -2.0, 0.5, 3.0])
MASK = np.array([1.0, 0.0, 1.0, 1.0])           # row 2 terminal
BATCH = Transition(*(jnp.asarray(x, jnp.float32) for x in (S, A_DATA, R, S2, 1.0 - MASK)))
TARGET_CRITIC = {"w": np.array([[1.0, -0.5], [-0.3, 0.8]]),
                 "u": np.array([[0.5, 0.0, -0.2], [-0.4, 0.3, 0.1]]), "c": np.array([0.2, -0.1])}
ONLINE_CRITIC = {"w": np.array([[-0.6, 0.4], [0.9, 0.2]]),
                 "u": np.array([[0.1, -0.3, 0.6], [0.2, 0.2, -0.5]]), "c": np.array([1.2, 0.9])}
B_ON, B_PRIOR = np.array([0.1, -0.2]), np.array([0.9, 0.6])     # pi and pi_k
ALPHA, ETA = 0.3, 0.7


def f32(tree):
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), tree)


class PointPolicy:
  def __init__(self, loc, sample_log_prob):
    self.loc, self.lp = loc, sample_log_prob

  def sample_and_log_prob(self, seed):
    return jnp.tanh(self.loc), self.lp

  def log_prob(self, a):
    return -0.5 * jnp.sum(jnp.square(a - self.loc), -1) - 0.5 * ACT * LOG_2PI


def point_actor(p, o):
  return PointPolicy(p["b"] + o[..., :ACT], -1.5 + 0.5 * o[..., 0])


def det_actor(p, o):
  return jnp.tanh(p["b"] + o[..., :ACT])


def linear_critic(p, o, a):
  q = jnp.einsum("...a,na->n...", a, p["w"]) + jnp.einsum("...o,no->n...", o, p["u"])
  return q + p["c"].reshape((-1,) + (1,) * (q.ndim - 1))


def q_np(p, o, a):
  return np.einsum("ba,na->nb", a, p["w"]) + np.einsum("bo,no->nb", o, p["u"]) + p["c"][:, None]


def point_log_prob(b, o, a):
  return -0.5 * np.sum(np.square(a - (b + o[:, :ACT])), -1) - 0.5 * ACT * LOG_2PI


def sac_fake(**config):
  cfg = proto.Config(hidden_dims=(8,), discount=GAMMA, **config)
  state = proto.init(KEY, OBS, ACT, cfg)
  return state.replace(actor=make_train_state(None, f32({"b": B_ON}), 1e-3).replace(apply_fn=point_actor),
                       critic=make_train_state(None, f32(ONLINE_CRITIC), 1e-3).replace(
                           apply_fn=linear_critic),
                       target_critic_params=f32(TARGET_CRITIC), prior_actor_params=f32({"b": B_PRIOR}),
                       temperature=make_train_state(None, {"log_alpha": jnp.log(jnp.float32(ALPHA))}, 1e-3),
                       eta=jnp.float32(ETA))


def td3_fake(**config):
  cfg = proto_td3.Config(hidden_dims=(8,), discount=GAMMA, **config)
  state = proto_td3.init(KEY, OBS, ACT, cfg)
  return state.replace(actor=make_train_state(None, f32({"b": B_ON}), 1e-3).replace(apply_fn=det_actor),
                       critic=make_train_state(None, f32(ONLINE_CRITIC), 1e-3).replace(
                           apply_fn=linear_critic),
                       target_critic_params=f32(TARGET_CRITIC), target_actor_params=f32({"b": B_PRIOR}),
                       eta=jnp.float32(ETA))


# ============================================================================ the trust-region terms

def test_sac_actor_loss_has_the_kl_to_pi_k_and_the_mean_of_the_critics():
  """`actor.py` `update_online`: E[-mean_k Q_k(s, a~) + alpha log pi(a~|s) + eta (log pi(a~|s) -
  log pi_k(a~|s))]. Hand case: a~ = tanh(b + s), log pi(a~|s) = -1.5 + 0.5 s_0, log pi_k a unit
  Gaussian around b_k + s; the two critics disagree, so the mean is not the min."""
  state = sac_fake()
  a = np.tanh(B_ON + S[:, :ACT])
  log_pi = -1.5 + 0.5 * S[:, 0]
  kl = log_pi - point_log_prob(B_PRIOR, S, a)
  q = q_np(ONLINE_CRITIC, S, a)
  assert not np.allclose(q.mean(0), q.min(0))
  expected = np.mean(-q.mean(0) + ALPHA * log_pi + ETA * kl)
  loss, info = proto.actor_loss(state.actor.params, state, BATCH, KEY)
  assert float(loss) == pytest.approx(expected, abs=1e-5)
  assert float(info["kl"]) == pytest.approx(kl.mean(), abs=1e-5)
  assert abs(ETA * kl.mean()) > 0.1        # the term is not negligible in this case


def test_sac_target_backs_up_entropy_and_kl_at_the_min_of_the_target_critics():
  """`critic.py` `update_q_online` (`entropy_backup`): y = r + gamma m [min_k Q'_k(s', a') - alpha log
  pi(a'|s') - eta (log pi(a'|s') - log pi_k(a'|s'))], a' ~ pi(.|s'); without the backup, y = r +
  gamma m min_k Q'_k(s', a'). The update's critic regresses on the same target."""
  a2 = np.tanh(B_ON + S2[:, :ACT])
  log_pi = -1.5 + 0.5 * S2[:, 0]
  min_q = q_np(TARGET_CRITIC, S2, a2).min(0)
  kl = log_pi - point_log_prob(B_PRIOR, S2, a2)
  expected = R + GAMMA * MASK * (min_q - ALPHA * log_pi - ETA * kl)
  state = sac_fake()
  np.testing.assert_allclose(proto.td_target(state, BATCH, KEY), expected, rtol=1e-5, atol=1e-5)
  _, info = jax.jit(proto.update)(state, BATCH, KEY)
  assert float(info["target_mean"]) == pytest.approx(expected.mean(), abs=1e-5)
  plain = sac_fake(backup_entropy=False)
  np.testing.assert_allclose(proto.td_target(plain, BATCH, KEY), R + GAMMA * MASK * min_q, rtol=1e-5,
                             atol=1e-5)


def test_td3_actor_objective_has_the_mse_to_pi_k_and_the_q_normaliser():
  """`actor_td3.py` `update_online`: -lambda E[Q(s, pi(s))] + eta mean_{B x |A|}(pi(s) - pi_k(s))^2,
  lambda = 2.5 / E|Q(s, pi(s))| (detached)."""
  state = td3_fake()
  a, prior = np.tanh(B_ON + S[:, :ACT]), np.tanh(B_PRIOR + S[:, :ACT])
  q1 = q_np(ONLINE_CRITIC, S, a)[0]
  lam = 2.5 / np.abs(q1).mean()
  trust = np.mean(np.square(a - prior))
  loss, info = proto.trust_region_actor_objective(state.actor.params, state, BATCH)
  assert float(loss) == pytest.approx(-lam * q1.mean() + ETA * trust, abs=1e-5)
  assert float(info["trust_region"]) == pytest.approx(trust, abs=1e-6)
  assert float(info["lambda"]) == pytest.approx(lam, rel=1e-5)


def test_td3_target_evaluates_pi_k_without_noise_and_subtracts_the_noisy_mse():
  """`critic_td3.py` `update_q_online` as written: y = r + gamma m [min_k Q'_k(s', pi_k(s')) - eta
  mean_{B x |A|}(pi(s') + n - pi_k(s'))^2], n = clip(0.2 N(0, 1), +-0.5) of the key; without the
  backup, y = r + gamma m min_k Q'_k(s', pi_k(s')). The update's critic regresses on the same target."""
  key = jax.random.PRNGKey(7)
  prior2 = np.tanh(B_PRIOR + S2[:, :ACT])
  noise = np.clip(0.2 * np.asarray(jax.random.normal(key, (len(R), ACT)), np.float64), -0.5, 0.5)
  mse = np.mean(np.square(np.tanh(B_ON + S2[:, :ACT]) + noise - prior2))
  min_q = q_np(TARGET_CRITIC, S2, prior2).min(0)
  expected = R + GAMMA * MASK * (min_q - ETA * mse)
  state = td3_fake()
  np.testing.assert_allclose(proto.trust_region_target(state, BATCH, key), expected, rtol=1e-5, atol=1e-5)
  _, info = jax.jit(proto_td3.update)(state, BATCH, key)
  assert float(info["target_mean"]) == pytest.approx(expected.mean(), abs=1e-5)
  plain = td3_fake(backup_trust_region=False)
  np.testing.assert_allclose(proto.trust_region_target(plain, BATCH, key), R + GAMMA * MASK * min_q,
                             rtol=1e-5, atol=1e-5)


def test_temperature_step_is_protos_alpha_times_entropy_gap():
  """`actor.py` `update_alpha`: L = alpha (H - H_target), H = -E[log pi] of the actor step; d/d log
  alpha = alpha (H - H_target) (the references' -log alpha (log pi + H_target) would give H - H_target)."""
  log_probs = jnp.array([-1.0, 0.5, -2.0])
  grad = jax.grad(proto.temperature_loss)(jnp.log(0.3), log_probs, -1.0)
  assert float(grad) == pytest.approx(0.3 * (-float(log_probs.mean()) + 1.0), rel=1e-6)


# ============================================================================ eta's schedule

def tiny_batch(key, n=16):
  ks = jax.random.split(key, 4)
  return Transition(jax.random.normal(ks[0], (n, OBS)), jax.random.uniform(ks[1], (n, ACT), minval=-1,
                                                                          maxval=1),
                    jax.random.normal(ks[2], (n,)), jax.random.normal(ks[3], (n, OBS)),
                    (jnp.arange(n) % 5 == 0).astype(jnp.float32))


def trained_look(train_state):
  """A fresh TrainState with non-zero Adam moments and count, as after training."""
  return train_state.replace(opt_state=jax.tree_util.tree_map(lambda x: x + jnp.ones_like(x),
                                                              train_state.opt_state))


def switched(agent, key, **config):
  """(offline state, state at the switch) from a freshly initialised offline state of 8-unit networks
  whose critic's Adam moments are non-zero."""
  if agent is proto:
    offline = cql.init(key, OBS, ACT, cql.Config(hidden_dims=(8,)))
    offline = offline.replace(sac=offline.sac.replace(critic=trained_look(offline.sac.critic)))
    cfg = proto.resolved(proto.Config(hidden_dims=(8,), **config), ACT)
    return offline, proto.from_cql(offline, cfg)
  offline = td3_bc.init(key, OBS, ACT, td3_bc.Config(hidden_dims=(8,)))
  # TD3+BC's own target actor differs from its actor after training: pi_k must be the actor.
  offline = offline.replace(critic=trained_look(offline.critic),
                            target_actor_params=jax.tree_util.tree_map(lambda x: x + 0.5,
                                                                       offline.target_actor_params))
  return offline, proto.from_td3bc(offline, proto_td3.Config(hidden_dims=(8,), **config))


UPDATE = {"proto": proto.update, "proto_td3": proto_td3.update}
MODULE = {"proto": proto, "proto_td3": proto_td3}
UPDATES = 12
SCHEDULE = dict(eta0=2.0, decay=0.9, eta_horizon=10, eta_min=0.3, tau_actor=0.25)


@pytest.fixture(scope="module", params=["proto", "proto_td3"])
def trajectory(request):
  """12 updates from the switch for 2 seeds (one compiled scan, shared by the tests below), run
  vmapped over the seeds and for each seed alone: eta_0 = 2, d = 0.9, T_max = 10 updates (-0.18 per
  update), floor 0.3, tau_actor 0.25. Returns a namespace: agent, offline and switched states
  (seed-stacked), per seed alone (final state, metrics, pi and pi_k after each update), vmapped
  (the same, seed-stacked)."""
  agent = request.param
  prior_of = (lambda s: s.prior_actor_params) if agent == "proto" else (lambda s: s.target_actor_params)
  offline, state = jax.jit(jax.vmap(lambda k: switched(MODULE[agent], k, **SCHEDULE)))(
      jax.random.split(KEY, 2))

  def body(s, key):
    s, info = UPDATE[agent](s, tiny_batch(key), key)
    return s, (info, s.actor.params, prior_of(s))

  run = lambda s, key: jax.lax.scan(body, s, jax.random.split(key, UPDATES))
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  alone = [jax.jit(run)(take_index(state, i), keys[i]) for i in range(2)]
  return types.SimpleNamespace(agent=agent, prior_of=prior_of, offline=offline, state=state,
                               alone=alone, vmapped=jax.jit(jax.vmap(run))(state, keys))


def test_eta_decays_linearly_by_eta0_decay_over_horizon_to_its_floor(trajectory):
  """`train_finetune{,_td3}.py` after every online update: eta = max(eta - temp / (max_steps /
  decay_speed), min_temp_online). eta_0 = 2, d = 0.9, T_max = 10: -0.18 per update down to the floor
  0.3; each update reports the eta it used (the first uses eta_0)."""
  final, (info, _, _) = trajectory.alone[0]
  np.testing.assert_array_equal(trajectory.state.eta, [2.0, 2.0])
  expected = [2.0, 1.82, 1.64, 1.46, 1.28, 1.1, 0.92, 0.74, 0.56, 0.38, 0.3, 0.3]
  np.testing.assert_allclose(info["eta"], expected, atol=1e-6)
  assert float(final.eta) == pytest.approx(0.3) and int(final.step) == UPDATES


def test_eta_at_the_paper_settings():
  """MuJoCo (`2online_mujoco.sh`): eta_0 = 2, d = 0.9, T_max = 1e6, floor 0, tau_actor 0.005: after
  100k updates eta = 2 - 0.18 = 1.82."""
  cfg = proto.Config()
  assert (cfg.eta0, cfg.decay, cfg.eta_horizon, cfg.eta_min, cfg.tau_actor) == (2.0, 0.9, 1_000_000,
                                                                                0.0, 0.005)
  assert dataclasses.astuple(proto_td3.Config())[-5:] == (2.0, 0.0, 0.9, 1_000_000, 0.005)
  np.testing.assert_allclose(jax.jit(functools.partial(proto.eta_after, cfg))(
      jnp.array([0, 1, 100_000, 1_000_000, 1_111_111, 1_111_112])),
      [2.0, 2.0 - 1.8e-6, 1.82, 0.2, 2e-7, 0.0], rtol=1e-6, atol=3e-7)


# ============================================================================ pi_k and the switch

def test_pi_k_follows_the_actor_by_polyak(trajectory):
  """SAC (`learner.py`): pi_k <- (1 - tau_actor) pi_k + tau_actor pi after every update
  (`target_update(new_online_actor, target_online_actor, tau_actor)`). TD3 (`learner_td3.py`): the
  same with each delayed actor step (updates 1, 3, 5, ...), unchanged in between."""
  _, (_, actors, priors) = trajectory.alone[0]
  prior = trajectory.prior_of(take_index(trajectory.state, 0))
  for i in range(UPDATES):
    actor, new_prior = take_index(actors, i), take_index(priors, i)
    if trajectory.agent == "proto" or i % 2 == 0:
      expected = jax.tree_util.tree_map(lambda k, p: 0.75 * k + 0.25 * p, prior, actor)
      chex.assert_trees_all_close(new_prior, expected, rtol=1e-6, atol=1e-7)
      assert not np.allclose(jax.tree_util.tree_leaves(new_prior)[-1],
                             jax.tree_util.tree_leaves(actor)[-1])
    else:
      chex.assert_trees_all_equal(new_prior, prior)
      chex.assert_trees_all_equal(actor, take_index(actors, i - 1))
    prior = new_prior


def test_the_switch_copies_the_offline_actor_into_pi_and_pi_k(trajectory):
  """`learner.py` / `learner_td3.py` `offline2online`: pi <- pi_off and pi_k <- pi (hard copies; for
  TD3 not TD3+BC's own target actor); the critic, its Adam moments and its target continue; the
  actor's Adam starts fresh; SAC: alpha_0 = 0.01, H_target = -|A|/2."""
  state = trajectory.state
  off = trajectory.offline.sac if trajectory.agent == "proto" else trajectory.offline
  chex.assert_trees_all_equal(state.actor.params, off.actor.params)
  chex.assert_trees_all_equal(trajectory.prior_of(state), off.actor.params)
  chex.assert_trees_all_equal(state.critic.params, off.critic.params)
  chex.assert_trees_all_equal(state.critic.opt_state, off.critic.opt_state)
  chex.assert_trees_all_equal(state.target_critic_params, off.target_critic_params)
  np.testing.assert_array_equal(state.actor.opt_state[0].count, [0, 0])
  np.testing.assert_array_equal(state.critic.opt_state[0].count, [1, 1])
  if trajectory.agent == "proto":
    np.testing.assert_allclose(jax.vmap(proto.sac.alpha)(state), [0.01, 0.01], rtol=1e-6)
    assert state.config.target_entropy == -ACT / 2
  else:     # TD3+BC's own target actor (offset from its actor) is not pi_k
    assert not np.allclose(jax.tree_util.tree_leaves(off.target_actor_params)[0],
                           jax.tree_util.tree_leaves(off.actor.params)[0])


# ============================================================================ seeds

def test_vmapped_updates_equal_per_seed_updates(trajectory):
  """Seed i of the vmapped 12 updates equals seed i run alone (nothing pooled across seeds), and the
  two seeds differ."""
  final, (info, _, _) = trajectory.vmapped
  for i in range(2):
    alone_final, (alone_info, _, _) = trajectory.alone[i]
    chex.assert_trees_all_close(take_index(final, i), alone_final, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info["critic_loss"][i], alone_info["critic_loss"], rtol=1e-5)
  assert not np.allclose(info["critic_loss"][0], info["critic_loss"][1])


# ============================================================================ recipe pieces

def test_config_keeps_the_offline_networks_and_takes_the_antmaze_settings():
  offline_config = cql.Config(hidden_dims=(8, 8))
  config = proto_recipe.make_config("proto", offline_config, "o2o/hopper/medium-v0", 3)
  assert config.hidden_dims == (8, 8) and config.critic_init == offline_config.critic_init
  assert config.target_entropy == -1.5 and config.eta0 == 2.0 and config.backup_entropy
  maze = proto_recipe.make_config("proto_td3", td3_bc.Config(), "D4RL/antmaze/umaze-v1", 8)
  assert (maze.eta0, maze.tau_actor, maze.backup_trust_region) == (0.5, 5e-5, False)
  wider = lambda c: dataclasses.replace(c, hidden_dims=(16, 16))
  with pytest.raises(O2OError, match=r"^--config\.hidden_dims: proto fine-tunes the networks of "):
    proto_recipe.make_config("proto", offline_config, "o2o/hopper/medium-v0", 3, wider)


def test_bad_schedule_values_fail_before_any_phase_runs():
  recipe = proto_recipe.RECIPES["proto"]
  ctx = recipe_lib.Context.build(recipe, {"budget": "quick"}, overrides={"eta0": "-1"})
  with pytest.raises(O2OError, match=r"^PROTO eta0 must not be negative \(got -1.0\)"):
    recipe_lib.check(recipe, ctx)
  ctx = recipe_lib.Context.build(recipe, {"budget": "quick"}, {"proto_prefill": 0})
  with pytest.raises(O2OError, match=r"^--proto_prefill \+ --warmup_steps must be at least 1"):
    recipe_lib.check(recipe, ctx)


def test_prefill_draws_distinct_offline_rows_per_seed():
  """`initialize_with_dataset(dataset, 10000)`: a random subset without replacement, all rows when
  the dataset is smaller; each seed its own draw."""
  n = 50
  device = Transition(jnp.zeros((n, OBS)), jnp.zeros((n, ACT)), jnp.arange(n, dtype=jnp.float32),
                      jnp.zeros((n, OBS)), jnp.zeros(n))
  keys = jax.random.split(KEY, 2)
  rows = proto_recipe.offline_rows(device, keys, 20)
  assert rows.observations.shape == (2, 20, OBS)
  for seed in range(2):
    assert len(set(np.asarray(rows.rewards[seed]).tolist())) == 20
  assert not np.array_equal(rows.rewards[0], rows.rewards[1])
  every = proto_recipe.offline_rows(device, keys, 10_000)
  assert sorted(np.asarray(every.rewards[1]).tolist()) == list(range(n))


@pytest.mark.parametrize("agent, shares_with", [("proto", "o2sac"), ("proto_td3", "o2td3")])
@pytest.mark.parametrize("budget, dataset", [("paper", "o2o/walker2d/medium-v0"),
                                             ("quick", "o2o/walker2d/medium-v0"),
                                             ("paper", "D4RL/antmaze/umaze-v1")])
def test_the_pretrain_run_is_the_one_o2sac_or_o2td3_starts_from(monkeypatch, agent, shares_with, budget,
                                                                  dataset):
  """OCR-CFT ran PROTO from its own offline checkpoints (paper App. C.4): proto's (proto_td3's)
  pretrain phase asks `offline.pretrain` for exactly o2sac's (o2td3's) run, which it then reuses."""
  from o2o_jax.recipes import offline
  calls = []
  monkeypatch.setattr(offline, "pretrain", lambda **kwargs: calls.append(
      {k: v for k, v in kwargs.items() if k != "log"}))
  for name in (shares_with, agent):
    recipe = recipes.get(name)
    ctx = recipe_lib.Context.build(recipe, {"dataset": dataset, "budget": budget})
    ctx.phase = recipe.phases[0]
    recipe.phases[0].run(ctx)
  assert calls[0] == calls[1] and calls[0]["algo"] == proto_recipe.SOURCES[agent][0], calls
