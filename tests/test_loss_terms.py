"""Loss terms on hand-computed cases where each term is non-zero (issue #24, gaps 1, 2 and 4).

Gap 1, bootstrap targets: non-terminal rows (one terminal row among four), fake critics whose target
  members disagree (Q'_1 != Q'_2, and the minimum switches member between rows), online parameters
  that differ from the target ones, and a fixed key whose noise is reproduced by hand.
Gap 2, actors ascend Q: a fixed quadratic critic Q_k = -K - sum_j (a_j - c_k,j)^2 and a bias-only
  actor; the first step is checked against the hand gradient and the fixed point against the
  analytic optimum (TD3+BC's and the SAC-style actors' computed below).
Gap 4, IQL/AWAC/CQL beyond finiteness: AWR/AWAC weights and signs, CQL's importance-sampled
  log-sum-exp (uniform density, next-state actions at s), the Lagrange multiplier alpha'.

Fakes: a TrainState's `apply_fn` is swapped for a small function of explicit parameters
(`tests/test_offline.py` `_fake_state` pattern). Expected values are computed in float64 numpy.
Not repeated here (pinned elsewhere): IQL's V(s') timing and CQL's pre-update actor step
(tests/test_offline.py), O2SAC/O2TD3 pre-update orderings (tests/test_ocr_cft.py).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

from o2o_jax import networks
from o2o_jax.agents.common import TrainState, make_train_state, strong_types
from o2o_jax.agents.o2o import aca, o2sac, o2td3
from o2o_jax.agents.offline import awac, cql, iql, td3_bc
from o2o_jax.agents.online import sac, td3
from o2o_jax.types import Transition

OBS, ACT = 3, 2
GAMMA = 0.9                 # not any default, so a hard-coded discount shows
LOG_2PI = np.log(2 * np.pi)
KEY = jax.random.PRNGKey(0)

# Four transitions, the second terminal; s' != s everywhere.
S = np.array([[0.5, -1.0, 0.3], [-0.2, 0.4, 1.0], [1.2, 0.1, -0.5], [-0.7, -0.6, 0.2]])
S2 = np.array([[0.1, 0.9, -0.4], [0.6, -0.3, 0.2], [-1.0, 0.5, 0.7], [0.3, 0.2, -0.9]])
A_DATA = np.array([[0.2, -0.4], [0.7, 0.1], [-0.5, 0.9], [0.0, -0.8]])
R = np.array([1.0, -2.0, 0.5, 3.0])
D = np.array([0.0, 1.0, 0.0, 0.0])
MASK = 1.0 - D
BATCH = Transition(*(jnp.asarray(x, jnp.float32) for x in (S, A_DATA, R, S2, D)))

# Linear critics Q_k(s, a) = w_k . a + u_k . s + c_k: target and online parameters differ.
TARGET_CRITIC = {"w": np.array([[1.0, -0.5], [-0.3, 0.8]]),
                 "u": np.array([[0.5, 0.0, -0.2], [-0.4, 0.3, 0.1]]), "c": np.array([0.2, -0.1])}
ONLINE_CRITIC = {"w": np.array([[-0.6, 0.4], [0.9, 0.2]]),
                 "u": np.array([[0.1, -0.3, 0.6], [0.2, 0.2, -0.5]]), "c": np.array([1.2, 0.9])}

# Actor parameters of the distinct policies a state may hold.
B_ONLINE, B_TARGET = np.array([0.1, -0.2]), np.array([0.9, 0.6])
B_REF, B_OFF = np.array([-0.5, 0.3]), np.array([0.4, -0.7])


def f32(tree):
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), tree)


def fake_ts(params, apply_fn, lr=1e-3, sgd=False):
  """A TrainState over explicit parameters with a hand-written `apply_fn` (Adam, or plain SGD)."""
  if sgd:
    return strong_types(TrainState.create(apply_fn=apply_fn, params=f32(params), tx=optax.sgd(lr)))
  return make_train_state(None, f32(params), lr).replace(apply_fn=apply_fn)


def linear_critic(p, o, a):
  """(N, *batch) for observations (*batch, OBS) and actions (*batch, ACT)."""
  q = jnp.einsum("...a,na->n...", a, p["w"]) + jnp.einsum("...o,no->n...", o, p["u"])
  return q + p["c"].reshape((-1,) + (1,) * (q.ndim - 1))


def q_np(p, o, a):
  return np.einsum("ba,na->nb", a, p["w"]) + np.einsum("bo,no->nb", o, p["u"]) + p["c"][:, None]


def det_actor(p, o):
  """a = tanh(b + s[:ACT])."""
  return jnp.tanh(p["b"] + o[..., :ACT])


def tanh_gaussian_actor(p, o):
  """tanh(N(b + s[:ACT], exp(log_std)^2)): the real TanhGaussian distribution."""
  loc = p["b"] + o[..., :ACT]
  return networks.TanhGaussian(loc, jnp.broadcast_to(jnp.exp(p["log_std"]), loc.shape))


class PointPolicy:
  """A fake policy distribution for key-independent hand computations: every sample is the point
  tanh(loc) (or loc), `sample_and_log_prob` reports `sample_log_prob`, and `log_prob(a)` is the unit
  Gaussian's log-density around loc, -|a - loc|^2 / 2 - |A|/2 log 2 pi."""

  def __init__(self, loc, sample_log_prob, squash=True):
    self.loc, self.lp, self.squash = loc, sample_log_prob, squash

  def _point(self):
    return jnp.tanh(self.loc) if self.squash else self.loc

  def sample(self, seed):
    return self._point()

  def sample_and_log_prob(self, seed):
    return self._point(), self.lp

  def mode(self):
    return self._point()

  def log_prob(self, a):
    return -0.5 * jnp.sum(jnp.square(a - self.loc), -1) - 0.5 * ACT * LOG_2PI


def sample_lp(o):
  """The log-density PointPolicy reports for its samples at s: -1.5 + 0.5 s_0."""
  return -1.5 + 0.5 * o[..., 0]


def point_actor(p, o):
  return PointPolicy(p["b"] + o[..., :ACT], sample_lp(o))


def unsquashed_point_actor(p, o):
  return PointPolicy(p["b"] + o[..., :ACT], sample_lp(o), squash=False)


def smoothed_by_hand(b, key, sigma, clip):
  """TD3's clip(tanh(b + s'[:ACT]) + clip(sigma eps, -c, c), -1, 1), eps = N(0, 1) of `key`; the
  case is checked to exercise both clips."""
  raw = sigma * np.asarray(jax.random.normal(key, (len(R), ACT)), np.float64)
  assert (np.abs(raw) > clip).any() and (np.abs(raw) < clip).any()
  a = np.tanh(b + S2[:, :ACT]) + np.clip(raw, -clip, clip)
  assert (np.abs(a) > 1).any()
  return np.clip(a, -1.0, 1.0)


def min_target_q(o, a):
  """min_k Q'_k(o, a); the case is checked so that each target member is the minimum somewhere."""
  q = q_np(TARGET_CRITIC, o, a)
  assert len(set(q.argmin(0))) == 2, q
  return q.min(0)


def with_critics(state, lr=1e-3):
  return state.replace(critic=fake_ts(ONLINE_CRITIC, linear_critic, lr),
                       target_critic_params=f32(TARGET_CRITIC))


# ============================================================================ gap 1: bootstrap targets

TD3_NOISE, TD3_CLIP, TD3_KEY = 0.6, 0.25, jax.random.PRNGKey(7)


def td3_like_state(state, actor_fn=det_actor):
  fields = {"actor": fake_ts({"b": B_ONLINE}, actor_fn), "target_actor_params": f32({"b": B_TARGET})}
  for name in ("offline_actor_params", "reference_actor_params"):
    if hasattr(state, name):
      fields[name] = f32({"b": B_OFF if name == "offline_actor_params" else B_REF})
  return with_critics(state.replace(**fields))


def test_td3_target_is_the_min_of_the_target_critics_at_the_smoothed_target_action():
  """y = r + gamma (1-d) min_k Q'_k(s', clip(pi'(s') + clip(sigma eps, -c, c), -1, 1)):
  CORL `td3_bc.py` `TD3_BC.train` (the authors' TD3 too): `noise = (randn_like(action) *
  policy_noise).clamp(-noise_clip, noise_clip)`, `next_action = (actor_target(next_state) +
  noise).clamp(-max_action, max_action)`, `target_q = reward + not_done * discount * min(target_q1,
  target_q2)`. Hand case: pi' = tanh(b' + s'), b' the *target* actor's parameters (the online
  actor's differ), Q' the target critics' (the online ones differ), sigma 0.6 and c 0.25 so that
  the key's noise is clipped on some entries and not on others, one action clipped to the box,
  gamma 0.9, row 2 terminal. `td3.update` reports the same target (TD3+BC shares it)."""
  cfg = td3.Config(hidden_dims=(8,), discount=GAMMA, policy_noise=TD3_NOISE, noise_clip=TD3_CLIP)
  state = td3_like_state(td3.init(KEY, OBS, ACT, cfg))
  expected = R + GAMMA * MASK * min_target_q(S2, smoothed_by_hand(B_TARGET, TD3_KEY, TD3_NOISE, TD3_CLIP))
  np.testing.assert_allclose(td3.td_target(state, BATCH, TD3_KEY), expected, rtol=1e-5, atol=1e-5)
  _, info = jax.jit(td3.update)(state, BATCH, TD3_KEY)
  assert float(info["target_mean"]) == pytest.approx(expected.mean(), abs=1e-5)


def test_o2td3_finetune_target_with_lambda_zero_uses_the_target_actor():
  """O2TD3's fine-tuning target at lambda = 0 (direct fine-tuning): y = r + gamma (1-d) min_k
  Q'_k(s', clip(pi'(s') + clip(sigma eps, -c, c), -1, 1)), pi' the target actor (official OCR-CFT
  `finetune/online_agent/td3.py` `TD3.update`: `next_action = (self.actor_target(next_state) +
  noise).clamp(...)`, `target_q = min(target_q1, target_q2) - lmbda * mse(...)`; the lambda term is
  tests/test_o2o_terms.py's). Same hand case as TD3's; pi_on, pi_ref and pi_off all differ from pi'."""
  cfg = o2td3.Config(hidden_dims=(8,), critic_hidden_dims=(8,), discount=GAMMA, policy_noise=TD3_NOISE,
                     noise_clip=TD3_CLIP, constrain=False)
  state = td3_like_state(o2td3.init(KEY, OBS, ACT, cfg))
  expected = R + GAMMA * MASK * min_target_q(S2, smoothed_by_hand(B_TARGET, TD3_KEY, TD3_NOISE, TD3_CLIP))
  _, info = jax.jit(o2td3.finetune_step)(state, BATCH, TD3_KEY)
  assert float(info["target_mean"]) == pytest.approx(expected.mean(), abs=1e-5)


def test_o2td3_reevaluation_target_bootstraps_from_the_offline_actor():
  """Policy re-evaluation (eq. 6; official `TD3.ope`: `next_action = (self.actor_target(next_state)
  + noise)`, the target actor being pi_off's copy there): y = r + gamma (1-d) min_k Q'_k(s',
  clip(pi_off(s') + clip(sigma eps, -c, c), -1, 1)). Hand case as TD3's with pi_off = tanh(b_off + s')."""
  cfg = o2td3.Config(hidden_dims=(8,), critic_hidden_dims=(8,), discount=GAMMA, policy_noise=TD3_NOISE,
                     noise_clip=TD3_CLIP)
  state = td3_like_state(o2td3.init(KEY, OBS, ACT, cfg))
  key = jax.random.PRNGKey(5)
  expected = R + GAMMA * MASK * min_target_q(S2, smoothed_by_hand(B_OFF, key, TD3_NOISE, TD3_CLIP))
  _, info = jax.jit(o2td3.reevaluate_step)(state, BATCH, key)
  assert float(info["target_mean"]) == pytest.approx(expected.mean(), abs=1e-5)


SAC_ACTOR = {"b": B_ONLINE, "log_std": np.array([-0.5, 0.2])}
SAC_KEY = jax.random.PRNGKey(5)


def soft_target_by_hand(p, key, alpha, entropy=True):
  """r + gamma (1-d) (min_k Q'_k(s', a') - alpha log pi(a'|s')), a' = tanh(u), u = mu(s') + sigma eps,
  log pi = sum_j [log N(eps_j) - log sigma_j - log(1 - tanh(u_j)^2)] (change of variables)."""
  eps = np.asarray(jax.random.normal(key, (len(R), ACT)), np.float64)
  sigma = np.exp(p["log_std"])
  u = p["b"] + S2[:, :ACT] + sigma * eps
  logp = np.sum(-0.5 * eps ** 2 - 0.5 * LOG_2PI - np.log(sigma) - np.log(1 - np.tanh(u) ** 2), -1)
  value = min_target_q(S2, np.tanh(u))
  if entropy:
    assert np.abs(alpha * logp).mean() > 0.2        # the entropy term is visible
    value = value - alpha * logp
  return R + GAMMA * MASK * value


@pytest.mark.parametrize("backup_entropy", [True, False])
def test_sac_target_has_the_entropy_backup(backup_entropy):
  """y = r + gamma (1-d) (min_k Q'_k(s', a') - alpha log pi(a'|s')), a' ~ pi(.|s') (Haarnoja et al.
  2018, eq. 3 with the soft value; CORL `cql.py` `ContinuousCQL._q_loss` with `backup_entropy`:
  `target_q_values = target_q_values - alpha * next_log_pi`). Hand case: the real tanh-Gaussian
  with mu(s') = b + s'[:2], sigma = exp([-0.5, 0.2]), eps reproduced from the key, alpha 0.5;
  without `backup_entropy` the alpha term is absent."""
  cfg = sac.Config(hidden_dims=(8,), discount=GAMMA, init_alpha=0.5, backup_entropy=backup_entropy)
  state = with_critics(sac.init(KEY, OBS, ACT, cfg)).replace(actor=fake_ts(SAC_ACTOR, tanh_gaussian_actor))
  expected = soft_target_by_hand(SAC_ACTOR, SAC_KEY, 0.5, entropy=backup_entropy)
  np.testing.assert_allclose(sac.soft_td_target(state, BATCH, SAC_KEY), expected, rtol=1e-5, atol=1e-5)


def test_o2sac_reevaluation_target_is_the_soft_backup_of_pi_off():
  """Policy re-evaluation of O2SAC (eq. 3 with pi = pi_off; official `finetune/online_agent/sac.py`
  `SAC.ope`): y = r + gamma (1-d) (min_k Q'_k(s', a') - alpha log pi_off(a'|s')), a' ~ pi_off(.|s'),
  alpha = init_alpha (fixed). Hand case as SAC's with pi_off's parameters (pi_on's differ)."""
  cfg = o2sac.Config(hidden_dims=(8,), critic_hidden_dims=(8,), discount=GAMMA, init_alpha=0.5)
  off = {"b": B_OFF, "log_std": np.array([0.1, -0.4])}
  state = with_critics(o2sac.init(KEY, OBS, ACT, cfg)).replace(
      actor=fake_ts(SAC_ACTOR, tanh_gaussian_actor), offline_actor_params=f32(off),
      reference_actor_params=f32(off))
  expected = soft_target_by_hand(off, SAC_KEY, 0.5)
  _, info = jax.jit(o2sac.reevaluate_step)(state, BATCH, SAC_KEY)
  assert float(info["target_mean"]) == pytest.approx(expected.mean(), abs=1e-5)


def o2sac_point_state(cfg):
  return with_critics(o2sac.init(KEY, OBS, ACT, cfg)).replace(
      actor=fake_ts({"b": B_ONLINE}, point_actor), offline_actor_params=f32({"b": B_OFF}),
      reference_actor_params=f32({"b": B_REF}))


def point_target_by_hand(b, alpha=0.0, squash=True):
  """r + gamma (1-d) (min_k Q'_k(s', a') - alpha L(s')) with PointPolicy's a' = tanh(b + s'[:2]) (or
  its clip to the box) and L(s') = -1.5 + 0.5 s'_0."""
  loc = b + S2[:, :ACT]
  a = np.tanh(loc) if squash else np.clip(loc, -1.0, 1.0)
  return R + GAMMA * MASK * (min_target_q(S2, a) - alpha * sample_lp(S2))


def test_o2sac_finetune_target_with_lambda_zero_has_the_entropy_backup():
  """O2SAC's fine-tuning target at lambda = 0: y = r + gamma (1-d) (min_k Q'_k(s', a') - alpha log
  pi(a'|s')), a' ~ pi_on(.|s') at alpha before this step (official `SAC._q_loss`: `target_q_values -
  alpha * next_log_pi - lmbda * (next_log_pi - offline_next_log_pi)`; the lambda term is
  tests/test_o2o_terms.py's). Hand case: a point policy (a' = tanh(b_on + s'[:2]), log pi = -1.5 +
  0.5 s'_0, independent of the key), alpha 0.5; pi_ref and pi_off differ from pi_on."""
  cfg = o2sac.Config(hidden_dims=(8,), critic_hidden_dims=(8,), discount=GAMMA, init_alpha=0.5,
                     constrain=False, utd=1, alpha_lr=0.1)
  state = o2sac_point_state(cfg)
  _, info = jax.jit(o2sac.finetune_step)(state, BATCH, KEY)
  assert float(info["target_mean"]) == pytest.approx(point_target_by_hand(B_ONLINE, 0.5).mean(), abs=1e-5)
  # The temperature step (official `SAC._alpha_and_alpha_loss`, -log alpha (log pi + H), H = -|A|):
  # mean_s log pi(a|s) + H = mean(-1.5 + 0.5 s_0) - 2 = -3.4 < 0, so Adam's first step lowers log
  # alpha by lr: alpha = 0.5 e^-0.1.
  assert np.mean(sample_lp(S)) - ACT < 0
  assert float(info["alpha"]) == pytest.approx(0.5 * np.exp(-0.1), rel=1e-5)


@pytest.mark.parametrize("backup_entropy", [False, True])
def test_cql_target_has_no_entropy_backup_by_default(backup_entropy):
  """CQL's target: y = r + gamma (1-d) min_k Q'_k(s', a'), a' ~ pi(.|s'), *without* the entropy term
  by default (CORL `cql.py`: `backup_entropy: bool = False`; `ContinuousCQL._q_loss` subtracts
  `alpha * next_log_pi` only when it is set). Hand case: the point policy (a' = tanh(b + s'[:2]),
  log pi = -1.5 + 0.5 s'_0), alpha 0.5, read from `cql.update`'s `target_mean`."""
  cfg = cql.Config(hidden_dims=(8,), discount=GAMMA, init_alpha=0.5, cql_n_actions=3)
  if backup_entropy:
    cfg = dataclasses.replace(cfg, backup_entropy=True)
  state = cql.init(KEY, OBS, ACT, cfg)
  state = state.replace(sac=with_critics(state.sac).replace(actor=fake_ts({"b": B_ONLINE}, point_actor)))
  _, info = jax.jit(cql.update)(state, BATCH, KEY)
  expected = point_target_by_hand(B_ONLINE, 0.5 if backup_entropy else 0.0)
  assert float(info["target_mean"]) == pytest.approx(expected.mean(), abs=1e-5)


def test_awac_target_bootstraps_from_the_clipped_policy_action():
  """AWAC's target: y = r + gamma (1-d) min_k Q'_k(s', a'), a' ~ pi(.|s') clipped to the box, no
  entropy term (CORL `awac.py` `AdvantageWeightedActorCritic._critic_loss`: `q_next = min(
  target_critic_1(next_states, next_actions), target_critic_2(...))`, `q_target = rewards + gamma *
  (1 - dones) * q_next`). Hand case: an unsquashed point policy a' = clip(b + s'[:2], -1, 1) with b
  = (0.9, 0.6), so that some a' are clipped; the online critics differ from the targets."""
  cfg = awac.Config(hidden_dims=(8,), discount=GAMMA)
  state = with_critics(awac.init(KEY, OBS, ACT, cfg)).replace(
      actor=fake_ts({"b": B_TARGET}, unsquashed_point_actor))
  assert (np.abs(B_TARGET + S2[:, :ACT]) > 1).any()
  _, info = jax.jit(awac.update)(state, BATCH, KEY)
  expected = point_target_by_hand(B_TARGET, squash=False)
  assert float(info["target_mean"]) == pytest.approx(expected.mean(), abs=1e-5)


def test_aca_baseline_target_bootstraps_log_pi_plus_z_minus_the_entropy_term():
  """ACA's offline baseline Z (SAC+ML stage, aca.py docstring §3a, the aligned critic log pi + Z):
  L_Z = sum_j mean_i (log pi(a_i|s_i) + Z_j(s_i) - y_i)^2,
  y = r + gamma (1-d) [log pi(a'|s') + min_j Z_j(s') - alpha log pi(a'|s')], a' ~ pi(.|s').
  Hand case: the real tanh-Gaussian (mu(s) = b + s[:2], sigma = exp([-0.5, 0.2])) with the key's eps
  reproduced, log pi(a|s) of the data actions by the change of variables at atanh(a), linear
  baselines Z_j(s) = v_j . s + c_j whose minimum switches member between rows, alpha 0.5, gamma 0.9,
  row 2 terminal."""
  z_params = {"v": np.array([[0.4, -0.2, 0.1], [-0.3, 0.5, 0.2]]), "c": np.array([0.1, -0.2])}
  cfg = aca.Config(hidden_dims=(8,), init_alpha=0.5, discount=GAMMA)
  state = aca.init(KEY, OBS, ACT, cfg).replace(
      actor=fake_ts(SAC_ACTOR, tanh_gaussian_actor),
      baseline=fake_ts(z_params, lambda p, o: jnp.einsum("...o,no->n...", o, p["v"]) + p["c"][:, None]))
  loss, _ = aca.baseline_loss(state.baseline.params, state, BATCH, SAC_KEY)
  sigma = np.exp(SAC_ACTOR["log_std"])
  eps = np.asarray(jax.random.normal(SAC_KEY, (len(R), ACT)), np.float64)
  u_next = SAC_ACTOR["b"] + S2[:, :ACT] + sigma * eps
  logp_next = np.sum(-0.5 * eps ** 2 - 0.5 * LOG_2PI - np.log(sigma) - np.log(1 - np.tanh(u_next) ** 2), -1)
  u_data = np.arctanh(A_DATA)
  z_data = (u_data - SAC_ACTOR["b"] - S[:, :ACT]) / sigma
  logp_data = np.sum(-0.5 * z_data ** 2 - 0.5 * LOG_2PI - np.log(sigma) - np.log(1 - A_DATA ** 2), -1)
  z_next = S2 @ z_params["v"].T + z_params["c"]
  assert len(set(z_next.argmin(1))) == 2
  y = R + GAMMA * MASK * (logp_next + z_next.min(1) - 0.5 * logp_next)
  z = S @ z_params["v"].T + z_params["c"]                                  # (B, N)
  expected = np.sum(np.mean((logp_data[:, None] + z - y[:, None]) ** 2, 0))
  assert float(loss) == pytest.approx(expected, rel=1e-5)


# --- IQL: a linear value V(s) = v . s + v0 ---------------------------------------------------------

V_PARAMS = {"v": np.array([-1.0, 0.8, 0.4]), "v0": np.array(-0.5)}


def linear_value(p, o):
  return o @ p["v"] + p["v0"]


def iql_state(cfg):
  state = with_critics(iql.init(KEY, OBS, ACT, cfg))
  actor_fn = (lambda p, o: jnp.broadcast_to(p["b"], o.shape[:-1] + (ACT,))) if cfg.deterministic \
      else unsquashed_point_actor
  return state.replace(value=fake_ts(V_PARAMS, linear_value), actor=fake_ts({"b": B_ONLINE}, actor_fn))


def test_iql_q_target_bootstraps_from_v_of_the_next_state():
  """y = r + gamma (1-d) V(s') (CORL `iql.py` `ImplicitQLearning._update_q`: `targets = rewards +
  (1.0 - terminals.float()) * self.discount * next_v.detach()`). Hand case: V(s) = v . s - 0.5
  varies with the state (s' != s), gamma 0.9, row 2 terminal. (That V is read before its own step
  is tests/test_offline.py's `test_iql_q_target_uses_the_value_before_its_step`.)"""
  state = iql_state(iql.Config(hidden_dims=(8,), discount=GAMMA))
  _, info = jax.jit(iql.update)(state, BATCH, KEY)
  v_next = S2 @ V_PARAMS["v"] + V_PARAMS["v0"]
  assert float(info["target_mean"]) == pytest.approx(np.mean(R + GAMMA * MASK * v_next), abs=1e-5)


@pytest.mark.parametrize("v_target", ["min", "mean"])
def test_iql_value_loss_and_awr_weights_use_the_target_critics_advantage(v_target):
  """IQL's value step and AWR weights (CORL `iql.py` `ImplicitQLearning._update_v`: `target_q =
  self.q_target(observations, actions)` (the twin minimum), `adv = target_q - v`, `v_loss =
  asymmetric_l2_loss(adv, iql_tau)` = mean(|tau - 1(adv < 0)| adv^2); `_update_policy`: `exp_adv =
  exp(beta * adv).clamp(max=100)`). Hand case: Q' of the target critics at the data (s, a), V(s) =
  v . s - 0.5, tau 0.7, beta 3: the advantages have both signs and one weight is clipped at 100.
  O3F's `v_target="mean"` averages the critics instead of taking the minimum."""
  state = iql_state(iql.Config(hidden_dims=(8,), discount=GAMMA, v_target=v_target))
  _, info = jax.jit(iql.update)(state, BATCH, KEY)
  q = q_np(TARGET_CRITIC, S, A_DATA)
  q = q.min(0) if v_target == "min" else q.mean(0)
  adv = q - (S @ V_PARAMS["v"] + V_PARAMS["v0"])
  assert (adv > 0).any() and (adv < 0).any() and (3 * adv > np.log(100)).any()
  value_loss = np.mean(np.where(adv > 0, 0.7, 0.3) * adv ** 2)
  assert float(info["value_loss"]) == pytest.approx(value_loss, rel=1e-5)
  assert float(info["awr_weight_mean"]) == pytest.approx(np.mean(np.minimum(np.exp(3 * adv), 100)),
                                                         rel=1e-5)


# ============================================================================ gap 2: actors ascend Q

C1, C2 = np.array([0.6, -0.4]), np.array([-0.5, 0.2])    # optima of Q_1 and Q_2
A0 = np.array([-0.2, 0.5])                               # the bias-only actor's start
ACTOR_LR = 0.1


def quadratic_critic(offset, centres=(C1, C2)):
  """Q_k(s, a) = -offset - sum_j (a_j - c_k,j)^2 for every state; ignores its parameters (so critic
  steps leave it fixed)."""
  cs = jnp.asarray(np.stack(centres), jnp.float32)

  def apply(p, o, a):
    return jnp.stack([-offset - jnp.sum(jnp.square(a - c), -1) for c in cs])

  return apply


def bias_actor(p, o):
  """a = p["a"] for every state."""
  return jnp.broadcast_to(p["a"], o.shape[:-1] + (ACT,))


def deterministic_quadratic_state(state, offset):
  params = {"a": A0}
  fields = dict(actor=fake_ts(params, bias_actor, ACTOR_LR, sgd=True),
                critic=fake_ts({"unused": np.zeros(1)}, quadratic_critic(offset)),
                target_critic_params=f32({"unused": np.zeros(1)}), target_actor_params=f32(params))
  for name in ("offline_actor_params", "reference_actor_params"):
    if hasattr(state, name):
      fields[name] = f32(params)
  return state.replace(**fields)


def actor_trajectory(step, state, n, batch=BATCH):
  """The actor parameters after each of n jitted steps (one scan)."""
  @jax.jit
  def run(state):
    def body(s, k):
      s, _ = step(s, batch, k)
      return s, s.actor.params
    return jax.lax.scan(body, state, jax.random.split(jax.random.PRNGKey(11), n))[1]
  return jax.tree_util.tree_map(np.asarray, run(state))


def test_td3_actor_ascends_the_first_critic_to_its_optimum():
  """TD3's actor minimises -E[Q_1(s, pi(s))] (Fujimoto et al. 2018; CORL `td3_bc.py` without the BC
  term: `actor_loss = -self.critic_1(state, pi).mean()`). With Q_k = -sum (a - c_k)^2 and a bias-only
  actor, the SGD step is a <- a - lr 2 (a - c_1) (Q_2's optimum c_2 plays no part) and a -> c_1."""
  state = deterministic_quadratic_state(td3.init(KEY, OBS, ACT, td3.Config(hidden_dims=(8,), policy_freq=1)),
                                        offset=0.0)
  traj = actor_trajectory(td3.update, state, 150)["a"]
  np.testing.assert_allclose(traj[0], A0 - ACTOR_LR * 2 * (A0 - C1), rtol=1e-5)
  np.testing.assert_allclose(traj[-1], C1, atol=1e-4)


def test_o2td3_alignment_actor_ascends_the_first_critic_to_its_optimum():
  """O2TD3's alignment actor step: -E[Q_1(s, pi_on(s))] (official `TD3.align_value`: `actor_q =
  self.critic_1(state, self.actor(state))`, `actor_loss = -actor_q.mean()`). Same hand case as
  TD3's: a -> c_1."""
  cfg = o2td3.Config(hidden_dims=(8,), critic_hidden_dims=(8,))
  state = deterministic_quadratic_state(o2td3.init(KEY, OBS, ACT, cfg), offset=0.0)
  traj = actor_trajectory(o2td3.align_step, state, 150)["a"]
  np.testing.assert_allclose(traj[0], A0 - ACTOR_LR * 2 * (A0 - C1), rtol=1e-5)
  np.testing.assert_allclose(traj[-1], C1, atol=1e-4)


def test_o2td3_finetune_actor_ascends_the_normalised_first_critic():
  """O2TD3's fine-tuning actor at lambda = 0: -Q_1 / mean|Q_1| (detached; official `TD3.update`:
  `q_weight = 1.0 / actor_q.abs().mean().detach()`, `actor_loss = - q_weight * actor_q.mean() +
  lmbda * F.mse_loss(...)`). With Q_1 = -1 -
  |a - c_1|^2 the first SGD step is a <- a - lr 2 (a - c_1) / (1 + |a - c_1|^2) and a -> c_1."""
  cfg = o2td3.Config(hidden_dims=(8,), critic_hidden_dims=(8,), constrain=False, policy_freq=1)
  state = deterministic_quadratic_state(o2td3.init(KEY, OBS, ACT, cfg), offset=1.0)
  traj = actor_trajectory(o2td3.finetune_step, state, 200)["a"]
  e0 = A0 - C1
  np.testing.assert_allclose(traj[0], A0 - ACTOR_LR * 2 * e0 / (1 + e0 @ e0), rtol=1e-5)
  np.testing.assert_allclose(traj[-1], C1, atol=1e-4)


def test_td3bc_actor_optimum_moves_toward_the_data_by_the_bc_weight():
  """TD3+BC's actor loss -lambda E[Q_1] + E_{B,j}[(pi_j - a_j)^2], lambda = alpha / mean|Q_1|
  detached (CORL `td3_bc.py` `TD3_BC.train`). With Q_1 = -K - |a - c_1|^2 (K = 5) and a bias-only
  actor a, the gradient is 2 lambda (a - c_1) + (2/|A|)(a - mean_i a_i), zero at
      a* = (lambda c_1 + abar / |A|) / (lambda + 1 / |A|),   lambda = alpha / (K + |a* - c_1|^2),
  a fixed point solved here by iteration (alpha 2.5, |A| = 2): a* lies between c_1 and the data
  mean abar, about half-way. The first SGD step is checked against the gradient at A0."""
  K, alpha = 5.0, 2.5
  cfg = td3_bc.Config(hidden_dims=(8,), policy_freq=1, alpha=alpha)
  state = deterministic_quadratic_state(td3_bc.init(KEY, OBS, ACT, cfg), offset=K)
  traj = actor_trajectory(td3_bc.update, state, 300)["a"]
  abar = A_DATA.mean(0)
  lam0 = alpha / (K + np.sum((A0 - C1) ** 2))
  np.testing.assert_allclose(traj[0], A0 - ACTOR_LR * (2 * lam0 * (A0 - C1) + (2 / ACT) * (A0 - abar)),
                             rtol=1e-5)
  a_star = C1.copy()
  for _ in range(200):
    lam = alpha / (K + np.sum((a_star - C1) ** 2))
    a_star = (lam * C1 + abar / ACT) / (lam + 1 / ACT)
  assert np.linalg.norm(a_star - C1) > 0.2 and np.linalg.norm(a_star - abar) > 0.2
  np.testing.assert_allclose(traj[-1], a_star, atol=1e-4)


# --- SAC-style actors: the optimum of E[alpha log pi - Q] within the tanh-Gaussian family ----------

SAC_STYLE_ALPHA = 0.02
SAC_STYLE_C = np.array([0.4, -0.3])
WIDE_BATCH = Transition(jnp.zeros((256, OBS)), jnp.zeros((256, ACT)), jnp.zeros(256),
                        jnp.zeros((256, OBS)), jnp.ones(256))


def free_tanh_gaussian(p, o):
  shape = o.shape[:-1] + (ACT,)
  return networks.TanhGaussian(jnp.broadcast_to(p["mu"], shape),
                               jnp.broadcast_to(jnp.exp(p["log_std"]), shape))


def tanh_gaussian_optimum(alpha, c):
  """argmin over (m, log s) of E_{u ~ N(m, s^2)}[alpha log pi(tanh u) - Q(tanh u)] for one action
  dimension with Q = -(a - c)^2 (the objective separates over dimensions): Gauss-Hermite quadrature
  of alpha (log N(u) - log(1 - tanh(u)^2)) + (tanh(u) - c)^2. The unrestricted optimum is the
  Boltzmann policy exp(Q / alpha) = N(c, alpha / 2), so m ~ atanh(c) and s ~ sqrt(alpha/2)/(1 - c^2)."""
  z, w = np.polynomial.hermite_e.hermegauss(81)
  w = w / w.sum()

  def objective(x):
    m, log_s = x
    u = m + np.exp(log_s) * z
    log_det = 2 * (np.log(2.0) - u - np.logaddexp(0.0, -2 * u))      # log(1 - tanh(u)^2)
    logp = -0.5 * z ** 2 - 0.5 * LOG_2PI - log_s - log_det
    return np.sum(w * (alpha * logp + (np.tanh(u) - c) ** 2))

  x0 = [np.arctanh(c), np.log(np.sqrt(alpha / 2) / (1 - c ** 2))]
  return scipy.optimize.minimize(objective, x0, method="Nelder-Mead",
                                 options={"xatol": 1e-9, "fatol": 1e-14}).x


def sac_style_state(state):
  params = {"mu": np.zeros(ACT), "log_std": np.zeros(ACT)}
  fields = dict(actor=fake_ts(params, free_tanh_gaussian, lr=0.01),
                critic=fake_ts({"unused": np.zeros(1)}, quadratic_critic(0.0, (SAC_STYLE_C, SAC_STYLE_C))),
                target_critic_params=f32({"unused": np.zeros(1)}))
  for name in ("offline_actor_params", "reference_actor_params"):
    if hasattr(state, name):
      fields[name] = f32(params)
  return state.replace(**fields)


def cql_sac_style_step(state, batch, key):
  return cql.update(state, batch, key)


@pytest.mark.parametrize("agent", ["o2sac_align", "o2sac_finetune", "cql"])
def test_sac_style_actor_reaches_the_entropy_regularised_optimum(agent):
  """SAC's actor loss E[alpha log pi(a|s) - min_k Q_k(s, a)], a ~ pi reparameterised (Haarnoja et
  al. 2018 eq. 7; CORL `cql.py` `ContinuousCQL._policy_loss`: `(alpha * log_pi - q_new_actions)
  .mean()`; official OCR-CFT `SAC.align_value` / `SAC.update`, O2SAC's actor at lambda = 0). With
  Q = -|a - c|^2, fixed alpha = 0.02 and a state-independent tanh-Gaussian (mu, log sigma), the
  minimiser is computed by quadrature (`tanh_gaussian_optimum`): tanh(mu) ~ c, sigma_a ~ sqrt(alpha/2)
  = 0.1. 1500 Adam steps (lr 0.01) from (0, 0); the last 300 iterates are averaged. Both the mean
  (the -Q term's sign) and the width (the alpha log pi term's sign) are checked."""
  if agent == "cql":
    cfg = cql.Config(hidden_dims=(8,), init_alpha=SAC_STYLE_ALPHA, autotune_alpha=False, cql_n_actions=2)
    state = cql.init(KEY, OBS, ACT, cfg)
    state, step = state.replace(sac=sac_style_state(state.sac)), cql.update
  else:
    cfg = o2sac.Config(hidden_dims=(8,), critic_hidden_dims=(8,), init_alpha=SAC_STYLE_ALPHA,
                       alpha_lr=0.0, constrain=False, utd=1)
    state = sac_style_state(o2sac.init(KEY, OBS, ACT, cfg))
    step = o2sac.align_step if agent == "o2sac_align" else o2sac.finetune_step
  traj = actor_trajectory(step, state, 1500, WIDE_BATCH)
  mu, log_std = traj["mu"][-300:].mean(0), traj["log_std"][-300:].mean(0)
  for j in range(ACT):
    m_star, log_s_star = tanh_gaussian_optimum(SAC_STYLE_ALPHA, SAC_STYLE_C[j])
    assert np.tanh(mu[j]) == pytest.approx(np.tanh(m_star), abs=0.005), (j, mu, m_star)
    assert log_std[j] == pytest.approx(log_s_star, abs=0.03), (j, log_std, log_s_star)


# ============================================================================ gap 4: IQL, AWAC, CQL

ADV = np.array([2.0, 0.3, -1.0, 0.5])


@pytest.mark.parametrize("deterministic", [False, True])
def test_iql_awr_actor_weights_high_advantage_actions_more(deterministic):
  """AWR actor loss mean_i w_i l_i, w_i = min(exp(beta A_i), 100) (CORL `iql.py`
  `ImplicitQLearning._update_policy`: `exp_adv = exp(beta * adv).clamp(max=100)`; `bc_losses =
  -log_prob(actions)` for a Gaussian, `sum((policy_out - actions)^2, dim=1)` deterministic). Hand
  case: A = (2, 0.3, -1, 0.5), beta 3 -> w = (100 [clipped from e^6], e^0.9, e^-3, e^1.5); actor mean
  mu(s) = b + s[:2] (Gaussian: unit variance, l = |a - mu|^2/2 + log 2 pi) or b (deterministic,
  l = |a - b|^2). The gradient in b is -mean_i w_i (a_i - mu_i) (Gaussian) or 2 mean_i w_i (b - a_i):
  it points toward the high-advantage data action."""
  state = iql_state(iql.Config(hidden_dims=(8,), beta=3.0, deterministic=deterministic))
  (loss, info), grads = jax.value_and_grad(iql.actor_loss, has_aux=True)(
      state.actor.params, state, BATCH, jnp.asarray(ADV, jnp.float32))
  w = np.minimum(np.exp(3 * ADV), 100.0)
  if deterministic:
    diff = B_ONLINE[None] - A_DATA
    expected_loss, expected_grad = np.mean(w * np.sum(diff ** 2, -1)), 2 * np.mean(w[:, None] * diff, 0)
  else:
    diff = (B_ONLINE + S[:, :ACT]) - A_DATA
    expected_loss = np.mean(w * (0.5 * np.sum(diff ** 2, -1) + 0.5 * ACT * LOG_2PI))
    expected_grad = np.mean(w[:, None] * diff, 0)
  assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
  assert float(info["awr_weight_mean"]) == pytest.approx(w.mean(), rel=1e-5)
  np.testing.assert_allclose(grads["b"], expected_grad, rtol=1e-5)
  assert np.dot(-np.asarray(grads["b"]), -diff[0]) > 0          # descent moves toward a_0 (A = 2)


def test_awac_actor_loss_uses_q_of_the_data_minus_q_of_a_policy_sample():
  """AWAC's actor (CORL `awac.py` `AdvantageWeightedActorCritic._actor_loss`): `v = min(critic_1(s,
  pi_action), critic_2(...))`, `q = min(critic_1(s, a), critic_2(s, a))`, `adv = q - v`, `weights =
  clamp_max(exp(adv / awac_lambda), 100)`, `loss = (-log_prob(s, a) * weights).mean()`. Hand case:
  the online critics (the targets differ), a point policy with mu(s) = b + s[:2], b = (0.9, 0.6), and
  the policy sample a~ = clip(mu(s), -1, 1); lambda 1/3; unit-variance Gaussian log-likelihood. The
  advantages have both signs; the gradient in b is -mean_i w_i (a_i - mu_i)."""
  state = with_critics(awac.init(KEY, OBS, ACT, awac.Config(hidden_dims=(8,))))
  state = state.replace(actor=fake_ts({"b": B_TARGET}, unsquashed_point_actor))
  (loss, info), grads = jax.value_and_grad(awac.actor_loss, has_aux=True)(state.actor.params, state,
                                                                          BATCH, KEY)
  mu = B_TARGET + S[:, :ACT]
  adv = q_np(ONLINE_CRITIC, S, A_DATA).min(0) - q_np(ONLINE_CRITIC, S, np.clip(mu, -1, 1)).min(0)
  assert (adv > 0).any() and (adv < 0).any()
  w = np.minimum(np.exp(3 * adv), 100.0)
  log_lik = -0.5 * np.sum((A_DATA - mu) ** 2, -1) - 0.5 * ACT * LOG_2PI
  assert float(info["awac_weight_mean"]) == pytest.approx(w.mean(), rel=1e-5)
  assert float(loss) == pytest.approx(-np.mean(w * log_lik), rel=1e-5)
  np.testing.assert_allclose(grads["b"], -np.mean(w[:, None] * (A_DATA - mu), 0), rtol=1e-5, atol=1e-6)


# --- CQL's conservative gap -------------------------------------------------------------------------

CQL_M = 5


def constant_critic(p, o, a):
  """Q_k(s, a) = q_k for every (s, a): (N, *batch)."""
  return p["q"].reshape((-1,) + (1,) * (a.ndim - 1)) * jnp.ones(a.shape[:-1])[None]


def cql_point_state(cfg, critic_fn, critic_params, sample_log_prob, lp_slope=0.0):
  """CQL with the point policy at mu(s) = b + s[:2] whose samples report log pi = sample_log_prob +
  lp_slope s_0, and the given critic (target = online)."""
  state = cql.init(KEY, OBS, ACT, cfg)
  actor = fake_ts({"b": B_ONLINE}, lambda p, o: PointPolicy(
      p["b"] + o[..., :ACT], sample_log_prob + lp_slope * o[..., 0]))
  return state.replace(sac=state.sac.replace(actor=actor, critic=fake_ts(critic_params, critic_fn),
                                             target_critic_params=f32(critic_params)))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_cql_random_actions_carry_the_uniform_log_density(temperature):
  """CQL's importance-sampled soft maximum subtracts log q(a_j) = |A| log 0.5 from the Q of each
  uniform action (CORL `cql.py` `ContinuousCQL._q_loss`: `random_density = np.log(0.5 **
  action_dim)`, `cql_q1_rand - random_density`; then `logsumexp(cat / cql_temp) * cql_temp`). Hand
  case: Q = q_k constant, the policy's samples reported at log pi = +20 (their terms weigh e^-20):
  gap_k = T log(M 2^(|A|/T) + 2 M e^(-20/T)) with M = 5, |A| = 2, whatever the key."""
  cfg = cql.Config(hidden_dims=(8,), cql_n_actions=CQL_M, cql_temperature=temperature)
  q = {"q": np.array([0.3, -0.7])}
  state = cql_point_state(cfg, constant_critic, q, 20.0)
  gap = cql.conservative_gap(f32(q), state.sac, BATCH, jnp.asarray(q["q"], jnp.float32)[:, None] *
                             jnp.ones(len(R))[None], KEY)
  t = temperature
  expected = t * np.log(CQL_M * 2 ** (ACT / t) + 2 * CQL_M * np.exp(-20 / t))
  np.testing.assert_allclose(gap, [expected, expected], rtol=1e-5)


def test_cql_next_state_actions_are_evaluated_at_s():
  """CQL's actions sampled from pi(.|s') enter the soft maximum as Q(s, a'), at the *current* state
  (CORL `cql.py` `ContinuousCQL._q_loss`: `cql_q1_next_actions = self.critic_1(observations,
  cql_next_actions)`). Hand case: Q(s, a) = -2 |a - pi(s)|^2 peaks at the point policy's action at
  s, the policy's samples at x are reported at log pi = -20 + x_0 (so the uniform terms, at most
  4 e^0 each, weigh < 1e-7), q_data = 0: per row (current actions + next actions, each with its own
  importance weight)
      gap_i = log(M e^(20 - s_i,0) + M e^(20 - s'_i,0 - 2 |pi(s'_i) - pi(s_i)|^2)),
  where evaluating the next actions at s' would drop the distance term."""
  cfg = cql.Config(hidden_dims=(8,), cql_n_actions=CQL_M)

  def peaked_critic(p, o, a):
    q = -2.0 * jnp.sum(jnp.square(a - jnp.tanh(p["b"] + o[..., :ACT])), -1)
    return jnp.stack([q, q])

  params = {"b": B_ONLINE}
  state = cql_point_state(cfg, peaked_critic, params, -20.0, lp_slope=1.0)
  gap = cql.conservative_gap(f32(params), state.sac, BATCH, jnp.zeros((2, len(R))), KEY)
  d2 = np.sum((np.tanh(B_ONLINE + S2[:, :ACT]) - np.tanh(B_ONLINE + S[:, :ACT])) ** 2, -1)
  assert np.ptp(np.exp(-2 * d2)) > 0.1                            # rows differ visibly
  per_row = np.log(CQL_M * np.exp(20 - S[:, 0]) + CQL_M * np.exp(20 - S2[:, 0] - 2 * d2))
  np.testing.assert_allclose(gap, [per_row.mean()] * 2, rtol=1e-5)


@pytest.mark.parametrize("lagrange, target_gap", [(True, 1.0), (True, 5.0), (False, 1.0)])
def test_cql_lagrange_alpha_prime_rises_while_the_gap_exceeds_its_target(lagrange, target_gap):
  """Lagrange CQL (CORL `cql.py` `ContinuousCQL._q_loss`, `cql_lagrange`): the penalty is
  alpha' alpha_cql (gap - target_action_gap) per critic, and `alpha_prime_loss = (-cql_min_qf1_loss
  - cql_min_qf2_loss) * 0.5`, so Adam's first step moves log alpha' by +lr while the gap exceeds its
  target and by -lr below it. Without Lagrange the penalty is alpha_cql gap. Hand case: the
  uniform-density case above (gap = log(4M + 2M e^-20) = 3.00 for M = 5), alpha_cql 2, alpha' = 1
  before the step, lr 0.1; the critic loss is sum_k mean_i (q_k - y_i)^2 + penalty, with y = r +
  gamma (1-d) min_k q'_k (no entropy backup)."""
  cfg = cql.Config(hidden_dims=(8,), cql_n_actions=CQL_M, cql_alpha=2.0, discount=GAMMA,
                   lagrange=lagrange, target_action_gap=target_gap, alpha_prime_lr=0.1)
  q = {"q": np.array([0.3, -0.7])}
  state = cql_point_state(cfg, constant_critic, q, 20.0)
  new, info = jax.jit(cql.update)(state, BATCH, KEY)
  gap = np.log(4 * CQL_M + 2 * CQL_M * np.exp(-20.0))
  assert float(info["cql_gap"]) == pytest.approx(gap, rel=1e-6)
  y = R + GAMMA * MASK * q["q"].min()
  td = np.sum([np.mean((qk - y) ** 2) for qk in q["q"]])
  penalty = 2 * 2.0 * ((gap - target_gap) if lagrange else gap)
  assert float(info["critic_loss"]) == pytest.approx(td + penalty, rel=1e-5)
  if lagrange:
    direction = np.sign(gap - target_gap)
    assert float(info["alpha_prime"]) == pytest.approx(np.exp(0.1 * direction), rel=1e-4)
  else:
    assert float(cql.alpha_prime(new)) == 1.0                    # untouched without Lagrange


# ============================================================================ actor losses, Polyak

def min_q(params, o, a):
  """min_k Q_k(o, a) of linear critics; the case is checked so that each member is the minimum
  somewhere."""
  q = q_np(params, o, a)
  assert len(set(q.argmin(0))) == 2, q
  return q.min(0)


@pytest.mark.parametrize("agent", ["sac", "o2sac"])
def test_sac_actor_loss_is_alpha_log_pi_minus_the_min_of_the_critics(agent):
  """SAC's actor loss E[alpha log pi(a|s) - min_k Q_k(s, a)], a ~ pi(.|s) (CORL `cql.py`
  `ContinuousCQL._policy_loss`: `q_new_actions = torch.min(critic_1(observations, new_actions),
  critic_2(...))`, `policy_loss = (alpha * log_pi - q_new_actions).mean()`; official OCR-CFT
  `SAC._policy_loss`, O2SAC's at lambda = 0; CQL uses `sac.actor_loss`). Hand case: the point
  policy (a = tanh(b + s[:2]), log pi = -1.5 + 0.5 s_0), the online critics (the targets differ; the
  minimum switches member between rows), alpha 0.5."""
  if agent == "sac":
    state = with_critics(sac.init(KEY, OBS, ACT, sac.Config(hidden_dims=(8,), init_alpha=0.5)))
    state = state.replace(actor=fake_ts({"b": B_ONLINE}, point_actor))
    loss, _ = sac.actor_loss(state.actor.params, state, BATCH, KEY)
  else:
    state = o2sac_point_state(o2sac.Config(hidden_dims=(8,), critic_hidden_dims=(8,), init_alpha=0.5))
    loss, _ = o2sac.sac_actor_loss(state.actor.params, state, BATCH.observations, KEY)
  expected = np.mean(0.5 * sample_lp(S) - min_q(ONLINE_CRITIC, S, np.tanh(B_ONLINE + S[:, :ACT])))
  assert float(loss) == pytest.approx(expected, rel=1e-5)


POLYAK_TAU = 0.25


def polyak_case(agent):
  """(state with fast-moving fake networks and tau = 0.25, its update, has a target actor)."""
  if agent == "td3":
    state = td3_like_state(td3.init(KEY, OBS, ACT, td3.Config(hidden_dims=(8,), tau=POLYAK_TAU,
                                                               policy_freq=1)))
    return with_critics(state, 0.1).replace(actor=fake_ts({"b": B_ONLINE}, det_actor, 0.1)), td3.update, True
  if agent == "o2td3":
    cfg = o2td3.Config(hidden_dims=(8,), critic_hidden_dims=(8,), tau=POLYAK_TAU, policy_freq=1,
                       constrain=False)
    state = td3_like_state(o2td3.init(KEY, OBS, ACT, cfg))
    return (with_critics(state, 0.1).replace(actor=fake_ts({"b": B_ONLINE}, det_actor, 0.1)),
            o2td3.finetune_step, True)
  if agent == "sac":
    state = with_critics(sac.init(KEY, OBS, ACT, sac.Config(hidden_dims=(8,), tau=POLYAK_TAU)), 0.1)
    return state.replace(actor=fake_ts({"b": B_ONLINE}, point_actor)), sac.update, False
  if agent == "o2sac":
    cfg = o2sac.Config(hidden_dims=(8,), critic_hidden_dims=(8,), tau=POLYAK_TAU, constrain=False)
    return with_critics(o2sac_point_state(cfg), 0.1), o2sac.finetune_step, False
  if agent == "iql":
    return with_critics(iql_state(iql.Config(hidden_dims=(8,), tau=POLYAK_TAU)), 0.1), iql.update, False
  if agent == "awac":
    state = with_critics(awac.init(KEY, OBS, ACT, awac.Config(hidden_dims=(8,), tau=POLYAK_TAU)), 0.1)
    return state.replace(actor=fake_ts({"b": B_TARGET}, unsquashed_point_actor)), awac.update, False
  if agent == "aca":     # online: R_k in the critic's place, pi0 = a second tanh-Gaussian
    state = with_critics(aca.init(KEY, OBS, ACT, aca.Config(hidden_dims=(8,), tau=POLYAK_TAU)), 0.1)
    return (state.replace(actor=fake_ts(SAC_ACTOR, tanh_gaussian_actor),
                          offline_actor_params=f32({"b": B_OFF, "log_std": np.array([0.1, -0.4])})),
            aca.online_update, False)
  raise ValueError(agent)


@pytest.mark.parametrize("agent", ["td3", "o2td3", "sac", "o2sac", "iql", "awac", "aca"])
def test_polyak_targets_move_toward_the_updated_networks(agent):
  """theta' <- tau theta + (1 - tau) theta' with theta the networks *after* this step's update (CORL
  `soft_update(target, source, tau)`: `target_param.data.copy_((1 - tau) * target_param.data + tau *
  source_param.data)`, called after the optimiser steps; official OCR-CFT the same). Hand case: tau
  0.25, Adam lr 0.1 on the fake networks, so the online parameters move visibly in one step and the
  pre- and post-update networks give different targets. ACA's online step moves its R-critic's target the
  same way (`aca.online_update`: the Polyak update follows the critic step, d3rlpy's SAC order)."""
  state, update, has_target_actor = polyak_case(agent)
  new, _ = jax.jit(update)(state, BATCH, KEY)
  pairs = [(new.critic.params, new.target_critic_params, state.critic.params, TARGET_CRITIC)]
  if has_target_actor:
    pairs.append((new.actor.params, new.target_actor_params, state.actor.params, {"b": B_TARGET}))
  for online, target, before, old_target in pairs:
    for k in online:
      moved = np.asarray(online[k], np.float64) - np.asarray(before[k], np.float64)
      assert np.abs(moved).max() > 0.05, (k, moved)                # the update moved the network
      expected = POLYAK_TAU * np.asarray(online[k], np.float64) + (1 - POLYAK_TAU) * old_target[k]
      np.testing.assert_allclose(target[k], expected, rtol=1e-5, atol=1e-6)
