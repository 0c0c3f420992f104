"""D4RL-style dataset generation on gymnasium MuJoCo v5, written as real Minari datasets.

Pipeline per env (D4RL's recipe for its MuJoCo sets, see shared/reference/datasets.md):
 1. Train one SAC behaviour policy (`train_behaviour_policy`), saving the actor and its stochastic
    evaluation return every `eval_every` steps, and recording every transition it collects.
 2. Levels:  random        uniform actions
             medium        the checkpoint whose return is closest to 1/3 of the final policy's
             medium-replay the replay buffer up to the medium checkpoint
             expert        the final policy
             medium-expert medium + expert episodes
    Medium/expert data are collected with *stochastic* actions (as D4RL and Minari did).
 3. Reference scores (Minari's convention): ref_min = mean return of the uniform policy, ref_max = mean
    return of the expert policy, 100 episodes each on the eval env with seeds 0..99.
The behaviour policies (small) are saved so `regenerate` rebuilds every level without retraining; a
regenerated medium-replay replays the checkpoint sequence (each checkpoint acts for its window of
steps) instead of the original buffer, which is not kept.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import envs as envs_lib
from o2o_jax import loops, resume
from o2o_jax.agents.online import sac
from o2o_jax.errors import O2OError
from o2o_jax.types import Transition

LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")
NAMESPACE = "o2o"
REF_EPISODES = 100
_LEVEL_SEED_BASE = {"random": 1_000_000, "medium": 2_000_000, "expert": 3_000_000,
                    "medium-replay": 4_000_000}


# D4RL's expert reference returns (`d4rl.infos.REF_MAX_SCORE`, the v2 sets), which our behaviour runs
# are measured against; EXPERT_TARGET_FRACTION of them is the default target of a behaviour run.
D4RL_EXPERT_RETURNS = {"hopper": 3234.3, "halfcheetah": 12135.0, "walker2d": 4592.3, "ant": 3879.7}
EXPERT_TARGET_FRACTION = 0.8
CONFIRM_EPISODES = 50
# A behaviour run carried across sessions keeps the actors up to the first checkpoint whose return
# reaches this fraction of the target (medium's candidates), see `save_carry`.
CARRY_KEEP_FRACTION = 0.5
CARRY_REFILL_STEPS = 10_000


# Issue #22's stated targets; the default is the larger of these and 80% of D4RL's return.
ISSUE_TARGETS = {"hopper": 2600.0, "halfcheetah": 9700.0, "walker2d": 3700.0}


def default_target_return(env_name: str) -> Optional[float]:
  ref = D4RL_EXPERT_RETURNS.get(env_name)
  if ref is None:
    return None
  return max(ISSUE_TARGETS.get(env_name, 0.0), EXPERT_TARGET_FRACTION * ref)


def dataset_id(env_name: str, level: str, version: int = 0) -> str:
  return f"{NAMESPACE}/{env_name}/{level}-v{version}"


# ------------------------------------------------------------------------------ behaviour policies

@dataclasses.dataclass
class BehaviourPolicies:
  """Actor checkpoints of one SAC run with their stochastic evaluation returns."""
  env_name: str
  env_id: str
  hidden_dims: tuple
  obs_dim: int
  act_dim: int
  steps: List[int]
  returns: List[float]                 # mean stochastic eval return per checkpoint
  params: Dict[int, dict]              # step -> actor params (numpy)
  seed: int = 0
  sac_steps: int = 0
  start_steps: int = 0
  eval_every: int = 0
  replay: Optional[dict] = None        # the behaviour run's transitions (host numpy), if trained here
  target_return: Optional[float] = None   # the run stopped at the first checkpoint that reached it
  confirm_return: Optional[float] = None  # that checkpoint's CONFIRM_EPISODES-episode return
  steps_trained: Optional[int] = None     # env steps actually run (< sac_steps if the target stopped it)
  continued_from: Optional[int] = None    # the last session's carry this run continued from, if any

  @property
  def expert_step(self) -> int:
    return self.steps[-1]

  @property
  def medium_candidates(self) -> List[int]:
    """Checkpoints medium may be chosen from: with a target return, those up to the first one that
    reached half the target (a run carried across sessions keeps only these actors, see
    `save_carry`; medium's 1/3 of the expert's return lies below that point); else all."""
    if self.target_return is None:
      return list(self.steps)
    first = next((s for s, r in zip(self.steps, self.returns)
                  if r >= CARRY_KEEP_FRACTION * self.target_return), None)
    return [s for s in self.steps if first is None or s <= first]

  @property
  def medium_step(self) -> int:
    """The checkpoint (of `medium_candidates`) whose return is closest to 1/3 of the final (expert)
    policy's return."""
    target = self.returns[-1] / 3.0
    candidates = self.medium_candidates
    return candidates[int(np.argmin([abs(self.return_at(s) - target) for s in candidates]))]

  def return_at(self, step: int) -> float:
    return self.returns[self.steps.index(step)]

  def actor(self):
    return sac.make_networks(sac.Config(hidden_dims=self.hidden_dims), self.act_dim)[0]

  # ---- persistence: meta.json + actor_<step>.npz (only the checkpoints regeneration needs)
  def save(self, directory: str | os.PathLike, keep: Optional[Sequence[int]] = None) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    keep = sorted(set(keep if keep is not None else self.steps_needed()))
    for step in keep:
      flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
              for path, v in jax.tree_util.tree_flatten_with_path(self.params[step])[0]}
      np.savez(d / f"actor_{step}.npz", **flat)
    if self.replay is not None:  # large: kept next to the policies but out of git
      np.savez(d / "replay_buffer.npz", **self.replay)
    meta = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("params", "replay")}
    meta.update(saved_steps=keep, medium_step=self.medium_step, expert_step=self.expert_step)
    (d / "meta.json").write_text(json.dumps(meta, indent=2))

  def steps_needed(self) -> List[int]:
    """Checkpoints up to medium (to replay medium-replay) and the expert."""
    return [s for s in self.steps if s <= self.medium_step] + [self.expert_step]

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "BehaviourPolicies":
    d = Path(directory)
    if not (d / "meta.json").exists():
      raise O2OError(f"{d} holds no behaviour policies (meta.json missing): train them with "
                     "`python -m experiments.make_dataset --env=<env>` first")
    meta = json.loads((d / "meta.json").read_text())
    saved = meta.pop("saved_steps")
    meta.pop("medium_step"), meta.pop("expert_step")
    template = cls(**{**meta, "hidden_dims": tuple(meta["hidden_dims"]), "params": {}})
    actor = template.actor()
    proto = actor.init(jax.random.PRNGKey(0), jnp.zeros((1, template.obs_dim)))
    params = {}
    for step in saved:
      with np.load(d / f"actor_{step}.npz") as f:
        leaves_with_path = jax.tree_util.tree_flatten_with_path(proto)[0]
        leaves = [f["/".join(str(getattr(k, "key", k)) for k in path)] for path, _ in leaves_with_path]
      params[step] = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(proto), leaves)
    template.params = params
    if (d / "replay_buffer.npz").exists():
      with np.load(d / "replay_buffer.npz") as f:
        template.replay = {k: f[k] for k in f.files}
    return template


@functools.lru_cache(maxsize=None)
def _stochastic_policy(hidden_dims: tuple, act_dim: int):
  """jit((actor params, obs, key) -> sampled actions) of the behaviour actor (compiled once)."""
  actor = sac.make_networks(sac.Config(hidden_dims=tuple(hidden_dims)), act_dim)[0]

  @jax.jit
  def act(params, obs, key):
    return actor.apply(params, obs).sample(seed=key)
  return act


def evaluate_policy(make_env, policy_fn, episodes: int, seed: int = 0) -> np.ndarray:
  """Undiscounted returns of `episodes` episodes (reset seeds seed..seed+episodes-1), batched."""
  ev = envs_lib.Evaluator(make_env, 1, episodes, seed=seed)
  try:
    return ev.run(lambda o: policy_fn(o[0])[None])[0]
  finally:
    ev.close()


def save_carry(directory: str | os.PathLike, policies: "BehaviourPolicies", states, step: int,
               lineage_start: int, eval_key, run: dict, metrics_csv: Optional[Path] = None) -> None:
  """A compact, committable carry-over of a behaviour run at `step` (a few MB): the SAC state with its
  optimisers, the evaluation key, every checkpoint's return, and the actors medium may be chosen
  from (`medium_candidates`). The replay buffer and the transition record are not carried (hundreds
  of MB): a run continued from a carry refills a fresh buffer with its current policy
  (CARRY_REFILL_STEPS) before updating again, and medium-replay is re-collected from the checkpoint
  sequence. Written to a sibling folder, then swapped in, so a crash never leaves half a carry."""
  from flax import serialization
  d = Path(directory)
  tmp, old = d.with_name(d.name + ".tmp"), d.with_name(d.name + ".old")
  shutil.rmtree(tmp, ignore_errors=True)
  carried = dataclasses.replace(policies, replay=None)
  carried.save(tmp, keep=carried.medium_candidates)
  (tmp / "agent.msgpack").write_bytes(serialization.to_bytes(jax.device_get(states)))
  (tmp / "carry.json").write_text(json.dumps(
      {"step": step, "lineage_start": lineage_start, "run": run,
       "eval_key": np.asarray(eval_key).tolist()}, indent=1))
  if metrics_csv is not None and Path(metrics_csv).exists():
    shutil.copy(metrics_csv, tmp / "metrics.csv")
  shutil.rmtree(old, ignore_errors=True)
  if d.exists():
    d.rename(old)
  tmp.rename(d)
  shutil.rmtree(old, ignore_errors=True)


def load_carry(directory: str | os.PathLike, states_template):
  """(policies, states, carry dict) of a carry written by `save_carry`, or None if there is none."""
  from flax import serialization
  d = Path(directory)
  if not (d / "carry.json").exists():
    return None
  carry = json.loads((d / "carry.json").read_text())
  policies = BehaviourPolicies.load(d)
  states = serialization.from_bytes(jax.device_get(states_template),
                                    (d / "agent.msgpack").read_bytes())
  return policies, states, carry


def end_run_at_carry(carry_dir: str | os.PathLike) -> BehaviourPolicies:
  """Ends a carried behaviour run at its carry's step, with the carry's current actor as the expert
  (the last checkpoint): the way to stop a run whose target proved out of reach on the machine
  (issue #22 allows the best policy reached, with its curve). The target stays recorded and
  `confirm_return` stays None, so the policies say that the target was not reached; the levels
  re-collect medium-replay from the checkpoints, as for any continued run."""
  from flax import serialization
  d = Path(carry_dir)
  if not (d / "carry.json").exists():
    raise O2OError(f"{d} holds no carry (carry.json missing): --end_at_carry ends a behaviour run "
                   "that wrote one with --carry_dir")
  policies = BehaviourPolicies.load(d)
  carry = json.loads((d / "carry.json").read_text())
  if policies.steps[-1] != carry["step"]:
    raise O2OError(f"the carry in {d} is at step {carry['step']} but its last evaluation is at "
                   f"{policies.steps[-1]}: a carry is written at an evaluation step; rewrite it by "
                   "continuing the run to its next snapshot")
  states = serialization.msgpack_restore((d / "agent.msgpack").read_bytes())
  policies.params[carry["step"]] = jax.tree_util.tree_map(lambda x: np.asarray(x)[0],
                                                          states["actor"]["params"])
  policies.steps_trained = carry["step"]
  policies.continued_from = carry["lineage_start"] or None
  return policies


def train_behaviour_policy(env_name: str, sac_steps: int, seed: int = 0, eval_every: int = 10_000,
                           eval_episodes: int = 10, hidden_dims=(256, 256), start_steps: int = 5_000,
                           metrics_writer=None, progress: bool = True,
                           snapshots: Optional[resume.Snapshots] = None,
                           target_return: Optional[float] = None,
                           carry_dir: Optional[str | os.PathLike] = None,
                           log=print) -> BehaviourPolicies:
  """One SAC run (UTD 1); keeps every checkpoint's actor, its stochastic return and all transitions.

  With `target_return`, the run stops at the first checkpoint whose stochastic return reaches it on
  the `eval_episodes` evaluation *and* on a confirmation over CONFIRM_EPISODES more episodes (one
  lucky 10-episode Hopper evaluation is not an expert); that checkpoint is then the final policy.

  With `snapshots`, the run is resumable like `loops.run_online`: each snapshot also holds the
  transition record so far, the actor checkpoints, their returns and the evaluation key, so a
  rerun continues the same run exactly. The training env's episode is cut at each snapshot step
  (recorded as a truncation). The caller discards the snapshots once the policies are saved.

  With `carry_dir` (and `snapshots`), each snapshot also writes a small carry-over there
  (`save_carry`) that can be committed: a later session without the snapshots continues the run
  from it, with a fresh buffer and no transition record (so medium-replay is re-collected)."""
  env_id = envs_lib.resolve_env_id(env_name)
  make_env = lambda: envs_lib.make_env(env_id)
  probe = make_env()
  obs_dim, act_dim = envs_lib.env_dims(probe)
  probe.close()
  config = sac.Config(hidden_dims=tuple(hidden_dims))
  states = loops.init_states(sac, jax.random.split(jax.random.PRNGKey(seed), 1), obs_dim, act_dim,
                             config)
  run = {"env_id": env_id, "seed": seed, "sac_steps": sac_steps, "start_steps": start_steps,
         "eval_every": eval_every, "eval_episodes": eval_episodes, "hidden_dims": list(hidden_dims),
         "target_return": target_return}
  policies = BehaviourPolicies(env_name, env_id, tuple(hidden_dims), obs_dim, act_dim, [], [], {},
                               seed=seed, sac_steps=sac_steps, start_steps=start_steps,
                               eval_every=eval_every, target_return=target_return)
  key_holder = [jax.random.PRNGKey(seed + 17)]
  first_step = 0               # > 0: this process continues the run from a carry at that step
  carried = load_carry(carry_dir, states) if carry_dir is not None else None
  if carried is not None:
    carried_policies, carried_states, carry = carried
    if carry["run"] != run:
      raise O2OError(f"the carry in {carry_dir} belongs to another behaviour run ({carry['run']}, "
                     f"this one is {run}): rerun with the same flags, or delete that folder")
    lineage = carry["lineage_start"]
    local = _lineage_snapshots(snapshots, lineage)
    if local is not None and (local.latest_step() or 0) >= carry["step"]:
      first_step, snapshots = lineage, local   # this session's own snapshots: resume exactly
    else:
      first_step, snapshots = carry["step"], _lineage_snapshots(snapshots, carry["step"])
      log(f"[behaviour] continuing from the carry in {carry_dir} at step {first_step} with a fresh "
          f"buffer ({CARRY_REFILL_STEPS} policy steps refill it before updates resume)")
    states = carried_states
    policies.steps[:], policies.returns[:] = carried_policies.steps, carried_policies.returns
    policies.params.update(carried_policies.params)
    key_holder[0] = jnp.asarray(carry["eval_key"], jnp.uint32)
  run["continued_from"] = first_step
  rows = sac_steps if first_step == 0 else 0   # a continued run keeps no transition record
  record = {"observations": np.zeros((rows, obs_dim), np.float32),
            "actions": np.zeros((rows, act_dim), np.float32),
            "rewards": np.zeros(rows, np.float32),
            "next_observations": np.zeros((rows, obs_dim), np.float32),
            "terminations": np.zeros(rows, bool), "truncations": np.zeros(rows, bool)}
  stochastic = _stochastic_policy(policies.hidden_dims, act_dim)
  # Every evaluation step, in order: the snapshot holds one actor slot per step (zeros until then).
  eval_steps = [t for t in range(1, sac_steps + 1) if t % eval_every == 0 or t == sac_steps]
  no_params = jax.tree_util.tree_map(lambda x: np.zeros(x.shape[1:], x.dtype),
                                     jax.device_get(states.actor.params))

  def get_state():
    actors = [policies.params.get(t, no_params) for t in eval_steps]
    tree = {"eval_key": key_holder[0], "actors": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *actors)}
    if rows:      # a continued run has no record, and orbax refuses to save zero-size arrays
      tree["record"] = record
    return tree, {"run": run, "steps": policies.steps, "returns": policies.returns,
                  "param_steps": sorted(policies.params)}

  def set_state(tree, meta):
    if meta["run"] != run:
      raise O2OError(f"the snapshots in {snapshots.directory} belong to another behaviour run "
                     f"({meta['run']}, this one is {run}): rerun with the same flags, or delete "
                     "that folder to start over")
    for k, v in tree.get("record", {}).items():
      record[k][:] = np.asarray(v)
    key_holder[0] = tree["eval_key"]
    policies.steps[:], policies.returns[:] = list(meta["steps"]), list(meta["returns"])
    policies.params.clear()
    for t in meta.get("param_steps", policies.steps):
      j = eval_steps.index(t)
      policies.params[t] = jax.tree_util.tree_map(lambda x: np.array(x[j]), tree["actors"])

  def on_restart(t):   # the env's episode is cut at a snapshot: a time-limit-like boundary
    if rows and not record["terminations"][t - 1]:
      record["truncations"][t - 1] = True

  def on_step(t, tr: Transition, truncated):
    if not rows:
      return
    i = t - 1
    record["observations"][i], record["actions"][i] = tr.observations[0], tr.actions[0]
    record["rewards"][i], record["next_observations"][i] = tr.rewards[0], tr.next_observations[0]
    record["terminations"][i], record["truncations"][i] = tr.terminals[0], truncated[0]

  def on_eval(t, states_, det_returns):
    params = jax.device_get(jax.tree_util.tree_map(lambda x: x[0], states_.actor.params))

    def policy_fn(obs):
      key_holder[0], k = jax.random.split(key_holder[0])
      return np.asarray(stochastic(params, jnp.asarray(obs), k))

    returns = evaluate_policy(make_env, policy_fn, eval_episodes, seed=20_000)
    policies.steps.append(t)
    policies.returns.append(float(returns.mean()))
    policies.params[t] = params
    row = {"eval/stochastic_return": returns.mean()}
    if target_return is not None and returns.mean() >= target_return:
      confirm = evaluate_policy(make_env, policy_fn, CONFIRM_EPISODES, seed=30_000)
      row["eval/confirm_return"] = confirm.mean()
      log(f"[behaviour] step {t}: stochastic return {returns.mean():.0f} >= target "
          f"{target_return:.0f}; {CONFIRM_EPISODES}-episode confirmation {confirm.mean():.0f}")
      if confirm.mean() >= target_return:
        policies.confirm_return = float(confirm.mean())
    if metrics_writer is not None:
      metrics_writer.write(t, row)

  def on_save(t, states_):
    if carry_dir is not None:
      save_carry(carry_dir, policies, states_, t, first_step, key_holder[0],
                 {k: v for k, v in run.items() if k != "continued_from"},
                 None if metrics_writer is None else metrics_writer.csv_path)

  # A continued run refills its fresh buffer with the current policy (not uniform actions).
  warmup = start_steps if first_step == 0 else first_step + max(start_steps, CARRY_REFILL_STEPS)
  loops.run_online(sac, states, make_env=make_env, num_seeds=1, seed=seed + first_step,
                   config=loops.OnlineConfig(total_steps=sac_steps, start_steps=warmup,
                                             random_warmup=first_step == 0,
                                             eval_every=eval_every, eval_episodes=eval_episodes,
                                             buffer_size=sac_steps - first_step),
                   metrics_writer=metrics_writer,
                   callbacks=loops.OnlineCallbacks(
                       on_step=on_step, on_eval=on_eval, get_state=get_state, set_state=set_state,
                       on_restart=on_restart, on_save=on_save,
                       should_stop=lambda t: policies.confirm_return is not None),
                   progress=progress, desc=f"SAC behaviour policy ({env_id})",
                   snapshots=snapshots, phase="behaviour", first_step=first_step, log=log)
  done = policies.steps[-1]
  policies.steps_trained = done
  policies.continued_from = first_step or None
  if rows:   # the record ends with the last step trained
    policies.replay = {k: v[:done] for k, v in record.items()}
    if not policies.replay["terminations"][-1]:
      policies.replay["truncations"][-1] = True
  return policies


def _lineage_snapshots(snapshots: Optional[resume.Snapshots], first_step: int):
  """The local snapshots of the run segment that started at `first_step` (0: the run's own)."""
  if snapshots is None or first_step == 0:
    return snapshots
  return resume.Snapshots(Path(snapshots.directory).with_name(
      f"{Path(snapshots.directory).name}_from_{first_step}"), snapshots.every)


# ------------------------------------------------------------------------------ collection

def _episodes_from_flat(obs, actions, rewards, next_obs, terminations, truncations, seeds):
  """Splits flat transitions into Minari EpisodeBuffers at termination/truncation flags."""
  from minari.data_collector import EpisodeBuffer
  ends = np.nonzero(terminations | truncations)[0]
  episodes, start = [], 0
  for k, end in enumerate(ends):
    sl = slice(start, end + 1)
    o = np.concatenate([obs[sl], next_obs[end][None]]).astype(np.float64)
    episodes.append(EpisodeBuffer(id=k, seed=int(seeds[k]) if seeds is not None else None,
                                  observations=o, actions=actions[sl].astype(np.float32),
                                  rewards=rewards[sl].astype(np.float64),
                                  terminations=terminations[sl].copy(),
                                  truncations=truncations[sl].copy(), infos={}))
    start = end + 1
  return episodes


def collect(make_env, size: int, policy_fn=None, seed_base: int = 0, num_envs: int = 10,
            schedule=None, progress: bool = True, desc: str = "collect") -> dict:
  """Rolls out `size` transitions with `num_envs` envs stepped together.

  `policy_fn(obs (n, obs_dim), t) -> actions` (None = uniform random). Episodes are reset with
  explicit seeds seed_base + episode index. The last episode of each env is cut at the size budget and
  marked truncated (D4RL's `timeouts`). Returns flat arrays plus per-episode seeds."""
  from o2o_jax import logging as log_lib
  env_list = [make_env() for _ in range(num_envs)]
  obs_dim, act_dim = envs_lib.env_dims(env_list[0])
  per_env = [size // num_envs + (1 if i < size % num_envs else 0) for i in range(num_envs)]
  buffers = [{k: [] for k in ("obs", "act", "rew", "next", "term", "trunc")} for _ in env_list]
  ep_seeds = [[] for _ in env_list]
  next_seed = [seed_base]

  def reset(i):
    s = next_seed[0]
    next_seed[0] += 1
    ep_seeds[i].append(s)
    env_list[i].action_space.seed(s)
    return env_list[i].reset(seed=s)[0]

  obs = np.stack([reset(i) for i in range(num_envs)]).astype(np.float32)
  counts = np.zeros(num_envs, np.int64)
  bar = log_lib.progress(size, desc, disable=not progress)
  t = 0
  while (counts < per_env).any():
    active = np.nonzero(counts < per_env)[0]
    if policy_fn is None:
      actions = np.stack([env_list[i].action_space.sample() for i in range(num_envs)])
    else:
      actions = np.asarray(policy_fn(obs, t))
    for i in active:
      o, r, term, trunc, _ = env_list[i].step(actions[i])
      counts[i] += 1
      cut = counts[i] == per_env[i] and not (term or trunc)
      b = buffers[i]
      b["obs"].append(obs[i].copy()); b["act"].append(actions[i]); b["rew"].append(r)
      b["next"].append(o); b["term"].append(term); b["trunc"].append(trunc or cut)
      obs[i] = reset(i) if (term or trunc) and counts[i] < per_env[i] else o
    t += 1
    bar.update(len(active))
  bar.close()
  for e in env_list:
    e.close()
  # Per-episode seeds in episode order (env 0's episodes, then env 1's, ...).
  out = {k: np.concatenate([np.asarray(b[k]) for b in buffers if b[k]]) for k in buffers[0]}
  seeds = np.concatenate([np.asarray(s[:int(np.sum(np.asarray(b["term"]) | np.asarray(b["trunc"])))])
                          for s, b in zip(ep_seeds, buffers) if b["obs"]])
  out["seeds"] = seeds
  return out


def _make_policy_fn(policies: BehaviourPolicies, step_of_t=None, seed: int = 0):
  """Stochastic actions of checkpoint `step` (or of `step_of_t(t)` when the checkpoint changes)."""
  act = _stochastic_policy(policies.hidden_dims, policies.act_dim)
  key = [jax.random.PRNGKey(seed)]

  def policy_fn(obs, t, step=None):
    key[0], k = jax.random.split(key[0])
    return np.asarray(act(policies.params[step], jnp.asarray(obs), k))

  return policy_fn


def _datasets_root() -> str:
  return os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")


def write_minari(dataset_id_: str, flat: dict, env_id: str, ref_min: float, ref_max: float,
                 description: dict, overwrite: bool = False):
  import minari
  if dataset_id_ in minari.list_local_datasets():
    if not overwrite:
      raise O2OError(f"dataset {dataset_id_} already exists in {_datasets_root()}: pass --overwrite to "
                     "regenerate it")
    minari.delete_dataset(dataset_id_)
  episodes = _episodes_from_flat(flat["obs"], flat["act"], flat["rew"], flat["next"],
                                 flat["term"].astype(bool), flat["trunc"].astype(bool),
                                 flat.get("seeds"))
  env = envs_lib.make_env(env_id)
  try:
    return minari.create_dataset_from_buffers(
        dataset_id_, episodes, env=env.spec, eval_env=env.spec,
        algorithm_name=description.get("algorithm", "o2o_jax.generate"), author="o2o_jax",
        code_permalink="o2o_jax/generate.py", ref_min_score=float(ref_min),
        ref_max_score=float(ref_max), num_episodes_average_score=REF_EPISODES,
        description=json.dumps(description, indent=1, default=str), requirements=_requirements())
  finally:
    env.close()


def _requirements():
  from importlib.metadata import version
  return [f"{p}=={version(p)}" for p in ("mujoco", "gymnasium")]


def reference_scores(policies: BehaviourPolicies, episodes: int = REF_EPISODES) -> tuple:
  """(ref_min, ref_max): uniform-random and expert (stochastic) mean returns, seeds 0..episodes-1."""
  make_env = lambda: envs_lib.make_env(policies.env_id)
  probe = make_env()
  space = probe.action_space
  probe.close()
  rng = np.random.default_rng(0)
  random_returns = evaluate_policy(
      make_env, lambda o: rng.uniform(space.low, space.high, (o.shape[0],) + space.shape), episodes)
  expert_fn = _make_policy_fn(policies, seed=1)
  expert_returns = evaluate_policy(make_env, lambda o: expert_fn(o, 0, policies.expert_step), episodes)
  return float(random_returns.mean()), float(expert_returns.mean())


def _d4rl_comparison(env_name: str, expert_return: float) -> Optional[dict]:
  """The expert policy's return against D4RL's expert reference return for the same env."""
  ref = D4RL_EXPERT_RETURNS.get(env_name)
  if ref is None:
    return None
  return {"d4rl_expert_return": ref, "expert_return": expert_return,
          "fraction_of_d4rl": expert_return / ref}


def generate_levels(policies: BehaviourPolicies, levels: Sequence[str], size: int,
                    ref_scores: Optional[tuple] = None, overwrite: bool = False,
                    command: str = "", progress: bool = True, log=print) -> Dict[str, dict]:
  """Writes the requested levels as Minari datasets o2o/<env>/<level>-v0. Returns a summary per level."""
  unknown = [l for l in levels if l not in LEVELS]
  if unknown:
    raise O2OError(f"unknown level(s) {unknown}: choose from {', '.join(LEVELS)}")
  if not overwrite:   # before the reference scores and the collection: minutes to an hour per level
    import minari
    local = set(minari.list_local_datasets())
    existing = [d for d in (dataset_id(policies.env_name, l) for l in levels) if d in local]
    if existing:
      raise O2OError(f"dataset(s) {', '.join(existing)} already exist in {_datasets_root()}: leave "
                     "their levels out of --levels, or pass --overwrite to regenerate them")
  env_id = policies.env_id
  make_env = lambda: envs_lib.make_env(env_id)
  t0 = time.time()
  ref_min, ref_max = ref_scores or reference_scores(policies)
  log(f"[{policies.env_name}] reference scores: random {ref_min:.1f}, expert {ref_max:.1f} "
      f"({time.time() - t0:.0f}s)")
  if ref_max <= ref_min:
    log(f"[{policies.env_name}] warning: the expert policy does not beat the random one; normalised "
        "scores of these datasets are meaningless: train longer (--sac_steps)")
  common = {"generator": "o2o_jax.generate", "command": command, "env_id": env_id,
            "behaviour_policy": {"algorithm": "SAC (UTD 1, 2x256 tanh-Gaussian)",
                                 "seed": policies.seed, "sac_steps": policies.sac_steps,
                                 "steps_trained": policies.steps_trained or policies.steps[-1],
                                 "target_return": policies.target_return,
                                 "confirm_return": policies.confirm_return,
                                 "checkpoint_returns": dict(zip(policies.steps, policies.returns))},
            "d4rl_reference": _d4rl_comparison(policies.env_name, ref_max),
            "action_mode": "stochastic", "ref_scores": {"min": "uniform random policy",
                                                        "max": "expert policy (stochastic)",
                                                        "episodes": REF_EPISODES, "seeds": "0..99"},
            "note": "normalised scores are relative to this generator's random/expert policies, "
                    "not to D4RL v2"}
  collected: Dict[str, dict] = {}

  def level_data(level):
    if level in collected:
      return collected[level]
    if level == "random":
      flat = collect(make_env, size, None, _LEVEL_SEED_BASE[level], progress=progress, desc=level)
      info = {"policy": "uniform random"}
    elif level in ("medium", "expert"):
      step = policies.medium_step if level == "medium" else policies.expert_step
      fn = _make_policy_fn(policies, seed=_LEVEL_SEED_BASE[level])
      flat = collect(make_env, size, lambda o, t: fn(o, t, step), _LEVEL_SEED_BASE[level],
                     progress=progress, desc=level)
      info = {"policy": f"SAC checkpoint at step {step}", "checkpoint_step": step,
              "checkpoint_eval_return": policies.return_at(step),
              "rule": ("final policy (the first to reach the target return)"
                       if policies.target_return is not None else "final policy")
                      if level == "expert" else
                      "checkpoint whose return is closest to 1/3 of the final policy's"}
    elif level == "medium-replay":
      flat, info = _medium_replay(policies, make_env, progress)
    else:  # medium-expert
      m, e = level_data("medium"), level_data("expert")
      flat = {k: np.concatenate([m[0][k], e[0][k]]) for k in m[0]}
      info = {"components": [dataset_id(policies.env_name, "medium"),
                             dataset_id(policies.env_name, "expert")]}
    collected[level] = (flat, info)
    return collected[level]

  summary = {}
  for level in levels:
    flat, info = level_data(level)
    ends = flat["term"] | flat["trunc"]
    ep_returns = np.add.reduceat(flat["rew"], np.r_[0, np.nonzero(ends)[0][:-1] + 1])
    stats = {"level": level, **info, "transitions": int(len(flat["rew"])),
             "episodes": int(ends.sum()), "mean_return": float(ep_returns.mean()),
             "min_return": float(ep_returns.min()), "max_return": float(ep_returns.max()),
             "normalized_mean_return": float(100 * (ep_returns.mean() - ref_min) / (ref_max - ref_min)),
             "fraction_terminated": float(flat["term"].sum() / max(ends.sum(), 1))}
    did = dataset_id(policies.env_name, level)
    write_minari(did, flat, env_id, ref_min, ref_max, {**common, **stats}, overwrite=overwrite)
    summary[level] = stats
    log(f"[{policies.env_name}] wrote {did}: {stats['transitions']} transitions, "
        f"{stats['episodes']} episodes, mean return {stats['mean_return']:.1f} "
        f"(normalised {stats['normalized_mean_return']:.1f})")
  return summary


def _medium_replay(policies: BehaviourPolicies, make_env, progress: bool):
  """The behaviour run's transitions up to the medium checkpoint (D4RL's medium-replay). Without the
  original buffer, replays the checkpoint sequence: uniform actions for the first `start_steps`
  steps, then each checkpoint acts until the next one."""
  t_medium = policies.medium_step
  if policies.replay is not None:
    r = policies.replay
    n = t_medium
    flat = {"obs": r["observations"][:n], "act": r["actions"][:n], "rew": r["rewards"][:n],
            "next": r["next_observations"][:n], "term": r["terminations"][:n].copy(),
            "trunc": r["truncations"][:n].copy()}
    if not (flat["term"][-1] or flat["trunc"][-1]):
      flat["trunc"][-1] = True   # the buffer prefix ends mid-episode: a time-limit-like boundary
    return flat, {"source": "behaviour run replay buffer", "buffer_steps": [0, n]}
  steps = sorted(s for s in policies.params if s <= t_medium)
  fn = _make_policy_fn(policies, seed=_LEVEL_SEED_BASE["medium-replay"])
  start = policies.start_steps

  def policy_fn(obs, t):
    env_t = t  # one env: t counts env steps
    if env_t < start:
      return np.random.default_rng(env_t).uniform(-1, 1, (obs.shape[0], policies.act_dim))
    earlier = [s for s in steps if s <= env_t]
    return fn(obs, t, earlier[-1] if earlier else steps[0])

  flat = collect(make_env, t_medium, policy_fn, _LEVEL_SEED_BASE["medium-replay"], num_envs=1,
                 progress=progress, desc="medium-replay")
  return flat, {"source": "replayed checkpoint sequence (original buffer not kept)",
                "buffer_steps": [0, t_medium], "checkpoints": steps}
