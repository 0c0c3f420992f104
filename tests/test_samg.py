"""SAMG (o2o_jax/agents/o2o/samg.py): the confidence weight, the mixed target, the C-VAE, seed-vmapping,
and the launcher end to end (experiments.finetune --agent=samg_iql) on the tiny dataset.

Compilation dominates the cost here, so the states are built once per base (module fixtures) and the
jitted update functions are shared between tests (same config, same shapes: one compile)."""
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax.agents.o2o import samg
from o2o_jax.agents.offline import awac, cql, iql
from o2o_jax.agents.online import sac
from o2o_jax.types import Transition, stack_trees, take_index

OBS, ACT, B = 5, 2, 8
BASE_CONFIGS = {"cql": cql.Config(hidden_dims=(8, 8), cql_n_actions=2),
                "awac": awac.Config(hidden_dims=(8, 8)),
                "iql": iql.Config(hidden_dims=(8, 8))}
SAMG_UPDATE = jax.jit(samg.update)
BASE_UPDATE = {b: jax.jit(m.update) for b, m in samg.BASES.items()}


def tiny_config(base: str, **kw) -> samg.Config:
  return samg.Config(base=base, base_config=BASE_CONFIGS[base], cvae_hidden_dims=(8,), **kw)


def tiny_batch(key, n=B):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return Transition(observations=jax.random.normal(k1, (n, OBS)),
                    actions=jax.random.uniform(k2, (n, ACT), minval=-1.0, maxval=1.0),
                    rewards=jax.random.normal(k3, (n,)),
                    next_observations=jax.random.normal(k4, (n, OBS)),
                    terminals=jnp.zeros(n).at[0].set(1.0))


@pytest.fixture(scope="module")
def pairs():
  """Two independently initialised SAMG states per base (seed 0 and 1), built lazily."""
  cache = {}

  def get(base):
    if base not in cache:
      init = jax.jit(lambda k: samg.init(k, OBS, ACT, tiny_config(base)))
      cache[base] = (init(jax.random.PRNGKey(0)), init(jax.random.PRNGKey(1)))
    return cache[base]

  return get


def _far_from_offline(state):
  """Latent statistics that put every sample far outside the offline fit: p = 0 everywhere."""
  return state.replace(latent_mean=state.latent_mean + 1e3, latent_std=state.latent_std * 1e-3)


def test_weight_in_unit_interval_zero_below_threshold_and_one_at_the_mode():
  means = jax.random.normal(jax.random.PRNGKey(0), (2000, 3)) * 2.0
  m, s = jnp.array([0.1, -0.2, 0.0]), jnp.array([1.0, 0.5, 2.0])
  weigh = jax.jit(samg.confidence_weight, static_argnums=3)
  p_int = weigh(means, m, s, 0.0)
  assert float(p_int.min()) >= 0.0 and float(p_int.max()) <= 1.0
  # two-sided tail 2 (1 - Phi(z)), averaged over latent dims (eq. 3), by hand for one row
  z = np.abs((np.asarray(means[0]) - np.asarray(m)) / np.asarray(s))
  cdf = statistics.NormalDist().cdf
  assert float(p_int[0]) == pytest.approx(np.mean([2 * (1 - cdf(x)) for x in z]), rel=1e-5)
  p_int = np.asarray(p_int)
  for threshold in (0.3, 0.5, 0.75):
    p = np.asarray(weigh(means, m, s, threshold))
    assert p.min() >= 0.0 and p.max() <= 1.0
    below = p_int < threshold
    assert below.any() and (~below).any()
    np.testing.assert_array_equal(p[below], 0.0)                    # 0 below the threshold
    np.testing.assert_allclose(p[~below], p_int[~below])           # p_int above it
  assert float(weigh(m[None], m, s, 0.5)[0]) == pytest.approx(1.0)             # at the mode
  assert float(weigh((m + 3 * s)[None], m, s, 0.0)[0]) < 0.01                  # far from it


@pytest.mark.parametrize("base", ["awac", "iql"])
def test_target_reduces_to_the_base_algorithm_when_the_weight_is_zero(base, pairs):
  state, other = pairs(base)
  # a different frozen offline critic / value, so a nonzero weight would change the target
  state = _far_from_offline(state.replace(offline_params=other.offline_params))
  batch, key = tiny_batch(jax.random.PRNGKey(2)), jax.random.PRNGKey(3)
  assert float(samg.weight(state, batch.observations, batch.actions).max()) == 0.0
  new, info = SAMG_UPDATE(state, batch, key)
  ref, ref_info = BASE_UPDATE[base](state.base, batch, key)
  chex.assert_trees_all_close(new.base, ref, rtol=1e-5, atol=1e-6)
  assert float(info["target_mean"]) == pytest.approx(float(ref_info["target_mean"]), rel=1e-5)
  assert float(info["samg_weight"]) == 0.0
  # the frozen parts stay frozen
  chex.assert_trees_all_close(new.offline_params, state.offline_params)
  chex.assert_trees_all_close(new.cvae_params, state.cvae_params)


def test_cql_target_reduces_to_cqls_when_the_weight_is_zero(pairs):
  """CQL's target (sac.soft_td_target) with SAMG's hook equals CQL's own at p = 0, and moves to the
  frozen Q_off where p > 0 (compared target to target: a full CQL update costs a long compile)."""
  state, other = pairs("cql")
  state = state.replace(offline_params=other.offline_params)
  batch, key = tiny_batch(jax.random.PRNGKey(2)), jax.random.PRNGKey(3)
  target = jax.jit(lambda st, b, k: sac.soft_td_target(st.base.sac, b, k, samg.next_value_hook(st)))
  own = jax.jit(sac.soft_td_target)(state.base.sac, batch, key)
  np.testing.assert_allclose(target(_far_from_offline(state), batch, key), own, rtol=1e-6)
  near = state.replace(latent_std=state.latent_std * 1e3)          # p ~ 1 for every pair
  assert float(samg.weight(near, batch.observations, batch.actions).min()) > 0.99
  assert float(jnp.abs(target(near, batch, key) - own).max()) > 1e-4


def test_weight_one_bootstraps_from_the_frozen_offline_value(pairs):
  """IQL with p = 1 on every row: y = r + gamma (1 - d) V_off(s'), eq. (4)."""
  state, other = pairs("iql")
  state = state.replace(offline_params=other.base.value.params)
  row = tiny_batch(jax.random.PRNGKey(2), 1)
  batch = jax.tree_util.tree_map(lambda x: jnp.repeat(x, B, axis=0), row)   # one (s, a) repeated
  mu = samg.encoder_means(state.cvae_params, state.config, batch.observations, batch.actions)
  state = state.replace(latent_mean=mu[0])                        # the pair sits at the offline mode
  np.testing.assert_allclose(samg.weight(state, batch.observations, batch.actions), 1.0, rtol=1e-6)
  _, info = SAMG_UPDATE(state, batch, jax.random.PRNGKey(3))
  v_off = state.base.value.apply_fn(state.offline_params, batch.next_observations)
  expected = batch.rewards + state.config.base_config.discount * batch.masks * v_off
  assert float(info["target_mean"]) == pytest.approx(float(expected.mean()), rel=1e-5)
  assert float(info["samg_weight"]) == pytest.approx(1.0)


def test_mixed_target_is_the_intrinsic_reward_form():
  q, q_off, p = jnp.array([1.0, 2.0, -1.0]), jnp.array([3.0, 0.0, -1.0]), jnp.array([0.0, 0.5, 1.0])
  mixed = samg.mixed_next_value(q, q_off, p)
  np.testing.assert_allclose(mixed, [1.0, 1.0, -1.0])
  np.testing.assert_allclose(mixed, q + p * (q_off - q))           # eq. (5): r_in = gamma p (Q_off - Q)


def test_cvae_shapes_kl_annealing_and_the_loss_decreases():
  cfg = samg.Config(cvae_hidden_dims=(16,), cvae_lr=1e-2, kl_anneal_steps=100).resolved(ACT)
  assert cfg.latent_dim == 2 * ACT
  key = jax.random.PRNGKey(0)
  state = jax.jit(lambda k: samg.cvae_init(k, OBS, ACT, cfg))(key)
  data = tiny_batch(key, 256)
  w = jax.random.normal(jax.random.PRNGKey(1), (OBS + ACT, OBS)) * 0.5
  data = data.replace(next_observations=jnp.concatenate([data.observations, data.actions], -1) @ w)
  recon, mean, std = state.vae.apply_fn(state.vae.params, data.observations, data.actions, key)
  assert recon.shape == (256, OBS) and mean.shape == std.shape == (256, 2 * ACT)
  assert float(std.min()) > 0.0
  assert float(samg.kl_coefficient(0, cfg)) == 0.0
  assert float(samg.kl_coefficient(50, cfg)) == pytest.approx(0.25)
  assert float(samg.kl_coefficient(500, cfg)) == pytest.approx(0.5)
  np.testing.assert_allclose(samg.gaussian_kl(jnp.zeros(3), jnp.ones(3)), 0.0, atol=1e-7)

  def body(s, k):
    idx = jax.random.randint(k, (32,), 0, 256)
    return samg.cvae_update(s, jax.tree_util.tree_map(lambda x: x[idx], data), k)

  recon_loss = jax.jit(lambda s: samg.cvae_loss(s.vae.params, s, data, key)[1]["recon_loss"])
  first = float(recon_loss(state))
  state, metrics = jax.jit(lambda s: jax.lax.scan(body, s, jax.random.split(key, 200)))(state)
  last = float(recon_loss(state))
  assert last < 0.5 * first, (first, last)
  assert int(state.vae.step) == 200
  m, s = samg.latent_statistics(samg.encoder_means(state.vae.params, cfg, data.observations, data.actions))
  assert m.shape == s.shape == (2 * ACT,) and float(s.min()) > 0.0


def test_vmapped_update_equals_per_seed_updates(pairs):
  states = stack_trees(pairs("iql"))
  batches = stack_trees([tiny_batch(jax.random.PRNGKey(i + 10)) for i in range(2)])
  # latent statistics fitted on each seed's own batch: a mix of zero and nonzero weights
  mu = jax.vmap(lambda s, b: samg.encoder_means(s.cvae_params, s.config, b.observations, b.actions))(
      states, batches)
  states = states.replace(latent_mean=mu.mean(1), latent_std=mu.std(1))
  ukeys = jax.random.split(jax.random.PRNGKey(5), 2)
  vm, vm_info = jax.jit(jax.vmap(samg.update))(states, batches, ukeys)
  assert 0.0 < float(vm_info["samg_weight_nonzero"].mean()) < 1.0
  for i in range(2):
    s, info = SAMG_UPDATE(take_index(states, i), take_index(batches, i), ukeys[i])
    chex.assert_trees_all_close(take_index(vm, i), s, rtol=1e-5, atol=1e-6)
    assert float(vm_info["samg_weight"][i]) == pytest.approx(float(info["samg_weight"]), abs=1e-6)


# ----------------------------------------------------------------------------- paper App. C extras

def test_weighted_penalty_is_the_p_weighted_mean_of_each_critics_gaps():
  """SAMG paper App. C.1 (CQL): "an offline version of the [conservative] term still weighted by the
  distribution-aware weight": per critic, mean_b p_b gap_b, by hand."""
  gaps = jnp.array([[2.0, -1.0, 4.0, 3.0],
                    [1.0, 1.0, 0.0, 5.0]])
  p = jnp.array([1.0, 0.0, 0.5, 0.0])
  # critic 0: (1*2 + 0*(-1) + 0.5*4 + 0*3) / 4 = 1.0;  critic 1: (1*1 + 0 + 0 + 0) / 4 = 0.25
  np.testing.assert_allclose(samg.weighted_penalty(gaps, p), [1.0, 0.25])


def test_cql_offline_penalty_weights_each_offline_rows_gap_by_p(pairs):
  """SAMG paper App. C.1: CQL's conservative term (CORL `cql.py`, `ContinuousCQL._q_loss`; here
  `cql.conservative_gap`) on offline rows, each row weighted by its p(s, a), times alpha_cql and the
  weight w_off, summed over the critics. p is set by hand: [1, 0, 0.5, 0, ...]."""
  state, _ = pairs("cql")
  sac_state, params = state.base.sac, state.base.sac.critic.params
  offline = tiny_batch(jax.random.PRNGKey(7))
  p = jnp.zeros(B).at[0].set(1.0).at[2].set(0.5)
  key = jax.random.PRNGKey(8)
  config = dataclasses.replace(state.config, cql_offline_penalty=0.5)
  penalty, _ = jax.jit(lambda: samg.cql_offline_penalty(params, sac_state, offline, p, key,
                                                         alpha_prime=1.0, config=config))()
  # by hand: each row's own CQL gap (the base's function on a one-row batch, the row's own key)
  q = sac_state.critic.apply_fn(params, offline.observations, offline.actions)        # (N, B)
  keys = jax.random.split(key, B)
  gap_of = jax.jit(lambda b, q_b, k: cql.conservative_gap(params, sac_state, b, q_b, k))
  rows = [jax.tree_util.tree_map(lambda x: x[i:i + 1], offline) for i in range(B)]
  gaps = np.stack([np.asarray(gap_of(rows[i], q[:, i:i + 1], keys[i])) for i in range(B)], 1)
  alpha_cql = state.config.base_config.cql_alpha
  expected = 0.5 * alpha_cql * sum((1.0 * gaps[i, 0] + 0.5 * gaps[i, 2]) / B for i in range(2))
  assert float(penalty) == pytest.approx(expected, rel=1e-5)
  assert abs(expected) > 1e-3


@pytest.mark.default_fusion_emitters      # samg.update and cql.update bit for bit: two programs
def test_samg_cql_update_adds_the_offline_term_and_is_cqls_own_at_zero_weight(pairs):
  """SAMG paper App. C.1 on CQL: the critic loss gains the p-weighted conservative term on offline
  rows. With p = 0 on every row the step is exactly CORL's CQL step (`cql.update`, which follows
  CORL `ContinuousCQL.train`'s order): the composition changes nothing else. With p ~ 1 the term is
  alpha_cql * sum_i mean_b p_b gap_i,b and the critic moves differently."""
  state, other = pairs("cql")
  state = state.replace(offline_params=other.offline_params)
  batch, offline, key = tiny_batch(jax.random.PRNGKey(2)), tiny_batch(jax.random.PRNGKey(4)), jax.random.PRNGKey(3)
  update = jax.jit(samg.update)
  ref, _ = jax.jit(cql.update)(state.base, batch, key)
  far = _far_from_offline(state)
  new, info = update(far, batch, key, offline)
  chex.assert_trees_all_close(new.base, ref, rtol=0, atol=0)           # bit for bit
  assert float(info["samg_offline_penalty"]) == 0.0 and int(new.updates) == 1
  # p ~ 1 on every row: the term is on, with the size of CQL's own alpha_cql * sum_i gap_i
  near = state.replace(latent_std=state.latent_std * 1e3, offline_params=state.base.sac.critic.params)
  new, info = update(near, batch, key, offline)
  p_off = float(info["samg_offline_weight"])
  assert p_off > 0.99
  n_critics = state.config.base_config.num_critics
  expected = state.config.base_config.cql_alpha * n_critics * float(info["samg_offline_gap"])
  assert float(info["samg_offline_penalty"]) == pytest.approx(expected, rel=2e-3)
  online_term = state.config.base_config.cql_alpha * n_critics * float(info["cql_gap"])   # CQL's own
  assert float(info["critic_loss"]) == pytest.approx(
      float(info["td_loss"]) + online_term + float(info["samg_offline_penalty"]), rel=1e-5)
  diff = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), new.base.sac.critic.params,
                                ref.sac.critic.params)
  assert max(jax.tree_util.tree_leaves(diff)) > 1e-6
  # the actor step does not see the offline rows (CQL's actor is on the online batch)
  chex.assert_trees_all_close(new.base.sac.actor, ref.sac.actor, rtol=0, atol=0)


def test_update_with_offline_splits_offline_rows_then_online_rows():
  """The online loop's mixed batch (`replay.sample_mixed`, offline rows first) at
  OFFLINE_FRACTION = 0.5 is split into equal halves; `uses_offline_rows` only for CQL with w_off > 0."""
  off, on = tiny_batch(jax.random.PRNGKey(0), 4), tiny_batch(jax.random.PRNGKey(1), 4)
  mixed = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), off, on)
  got_off, got_on = samg.split_offline_rows(mixed)
  chex.assert_trees_all_close((got_off, got_on), (off, on))
  assert samg.OFFLINE_FRACTION == 0.5
  assert tiny_config("cql").uses_offline_rows
  assert not tiny_config("cql", cql_offline_penalty=0.0).uses_offline_rows
  assert not tiny_config("iql").uses_offline_rows and not tiny_config("awac").uses_offline_rows


def test_guidance_is_on_before_the_cutoff_step_and_off_after_it():
  """SAMG paper App. C.4: "we cut the offline guidance and revert to the vanilla algorithms after a
  specific period": with guidance_steps = 3, updates 0, 1, 2 keep p; 3, 4 set p = 0 (jnp.where on
  the traced counter, so it jits and vmaps); None keeps the guidance always."""
  updates = jnp.arange(5)
  np.testing.assert_array_equal(samg.guidance_active(updates, 3), [True, True, True, False, False])
  np.testing.assert_array_equal(samg.guidance_active(updates, None), [True] * 5)
  np.testing.assert_array_equal(samg.guidance_active(updates, 0), [False] * 5)
  p = jnp.full((5, 2), 0.7)
  gated = jax.jit(jax.vmap(lambda w, u: samg.gate_weights(w, u, 3)))(p, updates)
  np.testing.assert_allclose(gated, [[0.7, 0.7]] * 3 + [[0.0, 0.0]] * 2)


def test_after_the_cutoff_samg_is_the_base_algorithm(pairs):
  """SAMG paper App. C.4 on IQL: with guidance_steps = 2 and p ~ 1, update 1 (the second) still
  bootstraps from V_off (eq. 4 with p = 1); update 2 is exactly IQL's own update (p = 0)."""
  state, other = pairs("iql")
  config = dataclasses.replace(state.config, guidance_steps=2)
  state = state.replace(config=config, offline_params=other.base.value.params,
                        latent_std=state.latent_std * 1e3)           # p ~ 1 everywhere
  batch, key = tiny_batch(jax.random.PRNGKey(2)), jax.random.PRNGKey(3)
  update = jax.jit(samg.update)
  before, info = update(state.replace(updates=jnp.int32(1)), batch, key)
  assert float(info["samg_weight"]) > 0.99 and float(info["samg_guidance"]) == 1.0
  ref, ref_info = BASE_UPDATE["iql"](state.base, batch, key)
  assert abs(float(info["target_mean"]) - float(ref_info["target_mean"])) > 1e-4
  assert int(before.updates) == 2
  after, info = update(before.replace(base=state.base), batch, key)
  assert float(info["samg_weight"]) == 0.0 and float(info["samg_guidance"]) == 0.0
  chex.assert_trees_all_close(after.base, ref, rtol=1e-6, atol=1e-7)
  assert int(after.updates) == 3


def test_deterministic_iql_explores_with_corls_clipped_noise():
  """CORL `finetune/iql.py` (online loop, `iql_deterministic`): noise = (randn * expl_noise)
  .clamp(-noise_clip, noise_clip), action = clamp(action + noise, -max_action, max_action), with
  `expl_noise` 0.03 and `noise_clip` 0.5 (its TrainConfig defaults)."""
  assert samg.Config().exploration_noise == 0.03 and samg.Config().exploration_noise_clip == 0.5
  cfg = tiny_config("iql")
  cfg = dataclasses.replace(cfg, base_config=dataclasses.replace(cfg.base_config, deterministic=True))
  state = jax.jit(lambda k: samg.init(k, OBS, ACT, cfg))(jax.random.PRNGKey(0))
  obs = jax.random.normal(jax.random.PRNGKey(5), (4000, OBS))
  act = jax.jit(samg.act, static_argnums=3)
  key = jax.random.PRNGKey(1)
  greedy = np.asarray(act(state, obs, key, False))
  noisy = np.asarray(act(state, obs, key, True))
  z = np.asarray(jax.random.normal(jax.random.split(key)[1], greedy.shape))
  np.testing.assert_allclose(noisy, np.clip(greedy + np.clip(0.03 * z, -0.5, 0.5), -1.0, 1.0),
                             rtol=1e-6, atol=1e-6)
  assert np.std(noisy - greedy) == pytest.approx(0.03, rel=0.05)
  # the clip: with std 10 almost every draw sits at the +-0.5 bound
  loud = state.replace(config=dataclasses.replace(state.config, exploration_noise=10.0))
  delta = np.asarray(act(loud, obs, key, True)) - greedy
  np.testing.assert_allclose(delta, np.clip(greedy + np.clip(10.0 * z, -0.5, 0.5), -1.0, 1.0) - greedy,
                             atol=1e-6, rtol=0)
  inside = np.abs(greedy) < 0.5                       # where the action bound cannot cut the noise
  assert np.abs(delta).max() <= 0.5 + 1e-6
  assert np.isclose(np.abs(delta[inside]), 0.5, atol=1e-6).mean() > 0.95


def test_act_explores_around_a_deterministic_iql_actor():
  cfg = tiny_config("iql")
  cfg = dataclasses.replace(cfg, base_config=dataclasses.replace(cfg.base_config, deterministic=True))
  state = jax.jit(lambda k: samg.init(k, OBS, ACT, cfg))(jax.random.PRNGKey(0))
  obs = jnp.zeros((4, OBS))
  act = jax.jit(samg.act, static_argnums=3)
  greedy = act(state, obs, jax.random.PRNGKey(1), False)
  noisy = act(state, obs, jax.random.PRNGKey(1), True)
  chex.assert_trees_all_close(greedy, state.base.actor.apply_fn(state.base.actor.params, obs))
  assert float(jnp.abs(noisy - greedy).max()) > 1e-3 and float(jnp.abs(noisy).max()) <= 1.0


def test_cvae_stage_resumes_exactly_after_a_crash(tiny_hopper_dataset, tmp_path, crash_at,
                                                  same_outputs):
  """train_cvae with snapshots every 10 steps: killed at step 30 (after the snapshot at 20) and rerun,
  it writes the very checkpoint and metrics of the uninterrupted run and drops its snapshots."""
  from o2o_jax.recipes import samg as samg_recipe
  config = samg.Config(cvae_hidden_dims=(8,)).resolved(3)

  def train(name, log=print):
    spec = samg_recipe.cvae_spec(tiny_hopper_dataset.dataset_id, config, seeds=2, seed=0, steps=30,
                                 batch_size=16, run_name=name, out_dir=str(tmp_path), restart=False,
                                 progress=False, checkpoint_every=10)
    return samg_recipe.train_cvae(spec, config, log=log)

  ref = train("reference", log=lambda *_: None)
  crash_at("cvae", 25)
  with pytest.raises(Exception, match="crashed by the fault injection"):
    train("crashed")
  run = ref.parent / "crashed"
  assert sorted(p.name for p in (run / "progress").iterdir() if p.name.isdigit()) == ["10", "20"]
  crash_at(None)
  logs = []
  assert train("crashed", log=logs.append) == run
  assert f"[cvae] resuming from the snapshot at step 20 ({run / 'progress'})" in logs
  assert not (run / "progress").exists()
  same_outputs(run, ref)
  logs = []
  assert train("crashed", log=logs.append) == run          # finished: reused, not retrained
  assert logs == [f"[cvae] reusing the finished run {run}"]
  restored = samg_recipe.restore_cvae(run, 2)   # the fine-tuning's view of it (recipe.load_run)
  assert restored["latent_mean"].shape == (2, 6) and int(restored["cvae"].vae.step[0]) == 30
  from o2o_jax.errors import O2OError
  with pytest.raises(O2OError, match="has 2 seeds, the offline run 3"):
    samg_recipe.restore_cvae(run, 3)


# ----------------------------------------------------------------------------- launcher

TINY = ["--seeds=2", "--budget=quick", "--pretrain_steps=40", "--samg_cvae_steps=40",
        "--samg_cvae_hidden=8", "--online_steps=40", "--samg_prefill=20", "--eval_every=20",
        "--eval_episodes=1", "--hidden_dims=8,8", "--batch_size=16", "--progress=false"]


def finetune(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.finetune", *args], env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_samg_iql_launcher_end_to_end(tiny_hopper_dataset, tmp_path):
  ds = tiny_hopper_dataset.dataset_id
  res = finetune("--agent=samg_iql", f"--dataset={ds}", f"--out_dir={tmp_path}", *TINY)
  assert res.returncode == 0, res.stderr[-4000:]
  name = ds.replace("/", "_")
  for phase, agent in (("pretrain", "iql"), ("cvae", "samg"), ("finetune", "samg_iql")):
    run = tmp_path / phase / agent / name / "seed0x2"
    assert (run / "config.json").exists() and (run / "checkpoints").exists(), phase
  run = tmp_path / "finetune" / "samg_iql" / name / "seed0x2"
  summary = json.loads((run / "summary.json").read_text())
  assert len(summary["offline"]) == 2 and len(summary["final"]) == 2
  assert summary["curve_steps"] == [20, 40]
  for line in ("pi_off (offline)", "best fine-tuned", "final fine-tuned", "[cvae] done"):
    assert line in res.stdout
  header = (run / "metrics.csv").read_text().splitlines()[0]
  for col in ("train/samg_weight", "train/critic_loss", "eval/normalized_score/seed1"):
    assert col in header
  config = json.loads((run / "config.json").read_text())
  assert config["agent_config"]["base"] == "iql" and config["prefill"] == 20


def test_samg_cql_config_overrides_land_in_its_runs(tiny_hopper_dataset, tmp_path):
  """--config.<field> overrides samg.Config after the --samg_* options (--config.threshold wins over
  --samg_threshold), for the fine-tuning and, for a C-VAE field, the cvae run; --from a pretrain run
  skips the pretraining but not the C-VAE; an unknown field or the base is one line, before any work."""
  ds = tiny_hopper_dataset.dataset_id
  name = ds.replace("/", "_")
  res = finetune("--agent=samg_cql", f"--dataset={ds}", f"--out_dir={tmp_path}", *TINY,
                 "--samg_threshold=0.6", "--config.threshold=0.3", "--config.kl_weight=0.25",
                 "--config.cql_offline_penalty=0.5")
  assert res.returncode == 0, res.stderr[-4000:]
  run = tmp_path / "finetune" / "samg_cql" / name / "seed0x2"
  config = json.loads((run / "config.json").read_text())
  agent_config = config["agent_config"]
  assert (agent_config["threshold"], agent_config["kl_weight"]) == (0.3, 0.25)
  assert agent_config["cql_offline_penalty"] == 0.5 and agent_config["base"] == "cql"
  cvae = json.loads((tmp_path / "cvae" / "samg" / name / "seed0x2" / "config.json").read_text())
  assert cvae["cvae_config"]["kl_weight"] == 0.25
  # --from the pretrain run: it is not retrained, a changed C-VAE is (a new run name).
  pretrain = tmp_path / "pretrain" / "cql" / name / "seed0x2"
  res = finetune("--agent=samg_cql", f"--from={pretrain}", f"--out_dir={tmp_path}", *TINY,
                 "--run_name=again", "--config.kl_weight=0.125", "--online_steps=20")
  assert res.returncode == 0, res.stderr[-4000:]
  assert "[pretrain]" not in res.stdout and "[cvae] done" in res.stdout
  again = json.loads((tmp_path / "finetune" / "samg_cql" / name / "again" / "config.json").read_text())
  assert again["agent_config"]["kl_weight"] == 0.125 and again["from"] == str(pretrain)
  # Refused by the runner before any work (in process: the launcher's one-line path is
  # tests/test_launchers.py::test_finetune_refuses_before_any_work_with_one_line).
  from o2o_jax import recipe as recipe_lib
  from o2o_jax.errors import O2OError
  cvae_dir = tmp_path / "cvae" / "samg" / name / "seed0x2"
  out = tmp_path / "refused"
  for overrides, settings, line in (
      ({"no_such_field": "1"}, {}, "--config.no_such_field: o2o_jax.agents.o2o.samg.Config has no "
                                   "field 'no_such_field'; valid fields: base, base_config, "),
      ({"base": "iql"}, {}, "--config.base: samg_cql's base algorithm is the one its name says (cql); "
                            "pass --agent=samg_<base> instead"),
      ({"threshold": "2"}, {}, "SAMG threshold must lie in [0, 1] (got 2.0)"),
      ({}, {"from": str(cvae_dir)}, f"--from={cvae_dir} is a cvae run of samg, which samg_cql cannot "
                                    "continue from")):
    recipe, ctx = _recipe_and_context("samg_cql", out, dataset=ds, **settings)
    ctx.overrides.update(overrides)
    with pytest.raises(O2OError) as e:
      recipe_lib.run(recipe, ctx, from_dir=settings.get("from"))
    assert str(e.value).startswith(line) and "\n" not in str(e.value)
    assert not out.exists()


def _recipe_and_context(agent, tmp_path, options=None, **settings):
  """The agent's recipe and a Context as experiments.finetune builds it from flags."""
  from o2o_jax import recipe as recipe_lib
  from o2o_jax import recipes
  recipe = recipes.get(agent)
  values = {**dict(budget="quick", seeds=1, seed=0, batch_size=16, dataset="d", out_dir=str(tmp_path),
                  progress=False), **settings}
  return recipe, recipe_lib.Context.build(recipe, values, options or {}, given=tuple(settings))


class _NoWork(Exception):
  pass


@pytest.mark.parametrize("settings, options, message", [
    ({}, {"samg_threshold": 1.5}, "--samg_threshold must lie in [0, 1]"),
    ({"warmup_steps": 0}, {"samg_prefill": 0}, "--samg_prefill + --warmup_steps must be at least 1"),
    ({"utd": 0}, {}, "--utd must be at least 1"),
    ({}, {"samg_guidance_steps": -1}, "--samg_guidance_steps must not be negative"),
    ({}, {"samg_cvae_steps": 0}, "--samg_cvae_steps must be positive (got 0)"),
    ({"online_steps": 0}, {}, "--online_steps must be positive (got 0)"),
    ({"seeds": 0}, {}, "--seeds must be at least 1"),
    ({}, {"samg_cql_offline_penalty": 1.0}, "--samg_cql_offline_penalty is not an option of samg_iql")])
def test_recipe_rejects_bad_settings_before_any_work(settings, options, message, tmp_path,
                                                     monkeypatch):
  from o2o_jax import recipe as recipe_lib
  from o2o_jax.errors import O2OError
  from o2o_jax.recipes import offline

  def no_work(**kw):
    raise _NoWork
  monkeypatch.setattr(offline, "pretrain", no_work)
  with pytest.raises(O2OError, match=re.escape(message)):
    recipe, ctx = _recipe_and_context("samg_iql", tmp_path, options, **settings)
    recipe_lib.run(recipe, ctx)
  assert not any(tmp_path.iterdir())


class _StopAtPretrain(Exception):
  pass


@pytest.mark.parametrize("agent, budget, dims", [
    ("samg_cql", "paper", (256, 256, 256)), ("samg_awac", "paper", (256, 256, 256)),
    ("samg_iql", "paper", (256, 256)), ("samg_cql", "quick", (64, 64))])
def test_paper_budget_keeps_each_base_algorithms_own_networks(agent, budget, dims, monkeypatch,
                                                              tmp_path):
  """--budget=paper trains the base with its own default architecture: CORL `cql.py` (actor and
  critics 3x256, `q_n_hidden_layers: 3`), CORL `awac.py` (3x256), CORL `iql.py` (2x256); only
  --budget=quick shrinks them (issue 19, point 2). At 'paper' the recipe passes no sizes, so
  offline.pretrain builds the base Config's defaults (with the dataset preset's overrides)."""
  from o2o_jax import recipe as recipe_lib
  from o2o_jax.recipes import offline
  from o2o_jax.recipes import samg as samg_recipe
  seen = {}

  def fake_pretrain(**kw):
    seen.update(kw)
    raise _StopAtPretrain

  monkeypatch.setattr(offline, "pretrain", fake_pretrain)
  recipe, ctx = _recipe_and_context(agent, tmp_path, budget=budget)
  with pytest.raises(_StopAtPretrain):
    recipe_lib.run(recipe, ctx)
  base = agent.split("_")[1]
  assert seen["algo"] == base and seen["preset"] == "corl" and seen["chain"] is None
  built = seen["hidden_dims"] or tuple(samg.BASES[base].Config().hidden_dims)
  assert built == dims
  assert (seen["hidden_dims"] is None) == (budget == "paper")
  recipe, ctx = _recipe_and_context(agent, tmp_path, budget=budget, hidden_dims=["32", "32"])
  with pytest.raises(_StopAtPretrain):
    recipe_lib.run(recipe, ctx)
  assert seen["hidden_dims"] == (32, 32)                                  # --hidden_dims wins
  assert samg_recipe.network_dims(["32", "32"]) == (32, 32)
  assert samg_recipe.network_dims([]) is None                             # --hidden_dims=: the base's
  assert cql.Config().critic_hidden_dims is None                         # CQL's critics = its actor's


def test_from_refuses_a_pretrain_run_of_another_base_in_one_line(tmp_path):
  from o2o_jax import recipe as recipe_lib
  from o2o_jax.errors import O2OError
  run = tmp_path / "pretrain" / "cql" / "d" / "seed0x1"
  run.mkdir(parents=True)
  (run / "config.json").write_text(json.dumps({"phase": "pretrain", "algo": "cql", "dataset": "d"}))
  recipe, ctx = _recipe_and_context("samg_iql", tmp_path)
  with pytest.raises(O2OError, match=re.escape(f"--from={run} is a pretrain run of cql, which "
                                               "samg_iql cannot continue from")):
    recipe_lib.run(recipe, ctx, from_dir=run)
