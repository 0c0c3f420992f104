"""On-policy training loop (PPO-style agents), all seeds vmapped.

One host env per seed (`envs.SeedEnvs`); per env step one jitted, seed-vmapped call picks every seed's
action and its log-probability; every `rollout_length` steps one jitted, seed-vmapped `update` trains
on the seeds' rollouts. Evaluation (`loops.Evaluation`) every `eval_every`
env steps, with an `on_eval(step, states, returns) -> states | None` hook (e.g. to refresh pi_ref).

Resumable like `loops.run_online` (`resume.Session`): with `snapshots`, the first rollout boundary at
or after every `snapshots.every` env steps saves the agent states, the PRNG keys, the eval history
and every seed's reward-scaler statistics and running return, and the training envs restart their
episodes with seeds derived from that step (in the uninterrupted run too), so a rerun continues
exactly. Seeds never interact: seed i of an N-seed run is a 1-seed run with seed i's key (its
global index, `distributed.split_seeds` / `SeedEnvs.index`). SIGINT/SIGTERM save at
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
import math
import time
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import envs as envs_lib
from o2o_jax import logging as log_lib
from o2o_jax import distributed, loops, resume
from o2o_jax.data import returns as data_returns
from o2o_jax.agents.online.ppo import Rollout
from o2o_jax.types import seed_keys


@dataclasses.dataclass(frozen=True)
class OnPolicyConfig:
  total_steps: int = 250_000        # env steps per seed
  rollout_length: int = 2048        # env steps per seed between updates
  eval_every: int = 2_500
  eval_episodes: int = 10


class RewardScaler:
  """Uni-O4's dynamic reward scaling, one independent scaler per seed (OCR-CFT
  finetune/online_agent/ppo/ppo_utils.py `RewardScaling` with its `RunningMeanStd`):

    R_t = gamma R_{t-1} + r_t,   r_t <- r_t / (std_t + 1e-8),   std_t = sqrt(S_t / n_t),

  with n_t the number of returns R pushed so far and S_t the Welford sum of squared deviations
  started at 1 (the reference's `RunningMeanStd` starts S at ones: std is 1 before the first push and
  after it). Every seed starts from the dataset pass's statistics (`scale_dataset`) and then keeps
  its own count, mean, S and running return: seeds never pool statistics (issue #19).

  Resets of the running return, as the reference:
  - online (`__call__`): at every episode end, terminated or truncated (O2PPO.py calls
    `reward_scaling.reset()` at every `env.reset()`, and gym's `done` includes the time limit), and
    at the loop's snapshot cut (`reset`), where the training episodes restart too;
  - in the dataset pass (`scale_dataset`): at terminals only (`OfflineReplayBuffer.reward_normalize`
    resets on `not not_done`, and `not_done` holds no timeouts), so on halfcheetah, which has no
    terminals, one running return runs through the whole dataset.
  `state(running=True)` / `load_state` carry all of it through snapshots (float64, exact in JSON)."""

  FIELDS = ("count", "mean", "m2", "running")

  def __init__(self, discount: float, num_seeds: int = 1, state: Optional[Dict[str, Any]] = None):
    self.discount, self.num_seeds = discount, num_seeds
    self.count = np.zeros(num_seeds, np.int64)
    self.mean = np.zeros(num_seeds)
    self.m2 = np.ones(num_seeds)          # S starts at 1 (the reference's RunningMeanStd)
    self.running = np.zeros(num_seeds)
    if state:
      self.load_state(state)

  def state(self, running: bool = False) -> Dict[str, Any]:
    """Every seed's statistics as lists (JSON); `running`: with the running returns (a resumable
    snapshot)."""
    out = {"count": self.count.tolist(), "mean": self.mean.tolist(), "m2": self.m2.tolist()}
    if running:
      out["running"] = self.running.tolist()
    return out

  def per_seed(self, i: int) -> Dict[str, Any]:
    """Seed i's statistics and running return as scalars (e.g. the dataset pass's, which every
    seed of a run starts from)."""
    return {"count": int(self.count[i]), "mean": float(self.mean[i]), "m2": float(self.m2[i]),
            "running": float(self.running[i])}

  def load_state(self, state: Dict[str, Any]) -> None:
    """Each field a scalar (every seed gets it: the dataset statistics) or one value per seed."""
    for name in self.FIELDS:
      if name in state:
        current = getattr(self, name)
        value = np.broadcast_to(np.asarray(state[name], current.dtype), current.shape)
        setattr(self, name, np.array(value))

  @property
  def std(self) -> np.ndarray:
    return np.sqrt(self.m2 / np.maximum(self.count, 1))

  def _push(self, x: np.ndarray) -> None:
    self.count += 1
    delta = x - self.mean
    self.mean += delta / self.count
    self.m2 += delta * (x - self.mean)

  def reset(self) -> None:
    """Every seed's episode restarts (the loop's snapshot cut): the running returns restart at 0."""
    self.running[:] = 0.0

  def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
    """Scales one env step's rewards (one per seed), each with its own seed's statistics; `dones`
    marks the seeds whose episode ended at this step (terminated or truncated)."""
    r = np.asarray(rewards, np.float64)
    self.running = self.discount * self.running + r
    self._push(self.running)
    out = (r / (self.std + 1e-8)).astype(np.float32)
    self.running[np.asarray(dones, bool)] = 0.0
    return out

  def scale_dataset(self, rewards: np.ndarray, terminals: np.ndarray) -> np.ndarray:
    """The offline rewards scaled sequentially in dataset order; the running return is reset after
    each terminal only (time-limit ends run on, as the reference). The statistics, pushed into every
    seed alike, carry over into the online phase; the running return starts online at 0 (the
    reference resets it at the first online episode start).
    Deviation: the reference resets *at* a terminal and leaves that one reward unscaled and
    unpushed; here the terminal reward is pushed and scaled like any other, then the return resets
    (no released config meets it: only halfcheetah scales, and it has no terminals)."""
    out = np.empty(len(rewards), np.float32)
    count, mean, m2 = int(self.count[0]), float(self.mean[0]), float(self.m2[0])   # seeds alike
    running = 0.0
    for t, (r, term) in enumerate(zip(np.asarray(rewards, np.float64).tolist(),
                                      np.asarray(terminals).tolist())):
      running = self.discount * running + r
      count += 1                  # Welford in Python floats: ~1 s per million transitions
      delta = running - mean
      mean += delta / count
      m2 += delta * (running - mean)
      out[t] = r / (math.sqrt(m2 / count) + 1e-8)
      if term:
        running = 0.0
    self.count[:], self.mean[:], self.m2[:] = count, mean, m2
    return out


def value_targets(dataset, discount: float, dynamic_scaling: bool):
  """(returns, scaler) of O2PPO's policy re-evaluation: the discounted Monte-Carlo returns-to-go of
  every transition of the offline `dataset` (`o2o_jax.data.returns`; V targets, on the device), of
  the dataset's rewards scaled first by Uni-O4's dynamic reward scaling when `dynamic_scaling`
  (`RewardScaler.scale_dataset`; its statistics then seed the online phase). `scaler`: that
  `RewardScaler`, None without the scaling."""
  rewards = np.asarray(dataset.transitions.rewards, np.float32)
  scaler = None
  if dynamic_scaling:   # running return reset at terminals only, as the reference
    scaler = RewardScaler(discount)
    rewards = scaler.scale_dataset(rewards, np.asarray(dataset.transitions.terminals))
  return data_returns.returns_to_go(dataset, discount, rewards), scaler


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
  `RewardScaler`; a reward_fn with `state(running=True)`/`load_state` has its state snapshotted,
  and its `reset()`, if any, is called where the loop restarts the training episodes);
  returns and scores are always the env's. `snapshots`: resumable, see the module docstring.
  Returns (states, eval history)."""
  probe = make_env()
  obs_dim, act_dim = envs_lib.env_dims(probe)
  probe.close()
  train_envs = envs_lib.SeedEnvs(make_env, num_seeds, seed)
  mean, std, norm = loops.observation_normalizer(obs_dim, obs_mean, obs_std)
  evaluation = loops.Evaluation(agent.act, make_env, num_seeds, config.eval_episodes, mean, std,
                                normalized_score)
  explore_fn, update_fn = onpolicy_functions(agent.explore, agent.update)

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
        returns, row = evaluation.run(states, bar)
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
        if scaler is not None and hasattr(scaler, "reset"):
          scaler.reset()   # the episodes restart: so do the running returns (as at any episode start)
        if i > 0:   # the partial rollout's episodes end here (a cut: GAE resets, V bootstraps)
          buf["dones"][:, i - 1] = 1.0
        session.save(t, payload(), {"history": history, "rollout_index": i,
                                    "reward_fn": scaler.state(running=True) if scaler else None})
      session.stop_if_requested(t, (bar.close, train_envs.close, evaluation.close))
  bar.close()
  train_envs.close()
  evaluation.close()
  return states, history
