"""Training loops over seed-stacked states: a state's leaves carry the seed axis first. Seeds are
vmapped, except the offline chunks on a one-device CPU, which `lax.map` them (`seed_loop`).

- Offline: `make_offline_chunk` fuses K updates (sampling on device from the shared dataset) into one
  `lax.scan` (for users' own loops); `run_offline` alternates chunks with evaluations and runs each
  chunk as blocks of ~5 s of the same updates (`make_offline_block`), so a stop signal and the
  progress bar need not wait for a whole chunk.
- Online: `run_online` steps one host env per seed; per env step there is one device call that
  inserts the transition, runs `utd` updates (a `lax.scan`) and returns the next action.
  `collect_prefill` gathers a policy's transitions the way `run_online` stores them (its `prefill`).
- Evaluation: `Evaluation` (`make_eval_policy` + `envs.Evaluator`, all seeds' episodes batched),
  one for every loop.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import time
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import distributed, resume, sharding
from o2o_jax.data import replay
from o2o_jax.errors import O2OError
from o2o_jax.types import Transition, seed_keys


@dataclasses.dataclass(frozen=True)
class Learner:
  """What the loops need of an agent: `update(state, batch, key)` and `act(state, obs, key, explore)`.
  An agent module already is one; phases of an O2O agent are `Learner(o2td3.align_step, o2td3.act)`.
  `sampler(state, buffer, offline, key, batch_size) -> (state, batch)`, when given, draws the online
  loop's batches instead of its uniform/mixed/union sampling, from the agent's own state (Off2On's
  priorities, which its update writes back); an agent module may define one as `sampler`."""
  update: Callable
  act: Callable
  sampler: Optional[Callable] = None


def init_states(agent, keys, obs_dim: int, act_dim: int, config):
  """One agent state per key (seed axis first), initialised in one jitted program (eager init would
  compile every primitive separately). The program is cached per (agent, sizes, config): runs in one
  process compile it once, and their states share the static fields (networks, config), so the
  jitted loop functions compiled for one run serve the next."""
  try:
    init = _init_fn(agent, obs_dim, act_dim, config)
  except TypeError:     # an unhashable config (e.g. list fields): not cached
    init = _init_fn.__wrapped__(agent, obs_dim, act_dim, config)
  return init(keys)


@functools.lru_cache(maxsize=None)
def _init_fn(agent, obs_dim: int, act_dim: int, config):
  return jax.jit(jax.vmap(lambda k: agent.init(k, obs_dim, act_dim, config)))


def init_shapes(agent, keys, obs_dim: int, act_dim: int, config):
  """The shapes and dtypes of `init_states(...)`, e.g. a template to restore a checkpoint into:
  jax.eval_shape traces the init and compiles nothing."""
  return jax.eval_shape(lambda: init_states(agent, keys, obs_dim, act_dim, config))


def unalias(tree):
  """Copies every leaf into its own device buffer. A fresh state may hold one array under two names
  (e.g. target params == params at init), which buffer donation rejects."""
  return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)


def vmap_lockstep(fn: Callable, in_axes=0):
  """`jax.vmap(fn, in_axes)` over seed-stacked agent states that advance in lockstep (every loop here
  steps all seeds together), with the state's `step` counter shared unbatched (seed 0's value).

  Control flow on the counter then stays a real branch: TD3's delayed actor update is a `lax.cond`
  on `step % policy_freq`, which under a plain vmap (batched predicate) becomes a `select` that
  computes the actor update for every seed on every step. The first argument of `fn` is the state."""
  axes = tuple(in_axes) if isinstance(in_axes, (tuple, list)) else None
  plain = jax.vmap(fn, in_axes=in_axes)

  def per_seed(step, state, *args):
    return fn(state.replace(step=step), *args)

  def wrapped(states, *args):
    has_step = dataclasses.is_dataclass(states) and "step" in {f.name for f in dataclasses.fields(states)}
    if not has_step:
      return plain(states, *args)
    rest = axes[1:] if axes is not None else (in_axes,) * len(args)
    return jax.vmap(per_seed, in_axes=(None, 0 if axes is None else axes[0]) + tuple(rest))(
        states.step[0], states, *args)

  return wrapped


GUARD_KEY = "guard/nonfinite"     # count of non-finite entries of the agent state, per seed


def _mean_metrics(stacked: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
  # nanmean: delayed-update agents report NaN for steps that skip the actor update.
  return {k: jnp.nanmean(v, axis=0) for k, v in stacked.items()}


# ----------------------------------------------------------------------------------------- offline

def _offline_update(update: Callable, batch_size: int):
  """(state, key, data) -> (state, metrics): one update on a batch drawn uniformly from `data`."""
  def one(state, key, data: Transition):
    k_sample, k_update = jax.random.split(key)
    return update(state, replay.sample_offline(data, k_sample, batch_size), k_update)
  return one


def make_offline_chunk(update: Callable, batch_size: int, num_updates: int):
  """chunk(state, key, data) -> (state, mean metrics): `num_updates` updates on batches sampled
  uniformly from `data` (the whole dataset as a Transition), as one lax.scan. Update i uses
  `jax.random.split(key, num_updates)[i]`."""
  one = _offline_update(update, batch_size)

  def chunk(state, key, data: Transition):
    state, metrics = jax.lax.scan(lambda s, k: one(s, k, data), state, jax.random.split(key, num_updates))
    # The divergence guard's input, computed on the device (read once per chunk on the host).
    return state, {**_mean_metrics(metrics), GUARD_KEY: resume.nonfinite_count(state)}

  return chunk


def make_offline_block(update: Callable, batch_size: int):
  """block(state, sums, keys, start, count, data) -> (state, sums, guard): the updates
  start .. start+count-1 of a chunk whose update i uses `keys[i]` (the keys `make_offline_chunk`
  splits), as one
  `fori_loop` with a run-time trip count. Any split of a chunk into blocks therefore runs the
  chunk's updates from one compiled program per chunk length, and the blocks are what lets the
  host stop, snapshot and move the progress bar inside a long chunk (`run_offline`).

  `sums` carries the chunk's metrics so far, per metric a pair (NaN-skipping sum, count) in
  float32 (`block_metric_zeros`), accumulated in update order whatever the blocks: the chunk's
  means (`block_means`) do not depend on the split. `guard` is the divergence guard's count of
  the state after the block."""
  one = _offline_update(update, batch_size)

  def block(state, sums, keys, start, count, data: Transition):
    def body(i, carry):
      state, sums = carry
      state, metrics = one(state, keys[i], data)
      def add(acc, value):
        value = jnp.asarray(value, jnp.float32)
        kept = ~jnp.isnan(value)   # delayed-update agents report NaN when the actor step is skipped
        return acc[0] + jnp.where(kept, value, 0.0), acc[1] + kept.astype(jnp.float32)
      return state, {k: add(sums[k], v) for k, v in metrics.items()}
    state, sums = jax.lax.fori_loop(start, start + count, body, (state, sums))
    return state, sums, resume.nonfinite_count(state)

  return block


def block_metric_zeros(update: Callable, batch_size: int):
  """zeros(state, key, data) -> the (sum, count) pairs `make_offline_block` starts a chunk from."""
  one = _offline_update(update, batch_size)

  def zeros(state, key, data: Transition):
    _, metrics = jax.eval_shape(one, state, key, data)
    return {k: (jnp.zeros(m.shape, jnp.float32), jnp.zeros(m.shape, jnp.float32))
            for k, m in metrics.items()}

  return zeros


def block_means(sums) -> Dict[str, jax.Array]:
  """The chunk's mean metrics (NaN-skipping, as `make_offline_chunk`'s) from its (sum, count) pairs."""
  return {k: total / count for k, (total, count) in sums.items()}


SEED_LOOPS = ("vmap", "map")


def seed_loop() -> str:
  """How one offline program steps its seeds: "vmap" batches them into one computation (the default
  on accelerators, where batching is the point); "map" runs them one after another inside the same
  program (`lax.map`), each as the 1-seed program (the default on a CPU with one device). Measured
  on this 2-core CPU (BUILD_NOTES, "Side by side with CORL"): CQL at 5 seeds keeps 0.73-0.76x of
  its 1-seed rate per seed under vmap, 0.99-1.03x under this lax.map. Several local devices shard
  the seed axis, which lax.map would gather, so they keep vmap. O2O_JAX_SEED_LOOP=vmap|map
  overrides. Either way each seed computes exactly what it computes alone."""
  choice = os.environ.get("O2O_JAX_SEED_LOOP", "").strip().lower()
  if not choice:
    return "map" if jax.default_backend() == "cpu" and jax.local_device_count() == 1 else "vmap"
  if choice not in SEED_LOOPS:
    raise O2OError(f"O2O_JAX_SEED_LOOP={choice!r} is not a seed loop: use one of {', '.join(SEED_LOOPS)}"
                   " (or unset it for the backend's default)")
  return choice


def multi_seed_offline_chunk(chunk: Callable, loop: Optional[str] = None, seed_args: int = 2,
                             donate: tuple = (0,)):
  """Jitted chunk over seed-stacked states and keys (the first `seed_args` arguments carry the seed
  axis), the rest (the dataset, ...) shared and never copied, states donated; the seeds stepped
  by `loop` (default `seed_loop()`)."""
  loop = loop or seed_loop()

  def seed_axes(args):
    return (0,) * seed_args + (None,) * (len(args) - seed_args)

  if loop == "vmap":
    def program(*args):
      return vmap_lockstep(chunk, in_axes=seed_axes(args))(*args)
  elif loop == "map":
    # Each seed runs as the vmapped program of one seed (a leading axis of 1), not as the plain chunk:
    # on this CPU XLA's batched kernels at batch 1 beat the unbatched ones (CQL 13.9-14.5 against
    # 12.1-12.9 updates/s), so every seed of N keeps the 1-seed run's speed (and its exact result).
    def program(*args):
      one_seed = vmap_lockstep(chunk, in_axes=seed_axes(args))
      shared = args[seed_args:]

      def per_seed(per_seed_args):
        one = jax.tree_util.tree_map(lambda x: x[None], per_seed_args)
        return jax.tree_util.tree_map(lambda x: x[0], one_seed(*one, *shared))
      return jax.lax.map(per_seed, args[:seed_args])
  else:
    raise O2OError(f"unknown seed loop {loop!r}: use one of {', '.join(SEED_LOOPS)}")
  return jax.jit(program, donate_argnums=donate)


# ----------------------------------------------------------------------------------------- policies

@functools.lru_cache(maxsize=None)
def _eval_policy_fn(act: Callable):
  @jax.jit
  def policy(states, observations, mean, std, t):
    observations = (observations - mean) / std
    # A key per evaluation step t: unused by deterministic actions; an evaluation policy that draws
    # (PEX's epsilon-greedy composite policy) gets fresh randomness at every step, the same in every
    # evaluation and for every seed, as the envs' reset seeds are.
    key = jax.random.fold_in(jax.random.PRNGKey(0), t)
    return jax.vmap(lambda s, o: act(s, o, key, False))(states, observations)
  return policy


def make_eval_policy(act: Callable, obs_mean=None, obs_std=None):
  """jit(vmap over seeds) of the evaluation policy `(states, obs, t=0) -> actions`; observations
  (S, E, obs_dim) on the host, t the step within the evaluation (its PRNG key's index)."""
  policy = _eval_policy_fn(act)
  mean = np.float32(0.0) if obs_mean is None else np.asarray(obs_mean, np.float32)
  std = np.float32(1.0) if obs_std is None else np.asarray(obs_std, np.float32)
  return lambda states, obs, t=0: np.asarray(policy(states, obs, mean, std, np.int32(t)))


def observation_normalizer(obs_dim: int, obs_mean=None, obs_std=None):
  """(mean, std, normalise) of the host-side observation path every loop shares: float32 statistics
  (none given: the identity) and o -> (o - mean) / std."""
  mean = np.zeros(obs_dim, np.float32) if obs_mean is None else np.asarray(obs_mean, np.float32)
  std = np.ones(obs_dim, np.float32) if obs_std is None else np.asarray(obs_std, np.float32)
  return mean, std, lambda o: (o - mean) / std


class Evaluation:
  """The evaluation every loop (offline, online, on-policy) and a 0-step phase share: `eval_episodes`
  episodes per seed of the deterministic policy on normalised observations, all seeds' episodes
  batched (`envs.Evaluator`, `make_eval_policy`). `run(states, bar)` -> (returns [seeds, episodes],
  the metrics row: eval/return and, with `normalized_score`, eval/normalized_score per seed); the
  progress bar shows the mean."""

  def __init__(self, act: Callable, make_env: Callable, num_seeds: int, eval_episodes: int,
               obs_mean=None, obs_std=None, normalized_score: Optional[Callable] = None):
    from o2o_jax import envs as envs_lib
    self.evaluator = envs_lib.Evaluator(make_env, num_seeds, eval_episodes)
    self.policy = make_eval_policy(act, obs_mean, obs_std)
    self.normalized_score = normalized_score

  def run(self, states, bar=None):
    steps = itertools.count()
    returns = self.evaluator.run(lambda o: self.policy(states, o, next(steps)))
    row = {"eval/return": returns.mean(1)}
    if self.normalized_score is not None:
      row["eval/normalized_score"] = self.normalized_score(returns).mean(1)
      postfix = {"score": f"{float(np.mean(row['eval/normalized_score'])):.1f}"}
    else:
      postfix = {"eval": f"{float(returns.mean()):.1f}"}
    if bar is not None:
      bar.set_postfix(**postfix)
    return returns, row

  def close(self):
    self.evaluator.close()


# ----------------------------------------------------------------------------------------- online

@dataclasses.dataclass(frozen=True)
class OnlineConfig:
  total_steps: int = 300_000
  start_steps: int = 5_000            # no updates before this step (warm-up)
  random_warmup: bool = True          # warm-up actions: uniform random (True) or the policy's
  utd: int = 1                        # gradient updates per env step
  batch_size: int = 256
  buffer_size: int = 1_000_000
  offline_fraction: float = 0.0       # share of each batch drawn from the offline dataset
  offline_union: bool = False         # instead: sample uniformly from offline data + buffer together
  eval_every: int = 10_000
  eval_episodes: int = 10
  log_every: int = 1_000


def make_online_step(update: Callable, act: Callable, batch_size: int, utd: int,
                     offline_fraction: float, offline_union: bool = False,
                     sampler: Optional[Callable] = None):
  """Per seed (vmap it): run `utd` updates on batches from `buffer` (mixed with `offline` as
  `offline_fraction` or `offline_union` say; or drawn by `sampler`, see `Learner`), then pick the
  action for `next_obs`. The PRNG key travels in and out, so the host never splits keys."""

  def step(state, buffer, next_obs, key, offline: Optional[Transition]):
    key, k_sample, k_updates, k_act = jax.random.split(key, 4)

    def sample(k):
      if offline is not None and offline_union:
        return replay.sample_union(offline, buffer, k, batch_size)
      if offline is not None and offline_fraction > 0:
        return replay.sample_mixed(offline, buffer, k, batch_size, offline_fraction)
      return replay.sample(buffer, k, batch_size)

    if sampler is None:
      # All UTD batches are gathered up front (one gather per field), then the updates are scanned.
      batches = jax.vmap(sample)(jax.random.split(k_sample, utd))
      state, metrics = jax.lax.scan(lambda s, xs: update(s, *xs), state,
                                    (batches, jax.random.split(k_updates, utd)))
    else:
      # The agent's sampler reads its state (e.g. priorities the previous update wrote back), so each
      # batch is drawn inside the scan, after the update before it.
      def sampled_update(s, keys):
        s, batch = sampler(s, buffer, offline, keys[0], batch_size)
        return update(s, batch, keys[1])
      state, metrics = jax.lax.scan(sampled_update, state, jnp.stack(
          [jax.random.split(k_sample, utd), jax.random.split(k_updates, utd)], axis=1))
    action = act(state, next_obs, k_act, True)
    # No divergence guard here: the host reads it every `log_every` steps, so `run_online` computes it
    # then (`guard_counts`) instead of reducing the whole state after every env step.
    return state, action, key, _mean_metrics(metrics)

  return step


@jax.jit
def guard_counts(states):
  """The divergence guard of seed-stacked states: per seed, the count of non-finite entries."""
  return jax.vmap(resume.nonfinite_count)(states)


class OnlineFunctions(NamedTuple):
  step: Callable      # (states, buffers, transitions, next_obs, keys, offline) -> (states, buffers, actions, keys, metrics)
  insert: Callable    # jitted replay.insert_lockstep (buffers donated)
  update: Callable    # jitted, seed-vmapped UTD updates + next action (states donated)
  act: Callable       # jitted, seed-vmapped exploration action: (states, obs, keys) -> (actions, keys)


@functools.lru_cache(maxsize=None)
def online_functions(update: Callable, act: Callable, batch_size: int, utd: int,
                     offline_fraction: float, offline_union: bool = False,
                     sampler: Optional[Callable] = None):
  """Jitted functions over seed-stacked states and buffers, cached so repeated runs in one process
  compile once. `step` inserts the seeds' transitions, runs the UTD updates and returns the next
  actions; states and buffers are donated. `sampler`: the agent's own batch sampler (`Learner`)."""
  per_seed = vmap_lockstep(make_online_step(update, act, batch_size, utd, offline_fraction,
                                            offline_union, sampler), in_axes=(0, 0, 0, 0, None))

  def step(states, buffers, transitions, next_obs, keys, offline):
    buffers = insert_fn(buffers, transitions)
    states, actions, keys, metrics = update_fn(states, buffers, next_obs, keys, offline)
    return states, buffers, actions, keys, metrics

  # Two device calls per env step: the insert (in place on the donated buffer), then the updates
  # that read the buffer. Fused into one program, XLA merges the insert into the sampling gathers
  # and copies the whole buffer every step (measured: ~8 ms per env step at capacity 300k).
  insert_fn = jax.jit(replay.insert_lockstep, donate_argnums=(0,))
  update_fn = jax.jit(per_seed, donate_argnums=(0,))

  def act_explore(state, obs, key):
    key, k = jax.random.split(key)
    return act(state, obs, k, True), key

  return OnlineFunctions(step=step, insert=insert_fn, update=update_fn,
                         act=jax.jit(jax.vmap(act_explore)))


@dataclasses.dataclass
class OnlineCallbacks:
  on_step: Optional[Callable[..., None]] = None         # (step, transitions_np, truncated_np)
  on_eval: Optional[Callable[..., Any]] = None          # (step, states, returns (S, E)) -> states|None
  # Host state of the callbacks that the snapshots carry: get_state() -> (pytree of arrays, JSON
  # dict), its value at the start being the restore template; set_state(tree, dict) on resume.
  get_state: Optional[Callable[[], tuple]] = None
  set_state: Optional[Callable[[Any, Dict[str, Any]], None]] = None
  on_restart: Optional[Callable[[int], None]] = None    # (step): the envs cut their episodes here
  # (step) -> True ends the run after this step's evaluation (e.g. a behaviour run that reached its
  # target return); asked only at evaluation steps, before that step's snapshot.
  should_stop: Optional[Callable[[int], bool]] = None
  # (step, states): called just before each snapshot is saved (e.g. to export a compact carry-over).
  on_save: Optional[Callable[[int, Any], None]] = None


def run_online(agent, states, *, make_env: Callable, num_seeds: int, seed: int,
               config: OnlineConfig, offline: Optional[Transition] = None, obs_mean=None,
               obs_std=None, metrics_writer=None, callbacks: OnlineCallbacks = OnlineCallbacks(),
               normalized_score: Optional[Callable] = None, progress: bool = True,
               desc: str = "online", prefill: Optional[Transition] = None,
               snapshots: Optional[resume.Snapshots] = None, phase: str = "online",
               reward_scale: float = 1.0, first_step: int = 0, log: Callable = print) -> tuple:
  """Online training of `num_seeds` vmapped agents, one host env per seed.

  `agent` is a module with `update(state, batch, key)` and `act(state, obs, key, explore)` (and
  optionally `sampler`, see `Learner`: it gets `offline` as it is, None included).
  `prefill`: transitions (normalised observations) written into every seed's buffer before the first
  step — leaves (N, ...) shared by all seeds or (S, N, ...) per seed; the buffer grows by N rows.
  `reward_scale`: the offline data's reward transform, applied to the env rewards before they are
  stored, so online and offline batches share one reward scale (and `prefill` must be scaled too).
  `first_step`: the run continues a longer one from `states` at this step, with a fresh buffer (the
  envs restart there; steps up to `config.start_steps` only fill the buffer).
  With `snapshots`, every `snapshots.every` env steps (and on SIGINT/SIGTERM, then raising
  `errors.Interrupted`) the agent states, buffers and PRNG keys are saved, and the training envs
  restart their episodes with seeds derived from the step (so env state need not be saved); a rerun
  resumes from the latest snapshot and continues exactly as the uninterrupted run.
  Returns (states, buffer, eval history list)."""
  from o2o_jax import envs as envs_lib
  from o2o_jax import logging as log_lib

  env_probe = make_env()
  obs_dim, act_dim = envs_lib.env_dims(env_probe)
  env_probe.close()
  train_envs = envs_lib.SeedEnvs(make_env, num_seeds, seed)
  mean, std, norm = observation_normalizer(obs_dim, obs_mean, obs_std)
  evaluation = Evaluation(agent.act, make_env, num_seeds, config.eval_episodes, mean, std,
                          normalized_score)

  n_prefill = 0 if prefill is None else int(prefill.rewards.shape[-1])
  buffer = replay.init(min(config.buffer_size, config.total_steps) + n_prefill, obs_dim, act_dim,
                       num_seeds)
  if prefill is not None:
    per_seed = prefill.rewards.ndim == 2
    buffer = jax.jit(jax.vmap(replay.insert, in_axes=(0, 0 if per_seed else None)))(buffer, prefill)
  step_fn, insert_fn, _, act_fn = online_functions(agent.update, agent.act, config.batch_size,
                                                   config.utd, config.offline_fraction,
                                                   config.offline_union,
                                                   getattr(agent, "sampler", None))

  states = unalias(states)
  keys = seed_keys(seed, num_seeds)

  def payload_and_meta():
    payload, meta = {"agent": states, "buffer": buffer, "keys": keys}, {"history": history}
    if callbacks.get_state is not None:
      payload["callbacks"], meta["callbacks"] = callbacks.get_state()
    return payload, meta

  history = []
  session = resume.Session(snapshots, phase, unit="env step", log=log)
  payload, meta, start = session.restore(payload_and_meta()[0])
  if start:
    states, buffer, keys = payload["agent"], payload["buffer"], payload["keys"]
    history = resume.decode_history(meta)
    if callbacks.set_state is not None:
      callbacks.set_state(payload["callbacks"], meta.get("callbacks", {}))
    train_envs.restart(start)
  elif first_step:
    start = first_step
    train_envs.restart(start)
  mesh = sharding.seed_mesh(num_seeds)     # seeds split over the local devices (identity on one)
  states, buffer, keys = sharding.place_seeds((states, buffer, keys), mesh)
  offline = sharding.place_shared(offline, mesh)
  if metrics_writer is not None:
    metrics_writer.truncate_after(start)
  bar = log_lib.progress(config.total_steps, desc, initial=start, disable=not progress)
  last_metrics, action, t0 = None, None, time.time()
  with session:
    for t in range(start + 1, config.total_steps + 1):
      session.fault.at(t)
      obs = train_envs.obs
      if t <= config.start_steps and config.random_warmup:
        actions = train_envs.random_actions()
      elif action is None:
        actions, keys = act_fn(states, jnp.asarray(norm(obs)), keys)
        actions = np.asarray(actions)
      else:
        actions = action
      next_obs, rewards, terminated, truncated = train_envs.step(actions)
      transition = Transition(observations=norm(obs), actions=actions.astype(np.float32),
                              rewards=rewards * np.float32(reward_scale),
                              next_observations=norm(next_obs),
                              terminals=terminated.astype(np.float32))
      if callbacks.on_step is not None:
        callbacks.on_step(t, Transition(obs, actions, rewards, next_obs, terminated), truncated)
      if t < config.start_steps:
        buffer = insert_fn(buffer, transition)
        action = None
      else:
        states, buffer, action_dev, keys, last_metrics = step_fn(
            states, buffer, transition, norm(train_envs.obs), keys, offline)
        action = np.asarray(action_dev)
      bar.update(1)

      if t % config.eval_every == 0 or t == config.total_steps:
        returns, row = evaluation.run(states, bar)
        history.append({"step": t, "returns": returns})
        if callbacks.on_eval is not None:  # may return updated states (e.g. a refreshed pi_ref)
          new_states = callbacks.on_eval(t, states, returns)
          states = states if new_states is None else new_states
        if metrics_writer is not None:
          metrics_writer.write(t, row)
        if callbacks.should_stop is not None and callbacks.should_stop(t):
          log(f"[{phase}] stopping at step {t}: the run's stop condition holds")
          break
      snapshot = session.due(t, config.total_steps)
      if last_metrics is not None and (t % config.log_every == 0 or snapshot):
        host_metrics = jax.device_get({**last_metrics, GUARD_KEY: guard_counts(states)})
        session.check_finite(host_metrics[GUARD_KEY], step=t, states=states, metrics=host_metrics)
        if metrics_writer is not None and t % config.log_every == 0:
          train = {f"train/{k}": v for k, v in host_metrics.items() if k != GUARD_KEY}
          episodes = [r[-1] for r in train_envs.completed if r]
          if episodes:
            train["train/episode_return"] = np.mean(episodes)
          train["perf/env_steps_per_s"] = (t - start) / (time.time() - t0)
          metrics_writer.write(t, train)
      if snapshot:
        if metrics_writer is not None:
          metrics_writer.flush()
        train_envs.restart(t)
        if callbacks.on_restart is not None:
          callbacks.on_restart(t)
        action = None
        if callbacks.on_save is not None:
          callbacks.on_save(t, states)
        session.save(t, *payload_and_meta())
      session.stop_if_requested(t, (bar.close, train_envs.close, evaluation.close))
  bar.close()
  train_envs.close()
  evaluation.close()
  return states, buffer, history


def collect_prefill(act, states, make_env, num_seeds: int, seed: int, steps: int, obs_mean, obs_std,
                    reward_scale: float) -> Transition:
  """`steps` transitions per seed of the (offline) policy acting as online (`act(..., explore=True)`),
  with normalised observations and scaled rewards, as the online loop stores them: leaves
  (S, steps, ...)."""
  from o2o_jax import envs as envs_lib
  train_envs = envs_lib.SeedEnvs(make_env, num_seeds, seed)
  policy = jax.jit(lambda s, o, keys, t: jax.vmap(lambda s_, o_, k: act(s_, o_, jax.random.fold_in(k, t),
                                                                        True))(s, o, keys))
  norm = lambda o: ((o - obs_mean) / obs_std).astype(np.float32)
  keys = seed_keys(seed, num_seeds)
  rows = []
  for t in range(steps):
    obs = train_envs.obs
    actions = np.asarray(policy(states, jnp.asarray(norm(obs)), keys, t), np.float32)
    next_obs, rewards, terminated, _ = train_envs.step(actions)
    rows.append((norm(obs), actions, (rewards * reward_scale).astype(np.float32), norm(next_obs),
                 terminated.astype(np.float32)))
  train_envs.close()
  fields = [np.stack([r[i] for r in rows], axis=1) for i in range(5)]
  return Transition(*[jnp.asarray(f) for f in fields])


# ----------------------------------------------------------------------------------------- offline run

@dataclasses.dataclass(frozen=True)
class OfflineConfig:
  num_steps: int = 1_000_000
  batch_size: int = 256
  chunk: int = 5_000                  # updates fused per lax.scan call
  eval_every: int = 10_000
  eval_episodes: int = 10


@functools.lru_cache(maxsize=None)
def offline_chunk_fn(update: Callable, batch_size: int, num_updates: int):
  return multi_seed_offline_chunk(make_offline_chunk(update, batch_size, num_updates))


@functools.lru_cache(maxsize=None)
def offline_block_fns(update: Callable, batch_size: int):
  """(block, zeros): the seed-stepped jitted `make_offline_block` (states and sums donated) and
  `block_metric_zeros`."""
  return (multi_seed_offline_chunk(make_offline_block(update, batch_size), seed_args=3, donate=(0, 1)),
          multi_seed_offline_chunk(block_metric_zeros(update, batch_size), seed_args=2, donate=()))


# How long one block of a chunk should run (seconds, about): the longest a stop signal waits for a
# snapshot, and the progress bar for a move. The first block of a run is FIRST_BLOCK updates; each
# later one is sized from the measured rate of the one before (it includes the compilation once).
BLOCK_SECONDS = 5.0
FIRST_BLOCK = 32


class _BlockSizer:
  def __init__(self):
    self.size = FIRST_BLOCK

  def observe(self, count: int, seconds: float) -> None:
    self.size = max(1, int(count / max(seconds, 1e-6) * BLOCK_SECONDS))


@functools.partial(jax.jit, static_argnums=1)
def _chunk_keys(seed_keys, n: int):
  """(S, n, 2): seed s's update i uses `jax.random.split(seed_keys[s], n)[i]`, as in
  `make_offline_chunk`."""
  return jax.vmap(lambda k: jax.random.split(k, n))(seed_keys)


def run_offline(agent, states, data: Transition, *, make_env: Callable, num_seeds: int, seed: int,
                config: OfflineConfig, obs_mean=None, obs_std=None, metrics_writer=None,
                normalized_score: Optional[Callable] = None, on_eval: Optional[Callable] = None,
                snapshots: Optional[resume.Snapshots] = None, phase: str = "offline",
                progress: bool = True, desc: str = "offline", log: Callable = print) -> tuple:
  """Offline training of `num_seeds` vmapped agents on one shared device dataset, in chunks of
  `config.chunk` updates, evaluating every `eval_every` updates. `on_eval(step, states, returns)`
  is called after each evaluation (e.g. to checkpoint) and may return new states.

  With `snapshots`, the run resumes from the latest snapshot and saves one every `snapshots.every`
  updates and on SIGINT/SIGTERM (then raises `errors.Interrupted`). The PRNG keys of a chunk's
  updates are derived from its first step, and chunks end at evaluation and snapshot steps, so a
  resumed run computes exactly what the uninterrupted one does. A chunk runs as blocks of about
  BLOCK_SECONDS each (`make_offline_block`), so a signal is honoured within a block, not a chunk:
  the snapshot then records the chunk's first step and its metric sums, and the resumed run
  finishes that chunk with its keys (in a multi-process run a signal still waits for the chunk's
  end, where every process stops at the same step). Returns (states, eval history)."""
  from o2o_jax import logging as log_lib

  session = resume.Session(snapshots, phase, log=log)
  states, meta, step = session.restore(unalias(states))
  history = resume.decode_history(meta)
  mesh = sharding.seed_mesh(num_seeds)     # seeds split over the local devices (identity on one)
  states, data = sharding.place_seeds(states, mesh), sharding.place_shared(data, mesh)
  if metrics_writer is not None:
    metrics_writer.truncate_after(step)
  evaluation = Evaluation(agent.act, make_env, num_seeds, config.eval_episodes, obs_mean, obs_std,
                          normalized_score)
  base_key = jax.random.PRNGKey(seed)
  block_fn, zeros_fn = offline_block_fns(agent.update, config.batch_size)
  sizer, stop_inside_chunks = _BlockSizer(), jax.process_count() == 1
  interrupted_chunk = meta.get("chunk")      # a snapshot taken inside a chunk (after a signal)
  bar = log_lib.progress(config.num_steps, desc, initial=step, disable=not progress)
  t0, start = time.time(), step

  def chunk_length(origin):
    # A chunk never crosses an evaluation point, a snapshot point or the end (at most a few
    # distinct chunk lengths, each compiled once).
    next_eval = (origin // config.eval_every + 1) * config.eval_every
    return int(min(config.chunk, next_eval - origin, session.next_due(origin) - origin,
                   config.num_steps - origin))

  with session:
    while step < config.num_steps:
      origin = step if interrupted_chunk is None else int(interrupted_chunk["origin"])
      n = chunk_length(origin)
      chunk_key = sharding.place_seeds(
          distributed.split_seeds(jax.random.fold_in(base_key, origin), num_seeds), mesh)
      keys = sharding.place_seeds(_chunk_keys(chunk_key, n), mesh)
      sums = (zeros_fn(states, chunk_key, data) if interrupted_chunk is None else
              {k: (jnp.asarray(total, jnp.float32), jnp.asarray(count, jnp.float32))
               for k, (total, count) in interrupted_chunk["sums"].items()})
      interrupted_chunk = None
      while step < origin + n:
        count = min(sizer.size, origin + n - step)
        t_block = time.time()
        states, sums, guard = block_fn(states, sums, keys, step - origin, count, data)
        jax.block_until_ready(guard)
        sizer.observe(count, time.time() - t_block)
        step += count
        bar.update(count)
        session.fault.at(step)
        if step < origin + n and stop_inside_chunks and session.signals.requested is not None:
          if session.snapshots is not None:
            if metrics_writer is not None:
              metrics_writer.flush()
            inside = jax.tree_util.tree_map(lambda x: np.asarray(x).tolist(), sums)
            session.save(step, states, {"history": history, "chunk": {"origin": origin, "sums": inside}})
          session.stop_if_requested(step, (bar.close, evaluation.close))
      metrics = block_means(sums)
      session.check_finite(guard, step=step, states=states, metrics=jax.device_get(metrics))
      if step % config.eval_every == 0 or step >= config.num_steps:
        returns, eval_row = evaluation.run(states, bar)
        row = {f"train/{k_}": v for k_, v in jax.device_get(metrics).items()}
        row.update(eval_row)
        row["perf/updates_per_s"] = (step - start) / (time.time() - t0)
        history.append({"step": step, "returns": returns})
        if metrics_writer is not None:
          metrics_writer.write(step, row)
        if on_eval is not None:
          new_states = on_eval(step, states, returns)
          states = states if new_states is None else new_states
      if session.due(step, config.num_steps):
        if metrics_writer is not None:
          metrics_writer.flush()
        session.save(step, states, {"history": history})
      session.stop_if_requested(step, (bar.close, evaluation.close))
  bar.close()
  evaluation.close()
  return states, history
