"""The phases of an O2O run as plain functions (no absl): the launchers parse flags and call these.

  pretrain    offline algorithm on the dataset                    runs/pretrain/<algo>/<dataset>/<name>
  reevaluate  fitted Q-evaluation of the frozen offline actor    runs/reevaluate/<agent>/<dataset>/<name>
  align       value alignment (critic) + actor at fixed alpha     runs/align/<agent>/<dataset>/<name>
  finetune    constrained online fine-tuning                      runs/finetune/<agent>/<dataset>/<name>

Each phase reads the previous phase's run directory (`from_dir`) and writes its own; a phase whose run
directory already holds a finished checkpoint is reused, not rerun. Observation statistics and the
reward transform travel in every checkpoint's metadata, so every phase preprocesses identically.
pretrain, reevaluate and align are `o2o_jax.phase.OfflinePhase` specs run by the library's offline-phase
skeleton (`phase.run_offline_phase`); finetune (O2TD3/O2SAC), like O3F's, ACA's and SAMG's online
phases (pipeline_*.py), is an `o2o_jax.phase.OnlinePhase` spec run by its online skeleton
(`phase.run_online_phase`). Only their states, data, config and metadata are built here.
"""
from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import distributed, loops, presets, runs
from o2o_jax import recipe as recipe_lib
from o2o_jax import phase as phase_lib
from o2o_jax.agents import registry
from o2o_jax.checkpoints import Checkpointer
from o2o_jax.data import prepared
from o2o_jax.recipes import offline
from o2o_jax.recipes.offline import offline_actor_params
from o2o_jax.errors import O2OError
from o2o_jax.types import seed_keys

PHASES = ("pretrain", "reevaluate", "align", "finetune")
# --budget: 'paper' = the paper's step counts (1M offline, 500k re-evaluation, 500k alignment, 100k
# online; evaluation every 1k online steps, 10 episodes); 'quick' = minutes on a laptop CPU. Quick
# re-evaluation is 50k steps: at 5k a fresh critic of the frozen actor was still too poor, and 2 of 5
# hopper seeds collapsed during alignment (π_on 28.3 vs π_off 41.1; 43.1 at 50k, BUILD_NOTES).
# Network sizes: at 'paper' (None) each agent's own Config default decides, so every algorithm keeps
# its reference architecture (CQL and AWAC 3x256 as CORL; the O2SAC critic 3x256 with LayerNorm and
# the O2TD3 critic 2x256 with LayerNorm as the official OCR-CFT code; the O2O actor is the offline
# one, paper H.2). Only 'quick' shrinks the networks (64x64).
BUDGETS = {
    "paper": dict(pretrain_steps=1_000_000, pretrain_eval_every=10_000, reevaluate_steps=500_000,
                  align_steps=500_000, align_eval_every=50_000, online_steps=100_000, warmup_steps=1_000,
                  eval_every=1_000, eval_episodes=10, hidden_dims=None, critic_hidden=None),
    "quick": dict(pretrain_steps=10_000, pretrain_eval_every=5_000, reevaluate_steps=50_000,
                  align_steps=5_000, align_eval_every=5_000, online_steps=10_000, warmup_steps=1_000,
                  eval_every=2_000, eval_episodes=5, hidden_dims=(64, 64), critic_hidden=(64, 64)),
}
# Direct fine-tuning as named agents (issue #21): the OCR-CFT agent with every component switched off
# (no re-evaluation: the offline critic is kept; no alignment; lambda = 0), its own run directories.
DIRECT = {"direct_td3": "o2td3", "direct_sac": "o2sac"}
SWITCHES = ("reevaluate", "align", "constrain")
# What a direct_* agent has no use for: the switches, and the settings of the phases and the
# constraint it switches off.
DIRECT_UNREAD = SWITCHES + ("reevaluate_steps", "align_steps", "reference", "tau_start", "tau_end")


def base_agent(agent_name: str) -> str:
  """The OCR-CFT agent a direct_* agent switches off (itself for o2td3 / o2sac)."""
  return DIRECT.get(agent_name, agent_name)


# The paper's source algorithm per O2O agent (CQL -> O2SAC, TD3+BC -> O2TD3).
SOURCE_ALGO = {"o2td3": "td3bc", "o2sac": "cql", "direct_td3": "td3bc", "direct_sac": "cql"}
# Quick-budget offline steps for the algorithms whose count differs from BUDGETS["quick"].
# TD3+BC gets 100k: at 10k it is a snapshot of a policy still changing (walker2d-medium: mean Q 21
# of the ~38 it settles at, score 52 at 5k falling to ~37 by 15k), not the converged offline policy
# OCR-CFT starts from in the paper (1M steps); from it walker2d O2TD3 missed (pi_on 41.7 vs pi_off
# 51.7). At 100k O2TD3 meets every benchmark point (BUILD_NOTES "Quick offline budget"). Its 64-unit
# update is ~20x cheaper than CQL's, so 100k steps (~6 min for 5 seeds on 2 cores) still cost less
# than CQL's 10k (~14 min).
QUICK_PRETRAIN_STEPS = {"td3bc": 100_000}
# The released code: O2SAC 10 updates per env step (direct SAC the same learner).
DEFAULT_UTD = {"o2td3": 1, "o2sac": 10, "direct_td3": 1, "direct_sac": 10}
# Actor options an O2O agent copies from the offline agent's config, so the networks match.
ACTOR_FIELDS = ("hidden_dims", "log_std_min", "log_std_max", "learnable_log_std_scale", "orthogonal_init",
                "actor_init")


def pretrain_steps(budget: str, algo: str, given: Optional[int] = None) -> int:
  """Offline steps for `algo` under `budget`; an explicit --pretrain_steps (`given`) wins."""
  if given is not None:
    return given
  if budget == "quick":
    return QUICK_PRETRAIN_STEPS.get(algo, BUDGETS["quick"]["pretrain_steps"])
  return BUDGETS[budget]["pretrain_steps"]


# Steps between resumable snapshots of a running phase (the library's default, o2o_jax.phase).
CHECKPOINT_EVERY = phase_lib.CHECKPOINT_EVERY


# ----------------------------------------------------------------------------- O2O phases

def o2o_preset(agent_name: str, dataset_id: str) -> Dict[str, Any]:
  """Per-dataset agent-config settings of the released OCR-CFT configs (reference §3-4):
  `config/finetune/{O2TD3,O2SAC}/<env>/<dataset>.yaml`. AntMaze (a dataset id `*/antmaze/*` or
  `*/antmaze-*`, e.g. Minari's D4RL/antmaze/medium-play-v1) takes `config/finetune/*/antmaze/*.yaml`:
  O2SAC a single 5x256 critic (LayerNorm), alpha 0.2 (umaze) / 0.5 (medium, large), lambda init 1.0 /
  2.0; O2TD3 no critic LayerNorm. (AntMaze rewards and state normalisation come with the source
  algorithm's 'official' offline preset, o2o_jax.presets; step counts with `dataset_budget`.)"""
  agent_name = base_agent(agent_name)
  _, level = presets.dataset_env_and_level(dataset_id)
  maze = presets.antmaze_size(dataset_id)
  expert = level in ("medium-expert", "expert")
  if agent_name == "o2td3":
    values = ({"exploration_noise": 0.05, "tau_start": 0.000025, "tau_end": 0.000625} if expert else
              {"exploration_noise": 0.1, "tau_start": 0.0025, "tau_end": 0.04})
    if maze is not None:
      values["critic_layer_norm"] = False            # O2TD3/antmaze/*.yaml critic_layernorm: false
    return values
  if agent_name == "o2sac":
    values = ({"init_alpha": 0.5, "tau_start": 0.005, "tau_end": 0.125} if expert else
              {"init_alpha": 0.2, "tau_start": 0.125, "tau_end": 2.0})
    if maze is not None:      # O2SAC/antmaze/*.yaml: q_n_hidden_layers 5, double_critic false
      values.update(critic_hidden_dims=(256,) * 5, critic_layer_norm=True, num_critics=1)
      if maze in ("medium", "large"):
        values.update(init_alpha=0.5, lambda_init=2.0)  # alpha: 0.5, lmbda: 2.0
    return values
  return {}


# Per-dataset step counts of the released configs where they differ from --budget=paper: AntMaze
# (config/finetune/{O2SAC,O2TD3}/antmaze/*.yaml: align_steps 1M, online_steps 200k, eval_freq 5k,
# n_episodes 100, log_freq 50k; warmup_steps 5000 in O2SAC, 1000 in O2TD3). Explicit flags win;
# --budget=quick keeps its own counts.
ANTMAZE_BUDGET = {"align_steps": 1_000_000, "align_eval_every": 50_000, "online_steps": 200_000,
                  "eval_every": 5_000, "eval_episodes": 100}
ANTMAZE_WARMUP = {"o2sac": 5_000, "o2td3": 1_000}


def dataset_budget(agent_name: str, dataset_id: str, budget: str) -> Dict[str, Any]:
  """Budget values a dataset's released config changes (see ANTMAZE_BUDGET) for `agent_name`."""
  agent_name = base_agent(agent_name)
  if budget != "paper" or presets.antmaze_size(dataset_id) is None or agent_name not in ANTMAZE_WARMUP:
    return {}
  return {**ANTMAZE_BUDGET, "warmup_steps": ANTMAZE_WARMUP[agent_name]}


# The official extras of the interval reference mode (`refer_with_optimal_pi: false`),
# finetune/O2SAC.py and finetune/O2TD3.py `train()`: `config.end_threshold /= 4` on every dataset;
# and, where `'expert' in env and 'hopper' in env` (hopper-medium-expert, hopper-expert; O2TD3 also
# `'walker2d-expert' in env`, i.e. walker2d-expert only), an actor gradient-norm clip of 0.25 in the
# online update (`clip_grad_norm_(actor.parameters(), 0.25)`) and `update_n = 10` (pi_ref refreshed
# every update_n x eval_freq env steps).
INTERVAL_TAU_END_DIVISOR = 4.0
INTERVAL_ACTOR_GRAD_CLIP = 0.25
INTERVAL_UPDATE_N = 10


def interval_extras(agent_name: str, dataset_id: str) -> Dict[str, Any]:
  """{'tau_end_divisor', 'actor_grad_clip' (None: none), 'update_n'} of --reference=interval:N."""
  agent_name = base_agent(agent_name)
  if agent_name not in ("o2sac", "o2td3"):
    return {}
  env = presets.d4rl_name(dataset_id)
  strong = ("expert" in env and "hopper" in env) or (agent_name == "o2td3" and "walker2d-expert" in env)
  return {"tau_end_divisor": INTERVAL_TAU_END_DIVISOR,
          "actor_grad_clip": INTERVAL_ACTOR_GRAD_CLIP if strong else None,
          "update_n": INTERVAL_UPDATE_N if strong else 1}


def parse_reference(reference: str, eval_every: Optional[int] = None) -> Optional[int]:
  """--reference: None for 'best', N for 'interval:N' (N >= 1), `eval_every` for 'interval' (the
  released code's `refer_with_optimal_pi: false`, every update_n x eval_freq env steps)."""
  if reference == "best":
    return None
  if reference == "interval":
    return eval_every if eval_every is not None else 1
  if reference.startswith("interval:"):
    n = reference.split(":", 1)[1]
    if n.isdigit() and int(n) >= 1:
      return int(n)
  raise O2OError(f"--reference must be 'best', 'interval' or 'interval:N' with N a positive number "
                 f"of env steps (got {reference!r})")


def clip_actor_gradients(states, max_norm: float):
  """The actor's optimizer with its gradients clipped to global norm `max_norm` first (torch's
  `clip_grad_norm_` before `optimizer.step()`). The optimizer state keeps its structure (and its Adam
  moments), so checkpoints and snapshots are unchanged."""
  import optax
  inner, clip = states.actor.tx, optax.clip_by_global_norm(max_norm)

  def update(grads, opt_state, params=None):
    grads, _ = clip.update(grads, clip.init(grads))
    return inner.update(grads, opt_state, params)
  return states.replace(actor=states.actor.replace(tx=optax.GradientTransformation(inner.init, update)))


def make_o2o_config(agent_name: str, actor_config, dataset_id: str,
                    critic_hidden: Optional[Sequence[int]], constrain: bool,
                    overrides: Optional[Dict[str, Any]] = None, configure=None):
  """The O2O agent's Config: the offline actor's architecture (paper H.2), the agent's own critic
  unless `critic_hidden` is given (--budget=quick, --critic_hidden), the per-dataset preset, then
  `overrides`, then `configure(config) -> config` (a recipe Context's options and --config.
  overrides). Preset settings the agent's Config lacks are left out (`o2o_preset_gaps`)."""
  agent = registry.get(agent_name, registry.O2O)
  actor = {k: getattr(actor_config, k) for k in ACTOR_FIELDS if hasattr(actor_config, k)}
  values = {**actor, "constrain": constrain, **o2o_preset(agent_name, dataset_id)}
  if critic_hidden is not None:
    values["critic_hidden_dims"] = tuple(critic_hidden)
  values.update(overrides or {})
  names = {f.name for f in dataclasses.fields(agent.Config)}
  config = agent.Config(**{k: v for k, v in values.items() if k in names})
  return check_tau(configure(config) if configure is not None else config)


def o2o_preset_gaps(agent_name: str, dataset_id: str) -> Dict[str, Any]:
  """Per-dataset reference settings the agent's Config cannot express (e.g. O2SAC's single critic on
  AntMaze while o2sac has two): recorded in the run's config.json and printed."""
  names = {f.name for f in dataclasses.fields(registry.get(agent_name, registry.O2O).Config)}
  return {k: v for k, v in o2o_preset(agent_name, dataset_id).items() if k not in names}


def check_tau(config):
  """The constraint threshold schedule must be non-negative and non-decreasing."""
  start, end = getattr(config, "tau_start", 0.0), getattr(config, "tau_end", 0.0)
  if start < 0:
    raise O2OError(f"--tau_start must not be negative (got {start})")
  if end < start:
    raise O2OError(f"--tau_end ({end}) is below --tau_start ({start}): the constraint threshold tau "
                   "may only loosen during fine-tuning")
  return config


def check_actor_fits(agent_name, agent, o2o_config, algo, meta, actor_params):
  """The offline actor must be the O2O agent's actor type (same parameter tree and shapes)."""
  expected = jax.eval_shape(lambda: agent.init(jax.random.PRNGKey(0), meta["obs_dim"], meta["act_dim"],
                                               o2o_config).actor.params)
  recipe_lib.check_actor_fits(expected, actor_params, (
      f"the {algo} actor does not fit {agent_name}'s actor (different network type or sizes): "
      f"pretrain with --offline_algo={SOURCE_ALGO[agent_name]}, or clone the policy into the right "
      "actor type with --algo=bc"))


def _o2o_config(phase: str, agent_name: str, from_dir: Path, steps: int, extra: Dict[str, Any]):
  """(previous phase's config, this phase's config) of reevaluate/align/finetune."""
  prev = runs.read_config(from_dir)
  config = {"phase": phase, "agent": agent_name, "dataset": prev["dataset"], "env": prev["env"],
            "seeds": prev["seeds"], "seed": prev["seed"], "from": str(from_dir), "steps": steps,
            "preset": prev.get("preset"), **extra}
  return prev, config


def _o2o_run(phase: str, agent_name: str, from_dir: Path, steps: int, run_name: Optional[str],
             out_dir: str, restart: bool, extra: Dict[str, Any], log):
  """Common set-up of an O2O phase: previous config, config, run dir (prepared), resumed."""
  prev, config = _o2o_config(phase, agent_name, from_dir, steps, extra)
  run_dir = runs.run_dir_for(out_dir, phase, agent_name, prev["dataset"],
                             run_name or f"seed{prev['seed']}x{prev['seeds']}")
  resumed = runs.prepare_run_dir(run_dir, config, restart=restart)
  return prev, config, run_dir, resumed


def offline_critic(states):
  """(critic params, target critic params) of seed-stacked offline states: TD3+BC's, or the SAC
  inside CQL's; None for an offline algorithm without a Q critic of that form (e.g. BC)."""
  inner = getattr(states, "sac", states)
  critic, target = getattr(inner, "critic", None), getattr(inner, "target_critic_params", None)
  return None if critic is None or target is None else (critic.params, target)


def offline_critic_fields(offline_config) -> Dict[str, Any]:
  """The O2O Config fields that give the O2O agent the offline run's critic architecture."""
  hidden = getattr(offline_config, "critic_hidden_dims", None) or offline_config.hidden_dims
  return {"critic_hidden_dims": tuple(hidden),
          "critic_layer_norm": bool(getattr(offline_config, "critic_layer_norm", False))}


def reevaluate(*, agent_name: str, pretrain_dir: Path, steps: int, eval_episodes: int,
               critic_hidden: Optional[Sequence[int]] = None, batch_size: int = 256,
               constrain: bool = True, keep_offline_critic: bool = False,
               overrides: Optional[Dict[str, Any]] = None, configure=None,
               learner: Optional[loops.Learner] = None, out_dir: str = "runs",
               run_name: Optional[str] = None, restart: bool = False, progress: bool = True,
               checkpoint_every: int = CHECKPOINT_EVERY, log=print) -> Path:
  """Policy re-evaluation: a fresh critic fitted to the frozen offline actor (FQE) for `steps`.
  `keep_offline_critic` (the ablation --reevaluate=false, and direct fine-tuning; `steps` 0): no
  re-evaluation, the critic is the offline run's own (its architecture, its weights and targets), as
  in the paper's ablation (appendix, figure 5: without re-evaluation "the offline critic may be
  severely pessimistic"); pi_off is evaluated once."""
  agent = registry.get(agent_name, registry.O2O)
  if keep_offline_critic:
    loaded = recipe_lib.load_run(pretrain_dir, phases=("pretrain",))
    actor_params, actor_config, meta = loaded.states.actor.params, loaded.agent_config, loaded.meta
    critic = offline_critic(loaded.states)
    if critic is None:
      raise O2OError(f"--reevaluate=false keeps the offline critic, and the {loaded.config.get('algo')} "
                     f"run {pretrain_dir} has none: re-evaluate (--reevaluate=true) or pretrain an "
                     "algorithm with a Q critic")
    overrides = {**offline_critic_fields(actor_config), **(overrides or {})}
  else:
    actor_params, actor_config, meta = offline_actor_params(pretrain_dir)
  o2o_config = make_o2o_config(agent_name, actor_config, meta["dataset_id"], critic_hidden, constrain,
                               overrides, configure)
  scale, shift = prepared.reward_transform(meta)
  extra = {"agent_config": dataclasses.asdict(o2o_config), "batch_size": batch_size,
           "reward_transform": {"scale": scale, "shift": shift}}
  gaps = o2o_preset_gaps(agent_name, meta["dataset_id"])
  if gaps:
    extra["preset_unsupported"] = gaps
    log(f"[reevaluate] note: the released {agent_name} config for this dataset also sets "
        + ", ".join(f"{k}={v}" for k, v in gaps.items())
        + f", which {agent_name} here does not implement (recorded in config.json)")
  prev, config = _o2o_config("reevaluate", agent_name, pretrain_dir, steps, extra)
  spec = phase_lib.OfflinePhase(
      phase="reevaluate", agent=agent_name, dataset_id=prev["dataset"],
      run_name=run_name or f"seed{prev['seed']}x{prev['seeds']}", config=config,
      loop=loops.OfflineConfig(num_steps=steps, batch_size=batch_size, chunk=min(steps, 5_000),
                               eval_every=steps, eval_episodes=eval_episodes),
      score_key="offline_score", desc="re-evaluate",
      summary=lambda scores, _: phase_lib.summary_line("[reevaluate] pi_off score", scores),
      out_dir=out_dir, restart=restart, progress=progress, checkpoint_every=checkpoint_every)

  def build(run_dir):
    data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"], scale,
                              batch_size=batch_size, reward_shift=shift)
    check_actor_fits(agent_name, agent, o2o_config, prev["algo"], meta, actor_params)
    local = distributed.local_seed_count(prev["seeds"])
    states = jax.jit(jax.vmap(lambda k, p: agent.init(k, meta["obs_dim"], meta["act_dim"], o2o_config,
                                                      p)))(seed_keys(prev["seed"] + 1, local), actor_params)
    if keep_offline_critic:
      params, target = critic
      recipe_lib.check_actor_fits(
          jax.tree_util.tree_map(lambda x: x[0], states.critic.params), params,
          f"the {prev['algo']} critic does not fit {agent_name}'s critic (network type or sizes): "
          "re-evaluate instead (--reevaluate=true)")
      states = states.replace(critic=states.critic.replace(params=params), target_critic_params=target)
      log(f"[reevaluate] {agent_name}: no re-evaluation, the {prev['algo']} run's critic is kept "
          f"-> {run_dir}")
    else:
      log(f"[reevaluate] {agent_name}: fitting a fresh critic to the frozen offline actor for {steps} "
          f"steps -> {run_dir}")
    out_meta = {**{k: meta[k] for k in ("dataset_id", "env_id", "obs_dim", "act_dim", "obs_mean",
                                        "obs_std", "reward_transform")}, "phase": "reevaluate",
                "agent": agent_name, "offline_algo": prev["algo"]}
    return phase_lib.Training(learner or loops.Learner(agent.reevaluate_step, agent.offline_act), states,
                              data.device, data, out_meta)

  return phase_lib.run_offline_phase(spec, build, log)


def _restore_o2o(from_dir: Path, configure=None):
  """(config, agent, agent Config, states, metadata) of a reevaluate/align run; `configure` (the
  recipe's options and --config. overrides) replaces its Config, unless that changes the networks."""
  loaded = recipe_lib.load_run(from_dir, phases=("reevaluate", "align"))
  agent_config, states = loaded.agent_config, loaded.states
  if configure is not None:
    agent_config = configure(agent_config)
    if agent_config != loaded.agent_config:
      recipe_lib.check_fits(from_dir, agent_config)
      states = states.replace(config=agent_config)
  return loaded.config, loaded.module, agent_config, states, loaded.meta


def align(*, reevaluate_dir: Path, steps: int, eval_every: int, eval_episodes: int,
          batch_size: int = 256, configure=None, learner: Optional[loops.Learner] = None,
          out_dir: str = "runs", run_name: Optional[str] = None,
          restart: bool = False, progress: bool = True, checkpoint_every: int = CHECKPOINT_EVERY,
          log=print) -> Path:
  """Value alignment of the re-evaluated critic, with the actor trained at the same time."""
  cfg, agent, agent_config, states, meta = _restore_o2o(reevaluate_dir, configure)
  scale, shift = prepared.reward_transform(meta)
  prev, config = _o2o_config(
      "align", cfg["agent"], reevaluate_dir, steps,
      {"agent_config": dataclasses.asdict(agent_config), "batch_size": batch_size,
       "offline_algo": cfg.get("offline_algo", meta.get("offline_algo")),
       "reward_transform": {"scale": scale, "shift": shift}})
  spec = phase_lib.OfflinePhase(
      phase="align", agent=cfg["agent"], dataset_id=prev["dataset"],
      run_name=run_name or f"seed{prev['seed']}x{prev['seeds']}", config=config,
      loop=loops.OfflineConfig(num_steps=steps, batch_size=batch_size, chunk=min(eval_every, 5_000),
                               eval_every=eval_every, eval_episodes=eval_episodes),
      score_key="online_score", desc="align", finish=jax.jit(jax.vmap(agent.finish_alignment)),
      summary=lambda scores, _: phase_lib.summary_line("[align] pi_on score", scores),
      plot_keys=("eval/normalized_score", "train/align_loss", "train/q_anchor", "train/actor_drift"),
      plot_title=f"{cfg['agent']} alignment", out_dir=out_dir, restart=restart, progress=progress,
      checkpoint_every=checkpoint_every)

  def build(run_dir):
    data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"], scale,
                              batch_size=batch_size, reward_shift=shift)
    log(f"[align] {cfg['agent']}: {steps} alignment steps -> {run_dir}")
    return phase_lib.Training(learner or loops.Learner(agent.align_step, agent.act), states,
                              data.device, data,
                              {**meta, "phase": "align"})

  return phase_lib.run_offline_phase(spec, build, log)


def skip_phase(from_dir: Path, phase: str, out_dir: str, run_name: Optional[str], log=print) -> Path:
  """Ablations (--reevaluate=false / --align=false): pass the state through, recording the skip."""
  cfg, agent, agent_config, states, meta = _restore_o2o(from_dir)
  config = {"phase": phase, "agent": cfg["agent"], "dataset": cfg["dataset"], "env": cfg["env"],
            "seeds": cfg["seeds"], "seed": cfg["seed"], "from": str(from_dir), "steps": 0,
            "skipped": True, "agent_config": cfg["agent_config"], "preset": cfg.get("preset")}
  run_dir = runs.run_dir_for(out_dir, phase, cfg["agent"], cfg["dataset"],
                             (run_name or f"seed{cfg['seed']}x{cfg['seeds']}") + "-skipped")
  runs.prepare_run_dir(run_dir, config, restart=True)
  if phase == "align":
    states = jax.jit(jax.vmap(agent.finish_alignment))(states)
    meta = {**meta, "online_score": meta.get("offline_score")}
  ckpt = distributed.GatheredCheckpointer(Checkpointer(run_dir / "checkpoints"),
                                          distributed.local_seed_count(cfg["seeds"]))
  ckpt.save(0, states, {**meta, "phase": phase, "step": 0})
  ckpt.close()
  log(f"[{phase}] skipped (ablation) -> {run_dir}")
  return run_dir


def resolve_finetune(agent_name: str, dataset_id: str, agent_config, *, reference: str = "best",
                     constrain: bool = True, utd: Optional[int] = None,
                     overrides: Optional[Dict[str, Any]] = None, eval_every: Optional[int] = None):
  """(agent Config, settings) of a fine-tuning phase, resolved without running anything. `settings`:
  utd, reference, and with --reference=interval:N the official interval-mode extras
  (`interval_extras`): the refresh interval in env steps (N x update_n), the actor gradient clip
  (None: none) and tau_end divided by 4 (an explicit --tau_end, in `overrides`, is used as given)."""
  utd = utd or DEFAULT_UTD.get(agent_name, 1)
  interval = parse_reference(reference, eval_every)
  switches = {"constrain": constrain, **(overrides or {})}
  if "utd" in {f.name for f in dataclasses.fields(agent_config)}:
    switches["utd"] = utd          # O2SAC's lambda step runs once per env step
  settings: Dict[str, Any] = {"utd": utd, "reference": reference, "interval_steps": interval,
                              "actor_grad_clip": None}
  if interval is not None:
    extras = interval_extras(agent_name, dataset_id)
    if extras:
      if "tau_end" not in (overrides or {}):
        switches["tau_end"] = agent_config.tau_end / extras["tau_end_divisor"]
      settings.update(interval_steps=interval * extras["update_n"], update_n=extras["update_n"],
                      actor_grad_clip=extras["actor_grad_clip"],
                      tau_end_divisor=(1.0 if "tau_end" in (overrides or {})
                                       else extras["tau_end_divisor"]))
  return check_tau(dataclasses.replace(agent_config, **switches)), settings


def finetune(*, align_dir: Path, online_steps: int, warmup_steps: int, eval_every: int,
             eval_episodes: int, utd: Optional[int] = None, batch_size: int = 256, buffer: str = "half",
             reference: str = "best", constrain: bool = True, out_dir: str = "runs",
             run_name: Optional[str] = None, restart: bool = False, progress: bool = True,
             checkpoint_every: int = CHECKPOINT_EVERY, overrides: Optional[Dict[str, Any]] = None,
             configure=None, learner: Optional[loops.Learner] = None, log=print) -> Path:
  """Constrained online fine-tuning; prints the per-seed summary and writes summary.json.
  `constrain=False` is direct fine-tuning (lambda = 0) from the same aligned state; `overrides`
  replace agent config fields (e.g. the tau schedule). `reference`: 'best', 'interval:N' or
  'interval' (N = eval_every, the released code's setting), the last two with the released code's
  extras (`resolve_finetune`)."""
  if buffer not in BUFFER_MODES:
    raise O2OError(f"--buffer must be one of {', '.join(BUFFER_MODES)} (got {buffer!r})")
  n = parse_reference(reference, eval_every)    # fail before restoring anything
  if n is not None and n % eval_every:
    raise O2OError(f"--reference=interval:{n}: pi_ref is refreshed at evaluations, so N must be a "
                   f"multiple of --eval_every ({eval_every})")
  # The align run's record only: its states are restored in `build`, when the phase must run.
  cfg = runs.read_config(align_dir)
  if cfg.get("phase") not in ("reevaluate", "align"):
    raise O2OError(f"{align_dir} is a '{cfg.get('phase')}' run, not a reevaluate or align run")
  agent = registry.get(cfg["agent"], registry.O2O)
  agent_config = runs.config_from_dict(agent.Config, cfg["agent_config"])
  meta = Checkpointer(align_dir / "checkpoints").read_metadata()
  agent_config, settings = resolve_finetune(cfg["agent"], cfg["dataset"], agent_config,
                                            reference=reference, constrain=constrain, utd=utd,
                                            overrides=overrides, eval_every=eval_every)
  if configure is not None:     # the options and --config. overrides win over the resolved Config
    configured = check_tau(configure(agent_config))
    if configured != agent_config:
      recipe_lib.check_fits(align_dir, configured)
    agent_config = configured
  utd, interval = settings["utd"], settings["interval_steps"]
  scale, shift = prepared.reward_transform(meta)
  extra = {"agent_config": dataclasses.asdict(agent_config), "utd": utd, "buffer": buffer,
           "reference": reference, "warmup_steps": warmup_steps, "eval_every": eval_every,
           "eval_episodes": eval_episodes, "batch_size": batch_size,
           "reward_transform": {"scale": scale, "shift": shift}}
  if interval is not None:
    extra["reference_interval"] = {k: settings[k] for k in ("interval_steps", "update_n",
                                                            "actor_grad_clip", "tau_end_divisor")
                                   if k in settings}
  prev, config = _o2o_config("finetune", cfg["agent"], align_dir, online_steps, extra)
  fields = replay_fields(buffer)
  spec = phase_lib.OnlinePhase(
      agent=cfg["agent"], dataset_id=prev["dataset"],
      run_name=run_name or f"seed{prev['seed']}x{prev['seeds']}", config=config,
      loop=phase_lib.online_loop(online_steps, warmup_steps, eval_every, eval_episodes, utd=utd,
                                 batch_size=batch_size, **fields),
      plot_keys=("eval/normalized_score", "train/lambda", "train/constraint", "train/critic_loss"),
      out_dir=out_dir, restart=restart, progress=progress, checkpoint_every=checkpoint_every)

  def build(run_dir):
    loaded = recipe_lib.load_run(align_dir)
    meta = loaded.meta      # this process's seeds of the per-seed scores
    states = loaded.states.replace(config=agent_config)
    if settings["actor_grad_clip"] is not None:
      states = clip_actor_gradients(states, settings["actor_grad_clip"])
    data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"], scale,
                              batch_size=batch_size, reward_shift=shift)
    offline_score = np.asarray(meta["offline_score"] if "offline_score" in meta else
                               meta["online_score"], np.float32)
    online_score = np.asarray(meta["online_score"], np.float32)
    s0 = jax.jit(jax.vmap(agent.init_reference))(states, jnp.asarray(offline_score),
                                                 jnp.asarray(online_score))
    refresh = jax.jit(jax.vmap(agent.refresh_reference))
    adopt = jax.jit(jax.vmap(agent.adopt_reference))
    prefill = replay_mode(buffer, data.without_shift()).get("prefill")   # buffers hold r * scale
    log(f"[finetune] {cfg['agent']}: {online_steps} online steps, UTD {utd}, buffer {buffer}, "
        f"reference {reference}"
        + ("" if interval is None else
           f" (pi_ref <- pi_on every {interval} env steps, tau_end {agent_config.tau_end:g}"
           + ("" if settings["actor_grad_clip"] is None else
              f", actor gradient norm clipped to {settings['actor_grad_clip']}") + ")")
        + f" -> {run_dir}")

    def on_eval(step, s, score):
      if interval is None:
        return refresh(s, jnp.asarray(score, jnp.float32))
      if step % interval == 0:
        return adopt(s, jnp.asarray(score, jnp.float32))
      return s

    return phase_lib.OnlineTraining(
        learner=learner or loops.Learner(agent.finetune_step, agent.act), states=s0, data=data,
        metadata=meta,
        start_scores={"offline": offline_score, "aligned": online_score}, on_eval=on_eval,
        prefill=prefill)

  return phase_lib.run_online_phase(spec, build, log)


# --buffer, the online replay's initialisation (OCR-CFT appendix, table 6).
BUFFER_MODES = {"half": "a separate online buffer; half of each batch from the offline data (H.2, "
                        "the paper's choice)",
                "all": "the buffer initialised with the whole offline dataset (sampled uniformly "
                       "from the union, the dataset is not copied)",
                "part": "the buffer initialised with the top-50 offline episodes by return (ACA's "
                        "seeding)",
                "null": "online data only"}
PART_EPISODES = 50


def replay_fields(buffer: str) -> Dict[str, Any]:
  """The online loop's (`loops.OnlineConfig`) replay fields of a --buffer mode."""
  if buffer == "half":
    return {"offline_fraction": 0.5}
  if buffer == "all":
    return {"offline_fraction": 0.0, "offline_union": True}
  return {"offline_fraction": 0.0}


def replay_mode(buffer: str, data: prepared.Data) -> Dict[str, Any]:
  """A --buffer mode's replay fields and, for 'part', its `prefill` (the top offline episodes)."""
  if buffer == "part":
    idx = jnp.asarray(data.dataset.top_episode_indices(PART_EPISODES))
    return {**replay_fields(buffer),
            "prefill": jax.tree_util.tree_map(lambda x: x[idx], data.device)}
  return replay_fields(buffer)


# ----------------------------------------------------------------------------- the recipes

def _tau_overrides(ctx) -> Dict[str, float]:
  return {k: ctx.settings[k] for k in ("tau_start", "tau_end") if ctx.settings.get(k) is not None}


def _switches(ctx, names=SWITCHES) -> str:
  """The run-name suffix of the switched-off components (none for a direct_* agent: all are off)."""
  if ctx.agent in DIRECT:
    return ""
  return "".join(f"-no{n}" for n in names if not ctx[n])


def _check(ctx) -> None:
  """Before any training: the tau flags (both given: their order; one alone is checked against
  the preset's other end when the Config is built) and --reference against --eval_every."""
  tau = _tau_overrides(ctx)
  if len(tau) == 2:
    check_tau(types.SimpleNamespace(**tau))
  n = parse_reference(ctx["reference"], ctx["eval_every"])
  if n is not None and n % ctx["eval_every"]:
    raise O2OError(f"--reference=interval:{n}: pi_ref is refreshed at evaluations, so N must be a "
                   f"multiple of --eval_every ({ctx['eval_every']})")


def _learner(ctx) -> loops.Learner:
  """The running phase's declared step and act functions."""
  return loops.Learner(ctx.phase.step, ctx.phase.act)


def _pretrain_steps(ctx) -> int:
  algo = ctx.get("offline_algo") or SOURCE_ALGO[ctx.agent]
  return pretrain_steps(ctx["budget"], algo, ctx.settings.get("pretrain_steps"))


def _reevaluate_phase(ctx) -> Path:
  return reevaluate(agent_name=ctx.agent, pretrain_dir=ctx.runs["pretrain"],
                    steps=ctx["reevaluate_steps"] if ctx["reevaluate"] else 0,
                    keep_offline_critic=not ctx["reevaluate"],
                    eval_episodes=ctx["eval_episodes"], critic_hidden=ctx["critic_hidden"],
                    batch_size=ctx["batch_size"], overrides=_tau_overrides(ctx),
                    configure=ctx.configure, learner=_learner(ctx), log=ctx.log,
                    run_name=ctx.base_name() + _switches(ctx, ("reevaluate",)),
                    **ctx.phase_args())


def _align_phase(ctx) -> Path:
  if not ctx["align"]:      # the ablation: pi_on = pi_off's state, recorded as a skipped phase
    return skip_phase(ctx.runs["reevaluate"], "align", ctx["out_dir"], ctx.base_name() + _switches(ctx),
                      log=ctx.log)
  return align(reevaluate_dir=ctx.runs["reevaluate"], steps=ctx["align_steps"],
               eval_every=min(ctx["align_eval_every"], ctx["align_steps"]),
               eval_episodes=ctx["eval_episodes"], batch_size=ctx["batch_size"],
               configure=ctx.configure, learner=_learner(ctx), log=ctx.log,
               run_name=ctx.base_name() + _switches(ctx, ("reevaluate",)),
               **ctx.phase_args())


def _finetune_phase(ctx) -> Path:
  return finetune(align_dir=ctx.runs["align"], online_steps=ctx["online_steps"],
                  warmup_steps=ctx["warmup_steps"], eval_every=ctx["eval_every"],
                  eval_episodes=ctx["eval_episodes"], utd=ctx.get("utd"), batch_size=ctx["batch_size"],
                  buffer=ctx["buffer"], reference=ctx["reference"], constrain=ctx["constrain"],
                  overrides=_tau_overrides(ctx), configure=ctx.configure, learner=_learner(ctx),
                  log=ctx.log,
                  run_name=ctx.base_name() + _switches(ctx), **ctx.phase_args())


# The shared settings the OCR-CFT recipes read beyond recipe.EVERY_RECIPE_READS.
READS = ("offline_algo", "preset", "reevaluate_steps", "align_steps", "warmup_steps", "critic_hidden",
         "utd", "reevaluate", "align", "constrain", "reference", "buffer", "tau_start", "tau_end")




def _recipe(agent: str, doc: str) -> recipe_lib.Recipe:
  """The OCR-CFT recipe of `agent`; a direct_* agent has every switch off, and no flag for them (its
  reads leave them out), and shares the offline run of its OCR-CFT agent (the same `chain`)."""
  module = registry.get(agent, registry.O2O)
  offline_data = "the offline dataset, with the offline run's reward transform"
  direct = agent in DIRECT
  return recipe_lib.Recipe(
      agent=agent, doc=doc, config=registry.get(agent, registry.O2O).Config, budgets=BUDGETS,
      reads=tuple(r for r in READS if not (direct and r in DIRECT_UNREAD)),
      check=_check, run_name=offline.preset_run_name,
      defaults={"preset": "official", **{s: not direct for s in SWITCHES}, "reference": "best",
                "buffer": "half"},
      dataset_budget=lambda dataset_id, budget: dataset_budget(agent, dataset_id, budget),
      phases=(offline.pretrain_phase(SOURCE_ALGO[agent], steps=_pretrain_steps,
                                     eval_every=lambda ctx: ctx["pretrain_eval_every"],
                                     preset=lambda ctx: ctx["preset"], chain=base_agent(agent)),
              recipe_lib.Phase("reevaluate", "fit", _reevaluate_phase, needs=("pretrain",),
                               step=None if direct else module.reevaluate_step, act=module.offline_act,
                               data=("none: the offline run's critic is kept" if direct else
                                     offline_data),
                               hook="pi_off's score" + ("" if direct else
                                                        " (the constraint's first reference)")),
              recipe_lib.Phase("align", "fit", _align_phase, needs=("reevaluate",),
                               step=None if direct else module.align_step, act=module.act,
                               data="none: skipped (pi_on = pi_off)" if direct else offline_data,
                               hook="finish_alignment" if direct else
                                    "pi_on's score; at the end finish_alignment"),
              recipe_lib.Phase("finetune", "off-policy online", _finetune_phase, needs=("align",),
                               step=module.finetune_step, act=module.act,
                               data="the online buffer (+ offline rows, --buffer)",
                               replay="--buffer: half = half of each batch offline (H.2), all = the "
                                      "whole dataset, part = the top-50 episodes, null = online only",
                               hook="" if direct else
                                    "pi_ref refresh (--reference: the best evaluated policy, or "
                                    "pi_on every N env steps)")))


RECIPES = {"o2td3": _recipe("o2td3", "OCR-CFT on TD3 (from TD3+BC): re-evaluation, alignment, "
                            "constrained fine-tuning"),
           "o2sac": _recipe("o2sac", "OCR-CFT on SAC (from CQL): re-evaluation, alignment, "
                            "constrained fine-tuning"),
           "direct_td3": _recipe("direct_td3", "Direct fine-tuning with TD3 from TD3+BC: the offline "
                                 "actor and critic, plain TD3 online (O2TD3 with every component off)"),
           "direct_sac": _recipe("direct_sac", "Direct fine-tuning with SAC from CQL: the offline "
                                 "actor and critic, plain SAC online (O2SAC with every component off)")}
