"""The O2O loss terms that vanish at initialisation, checked by hand where they are not zero (issue #24
gaps 3, 5 and 6):

  * OCR-CFT's constraint terms with pi_on != pi_ref: O2TD3's fine-tuning target and actor loss,
    O2SAC's lambda f in its target and its actor, O2SAC's eq. 12 calibration with a non-zero
    log-ratio, and the LOG_REF_MIN clamp;
  * O2PPO: the auxiliary advantage reaches the update, and the sign of the entropy bonus;
  * ACA's online target, critic and actor losses, its SAC+ML actor loss and the w_t schedule; SAMG at
    p = 1 (CQL, AWAC), weight_at="next", the raw-state weight, and the C-VAE's Gaussian KL.

The networks are fakes whose outputs can be written down: a linear double critic
Q_k(s, a) = w_k . a + u_k . s + c_k and tanh actors whose pre-tanh mean is mu + k * s[:2] (so every row
of a batch has its own action). Every expected value is computed in float64 numpy from the equation
named in the test; sampled noise is reproduced from the key the update splits off (distrax samples
loc + scale * jax.random.normal(key, shape), checked in `test_fake_sampling_is_reproduced`).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax import networks
from o2o_jax.agents.common import make_train_state
from o2o_jax.agents.o2o import aca, o2ppo, o2sac, o2td3, samg
from o2o_jax.agents.offline import awac, cql, iql
from o2o_jax.agents.online import ppo, sac
from o2o_jax.types import Transition

OBS, ACT, B = 4, 2, 6
LOG_2PI = np.log(2.0 * np.pi)

# ----------------------------------------------------------------------------- fakes and numpy twins

CRITIC = {"w": np.array([[1.0, -2.0], [0.5, 1.5]]), "u": np.array([[0.2, -0.1, 0.3, 0.0],
                                                                   [-0.2, 0.1, 0.0, 0.4]]),
          "c": np.array([0.1, -0.3])}
TARGET_CRITIC = {"w": np.array([[0.8, -1.5], [0.6, 1.2]]), "u": np.array([[0.1, 0.2, -0.3, 0.1],
                                                                          [0.0, -0.1, 0.2, 0.3]]),
                 "c": np.array([0.4, -0.2])}
# Deterministic actors a = tanh(mu + k * s[:2]).
ON = {"mu": np.array([0.3, -0.2]), "k": np.array([0.5, -0.4])}
REF = {"mu": np.array([-0.1, 0.25]), "k": np.array([0.2, 0.3])}
TARG = {"mu": np.array([0.15, 0.1]), "k": np.array([-0.3, 0.6])}
# Tanh-Gaussian actors tanh(N(mu + k * s[:2], exp(log_std)^2)).
ON_G = {**ON, "log_std": np.log([0.5, 0.4])}
REF_G = {"mu": np.array([0.1, 0.05]), "k": np.array([0.3, -0.2]), "log_std": np.log([0.6, 0.3])}
OFF_G = {"mu": np.array([-0.2, 0.4]), "k": np.array([0.1, 0.2]), "log_std": np.log([0.3, 0.5])}


def f32(tree):
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), tree)


def linear_critic(params, observations, actions):
  return (actions @ params["w"].T + observations @ params["u"].T + params["c"]).T        # (2, B)


def det_actor(params, observations):
  return jnp.tanh(params["mu"] + params["k"] * observations[:, :ACT])


def gauss_actor(params, observations):
  loc = params["mu"] + params["k"] * observations[:, :ACT]
  return networks.TanhGaussian(loc, jnp.broadcast_to(jnp.exp(params["log_std"]), loc.shape))


def q_np(params, s, a):
  return (a @ params["w"].T + s @ params["u"].T + params["c"]).T


def loc_np(params, s):
  return params["mu"] + params["k"] * s[:, :ACT]


def std_np(params):
  return np.exp(params["log_std"])


def log_normal_np(u, loc, std):
  return np.sum(-0.5 * ((u - loc) / std) ** 2 - 0.5 * LOG_2PI - np.log(std), axis=-1)


def tanh_logp_pre_np(u, loc, std):
  """log-density of tanh(u) at the pre-tanh point u: log N(u) - sum log(1 - tanh(u)^2)."""
  return log_normal_np(u, loc, std) - np.sum(np.log(1.0 - np.tanh(u) ** 2), axis=-1)


def tanh_logp_action_np(a, loc, std):
  """log pi(a|s) of a given action, the actions clipped to +-(1 - 1e-4) before atanh (official
  `net.py` / networks.TanhGaussian.log_prob)."""
  return tanh_logp_pre_np(np.arctanh(np.clip(a, -1 + 1e-4, 1 - 1e-4)), loc, std)


def softplus_np(x):
  return np.logaddexp(0.0, x)


def normal(key, shape=(B, ACT)):
  return np.asarray(jax.random.normal(key, shape), np.float64)


def hand_batch(seed=0, n=B):
  rng = np.random.default_rng(seed)
  return Transition(observations=rng.normal(size=(n, OBS)), actions=rng.uniform(-0.9, 0.9, (n, ACT)),
                    rewards=rng.normal(size=n), next_observations=rng.normal(size=(n, OBS)),
                    terminals=np.array([0.0, 1.0, 0.0, 0.0, 1.0, 0.0][:n]))


def train_state(params, fn, lr):
  return make_train_state(None, f32(params), lr).replace(apply_fn=fn)


def close(got, expected, rtol=1e-4, atol=1e-4):
  np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rtol, atol=atol)


def test_fake_sampling_is_reproduced():
  """The noise the hand computations reproduce: a TanhGaussian sample is tanh(loc + std eps) with
  eps = jax.random.normal(key, shape), its log-prob taken at the pre-tanh point."""
  b = hand_batch()
  key = jax.random.PRNGKey(11)
  a, logp = gauss_actor(f32(ON_G), jnp.asarray(b.observations, jnp.float32)).sample_and_log_prob(seed=key)
  u = loc_np(ON_G, b.observations) + std_np(ON_G) * normal(key)
  close(a, np.tanh(u), atol=1e-5)
  close(logp, tanh_logp_pre_np(u, loc_np(ON_G, b.observations), std_np(ON_G)), atol=1e-4)


# ----------------------------------------------------------------------------- gap 3: O2TD3

TD3_CFG = o2td3.Config(hidden_dims=(8, 8), critic_hidden_dims=(8, 8), policy_noise=0.0,
                       lambda_init=2.0, discount=0.9)
TD3_STEP = jax.jit(o2td3.finetune_step)


@pytest.fixture(scope="module")
def td3_state():
  """O2TD3 state with pi_on (ON) != pi_ref (REF) != pi_target (TARG), critic != target critic; the
  critic's learning rate is 0 so the actor after the critic step sees the same critic."""
  state = jax.jit(o2td3.init, static_argnums=(1, 2, 3))(jax.random.PRNGKey(0), OBS, ACT, TD3_CFG)
  return state.replace(actor=train_state(ON, det_actor, 1e-4), critic=train_state(CRITIC, linear_critic, 0.0),
                       target_critic_params=f32(TARGET_CRITIC), target_actor_params=f32(TARG),
                       reference_actor_params=f32(REF), offline_actor_params=f32(TARG))


def test_o2td3_finetune_target_subtracts_lambda_times_one_batch_mean_penalty(td3_state):
  """Official OCR-CFT `finetune/online_agent/td3.py`, `TD3.update` (paper eq. 46; reference notes
  ocr-cft_official-code.md §4 phase 3): y = r + gamma (1-d) [min_i Q'_i(s', a~') - lambda P] with
  a~' = pi_target(s') (policy noise 0 here) and P = mean over the whole batch *and* the action
  dimensions of (pi_on(s') - pi_ref(s'))^2: one scalar for every row, from the online actor (not
  pi_target), at s' (not s); lambda the value before this step (lambda_init = 2). Critic loss
  sum_i mean_b (Q_i(s_b, a_b) - y_b)^2 (F.mse_loss per critic, summed)."""
  b = hand_batch()
  _, info = TD3_STEP(td3_state, f32(b), jax.random.PRNGKey(1))
  s2, m, lam, gamma = b.next_observations, 1.0 - b.terminals, 2.0, TD3_CFG.discount
  dev = np.tanh(loc_np(ON, s2)) - np.tanh(loc_np(REF, s2))
  penalty = np.mean(dev ** 2)
  next_q = q_np(TARGET_CRITIC, s2, np.tanh(loc_np(TARG, s2))).min(0)
  y = b.rewards + gamma * m * (next_q - lam * penalty)
  loss = np.sum(np.mean((q_np(CRITIC, b.observations, b.actions) - y) ** 2, axis=-1))
  close(info["critic_penalty"], penalty, rtol=1e-5, atol=1e-6)
  close(info["target_mean"], y.mean(), atol=1e-5)
  close(info["critic_loss"], loss, rtol=1e-5)
  # What the test can see: lambda P moves the mean target, and a per-row penalty (mean over action
  # dimensions only) would change the loss although not the mean.
  assert lam * gamma * penalty * m.mean() > 0.02
  per_row = b.rewards + gamma * m * (next_q - lam * np.mean(dev ** 2, axis=-1))
  assert abs(np.sum(np.mean((q_np(CRITIC, b.observations, b.actions) - per_row) ** 2, -1)) - loss) > 1e-3


def test_o2td3_finetune_actor_loss_is_normalised_q_plus_lambda_mse(td3_state):
  """Official OCR-CFT `finetune/online_agent/td3.py`, `TD3.update` (paper eq. 45 as released):
  L = -mean Q_1(s, pi_on(s)) / mean|Q_1(s, pi_on(s))| + lambda mean_{B x |A|} (pi_on(s) - pi_ref(s))^2,
  the normaliser detached (TD3+BC's form with coefficient 1), lambda the pre-step value. Gradient by
  hand, a_bd = tanh(mu_d + k_d s_bd), dQ_1/da = w_1:
    dL/dmu_d = -1/(B M) sum_b w_1d (1 - a_bd^2) + 2 lambda/(B |A|) sum_b (a_bd - r_bd)(1 - a_bd^2),
  and dL/dk_d the same with a factor s_bd in each sum. The lambda step runs on f = (pi_ref(s) -
  pi_on(s))^2 per dimension at s (`constraint` = its mean)."""
  b = hand_batch()
  s, lam = b.observations, 2.0
  a, r = np.tanh(loc_np(ON, s)), np.tanh(loc_np(REF, s))
  q1 = q_np(CRITIC, s, a)[0]
  m_abs = np.abs(q1).mean()
  expected = -q1.mean() / m_abs + lam * np.mean((a - r) ** 2)
  assert (q1 > 0).any() and (q1 < 0).any()              # so -mean Q / mean|Q| is not +-1
  j = 1.0 - a ** 2
  q_part = -CRITIC["w"][0] * j / (B * m_abs)
  c_part = 2.0 * lam * (a - r) * j / (B * ACT)
  grad_mu = (q_part + c_part).sum(0)
  grad_k = ((q_part + c_part) * s[:, :ACT]).sum(0)
  (loss, info), grads = jax.jit(jax.value_and_grad(o2td3.finetune_actor_loss, has_aux=True))(
      td3_state.actor.params, td3_state, jnp.asarray(s, jnp.float32), jnp.float32(lam))
  close(loss, expected, rtol=1e-5, atol=1e-6)
  close(info["actor_constraint"], np.mean((a - r) ** 2), rtol=1e-5, atol=1e-7)
  close(grads["mu"], grad_mu, rtol=1e-4, atol=1e-6)
  close(grads["k"], grad_k, rtol=1e-4, atol=1e-6)
  # Inside the fine-tuning step (update 0: the delayed branch runs).
  _, info = TD3_STEP(td3_state, f32(b), jax.random.PRNGKey(1))
  close(info["actor_loss"], expected, rtol=1e-5, atol=1e-5)
  close(info["constraint"], np.mean((r - a) ** 2), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- gap 3: O2SAC

SAC_CFG = o2sac.Config(hidden_dims=(8, 8), critic_hidden_dims=(8, 8), utd=1, lambda_init=1.5,
                       init_alpha=0.3, discount=0.9)
SAC_STEP = jax.jit(o2sac.finetune_step)


def sac_state_with(reference):
  state = jax.jit(o2sac.init, static_argnums=(1, 2, 3))(jax.random.PRNGKey(0), OBS, ACT, SAC_CFG)
  return state.replace(actor=train_state(ON_G, gauss_actor, 1e-4),
                       critic=train_state(CRITIC, linear_critic, 0.0),
                       target_critic_params=f32(TARGET_CRITIC), reference_actor_params=f32(reference),
                       offline_actor_params=f32(OFF_G))


@pytest.fixture(scope="module")
def sac_state():
  return sac_state_with(REF_G)


def o2sac_by_hand(b, key, reference):
  """(y, critic loss, actor loss, mean f of the actor's sample, mean f at s') of one O2SAC
  fine-tuning step from `sac_state_with(reference)`: official OCR-CFT
  `finetune/online_agent/sac.py`, `SAC.update` (paper eqs. 37-38; reference notes §3 phase 3)."""
  _, k_actor, k_next = jax.random.split(key, 3)
  alpha, lam, gamma = SAC_CFG.init_alpha, SAC_CFG.lambda_init, SAC_CFG.discount
  s, s2, m = b.observations, b.next_observations, 1.0 - b.terminals

  def sample(obs, k):
    u = loc_np(ON_G, obs) + std_np(ON_G) * normal(k)
    logp = tanh_logp_pre_np(u, loc_np(ON_G, obs), std_np(ON_G))
    log_ref = tanh_logp_action_np(np.tanh(u), loc_np(reference, obs), std_np(reference))
    return np.tanh(u), logp, logp - np.maximum(log_ref, -50.0)

  a2, logp2, f2 = sample(s2, k_next)
  y = b.rewards + gamma * m * (q_np(TARGET_CRITIC, s2, a2).min(0) - alpha * logp2 - lam * f2)
  critic_loss = np.sum(np.mean((q_np(CRITIC, s, b.actions) - y) ** 2, axis=-1))
  a, logp, f = sample(s, k_actor)
  actor_loss = np.mean(alpha * logp - q_np(CRITIC, s, a).min(0) + lam * f)
  return y, critic_loss, actor_loss, f, f2


def test_o2sac_finetune_target_and_actor_carry_lambda_f(sac_state):
  """Official OCR-CFT `finetune/online_agent/sac.py`, `SAC.update` (paper eqs. 37-38): with
  f = log pi_on(a|s) - max(log pi_ref(a|s), -50) (one sample, summed over dimensions),
    y = r + gamma (1-d) [min_i Q'_i(s', a') - alpha log pi_on(a'|s') - lambda f(s', a')], a' ~ pi_on(.|s'),
    L_actor = mean[alpha log pi_on(a|s) - min_i Q_i(s, a) + lambda f(s, a)], a ~ pi_on(.|s),
  alpha = 0.3 and lambda = 1.5 the values before the step. pi_ref = REF_G differs from pi_on in mean
  and scale, so f is O(1) and unclamped here. The actor's gradient flows through a into both log pi_on
  and log pi_ref: it equals the gradient of eq. 37 written out with jnp (no library code)."""
  b = hand_batch()
  key = jax.random.PRNGKey(5)
  y, critic_loss, actor_loss, f, f2 = o2sac_by_hand(b, key, REF_G)
  _, info = SAC_STEP(sac_state, f32(b), key)
  close(info["target_mean"], y.mean())
  close(info["critic_loss"], critic_loss, rtol=1e-4)
  close(info["actor_loss"], actor_loss)
  close(info["constraint"], f.mean())
  lam = SAC_CFG.lambda_init
  assert lam * abs(f2.mean()) > 0.05 and lam * abs(f.mean()) > 0.05        # the terms are visible
  # The gradient of the actor loss, against eq. 37 written out by hand.
  s = jnp.asarray(b.observations, jnp.float32)
  _, k_actor, _ = jax.random.split(key, 3)
  eps = jax.random.normal(k_actor, (B, ACT))

  def eq37(p):
    loc, std = p["mu"] + p["k"] * s[:, :ACT], jnp.exp(p["log_std"])
    u = loc + std * eps
    log_det = jnp.sum(jnp.log(1.0 - jnp.tanh(u) ** 2), -1)
    logp = jnp.sum(-0.5 * eps ** 2 - 0.5 * LOG_2PI - jnp.log(std), -1) - log_det
    ref = f32(REF_G)
    ref_loc, ref_std = ref["mu"] + ref["k"] * s[:, :ACT], jnp.exp(ref["log_std"])
    log_ref = jnp.sum(-0.5 * ((u - ref_loc) / ref_std) ** 2 - 0.5 * LOG_2PI - jnp.log(ref_std), -1) - log_det
    q = linear_critic(f32(CRITIC), s, jnp.tanh(u)).min(0)
    return jnp.mean(SAC_CFG.init_alpha * logp - q + lam * (logp - jnp.maximum(log_ref, -50.0)))

  grads = jax.jit(jax.grad(lambda p: o2sac.sac_actor_loss(p, sac_state, s, k_actor, lam)[0]))(
      sac_state.actor.params)
  expected = jax.jit(jax.grad(eq37))(sac_state.actor.params)
  for name in ("mu", "k", "log_std"):
    close(grads[name], np.asarray(expected[name]), rtol=1e-3, atol=1e-5)


def test_o2sac_log_ref_min_clamps_the_reference_log_density():
  """Official OCR-CFT `finetune/online_agent/sac.py` (reference notes §3 phase 3 and point 8):
  log pi_ref is clamped at -50 in fine-tuning, in the actor loss, the lambda loss and the critic
  target: f = log pi_on - max(log pi_ref, -50). pi_ref here sits ~50 standard deviations away, so
  log pi_ref(a|s) < -1000 on every sample and f = log pi_on + 50 exactly."""
  assert o2sac.LOG_REF_MIN == -50.0
  far = {"mu": np.array([-2.5, 2.5]), "k": np.zeros(2), "log_std": np.log([0.05, 0.05])}
  state = sac_state_with(far)
  b = hand_batch()
  key = jax.random.PRNGKey(6)
  s = jnp.asarray(b.observations, jnp.float32)
  _, logp, f = jax.jit(o2sac.sample_with_kl)(state.actor.params, state, s, key)
  u = loc_np(ON_G, b.observations) + std_np(ON_G) * normal(key)
  assert np.all(tanh_logp_action_np(np.tanh(u), loc_np(far, b.observations), std_np(far)) < -1000)
  close(f, np.asarray(logp, np.float64) + 50.0, rtol=1e-6, atol=1e-5)
  y, critic_loss, actor_loss, f_actor, f_next = o2sac_by_hand(b, key, far)
  assert np.all(np.abs(f_next) < 60) and np.all(np.abs(f_actor) < 60)       # clamped by hand too
  _, info = SAC_STEP(state, f32(b), key)                                     # the same program
  close(info["target_mean"], y.mean(), atol=1e-3)
  close(info["critic_loss"], critic_loss, rtol=1e-4)
  close(info["actor_loss"], actor_loss, atol=1e-3)
  close(info["constraint"], f_actor.mean(), atol=1e-3)


def test_o2sac_calibration_eq12_with_a_nonzero_log_ratio(sac_state):
  """Paper eq. 12 and official OCR-CFT `finetune/online_agent/sac.py`, `SAC.align_value` (reference
  notes §3 phase 2): with a. = clip(tanh(mu_off(s)), +-0.9999) and Q' the min of the frozen targets,
    Q'(s, a) = min(Q'(s, a.) - alpha (log pi_off(a.|s) - log pi_off(a|s)), Q'(s, a)),
  no -50 clamp. alpha = 0.3. The actions are chosen so that on some rows the calibrated branch is the
  smaller one with alpha |log-ratio| > 0.05 (a sign flip of the calibration term changes those rows),
  and on others Q'(s, a) is."""
  b = hand_batch()
  s, alpha = b.observations, SAC_CFG.init_alpha
  loc, std = loc_np(OFF_G, s), std_np(OFF_G)
  anchor = np.clip(np.tanh(loc), -0.9999, 0.9999)
  actions = anchor + np.array([[0.6, 0.6], [-0.5, 0.7], [0.3, -0.6], [-0.7, -0.3], [0.05, 0.05], [0.6, -0.2]])
  actions = np.clip(actions, -0.95, 0.95)
  q_anchor = q_np(TARGET_CRITIC, s, anchor).min(0)
  ratio = tanh_logp_action_np(anchor, loc, std) - tanh_logp_action_np(actions, loc, std)
  calibrated = q_anchor - alpha * ratio
  q_a = q_np(TARGET_CRITIC, s, actions).min(0)
  expected = np.minimum(calibrated, q_a)
  active = calibrated < q_a
  assert active.sum() >= 2 and (~active).sum() >= 1
  assert np.all(alpha * np.abs(ratio[active]) > 0.05)
  flipped = np.minimum(q_anchor + alpha * ratio, q_a)
  assert np.abs(flipped - expected).max() > 0.05
  target, anchor_a, q_anchor_got = jax.jit(o2sac.align_target)(sac_state, jnp.asarray(s, jnp.float32),
                                                               jnp.asarray(actions, jnp.float32))
  close(anchor_a, anchor, atol=1e-5)
  close(q_anchor_got, q_anchor, atol=1e-4)
  close(target, expected, atol=2e-4)


def test_o2sac_alignment_losses_with_pi_on_apart_from_pi_off(sac_state):
  """Paper eq. 13 and official `SAC.align_value` (reference notes §3 phase 2, step 4): with a ~
  pi_on(.|s) (sampled with the critic's key, no gradient) and pi_on != pi_off,
    align = sum_i mean_b (Q_i(s, a_b) - Q'(s, a_b))^2 (Q' of eq. 12),
    retain = sum_i mean_b (Q_i(s, a.) - Q'(s, a.))^2,  Q' = min_i of the frozen targets."""
  b = hand_batch()
  key = jax.random.PRNGKey(7)
  _, k_critic = jax.random.split(key)
  s, alpha = b.observations, SAC_CFG.init_alpha
  a = np.tanh(loc_np(ON_G, s) + std_np(ON_G) * normal(k_critic))
  loc, std = loc_np(OFF_G, s), std_np(OFF_G)
  anchor = np.clip(np.tanh(loc), -0.9999, 0.9999)
  q_anchor = q_np(TARGET_CRITIC, s, anchor).min(0)
  calibrated = q_anchor - alpha * (tanh_logp_action_np(anchor, loc, std) - tanh_logp_action_np(a, loc, std))
  target = np.minimum(calibrated, q_np(TARGET_CRITIC, s, a).min(0))
  _, info = jax.jit(o2sac.align_step)(sac_state, f32(b), key)
  close(info["align_loss"], np.sum(np.mean((q_np(CRITIC, s, a) - target) ** 2, -1)), rtol=1e-4)
  close(info["retain_loss"], np.sum(np.mean((q_np(CRITIC, s, anchor) - q_anchor) ** 2, -1)), rtol=1e-4)


# ----------------------------------------------------------------------------- gap 5: O2PPO

PPO_T = 8
PPO_CFG = o2ppo.Config(hidden_dims=(8, 8), value_hidden_dims=(8, 8), rollout_length=PPO_T,
                       num_minibatches=1, epochs=1, beta_steps=32, lr_decay_steps=0, actor_lr=1e-3,
                       critic_lr=1e-3)
O2PPO_UPDATE = jax.jit(o2ppo.update)


@jax.jit
def _ppo_epoch_by_hand(actor, value, rollout, advantages, targets, key, matrix):
  """ppo.train_epochs fed given advantages (matrix None: per sample; else the rows of `matrix`,
  indexed by the sample numbers passed as `advantages`)."""
  rows = None if matrix is None else (lambda idx: matrix[idx.astype(jnp.int32)])
  return ppo.train_epochs(actor, value, rollout, advantages, targets, key, PPO_CFG if matrix is None
                          else dataclasses.replace(PPO_CFG, aux_pairing="broadcast"), rows)


@functools.lru_cache(maxsize=None)
def _o2ppo_init():
  return jax.jit(lambda k: o2ppo.init(k, OBS, ACT, PPO_CFG))(jax.random.PRNGKey(0))


def o2ppo_state(pairing):
  """pi_on from a fresh O2PPO init, pi_ref = pi_on with every parameter moved (another mean and
  log-std), so A_alpha measured under pi_on would differ."""
  state = _o2ppo_init()
  ref = jax.tree_util.tree_map(lambda x: x * 1.5 + 0.1, state.actor.params)
  return state.replace(reference_actor_params=ref,
                       config=dataclasses.replace(PPO_CFG, aux_pairing=pairing))


def gae_np(r, v, v2, term, done, gamma, lam):
  adv, nxt = np.zeros_like(r), 0.0
  for t in reversed(range(len(r))):
    delta = r[t] + gamma * (1 - term[t]) * v2[t] - v[t]
    nxt = delta + gamma * lam * (1 - done[t]) * nxt
    adv[t] = nxt
  return adv


@pytest.mark.parametrize("pairing", ["paired", "broadcast"])
def test_o2ppo_update_equals_a_ppo_epoch_on_hand_mixed_advantages(pairing):
  """With 1 epoch and 1 minibatch, `o2ppo.update` is PPO's epoch (`ppo.train_epochs`) fed the
  advantages mixed by hand as the official OCR-CFT `finetune/online_agent/ppo/ppo.py`, `PPO.update`
  and `get_reference_advantage` do (reference notes §5): GAE A and V-targets A + V from the raw
  advantages; per dimension g_d = log pi_ref,d(a_d|s) + H_d = (1 - z_d^2)/2, z = (a - mu_ref)/sigma_ref,
  floored by softplus(g + 4) - 4 (eq. 51), A_alpha = 2 mean_d; A_ref = A_alpha |std(A)| (n-1);
  beta = 1 - 8/32; paired (eq. 18): (A_i + beta A_ref,i)/(1 + beta), broadcast (the released code):
  M_ij = (A_i + beta A_ref,j)/(1 + beta); then (x - mean)/(std + 1e-5) over the rollout (or all T^2
  entries). pi_ref != pi_on, so A_alpha under pi_on would differ."""
  state = o2ppo_state(pairing)
  rng = np.random.default_rng(3)
  obs = jnp.asarray(rng.normal(size=(PPO_T, OBS)), jnp.float32)
  next_obs = jnp.asarray(rng.normal(size=(PPO_T, OBS)), jnp.float32)
  ref = state.actor.apply_fn(state.reference_actor_params, obs)
  z = np.array([[0.0, 0.5], [1.0, -0.2], [2.0, 1.5], [-0.5, 0.3], [3.0, -3.0], [0.1, 0.9],
                [-1.2, 0.0], [0.7, -2.2]])
  actions = jnp.asarray(np.asarray(ref.loc) + z * np.asarray(ref.scale_diag), jnp.float32)
  rollout = ppo.Rollout(observations=obs, actions=actions,
                        log_probs=state.actor.apply_fn(state.actor.params, obs).log_prob(actions),
                        rewards=jnp.asarray(rng.normal(size=PPO_T), jnp.float32), next_observations=next_obs,
                        terminals=jnp.asarray([0, 0, 1, 0, 0, 0, 0, 0], jnp.float32),
                        dones=jnp.asarray([0, 0, 1, 0, 0, 1, 0, 0], jnp.float32))
  key = jax.random.PRNGKey(4)
  new, info = O2PPO_UPDATE(state, rollout, key)
  # By hand.
  v = np.asarray(state.value.apply_fn(state.value.params, obs), np.float64)
  v2 = np.asarray(state.value.apply_fn(state.value.params, next_obs), np.float64)
  c = PPO_CFG
  adv = gae_np(np.asarray(rollout.rewards, np.float64), v, v2, np.asarray(rollout.terminals),
               np.asarray(rollout.dones), c.discount, c.gae_lambda)
  targets = adv + v
  g = (1.0 - z ** 2) / 2.0
  aux = 2.0 * np.mean(softplus_np(g + 4.0) - 4.0, axis=-1)
  a_ref = aux * np.std(adv, ddof=1)
  beta = 1.0 - PPO_T / c.beta_steps
  close(info["beta"], beta, atol=1e-7)
  close(info["aux_advantage"], aux.mean(), atol=1e-5)
  if pairing == "paired":
    x = (adv + beta * a_ref) / (1 + beta)
    given, matrix = (x - x.mean()) / (x.std(ddof=1) + 1e-5), None
  else:
    x = (adv[:, None] + beta * a_ref[None, :]) / (1 + beta)
    given, matrix = np.arange(PPO_T), jnp.asarray((x - x.mean()) / (x.std(ddof=1) + 1e-5), jnp.float32)
  actor, value, _ = _ppo_epoch_by_hand(state.actor, state.value, rollout, jnp.asarray(given, jnp.float32),
                                       jnp.asarray(targets, jnp.float32), key, matrix)
  for got, want in ((new.actor.params, actor.params), (new.value.params, value.params)):
    for x_got, x_want in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(x_got, x_want, rtol=1e-5, atol=1e-6)
  # The auxiliary term is visible: the same epoch on the plain normalised advantages lands elsewhere.
  if pairing == "paired":
    plain, _, _ = _ppo_epoch_by_hand(state.actor, state.value, rollout,
                                     jnp.asarray((adv - adv.mean()) / (adv.std(ddof=1) + 1e-5), jnp.float32),
                                     jnp.asarray(targets, jnp.float32), key, None)
    gap = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(plain.params),
                                                          jax.tree_util.tree_leaves(new.actor.params)))
    assert gap > 1e-5


def test_o2ppo_entropy_bonus_widens_the_policy():
  """Official OCR-CFT `ppo.py`, `PPO.update` (reference notes §5): L_pi = -mean[min(r A, clip(r) A)]
  - 0.01 mean H(pi(.|s)). With r = 0 and V = 0 every advantage is 0 (and A_ref = A_alpha |std A| = 0),
  so the entropy bonus is the actor's only gradient: dL/dlog sigma_d = -0.01 (H = sum_d log sigma_d +
  const), and Adam's first step raises every log sigma_d by lr * 0.01 / (0.01 + 1e-5); the mean's
  parameters and V get a zero gradient and stay put."""
  state = o2ppo_state("paired")
  state = state.replace(value=state.value.replace(params=jax.tree_util.tree_map(jnp.zeros_like,
                                                                                state.value.params)))
  rng = np.random.default_rng(5)
  obs = jnp.asarray(rng.normal(size=(PPO_T, OBS)), jnp.float32)
  actions = jnp.asarray(rng.normal(size=(PPO_T, ACT)) * 0.3, jnp.float32)
  rollout = ppo.Rollout(observations=obs, actions=actions,
                        log_probs=state.actor.apply_fn(state.actor.params, obs).log_prob(actions),
                        rewards=jnp.zeros(PPO_T), next_observations=obs, terminals=jnp.zeros(PPO_T),
                        dones=jnp.zeros(PPO_T))
  new, _ = O2PPO_UPDATE(state, rollout, jax.random.PRNGKey(6))
  step = PPO_CFG.actor_lr * PPO_CFG.entropy_coef / (PPO_CFG.entropy_coef + PPO_CFG.adam_eps)
  log_std = np.asarray(new.actor.params["params"]["log_std"]) - np.asarray(state.actor.params["params"]["log_std"])
  np.testing.assert_allclose(log_std, step, rtol=1e-4)
  rest = lambda p: [x for path, x in jax.tree_util.tree_flatten_with_path(p)[0]
                    if "log_std" not in jax.tree_util.keystr(path)]
  for a, b in zip(rest(new.actor.params), rest(state.actor.params)):
    np.testing.assert_array_equal(a, b)
  jax.tree_util.tree_map(np.testing.assert_array_equal, new.value.params, state.value.params)


# ----------------------------------------------------------------------------- gap 6: ACA

ACA_CFG = aca.Config(hidden_dims=(8, 8), clip_beta=1.0, w_init=1.0, w_decay_k=0.004, w_min=0.3,
                     autotune_alpha=False, discount=0.9)
ACA_UPDATE = jax.jit(aca.online_update)
ACA_ALPHA = 0.4


@pytest.fixture(scope="module")
def aca_online():
  """An online ACA state (after `start_online`) with fakes: pi = ON_G, pi0 = OFF_G (so pi != pi0),
  R = CRITIC (learning rate 0), R' = TARGET_CRITIC, alpha = 0.4 fixed (autotune off), w = 0.7."""
  state = jax.jit(aca.init, static_argnums=(1, 2, 3))(jax.random.PRNGKey(0), OBS, ACT, ACA_CFG)
  state = jax.jit(aca.start_online, static_argnums=1)(state, ACT)
  return state.replace(actor=train_state(ON_G, gauss_actor, 1e-4),
                       critic=train_state(CRITIC, linear_critic, 0.0),
                       target_critic_params=f32(TARGET_CRITIC), offline_actor_params=f32(OFF_G),
                       temperature=make_train_state(None, {"log_alpha": jnp.log(jnp.float32(ACA_ALPHA))}, 0.0),
                       weight=jnp.float32(0.7))


def x_clip_np(s, beta):
  """min_+- log pi0(mu0 +- beta sigma0 | s), pre-tanh space (ACA `aca_impl.py`, baselines.md §3a)."""
  loc, std = loc_np(OFF_G, s), std_np(OFF_G)
  return np.minimum(tanh_logp_pre_np(loc + beta * std, loc, std), tanh_logp_pre_np(loc - beta * std, loc, std))


def c_np(x, x_clip):
  return softplus_np(x - x_clip) + x_clip


def test_aca_online_target_critic_and_actor_losses(aca_online):
  """Official ACA `aca_impl.py` (baselines.md §3a, online stage), with w = 0.7, alpha = 0.4 and
  c(x) = softplus(x - x_clip) + x_clip, x_clip = min_+- log pi0(mu0 +- sigma0 | s) (beta = 1):
    y = r + gamma (1-d) [min_k R'_k(s', a') + w c(log pi0(a'|s')) - alpha log pi(a'|s')], a' ~ pi(.|s'),
    L_Q = sum_k mean_b (R_k(s, a) + w c(log pi0(a|s)) - y)^2  (dataset a),
    L_pi = mean[alpha log pi(a~|s) - min_k R_k(s, a~) - w c(log pi0(a~|s))], a~ ~ pi(.|s),
  the densities of sampled actions at their pre-tanh points. Keys: temperature, target, actor =
  split(key, 3). pi != pi0, and the clip bends c on some rows."""
  b = hand_batch()
  key = jax.random.PRNGKey(8)
  _, k_target, k_actor = jax.random.split(key, 3)
  s, s2, m, w, gamma = b.observations, b.next_observations, 1.0 - b.terminals, 0.7, ACA_CFG.discount
  u2 = loc_np(ON_G, s2) + std_np(ON_G) * normal(k_target)
  ref2 = c_np(tanh_logp_pre_np(u2, loc_np(OFF_G, s2), std_np(OFF_G)), x_clip_np(s2, 1.0))
  y = b.rewards + gamma * m * (q_np(TARGET_CRITIC, s2, np.tanh(u2)).min(0) + w * ref2
                               - ACA_ALPHA * tanh_logp_pre_np(u2, loc_np(ON_G, s2), std_np(ON_G)))
  logp0_data = tanh_logp_action_np(b.actions, loc_np(OFF_G, s), std_np(OFF_G))
  ref_data = c_np(logp0_data, x_clip_np(s, 1.0))
  critic_loss = np.sum(np.mean((q_np(CRITIC, s, b.actions) + w * ref_data - y) ** 2, -1))
  u = loc_np(ON_G, s) + std_np(ON_G) * normal(k_actor)
  ref_pi = c_np(tanh_logp_pre_np(u, loc_np(OFF_G, s), std_np(OFF_G)), x_clip_np(s, 1.0))
  actor_loss = np.mean(ACA_ALPHA * tanh_logp_pre_np(u, loc_np(ON_G, s), std_np(ON_G))
                       - q_np(CRITIC, s, np.tanh(u)).min(0) - w * ref_pi)
  assert np.abs(ref_data - logp0_data).max() > 0.1                       # the clip is engaged
  _, info = ACA_UPDATE(aca_online, f32(b), key)
  close(info["w"], w, atol=1e-7)
  close(info["ref_term"], ref_data.mean())
  close(info["target_mean"], y.mean())
  close(info["critic_loss"], critic_loss, rtol=1e-4)
  close(info["actor_loss"], actor_loss)
  close(info["ref_logp_policy"], ref_pi.mean())


def test_aca_weight_decays_linearly_to_its_floor(aca_online):
  """ACA `aca_impl.py` (baselines.md §3a): w_t = max(w_{t-1} - w0 / (K 1000), w_min) per update; with
  w0 = 1, K = 0.004, w_min = 0.3: 1 -> 0.75 -> 0.5 -> 0.3 -> 0.3 (each update's losses use the w
  before its own decay)."""
  state = aca_online.replace(weight=jnp.float32(1.0))
  b = f32(hand_batch())
  weights, used = [], []
  for i in range(4):
    state, info = ACA_UPDATE(state, b, jax.random.PRNGKey(20 + i))
    weights.append(float(state.weight))
    used.append(float(info["w"]))
  np.testing.assert_allclose(weights, [0.75, 0.5, 0.3, 0.3], rtol=1e-6)
  np.testing.assert_allclose(used, [1.0, 0.75, 0.5, 0.3], rtol=1e-6)
  assert int(state.step) == 4


def test_aca_sacml_actor_loss(aca_online):
  """Official ACA `sacml_impl.py` (baselines.md §3a, offline stage): L_pi = lambda E[alpha log pi(a~|s) -
  min_k Q_k(s, a~)] - E_D[log pi(a|s)], lambda = alpha_ML / E|min_k Q_k(s, a~)| detached, alpha_ML
  = 30, a~ = tanh(mu + sigma eps) with eps from the loss's key; log pi of the dataset action through
  atanh. Value by hand in float64; gradient against the same equation written with jnp (lambda under
  stop_gradient)."""
  state = aca_online
  b = hand_batch()
  key = jax.random.PRNGKey(9)
  s, a_data = b.observations, b.actions
  u = loc_np(ON_G, s) + std_np(ON_G) * normal(key)
  q = q_np(CRITIC, s, np.tanh(u)).min(0)
  lam = 30.0 / np.abs(q).mean()
  rl = np.mean(ACA_ALPHA * tanh_logp_pre_np(u, loc_np(ON_G, s), std_np(ON_G)) - q)
  ml = -np.mean(tanh_logp_action_np(a_data, loc_np(ON_G, s), std_np(ON_G)))
  (loss, info), grads = jax.jit(jax.value_and_grad(aca.sacml_actor_loss, has_aux=True))(
      state.actor.params, state, f32(b), key)
  close(loss, lam * rl + ml, rtol=1e-4)
  close(info["ml_lambda"], lam, rtol=1e-5)
  close(info["ml_loss"], ml, rtol=1e-5)
  sj, aj = jnp.asarray(s, jnp.float32), jnp.asarray(a_data, jnp.float32)
  eps = jax.random.normal(key, (B, ACT))

  def by_hand(p):
    loc, std = p["mu"] + p["k"] * sj[:, :ACT], jnp.exp(p["log_std"])
    uu = loc + std * eps
    logp = jnp.sum(-0.5 * eps ** 2 - 0.5 * LOG_2PI - jnp.log(std) - jnp.log(1.0 - jnp.tanh(uu) ** 2), -1)
    qq = linear_critic(f32(CRITIC), sj, jnp.tanh(uu)).min(0)
    pre = jnp.arctanh(aj)
    log_data = jnp.sum(-0.5 * ((pre - loc) / std) ** 2 - 0.5 * LOG_2PI - jnp.log(std)
                       - jnp.log(1.0 - aj ** 2), -1)
    weight = 30.0 / jax.lax.stop_gradient(jnp.abs(qq).mean())
    return weight * jnp.mean(ACA_ALPHA * logp - qq) - jnp.mean(log_data)

  expected = jax.jit(jax.grad(by_hand))(state.actor.params)
  for name in ("mu", "k", "log_std"):
    close(grads[name], np.asarray(expected[name]), rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------- gap 6: SAMG

SAMG_OBS = 5
SAMG_BASES = {"cql": cql.Config(hidden_dims=(8, 8), cql_n_actions=2), "awac": awac.Config(hidden_dims=(8, 8)),
              "iql": iql.Config(hidden_dims=(8, 8))}


def samg_config(base, **kw):
  return samg.Config(base=base, base_config=SAMG_BASES[base], cvae_hidden_dims=(8,), **kw)


@functools.lru_cache(maxsize=None)
def _samg_init(base):
  config = samg_config(base)
  init = jax.jit(lambda k: samg.init(k, SAMG_OBS, ACT, config))
  return init(jax.random.PRNGKey(0)), init(jax.random.PRNGKey(1))


def samg_pair(base, **kw):
  """A SAMG state (config fields `kw` changed) whose frozen Q_off / V_off comes from another seed's
  networks."""
  state, other = _samg_init(base)
  return state.replace(offline_params=other.offline_params,
                       config=dataclasses.replace(state.config, **kw))


def samg_batch(seed=1, n=8):
  rng = np.random.default_rng(seed)
  return f32(Transition(observations=rng.normal(size=(n, SAMG_OBS)), actions=rng.uniform(-0.9, 0.9, (n, ACT)),
                        rewards=rng.normal(size=n), next_observations=rng.normal(size=(n, SAMG_OBS)),
                        terminals=(np.arange(n) % 3 == 1).astype(float)))


def at_p_one(state):
  """latent_std = 1e30: |mu - m| / s ~ 1e-30, so p = erfc(~0) = 1 exactly on every pair."""
  return state.replace(latent_std=jnp.full_like(state.latent_std, 1e30))


def test_samg_cql_at_p_one_bootstraps_from_the_frozen_offline_critic():
  """SAMG eq. 4 (baselines.md §9a) on CORL's CQL target (no backup entropy): with p = 1,
  y = r + gamma (1-d) min_k Q_off,k(s', a'), a' ~ pi(.|s') (the key of the target), Q_off frozen."""
  state = at_p_one(samg_pair("cql"))
  b, key = samg_batch(), jax.random.PRNGKey(3)
  np.testing.assert_array_equal(samg.weight(state, b.observations, b.actions), 1.0)
  assert not state.config.base_config.backup_entropy
  target = jax.jit(lambda st, bb, k: sac.soft_td_target(st.base.sac, bb, k, samg.next_value_hook(st)))(
      state, b, key)
  a2, _ = sac.policy(state.base.sac, b.next_observations).sample_and_log_prob(seed=key)
  critic = state.base.sac.critic
  q_off = np.asarray(critic.apply_fn(state.offline_params, b.next_observations, a2), np.float64).min(0)
  gamma = state.config.base_config.discount
  expected = np.asarray(b.rewards, np.float64) + gamma * (1 - np.asarray(b.terminals)) * q_off
  close(target, expected, rtol=1e-5, atol=1e-5)
  own = jax.jit(sac.soft_td_target)(state.base.sac, b, key)
  assert float(jnp.abs(own - target).max()) > 1e-3


def test_samg_awac_at_p_one_bootstraps_from_the_frozen_offline_critic():
  """SAMG eq. 4 (baselines.md §9a) on CORL's AWAC update: with p = 1, y = r + gamma (1-d)
  min_k Q_off,k(s', a'), a' = clip(pi(.|s') sample, +-1) with the update's next-action key; the critic
  loss sum_k mean_b (Q_k(s, a) - y)^2 at the base's own critic."""
  state = at_p_one(samg_pair("awac"))
  b, key = samg_batch(), jax.random.PRNGKey(4)
  _, info = jax.jit(samg.update)(state, b, key)
  k_next, _ = jax.random.split(key)
  base = state.base
  a2 = jnp.clip(base.actor.apply_fn(base.actor.params, b.next_observations).sample(seed=k_next), -1.0, 1.0)
  q_off = np.asarray(base.critic.apply_fn(state.offline_params, b.next_observations, a2), np.float64).min(0)
  y = np.asarray(b.rewards, np.float64) + base.config.discount * (1 - np.asarray(b.terminals)) * q_off
  q = np.asarray(base.critic.apply_fn(base.critic.params, b.observations, b.actions), np.float64)
  close(info["samg_weight"], 1.0, atol=0)
  close(info["target_mean"], y.mean(), rtol=1e-5, atol=1e-5)
  close(info["critic_loss"], np.sum(np.mean((q - y) ** 2, -1)), rtol=1e-5)
  q_own = np.asarray(base.critic.apply_fn(base.target_critic_params, b.next_observations, a2)).min(0)
  assert np.abs(q_own - q_off).max() > 1e-3                     # Q_off is not the base's own target


def _fit_latents(state, observations, actions):
  """Latent statistics fitted to the encoder means of these pairs (threshold 0: p = p_int in (0, 1))."""
  means = samg.encoder_means(state.cvae_params, state.config, observations * state.obs_std + state.obs_mean,
                             actions)
  return state.replace(latent_mean=means.mean(0), latent_std=means.std(0))


@pytest.mark.parametrize("base", ["awac", "iql"])
def test_samg_weight_at_next_weighs_the_next_pair(base):
  """SAMG's `weight_at="next"` (baselines.md §9a: "some of its Bellman-form prose suggests
  p(s', a')"): eq. 4's mix uses p(s', a'), with a' the target's next action (AWAC) or, for IQL's
  value target, pi's deterministic action at s': mixed = (1 - p(s', a')) v + p(s', a') Q_off(s', a')
  (V_off(s') for IQL). p(s, a) of the transition differs, so using it fails."""
  state = samg_pair(base, weight_at="next", threshold=0.0)
  b = samg_batch(2)
  state = _fit_latents(state, b.observations, b.actions)
  rng = np.random.default_rng(7)
  values = jnp.asarray(rng.normal(size=8) * 3.0, jnp.float32)
  if base == "awac":
    a2 = jnp.asarray(rng.uniform(-0.9, 0.9, (8, ACT)), jnp.float32)
    q_off = state.base.critic.apply_fn(state.offline_params, b.next_observations, a2).min(0)
  else:
    a2 = iql.act(state.base, b.next_observations, jax.random.PRNGKey(0), False)
    q_off = state.base.value.apply_fn(state.offline_params, b.next_observations)
  mixed = jax.jit(lambda st, bb, a, v: samg.next_value_hook(st)(bb, a, v))(
      state, b, a2 if base == "awac" else None, values)
  p_next = np.asarray(samg.weight(state, b.next_observations, a2), np.float64)
  p_sa = np.asarray(samg.weight(state, b.observations, b.actions), np.float64)
  v, q_off = np.asarray(values, np.float64), np.asarray(q_off, np.float64)
  close(mixed, (1 - p_next) * v + p_next * q_off, rtol=1e-5, atol=1e-5)
  assert np.abs((p_next - p_sa) * (q_off - v)).max() > 0.05


def test_samg_weight_undoes_the_observation_normalisation():
  """SAMG trains its C-VAE on raw states ("do not normalize states", baselines.md §9a; cvae_raw_states):
  the agent's observations x = (s - mean) / std are mapped back to s = x std + mean before the encoder,
  p(x, a) = confidence_weight(mu_phi(x std + mean, a)). Statistics far from the identity, so skipping
  (or inverting) the map changes p; with cvae_raw_states=False the encoder sees x itself."""
  state = samg_pair("iql", threshold=0.0)
  mean = jnp.asarray([1.0, -2.0, 0.5, 3.0, -1.0])
  std = jnp.asarray([2.0, 0.5, 1.5, 3.0, 0.25])
  state = state.replace(obs_mean=mean, obs_std=std)
  b = samg_batch(3)
  state = _fit_latents(state, b.observations, b.actions)
  raw = np.asarray(b.observations, np.float64) * np.asarray(std) + np.asarray(mean)
  mu = samg.encoder_means(state.cvae_params, state.config, jnp.asarray(raw, jnp.float32), b.actions)
  expected = np.asarray(samg.confidence_weight(mu, state.latent_mean, state.latent_std, 0.0), np.float64)
  got = np.asarray(samg.weight(state, b.observations, b.actions), np.float64)
  close(got, expected, rtol=1e-5, atol=1e-6)
  wrong = samg.encoder_means(state.cvae_params, state.config, b.observations, b.actions)
  wrong = np.asarray(samg.confidence_weight(wrong, state.latent_mean, state.latent_std, 0.0))
  assert np.abs(wrong - expected).max() > 0.05
  normalised = state.replace(config=dataclasses.replace(state.config, cvae_raw_states=False))
  close(samg.weight(normalised, b.observations, b.actions), wrong, rtol=1e-5, atol=1e-6)


def test_cvae_gaussian_kl_by_hand():
  """KL(N(m, s^2) || N(0, 1)) = 0.5 (m^2 + s^2 - 1) - log s per latent dimension; at (m = 1, s = 2):
  0.5 (1 + 4 - 1) - log 2 = 1.3069. The C-VAE loss (SAMG eq. 2 with BCQ's reductions, `BCQ.py`
  `VAE` training: F.mse_loss(recon, target) + 0.5 * KL.mean()) is MSE(s', s'_hat) + beta_KL mean KL."""
  kl = samg.gaussian_kl(jnp.asarray([1.0, 0.0, -1.0, 0.5]), jnp.asarray([2.0, 1.0, 0.5, 1.0]))
  expected = np.array([2.0 - np.log(2.0), 0.0, 0.125 + np.log(2.0), 0.125])
  assert expected[0] == pytest.approx(0.5 * (1 + 4 - 1) - np.log(2.0))
  close(kl, expected, rtol=1e-6, atol=1e-7)
  # In the loss, through a fake C-VAE that returns fixed (recon, mean, std).
  recon = np.arange(12.0).reshape(3, 4) / 10.0
  mean, std = np.tile([1.0, 0.0, -1.0, 0.5], (3, 1)), np.tile([2.0, 1.0, 0.5, 1.0], (3, 1))
  fake = lambda params, obs, act, key: (jnp.asarray(recon, jnp.float32), jnp.asarray(mean, jnp.float32),
                                        jnp.asarray(std, jnp.float32))
  config = samg.Config(kl_weight=0.5).resolved(ACT)
  state = samg.CVAEState(vae=make_train_state(None, {}, 1e-3).replace(apply_fn=fake), config=config)
  nxt = np.ones((3, 4))
  batch = f32(Transition(observations=np.zeros((3, 4)), actions=np.zeros((3, ACT)), rewards=np.zeros(3),
                         next_observations=nxt, terminals=np.zeros(3)))
  loss, info = samg.cvae_loss({}, state, batch, jax.random.PRNGKey(0))
  recon_loss = np.mean((recon - nxt) ** 2)
  close(info["kl"], expected.mean(), rtol=1e-6)
  close(loss, recon_loss + 0.5 * expected.mean(), rtol=1e-6)
