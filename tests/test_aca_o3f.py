"""ACA and O3F (issue #7): each method's distinguishing mechanism, seed-vmap equivalence, and one
end-to-end launcher run per agent on the tiny dataset."""
import dataclasses
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax import networks
from o2o_jax.agents.o2o import aca, o3f
from random_batches import random_transitions

OBS, ACT, B = 5, 3, 16


def _batch(key, n=B):
  return random_transitions(key, n, OBS, ACT)


# ----------------------------------------------------------------------------- ACA

ACA_TINY = aca.Config(hidden_dims=(16, 16))


@pytest.fixture(scope="module")
def aca_switched():
  """An offline-stage ACA state (random pi and Z; the SAC+ML step runs in the launcher test) and the
  same after the switch."""
  state = jax.jit(aca.init, static_argnums=(1, 2, 3))(jax.random.PRNGKey(0), OBS, ACT, ACA_TINY)
  return state, jax.jit(aca.start_online, static_argnums=1)(state, ACT)


def test_aca_critic_at_the_switch_is_baseline_plus_log_pi0(aca_switched):
  offline, online = aca_switched
  obs = _batch(jax.random.PRNGKey(2)).observations
  uniform = jax.random.uniform(jax.random.PRNGKey(3), (B, ACT), minval=-1, maxval=1)

  @jax.jit
  def by_hand(offline, online, obs, uniform, key):
    z = offline.baseline.apply_fn(offline.baseline.params, obs)                   # Z_k(s): (2, B)
    pi0 = offline.actor.apply_fn(offline.actor.params, obs)
    actions = pi0.sample(seed=key)
    r_uniform = online.critic.apply_fn(online.critic.params, obs, uniform)
    return z, actions, pi0.log_prob(actions), pi0.log_prob(uniform), r_uniform

  z, actions, logp0, logp0_uniform, r_uniform = by_hand(offline, online, obs, uniform,
                                                        jax.random.PRNGKey(4))
  # R := Z: for any action (here uniform ones) R_k(s, a) = Z_k(s).
  np.testing.assert_allclose(r_uniform, z, atol=1e-5)
  # Q = R + w0 c(log pi0) = Z(s) + log pi0(a|s) at w0 = 1 for actions pi0 takes (far above the clip
  # at 7 standard deviations) ...
  aligned_q = jax.jit(aca.aligned_q)
  q = aligned_q(online, online.critic.params, obs, actions)
  np.testing.assert_allclose(q, z + logp0[None], atol=1e-4, rtol=1e-5)
  # ... and exactly Z + log pi0 for every action without the clip.
  no_clip = online.replace(config=dataclasses.replace(online.config, clip_beta=None))
  for a, logp in ((actions, logp0), (uniform, logp0_uniform)):
    q = aligned_q(no_clip, no_clip.critic.params, obs, a)
    np.testing.assert_allclose(q, z + logp[None], atol=1e-4, rtol=1e-5)
  # the rest of the switch: target = R, pi0 = pi (frozen copy), alpha = 1, w = w0, step 0.
  chex.assert_trees_all_close(online.target_critic_params, online.critic.params)
  chex.assert_trees_all_close(online.offline_actor_params, offline.actor.params)
  assert float(jnp.exp(online.temperature.params["log_alpha"])) == 1.0
  assert float(online.weight) == ACA_TINY.w_init and int(online.step) == 0
  assert online.config.target_entropy == -ACA_TINY.entropy_coef * ACT


def test_aca_smooth_lower_clip(aca_switched):
  _, online = aca_switched
  obs = _batch(jax.random.PRNGKey(5)).observations
  beta = 2.0

  @jax.jit
  def clips(online, obs):
    pi0 = aca.reference_policy(online, obs)
    base = pi0.distribution
    by_hand = jnp.minimum(*(networks.tanh_gaussian_log_prob_reference(
        base.loc, base.scale_diag, jnp.tanh(base.loc + sign * beta * base.scale_diag))
        for sign in (1, -1)))
    return aca.clip_threshold(pi0, beta), by_hand

  x_clip, by_hand = clips(online, obs)
  np.testing.assert_allclose(x_clip, by_hand, rtol=1e-4, atol=1e-3)
  x = jnp.stack([x_clip + 40.0, x_clip - 40.0])
  c = np.asarray(aca.smooth_clip(x, x_clip))
  np.testing.assert_allclose(c, np.stack([x_clip + 40.0, x_clip]), atol=1e-4)


def test_aca_z_fit_keeps_the_offline_actor_fixed(aca_switched):
  offline, _ = aca_switched
  new, info = jax.jit(aca.fit_baseline_step)(offline, _batch(jax.random.PRNGKey(6)), jax.random.PRNGKey(6))
  chex.assert_trees_all_close(new.actor.params, offline.actor.params)
  assert not np.allclose(jax.tree_util.tree_leaves(new.baseline.params)[0],
                         jax.tree_util.tree_leaves(offline.baseline.params)[0])
  assert np.isfinite(float(info["baseline_loss"])) and int(new.step) == int(offline.step) + 1


# Reference order of ACA's step, checked by hand: a linear double critic R_k(s, a) = w_k . a + c_k and
# an actor tanh(N(mu, sigma^2)) with sigma = 1e-3 for every state, so that a ~ pi is tanh(mu) to 1e-3
# and E log pi(a|s) = sum_d (-log sigma - log(2 pi)/2 - 1/2 - log(1 - tanh(mu_d)^2)) to O(sigma).
# The temperature starts at alpha = 1 with learning rate 0.5: Adam's first step moves log alpha by
# exactly 0.5 (log pi + H >> 0 at this sigma, so alpha rises: alpha = e^0.5 after the step).

ORDER_MU = np.array([0.3, -0.2, 0.1], np.float32)
ORDER_W = np.array([[1.0, -2.0, 0.5], [0.5, 1.5, -1.0]], np.float32)
ORDER_C = np.array([0.1, -0.3], np.float32)
ORDER_SIGMA = 1e-3


def _fake_actor(params, observations):
  shape = (observations.shape[0], ACT)
  return networks.TanhGaussian(jnp.broadcast_to(params["mu"], shape), jnp.full(shape, ORDER_SIGMA))


def _linear_critic(params, observations, actions):
  return (actions @ params["w"].T).T + params["c"][:, None]


def _fake_baseline(params, observations):
  return jnp.broadcast_to(params["z"][:, None], (2, observations.shape[0]))


def _order_state(state):
  from o2o_jax.agents.common import make_train_state
  actor_params = {"mu": jnp.asarray(ORDER_MU)}
  critic_params = {"w": jnp.asarray(ORDER_W), "c": jnp.asarray(ORDER_C)}
  return state.replace(
      actor=make_train_state(None, actor_params, 3e-4).replace(apply_fn=_fake_actor),
      critic=make_train_state(None, critic_params, 3e-4).replace(apply_fn=_linear_critic),
      target_critic_params=critic_params, offline_actor_params=actor_params,
      baseline=make_train_state(None, {"z": jnp.zeros(2)}, 3e-4).replace(apply_fn=_fake_baseline),
      temperature=make_train_state(None, {"log_alpha": jnp.zeros((), jnp.float32)}, 0.5),
      config=dataclasses.replace(state.config, clip_beta=None))


def _expected_log_pi():
  mu = ORDER_MU.astype(np.float64)
  return np.sum(-np.log(ORDER_SIGMA) - 0.5 * np.log(2 * np.pi) - 0.5 - np.log(1 - np.tanh(mu) ** 2))


def test_aca_online_temperature_step_comes_first(aca_switched):
  """Official ACA `aca_agent/aca.py`, `ACA._update`: `self._impl.update_temp(batch)` (on its own
  `self._policy.sample_with_log_prob(batch.observations)`), then `update_critic`, then `update_actor`,
  then the targets; `ACAImpl.compute_target` reads `self._log_temp().exp()` after the temperature step.
  Target by hand (pi = pi0, w = 1, no clip): y = r + gamma [min_k R'_k(s', a') + (1 - alpha) log pi(a'|s')]."""
  _, online = aca_switched
  state = _order_state(online)
  b = _batch(jax.random.PRNGKey(20), n=4096)
  new, info = jax.jit(aca.online_update)(state, b, jax.random.PRNGKey(21))
  alpha_after = np.exp(0.5)
  np.testing.assert_allclose(float(info["alpha"]), alpha_after, rtol=1e-4)
  min_r = np.min(ORDER_W.astype(np.float64) @ np.tanh(ORDER_MU.astype(np.float64)) + ORDER_C)
  r = float(np.mean(np.asarray(b.rewards, np.float64)))
  gamma = ACA_TINY.discount
  expected = r + gamma * (min_r + (1.0 - alpha_after) * _expected_log_pi())
  lagging = r + gamma * min_r                          # alpha = 1 (before the temperature step)
  assert abs(expected - lagging) > 5.0
  np.testing.assert_allclose(float(info["target_mean"]), expected, atol=0.05)


def test_aca_sacml_temperature_step_comes_first():
  """Official ACA `sacml_agent/sacml.py`, `SACML._update`: `update_temp`, then `update_critic`, then
  `update_baseline`, then `update_actor`, then the targets; `SACMLImpl.compute_target` subtracts
  `self._log_temp().exp() * log_prob` after the temperature step. Q's target by hand:
  y = r + gamma [min_k Q'_k(s', a') - alpha log pi(a'|s')] with alpha = e^0.5."""
  offline = jax.jit(aca.init, static_argnums=(1, 2, 3))(
      jax.random.PRNGKey(0), OBS, ACT, dataclasses.replace(ACA_TINY, init_alpha=1.0))
  state = _order_state(offline)
  b = _batch(jax.random.PRNGKey(22), n=4096)
  new, info = jax.jit(aca.offline_step)(state, b, jax.random.PRNGKey(23))
  alpha_after = np.exp(0.5)
  np.testing.assert_allclose(float(info["alpha"]), alpha_after, rtol=1e-4)
  min_q = np.min(ORDER_W.astype(np.float64) @ np.tanh(ORDER_MU.astype(np.float64)) + ORDER_C)
  r = float(np.mean(np.asarray(b.rewards, np.float64)))
  gamma = ACA_TINY.discount
  expected = r + gamma * (min_q - alpha_after * _expected_log_pi())
  lagging = r + gamma * (min_q - 1.0 * _expected_log_pi())
  assert abs(expected - lagging) > 5.0
  np.testing.assert_allclose(float(info["target_mean"]), expected, atol=0.05)


def test_aca_critic_and_baseline_use_d3rlpy_default_init():
  """d3rlpy 1.1 (`d3rlpy/models/torch/encoders.py`, `VectorEncoder`; `q_functions`, `v_functions`)
  builds plain `nn.Linear` layers without a custom init: PyTorch's default U(+-1/sqrt(fan_in)). ACA's
  Q, R and Z keep it even when the actor comes from an orthogonally initialised CQL actor."""
  config = dataclasses.replace(ACA_TINY, orthogonal_init=True)
  state = jax.jit(aca.init, static_argnums=(1, 2, 3))(jax.random.PRNGKey(0), OBS, ACT, config)
  assert config.critic_init == "torch"
  for kernel, fan_in in (
      (state.baseline.params["params"]["VmapValueNet_0"]["MLP_0"]["Dense_0"]["kernel"], OBS),
      (state.critic.params["params"]["VmapCritic_0"]["MLP_0"]["Dense_0"]["kernel"], OBS + ACT)):
    k = np.asarray(kernel)
    assert np.abs(k).max() <= 1.0 / np.sqrt(fan_in)
    gram = k[0] @ k[0].T                              # not orthogonal (sqrt 2 would give 2 I)
    assert not np.allclose(gram, np.diag(np.diag(gram)), atol=1e-2)


def test_aca_sacml_pretrain_keeps_raw_states():
  """Official ACA `run_sacml.py` and `run_aca.py`, `main`: `SACML(...)` and `ACA(...)` are built
  without a `scaler` (d3rlpy's default None), so observations are not standardised."""
  from o2o_jax.recipes import aca as aca_recipe
  assert aca_recipe.pretrain_normalizes_states("sacml") is False
  assert aca_recipe.pretrain_normalizes_states("cql") is None          # that algorithm's preset
  assert aca_recipe.pretrain_normalizes_states("sacml", aca_normalize_states=True) is True


def test_aca_presets():
  assert aca.dataset_preset("hopper", "medium-replay")["top_n_trajectories"] == 50
  assert aca.dataset_preset("antmaze", "umaze")["entropy_coef"] == 0.5


# ----------------------------------------------------------------------------- O3F

O3F_TINY = o3f.Config(hidden_dims=(16, 16), num_candidates=12)


@pytest.fixture(scope="module")
def o3f_state():
  return jax.jit(o3f.init, static_argnums=(1, 2, 3))(jax.random.PRNGKey(10), OBS, ACT, O3F_TINY)


def test_o3f_switch_applies_the_online_configs_learning_rates(o3f_state):
  """`--config.critic_lr` / `value_lr` given to an O3F run reach the online phase: `start_online`
  steps the critic and V at the online Config's rates, their Adam moments kept (session 12 found the
  offline optimizer's rate kept silently). Adam's first step on a constant gradient is lr * sign."""
  online = dataclasses.replace(O3F_TINY, critic_lr=1e-2, value_lr=2e-3, online_actor_lr=5e-4)
  state = o3f.start_online(o3f_state, online)
  for name, lr in (("critic", 1e-2), ("value", 2e-3), ("actor", 5e-4)):
    ts = getattr(state, name)
    grads = jax.tree_util.tree_map(jnp.ones_like, ts.params)
    updates, _ = ts.tx.update(grads, ts.opt_state, ts.params)
    np.testing.assert_allclose(np.concatenate([np.ravel(u) for u in jax.tree_util.tree_leaves(updates)]),
                               -lr, rtol=1e-4, err_msg=name)
  # The moments are the offline run's, not fresh ones (same pytree object values).
  chex.assert_trees_all_equal(state.critic.opt_state, o3f_state.critic.opt_state)


@pytest.mark.parametrize("omega", [0.0, 1.0])
def test_o3f_executes_the_arg_max_candidate(o3f_state, omega):
  state = o3f_state.replace(config=dataclasses.replace(O3F_TINY, omega=omega))
  obs = _batch(jax.random.PRNGKey(11), 4).observations
  candidates = jax.random.uniform(jax.random.PRNGKey(12), (4, 12, ACT), minval=-1, maxval=1)
  select = jax.jit(o3f.select_candidate)
  chosen = select(state, obs, candidates)
  # scores by hand: all (state, candidate) pairs as one flat batch through each of the 5 critics
  q = jax.jit(state.critic.apply_fn)(state.critic.params, jnp.repeat(obs, 12, axis=0),
                                     candidates.reshape(4 * 12, ACT))
  q = np.asarray(q).reshape(5, 4, 12)
  score = q.mean(0) + omega * q.std(0)                                         # population std
  np.testing.assert_allclose(chosen, candidates[np.arange(4), np.argmax(score, axis=1)])


def test_o3f_with_sigma_zero_reproduces_the_policy_action(o3f_state):
  obs = _batch(jax.random.PRNGKey(13), 4).observations
  key = jax.random.PRNGKey(14)
  act = jax.jit(o3f.act, static_argnums=3)
  k_policy, _ = jax.random.split(key)
  policy_action = jax.jit(o3f.policy_action)(o3f_state, obs, k_policy)
  exact = o3f_state.replace(config=dataclasses.replace(O3F_TINY, sigma=0.0))
  np.testing.assert_allclose(act(exact, obs, key, True), policy_action, atol=1e-6)
  # with sigma > 0 the executed action is a candidate off the policy action, inside the box
  explored = act(o3f_state, obs, key, True)
  assert not np.allclose(explored, policy_action) and np.all(np.abs(explored) <= 1.0)
  # evaluation: the deterministic policy mean, tanh(mu(s)) of IQL's Gaussian actor
  mean = jax.jit(lambda s, o: s.actor.apply_fn(s.actor.params, o).mode())(o3f_state, obs)
  np.testing.assert_allclose(act(o3f_state, obs, key, False), mean, atol=1e-6)
  assert o3f.sigma_for_env("hopper") == 0.2 and o3f.sigma_for_env("antmaze") == 0.05


def test_o3f_vmapped_update_equals_per_seed_updates(o3f_state):
  """Two seeds in one vmapped update equal two separate updates (IQL's update with 5 critics)."""
  states = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), o3f_state)
  batches = jax.vmap(_batch)(jax.random.split(jax.random.PRNGKey(16), 2))
  keys = jax.random.split(jax.random.PRNGKey(15), 2)
  vmapped, metrics = jax.jit(jax.vmap(o3f.update))(states, batches, keys)
  update = jax.jit(o3f.update)
  for i in range(2):
    take = lambda t: jax.tree_util.tree_map(lambda x: x[i], t)
    single, m = update(o3f_state, take(batches), keys[i])
    chex.assert_trees_all_close(take(vmapped), single, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(take(metrics), m, rtol=1e-5, atol=1e-6)


def test_aca_zfit_stage_resumes_exactly_after_a_crash(tiny_hopper_dataset, tmp_path, crash_at,
                                                     same_outputs):
  """The Z-fit stage (from a BC actor) with snapshots every 10 steps: killed at step 30 (after the
  snapshot at 20) and rerun, it writes the very metrics and checkpoint of the uninterrupted run."""
  from o2o_jax.recipes import aca as aca_recipe
  from o2o_jax.recipes import offline
  quiet = lambda *_: None
  pretrain_dir = offline.pretrain(algo="bc", dataset_id=tiny_hopper_dataset.dataset_id, seeds=2, seed=0,
                                 num_steps=10, eval_every=10, eval_episodes=1, hidden_dims=(8, 8),
                                 batch_size=16, out_dir=str(tmp_path), progress=False, log=quiet)

  def fit(name, log=quiet):
    return aca_recipe.fit_baseline(
        pretrain_dir=pretrain_dir, steps=30, critic_hidden=(8, 8), zfit_alpha=1.0, batch_size=16,
        eval_episodes=1, out_dir=str(tmp_path), run_name=name, restart=False, progress=False,
        checkpoint_every=10, log=log)

  ref = fit("reference")
  crash_at("zfit", 25)
  with pytest.raises(Exception, match="crashed by the fault injection"):
    fit("crashed")
  run = ref.parent / "crashed"
  assert (run / "progress" / "20").exists() and not (run / "checkpoints" / "30").exists()
  crash_at(None)
  logs = []
  assert fit("crashed", log=logs.append) == run
  assert f"[zfit] resuming from the snapshot at step 20 ({run / 'progress'})" in logs
  assert not (run / "progress").exists()
  same_outputs(run, ref)


# ----------------------------------------------------------------------------- launchers

TINY = ["--seeds=2", "--budget=quick", "--pretrain_steps=30", "--online_steps=40", "--warmup_steps=10",
        "--eval_every=20", "--eval_episodes=1", "--hidden_dims=8,8", "--batch_size=16", "--progress=false"]


def _finetune(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.finetune", *args], env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("agent,offline,extra", [
    ("o3f", "iql5", ["--o3f_num_candidates=8"]),
    ("aca", "sacml", ["--aca_top_n=2", "--aca_w_decay_k=0.01", "--aca_w_min=0.5"]),
])
def test_launcher_end_to_end(tiny_hopper_dataset, tmp_path, agent, offline, extra):
  res = _finetune(f"--agent={agent}", f"--dataset={tiny_hopper_dataset.dataset_id}",
                  f"--out_dir={tmp_path}", *TINY, *extra)
  assert res.returncode == 0, res.stderr[-4000:]
  ds = tiny_hopper_dataset.dataset_id.replace("/", "_")
  assert (tmp_path / "pretrain" / offline / ds / "seed0x2" / "checkpoints").exists()
  run = tmp_path / "finetune" / agent / ds / "seed0x2"
  summary = json.loads((run / "summary.json").read_text())
  assert len(summary["offline"]) == 2 and len(summary["final"]) == 2
  assert all(np.isfinite(summary["final"]))
  for line in ("pi_off (offline)", "best fine-tuned", "final fine-tuned"):
    assert line in res.stdout
  header = (run / "metrics.csv").read_text().splitlines()[0]
  assert "eval/normalized_score/seed1" in header
  if agent == "aca":   # w_t = max(1 - t / (K 1000), w_min) = max(1 - t / 10, 0.5) per update
    assert "buffer seeded with" in res.stdout
    # SAC+ML on raw observations (official run_sacml.py: no d3rlpy scaler)
    pretrain = tmp_path / "pretrain" / offline / ds / "seed0x2"
    assert json.loads((pretrain / "config.json").read_text())["normalize_states"] is False
    rows = [r.split(",") for r in (run / "metrics.csv").read_text().splitlines()]
    col = rows[0].index("train/w/seed0") if "train/w/seed0" in rows[0] else rows[0].index("train/w")
    w = [float(r[col]) for r in rows[1:] if len(r) > col and r[col] not in ("", "nan")]
    assert w and all(0.5 <= x <= 1.0 for x in w) and w[-1] == pytest.approx(0.5)


def test_aca_config_overrides_reach_the_finetune_run(tiny_hopper_dataset, tmp_path):
  """`--config.<field>=<value>` sets a field of ACA's online Config (recorded in the finetune run's
  config.json), over the dataset's row of the table and over the --aca_ option of the same field;
  an --aca_ clip of 0 still means no clip."""
  res = _finetune("--agent=aca", f"--dataset={tiny_hopper_dataset.dataset_id}", f"--out_dir={tmp_path}",
                  *TINY, "--aca_w_min=0.5", "--config.w_min=0.25", "--config.online_init_alpha=0.5",
                  "--aca_clip_beta=0")
  assert res.returncode == 0, res.stderr[-4000:]
  ds = tiny_hopper_dataset.dataset_id.replace("/", "_")
  run = tmp_path / "finetune" / "aca" / ds / "seed0x2"
  agent_config = json.loads((run / "config.json").read_text())["agent_config"]
  assert agent_config["w_min"] == 0.25 and agent_config["online_init_alpha"] == 0.5
  assert agent_config["clip_beta"] is None
  from o2o_jax import presets
  row = aca.dataset_preset(*presets.dataset_env_and_level(tiny_hopper_dataset.dataset_id))
  assert agent_config["top_n_trajectories"] == row["top_n_trajectories"]


@pytest.mark.parametrize("override, line", [
    ("--config.top_n_trajectories=2.5", "error: --config.top_n_trajectories=2.5: field "
                                        "'top_n_trajectories' of o2o_jax.agents.o2o.aca.Config is int"),
    ("--config.no_such_field=1", "error: --config.no_such_field: o2o_jax.agents.o2o.aca.Config has no "
                                 "field 'no_such_field'; valid fields: "),
])
def test_aca_bad_config_override_is_one_line_before_any_work(tmp_path, override, line):
  res = _finetune("--agent=aca", f"--out_dir={tmp_path}", *TINY, override)
  assert res.returncode == 2, res.stderr[-2000:]
  assert res.stderr.strip().splitlines()[-1].startswith(line), res.stderr[-2000:]
  assert "Traceback" not in res.stderr and not any(tmp_path.iterdir())
