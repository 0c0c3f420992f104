"""On-policy training loop (PPO-style agents), all seeds vmapped.

One host env per seed (`envs.SeedEnvs`); per env step one jitted, seed-vmapped call picks every seed's
action and its log-probability; every `rollout_length` steps one jitted, seed-vmapped `update` trains
on the seeds' rollouts. Evaluation (`envs.Evaluator` + `loops.make_eval_policy`) every `eval_every`
env steps, with an `on_eval(step, states, returns) -> states | None` hook (e.g. to refresh pi_ref).

Resumable like `loops.run_online` (`resume.Session`): with `snapshots`, the first rollout boundary at
or after every `snapshots.every` env steps saves the agent states, the PRNG keys, the eval history
and the reward scaler's statistics, and the training envs restart their episodes with seeds derived
from that step (in the uninterrupted run too), so a rerun continues exactly. SIGINT/SIGTERM save at
the current step, the partial rollout included (its last step is then an episode cut), and raise
`errors.Interrupted`.

An agent here is a module (or any object) with
  explore(state, obs, key) -> (action, log_prob)     the rollout policy (the env gets clip(action))
  update(state, rollout, key) -> (state, metrics)    one update on a `ppo.Rollout`
  act(state, obs, key, explore) -> action            the evaluation policy
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import envs as envs_lib
from o2o_jax import logging as log_lib
from o2o_jax import distributed, loops, resume
from o2o_jax.agents.online.ppo import Rollout
from o2o_jax.types import seed_keys


@dataclasses.dataclass(frozen=True)
class OnPolicyConfig:
  total_steps: int = 250_000        # env steps per seed
  rollout_length: int = 2048        # env steps per seed between updates
  eval_every: int = 2_500
  eval_episodes: int = 10


class RewardScaler:
  """Uni-O4's dynamic reward scaling: r / std(R), R_t = gamma R_{t-1} + r_t the discounted running
  return (reset at episode starts), std the running (Welford) std of R over all steps seen. One
  running return per seed; the statistics are shared and keep updating online."""

  def __init__(self, discount: float, num_seeds: int = 1, state: Optional[Dict[str, Any]] = None):
    self.discount = discount
    self.count, self.mean, self.m2 = 0, 0.0, 0.0
    self.running = np.zeros(num_seeds)
    if state:
      self.load_state(state)

  def state(self, running: bool = False) -> Dict[str, Any]:
    """The statistics (JSON); `running`: with the seeds' running returns (a resumable snapshot)."""
    out = {"count": self.count, "mean": self.mean, "m2": self.m2}
    if running:
      out["running"] = self.running.tolist()
    return out

  def load_state(self, state: Dict[str, Any]) -> None:
    self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
    if "running" in state:
      self.running = np.asarray(state["running"], np.float64)

  def _push(self, x: float) -> None:
    self.count += 1
    delta = x - self.mean
    self.mean += delta / self.count
    self.m2 += delta * (x - self.mean)

  @property
  def std(self) -> float:
    return float(np.sqrt(self.m2 / self.count)) if self.count > 1 else 1.0

  def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
    """Scales one step of rewards (one per seed); `dones` marks episodes that ended at this step."""
    out = np.empty(len(rewards), np.float32)
    for i, r in enumerate(rewards):
      self.running[i] = self.discount * self.running[i] + r
      self._push(self.running[i])
      out[i] = r / (self.std + 1e-8)
      if dones[i]:
        self.running[i] = 0.0
    return out

  def scale_dataset(self, rewards: np.ndarray, episode_ends: np.ndarray) -> np.ndarray:
    """The offline rewards scaled sequentially (the statistics carry over into the online phase)."""
    out = np.empty(len(rewards), np.float32)
    running = 0.0
    for t, (r, end) in enumerate(zip(np.asarray(rewards, np.float64).tolist(),
                                     np.asarray(episode_ends).tolist())):
      running = self.discount * running + r
      self._push(running)
      out[t] = r / (self.std + 1e-8)
      if end:
        running = 0.0
    return out


@functools.lru_cache(maxsize=None)
def onpolicy_functions(explore: Callable, update: Callable):
  """(explore_fn, update_fn): jitted, seed-vmapped; keys travel on the device."""

  def explore_one(state, obs, key):
    key, k = jax.random.split(key)
    action, log_prob = explore(state, obs, k)
    return action, log_prob, key

  def update_guarded(state, rollout, key):   # + the divergence guard's input (read per rollout)
    state, metrics = update(state, rollout, key)
    return state, {**metrics, loops.GUARD_KEY: resume.nonfinite_count(state)}

  return (jax.jit(jax.vmap(explore_one)),
          jax.jit(jax.vmap(update_guarded), donate_argnums=(0,)))


def run_onpolicy(agent, states, *, make_env: Callable, num_seeds: int, seed: int,
                 config: OnPolicyConfig, obs_mean=None, obs_std=None, metrics_writer=None,
                 on_eval: Optional[Callable] = None, normalized_score: Optional[Callable] = None,
                 reward_fn: Optional[Callable] = None, progress: bool = True,
                 desc: str = "on-policy", snapshots: Optional[resume.Snapshots] = None,
                 phase: str = "finetune", log: Callable = print) -> tuple:
  """Trains `num_seeds` vmapped on-policy agents for `config.total_steps` env steps each.
  `reward_fn(rewards (S,), dones (S,)) -> rewards` transforms the rewards the update sees (e.g. a
  `RewardScaler`; a reward_fn with `state(running=True)`/`load_state` has its state snapshotted);
  returns and scores are always the env's. `snapshots`: resumable, see the module docstring.
  Returns (states, eval history)."""
  probe = make_env()
  obs_dim, act_dim = envs_lib.env_dims(probe)
  probe.close()
  train_envs = envs_lib.SeedEnvs(make_env, num_seeds, seed)
  evaluator = envs_lib.Evaluator(make_env, num_seeds, config.eval_episodes)
  mean = np.zeros(obs_dim, np.float32) if obs_mean is None else np.asarray(obs_mean, np.float32)
  std = np.ones(obs_dim, np.float32) if obs_std is None else np.asarray(obs_std, np.float32)
  norm = lambda o: (o - mean) / std
  explore_fn, update_fn = onpolicy_functions(agent.explore, agent.update)
  eval_policy = loops.make_eval_policy(agent.act, mean, std)

  s, n = num_seeds, config.rollout_length
  buf = {"observations": np.zeros((s, n, obs_dim), np.float32),
         "actions": np.zeros((s, n, act_dim), np.float32), "log_probs": np.zeros((s, n), np.float32),
         "rewards": np.zeros((s, n), np.float32),
         "next_observations": np.zeros((s, n, obs_dim), np.float32),
         "terminals": np.zeros((s, n), np.float32), "dones": np.zeros((s, n), np.float32)}
  states = loops.unalias(states)
  keys = seed_keys(seed, num_seeds)
  update_key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
  history, metrics, t0, i = [], None, time.time(), 0
  scaler = reward_fn if hasattr(reward_fn, "load_state") else None

  def payload():
    return {"agent": states, "keys": keys, "update_key": update_key, "rollout": buf}

  session = resume.Session(snapshots, phase, unit="env step", log=log)
  restored, meta, start = session.restore(payload())
  if start:
    states, keys, update_key = restored["agent"], restored["keys"], restored["update_key"]
    buf = {k: np.array(v) for k, v in restored["rollout"].items()}
    i, history = meta["rollout_index"], resume.decode_history(meta)
    if scaler is not None:
      scaler.load_state(meta["reward_fn"])
    train_envs.restart(start)
  if metrics_writer is not None:
    metrics_writer.truncate_after(start)
  bar = log_lib.progress(config.total_steps, desc, initial=start, disable=not progress)
  with session:
    for t in range(start + 1, config.total_steps + 1):
      session.fault.at(t)
      obs = norm(train_envs.obs)
      actions, log_probs, keys = explore_fn(states, jnp.asarray(obs), keys)
      actions = np.asarray(actions)
      next_obs, rewards, terminated, truncated = train_envs.step(np.clip(actions, -1.0, 1.0))
      dones = terminated | truncated
      buf["observations"][:, i] = obs
      buf["actions"][:, i] = actions
      buf["log_probs"][:, i] = np.asarray(log_probs)
      buf["rewards"][:, i] = rewards if reward_fn is None else reward_fn(rewards, dones)
      buf["next_observations"][:, i] = norm(next_obs)
      buf["terminals"][:, i] = terminated
      buf["dones"][:, i] = dones
      i += 1
      if i == n:
        update_key, k = jax.random.split(update_key)
        states, metrics = update_fn(states, Rollout(**buf), distributed.split_seeds(k, num_seeds))
        i = 0
        metrics = jax.device_get(metrics)
        session.check_finite(metrics[loops.GUARD_KEY], step=t, states=states, metrics=metrics)
        if metrics_writer is not None:
          row = {f"train/{k_}": v for k_, v in metrics.items() if k_ != loops.GUARD_KEY}
          episodes = [r[-1] for r in train_envs.completed if r]
          if episodes:
            row["train/episode_return"] = np.mean(episodes)
          row["perf/env_steps_per_s"] = (t - start) / (time.time() - t0)
          metrics_writer.write(t, row)
      bar.update(1)
      if t % config.eval_every == 0 or t == config.total_steps:
        returns = evaluator.run(lambda o: eval_policy(states, o))
        row = {"eval/return": returns.mean(1)}
        if normalized_score is not None:
          row["eval/normalized_score"] = normalized_score(returns).mean(1)
          bar.set_postfix(score=f"{float(np.mean(row['eval/normalized_score'])):.1f}")
        else:
          bar.set_postfix(eval=f"{float(returns.mean()):.1f}")
        history.append({"step": t, "returns": returns})
        if on_eval is not None:
          new_states = on_eval(t, states, returns)
          states = states if new_states is None else new_states
        if metrics_writer is not None:
          metrics_writer.write(t, row)
      # Periodic snapshots at the first rollout boundary at or after each multiple of `every`;
      # a signal snapshots here, mid-rollout.
      if session.due(t, config.total_steps, since=t - n if i == 0 else t):
        if metrics_writer is not None:
          metrics_writer.flush()
        train_envs.restart(t)
        if i > 0:   # the partial rollout's episodes end here (a cut: GAE resets, V bootstraps)
          buf["dones"][:, i - 1] = 1.0
        session.save(t, payload(), {"history": history, "rollout_index": i,
                                    "reward_fn": scaler.state(running=True) if scaler else None})
      session.stop_if_requested(t, (bar.close, train_envs.close, evaluator.close))
  bar.close()
  train_envs.close()
  evaluator.close()
  return states, history
