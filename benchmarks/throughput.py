"""Update throughput of every phase step of every agent, against the machine's own matmul rate.

  python -m benchmarks.throughput                                # every (agent, phase) of the table
  python -m benchmarks.throughput --agents=sac,td3 --seeds=1,5,16
  python -m benchmarks.throughput --agents=o2td3,o2sac --phases=align,finetune
  python -m benchmarks.throughput --list                         # the (agent, phase) pairs

One row per (agent, phase step) of `ENTRIES` (the table at the end of the builders). For each row:
compile time of one update; updates/s with one jit call per update and with lax.scan chunks;
seed-updates/s with S seeds vmapped (scan chunks, `loops.vmap_lockstep` as the loops use it);
FLOPs of one update (XLA's cost analysis, and a matmul count from the jaxpr) and the achieved GFLOP/s
against a 256x256 @ 256x256 matmul chain (the practical roofline); for the phases that run in
`loops.run_online`, the online loop's env-steps/s at UTD 1 next to the update-only rate; the peak
host memory (ru_maxrss) of the row. With --isolate (default) every row runs in its own process, so
its compile time starts from cold caches and its peak memory is its own.

A shared machine drifts by 2x over minutes, so a row times its configurations (one call, each seed
count, the matmul) interleaved, --rounds times over: rates are medians over rounds, and the vmap
ratios and the roofline fraction are taken within a round (`timed_rounds`).

The state of each row is built as the package builds it (agent `init`, `loops.init_states`, the OCR-CFT
phase helpers of `o2o_jax.recipes.ocr_cft`, the pipelines' switch functions), from freshly initialised
networks; the data are synthetic (Hopper-v5 sizes), so rates do not depend on a dataset on disk.
Writes JSON + a markdown table to <out>/throughput_<device>.{json,md}.

Adding an agent: one `Entry(agent, phase, builder)` line in `ENTRIES` (a plain offline algorithm:
`Entry("x", "pretrain", offline)`, an online one: `Entry("x", "online", online)`); a new kind of
phase needs a builder returning a `Spec`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

OBS, ACT = 11, 3   # Hopper-v5
ENV_ID = "Hopper-v5"


# ----------------------------------------------------------------------------- what a row measures

@dataclasses.dataclass(frozen=True)
class Settings:
  """Sizes of the measured programs (the CLI flags; the test passes tiny ones)."""
  hidden: int = 256                     # every network: hidden x hidden (value nets of PPO: x3)
  batch_size: int = 256
  rollout_length: int = 2048            # PPO / O2PPO: env steps per seed per update
  ppo_minibatches: Optional[int] = None  # None: the agent's default (16)
  ppo_epochs: Optional[int] = None      # None: the agent's / dataset preset's default (10)
  utd: int = 1                          # O2SAC's lambda-step period and the online loop's UTD
  dataset: str = "o2o/hopper/medium-v0"  # only picks the presets; the data are synthetic
  dataset_size: int = 100_000           # synthetic offline transitions
  # True: the offline algorithms and the OCR-CFT agents keep their own network sizes (CQL 3x256, the
  # O2SAC critic 3x256 with LayerNorm, ...), as the paper pipeline runs them (ocr_cft.BUDGETS["paper"]);
  # `hidden` then applies to the other rows only.
  own_dims: bool = False


@dataclasses.dataclass(frozen=True)
class Spec:
  """One phase step, duck-typed as an agent module for the package's loops:
  `init(key, obs_dim, act_dim, config)` (so `loops.init_states(spec, ...)` builds the seeds),
  `update(state, batch, key)` (the step measured), `act(state, obs, key, explore)`."""
  init: Callable
  update: Callable
  act: Optional[Callable]
  config: Any = None
  batch: str = "transition"             # "transition" (sampled from a dataset) or "rollout" (PPO)
  explore: Optional[Callable] = None    # rollout entries: (state, obs, key) -> (action, log-prob)
  online: Optional[Dict[str, Any]] = None  # phases run by loops.run_online: its replay keywords
  notes: str = ""
  # (transitions, key) -> the step's batch, for a step whose batch is not a plain Transition (Off2On's
  # prioritised batch): the synthetic transitions pass through it before every update.
  batch_of: Optional[Callable] = None


@dataclasses.dataclass(frozen=True)
class Entry:
  agent: str
  phase: str
  build: Callable[[str, Settings], Spec]   # (agent name, settings) -> Spec

  @property
  def name(self) -> str:
    return f"{self.agent}/{self.phase}"


def _phase(agent: str, phase: str):
  """The recipe's declaration of `agent`'s phase (o2o_jax/recipes/): the step the runner scans."""
  from o2o_jax import recipes
  return recipes.get(agent).phase(phase)


def _dims(s: Settings):
  return (s.hidden, s.hidden)


# ----------------------------------------------------------------------------- builders
# Each builder composes the package's own functions in the order the launchers call them.

def offline_config(name: str, s: Settings):
  """(module, Config) of an offline algorithm as `ocr_cft.pretrain` builds it (dataset preset)."""
  import dataclasses as dc
  from o2o_jax import presets
  from o2o_jax.agents import registry
  agent = registry.get(name, registry.OFFLINE)
  dims = {} if s.own_dims else {"hidden_dims": _dims(s)}
  config = agent.Config(**dims, **presets.offline_preset(name, s.dataset)["config"])
  return agent, (dc.replace(config, max_steps=s.dataset_size)
                 if "max_steps" in {f.name for f in dc.fields(config)} else config)


def offline(name: str, s: Settings) -> Spec:
  """`ocr_cft.pretrain`: the registry's offline algorithm, `loops.run_offline` chunks."""
  agent, config = offline_config(name, s)
  return Spec(agent.init, agent.update, agent.act, config)


def online(name: str, s: Settings) -> Spec:
  """`experiments.train_online`: an online agent from scratch, `loops.run_online`."""
  from o2o_jax.agents import registry
  agent = registry.get(name, registry.ONLINE)
  return Spec(agent.init, agent.update, agent.act, agent.Config(hidden_dims=_dims(s)), online={})


def _ppo_sizes(s: Settings) -> Dict[str, Any]:
  out = {"rollout_length": s.rollout_length}
  if s.ppo_minibatches is not None:
    out["num_minibatches"] = s.ppo_minibatches
  if s.ppo_epochs is not None:
    out["epochs"] = s.ppo_epochs
  return out


def _ppo_note(config) -> str:
  return (f"one update = {config.epochs} epochs x {config.num_minibatches} minibatches of "
          f"{config.minibatch_size} on a {config.rollout_length}-step rollout")


def ppo_online(name: str, s: Settings) -> Spec:
  """PPO (`onpolicy.run_onpolicy`): one update per rollout."""
  from o2o_jax.agents import registry
  agent = registry.get(name, registry.ONLINE)
  config = agent.Config(hidden_dims=_dims(s), value_hidden_dims=(s.hidden,) * 3, **_ppo_sizes(s))
  agent.check_config(config)
  return Spec(agent.init, agent.update, agent.act, config, batch="rollout", explore=agent.explore,
              notes=_ppo_note(config))


def _finetune_switches(config, s: Settings):
  """`ocr_cft.finetune`: constrain on, O2SAC's `utd` field set, tau schedule checked."""
  from o2o_jax.recipes import ocr_cft
  switches = {"constrain": True}
  if "utd" in {f.name for f in dataclasses.fields(config)}:
    switches["utd"] = s.utd
  return ocr_cft.check_tau(dataclasses.replace(config, **switches))


def lambda_step(agent_name: str):
  """The lambda step of OCR-CFT fine-tuning on its own: the agent's `lambda_step` (o2td3 on
  (pi_ref(s) - pi_on(s))^2; o2sac on the single-sample KL, with the first of `finetune_step`'s keys)."""
  import jax
  from o2o_jax.agents import registry
  agent = registry.get(agent_name, registry.O2O)
  if agent_name == "o2td3":
    return lambda state, batch, key: agent.lambda_step(state, batch.observations)
  if agent_name == "o2sac":
    return lambda state, batch, key: agent.lambda_step(state, batch.observations,
                                                       jax.random.split(key, 3)[0])
  raise ValueError(f"no lambda step for {agent_name}")


LAMBDA_NOTES = {
    "o2td3": "o2td3.lambda_step (lagrange.update on f = (pi_ref(s) - pi_on(s))^2); finetune_step runs "
             "it in its delayed branch (every policy_freq-th update)",
    "o2sac": "o2sac.lambda_step (lagrange.update on the KL estimate); finetune_step runs it on the "
             "first of each env step's utd updates (a lax.cond)"}


def ocr(phase: str):
  """OCR-CFT (o2td3, o2sac) phase `phase`, built as o2o_jax/recipes/ocr_cft.py chains them:
  pretrain (the source algorithm) -> reevaluate (`agent.init` around the offline actor) -> align
  (same state) -> finetune (`finish_alignment`, config switches, `init_reference`)."""

  def build(name: str, s: Settings) -> Spec:
    import jax
    import jax.numpy as jnp
    from o2o_jax.recipes import ocr_cft
    from o2o_jax.agents import registry
    agent = registry.get(name, registry.O2O)
    source, source_config = offline_config(ocr_cft.SOURCE_ALGO[name], s)
    config = ocr_cft.make_o2o_config(name, source_config, s.dataset, None if s.own_dims else _dims(s),
                                    constrain=name not in ocr_cft.DIRECT)

    def reevaluate_init(key, obs_dim, act_dim, c):   # offline.offline_actor_params + ocr_cft.reevaluate
      k_source, k = jax.random.split(key)
      actor = source.init(k_source, obs_dim, act_dim, source_config).actor.params
      return agent.init(k, obs_dim, act_dim, c, actor)

    declared = _phase(name, phase if phase != "lambda" else "finetune")
    if phase in ("reevaluate", "align"):
      return Spec(reevaluate_init, declared.step, declared.act, config)
    finetune_config = _finetune_switches(config, s)

    def finetune_init(key, obs_dim, act_dim, c):      # ocr_cft.align's end + ocr_cft.finetune
      state = agent.finish_alignment(reevaluate_init(key, obs_dim, act_dim, config))
      score = jnp.zeros((), jnp.float32)
      return agent.init_reference(state.replace(config=c), score, score)

    step = declared.step if phase == "finetune" else lambda_step(name)
    notes = "" if phase == "finetune" else LAMBDA_NOTES[name]
    return Spec(finetune_init, step, declared.act, finetune_config,
                online=ocr_cft.replay_mode("half", None) if phase == "finetune" else None,
                notes=notes)

  return build


def aca_zfit(name: str, s: Settings) -> Spec:
  """o2o_jax/recipes/aca.fit_baseline: Z fitted with another stochastic actor (CQL's) fixed."""
  import jax
  from o2o_jax.recipes import aca as aca_recipe
  from o2o_jax.agents.o2o import aca
  source, source_config = offline_config("cql", s)
  module = jax.eval_shape(lambda: source.init(jax.random.PRNGKey(0), OBS, ACT, source_config)
                          ).actor.apply_fn.__self__
  config = aca.Config(**aca_recipe.actor_config_fields(module), critic_hidden_dims=_dims(s),
                      init_alpha=1.0)

  def init(key, obs_dim, act_dim, c):
    k_source, k = jax.random.split(key)
    return aca.init(k, obs_dim, act_dim, c, source.init(k_source, obs_dim, act_dim,
                                                        source_config).actor.params)

  declared = _phase("aca", "zfit")
  return Spec(init, declared.step, declared.act, config)


def aca_online(name: str, s: Settings) -> Spec:
  """o2o_jax/recipes/aca.finetune_phase: the sacml state, `aca.start_online` with the dataset row."""
  from o2o_jax import presets
  from o2o_jax.agents.o2o import aca
  _, base = offline_config("sacml", s)
  config = dataclasses.replace(base, **aca.dataset_preset(*presets.dataset_env_and_level(s.dataset)))

  def init(key, obs_dim, act_dim, c):
    return aca.start_online(aca.init(key, obs_dim, act_dim, base), act_dim, c)

  declared = _phase("aca", "finetune")
  return Spec(init, declared.step, declared.act, config, online={})


def continued_online(name: str, s: Settings) -> Spec:
  """o2o_jax/recipes/{iql_way,pex}.py finetune phases: the offline run's state after the agent's
  `start_online` (iql_ft, awac_ft: the same objective, buffer = data + online; pex: policy
  expansion, batches half offline rows)."""
  import jax
  from o2o_jax.agents import registry
  from o2o_jax.recipes import online_from_offline
  agent = registry.get(name, registry.O2O)
  source, base = offline_config("awac" if name == "awac_ft" else "iql", s)
  config = online_from_offline.carried_config(agent.Config, base)

  def init(key, obs_dim, act_dim, c):
    if name == "pex":
      k_offline, k_policy = jax.random.split(key)
      return agent.start_online(source.init(k_offline, obs_dim, act_dim, base), k_policy, obs_dim,
                                act_dim, c)
    return agent.start_online(source.init(key, obs_dim, act_dim, base), c)

  declared = _phase(name, "finetune")
  online = {"offline_fraction": 0.5} if name == "pex" else {"offline_union": True}
  return Spec(init, declared.step, declared.act, config, online=online)


def proto_online(name: str, s: Settings) -> Spec:
  """o2o_jax/recipes/proto.finetune_phase: the CQL (proto) or TD3+BC (proto_td3) state through the
  agent's `from_offline` switch, batches half offline rows."""
  from o2o_jax.agents import registry
  from o2o_jax.recipes import proto as proto_recipe
  agent = registry.get(name, registry.O2O)
  source, base = offline_config(proto_recipe.SOURCES[name][0], s)
  config = proto_recipe.make_config(name, base, s.dataset, ACT)

  def init(key, obs_dim, act_dim, c):
    return agent.from_offline(source.init(key, obs_dim, act_dim, base), c)

  declared = _phase(name, "finetune")
  return Spec(init, declared.step, declared.act, config, online={"offline_fraction": 0.5})


def o3f_online(name: str, s: Settings) -> Spec:
  """o2o_jax/recipes/o3f.finetune_phase: the iql5 state, `o3f.start_online`, buffer = data + online."""
  from o2o_jax import presets
  from o2o_jax.agents.o2o import o3f
  _, base = offline_config("iql5", s)
  env, _ = presets.dataset_env_and_level(s.dataset)
  config = dataclasses.replace(base, sigma=o3f.sigma_for_env(env))   # the --o3f_ defaults

  def init(key, obs_dim, act_dim, c):
    return o3f.start_online(o3f.init(key, obs_dim, act_dim, base), c)

  declared = _phase("o3f", "finetune")
  return Spec(init, declared.step, declared.act, config, online={"offline_union": True},
              notes=f"acting: best of {config.num_candidates} candidates x {config.num_critics} critics")


def calql_pretrain(name: str, s: Settings) -> Spec:
  """`offline.pretrain` of calql: `calql.update` on rows carrying V^mu (`calql.offline_dataset`; the
  synthetic rows here get r / (1 - gamma))."""
  from o2o_jax.agents.o2o import calql
  from o2o_jax.data import returns
  _, config = offline_config(name, s)

  def update(state, batch, key):
    return calql.update(state, returns.with_returns(batch, batch.rewards / (1 - config.discount)), key)

  return Spec(calql.init, update, calql.act, config)


def calql_online(name: str, s: Settings) -> Spec:
  """o2o_jax/recipes/calql.finetune_phase: the calql state after CORL's switch (`calql.online_config`),
  batches half offline rows."""
  from o2o_jax.agents.o2o import calql
  from o2o_jax.recipes import calql as calql_recipe
  _, base = offline_config("calql", s)
  declared = _phase("calql", "finetune")
  return Spec(calql.init, declared.step, declared.act, calql.online_config(base),
              online={"offline_fraction": calql_recipe.MIXING_RATIO})


def off2on_online(name: str, s: Settings) -> Spec:
  """o2o_jax/recipes/off2on.finetune_phase: an ensemble of 5 CQL-shaped members (`off2on.init`; the
  recipe loads them with `from_members`) over a replay of dataset_size offline + dataset_size online
  rows. The batch is `sample_batch`'s form built from the synthetic rows (random priority indices,
  w_psi's rows reshuffled), so the figure is the update alone: the sampler's cumsum over every
  row's priority per draw and the online loop are not in it."""
  import jax
  from o2o_jax.agents.o2o import off2on
  _, base = offline_config("cql", s)
  sizes = {} if s.own_dims else {"ratio_hidden_dims": _dims(s)}
  config = off2on.Config(**{k: getattr(base, k) for k in off2on.ARCHITECTURE}, **sizes,
                         offline_rows=s.dataset_size, online_rows=s.dataset_size)

  def batch_of(batch, key):
    k_rows, k_off, k_on = jax.random.split(key, 3)
    n = batch.rewards.shape[0]
    off, on = (jax.random.permutation(k, n) for k in (k_off, k_on))
    return off2on.Batch(**{f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)},
                        indices=jax.random.randint(k_rows, (n,), 0, 2 * s.dataset_size),
                        offline_observations=batch.observations[off],
                        offline_actions=batch.actions[off],
                        online_observations=batch.observations[on], online_actions=batch.actions[on])

  declared = _phase("off2on", "finetune")
  return Spec(off2on.init, declared.step, declared.act, config, batch_of=batch_of,
              notes=f"ensemble of {config.ensemble_size}; update only (no sampler, no online loop)")


def _samg_config(s: Settings, base: str):
  from o2o_jax.agents.o2o import samg
  _, base_config = offline_config(base, s)
  return samg.Config(base=base, base_config=samg.online_base_config(base, base_config),
                     cvae_hidden_dims=_dims(s)).resolved(ACT)


def samg_cvae(name: str, s: Settings) -> Spec:
  """o2o_jax/recipes/samg.train_cvae: the state-action C-VAE (shared by the three bases)."""
  from o2o_jax.agents.o2o import samg
  return Spec(samg.cvae_init, _phase("samg_iql", "cvae").step, None, _samg_config(s, "iql"))


def samg_online(name: str, s: Settings) -> Spec:
  """o2o_jax/recipes/samg.finetune_phase: `samg.from_offline` around the base's state (samg.init)."""
  from o2o_jax.agents import registry
  agent = registry.get(name, registry.O2O)
  return Spec(agent.init, agent.update, agent.act, _samg_config(s, name.split("_", 1)[1]), online={})


def _o2ppo_configs(s: Settings):
  """(IQL config, V-fit config, fine-tuning config) as o2o_jax/recipes/o2ppo.py builds them."""
  from o2o_jax.recipes import o2ppo as o2ppo_recipe
  from o2o_jax.agents.offline import iql
  from o2o_jax.agents.o2o import o2ppo
  actor_config = iql.Config(hidden_dims=_dims(s))            # --o2ppo_iql_preset=none: Gaussian
  fit = o2ppo_recipe.value_config(actor_config, "iql", (s.hidden,) * 3)
  sizes = {"epochs": o2ppo_recipe.dataset_preset(s.dataset)["epochs"], **_ppo_sizes(s)}
  config = dataclasses.replace(fit, lr_decay_steps=100_000, beta_steps=100_000, **sizes)
  o2ppo.check_config(config)
  return actor_config, fit, config


def o2ppo_phase(phase: str):
  def build(name: str, s: Settings) -> Spec:
    import jax
    import jax.numpy as jnp
    from o2o_jax.agents.o2o import o2ppo
    from o2o_jax.agents.offline import iql
    actor_config, fit_config, config = _o2ppo_configs(s)

    def fit_init(key, obs_dim, act_dim, c):             # o2o_jax.recipes.o2ppo.reevaluate_phase
      k_source, k = jax.random.split(key)
      actor = iql.init(k_source, obs_dim, act_dim, actor_config).actor.params
      return o2ppo.init_value_fit(k, obs_dim, act_dim, c, actor)

    declared = _phase(name, phase)
    if name == "direct_ppo":                            # the recipe's finetune_phase: aux off
      config = dataclasses.replace(config, aux=False)
    if phase == "reevaluate":
      return Spec(fit_init, declared.step, declared.act, fit_config)

    def init(key, obs_dim, act_dim, c):                 # o2o_jax.recipes.o2ppo.finetune_phase
      k_fit, k = jax.random.split(key)
      fitted = fit_init(k_fit, obs_dim, act_dim, fit_config)
      state = o2ppo.init(k, obs_dim, act_dim, c, fitted.offline_actor_params, fitted.value.params)
      score = jnp.zeros((), jnp.float32)
      return o2ppo.init_reference(state, score, score)

    return Spec(init, declared.step, declared.act, config, batch="rollout", explore=o2ppo.explore,
                notes=_ppo_note(config))

  return build


# (agent, phase step) -> builder. Agent names are the registry's (plus "samg" for the shared C-VAE).
ENTRIES = (
    Entry("sac", "online", online),
    Entry("td3", "online", online),
    Entry("ppo", "online", ppo_online),
    *(Entry(a, "pretrain", offline) for a in ("td3bc", "cql", "iql", "awac", "bc", "iql5", "sacml")),
    *(Entry(a, p, ocr(p)) for a in ("o2td3", "o2sac")
      for p in ("reevaluate", "align", "finetune", "lambda")),
    Entry("direct_td3", "finetune", ocr("finetune")),     # the OCR-CFT step with lambda = 0
    Entry("direct_sac", "finetune", ocr("finetune")),
    Entry("o2ppo", "reevaluate", o2ppo_phase("reevaluate")),
    Entry("o2ppo", "finetune", o2ppo_phase("finetune")),
    *(Entry("direct_ppo", p, o2ppo_phase(p)) for p in ("reevaluate", "finetune")),
    Entry("aca", "zfit", aca_zfit),
    Entry("aca", "finetune", aca_online),
    Entry("o3f", "finetune", o3f_online),
    *(Entry(a, "finetune", continued_online) for a in ("iql_ft", "awac_ft", "pex")),
    Entry("samg", "cvae", samg_cvae),
    *(Entry(f"samg_{b}", "finetune", samg_online) for b in ("cql", "awac", "iql", "calql")),
    Entry("off2on", "finetune", off2on_online),
    Entry("calql", "pretrain", calql_pretrain),
    Entry("calql", "finetune", calql_online),
    *(Entry(a, "finetune", proto_online) for a in ("proto", "proto_td3")),
)


def select(agents: Optional[Sequence[str]] = None, phases: Optional[Sequence[str]] = None) -> List[Entry]:
  """The entries whose agent is in `agents` and phase in `phases` (None or "all": every one)."""
  def wanted(values, known, what):
    if not values or list(values) == ["all"]:
      return None
    unknown = sorted(set(values) - set(known))
    if unknown:
      raise ValueError(f"unknown {what} {', '.join(unknown)}: choose from {', '.join(sorted(set(known)))}")
    return set(values)
  a = wanted(agents, [e.agent for e in ENTRIES], "agent(s)")
  p = wanted(phases, [e.phase for e in ENTRIES], "phase(s)")
  out = [e for e in ENTRIES if (a is None or e.agent in a) and (p is None or e.phase in p)]
  if not out:
    raise ValueError(f"no (agent, phase) pair matches --agents={agents} --phases={phases}")
  return out


# ----------------------------------------------------------------------------- data and states

def transitions(n: int, key):
  """A synthetic dataset of n Hopper-sized transitions (normalised-looking observations)."""
  import jax
  from o2o_jax.types import Transition
  k = jax.random.split(key, 5)
  return Transition(jax.random.normal(k[0], (n, OBS)), jax.random.uniform(k[1], (n, ACT), minval=-1, maxval=1),
                    jax.random.normal(k[2], (n,)), jax.random.normal(k[3], (n, OBS)),
                    (jax.random.uniform(k[4], (n,)) < 0.01).astype("float32"))


def rollouts(spec: Spec, states, length: int, key):
  """One rollout per seed (leaves (S, T, ...)), actions and log-probs from the seeds' own policies
  (`spec.explore`), so the PPO ratios start at 1 as in a real first update."""
  import jax
  import jax.numpy as jnp
  from o2o_jax.agents.online.ppo import Rollout
  num_seeds = jax.tree_util.tree_leaves(states)[0].shape[0]
  k = jax.random.split(key, 5)
  obs = jax.random.normal(k[0], (num_seeds, length, OBS))
  actions, log_probs = jax.jit(jax.vmap(spec.explore))(states, obs, jax.random.split(k[1], num_seeds))
  ends = lambda kk: (jax.random.uniform(kk, (num_seeds, length)) < 0.01).astype(jnp.float32)
  return Rollout(observations=obs, actions=actions, log_probs=log_probs,
                 rewards=jax.random.normal(k[2], (num_seeds, length)),
                 next_observations=jax.random.normal(k[3], (num_seeds, length, OBS)),
                 terminals=ends(k[4]), dones=ends(k[4]))


def rollout_chunk(update: Callable, num_updates: int):
  """chunk(state, key, rollout): `num_updates` updates on one rollout as a lax.scan (the on-policy
  loop makes one call per rollout; this is the scan-chunk figure for comparison)."""
  import jax

  def chunk(state, key, rollout):
    state, metrics = jax.lax.scan(lambda st, k: update(st, rollout, k), state,
                                  jax.random.split(key, num_updates))
    return state, jax.tree_util.tree_map(lambda m: m.mean(0), metrics)

  return chunk


def chunk_fn(spec: Spec, s: Settings, num_updates: int):
  """The seed-vmapped, jitted scan chunk: `loops.multi_seed_offline_chunk` (the dataset shared, as
  `loops.run_offline`), or for rollouts the same `loops.vmap_lockstep` with one rollout per seed."""
  import jax
  from o2o_jax import loops
  if spec.batch == "rollout":
    return jax.jit(loops.vmap_lockstep(rollout_chunk(spec.update, num_updates), in_axes=(0, 0, 0)),
                   donate_argnums=(0,))
  update = spec.update
  if spec.batch_of is not None:
    update = lambda state, batch, key: spec.update(state, spec.batch_of(batch, key), key)
  return loops.multi_seed_offline_chunk(loops.make_offline_chunk(update, s.batch_size, num_updates))


def init_states(spec: Spec, num_seeds: int, seed: int = 0):
  from o2o_jax import loops
  from o2o_jax.types import seed_keys
  return loops.init_states(spec, seed_keys(seed, num_seeds), OBS, ACT, spec.config)


def build(entry: Entry, s: Settings) -> Spec:
  return entry.build(entry.agent, s)


# ----------------------------------------------------------------------------- FLOPs

def jaxpr_cost(jaxpr) -> Dict[str, Any]:
  """Matmul FLOPs (2 M N K per dot_general) of a jaxpr, scan bodies times their length, the larger
  branch of a cond, a while body once; and which of cond / scan / while occur."""
  flops, kinds = 0.0, set()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      flops += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
      continue
    subs = []
    for value in eqn.params.values():
      for v in (value if isinstance(value, (tuple, list)) else (value,)):
        inner = getattr(v, "jaxpr", v)
        if hasattr(inner, "eqns"):
          subs.append(jaxpr_cost(inner))
    for sub in subs:
      kinds |= sub["kinds"]
    if name == "cond":
      kinds.add("cond")
      flops += max((sub["flops"] for sub in subs), default=0.0)
    elif name == "scan":
      kinds.add("scan")
      flops += eqn.params["length"] * sum(sub["flops"] for sub in subs)
    else:
      if name == "while":
        kinds.add("while")
      flops += sum(sub["flops"] for sub in subs)
  return {"flops": flops, "kinds": kinds}


def xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", float("nan")))


# ----------------------------------------------------------------------------- measuring

def _timeit(fn, seconds):
  """Calls fn() (which must block) until `seconds` pass; returns calls per second."""
  fn()
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds or n == 0:
    fn()
    n += 1
  return n / (time.perf_counter() - t0)


def timed_rounds(fns: Dict[str, Callable], seconds: float, rounds: int) -> Dict[str, List[float]]:
  """Calls/s of every fn, measured in turn, `rounds` times over.

  On a shared machine the speed drifts by 2x over minutes (other tenants, frequency scaling): rates
  taken minutes apart cannot be compared. Interleaving puts every configuration in every slow or fast
  spell alike, and ratios are then taken within a round (see `median_ratio`)."""
  rates = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      rates[name].append(_timeit(fn, seconds))
  return rates


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
  return float(np.median(np.asarray(num) / np.asarray(den)))


def matmul_chain(n=256, length=100):
  """A blocking call of `length` chained n x n @ n x n matmuls, and its FLOPs."""
  import jax
  import jax.numpy as jnp
  x, w = jnp.ones((n, n)), jnp.ones((n, n)) / n
  f = jax.jit(lambda x, w: jax.lax.fori_loop(0, length, lambda i, x: x @ w, x))
  return (lambda: f(x, w).block_until_ready()), length * 2 * n ** 3


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(entry: Entry, s: Settings, seeds_list: Sequence[int], *, seconds: float, chunk: int,
            rollout_chunk_size: int, online_steps: int, rounds: int = 3, log=print) -> Dict[str, Any]:
  import jax
  from o2o_jax import loops
  from o2o_jax.types import seed_keys, take_index
  tag = f"  {entry.name}:"
  spec = build(entry, s)
  out = {"agent": entry.agent, "phase": entry.phase, "batch": spec.batch, "notes": spec.notes}
  t0 = time.perf_counter()
  states = init_states(spec, max(seeds_list))
  jax.block_until_ready(states)
  out["init_s"] = time.perf_counter() - t0
  key = jax.random.PRNGKey(1)
  if spec.batch == "rollout":
    data = rollouts(spec, states, s.rollout_length, jax.random.PRNGKey(2))
    batch = take_index(data, 0)
    n_chunk = rollout_chunk_size
  else:
    data = transitions(s.dataset_size, jax.random.PRNGKey(2))
    batch = jax.tree_util.tree_map(lambda x: x[:s.batch_size], data)
    if spec.batch_of is not None:
      batch = spec.batch_of(batch, jax.random.PRNGKey(3))
    n_chunk = chunk
  state = take_index(states, 0)

  # One jit call per update.
  single = jax.jit(spec.update)
  t0 = time.perf_counter()
  compiled = single.lower(state, batch, key).compile()
  out["compile_s"] = time.perf_counter() - t0
  out["gflop_per_update_xla"] = xla_flops(compiled) / 1e9
  cost = jaxpr_cost(jax.make_jaxpr(spec.update)(state, batch, key).jaxpr)
  out["gflop_per_update_matmul"] = cost["flops"] / 1e9
  out["control_flow"] = sorted(cost["kinds"])
  log(f"{tag} init {out['init_s']:.1f}s, compile {out['compile_s']:.1f}s, "
      f"{out['gflop_per_update_xla']:.4f} GFLOP/update (XLA), {out['gflop_per_update_matmul']:.4f} (matmul)")
  holder = [state]

  def one():
    holder[0], info = compiled(holder[0], batch, key)
    jax.block_until_ready(info)

  # Scan chunks, vmapped over seeds (loops.vmap_lockstep), one program per seed count.
  fn = chunk_fn(spec, s, n_chunk)
  out["chunk"] = n_chunk
  out["chunk_compile_s"] = {}
  calls = {"single": one}
  for n in seeds_list:
    h = [loops.unalias(jax.tree_util.tree_map(lambda x: x[:n], states))]
    d = jax.tree_util.tree_map(lambda x: x[:n], data) if spec.batch == "rollout" else data
    keys = seed_keys(1, n)
    t0 = time.perf_counter()
    h[0], m = fn(h[0], keys, d)
    jax.block_until_ready(m)
    out["chunk_compile_s"][n] = time.perf_counter() - t0

    def run(h=h, keys=keys, d=d):
      h[0], m = fn(h[0], keys, d)
      jax.block_until_ready(m)
    calls[n] = run
  calls["matmul"], matmul_flops = matmul_chain()
  rates = timed_rounds(calls, seconds / rounds, rounds)
  seed_rates = {n: np.asarray(rates[n]) * n_chunk * n for n in seeds_list}   # seed-updates/s
  roofline_rounds = np.asarray(rates["matmul"]) * matmul_flops / 1e9
  out["rounds"] = rounds
  out["matmul_gflops"] = float(np.median(roofline_rounds))
  out["updates_per_s_single_call"] = float(np.median(rates["single"]))
  out["seed_updates_per_s"] = {n: float(np.median(r)) for n, r in seed_rates.items()}
  for n in seeds_list:
    log(f"{tag} {n} seed(s): {out['seed_updates_per_s'][n]:.0f} seed-updates/s "
        f"(rounds: {', '.join(f'{x:.0f}' for x in seed_rates[n])})")
  one_seed = seed_rates[seeds_list[0]]
  out["updates_per_s_scan"] = out["seed_updates_per_s"][seeds_list[0]]
  out["vmap_ratio"] = {n: median_ratio(r, one_seed) for n, r in seed_rates.items()}
  # XLA's cost analysis counts a loop body once: for steps with loops the jaxpr count is used.
  has_loop = bool({"scan", "while"} & cost["kinds"])
  out["flops_source"] = "matmul" if has_loop else "xla"
  per_update = out["gflop_per_update_matmul"] if has_loop else out["gflop_per_update_xla"]
  best = np.max(np.stack(list(seed_rates.values())), axis=0)    # the best seed count, per round
  out["gflops_achieved"] = per_update * float(np.median(best))
  out["roofline_fraction"] = median_ratio(per_update * best, roofline_rounds)
  log(f"{tag} 1 call {out['updates_per_s_single_call']:.0f} upd/s, scan "
      f"{out['updates_per_s_scan']:.0f} upd/s, {out['gflops_achieved']:.1f} GFLOP/s "
      f"({100 * out['roofline_fraction']:.0f}% of the matmul rate {out['matmul_gflops']:.1f} "
      f"measured in the same rounds)")
  if spec.online is not None and online_steps > 0:
    out["online"] = measure_online(spec, take_index_range(states, 1), data, s, online_steps)
    # The update-only rate right after the online run (and the rounds' last), so both sides of the
    # overhead are taken in the same minute.
    single_now = _timeit(one, seconds / rounds)
    reference = (single_now + rates["single"][-1]) / 2
    out["online"]["single_call_rate_around"] = reference
    out["online"]["overhead_vs_update_only"] = 1 - out["online"]["env_steps_per_s"] / reference
    log(f"{tag} online loop {out['online']['env_steps_per_s']:.0f} env-steps/s at UTD {s.utd} "
        f"(update-only {reference:.0f} upd/s in the same minute)")
  out["peak_rss_mb"] = peak_rss_mb()
  return out


def take_index_range(tree, n):
  import jax
  return jax.tree_util.tree_map(lambda x: x[:n], tree)


def measure_online(spec: Spec, states, data, s: Settings, steps: int, num_seeds: int = 1,
                   warmup: int = 200):
  """env-steps/s of `loops.run_online` (`num_seeds` seeds, the first of `states`, UTD `s.utd`) with
  the phase's replay mixing; the clock runs from step `warmup` (random actions for the first half,
  then updates, compiled and under way) to the last step, before the final evaluation."""
  from o2o_jax import envs, loops
  replay = dict(spec.online)
  offline = data if replay.get("offline_fraction", 0) > 0 or replay.get("offline_union") else None
  config = loops.OnlineConfig(total_steps=steps + warmup, start_steps=max(1, warmup // 2),
                              eval_every=10 ** 9,
                              eval_episodes=1, buffer_size=10_000, utd=s.utd,
                              batch_size=s.batch_size, **replay)
  marks = {}

  def on_step(t, *_):
    if t in (warmup, steps + warmup):
      marks[t] = time.perf_counter()

  loops.run_online(loops.Learner(spec.update, spec.act), states, make_env=lambda: envs.make_env(ENV_ID),
                   num_seeds=num_seeds, seed=0, config=config, offline=offline,
                   callbacks=loops.OnlineCallbacks(on_step=on_step), progress=False)
  return {"env_steps_per_s": steps / (marks[steps + warmup] - marks[warmup]), "utd": s.utd,
          "replay": replay, "seeds": num_seeds}


# ----------------------------------------------------------------------------- report

def markdown(results: Dict[str, Any], seeds_list: Sequence[int]) -> str:
  roofline = results["matmul_gflops"]
  lines = [f"# Throughput on {results['device']} ({results['host']}), jax {results['jax']}", "",
           f"Matmul roofline (256x256 @ 256x256 chain): **{roofline:.1f} GFLOP/s** (median over rows; "
           f"each row's % is against the matmul timed in its own rounds). "
           f"{results.get('rounds', 1)} interleaved rounds, {results['seconds']:g} s per configuration "
           f"in all; rates are medians over rounds, ratios taken within a round. "
           f"Networks {results['hidden']}x{results['hidden']}, batch {results['batch_size']}, scan chunk "
           f"{results['chunk']} ({results['rollout_chunk']} for rollout updates), "
           f"{'one process per row' if results['isolate'] else 'one process'}.", "",
           "| agent | phase | compile s | GFLOP/update XLA (matmul) | upd/s (1 call each) | upd/s (scan) | "
           + " | ".join(f"seed-upd/s x{s} (ratio)" for s in seeds_list)
           + " | GFLOP/s (% roofline) | online env-steps/s UTD1 (overhead) | peak RSS MB |",
           "|" + "---|" * (9 + len(seeds_list))]
  notes = []
  for r in results["rows"]:
    if "error" in r:
      lines.append(f"| {r['agent']} | {r['phase']} | failed: {r['error'].splitlines()[-1][:80]} |"
                   + " |" * (7 + len(seeds_list)))
      continue
    mark = ("*" if "cond" in r["control_flow"] else "") + ("†" if r["flops_source"] == "matmul" else "")
    online = r.get("online")
    online_cell = (f"{online['env_steps_per_s']:.0f} ({100 * online['overhead_vs_update_only']:.0f}%)"
                   if online else "—")
    seeds_cells = " | ".join(f"{r['seed_updates_per_s'][s]:.0f} ({r['vmap_ratio'][s]:.2f})"
                             for s in seeds_list)
    lines.append(
        f"| {r['agent']} | {r['phase']} | {r['compile_s']:.1f} | "
        f"{r['gflop_per_update_xla']:.3f} ({r['gflop_per_update_matmul']:.3f}){mark} | "
        f"{r['updates_per_s_single_call']:.0f} | {r['updates_per_s_scan']:.0f} | {seeds_cells} | "
        f"{r['gflops_achieved']:.1f} ({100 * r['roofline_fraction']:.0f}% of "
        f"{r.get('matmul_gflops', roofline):.0f}){mark} | {online_cell} | "
        f"{r['peak_rss_mb']:.0f} |")
    if r.get("notes"):
      notes.append(f"- {r['agent']}/{r['phase']}: {r['notes']}.")
  measured = [r for r in results["rows"] if "error" not in r]
  lines.append("")
  if any("cond" in r["control_flow"] for r in measured):
    lines.append("\\* The step has a `lax.cond` (e.g. TD3's delayed actor update every `policy_freq` "
                 "updates): XLA's cost analysis adds both branches and the matmul count takes the "
                 "larger, so the FLOPs and GFLOP/s overstate the average update.")
  if any(r["flops_source"] == "matmul" for r in measured):
    lines.append("† The step has a `lax.scan` (PPO's epochs x minibatches): XLA counts a loop body "
                 "once, so the achieved GFLOP/s uses the matmul count (scan bodies times their length).")
  lines += ["Matmul count: 2MNK per dot_general of the step's jaxpr (elementwise work not counted). "
            "Online rate: `loops.run_online`, 1 seed, Hopper-v5, with the phase's replay mixing; "
            "the overhead is 1 - env-steps/s / single-call upd/s, the latter re-timed right after the "
            "online run. Peak RSS: ru_maxrss of the "
            "row's process" + (" (each row its own process)." if results["isolate"] else
                               " so far (rows share one process, so it only grows)."), ""]
  if notes:
    lines += ["Notes:"] + notes
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI

PASSED_FLAGS = ("seeds", "hidden", "batch_size", "chunk", "rollout_chunk", "rollout_length", "seconds",
                "rounds", "online_steps", "utd", "dataset")


def define_flags():
  from absl import flags
  flags.DEFINE_list("agents", ["all"], "Agents to measure (see --list; 'all' = every one).")
  flags.DEFINE_list("phases", ["all"], "Phase steps to measure (see --list; 'all' = every one).")
  flags.DEFINE_bool("list", False, "Print the available (agent, phase) pairs and exit.")
  flags.DEFINE_list("seeds", ["1", "5", "16"], "Seed counts to vmap.")
  flags.DEFINE_integer("hidden", 256, "Hidden width (two layers; PPO value nets three).")
  flags.DEFINE_integer("batch_size", 256, "Batch size.")
  flags.DEFINE_integer("chunk", 50, "Updates per lax.scan chunk.")
  flags.DEFINE_integer("rollout_chunk", 2, "PPO/O2PPO updates (whole rollouts) per lax.scan chunk.")
  flags.DEFINE_integer("rollout_length", 2048, "PPO/O2PPO rollout length (env steps per update).")
  flags.DEFINE_float("seconds", 6.0, "Measuring time per configuration (split over --rounds).")
  flags.DEFINE_integer("rounds", 3, "Rounds of interleaved timing (every configuration and the matmul "
                       "once per round); rates are medians over rounds, ratios taken within a round.")
  flags.DEFINE_integer("online_steps", 1500, "Env steps (after warm-up) for the online-loop rate; 0: skip.")
  flags.DEFINE_integer("utd", 1, "Updates per env step of the online loop (and O2SAC's lambda period).")
  flags.DEFINE_string("dataset", Settings.dataset, "Dataset id whose presets configure the agents "
                      "(no data is read).")
  flags.DEFINE_bool("isolate", True, "Run every row in its own process (cold compile caches, the row's "
                    "own peak memory).")
  flags.DEFINE_string("out", "benchmarks/results", "Output folder.")
  flags.DEFINE_string("row_json", None, "Internal (--isolate): write the measured rows here.")


def _seed_keys_to_int(row: Dict[str, Any]) -> Dict[str, Any]:
  """JSON turns the seed-count keys into strings; back to ints."""
  return {k: ({int(n): x for n, x in v.items()} if k in SEED_KEYED else v) for k, v in row.items()}


SEED_KEYED = ("seed_updates_per_s", "vmap_ratio", "chunk_compile_s")


def _median_roofline(rows) -> float:
  measured = [r["matmul_gflops"] for r in rows if "matmul_gflops" in r]
  return float(np.median(measured)) if measured else float("nan")


def _run_isolated(entry: Entry, log=print) -> List[Dict[str, Any]]:
  from absl import flags
  FLAGS = flags.FLAGS
  root = Path(__file__).resolve().parents[1]
  with tempfile.TemporaryDirectory() as tmp:
    row_json = Path(tmp) / "rows.json"
    cmd = [sys.executable, "-m", "benchmarks.throughput", f"--agents={entry.agent}",
           f"--phases={entry.phase}", "--isolate=false",
           f"--row_json={row_json}", f"--out={tmp}", *(FLAGS[name].serialize() for name in PASSED_FLAGS)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=root, env=env)
    if row_json.exists():
      return [_seed_keys_to_int(r) for r in json.loads(row_json.read_text())]
    return [{"agent": entry.agent, "phase": entry.phase,
             "error": f"the row's process exited with status {proc.returncode}"}]


def main(argv):
  del argv
  from absl import flags
  FLAGS = flags.FLAGS
  if FLAGS.list:
    for e in ENTRIES:
      print(f"{e.agent:<10s} {e.phase}")
    return 0
  entries = select(FLAGS.agents, FLAGS.phases)
  import jax
  seeds_list = [int(x) for x in FLAGS.seeds]
  s = Settings(hidden=FLAGS.hidden, batch_size=FLAGS.batch_size, rollout_length=FLAGS.rollout_length,
               utd=FLAGS.utd, dataset=FLAGS.dataset)
  device = jax.devices()[0]
  child = FLAGS.row_json is not None
  if not child:
    print(f"{len(entries)} row(s)", flush=True)
  rows, t_start = [], time.time()
  for i, entry in enumerate(entries, 1):
    if not child:
      print(f"[{i}/{len(entries)}] {entry.name} ({time.time() - t_start:.0f}s elapsed)", flush=True)
    if FLAGS.isolate and not child and len(entries) > 1:
      rows += _run_isolated(entry)
      continue
    try:
      rows.append(measure(entry, s, seeds_list, seconds=FLAGS.seconds, chunk=FLAGS.chunk,
                          rollout_chunk_size=FLAGS.rollout_chunk, rounds=FLAGS.rounds,
                          online_steps=FLAGS.online_steps,
                          log=lambda m: print(m, flush=True)))
    except Exception:   # one failing row must not lose the others' numbers
      traceback.print_exc()
      rows.append({"agent": entry.agent, "phase": entry.phase, "error": traceback.format_exc()})
  if child:
    Path(FLAGS.row_json).write_text(json.dumps(rows))
    return 0
  results = {"device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
             "host": platform.processor() or platform.machine(), "jax": jax.__version__,
             "matmul_gflops": _median_roofline(rows), "hidden": FLAGS.hidden,
             "batch_size": FLAGS.batch_size, "chunk": FLAGS.chunk, "rollout_chunk": FLAGS.rollout_chunk,
             "rollout_length": FLAGS.rollout_length, "seconds": FLAGS.seconds, "rounds": FLAGS.rounds,
             "utd": FLAGS.utd,
             "dataset_presets": FLAGS.dataset, "isolate": bool(FLAGS.isolate and len(entries) > 1),
             "wall_s": time.time() - t_start, "rows": rows, "peak_rss_mb": peak_rss_mb()}
  out = Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  tag = device.platform
  (out / f"throughput_{tag}.json").write_text(json.dumps(results, indent=1))
  text = markdown(results, seeds_list)
  (out / f"throughput_{tag}.md").write_text(text)
  print(text)
  failed = [f"{r['agent']}/{r['phase']}" for r in rows if "error" in r]
  if failed:
    print(f"failed rows: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  from absl import app
  define_flags()
  app.run(main)
