"""The online phase of a method that continues an offline run's own learner (O3F, IQL and AWAC
fine-tuning, PEX): restore the pretrain run, carry its Config over, switch the states to their online
form, and train online on the dataset's env with the run's observation statistics and reward
transform, the offline rows either in the buffer from the start (`offline_union`, "initialised with
the dataset") or mixed into each batch (`offline_fraction`).

  loaded = restore(ctx.runs["pretrain"], ("iql", "iql5"), agent="iql_ft")
  config = ctx.configure(carried_config(iql_ft.Config, loaded.agent_config))
  return finetune_phase(ctx, "iql_ft", loaded, config, start=..., offline_union=True, describe=...)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from o2o_jax import loops
from o2o_jax import phase as phase_lib
from o2o_jax import recipe as recipe_lib
from o2o_jax.data import prepared
from o2o_jax.errors import O2OError
from o2o_jax.types import seed_keys


def restore(pretrain_dir: Path, algos: Sequence[str], agent: str) -> recipe_lib.LoadedRun:
  """A finished pretrain run of one of `algos` (a one-line error names what `agent` needs)."""
  names = " or ".join(algos)
  loaded = recipe_lib.load_run(pretrain_dir, phases=("pretrain",), want=f"a pretrain run of {names}")
  if loaded.config.get("algo") not in algos:
    raise O2OError(f"{pretrain_dir} is a pretrain run of {loaded.config.get('algo')}: {agent} "
                   f"fine-tunes {'an' if names[0] in 'aeiou' else 'a'} {names} run")
  return loaded


def carried_config(config_cls, offline_config, **values):
  """`config_cls` with every field it shares with the offline run's Config (lists back to tuples),
  then `values`."""
  names = {f.name for f in dataclasses.fields(config_cls)}
  carried = {k: tuple(v) if isinstance(v, list) else v
             for k, v in dataclasses.asdict(offline_config).items() if k in names}
  return config_cls(**{**carried, **values})


def check_networks_unchanged(loaded: recipe_lib.LoadedRun, config) -> None:
  """A one-line error if `config` (the online Config after the options and --config. overrides)
  would build other networks than the offline run trained: they are restored, not re-made. Its
  fields that the offline Config has are compared by the shapes the offline algorithm's init makes."""
  trained = loaded.agent_config
  given = carried_config(type(trained), config)

  def form(c):
    shapes = loops.init_shapes(loaded.module, seed_keys(0, 1), loaded.meta["obs_dim"],
                               loaded.meta["act_dim"], c)
    return [(tuple(x.shape), x.dtype) for x in jax.tree_util.tree_leaves(shapes)]

  if given != trained and form(given) != form(trained):
    changed = [f.name for f in dataclasses.fields(given)
               if getattr(given, f.name) != getattr(trained, f.name)]
    raise O2OError(f"--config: {', '.join(changed)} would change the networks of the pretrain run "
                   f"{loaded.run_dir}, which fine-tuning restores as they are: choose them for the "
                   "pretrain run (--hidden_dims, --preset)")


# Config fields that size or shape the networks an offline IQL / AWAC run trains.
NETWORK_FIELDS = ("hidden_dims", "num_critics", "deterministic")


def refuse_network_overrides(ctx: recipe_lib.Context) -> None:
  """A recipe `check`: a --config. override of a NETWORK_FIELDS field is refused before any phase
  runs (the fine-tuning restores the pretrain run's networks; `check_networks_unchanged` is the
  backstop for the others)."""
  given = sorted(set(ctx.overrides) & set(NETWORK_FIELDS))
  if given:
    raise O2OError(f"--config.{given[0]}: {ctx.agent} fine-tunes the pretrain run's networks as they "
                   "are: size them for the pretrain run (--hidden_dims, --preset) instead")


def finetune_phase(ctx: recipe_lib.Context, agent: str, loaded: recipe_lib.LoadedRun, config,
                   start: Callable[[Any], Any], describe: Callable[[prepared.Data], str], *,
                   offline_fraction: float = 0.0, offline_union: bool = False,
                   plot_keys: Sequence[str] = ("eval/normalized_score", "train/critic_loss",
                                               "train/actor_loss"),
                   extra_config: Optional[Mapping[str, Any]] = None) -> Path:
  """Runs (or reuses) `agent`'s online phase from the pretrain run `loaded`: `start(states) ->
  states` turns the seed-stacked offline states into the online ones (jit it), `describe(data)` is
  the start line logged after '[finetune] '. The buffer holds the online steps; the offline rows
  join each batch as `offline_fraction` / `offline_union` say. The shared settings read: utd (1 if
  unset), batch_size, online_steps, warmup_steps, eval_every, eval_episodes."""
  check_networks_unchanged(loaded, config)
  cfg, states, meta = loaded.config, loaded.states, loaded.meta
  seeds, seed, utd, batch_size = cfg["seeds"], cfg["seed"], ctx.get("utd") or 1, ctx["batch_size"]
  online_steps, warmup_steps = ctx["online_steps"], ctx["warmup_steps"]
  eval_every, eval_episodes, log = ctx["eval_every"], ctx["eval_episodes"], ctx.log
  run_config = {"phase": "finetune", "agent": agent, "dataset": cfg["dataset"], "env": cfg["env"],
                "seeds": seeds, "seed": seed, "from": str(loaded.run_dir), "steps": online_steps,
                "offline_algo": cfg["algo"], "preset": cfg.get("preset"),
                "reward_transform": dict(zip(("scale", "shift"), prepared.reward_transform(meta))),
                "agent_config": dataclasses.asdict(config), "utd": utd,
                "warmup_steps": warmup_steps, "eval_every": eval_every,
                "eval_episodes": eval_episodes, "batch_size": batch_size, **(extra_config or {})}
  spec = phase_lib.OnlinePhase(
      agent=agent, dataset_id=cfg["dataset"], run_name=ctx.base_name(), config=run_config,
      loop=phase_lib.online_loop(online_steps, warmup_steps, eval_every, eval_episodes, utd=utd,
                                 batch_size=batch_size, offline_fraction=offline_fraction,
                                 offline_union=offline_union),
      plot_keys=tuple(plot_keys), **ctx.phase_args())

  def build(run_dir):
    s0 = start(states)
    # The offline rows with the run's reward transform (the online loop stores env rewards with the
    # same scale; the library adds a shift to every batch).
    scale, shift = prepared.reward_transform(meta)
    data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"], scale,
                              batch_size=batch_size, reward_shift=shift)
    log(f"[finetune] {describe(data)} -> {run_dir}")
    return phase_lib.OnlineTraining(
        learner=loops.Learner(ctx.phase.step, ctx.phase.act), states=s0, data=data,
        metadata={**meta, "agent": agent},
        start_scores={"offline": np.asarray(meta["eval_score"], np.float32)})

  return phase_lib.run_online_phase(spec, build, log)
