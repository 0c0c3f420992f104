"""O2PPO: Monte-Carlo returns per episode, the auxiliary advantage (eq. 17) and its floor (eq. 51),
per-sample pairing (eq. 18), the beta schedule, the update (with and without the auxiliary
advantage), and the launcher end to end."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax.agents.o2o import o2ppo
from o2o_jax.agents.online import ppo
from o2o_jax.data import returns as data_returns
from o2o_jax.types import seed_keys, take_index

OBS, ACT = 4, 3
CONFIG = o2ppo.Config(hidden_dims=(16, 16), value_hidden_dims=(16, 16), rollout_length=32,
                      num_minibatches=4, epochs=2, beta_steps=64)


def test_mc_returns_stop_at_episode_boundaries():
  # Two episodes: [0, 1] and [2, 3, 4]; the first ends by a time limit, so no terminal flag marks it.
  ends = data_returns.episode_end_flags(5, np.array([0, 2]), np.array([2, 3]))
  np.testing.assert_array_equal(ends, [0, 1, 0, 0, 1])
  g = data_returns.mc_returns(jnp.ones(5), jnp.asarray(ends), 0.5)
  np.testing.assert_allclose(g, [1.5, 1.0, 1.75, 1.5, 1.0])


def test_mc_returns_on_a_dataset_with_truncated_and_terminated_episodes(tiny_hopper_dataset):
  from o2o_jax.data import load_dataset
  ds = load_dataset(tiny_hopper_dataset.dataset_id)
  ends = data_returns.episode_end_flags(ds.size, ds.episode_starts, ds.episode_lengths)
  g = np.asarray(data_returns.mc_returns(jnp.asarray(ds.transitions.rewards), jnp.asarray(ends), 0.99))
  for ep, start in zip(tiny_hopper_dataset.episodes, ds.episode_starts):
    r = ep.rewards
    expected = [sum(0.99 ** k * r[t + k] for k in range(len(r) - t)) for t in range(len(r))]
    np.testing.assert_allclose(g[start:start + len(r)], expected, rtol=1e-4)


@jax.jit
def _actor_params(log_std):
  params = ppo.make_actor(CONFIG, ACT).init(jax.random.PRNGKey(0), jnp.zeros((1, OBS)))
  return {"params": {**params["params"], "log_std": log_std}}


def reference_actor(log_std=(-0.5, 0.0, 0.3)):
  """pi_ref: a Gaussian actor with the given state-independent log-std (apply_fn and params)."""
  params = _actor_params(jnp.asarray(log_std, jnp.float32))
  return ppo.make_actor_state(CONFIG, ACT, params), params


def test_aux_advantage_has_mean_zero_under_pi_ref():
  actor, params = reference_actor()
  obs = jax.random.normal(jax.random.PRNGKey(1), (8, OBS))
  n = 20_000

  @jax.jit
  def means(key):
    actions = actor.apply_fn(params, obs).sample(seed=key, sample_shape=(n,))   # (n, 8, ACT) ~ pi_ref
    obs_rep = jnp.broadcast_to(obs, (n,) + obs.shape)
    g = o2ppo.aux_advantage_per_dim(actor, params, obs_rep, actions)            # eq. 17 / alpha
    return g.mean(), o2ppo.auxiliary_advantage(actor, params, obs_rep, actions, CONFIG).mean()

  g_mean, a_mean = means(jax.random.PRNGKey(2))
  # Per dimension g = (1 - z^2) / 2 has variance 1/2: the standard error of the mean over
  # 8 * 20000 * 3 samples is ~1e-3; tolerance 5e-3 (about 5 standard errors).
  assert abs(float(g_mean)) < 5e-3
  # With the floor of eq. 51 (which only raises values) the mean stays small and positive:
  # E[softplus(x + 4) - 4 - x] is about 0.02 per dimension here; alpha = 2.
  assert 0.0 < float(a_mean) < 0.1


def test_aux_advantage_is_positive_within_one_std_and_negative_beyond():
  actor, params = reference_actor()
  obs = jax.random.normal(jax.random.PRNGKey(1), (5, OBS))
  dist = actor.apply_fn(params, obs)
  mu, sigma = dist.loc, dist.scale_diag
  for c, sign in ((0.0, 1), (0.5, 1), (0.99, 1), (-0.99, 1), (1.05, -1), (-2.0, -1)):
    a = mu + c * sigma
    g = o2ppo.aux_advantage_per_dim(actor, params, obs, a)
    np.testing.assert_allclose(g, (1.0 - c ** 2) / 2, atol=1e-5)    # log N + H = (1 - z^2) / 2
    aux = o2ppo.auxiliary_advantage(actor, params, obs, a, CONFIG)
    assert np.all(np.sign(np.asarray(aux)) == sign), (c, aux)
  # The maximum (a = mu) is alpha / 2 (H.5), up to the floor's softplus(4.5) - 4.5 = 0.011.
  at_mean = o2ppo.auxiliary_advantage(actor, params, obs, mu, CONFIG)
  np.testing.assert_allclose(at_mean, CONFIG.aux_alpha * (0.5 + np.log1p(np.exp(-4.5))), rtol=1e-5)


def test_softplus_floor():
  x = jnp.array([-1e4, -50.0, -4.0, 0.0, 0.5])
  y = o2ppo.soft_floor(x, 4.0)
  assert np.all(np.asarray(y) >= -4.0) and float(y[0]) == pytest.approx(-4.0)   # -4 up to float32
  np.testing.assert_allclose(y[3:], [np.log1p(np.exp(4.0)) - 4.0, np.log1p(np.exp(4.5)) - 4.0], rtol=1e-5, atol=1e-6)
  assert np.all(np.diff(np.asarray(y)[1:]) > 0)   # increasing (below -50 it is -4 in float32)
  # A far-off action: per dimension floor -4, so A_alpha >= -alpha * 4 (the range (-4, 1/2) of H.5).
  actor, params = reference_actor()
  obs = jnp.zeros((1, OBS))
  far = actor.apply_fn(params, obs).loc + 100.0
  assert float(o2ppo.auxiliary_advantage(actor, params, obs, far, CONFIG)[0]) == pytest.approx(
      -CONFIG.aux_alpha * 4.0, rel=1e-4)
  # The released code's variant floors the sum over dimensions at -4|A|.
  summed = o2ppo.auxiliary_advantage(actor, params, obs, far,
                                     o2ppo.Config(**{**CONFIG.__dict__, "aux_clip_per_dim": False}))
  assert float(summed[0]) == pytest.approx(-CONFIG.aux_alpha * 4.0, rel=1e-4)


def test_mixed_advantages_are_paired_per_sample():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  adv, aux = jax.random.normal(k1, (16,)), jax.random.normal(k2, (16,))
  perm = jax.random.permutation(k3, 16)
  mixed = o2ppo.mix_advantages(adv, aux, 0.7, "paired")
  np.testing.assert_allclose(o2ppo.mix_advantages(adv[perm], aux[perm], 0.7, "paired"), mixed[perm],
                             rtol=1e-4, atol=1e-5)
  # Sample i's A_ref_i moves its own advantage: eq. 18 before normalisation.
  a_ref = aux * adv.std(ddof=1)
  expected = (adv + 0.7 * a_ref) / 1.7
  np.testing.assert_allclose(mixed, (expected - expected.mean()) / (expected.std(ddof=1) + 1e-5),
                             rtol=1e-4, atol=1e-5)
  # The released broadcast: a (T, T) matrix whose rows never pair A_ref_i with sample i, so
  # shuffling A_ref alone leaves every row's mean unchanged.
  b = o2ppo.mix_advantages(adv, aux, 0.7, "broadcast")
  b_shuffled = o2ppo.mix_advantages(adv, aux[perm], 0.7, "broadcast")
  assert b.shape == (16, 16)
  np.testing.assert_allclose(b.mean(1), b_shuffled.mean(1), rtol=1e-5, atol=1e-5)
  assert not np.allclose(mixed, o2ppo.mix_advantages(adv, aux[perm], 0.7, "paired"))


# Hand case of the rollout-level advantage shaping: T = 4 GAE advantages and A_alpha values.
HAND_ADV = np.array([1.0, 2.0, 3.0, 10.0])
HAND_AUX = np.array([0.5, -1.0, 0.0, 0.25])


def test_mixing_uses_the_rollout_std_and_normalises_over_the_rollout():
  """OCR-CFT finetune/online_agent/ppo/ppo.py, `PPO.update`, before its K_epochs loop and over the
  whole 2048-step buffer: `adv_ref = self.get_reference_advantage(s, a) * torch.abs(adv.std())`,
  `adv = (adv + adv_ref * time_weight) / (1 + time_weight)`, then
  `adv = ((adv - adv.mean()) / (adv.std() + 1e-5))` (torch's std: Bessel's correction). `adv` is
  [T, 1] and `adv_ref` [T], so the sum is the [T, T] matrix M_ij = (A_i + beta A_ref_j) / (1 + beta)
  and its normalisation runs over all T^2 entries; each minibatch `adv[index]` takes B rows."""
  beta = 0.5
  # std(A) = sqrt(((1-4)^2 + (2-4)^2 + (3-4)^2 + (10-4)^2) / 3) = sqrt(50 / 3) = 4.0824829
  std_a = np.sqrt(50.0 / 3.0)
  a_ref = HAND_AUX * std_a                  # [2.0412415, -4.0824829, 0, 1.0206207]
  paired = (HAND_ADV + beta * a_ref) / (1 + beta)
  np.testing.assert_allclose(paired, [1.3470805, -0.0274943, 2.0, 7.0068736], rtol=1e-6)
  expected = (paired - paired.mean()) / (paired.std(ddof=1) + 1e-5)
  got = o2ppo.mix_advantages(jnp.asarray(HAND_ADV, jnp.float32), jnp.asarray(HAND_AUX, jnp.float32),
                             beta, "paired")
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # Broadcast: the [T, T] matrix, normalised over its 16 entries; rows of a minibatch = its rows.
  m = (HAND_ADV[:, None] + beta * a_ref[None, :]) / (1 + beta)
  m = (m - m.mean()) / (m.std(ddof=1) + 1e-5)
  got = o2ppo.mix_advantages(jnp.asarray(HAND_ADV, jnp.float32), jnp.asarray(HAND_AUX, jnp.float32),
                             beta, "broadcast")
  np.testing.assert_allclose(got, m, rtol=1e-5, atol=1e-5)
  rows = o2ppo.broadcast_rows(jnp.asarray(HAND_ADV, jnp.float32), jnp.asarray(HAND_AUX, jnp.float32),
                              beta)
  np.testing.assert_allclose(rows(jnp.asarray(HAND_ADV[[2, 0]], jnp.float32)), m[[2, 0]], rtol=1e-5,
                             atol=1e-5)
  # Normalised over its own 2 x 4 entries, a minibatch's rows would differ from the rollout's.
  sub = m[[2, 0]]
  assert not np.allclose(np.asarray(got)[[2, 0]], (sub - sub.mean()) / sub.std(ddof=1), atol=1e-3)


def _record_surrogate_advantages(monkeypatch):
  """The advantages every minibatch's clipped surrogate receives, recorded from inside the jitted
  update (the spy is traced into a fresh jit)."""
  seen = []
  original = ppo.clipped_surrogate

  def spy(log_probs, old_log_probs, advantages, clip_eps):
    jax.debug.callback(lambda a: seen.append(np.asarray(a)), advantages)
    return original(log_probs, old_log_probs, advantages, clip_eps)

  monkeypatch.setattr(ppo, "clipped_surrogate", spy)
  return seen


def _hand_rollout(state, c):
  """T = 4 steps whose GAE advantages are the rewards HAND_ADV (V = 0, discount 0) and whose action
  of step i sits c_i standard deviations of pi_ref from its mean in every dimension, so that
  g_d = log pi_ref,d + H_d = (1 - c_i^2) / 2."""
  obs = jax.random.normal(jax.random.PRNGKey(7), (4, OBS))
  dist = state.actor.apply_fn(state.reference_actor_params, obs)
  actions = dist.loc + jnp.asarray(c, jnp.float32)[:, None] * dist.scale_diag
  return ppo.Rollout(observations=obs, actions=actions,
                     log_probs=state.actor.apply_fn(state.actor.params, obs).log_prob(actions),
                     rewards=jnp.asarray(HAND_ADV, jnp.float32), next_observations=obs,
                     terminals=jnp.zeros(4), dones=jnp.zeros(4))


@pytest.mark.parametrize("pairing", ["paired", "broadcast"])
def test_update_shapes_advantages_over_the_rollout_not_the_minibatch(pairing, monkeypatch):
  """OCR-CFT finetune/online_agent/ppo/ppo.py, `PPO.update`: the auxiliary advantage is rescaled by
  `torch.abs(adv.std())` and the mixed advantages normalised (`(adv - adv.mean()) / (adv.std() +
  1e-5)`) once over the whole buffer, before `for times in range(self.K_epochs)`; the minibatches
  (`BatchSampler(SubsetRandomSampler(range(self.batch_size)), self.mini_batch_size, False)`) only
  index it. Hand case: T = 4, two minibatches of 2, one epoch, V = 0 and discount 0 (A = r)."""
  seen = _record_surrogate_advantages(monkeypatch)
  config = o2ppo.Config(**{**CONFIG.__dict__, "rollout_length": 4, "num_minibatches": 2, "epochs": 1,
                           "discount": 0.0, "beta_steps": 8, "aux_pairing": pairing})
  state = jax.jit(lambda k: o2ppo.init(k, OBS, ACT, config))(jax.random.PRNGKey(0))
  state = state.replace(value=state.value.replace(params=jax.tree_util.tree_map(
      jnp.zeros_like, state.value.params)))                        # V = 0
  c = np.array([0.0, 1.0, 2.0, 0.5])
  rollout = _hand_rollout(state, c)
  new, info = jax.jit(o2ppo.update)(state, rollout, jax.random.PRNGKey(1))
  jax.effects_barrier()
  beta = 0.5                                                       # t = 4 of beta_steps 8
  assert float(info["beta"]) == beta
  # A_alpha per sample: alpha * mean_d (softplus(g + 4) - 4), g = (1 - c^2) / 2 in every dimension.
  g = (1.0 - c ** 2) / 2.0
  aux = 2.0 * (np.log1p(np.exp(g + 4.0)) - 4.0)
  np.testing.assert_allclose(aux, [1.02210, 0.03630, -2.84222, 0.77502], atol=1e-5)
  a_ref = aux * np.sqrt(50.0 / 3.0)                                # the rollout's std(A), not a minibatch's
  assert len(seen) == 2
  if pairing == "paired":
    mixed = (HAND_ADV + beta * a_ref) / (1 + beta)
    expected = (mixed - mixed.mean()) / (mixed.std(ddof=1) + 1e-5)
    np.testing.assert_allclose(np.sort(np.concatenate(seen)), np.sort(expected), rtol=1e-4, atol=1e-4)
  else:
    m = (HAND_ADV[:, None] + beta * a_ref[None, :]) / (1 + beta)
    m = (m - m.mean()) / (m.std(ddof=1) + 1e-5)
    rows = np.concatenate(seen)                                    # (4, 4): every row once
    assert rows.shape == (4, 4)
    order = np.argsort(rows[:, 0])
    np.testing.assert_allclose(rows[order], m[np.argsort(m[:, 0])], rtol=1e-4, atol=1e-4)


def test_reward_scaler_dataset_pass_resets_at_terminals_not_at_truncations():
  """OCR-CFT finetune/online_agent/ppo/offline_buffer.py, `OfflineReplayBuffer.reward_normalize`
  ('dynamic'): the running return R = gamma R + r of ppo_utils.py `RewardScaling` is reset only where
  `not not_done`, and `not_done = 1 - terminals` (the timeout test checks the misspelt key
  'timesout'), so a time-limit end runs on; r / (std + 1e-8) with `RunningMeanStd.std` =
  sqrt(S / n), S started at 1. Hand case, gamma 0.5: a terminal at t = 1, a truncation at t = 3.
  (The reference leaves the terminal step's own reward unscaled and unpushed; here it is scaled and
  pushed, then R resets: a recorded deviation no released config meets.)"""
  from o2o_jax import onpolicy
  rewards = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
  terminals = np.array([0, 1, 0, 0, 0])        # t = 3 is a truncation: no terminal flag, no reset
  # R: 1 | 0.5 + 2 = 2.5 (terminal: reset after) | 3 | 1.5 + 4 = 5.5 (runs on) | 2.75 + 5 = 7.75
  returns = np.array([1.0, 2.5, 3.0, 5.5, 7.75])
  # std_t = sqrt((1 + sum_{k<=t} (R_k - mean_t)^2) / t): 1 | sqrt(2.125 / 2) | ...
  std = [np.sqrt((1.0 + np.sum((returns[:t] - returns[:t].mean()) ** 2)) / t) for t in range(1, 6)]
  np.testing.assert_allclose(std[:2], [1.0, 1.0307764], rtol=1e-6)
  scaler = onpolicy.RewardScaler(0.5, num_seeds=2)
  out = scaler.scale_dataset(rewards, terminals)
  np.testing.assert_allclose(out, rewards / (np.array(std) + 1e-8), rtol=1e-6)
  assert scaler.per_seed(1) == scaler.per_seed(0)       # every seed starts from these statistics
  assert scaler.per_seed(0)["count"] == 5
  np.testing.assert_allclose(scaler.per_seed(0)["mean"], returns.mean())
  # Resetting at every episode end (the earlier behaviour) would have pushed R_4 = 5 instead.
  wrong = np.array([1.0, 2.5, 3.0, 5.5, 5.0])
  assert not np.isclose(scaler.per_seed(0)["mean"], wrong.mean())


def test_reward_scaler_online_is_per_seed_and_resets_at_each_episode_end():
  """OCR-CFT finetune/O2PPO.py: online, `reward_scaling.reset()` runs at every `env.reset()`, i.e.
  after every `done` including gym's time-limit end, and `reward_scaling(r)` updates the one run's
  statistics. Here each seed has its own statistics and running return (issue #19): seed 0's scaled
  rewards do not depend on seed 1's rewards. Hand case, gamma 0.5, from fresh statistics."""
  from o2o_jax import onpolicy
  r0 = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
  dones0 = np.array([0, 1, 0, 0, 0])           # an episode end (terminal or truncation) at t = 1

  def scaled(r1):
    scaler = onpolicy.RewardScaler(0.5, num_seeds=2)
    rows = [scaler(np.array([a, b]), np.array([d, 0])) for a, b, d in zip(r0, r1, dones0)]
    return np.array(rows), scaler

  out, scaler = scaled(np.array([10.0, -3.0, 7.0, 0.5, 2.0]))
  other, _ = scaled(np.array([0.0, 100.0, -50.0, 3.0, 1.0]))
  np.testing.assert_array_equal(out[:, 0], other[:, 0])        # seeds never pool statistics
  returns = np.array([1.0, 2.5, 3.0, 5.5, 7.75])               # reset after t = 1 only
  std = [np.sqrt((1.0 + np.sum((returns[:t] - returns[:t].mean()) ** 2)) / t) for t in range(1, 6)]
  np.testing.assert_allclose(out[:, 0], r0 / (np.array(std) + 1e-8), rtol=1e-6)
  assert scaler.state(running=True)["count"] == [5, 5]
  np.testing.assert_allclose(scaler.per_seed(0)["running"], 7.75)


def test_interval_reference_follows_the_released_update_n():
  """OCR-CFT finetune/O2PPO.py, `__main__`: with `refer_with_optimal_pi` false, `update_n = 4` when
  the env name holds 'hopper' and 'expert', and pi_ref <- pi_on when `total_steps % (update_n *
  evaluate_freq) == 0` (else update_n 1). `--o2ppo_reference=interval` takes that interval."""
  from o2o_jax.recipes import o2ppo as p
  assert p.reference_interval("interval", "o2o/hopper/expert-v0", 2_500) == 10_000
  assert p.reference_interval("interval", "o2o/hopper/medium-expert-v0", 2_500) == 10_000
  assert p.reference_interval("interval", "o2o/walker2d/expert-v0", 2_500) == 2_500
  assert p.reference_interval("interval", "o2o/hopper/medium-v0", 2_500) == 2_500
  assert p.reference_interval("interval:7000", "o2o/hopper/expert-v0", 2_500) == 7_000
  assert p.reference_interval("best", "o2o/hopper/expert-v0", 2_500) is None


def test_beta_schedule():
  assert float(o2ppo.beta_schedule(0, 250_000)) == 1.0
  assert float(o2ppo.beta_schedule(125_000, 250_000)) == pytest.approx(0.5)
  assert float(o2ppo.beta_schedule(250_000, 250_000)) == 0.0
  assert float(o2ppo.beta_schedule(400_000, 250_000)) == 0.0
  # (medium-)expert sets: 500k horizon, so beta ends at 0.5 after the 250k online steps (H.5).
  assert float(o2ppo.beta_schedule(250_000, 500_000)) == pytest.approx(0.5)


def test_init_caps_log_std_and_starts_from_pi_off():
  _, params = reference_actor(log_std=(0.5, -4.0, 0.0))
  config = o2ppo.Config(**{**CONFIG.__dict__, "max_log_std": float(np.log(0.05))})
  state = jax.jit(lambda p: o2ppo.init(jax.random.PRNGKey(0), OBS, ACT, config, p))(params)
  np.testing.assert_allclose(state.actor.params["params"]["log_std"], [np.log(0.05), -4.0, np.log(0.05)],
                             rtol=1e-6)
  for tree in (state.offline_actor_params, state.reference_actor_params):
    np.testing.assert_array_equal(tree["params"]["log_std"], state.actor.params["params"]["log_std"])
  # pi_ref = pi_off; the best score starts at pi_off's; a better evaluation replaces pi_ref.
  state = o2ppo.init_reference(state, jnp.float32(30.0), jnp.float32(30.0))
  moved = state.replace(actor=state.actor.replace(params=jax.tree_util.tree_map(
      lambda x: x + 1.0, state.actor.params)))
  kept = o2ppo.refresh_reference(moved, jnp.float32(29.0))
  np.testing.assert_array_equal(kept.reference_actor_params["params"]["log_std"],
                                state.offline_actor_params["params"]["log_std"])
  new = o2ppo.refresh_reference(moved, jnp.float32(31.0))
  np.testing.assert_array_equal(new.reference_actor_params["params"]["log_std"],
                                moved.actor.params["params"]["log_std"])
  assert float(new.best_score) == 31.0


def test_update_mixes_with_annealed_beta_and_vmaps_over_seeds():
  states = jax.jit(jax.vmap(lambda k: o2ppo.init(k, OBS, ACT, CONFIG)))(seed_keys(0, 2))
  ks = jax.random.split(jax.random.PRNGKey(1), 12)
  rollouts = ppo.Rollout(observations=jax.random.normal(ks[0], (2, 32, OBS)),
                         actions=jax.random.normal(ks[1], (2, 32, ACT)) * 0.3,
                         log_probs=jnp.full((2, 32), -1.0), rewards=jax.random.normal(ks[2], (2, 32)),
                         next_observations=jax.random.normal(ks[3], (2, 32, OBS)),
                         terminals=jnp.zeros((2, 32)), dones=jnp.zeros((2, 32)).at[:, 10].set(1.0))
  update = jax.jit(jax.vmap(o2ppo.update))
  s1, info1 = update(states, rollouts, ks[4:6])
  np.testing.assert_allclose(info1["beta"], [0.5, 0.5])           # t = 32 of 64
  s2, info2 = update(s1, rollouts, ks[6:8])
  np.testing.assert_allclose(info2["beta"], [0.0, 0.0])
  assert np.all(np.asarray(s2.env_steps) == 64)
  # The seeds differ (their own networks), and pi_off / pi_ref stay frozen.
  assert not np.allclose(s2.actor.params["params"]["log_std"][0], s2.actor.params["params"]["log_std"][1]) \
      or not np.allclose(info2["actor_loss"][0], info2["actor_loss"][1])
  jax.tree_util.tree_map(np.testing.assert_array_equal, take_index(s2, 0).offline_actor_params,
                         take_index(states, 0).offline_actor_params)


def test_without_aux_the_update_is_plain_ppo():
  """--o2ppo_aux=false (direct PPO from IQL, appendix A) runs exactly PPO's update."""
  config = o2ppo.Config(**{**CONFIG.__dict__, "aux": False})
  state = jax.jit(lambda k: o2ppo.init(k, OBS, ACT, config))(jax.random.PRNGKey(0))
  ks = jax.random.split(jax.random.PRNGKey(1), 5)
  rollout = ppo.Rollout(observations=jax.random.normal(ks[0], (32, OBS)),
                        actions=jax.random.normal(ks[1], (32, ACT)) * 0.3,
                        log_probs=jnp.full((32,), -1.0), rewards=jax.random.normal(ks[2], (32,)),
                        next_observations=jax.random.normal(ks[3], (32, OBS)),
                        terminals=jnp.zeros(32), dones=jnp.zeros(32))
  plain = ppo.State(actor=state.actor, value=state.value, env_steps=state.env_steps, config=config)

  @jax.jit   # one program for both updates
  def both(state, plain):
    return o2ppo.update(state, rollout, ks[4]), ppo.update(plain, rollout, ks[4])

  (new, info), (expected, _) = both(state, plain)
  assert float(info["beta"]) == 0.0
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         (new.actor.params, new.value.params), (expected.actor.params, expected.value.params))


# ----------------------------------------------------------------------------- seeds never interact

def _drift_env():
  """A 2-D point pushed by the first two action dimensions (obs: position, velocity) with a reward
  that never vanishes, 20-step time limits and a termination off the box: a gymnasium env that steps
  in microseconds, whose rewards give the dynamic reward scaler something to track."""
  import gymnasium as gym

  class DriftEnv(gym.Env):
    observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32)

    def reset(self, *, seed=None, options=None):
      super().reset(seed=seed)
      self.t, self.x = 0, self.np_random.uniform(-1.0, 1.0, OBS).astype(np.float32)
      return self.x.copy(), {}

    def step(self, action):
      self.t += 1
      a = np.asarray(action, np.float32)
      vel = 0.8 * self.x[2:] + 0.5 * a[:2]
      self.x = np.concatenate([self.x[:2] + 0.1 * vel, vel]).astype(np.float32)
      reward = 1.0 + self.x[0] - 0.1 * float(np.sum(a ** 2))
      return self.x.copy(), reward, bool(np.abs(self.x[:2]).max() > 1.5), self.t >= 20, {}

  return DriftEnv()


@pytest.mark.parametrize("aux", [False, True], ids=["direct_ppo", "o2ppo"])
def test_seed_i_of_a_two_seed_run_equals_a_one_seed_run_with_its_key(aux, monkeypatch):
  """Issue #19 point 5: seeds never interact. `onpolicy.run_onpolicy` with the O2PPO agent (and with
  --o2ppo_aux=false, direct PPO fine-tuning) and the dynamic reward scaler, 2 seeds vmapped, against
  each seed run alone as seed i of 2 (its global index: PRNG keys, env seeds), the way a process of
  a multi-process run holds it (`distributed.process_index/process_count`). The scaler starts from
  the same dataset statistics in every seed, as the pipeline's. Before issue #19 the scaler pooled
  its running statistics over the vmapped seeds and this failed."""
  from o2o_jax import distributed, onpolicy
  config = o2ppo.Config(**{**CONFIG.__dict__, "aux": aux, "hidden_dims": (8, 8),
                           "value_hidden_dims": (8, 8), "beta_steps": 160, "actor_lr": 3e-3,
                           "critic_lr": 3e-3, "lr_decay_steps": 0})
  loop = onpolicy.OnPolicyConfig(total_steps=160, rollout_length=32, eval_every=80, eval_episodes=1)
  dataset_stats = {"count": 50, "mean": 3.0, "m2": 40.0}   # as a re-evaluation run leaves them

  def start(k):
    return o2ppo.init_reference(o2ppo.init(k, OBS, ACT, config), 0.0, 0.0)

  states = jax.jit(jax.vmap(start))(seed_keys(0, 2))

  def run(s, n):
    scaler = onpolicy.RewardScaler(config.discount, n, dataset_stats)
    out, history = onpolicy.run_onpolicy(o2ppo, s, make_env=_drift_env, num_seeds=n, seed=5,
                                         config=loop, reward_fn=scaler, progress=False)
    return out, np.stack([h["returns"] for h in history]), scaler

  both, returns, scaler = run(states, 2)
  for i in range(2):
    monkeypatch.setattr(distributed, "process_count", lambda: 2)
    monkeypatch.setattr(distributed, "process_index", lambda i=i: i)
    alone, returns_alone, scaler_alone = run(jax.tree_util.tree_map(lambda x: x[i:i + 1], states), 1)
    for x, y in zip(jax.tree_util.tree_leaves((both.actor.params, both.value.params)),
                    jax.tree_util.tree_leaves((alone.actor.params, alone.value.params))):
      np.testing.assert_allclose(np.asarray(x)[i], np.asarray(y)[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(returns[:, i], returns_alone[:, 0], rtol=1e-4, atol=1e-4)
    if hasattr(scaler, "per_seed"):   # the scaler's own statistics (issue #19's per-seed scaler)
      for key, value in scaler.per_seed(i).items():
        np.testing.assert_allclose(value, scaler_alone.per_seed(0)[key], rtol=1e-6)


# ----------------------------------------------------------------------------- launcher

TINY = ["--agent=o2ppo", "--seeds=2", "--budget=quick", "--pretrain_steps=40", "--reevaluate_steps=20",
        "--online_steps=128", "--ppo_rollout_length=64", "--ppo_minibatches=4", "--o2ppo_epochs=2",
        "--eval_every=64", "--eval_episodes=1", "--hidden_dims=8,8", "--o2ppo_value_hidden=8,8",
        "--batch_size=16", "--o2ppo_value_batch_size=16", "--progress=false",
        "--checkpoint_every=64"]   # a snapshot of the real O2PPO state at the rollout boundary 64


def finetune(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.finetune", *args], env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_launcher_end_to_end(tiny_hopper_dataset, tmp_path):
  ds_flag = f"--dataset={tiny_hopper_dataset.dataset_id}"
  res = finetune(ds_flag, f"--out_dir={tmp_path}", *TINY)
  assert res.returncode == 0, res.stderr[-4000:]
  ds = tiny_hopper_dataset.dataset_id.replace("/", "_")
  for phase, agent, name in (("pretrain", "iql", "seed0x2-presetnone"), ("reevaluate", "o2ppo", "seed0x2"),
                             ("finetune", "o2ppo", "seed0x2")):
    assert (tmp_path / phase / agent / ds / name / "checkpoints").exists(), phase
  run = tmp_path / "finetune" / "o2ppo" / ds / "seed0x2"
  assert not (run / "progress").exists()     # the snapshots are dropped once the phase finished
  summary = json.loads((run / "summary.json").read_text())
  assert len(summary["offline"]) == 2 and len(summary["final"]) == 2
  for line in ("pi_off (offline)", "best fine-tuned", "final fine-tuned"):
    assert line in res.stdout
  header = (run / "metrics.csv").read_text().splitlines()[0]
  for col in ("train/beta", "train/aux_advantage", "train/approx_kl", "eval/normalized_score/seed1"):
    assert col in header
  # The same command again reuses every finished phase (no training, no compilation).
  res = finetune(ds_flag, f"--out_dir={tmp_path}", *TINY)
  assert res.returncode == 0, res.stderr[-4000:]
  assert res.stdout.count("reusing the finished run") == 3 and "final fine-tuned" in res.stdout
  # Bad flags: one line, exit 2.
  res = finetune(ds_flag, f"--out_dir={tmp_path}", "--o2ppo_reference=sometimes", *TINY)
  assert res.returncode == 2 and "--o2ppo_reference must be 'best', 'interval' or 'interval:N'" in res.stderr
  assert "Traceback" not in res.stderr
  # --config.<field> reaches the fine-tuning's Config and its config.json, not the V fit's (clip_eps
  # is no field the fit reads): from the finished re-evaluation run only the fine-tuning runs.
  reeval = tmp_path / "reevaluate" / "o2ppo" / ds / "seed0x2"
  res = finetune(f"--out_dir={tmp_path}", f"--from={reeval}", "--run_name=clip", "--config.clip_eps=0.1",
                 "--config.entropy_coef=0", *TINY)
  assert res.returncode == 0, res.stderr[-4000:]
  config = json.loads((tmp_path / "finetune" / "o2ppo" / ds / "clip" / "config.json").read_text())
  assert config["agent_config"]["clip_eps"] == 0.1 and config["agent_config"]["entropy_coef"] == 0.0
  assert config["agent_config"]["epochs"] == 2       # the options still apply (--o2ppo_epochs=2)
  assert json.loads((reeval / "config.json").read_text())["agent_config"]["clip_eps"] == 0.2
  # A field of the V fit cannot change after it: one line, before any training.
  res = finetune(f"--out_dir={tmp_path}", f"--from={reeval}", "--run_name=v",
                 "--config.value_hidden_dims=4,4", *TINY)
  assert res.returncode == 2 and "Traceback" not in res.stderr
  assert res.stderr.strip().splitlines()[-1].startswith(
      "error: --config.value_hidden_dims: the V fit this run starts from has value_hidden_dims=(8, 8)")


@pytest.mark.parametrize("args, line", [
    (["--config.no_such_field=1"], "error: --config.no_such_field: o2o_jax.agents.o2o.o2ppo.Config has no "
                                   "field 'no_such_field'; valid fields: actor_lr, adam_eps, aux, "),
    (["--config.clip_eps=wide"], "error: --config.clip_eps=wide: field 'clip_eps' of "
                                 "o2o_jax.agents.o2o.o2ppo.Config is float"),
    (["--ppo_rollout_length=62"], "error: --ppo_rollout_length (62) must be a multiple of the number of "
                                  "minibatches (--ppo_minibatches=4)"),
    (["--o2ppo_max_std=-1"], "error: --o2ppo_max_std must be positive, or 0 for no cap (got -1.0)"),
    (["--from={fake}"], "error: --from={fake} is a reevaluate run of o2td3, which o2ppo cannot continue "
                        "from"),
])
def test_launcher_refuses_before_any_work_with_one_line(tiny_hopper_dataset, tmp_path, args, line):
  """Checked against o2ppo's Config and its options before anything trains; an O2TD3 re-evaluation
  run is no V fit O2PPO can continue from."""
  fake = tmp_path / "o2td3_reevaluate"
  fake.mkdir()
  (fake / "config.json").write_text(json.dumps({"phase": "reevaluate", "agent": "o2td3",
                                                "dataset": tiny_hopper_dataset.dataset_id}))
  out = tmp_path / "out"
  res = finetune(f"--dataset={tiny_hopper_dataset.dataset_id}", f"--out_dir={out}", *TINY,
                 *(a.format(fake=fake) for a in args))
  assert res.returncode == 2, res.stderr[-2000:]
  assert res.stderr.strip().splitlines()[-1].startswith(line.format(fake=fake)), res.stderr[-2000:]
  assert "Traceback" not in res.stderr and not out.exists()
