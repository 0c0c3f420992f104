"""PPO: GAE on a hand-computed trajectory, the clipped surrogate, the learning-rate decay, the update
as one scanned call, vmap == per-seed updates."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax.agents import registry
from o2o_jax.agents.online import ppo
from o2o_jax.types import seed_keys, take_index

OBS, ACT = 4, 2
CONFIG = ppo.Config(hidden_dims=(16, 16), value_hidden_dims=(16, 16), rollout_length=32,
                    num_minibatches=4, epochs=3, lr_decay_steps=320)
# One jitted update (and its vmapped form) shared by the tests: each compiles once.
UPDATE = jax.jit(ppo.update)
VUPDATE = jax.jit(jax.vmap(ppo.update))
INIT = jax.jit(lambda k: ppo.init(k, OBS, ACT, CONFIG))   # eager init compiles every primitive


def test_gae_on_a_hand_computed_trajectory_with_a_termination_and_a_truncation():
  # t=1 terminates (no bootstrap, GAE resets); t=3 is truncated by the time limit (bootstraps from
  # V of its real final observation = 2.0, GAE resets); t=4 is cut by the rollout end (bootstraps).
  rewards = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
  values = jnp.array([0.5, 0.6, 0.7, 0.8, 0.9])
  next_values = jnp.array([0.6, 9.0, 0.8, 2.0, 1.1])   # 9.0 must be ignored (termination)
  terminals = jnp.array([0.0, 1.0, 0.0, 0.0, 0.0])
  dones = jnp.array([0.0, 1.0, 0.0, 1.0, 0.0])
  gamma, lam = 0.9, 0.8
  # deltas: 1 + .9*.6 - .5 = 1.04 | 2 - .6 = 1.4 | 3 + .9*.8 - .7 = 3.02 | 4 + .9*2 - .8 = 5.0 |
  #         5 + .9*1.1 - .9 = 5.09;  A_t = delta_t + .72 (1 - done_t) A_{t+1}
  expected_adv = [1.04 + 0.72 * 1.4, 1.4, 3.02 + 0.72 * 5.0, 5.0, 5.09]
  adv, targets = ppo.gae(rewards, values, next_values, terminals, dones, gamma, lam)
  np.testing.assert_allclose(adv, expected_adv, rtol=1e-6)
  np.testing.assert_allclose(targets, np.array(expected_adv) + np.array(values), rtol=1e-6)


def test_clipped_surrogate_takes_the_pessimistic_term():
  old = jnp.zeros(3)
  new = jnp.log(jnp.array([1.5, 0.5, 1.1]))   # ratios 1.5 (clipped to 1.2), 0.5, 1.1
  adv = jnp.array([1.0, -1.0, 2.0])
  loss, ratio = ppo.clipped_surrogate(new, old, adv, 0.2)
  # min(1.5, 1.2) = 1.2 | min(-0.5, -0.8) = -0.8 | min(2.2, 2.2) = 2.2
  assert float(loss) == pytest.approx(-(1.2 - 0.8 + 2.2) / 3, rel=1e-6)
  np.testing.assert_allclose(ratio, [1.5, 0.5, 1.1], rtol=1e-6)
  # A (B, B) advantage matrix pairs row i's ratio with every column (the O2PPO broadcast form).
  m = jnp.stack([adv, adv, adv])
  loss_m, _ = ppo.clipped_surrogate(new, old, m, 0.2)
  rows = [np.mean([min(r * a, np.clip(r, 0.8, 1.2) * a) for a in adv]) for r in (1.5, 0.5, 1.1)]
  assert float(loss_m) == pytest.approx(-np.mean(rows), rel=1e-6)


def test_learning_rate_decays_linearly_once_per_rollout():
  lr = ppo.learning_rate(1e-3, CONFIG)
  per_update = CONFIG.epochs * CONFIG.num_minibatches
  assert float(lr(0)) == pytest.approx(1e-3)
  assert float(lr(per_update - 1)) == pytest.approx(1e-3)
  assert float(lr(per_update)) == pytest.approx(1e-3 * (1 - 32 / 320))
  assert float(lr(per_update * 20)) == 0.0


def random_rollout(key, n=32):
  k = jax.random.split(key, 6)
  dones = (jax.random.uniform(k[4], (n,)) < 0.1).astype(jnp.float32)
  return ppo.Rollout(observations=jax.random.normal(k[0], (n, OBS)),
                     actions=jax.random.normal(k[1], (n, ACT)) * 0.5,
                     log_probs=jnp.full((n,), -2.0), rewards=jax.random.normal(k[2], (n,)),
                     next_observations=jax.random.normal(k[3], (n, OBS)),
                     terminals=dones * (jax.random.uniform(k[5], (n,)) < 0.5), dones=dones)


def test_update_trains_both_networks_and_counts_env_steps():
  state = INIT(jax.random.PRNGKey(0))
  rollout = jax.jit(random_rollout)(jax.random.PRNGKey(1))
  rollout = rollout.replace(log_probs=state.actor.apply_fn(state.actor.params, rollout.observations)
                            .log_prob(rollout.actions))
  new, info = UPDATE(state, rollout, jax.random.PRNGKey(2))
  assert int(new.env_steps) == 32
  # 3 epochs x 4 minibatches = 12 gradient steps per network, in one call.
  assert int(new.actor.step) == 12 and int(new.value.step) == 12
  assert all(np.isfinite(float(v)) for v in info.values())
  before = jnp.mean((state.value.apply_fn(state.value.params, rollout.observations)
                     - ppo.compute_advantages(state.value, rollout, CONFIG)[1]) ** 2)
  assert float(info["value_loss"]) < float(before) * 1.5


def test_vmapped_update_equals_per_seed_updates():
  keys = seed_keys(0, 2)
  states = jax.jit(jax.vmap(INIT))(keys)
  rollouts = jax.jit(jax.vmap(random_rollout))(jax.random.split(jax.random.PRNGKey(3), 2))
  ukeys = jax.random.split(jax.random.PRNGKey(4), 2)
  batched, info = VUPDATE(states, rollouts, ukeys)
  for i in range(2):
    single, info_i = UPDATE(take_index(states, i), take_index(rollouts, i), ukeys[i])
    chex.assert_trees_all_close(take_index(batched, i), single, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(take_index(info, i), info_i, rtol=1e-4, atol=1e-5)


def test_explore_stores_the_raw_sample_or_the_clipped_one():
  state = INIT(jax.random.PRNGKey(0))
  state = state.replace(actor=state.actor.replace(params=jax.tree_util.tree_map(
      lambda x: x, {"params": {**state.actor.params["params"], "log_std": jnp.full((ACT,), 1.0)}})))
  obs = jnp.zeros((256, OBS))
  a, logp = ppo.explore(state, obs, jax.random.PRNGKey(1))
  assert float(jnp.abs(a).max()) > 1.0        # sigma = e: many raw samples leave the box
  np.testing.assert_allclose(logp, state.actor.apply_fn(state.actor.params, obs).log_prob(a), rtol=1e-6)
  clipped = state.replace(config=ppo.Config(**{**CONFIG.__dict__, "store_clipped_actions": True}))
  a, _ = ppo.explore(clipped, obs, jax.random.PRNGKey(1))
  assert float(jnp.abs(a).max()) <= 1.0


def test_advantages_are_normalised_over_the_rollout_not_the_minibatch(monkeypatch):
  """OCR-CFT finetune/online_agent/ppo/ppo.py (Uni-O4's PPO), `PPO.update`: "Trick 1" runs once
  over the whole buffer, `adv = ((adv - adv.mean()) / (adv.std() + 1e-5))` (torch's std: Bessel's
  correction), before `for times in range(self.K_epochs)`; each minibatch only indexes it
  (`adv[index]`). Hand case: T = 4, two minibatches of 2, one epoch, V = 0 and discount 0, so A = r
  = [1, 2, 3, 10]: mean 4, std sqrt(50 / 3) = 4.0824829, normalised (A - 4) / (4.0824829 + 1e-5) =
  [-0.7348, -0.4899, -0.2449, 1.4697]. Per minibatch each pair would normalise to -+0.7071."""
  seen = []
  original = ppo.clipped_surrogate

  def spy(log_probs, old_log_probs, advantages, clip_eps):   # what each minibatch's surrogate gets
    jax.debug.callback(lambda a: seen.append(np.asarray(a)), advantages)
    return original(log_probs, old_log_probs, advantages, clip_eps)

  monkeypatch.setattr(ppo, "clipped_surrogate", spy)
  config = ppo.Config(hidden_dims=(8, 8), value_hidden_dims=(8, 8), rollout_length=4,
                      num_minibatches=2, epochs=1, discount=0.0)
  state = jax.jit(lambda k: ppo.init(k, OBS, ACT, config))(jax.random.PRNGKey(0))
  state = state.replace(value=state.value.replace(params=jax.tree_util.tree_map(
      jnp.zeros_like, state.value.params)))                       # V = 0
  obs = jax.random.normal(jax.random.PRNGKey(1), (4, OBS))
  actions = jnp.zeros((4, ACT))
  rollout = ppo.Rollout(observations=obs, actions=actions,
                        log_probs=state.actor.apply_fn(state.actor.params, obs).log_prob(actions),
                        rewards=jnp.array([1.0, 2.0, 3.0, 10.0]), next_observations=obs,
                        terminals=jnp.zeros(4), dones=jnp.zeros(4))
  jax.jit(ppo.update)(state, rollout, jax.random.PRNGKey(2))
  jax.effects_barrier()
  assert len(seen) == 2 and all(a.shape == (2,) for a in seen)
  expected = (np.array([1.0, 2.0, 3.0, 10.0]) - 4.0) / (np.sqrt(50.0 / 3.0) + 1e-5)
  np.testing.assert_allclose(expected, [-0.7348453, -0.4898969, -0.2449484, 1.4696938], rtol=1e-5)
  np.testing.assert_allclose(np.sort(np.concatenate(seen)), expected, rtol=1e-5, atol=1e-6)


def test_config_check_and_registry():
  with pytest.raises(ValueError, match="multiple of the number of minibatches"):
    ppo.check_config(ppo.Config(rollout_length=100, num_minibatches=16))
  with pytest.raises(ValueError, match="at least 2"):
    ppo.check_config(ppo.Config(rollout_length=1, num_minibatches=1))
  assert registry.get("ppo") is ppo
  assert registry.get("o2ppo").__name__ == "o2o_jax.agents.o2o.o2ppo"




# ----------------------------------------------------------------------------- the on-policy loop

def _point_env():
  """A 2-D point mass (obs: position and velocity; action: a force) with 20-step episodes that
  terminate off the box: a gymnasium env that steps in microseconds."""
  import gymnasium as gym

  class PointEnv(gym.Env):
    observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32)

    def reset(self, *, seed=None, options=None):
      super().reset(seed=seed)
      self.t, self.x = 0, self.np_random.uniform(-1.0, 1.0, OBS).astype(np.float32)
      return self.x.copy(), {}

    def step(self, action):
      self.t += 1
      vel = 0.9 * self.x[2:] + 0.5 * np.asarray(action, np.float32)
      self.x = np.concatenate([self.x[:2] + 0.1 * vel, vel]).astype(np.float32)
      off = bool(np.abs(self.x[:2]).max() > 1.2)
      return self.x.copy(), float(-np.sum(self.x[:2] ** 2)), off, self.t >= 20, {}

  return PointEnv()


class _LinearAgent:
  """A linear-Gaussian policy whose update reads every rollout field and its key. The loop is
  agent-agnostic, and this agent compiles in a fraction of a second where PPO's update takes many."""

  @staticmethod
  def explore(state, obs, key):
    noise = jax.random.normal(key, (ACT,))
    return jnp.tanh(obs @ state["w"]) + 0.3 * noise, -0.5 * jnp.sum(noise ** 2)

  @staticmethod
  def update(state, rollout, key):
    signal = rollout.rewards + rollout.log_probs + rollout.terminals - rollout.dones
    grad = (rollout.observations + rollout.next_observations).T @ (rollout.actions * signal[:, None])
    w = state["w"] + 1e-2 * grad / signal.shape[0] + 1e-3 * jax.random.normal(key, state["w"].shape)
    return {"w": w, "env_steps": state["env_steps"] + signal.shape[0]}, {"signal": signal.mean()}

  @staticmethod
  def act(state, obs, key, explore=True):
    return jnp.tanh(obs @ state["w"])


def test_onpolicy_loop_resumes_exactly_after_a_crash(tmp_path, crash_at):
  """`onpolicy.run_onpolicy` with snapshots every 40 env steps (taken at the rollout boundary 64) and
  a reward scaler: a run killed at step 88 and rerun from its snapshot ends with exactly the states,
  scaler statistics and evaluations of the uninterrupted run. A SIGINT saves mid-rollout and raises
  Interrupted; the rerun from there finishes."""
  from o2o_jax import onpolicy, resume
  from o2o_jax.errors import Interrupted
  loop = onpolicy.OnPolicyConfig(total_steps=96, rollout_length=32, eval_every=48, eval_episodes=1)
  states = {"w": jnp.asarray(np.random.default_rng(0).normal(0.0, 0.3, (2, OBS, ACT)), jnp.float32),
            "env_steps": jnp.zeros(2, jnp.int32)}

  def run(name, log=print):
    scaler = onpolicy.RewardScaler(0.99, num_seeds=2)
    out, history = onpolicy.run_onpolicy(
        _LinearAgent, states, make_env=_point_env, num_seeds=2, seed=3, config=loop,
        reward_fn=scaler, snapshots=resume.Snapshots(tmp_path / name, 40), phase="ppo",
        progress=False, log=log)
    return out, history, scaler.state(running=True)

  ref_states, ref_history, ref_scaler = run("reference")
  crash_at("ppo", 88)
  with pytest.raises(Exception, match="crashed by the fault injection"):
    run("crashed")
  assert resume.Snapshots(tmp_path / "crashed", 40).latest_step() == 64
  crash_at(None)
  logs = []
  got_states, got_history, got_scaler = run("crashed", log=logs.append)
  assert logs == [f"[ppo] resuming from the snapshot at env step 64 ({tmp_path / 'crashed'})"]
  chex.assert_trees_all_equal(got_states, ref_states)
  assert got_scaler == ref_scaler and ref_scaler["count"] == [96, 96]   # one scaler per seed
  assert [h["step"] for h in got_history] == [48, 96]
  for got, ref in zip(got_history, ref_history):
    np.testing.assert_array_equal(got["returns"], ref["returns"])

  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("O2O_JAX_FAULT", "SIGINT:ppo:80")
    with pytest.raises(Interrupted, match="ppo stopped by SIGINT at env step 80"):
      run("signal")
  snapshots = resume.Snapshots(tmp_path / "signal", 40)
  assert snapshots.latest_step() == 80
  assert snapshots._ckpt.read_metadata()["rollout_index"] == 16
  final, history, _ = run("signal")
  assert [h["step"] for h in history] == [48, 96]
  np.testing.assert_array_equal(final["env_steps"], [96, 96])
