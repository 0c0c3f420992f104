"""PROTO's recipes (agents proto and proto_td3; o2o_jax/agents/o2o/proto.py):

  pretrain   CQL (proto) or TD3+BC (proto_td3), the run O2SAC or O2TD3 starts from (same presets,
             budgets and chain, so one offline checkpoint serves both)   runs/pretrain/<algo>/...
  finetune   SAC-PROTO or TD3-PROTO online from it: pi and pi_k the offline actor, the offline critic
             continued, eta decaying from eta_0; each batch half offline rows and half from the online
             buffer, which starts with 10k random offline rows (PROTO `train_finetune.py`,
             `symmetric_sample`)                                          runs/finetune/<agent>/...

  python -m experiments.finetune --agent=proto --budget=quick
  python -m experiments.finetune --agent=proto_td3 --from=runs/pretrain/td3bc/... --proto_eta0=1

OCR-CFT ran PROTO on the CQL and TD3+BC checkpoints it fine-tunes itself (paper App. C.4), so the
critic here is the checkpoint's (no LayerNorm; recorded as `reference_unsupported` in config.json),
and so is the reward transform (the offline run's, which the critic was trained on; PROTO's own
pre-training normalises MuJoCo rewards). `--proto_symmetric=false` is the buffer of PROTO's released
TD3 scripts (`2online_*_td3.sh`: `--symmetric=False`): one buffer of 25k random offline rows plus every
online step, sampled uniformly.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Dict

import jax
import numpy as np

from o2o_jax import distributed, loops, presets, runs
from o2o_jax import phase as phase_lib
from o2o_jax import recipe as recipe_lib
from o2o_jax.agents import registry
from o2o_jax.checkpoints import Checkpointer
from o2o_jax.data import prepared
from o2o_jax.errors import O2OError
from o2o_jax.recipes import ocr_cft, offline
from o2o_jax.types import seed_keys

# agent -> (offline algorithm, the OCR-CFT agent whose pre-training run it shares)
SOURCES = {"proto": ("cql", "o2sac"), "proto_td3": ("td3bc", "o2td3")}
# --budget: ocr_cft.BUDGETS' offline/online step counts and sizes; no warm-up, as PROTO updates from
# its first online step (the online buffer starts with offline rows).
BUDGETS = {b: {**{k: v[k] for k in ("pretrain_steps", "pretrain_eval_every", "online_steps",
                                     "eval_every", "eval_episodes", "hidden_dims")}, "warmup_steps": 0}
           for b, v in ocr_cft.BUDGETS.items()}
# Offline rows the online buffer starts with: `initialize_with_dataset(dataset, 10000)` with the
# symmetric sampler, 25000 without (`train_finetune_td3.py` at the switch).
PREFILL = {True: 10_000, False: 25_000}
PREFILL_SEED_OFFSET = 104_729      # the prefill rows' keys, apart from every other key of the run


def dataset_budget(dataset_id: str, budget: str) -> Dict[str, Any]:
  """AntMaze at --budget=paper: O2SAC's and O2TD3's online protocol (ocr_cft.ANTMAZE_BUDGET: 200k
  steps, evaluation every 5k with 100 episodes), so the shared pretrain run's config matches theirs."""
  if budget != "paper" or presets.antmaze_size(dataset_id) is None:
    return {}
  return {k: ocr_cft.ANTMAZE_BUDGET[k] for k in ("online_steps", "eval_every", "eval_episodes")}


def dataset_preset(agent: str, dataset_id: str) -> Dict[str, Any]:
  """PROTO's per-domain Config values where they differ from MuJoCo's: AntMaze (`2online_antmaze*.sh`)
  --temp=0.5, --tau_actor=0.00005, --entropy_backup=False."""
  if presets.antmaze_size(dataset_id) is None:
    return {}
  backup = "backup_entropy" if agent == "proto" else "backup_trust_region"
  return {"eta0": 0.5, "tau_actor": 5e-5, backup: False}


def reference_unsupported(dataset_id: str) -> Dict[str, Any]:
  """PROTO settings this re-implementation does not take (config.json `reference_unsupported`): the
  critic's LayerNorm (`layernorm = True`, off on halfcheetah), and on AntMaze the REDQ-style target
  of one random critic of two (`--double_online=False`)."""
  env, _ = presets.dataset_env_and_level(dataset_id)
  gaps: Dict[str, Any] = {} if env == "halfcheetah" else {"critic_layernorm": True}
  if presets.antmaze_size(dataset_id) is not None:
    gaps["double_online"] = False
  return gaps


def make_config(agent: str, offline_config, dataset_id: str, act_dim: int, configure=None,
                source: str = "the pretrain run"):
  """The agent's Config: the offline run's network fields, the dataset's PROTO settings, then
  `configure(config)` (options and --config. overrides); one that would change the networks is a
  one-line error."""
  module = registry.get(agent, registry.O2O)
  networks = {k: getattr(offline_config, k) for k in module.NETWORK_FIELDS}
  config = module.Config(**networks, **dataset_preset(agent, dataset_id))
  if configure is not None:
    config = configure(config)
  changed = [k for k in module.NETWORK_FIELDS if _same_form(getattr(config, k)) != _same_form(networks[k])]
  if changed:
    raise O2OError(f"--config.{changed[0]}: {agent} fine-tunes the networks of {source}, whose "
                   f"{', '.join(changed)} it cannot change (pass it to the pre-training run instead)")
  module.check_config(config)
  return module.resolved(config, act_dim)


def _same_form(value):
  return tuple(value) if isinstance(value, (list, tuple)) else value


def offline_rows(device, keys, count: int):
  """Per seed, `count` offline rows drawn without replacement (all rows if the dataset is smaller):
  `ReplayBuffer.initialize_with_dataset(dataset, count)`. Leaves (seeds, rows, ...)."""
  size = int(device.rewards.shape[0])
  count = min(count, size)
  index = jax.jit(jax.vmap(lambda k: jax.random.permutation(k, size)[:count]))(keys)
  return jax.tree_util.tree_map(lambda x: x[index], device)


def _prefill_count(ctx) -> int:
  count = ctx["proto_prefill"]
  return PREFILL[bool(ctx["proto_symmetric"])] if count is None else count


def finetune_phase(ctx: recipe_lib.Context) -> Path:
  """PROTO online from the pretrain run."""
  agent, pretrain_dir, log = ctx.agent, ctx.runs["pretrain"], ctx.log
  algo, _ = SOURCES[agent]
  module = registry.get(agent, registry.O2O)
  cfg = runs.read_config(pretrain_dir)        # the record only: the states are restored in `build`
  if cfg.get("phase") != "pretrain" or cfg.get("algo") != algo:
    raise O2OError(f"{pretrain_dir} is a {cfg.get('phase')} run of {cfg.get('algo', cfg.get('agent'))}: "
                   f"{agent} fine-tunes a {algo} pretrain run")
  meta = Checkpointer(pretrain_dir / "checkpoints").read_metadata()
  offline_config = runs.config_from_dict(registry.get(algo, registry.OFFLINE).Config, cfg["agent_config"])
  config = make_config(agent, offline_config, cfg["dataset"], meta["act_dim"], ctx.configure,
                       str(pretrain_dir))
  symmetric, prefill_count = bool(ctx["proto_symmetric"]), _prefill_count(ctx)
  seeds, seed, batch_size = cfg["seeds"], cfg["seed"], ctx["batch_size"]
  online_steps, warmup_steps = ctx["online_steps"], ctx["warmup_steps"]
  eval_every, eval_episodes = ctx["eval_every"], ctx["eval_episodes"]
  scale, shift = prepared.reward_transform(meta)
  offline_fraction = 0.5 if symmetric else 0.0
  run_config = {"phase": "finetune", "agent": agent, "dataset": cfg["dataset"], "env": cfg["env"],
                "seeds": seeds, "seed": seed, "from": str(pretrain_dir), "steps": online_steps,
                "offline_algo": algo, "preset": cfg.get("preset"),
                "reward_transform": {"scale": scale, "shift": shift},
                "agent_config": dataclasses.asdict(config), "warmup_steps": warmup_steps,
                "eval_every": eval_every, "eval_episodes": eval_episodes, "batch_size": batch_size,
                "symmetric": symmetric, "offline_fraction": offline_fraction,
                "prefill": prefill_count, "reference_unsupported": reference_unsupported(cfg["dataset"])}
  trust = "kl" if agent == "proto" else "trust_region"
  spec = phase_lib.OnlinePhase(
      agent=agent, dataset_id=cfg["dataset"], run_name=ctx.base_name(), config=run_config,
      loop=phase_lib.online_loop(online_steps, warmup_steps, eval_every, eval_episodes,
                                 batch_size=batch_size, offline_fraction=offline_fraction),
      plot_keys=("eval/normalized_score", "train/eta", f"train/{trust}", "train/critic_loss"),
      **ctx.phase_args())

  def build(run_dir):
    loaded = recipe_lib.load_run(pretrain_dir, phases=("pretrain",))
    states = jax.jit(jax.vmap(functools.partial(module.from_offline, config=config)))(loaded.states)
    meta = loaded.meta      # this process's seeds of the per-seed scores
    data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"], scale,
                              batch_size=batch_size, reward_shift=shift)
    local = distributed.local_seed_count(seeds)
    # Buffers hold r * scale (the shift is added to each batch), normalised observations.
    prefill = (offline_rows(data.without_shift().device,
                            seed_keys(seed + PREFILL_SEED_OFFSET, local), prefill_count)
               if prefill_count > 0 else None)
    rows = 0 if prefill is None else int(prefill.rewards.shape[1])
    log(f"[finetune] {agent} from {algo}: {online_steps} online steps, eta {config.eta0:g} -> "
        f"-{config.eta0 * config.decay / config.eta_horizon:.3g} per update (floor {config.eta_min:g}), "
        f"tau_actor {config.tau_actor:g}, buffer starts with {rows} offline rows per seed"
        + (", half of each batch offline" if symmetric else "") + f" -> {run_dir}")
    return phase_lib.OnlineTraining(
        learner=loops.Learner(ctx.phase.step, ctx.phase.act), states=states, data=data,
        metadata={**meta, "agent": agent},
        start_scores={"offline": np.asarray(meta["eval_score"], np.float32)}, prefill=prefill)

  return phase_lib.run_online_phase(spec, build, log)


def _pretrain_steps(ctx) -> int:
  return ocr_cft.pretrain_steps(ctx["budget"], SOURCES[ctx.agent][0], ctx.settings.get("pretrain_steps"))


def check(ctx: recipe_lib.Context) -> None:
  """Before any phase runs: the Config the options and --config. overrides make, and that the first
  update has data (offline rows in the buffer or a warm-up)."""
  module = registry.get(ctx.agent, registry.O2O)
  module.check_config(ctx.configure(module.Config()))
  if _prefill_count(ctx) + ctx["warmup_steps"] < 1:
    raise O2OError("--proto_prefill + --warmup_steps must be at least 1 so the first update has online-"
                   f"buffer rows (got {ctx['proto_prefill']}, {ctx['warmup_steps']})")


Option = recipe_lib.Option
OPTIONS = (
    Option("proto_eta0", None, "PROTO: initial trust-region weight eta_0 (`temp`; default 2 on MuJoCo, "
           "0.5 on AntMaze).", field="eta0", check="nonnegative"),
    Option("proto_decay", 0.9, "PROTO: eta decays by eta_0 * decay / horizon per update "
           "(`decay_speed` 0.9).", field="decay", check="nonnegative"),
    Option("proto_eta_horizon", 1_000_000, "PROTO: T_max of the eta schedule in updates (`max_steps` "
           "1e6).", kind="int", field="eta_horizon", check="positive"),
    Option("proto_eta_min", 0.0, "PROTO: floor of eta (`min_temp_online` 0).", field="eta_min",
           check="nonnegative"),
    Option("proto_tau_actor", None, "PROTO: Polyak rate of pi_k towards the online actor (default "
           "0.005 on MuJoCo, 5e-5 on AntMaze).", field="tau_actor", check="unit"),
    Option("proto_symmetric", True, "PROTO: half of each batch from the offline data and half from the "
           "online buffer (`symmetric`); false: one buffer, offline rows plus online, sampled "
           "uniformly (the released TD3 scripts).", kind="bool"),
    Option("proto_prefill", None, "PROTO: random offline rows the online buffer starts with, per seed "
           "(default 10000 with --proto_symmetric, 25000 without).", kind="int", check="nonnegative"),
)


def recipe(agent: str) -> recipe_lib.Recipe:
  algo, chain = SOURCES[agent]
  module = registry.get(agent, registry.O2O)
  name = "SAC-PROTO on CQL" if agent == "proto" else "TD3-PROTO on TD3+BC"
  pretrain = offline.pretrain_phase(
      algo, (algo,), why=f"PROTO as OCR-CFT ran it: {agent} starts from {algo}, as {chain} does",
      steps=_pretrain_steps, eval_every=lambda ctx: ctx["pretrain_eval_every"],
      preset=lambda ctx: ctx["preset"], chain=chain)
  return recipe_lib.Recipe(
      agent=agent, doc=f"{name}: {algo} pre-training (shared with {chain}), then online with a "
      "trust region to a Polyak copy of the actor whose weight decays linearly",
      config=module.Config, budgets=BUDGETS, reads=("preset", "warmup_steps"),
      defaults={"preset": "official"}, options=OPTIONS, check=check, dataset_budget=dataset_budget,
      run_name=offline.preset_run_name,
      phases=(dataclasses.replace(pretrain, accepts=lambda cfg: cfg.get("algo") == algo),
              recipe_lib.Phase("finetune", "off-policy online", finetune_phase, needs=("pretrain",),
                               step=module.update, act=module.act,
                               data="half offline rows, half the online buffer (--proto_symmetric)",
                               replay="10k random offline rows per seed (--proto_prefill)",
                               hook="the normalised score")))


RECIPES = {agent: recipe(agent) for agent in SOURCES}
