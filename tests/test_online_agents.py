"""SAC/TD3: loss pieces on hand-computed cases, vmap == per-seed, scan == repeated calls, and a
learning signal on a one-step problem."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax import loops, losses
from o2o_jax.agents.online import sac, td3
from o2o_jax.types import Transition, seed_keys, take_index

OBS, ACT, B = 5, 2, 16
AGENTS = {
    "sac": (sac, sac.Config(hidden_dims=(16, 16))),
    "td3": (td3, td3.Config(hidden_dims=(16, 16))),
}


def random_batch(key, n=B):
  k = jax.random.split(key, 5)
  return Transition(observations=jax.random.normal(k[0], (n, OBS)),
                    actions=jax.random.uniform(k[1], (n, ACT), minval=-1, maxval=1),
                    rewards=jax.random.normal(k[2], (n,)),
                    next_observations=jax.random.normal(k[3], (n, OBS)),
                    terminals=(jax.random.uniform(k[4], (n,)) < 0.2).astype(jnp.float32))


def test_td_target_masks_only_terminations():
  y = losses.td_target(jnp.array([1.0, 1.0]), jnp.array([1.0, 0.0]), 0.9, jnp.array([10.0, 10.0]))
  np.testing.assert_allclose(y, [10.0, 1.0])


def test_critic_mse_sums_members_and_stops_target_gradient():
  q = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  t = jnp.array([0.0, 0.0])
  assert losses.critic_mse(q, t) == pytest.approx((1 + 4) / 2 + (9 + 16) / 2)
  g = jax.grad(lambda t: losses.critic_mse(q, t))(t)
  np.testing.assert_array_equal(g, 0.0)


def test_temperature_loss_pushes_alpha_toward_target_entropy():
  # entropy above target (log pi + H_target < 0): the gradient step must lower log alpha.
  g_high = jax.grad(losses.temperature_loss)(0.0, jnp.array([-3.0]), -1.0)
  g_low = jax.grad(losses.temperature_loss)(0.0, jnp.array([3.0]), -1.0)
  assert g_high > 0 and g_low < 0  # gradient descent: log_alpha -= lr * g
  # the references' -log(alpha) form (CORL cql.py `_alpha_and_alpha_loss`): -log 2 * mean([0, 2])
  assert losses.temperature_loss(jnp.log(2.0), jnp.array([1.0, 3.0]), -1.0) == pytest.approx(-np.log(2.0))


def test_smoothed_target_action_clips_noise_and_action():
  a = jnp.array([[0.95, -0.2]])
  out = losses.smoothed_target_action(a, jax.random.PRNGKey(0), policy_noise=100.0, noise_clip=0.5)
  noise = out - a
  assert float(jnp.abs(out).max()) <= 1.0
  assert float(jnp.abs(noise[0, 1])) == pytest.approx(0.5)  # huge noise clipped to +-c


def test_expectile_loss_weights():
  np.testing.assert_allclose(losses.expectile_loss(jnp.array([2.0, -2.0]), 0.7), [0.7 * 4, 0.3 * 4])


def test_polyak():
  out = losses.polyak({"w": jnp.array(0.0)}, {"w": jnp.array(1.0)}, 0.1)
  assert float(out["w"]) == pytest.approx(0.1)


def test_sac_default_target_entropy_is_minus_action_dim():
  state = sac.init(jax.random.PRNGKey(0), OBS, ACT, AGENTS["sac"][1])
  assert state.config.target_entropy == -ACT


def test_td3_actor_is_delayed():
  agent, cfg = AGENTS["td3"]
  state = agent.init(jax.random.PRNGKey(0), OBS, ACT, cfg)
  batch = random_batch(jax.random.PRNGKey(1))
  update = jax.jit(agent.update)
  s1, info1 = update(state, batch, jax.random.PRNGKey(2))     # step 0: actor moves
  s2, info2 = update(s1, batch, jax.random.PRNGKey(3))        # step 1: actor frozen
  assert np.isfinite(info1["actor_loss"]) and np.isnan(info2["actor_loss"])
  chex.assert_trees_all_equal(s1.actor.params, s2.actor.params)
  assert not np.allclose(jax.tree_util.tree_leaves(state.actor.params)[0],
                         jax.tree_util.tree_leaves(s1.actor.params)[0])


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_vmapped_update_equals_per_seed_updates(name):
  agent, cfg = AGENTS[name]
  S = 3
  states = jax.vmap(lambda k: agent.init(k, OBS, ACT, cfg))(seed_keys(0, S))
  batches = jax.vmap(random_batch)(seed_keys(1, S))
  keys = seed_keys(2, S)
  vmapped, vinfo = jax.jit(jax.vmap(agent.update))(states, batches, keys)
  single = jax.jit(agent.update)
  for i in range(S):
    s_i, info_i = single(take_index(states, i), take_index(batches, i), keys[i])
    chex.assert_trees_all_close(take_index(vmapped, i), s_i, rtol=2e-5, atol=2e-6)
    chex.assert_trees_all_close(take_index(vinfo, i), info_i, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_scan_of_k_updates_equals_k_calls(name):
  agent, cfg = AGENTS[name]
  K = 4
  data = random_batch(jax.random.PRNGKey(5), n=64)
  state = agent.init(jax.random.PRNGKey(0), OBS, ACT, cfg)
  chunk = jax.jit(loops.make_offline_chunk(agent.update, batch_size=8, num_updates=K))
  scanned, _ = chunk(state, jax.random.PRNGKey(9), data)
  # The same K updates, one jitted call each, with the keys the chunk derives.
  from o2o_jax.data import replay
  single = jax.jit(agent.update)
  s = state
  for k in jax.random.split(jax.random.PRNGKey(9), K):
    k_sample, k_update = jax.random.split(k)
    s, _ = single(s, replay.sample_offline(data, k_sample, 8), k_update)
  chex.assert_trees_all_close(scanned, s, rtol=2e-5, atol=2e-6)
  assert int(scanned.step) == K


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_critic_learns_one_step_rewards(name):
  """Terminal transitions with reward r(s) = s_0: Q must regress onto r (learning signal)."""
  agent, cfg = AGENTS[name]
  cfg = dataclasses.replace(cfg, critic_lr=1e-3)
  key = jax.random.PRNGKey(0)
  obs = jax.random.normal(key, (256, OBS))
  data = Transition(observations=obs, actions=jnp.zeros((256, ACT)), rewards=obs[:, 0],
                    next_observations=obs, terminals=jnp.ones(256))
  state = agent.init(key, OBS, ACT, cfg)
  chunk = jax.jit(loops.make_offline_chunk(agent.update, batch_size=64, num_updates=300))
  q0 = state.critic.apply_fn(state.critic.params, obs, data.actions)
  state, metrics = chunk(state, jax.random.PRNGKey(1), data)
  q = state.critic.apply_fn(state.critic.params, obs, data.actions)
  err0, err = float(jnp.mean((q0 - obs[:, 0]) ** 2)), float(jnp.mean((q - obs[:, 0]) ** 2))
  assert err < 0.1 * err0, (err0, err)
  assert np.isfinite(metrics["critic_loss"])


def test_sac_actor_moves_toward_higher_q():
  """With a critic fixed to Q(s, a) = -(a - 0.5)^2 summed and a tiny fixed temperature, the SAC
  actor's mode moves to 0.5."""
  agent, cfg = AGENTS["sac"]
  cfg = dataclasses.replace(cfg, autotune_alpha=False, init_alpha=1e-3, actor_lr=1e-3)
  state = agent.init(jax.random.PRNGKey(0), OBS, ACT, cfg)

  def fake_q(params, o, a):
    return jnp.stack([-jnp.sum((a - 0.5) ** 2, -1)] * 2)

  state = state.replace(critic=state.critic.replace(apply_fn=fake_q))
  batch = random_batch(jax.random.PRNGKey(1), n=64)
  step = jax.jit(lambda s, k: sac.update_actor(s, batch, k)[0])
  for i in range(300):
    state = step(state, jax.random.PRNGKey(i))
  assert float(sac.alpha(state)) == pytest.approx(1e-3)  # not tuned when autotune_alpha=False
  mode = sac.act(state, batch.observations, jax.random.PRNGKey(0), explore=False)
  np.testing.assert_allclose(np.asarray(mode).mean(0), [0.5, 0.5], atol=0.1)
