"""OCR-CFT pieces: the lambda step and tau schedule, O2TD3's alignment and constraint properties,
refresh_reference under vmap, and a user-written jit(vmap(scan(finetune_step)))."""
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax import lagrange, loops
from o2o_jax.agents.o2o import o2ppo, o2sac, o2td3
from o2o_jax.data import replay
from o2o_jax.types import Transition, seed_keys, take_index

OBS, ACT = 4, 2
CFG = o2td3.Config(hidden_dims=(16, 16), critic_hidden_dims=(16, 16))


def batch(key, n=32):
  k = jax.random.split(key, 4)
  obs = jax.random.normal(k[0], (n, OBS))
  return Transition(obs, jax.random.uniform(k[1], (n, ACT), minval=-1, maxval=1),
                    jax.random.normal(k[2], (n,)), jax.random.normal(k[3], (n, OBS)), jnp.zeros(n))


# --- lambda ----------------------------------------------------------------------------------

def test_lambda_loss_weights_and_value():
  f = jnp.array([0.5, 2.0])          # tau = 1: first satisfies (w 0.3), second violates (w 0.7)
  np.testing.assert_allclose(lagrange.constraint_weights(f, 1.0), [0.3, 0.7])
  expected = np.exp(0.2) * np.mean([0.3 * 0.5, 0.7 * -1.0])
  assert float(lagrange.loss(0.2, f, 1.0)) == pytest.approx(expected, rel=1e-6)
  g = jax.grad(lagrange.loss, argnums=1)(0.2, f, 1.0)
  np.testing.assert_array_equal(g, 0.0)   # f is detached


def test_lambda_rises_while_violated_and_decays_while_satisfied():
  state = lagrange.init(1.0, learning_rate=0.05)
  step = jax.jit(lagrange.update)
  values = []
  for _ in range(50):
    state, info = step(state, jnp.full((8,), 2.0), 1.0)      # violated
    values.append(float(info["lambda"]))
  assert values[-1] > values[0] > 1.0 and np.all(np.diff(values) > 0)
  decay = []
  for _ in range(1000):
    state, info = step(state, jnp.full((8,), 0.0), 1.0)      # satisfied
    decay.append(float(info["lambda"]))
  assert np.all(np.diff(decay[10:]) < 0)                     # once Adam's momentum has turned
  assert 0.0 <= decay[-1] < 0.01 * values[-1]


def test_tau_schedule_linear_then_flat():
  sched = lambda t: float(lagrange.tau_schedule(t, 0.0025, 0.04, 100_000))
  assert sched(0) == pytest.approx(0.0025)
  assert sched(50_000) == pytest.approx(0.0025 + 0.5 * (0.04 - 0.0025))
  assert sched(100_000) == pytest.approx(0.04) and sched(250_000) == pytest.approx(0.04)


# --- O2TD3 alignment --------------------------------------------------------------------------

def test_calibrated_value_never_exceeds_the_anchor():
  anchor = jnp.array([10.0, -10.0, 0.0, 3.0])
  d = jnp.array([0.1, 0.1, 0.2, 0.0])
  out = o2td3.calibrated_value(anchor, d, 1.0)
  np.testing.assert_allclose(out, [10 / 1.01, -10 * 1.01, 0.0, 3.0], rtol=1e-6)
  a = jax.random.normal(jax.random.PRNGKey(0), (1000,)) * 100
  dist = jax.random.uniform(jax.random.PRNGKey(1), (1000,)) * 0.2
  assert bool(jnp.all(o2td3.calibrated_value(a, dist, 1.0) <= a))


def test_action_distance_is_scaled_and_capped():
  a, b = jnp.array([[0.1, 0.1], [1.0, -1.0]]), jnp.zeros((2, 2))
  d = o2td3.action_distance(a, b, cap=0.2)
  np.testing.assert_allclose(d, [0.1, 0.2], rtol=1e-6)   # ||(.1,.1)||/sqrt2 = .1 ; big one capped


def test_align_targets_properties():
  state = o2td3.init(jax.random.PRNGKey(0), OBS, ACT, CFG)
  b = batch(jax.random.PRNGKey(1))
  noisy, targets, anchor_actions, anchor = o2td3.align_targets(state, b.observations, jax.random.PRNGKey(2))
  q_noisy = state.critic.apply_fn(state.target_critic_params, b.observations, noisy)
  assert bool(jnp.all(targets <= q_noisy + 1e-6))                    # min with *each* target critic
  assert bool(jnp.all(targets <= anchor[None] + 1e-6))               # never above the anchor
  q_anchor = state.critic.apply_fn(state.target_critic_params, b.observations, anchor_actions).min(0)
  np.testing.assert_allclose(anchor, q_anchor, rtol=1e-6)


def test_align_step_freezes_targets_and_finish_copies():
  state = o2td3.init(jax.random.PRNGKey(0), OBS, ACT, CFG)
  new, info = jax.jit(o2td3.align_step)(state, batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
  chex.assert_trees_all_equal(new.target_critic_params, state.target_critic_params)
  chex.assert_trees_all_equal(new.offline_actor_params, state.offline_actor_params)
  assert not np.allclose(jax.tree_util.tree_leaves(new.actor.params)[0],
                         jax.tree_util.tree_leaves(state.actor.params)[0])
  done = o2td3.finish_alignment(new)
  chex.assert_trees_all_equal(done.target_critic_params, new.critic.params)
  chex.assert_trees_all_equal(done.target_actor_params, new.actor.params)


def test_align_step_reports_the_actor_drift_from_pi_off():
  state = o2td3.init(jax.random.PRNGKey(0), OBS, ACT, CFG)
  b = batch(jax.random.PRNGKey(1))
  step = jax.jit(o2td3.align_step)
  _, info = step(state, b, jax.random.PRNGKey(2))
  assert float(info["actor_drift"]) == 0.0                # pi_on = pi_off before the first update
  moved = state.replace(actor=state.actor.replace(params=jax.tree_util.tree_map(
      lambda p: p + 0.1, state.actor.params)))
  _, info = step(moved, b, jax.random.PRNGKey(2))
  diff = o2td3.pi(moved, moved.actor.params, b.observations) - o2td3.pi(state, state.actor.params,
                                                                        b.observations)
  np.testing.assert_allclose(float(info["actor_drift"]), np.sqrt(np.mean(np.square(diff))), rtol=1e-5)


# --- O2TD3 fine-tuning ------------------------------------------------------------------------

def test_constraint_is_zero_when_policy_equals_reference():
  state = o2td3.init(jax.random.PRNGKey(0), OBS, ACT, CFG)       # pi_on = pi_ref at init
  b = batch(jax.random.PRNGKey(1))
  _, info = o2td3.finetune_actor_loss(state.actor.params, state, b.observations, 1.0)
  assert float(info["actor_constraint"]) == 0.0
  _, info = jax.jit(o2td3.finetune_step)(state, b, jax.random.PRNGKey(2))
  assert float(info["critic_penalty"]) == 0.0 and float(info["constraint"]) == 0.0
  # constraint satisfied (f = 0 < tau): lambda decreases
  assert float(info["lambda"]) < 1.0


def test_direct_finetuning_switch_has_no_lambda():
  import dataclasses
  state = o2td3.init(jax.random.PRNGKey(0), OBS, ACT, dataclasses.replace(CFG, constrain=False))
  _, info = jax.jit(o2td3.finetune_step)(state, batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
  assert float(info["lambda"]) == 0.0


def test_refresh_reference_under_vmap_updates_only_improved_seeds():
  states = loops.init_states(o2td3, seed_keys(0, 3), OBS, ACT, CFG)
  states = jax.vmap(o2td3.init_reference)(states, jnp.array([10.0, 10.0, 10.0]), jnp.array([5.0, 5.0, 5.0]))
  # perturb pi_on so it differs from pi_ref
  states = states.replace(actor=states.actor.replace(params=jax.tree_util.tree_map(
      lambda x: x + 1.0, states.actor.params)))
  new = jax.jit(jax.vmap(o2td3.refresh_reference))(states, jnp.array([12.0, 9.0, 10.0]))
  np.testing.assert_array_equal(new.best_score, [12.0, 10.0, 10.0])
  for i, improved in enumerate([True, False, False]):
    expected = take_index(states.actor.params if improved else states.reference_actor_params, i)
    chex.assert_trees_all_equal(take_index(new.reference_actor_params, i), expected)


@pytest.mark.parametrize("agent", [o2td3, o2sac, o2ppo])
def test_interval_mode_adopts_pi_on_and_keeps_every_leaf_finite(agent):
  """The interval mode (appendix C.3; the released code's refer_with_optimal_pi=false: pi_ref <- pi_on
  every N steps, whatever its score): every seed's pi_ref becomes its pi_on, even a worse one, and
  the state stays finite for the divergence guard (it used to store best_score = inf, which stopped
  every `--reference=interval:N` run as diverged at its first refresh)."""
  from o2o_jax import resume
  cfg = {o2td3: CFG, o2sac: o2sac.Config(hidden_dims=(8,), critic_hidden_dims=(8,)),
         o2ppo: o2ppo.Config(hidden_dims=(8,))}[agent]
  states = loops.init_states(agent, seed_keys(0, 2), OBS, ACT, cfg)
  states = jax.vmap(agent.init_reference)(states, jnp.array([10.0, 10.0]), jnp.array([5.0, 5.0]))
  states = states.replace(actor=states.actor.replace(params=jax.tree_util.tree_map(
      lambda x: x + 1.0, states.actor.params)))
  new = jax.jit(jax.vmap(agent.adopt_reference))(states, jnp.array([3.0, 12.0]))
  chex.assert_trees_all_equal(new.reference_actor_params, states.actor.params)
  np.testing.assert_array_equal(new.best_score, [3.0, 12.0])
  assert int(jnp.sum(jax.vmap(resume.nonfinite_count)(new))) == 0


def test_init_reference_picks_the_better_policy():
  state = o2td3.init(jax.random.PRNGKey(0), OBS, ACT, CFG)
  state = state.replace(actor=state.actor.replace(params=jax.tree_util.tree_map(
      lambda x: x * 2.0, state.actor.params)))
  on = o2td3.init_reference(state, 1.0, 2.0)
  chex.assert_trees_all_equal(on.reference_actor_params, state.actor.params)
  off = o2td3.init_reference(state, 2.0, 2.0)      # pi_on only if strictly better
  chex.assert_trees_all_equal(off.reference_actor_params, state.offline_actor_params)
  assert float(off.best_score) == 2.0


def test_user_written_vmapped_scan_matches_the_package_loop():
  """A user's own jit(vmap(scan(finetune_step))) compiles and matches loops.make_offline_chunk."""
  seeds, k = 2, 4
  states = loops.init_states(o2td3, seed_keys(0, seeds), OBS, ACT, CFG)
  data = batch(jax.random.PRNGKey(7), n=64)

  @jax.jit
  def user_program(states, keys):
    def one_seed(state, key):
      def body(s, kk):
        k_sample, k_update = jax.random.split(kk)
        return o2td3.finetune_step(s, replay.sample_offline(data, k_sample, 16), k_update)
      return jax.lax.scan(body, state, jax.random.split(key, k))
    return jax.vmap(one_seed)(states, keys)

  keys = seed_keys(3, seeds)
  mine, _ = user_program(states, keys)
  package = loops.multi_seed_offline_chunk(loops.make_offline_chunk(o2td3.finetune_step, 16, k))
  theirs, _ = package(loops.unalias(states), keys, data)
  chex.assert_trees_all_close(mine, theirs, rtol=1e-5, atol=1e-6)
  assert [int(s) for s in mine.step] == [k, k]


# --- O2SAC ------------------------------------------------------------------------------------

from o2o_jax.agents.o2o import o2sac

SAC_CFG = o2sac.Config(hidden_dims=(16, 16), critic_hidden_dims=(16, 16), utd=3)


def test_o2sac_align_target_keeps_the_anchor_and_never_exceeds_q():
  state = o2sac.init(jax.random.PRNGKey(0), OBS, ACT, SAC_CFG)
  obs = batch(jax.random.PRNGKey(1)).observations
  actions = jax.random.uniform(jax.random.PRNGKey(2), (obs.shape[0], ACT), minval=-0.99, maxval=0.99)
  target, anchor_a, q_anchor = o2sac.align_target(state, obs, actions)
  assert bool(jnp.all(target <= o2sac.min_target_q(state, obs, actions) + 1e-5))       # <= Q(s, a)
  at_anchor, _, _ = o2sac.align_target(state, obs, anchor_a)
  np.testing.assert_allclose(at_anchor, q_anchor, rtol=1e-5, atol=1e-5)                # = Q(s, a.)
  assert float(jnp.abs(anchor_a).max()) <= o2sac.ANCHOR_CLIP


def test_o2sac_init_of_5_seeds_finishes():
  """Regression: with flax's QR-based orthogonal init, `init_states(o2sac, 5 seeds)` hung forever
  on 2 CPU threads (always at the suite's -O0). A subprocess, so a hang fails instead of stalling."""
  code = ("import jax; from o2o_jax import loops; from o2o_jax.agents.o2o import o2sac; "
          "from o2o_jax.types import seed_keys; jax.block_until_ready(loops.init_states(o2sac, "
          "seed_keys(0, 5), 11, 3, o2sac.Config(hidden_dims=(64, 64)))); print('ok')")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  try:
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=240)
  except subprocess.TimeoutExpired:
    pytest.fail("the 5-seed O2SAC init hung (XLA CPU thread-pool deadlock is back)")
  assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_o2sac_kl_is_zero_at_the_reference_and_lambda_steps_once_per_env_step():
  state = o2sac.init(jax.random.PRNGKey(0), OBS, ACT, SAC_CFG)
  b = batch(jax.random.PRNGKey(1))
  _, info = o2sac.sac_actor_loss(state.actor.params, state, b.observations, jax.random.PRNGKey(2))
  np.testing.assert_allclose(info["kl"], 0.0, atol=1e-5)
  step = jax.jit(o2sac.finetune_step)
  lambdas = []
  for i in range(6):
    state, info = step(state, b, jax.random.PRNGKey(10 + i))
    lambdas.append(float(o2sac.lagrange.value(state.lagrange)))
  # utd = 3: lambda moves at updates 0 and 3 only
  assert lambdas[0] != 1.0 and lambdas[0] == lambdas[1] == lambdas[2]
  assert lambdas[3] != lambdas[2] and lambdas[3] == lambdas[4] == lambdas[5]
  assert float(o2sac.alpha(state)) != SAC_CFG.init_alpha          # alpha is tuned online


def test_o2sac_reevaluation_keeps_the_actor_and_align_freezes_targets():
  state = o2sac.init(jax.random.PRNGKey(0), OBS, ACT, SAC_CFG)
  b = batch(jax.random.PRNGKey(1))
  re, _ = jax.jit(o2sac.reevaluate_step)(state, b, jax.random.PRNGKey(2))
  chex.assert_trees_all_equal(re.actor.params, state.actor.params)
  assert float(o2sac.alpha(re)) == pytest.approx(SAC_CFG.init_alpha)
  al, _ = jax.jit(o2sac.align_step)(re, b, jax.random.PRNGKey(3))
  chex.assert_trees_all_equal(al.target_critic_params, re.target_critic_params)
  assert float(o2sac.alpha(al)) == pytest.approx(SAC_CFG.init_alpha)
  chex.assert_trees_all_equal(o2sac.finish_alignment(al).target_critic_params, al.critic.params)


# --- reference order and initialisation (issue #19, points 7 and 8) ----------------------------
#
# Hand-checkable agents: a linear double critic Q_k(s, a) = w_k . a + c_k and an actor whose action
# is tanh(mu) for every state (O2SAC: a tanh-Gaussian with sigma = 1e-6, so every sample is tanh(mu)
# to 1e-6). With actor_lr 0.5, Adam's first step moves mu by exactly 0.5 sign(grad), so the actors
# before and after a step differ visibly, and which one an expression used can be read off by hand.

from o2o_jax import networks
from o2o_jax.agents.common import make_train_state

MU0 = np.array([0.3, -0.2], np.float32)                  # ACT = 2
W = np.array([[1.0, -2.0], [0.5, 1.5]], np.float32)      # w_1, w_2
C = np.array([0.1, -0.3], np.float32)                    # c_1, c_2
FAKE_SIGMA = 1e-6
LR = 0.5


def linear_critic(params, observations, actions):
  return (actions @ params["w"].T).T + params["c"][:, None]                      # (2, B)


def q_by_hand(mu):
  """(Q_1, Q_2) at a = tanh(mu), in float64."""
  return W.astype(np.float64) @ np.tanh(np.asarray(mu, np.float64)) + C


def fake_tanh_gaussian(params, observations):
  shape = (observations.shape[0], ACT)
  return networks.TanhGaussian(jnp.broadcast_to(params["mu"], shape), jnp.full(shape, FAKE_SIGMA))


def fake_deterministic(params, observations):
  return jnp.broadcast_to(jnp.tanh(params["mu"]), (observations.shape[0], ACT))


def with_fake_networks(state, actor_fn, actor_copies=("offline_actor_params", "reference_actor_params")):
  """`state` with the fake actor (pi_on = pi_off = pi_ref, and every field in `actor_copies`) and the
  linear critic (target = critic)."""
  actor_params, critic_params = {"mu": jnp.asarray(MU0)}, {"w": jnp.asarray(W), "c": jnp.asarray(C)}
  actor = make_train_state(None, actor_params, LR).replace(apply_fn=actor_fn)
  critic = make_train_state(None, critic_params, 3e-4).replace(apply_fn=linear_critic)
  return state.replace(actor=actor, critic=critic, target_critic_params=critic_params,
                       **{k: actor_params for k in actor_copies})


def test_o2sac_finetune_critic_target_uses_the_pre_update_actor():
  """Official OCR-CFT `finetune/online_agent/sac.py`, `SAC.update`: `policy_loss` and
  `qf_loss = self._q_loss(...)` are both built before any optimiser step, and `_q_loss` samples
  `new_next_actions, next_log_pi = self.actor(next_observations)`, so the target's a' comes from the
  actor *before* this step's `actor_optimizer.step()`."""
  config = o2sac.Config(hidden_dims=(16, 16), critic_hidden_dims=(16, 16), constrain=False,
                        init_alpha=1e-8, actor_lr=LR, utd=1)
  state = with_fake_networks(o2sac.init(jax.random.PRNGKey(0), OBS, ACT, config), fake_tanh_gaussian)
  b = batch(jax.random.PRNGKey(1), n=64)
  new, info = jax.jit(o2sac.finetune_step)(state, b, jax.random.PRNGKey(2))
  # The actor did move: mu -> mu0 + 0.5 sign(w_2) (Q_2 is the smaller critic at tanh(mu0)).
  mu1 = MU0 + LR * np.sign(W[1])
  np.testing.assert_allclose(new.actor.params["mu"], mu1, atol=1e-5)
  # y = r + gamma (min_k Q'_k(s', tanh(mu0)) - alpha log pi), alpha = 1e-8 (its term is < 1e-6).
  pre = np.mean(np.asarray(b.rewards, np.float64)) + config.discount * q_by_hand(MU0).min()
  post = np.mean(np.asarray(b.rewards, np.float64)) + config.discount * q_by_hand(mu1).min()
  assert abs(pre - post) > 0.5
  np.testing.assert_allclose(float(info["target_mean"]), pre, atol=1e-4)


def test_o2sac_alignment_samples_pi_on_before_the_actor_step():
  """Official OCR-CFT `finetune/online_agent/sac.py`, `SAC.align_value`: under `torch.no_grad()`,
  `new_actions, _ = self.actor(observations)` builds the alignment target and the critic loss
  `predicted_loss` at those actions, before `policy_loss.backward(); self.actor_optimizer.step()`:
  a ~ pi_on comes from the actor *before* its step."""
  config = o2sac.Config(hidden_dims=(16, 16), critic_hidden_dims=(16, 16), init_alpha=1e-8,
                        actor_lr=LR)
  state = with_fake_networks(o2sac.init(jax.random.PRNGKey(0), OBS, ACT, config), fake_tanh_gaussian)
  new, info = jax.jit(o2sac.align_step)(state, batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
  mu1 = MU0 + LR * np.sign(W[1])
  np.testing.assert_allclose(new.actor.params["mu"], mu1, atol=1e-5)
  # q_policy = mean_k Q_k(s, a) at the sampled a: tanh(mu0), not tanh(mu1).
  assert abs(q_by_hand(MU0).mean() - q_by_hand(mu1).mean()) > 0.1
  np.testing.assert_allclose(float(info["q_policy"]), q_by_hand(MU0).mean(), atol=1e-4)
  # eq. 12-13 by hand at a = a. = tanh(mu0): target min_k Q'_k, loss sum_k (Q_k - min_j Q_j)^2.
  q0 = q_by_hand(MU0)
  np.testing.assert_allclose(float(info["align_loss"]), np.sum(np.square(q0 - q0.min())), rtol=1e-4)


def test_o2td3_alignment_builds_the_noisy_action_from_the_pre_update_actor():
  """Official OCR-CFT `finetune/online_agent/td3.py`, `TD3.align_value`: under `torch.no_grad()`,
  `online_action = self.actor(state)` and `noisy_action = (online_action + refine_noise).clamp(...)`
  build the targets and `refine_loss`, before `actor_loss.backward(); self.actor_optimizer.step()`:
  the noisy action comes from the actor *before* its step. (policy_noise 0 here, so a~ = pi_on(s).)"""
  config = o2td3.Config(hidden_dims=(16, 16), critic_hidden_dims=(16, 16), actor_lr=LR,
                        policy_noise=0.0)
  state = with_fake_networks(o2td3.init(jax.random.PRNGKey(0), OBS, ACT, config), fake_deterministic,
                             ("offline_actor_params", "reference_actor_params", "target_actor_params"))
  new, info = jax.jit(o2td3.align_step)(state, batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
  # The actor ascends Q_1: mu -> mu0 + 0.5 sign(w_1).
  mu1 = MU0 + LR * np.sign(W[0])
  np.testing.assert_allclose(new.actor.params["mu"], mu1, atol=1e-5)
  q0, q1 = q_by_hand(MU0), q_by_hand(mu1)
  assert abs(q0.mean() - q1.mean()) > 0.1
  np.testing.assert_allclose(float(info["q_policy"]), q0.mean(), atol=1e-5)
  # eq. 15-16 by hand at a~ = a. = tanh(mu0) (d = 0, Q* = A = min_k Q'_k): sum_i (Q_i - min(A, Q'_i))^2.
  anchor = q0.min()
  np.testing.assert_allclose(float(info["align_loss"]),
                             np.sum(np.square(q0 - np.minimum(anchor, q0))), rtol=1e-5)


def assert_orthogonal(kernel, gain):
  """PyTorch's `orthogonal_(W, gain)` seen as flax's (in, out) kernel K: K K^T = gain^2 I when in <=
  out, else K^T K = gain^2 I."""
  k = np.asarray(kernel, np.float64)
  gram = k @ k.T if k.shape[0] <= k.shape[1] else k.T @ k
  np.testing.assert_allclose(gram, gain ** 2 * np.eye(gram.shape[0]), atol=1e-5)


@pytest.mark.parametrize("agent,config", [
    (o2sac, o2sac.Config(hidden_dims=(16, 16), critic_hidden_dims=(16, 16, 16), orthogonal_init=False)),
    (o2td3, o2td3.Config(hidden_dims=(16, 16), critic_hidden_dims=(16, 16))),
])
def test_o2o_critics_use_the_official_init(agent, config):
  """Official OCR-CFT `finetune/O2SAC.py` and `finetune/O2TD3.py`, `train`: the critics are
  `CriticFunction(state_dim, action_dim, layer_norm=config.critic_layernorm, ...)` on `net.py`'s `MLP`,
  whose `__init__` applies `orthogonal_net` (orthogonal weight, gain 1.0; bias 0) to every Linear,
  the output layer included. The O2SAC critic follows it whatever the (offline) actor's
  `orthogonal_init` is."""
  state = jax.jit(agent.init, static_argnums=(1, 2, 3))(jax.random.PRNGKey(0), OBS, ACT, config)
  critic = state.critic.params["params"]["VmapCritic_0"]
  layers = [critic["MLP_0"][f"Dense_{i}"] for i in range(len(config.critic_hidden_dims))]
  layers.append(critic["Dense_0"])                                     # the output layer
  assert "LayerNorm_0" in critic["MLP_0"]                               # critic_layernorm: True
  for layer in layers:
    for member in np.asarray(layer["kernel"]):                          # both critics
      assert_orthogonal(member, 1.0)
    np.testing.assert_array_equal(layer["bias"], 0.0)
  head = np.asarray(critic["Dense_0"]["kernel"])[:, :, 0]
  np.testing.assert_allclose(np.linalg.norm(head, axis=-1), 1.0, rtol=1e-5)   # gain 1, not 1e-2


# ----------------------------------------------------------------------------- direct fine-tuning

@pytest.mark.parametrize("offline_name, o2o_agent", [("td3bc", o2td3), ("cql", o2sac)])
def test_without_reevaluation_the_o2o_critic_is_the_offline_one(offline_name, o2o_agent):
  """--reevaluate=false and direct_td3 / direct_sac keep the offline run's critic (paper appendix,
  figure 5: without re-evaluation "the offline critic may be severely pessimistic"): the O2O config
  takes its architecture (no LayerNorm in TD3+BC's and CQL's critics) and its weights fit the O2O
  critic's tree exactly; BC has no critic to keep."""
  from o2o_jax.agents import registry
  from o2o_jax.recipes import ocr_cft
  offline = registry.get(offline_name, registry.OFFLINE)
  off_config = offline.Config(hidden_dims=(8, 8))
  states = jax.vmap(lambda k: offline.init(k, 5, 3, off_config))(seed_keys(0, 2))
  params, target = ocr_cft.offline_critic(states)
  fields = ocr_cft.offline_critic_fields(off_config)
  assert fields == {"critic_hidden_dims": (8, 8), "critic_layer_norm": False}
  o2o_state = o2o_agent.init(jax.random.PRNGKey(1), 5, 3,
                             o2o_agent.Config(hidden_dims=(8, 8), **fields))
  same = jax.tree_util.tree_map(lambda a, b: a.shape == b.shape[1:], o2o_state.critic.params, params)
  assert all(jax.tree_util.tree_leaves(same))
  assert jax.tree_util.tree_structure(target) == jax.tree_util.tree_structure(params)
  from o2o_jax.agents.offline import bc
  assert ocr_cft.offline_critic(bc.init(jax.random.PRNGKey(0), 5, 3, bc.Config())) is None


def test_direct_agents_are_their_ocr_cft_agent_with_every_switch_off():
  from o2o_jax import recipes
  from o2o_jax.recipes import ocr_cft
  for direct, base in (("direct_td3", "o2td3"), ("direct_sac", "o2sac")):
    recipe = recipes.get(direct)
    assert recipe.config is recipes.get(base).config
    assert all(recipe.defaults[s] is False for s in ocr_cft.SWITCHES)
    assert not set(ocr_cft.DIRECT_UNREAD) & set(recipe.reads)     # no flag can switch one back on
    assert ocr_cft.SOURCE_ALGO[direct] == ocr_cft.SOURCE_ALGO[base]
    assert ocr_cft.o2o_preset(direct, "o2o/hopper/medium-v0") == ocr_cft.o2o_preset(base, "o2o/hopper/medium-v0")
