"""Offline pre-training as a phase every recipe shares (`pretrain`), and reading its result back
(`offline_actor_params`, `run_preset`).

  pretrain    offline algorithm on the dataset                    runs/pretrain/<algo>/<dataset>/<name>

The checkpoint metadata carries the observation statistics and the reward transform, so every later
phase preprocesses identically.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from o2o_jax import distributed, loops, presets, runs
from o2o_jax import phase as phase_lib
from o2o_jax import recipe as recipe_lib
from o2o_jax.agents import registry
from o2o_jax.data import load_dataset, prepared
from o2o_jax.errors import O2OError
from o2o_jax.types import seed_keys

CHECKPOINT_EVERY = phase_lib.CHECKPOINT_EVERY

def offline_config(algo: str, dataset_id: str, preset: str = "corl", chain: Optional[str] = None,
                   hidden_dims: Optional[Sequence[int]] = None, num_steps: Optional[int] = None):
  """(agent Config, resolved preset dict) of an offline run, without touching the data: the preset's
  overrides on the algorithm's defaults; `hidden_dims` None keeps the algorithm's own architecture
  (the critic follows the actor's sizes unless the preset sets it, e.g. CQL's 5x256 on AntMaze)."""
  agent = registry.get(algo, registry.OFFLINE)
  p = presets.offline_preset(algo, dataset_id, preset, chain)
  values = dict(p["config"])
  if hidden_dims is not None:
    values["hidden_dims"] = tuple(hidden_dims)
    # A given size (e.g. quick's 64x64) sizes every network: the preset's critic sizes go, and so
    # does a Config's own critic default (Cal-QL's CORL 2x256 critics).
    values.pop("critic_hidden_dims", None)
    if "critic_hidden_dims" in {f.name for f in dataclasses.fields(agent.Config)}:
      values["critic_hidden_dims"] = None
  agent_config = agent.Config(**values)
  if num_steps is not None and "max_steps" in {f.name for f in dataclasses.fields(agent_config)}:
    agent_config = dataclasses.replace(agent_config, max_steps=num_steps)
  return agent_config, p


def pretrain(*, algo: str, dataset_id: str, seeds: int, seed: int, num_steps: int, eval_every: int,
             eval_episodes: int, hidden_dims: Optional[Sequence[int]] = None, batch_size: int = 256,
             chunk: Optional[int] = None, preset: str = "corl", chain: Optional[str] = None,
             normalize_states: Optional[bool] = None, out_dir: str = "runs",
             run_name: Optional[str] = None, restart: bool = False, progress: bool = True,
             checkpoint_every: int = CHECKPOINT_EVERY, log=print) -> Path:
  """An offline run. `preset` (o2o_jax.presets: official, corl, none) and `chain` (the O2O agent
  the run feeds, which picks the 'official' reference) set the hyperparameters and the reward
  transform; `normalize_states` None takes the preset's (True except where a reference says no)."""
  agent = registry.get(algo, registry.OFFLINE)
  agent_config, p = offline_config(algo, dataset_id, preset, chain, hidden_dims, num_steps)
  if normalize_states is None:
    normalize_states = p.get("normalize_states", True)
  dataset = load_dataset(dataset_id)
  scale, shift = presets.reward_transform(p, dataset.episode_returns)
  data = prepared.load_data(dataset_id, reward_scale=scale, reward_shift=shift,
                            normalize_states=normalize_states, batch_size=batch_size)
  loop_config = loops.OfflineConfig(num_steps=num_steps, batch_size=batch_size,
                                    chunk=chunk or min(eval_every, 5_000), eval_every=eval_every,
                                    eval_episodes=eval_episodes)
  config = {"phase": "pretrain", "algo": algo, "dataset": dataset_id, "env": data.env_id,
            "seeds": seeds, "seed": seed, "normalize_states": normalize_states, "preset": preset,
            "reward_scale": scale, "agent_config": dataclasses.asdict(agent_config),
            "loop_config": dataclasses.asdict(loop_config)}
  if chain is not None:
    config["chain"] = chain
  if shift:
    config["reward_shift"] = shift
  if p.get("unsupported"):
    config["preset_unsupported"] = p["unsupported"]
    log(f"[pretrain] note: the {preset} preset's reference also sets "
        + ", ".join(f"{k}={v}" for k, v in p["unsupported"].items())
        + f", which {algo} here does not implement (recorded in config.json)")
  spec = phase_lib.OfflinePhase(
      phase="pretrain", agent=algo, dataset_id=dataset_id, run_name=run_name or f"seed{seed}x{seeds}",
      config=config, loop=loop_config, score_key="eval_score", desc=f"pretrain {algo}",
      summary=lambda final, timing: (f"[pretrain] done in {timing}; final normalised score per seed: "
                                     + ", ".join(f"{x:.1f}" for x in final)),
      plot_keys=("eval/normalized_score", "train/critic_loss", "train/actor_loss", "train/bc_loss"),
      plot_title=f"{algo} on {dataset_id}", out_dir=out_dir, restart=restart, progress=progress,
      checkpoint_every=checkpoint_every)

  def build(run_dir):
    ds = data.dataset
    log(f"[pretrain] {algo} on {dataset_id} ({ds.size} transitions, {len(ds.episode_returns)} episodes, "
        f"dataset mean normalised return {float(np.mean(ds.normalized_score(ds.episode_returns))):.1f}) "
        f"-> {run_dir}")
    local = distributed.local_seed_count(seeds)     # this process's seeds (all of them with one)
    states = loops.init_states(agent, seed_keys(seed, local), ds.observation_dim, ds.action_dim,
                               agent_config)
    metadata = {"config": config, "phase": "pretrain", "algo": algo, "dataset_id": dataset_id,
                "env_id": data.env_id, "obs_dim": ds.observation_dim, "act_dim": ds.action_dim,
                "obs_mean": data.obs_mean, "obs_std": data.obs_std,
                "reward_transform": {"scale": scale, "shift": shift},
                "ref_min_score": ds.ref_min_score, "ref_max_score": ds.ref_max_score}
    # An algorithm that trains on more than the transitions builds its dataset itself (Cal-QL: the
    # return-to-go of each row, which the offline loop's sampler gathers with the transition).
    rows = (agent.offline_dataset(data, agent_config) if hasattr(agent, "offline_dataset")
            else data.device)
    return phase_lib.Training(agent, states, rows, data, metadata)

  return phase_lib.run_offline_phase(spec, build, log)


def run_preset(run_dir: Path, cfg: Dict[str, Any], given: Optional[str] = None) -> str:
  """The offline preset of an earlier run (`cfg`, its config; runs from before presets were recorded:
  'corl', the default then). A `given` --preset that differs is an error: the offline run is reused,
  not redone."""
  preset = cfg.get("preset") or "corl"
  if given is not None and given != preset:
    raise O2OError(f"--from={run_dir} was pre-trained with --preset={preset}, not --preset={given}: "
                   "drop --preset or pass a run with that preset")
  return preset


def offline_actor_params(pretrain_dir: Path):
  """The seed-stacked actor parameters, the offline Config and the metadata of a finished pretrain
  run."""
  loaded = recipe_lib.load_run(pretrain_dir, phases=("pretrain",))
  return loaded.states.actor.params, loaded.agent_config, loaded.meta


def pretrain_phase(default_algo: str, algos: Optional[Sequence[str]] = None, *, why: str = "",
                   steps: Optional[Callable] = None, eval_every: Optional[Callable] = None,
                   preset: Optional[Callable] = None, chain: Optional[str] = None,
                   normalize_states: Optional[Callable] = None,
                   run_name: Optional[Callable] = None,
                   hidden_dims: Optional[Callable] = None,
                   seeds: Optional[Callable] = None) -> recipe_lib.Phase:
  """The 'pretrain' phase of a recipe: `pretrain` of `ctx['offline_algo']` (default
  `default_algo`; one of `algos` when given, else any offline algorithm: a one-line error says
  `why`) with the context's budget. The callables take the Context: `steps` (default
  ctx['pretrain_steps']), `eval_every` (default min(ctx['pretrain_eval_every'], steps)), `preset`
  (default ctx['preset'], else 'corl'), `normalize_states` (default None: the preset's), `run_name`
  (default ctx.base_name()), `hidden_dims` (default ctx['hidden_dims']) and `seeds` (default
  ctx['seeds']; Off2On pre-trains its ensemble members as seeds). Its step is the offline
  algorithm's `update`, chosen at run time."""
  def run(ctx) -> Path:
    algo = ctx.get("offline_algo") or default_algo
    allowed = algos or tuple(registry.OFFLINE)
    if algo not in allowed:
      raise O2OError(f"--offline_algo={algo}: {ctx.agent} fine-tunes {' or '.join(allowed)}"
                     + (f" ({why})" if why else ""))
    n = steps(ctx) if steps else ctx["pretrain_steps"]
    return pretrain(
        algo=algo, dataset_id=ctx["dataset"], seeds=seeds(ctx) if seeds else ctx["seeds"],
        seed=ctx["seed"], num_steps=n,
        eval_every=eval_every(ctx) if eval_every else min(ctx["pretrain_eval_every"], max(n, 1)),
        eval_episodes=ctx["eval_episodes"],
        hidden_dims=hidden_dims(ctx) if hidden_dims else ctx["hidden_dims"],
        batch_size=ctx["batch_size"], preset=preset(ctx) if preset else (ctx.get("preset") or "corl"),
        chain=chain, normalize_states=normalize_states(ctx) if normalize_states else None,
        run_name=run_name(ctx) if run_name else ctx.base_name(), log=ctx.log, **ctx.phase_args())

  return recipe_lib.Phase("pretrain", "offline", run, data="the offline dataset (the preset's reward "
                          "and state transforms)", hook="the normalised score")


def preset_run_name(ctx: recipe_lib.Context) -> str:
  """seed<s>x<n>, with -preset<p> for a pre-training preset other than 'official' (a --from run's
  own preset; a different explicit --preset is an error)."""
  preset = ctx["preset"]
  if ctx.settings.get("from"):
    from_dir = Path(ctx.settings["from"])
    preset = run_preset(from_dir, runs.read_config(from_dir), preset if "preset" in ctx.given else None)
  return f"seed{ctx['seed']}x{ctx['seeds']}" + ("" if preset == "official" else f"-preset{preset}")
