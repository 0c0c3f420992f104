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
from o2o_jax.types import seed_keys, take_index

OBS, ACT = 4, 3
CONFIG = o2ppo.Config(hidden_dims=(16, 16), value_hidden_dims=(16, 16), rollout_length=32,
                      num_minibatches=4, epochs=2, beta_steps=64)


def test_mc_returns_stop_at_episode_boundaries():
  # Two episodes: [0, 1] and [2, 3, 4]; the first ends by a time limit, so no terminal flag marks it.
  ends = o2ppo.episode_end_flags(5, np.array([0, 2]), np.array([2, 3]))
  np.testing.assert_array_equal(ends, [0, 1, 0, 0, 1])
  g = o2ppo.mc_returns(jnp.ones(5), jnp.asarray(ends), 0.5)
  np.testing.assert_allclose(g, [1.5, 1.0, 1.75, 1.5, 1.0])


def test_mc_returns_on_a_dataset_with_truncated_and_terminated_episodes(tiny_hopper_dataset):
  from o2o_jax.data import load_dataset
  ds = load_dataset(tiny_hopper_dataset.dataset_id)
  ends = o2ppo.episode_end_flags(ds.size, ds.episode_starts, ds.episode_lengths)
  g = np.asarray(o2ppo.mc_returns(jnp.asarray(ds.transitions.rewards), jnp.asarray(ends), 0.99))
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
                             rtol=1e-5, atol=1e-6)
  # Sample i's A_ref_i moves its own advantage: eq. 18 before normalisation.
  a_ref = aux * adv.std()
  expected = (adv + 0.7 * a_ref) / 1.7
  np.testing.assert_allclose(mixed, (expected - expected.mean()) / (expected.std() + 1e-5), rtol=1e-4,
                             atol=1e-5)
  # The released broadcast: a (B, B) matrix whose rows never pair A_ref_i with sample i, so
  # shuffling A_ref alone leaves every row's mean unchanged.
  b = o2ppo.mix_advantages(adv, aux, 0.7, "broadcast")
  b_shuffled = o2ppo.mix_advantages(adv, aux[perm], 0.7, "broadcast")
  assert b.shape == (16, 16)
  np.testing.assert_allclose(b.mean(1), b_shuffled.mean(1), rtol=1e-5, atol=1e-6)
  assert not np.allclose(mixed, o2ppo.mix_advantages(adv, aux[perm], 0.7, "paired"))


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
  assert res.returncode == 2 and "--o2ppo_reference must be 'best' or 'interval:N'" in res.stderr
  assert "Traceback" not in res.stderr
