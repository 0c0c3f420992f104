"""O2PPO's recipe (agent o2ppo): IQL pre-training -> policy re-evaluation (V fitted to Monte-Carlo
returns) -> PPO fine-tuning with the auxiliary advantage.

  pretrain     IQL (--o2ppo_iql_preset, default 'none': IQL's defaults, a Gaussian actor; reused)
                                                                   runs/pretrain/iql/...-presetnone
  reevaluate   V fitted to the offline Monte-Carlo returns, pi_off frozen   runs/reevaluate/o2ppo/...
  finetune     on-policy PPO from pi_off and V, with the auxiliary advantage     runs/finetune/o2ppo/...

  python -m experiments.finetune --agent=o2ppo --budget=quick                 # embedded dataset
  python -m experiments.finetune --agent=o2ppo --dataset=o2o/hopper/medium-v0 --seeds=5
  python -m experiments.finetune --agent=direct_ppo                           # direct PPO from IQL
  python -m experiments.finetune --agent=o2ppo --o2ppo_aux=false              # the same, as an ablation
  python -m experiments.finetune --agent=o2ppo --from=runs/reevaluate/o2ppo/...

A finished phase is reused. The re-evaluation run depends only on the V settings, so O2PPO and the
direct-PPO comparison share it. Per-dataset settings follow the released code (reference §5).
`--config.<field>` overrides apply to the fine-tuning's Config; those of the fields the V fit reads
(FIT_FIELDS) apply to the V fit's too.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import config as config_lib
from o2o_jax import distributed, loops, onpolicy, presets, runs
from o2o_jax import phase as phase_lib
from o2o_jax import recipe as recipe_lib
from o2o_jax.agents import registry
from o2o_jax.agents.o2o import o2ppo
from o2o_jax.agents.online import ppo
from o2o_jax.data import prepared
from o2o_jax.errors import O2OError
from o2o_jax.recipes import offline
from o2o_jax.types import seed_keys

AGENT = "o2ppo"
# Direct PPO fine-tuning as a named agent (issue #21): O2PPO with its one switch, the auxiliary
# advantage, off; it shares O2PPO's pre-training and V fit (the same run directories).
DIRECT = "direct_ppo"
# --budget: 'paper' = 250k online env steps (paper §5 / H.5), evaluated every 2.5k steps with 10
# episodes, V fitted for 1M steps (released code), IQL for 1M; 'quick' = minutes on a laptop CPU:
# 51,200 online steps = 100 rollouts of 512 (~3 min for 5 seeds here). 12 rollouts (session 5)
# were too few for PPO to move off pi_off (BUILD_NOTES, "OCR-CFT quick benchmarks").
# o2ppo_value_hidden and ppo_rollout_length are also options: given, they win.
BUDGETS = {
    "paper": dict(pretrain_steps=1_000_000, pretrain_eval_every=10_000, reevaluate_steps=1_000_000,
                  online_steps=250_000, eval_every=2_500, eval_episodes=10, hidden_dims=(256, 256),
                  o2ppo_value_hidden=(256, 256, 256), ppo_rollout_length=2048),
    "quick": dict(pretrain_steps=10_000, pretrain_eval_every=5_000, reevaluate_steps=5_000,
                  online_steps=51_200, eval_every=2_048, eval_episodes=5, hidden_dims=(64, 64),
                  o2ppo_value_hidden=(64, 64, 64), ppo_rollout_length=512),
}
# The Config fields the V fit reads (the actor it evaluates, V, its optimiser, the returns' discount):
# `--config.` overrides of these apply to the re-evaluation run, and fine-tuning must keep them.
FIT_FIELDS = ("hidden_dims", "log_std_min", "log_std_max", "tanh_mean", "value_hidden_dims",
              "value_tanh", "value_fit_lr", "discount")


# ----------------------------------------------------------------------------- settings

def dataset_preset(dataset_id: str) -> Dict[str, Any]:
  """The released code's per-dataset O2PPO settings (reference §5 table)."""
  env, level = presets.dataset_env_and_level(dataset_id)
  expert = level in ("medium-expert", "expert")
  hopper_expert = env == "hopper" and expert
  # update_n: evaluations between pi_ref refreshes in the interval mode (O2PPO.py sets 4 when
  # `refer_with_optimal_pi` is false and the env name holds 'hopper' and 'expert').
  return {"epochs": 5 if hopper_expert else 10, "beta_factor": 2 if expert else 1,
          "max_std": 0.05 if hopper_expert else None,
          "reward_scaling": "dynamic" if env == "halfcheetah" else "none",
          "update_n": 4 if hopper_expert else 1}


def _reference_mode(value: str):
  if value == "best":
    return None
  if value == "interval":   # the released code's update_n x eval_every, resolved per dataset
    return "released"
  if value.startswith("interval:"):
    try:
      n = int(value.split(":", 1)[1])
    except ValueError:
      n = 0
    if n > 0:
      return n
  raise O2OError(f"--o2ppo_reference must be 'best', 'interval' or 'interval:N' with N > 0 "
                 f"(got {value!r})")


def reference_interval(reference: str, dataset_id: str, eval_every: int) -> Optional[int]:
  """Env steps between pi_ref refreshes (None: the best evaluated policy). 'interval' is the released
  code's `update_n * evaluate_freq` (OCR-CFT finetune/O2PPO.py: update_n = 4 for hopper-*expert
  when `refer_with_optimal_pi` is false, else 1)."""
  mode = _reference_mode(reference)
  if mode == "released":
    return dataset_preset(dataset_id)["update_n"] * eval_every
  return mode


def value_config(actor_config, algo: str, value_hidden: Sequence[int]) -> o2ppo.Config:
  """The V fit's Config: the offline actor's sizes, V's hidden sizes (before `--config.` overrides)."""
  return o2ppo.Config(hidden_dims=tuple(actor_config.hidden_dims), value_hidden_dims=tuple(value_hidden),
                      tanh_mean=(algo != "awac"))


def _max_log_std(max_std: Optional[float]) -> Optional[float]:
  return math.log(max_std) if max_std else None


def check(ctx: recipe_lib.Context) -> None:
  """Every O2PPO setting that can be refused before any phase runs (one line each; the shared
  values are checked by recipe.check first)."""
  max_std = ctx["o2ppo_max_std"]
  if max_std is not None and max_std < 0:
    raise O2OError(f"--o2ppo_max_std must be positive, or 0 for no cap (got {max_std})")
  _reference_mode(ctx.get("o2ppo_reference", "best"))
  rollout_length, minibatches = ctx["ppo_rollout_length"], ctx["ppo_minibatches"]
  if rollout_length % minibatches:
    raise O2OError(f"--ppo_rollout_length ({rollout_length}) must be a multiple of the number of "
                   f"minibatches (--ppo_minibatches={minibatches})")
  if not ctx.settings.get("from") and ctx["pretrain_steps"] < 1:
    raise O2OError("--pretrain_steps must be positive when the offline policy is trained here")


# ----------------------------------------------------------------------------- phases

def _check_actor(algo, actor_config, o2ppo_config, meta, actor_params):
  if getattr(actor_config, "deterministic", False) or getattr(actor_config, "actor_type", "gaussian") != "gaussian":
    raise O2OError(f"the {algo} actor is not a Gaussian policy, which O2PPO fine-tunes: pretrain IQL "
                   "with --o2ppo_iql_preset=none (its default), or pass a Gaussian offline run")
  expected = jax.eval_shape(lambda: ppo.make_actor(o2ppo_config, meta["act_dim"]).init(
      jax.random.PRNGKey(0), jnp.zeros((1, meta["obs_dim"]))))
  recipe_lib.check_actor_fits(expected, actor_params, (
      f"the {algo} actor does not fit O2PPO's Gaussian actor (state-independent log-std): pretrain "
      "with --offline_algo=iql"))


def reevaluate_phase(ctx: recipe_lib.Context) -> Path:
  """Policy re-evaluation for O2PPO: V fitted to the offline Monte-Carlo returns (its own run dir)."""
  pretrain_dir, log = ctx.runs["pretrain"], ctx.log
  steps, batch_size = ctx["reevaluate_steps"], ctx["o2ppo_value_batch_size"]
  prev = runs.read_config(pretrain_dir)
  dataset_id = prev["dataset"]
  reward_scaling = ctx["o2ppo_reward_scaling"]
  if reward_scaling == "auto":
    reward_scaling = dataset_preset(dataset_id)["reward_scaling"]
  # The run config needs only the offline config; the actor is restored once the run must train.
  actor_config = runs.config_from_dict(registry.get(prev["algo"], registry.OFFLINE).Config,
                                       prev["agent_config"])
  config = config_lib.apply_overrides(
      value_config(actor_config, prev["algo"], ctx["o2ppo_value_hidden"]),
      {k: v for k, v in ctx.overrides.items() if k in FIT_FIELDS})
  run_config = {"phase": "reevaluate", "agent": AGENT, "dataset": dataset_id, "env": prev["env"],
                "seeds": prev["seeds"], "seed": prev["seed"], "from": str(pretrain_dir), "steps": steps,
                "batch_size": batch_size, "reward_scaling": reward_scaling,
                "offline_algo": prev["algo"], "agent_config": dataclasses.asdict(config)}
  spec = phase_lib.OfflinePhase(
      phase="reevaluate", agent=AGENT, dataset_id=dataset_id,
      run_name=ctx.base_name() + ("" if steps else "-noreevaluate"), config=run_config,
      loop=loops.OfflineConfig(num_steps=steps, batch_size=batch_size, chunk=min(steps, 5_000),
                               eval_every=steps, eval_episodes=ctx["eval_episodes"]),
      score_key="offline_score", desc="fit V",
      summary=lambda scores, _: phase_lib.summary_line("[reevaluate] pi_off score", scores),
      **ctx.phase_args())

  def build(run_dir):
    loaded = recipe_lib.load_run(pretrain_dir, phases=("pretrain",), want="a pretrain run")
    actor_params, meta = loaded.states.actor.params, loaded.meta
    _check_actor(prev["algo"], loaded.agent_config, config, meta, actor_params)
    data = prepared.load_data(dataset_id, meta["obs_mean"], meta["obs_std"], 1.0, batch_size=1)
    ds = data.dataset
    if batch_size > ds.size:
      raise O2OError(f"--o2ppo_value_batch_size ({batch_size}) is larger than the dataset ({ds.size} "
                     "transitions)")
    returns, scaler = onpolicy.value_targets(ds, config.discount, reward_scaling == "dynamic")
    local = distributed.local_seed_count(prev["seeds"])   # this process's seeds (all with one)
    states = jax.jit(jax.vmap(lambda k, p: o2ppo.init_value_fit(k, meta["obs_dim"], meta["act_dim"],
                                                                 config, p)))(
        seed_keys(prev["seed"] + 1, local), actor_params)
    log(f"[reevaluate] o2ppo: fitting V to the Monte-Carlo returns of {len(ds.episode_starts)} "
        f"episodes (mean return-to-go {float(returns.mean()):.1f}) for {steps} steps -> {run_dir}")
    # The dataset pass's scaler statistics (count, mean, S), which every seed starts the online
    # phase from.
    dataset_stats = None
    if scaler is not None:
      dataset_stats = {k: v for k, v in scaler.per_seed(0).items() if k != "running"}
    out_meta = {**{k: meta[k] for k in ("dataset_id", "env_id", "obs_dim", "act_dim", "obs_mean",
                                        "obs_std")},
                "reward_transform": {"scale": 1.0, "shift": 0.0,
                                     "dynamic": reward_scaling == "dynamic"},
                "reward_scaler": dataset_stats,
                "phase": "reevaluate", "agent": AGENT, "offline_algo": prev["algo"]}
    # V targets travel in the rewards field.
    return phase_lib.Training(loops.Learner(ctx.phase.step, ctx.phase.act), states,
                              data.device.replace(rewards=returns), data, out_meta)

  return phase_lib.run_offline_phase(spec, build, log)


def _fit_template(cfg: Dict[str, Any], meta: Dict[str, Any]):
  """The V fit's state shapes (every seed of the run) for `load_run`: eval_shape compiles nothing."""
  fit_config = runs.config_from_dict(o2ppo.Config, cfg["agent_config"])
  obs_dim, act_dim = meta["obs_dim"], meta["act_dim"]

  def init(k):
    params = ppo.make_actor(fit_config, act_dim).init(k, jnp.zeros((1, obs_dim)))
    return o2ppo.init_value_fit(k, obs_dim, act_dim, fit_config, params)

  return jax.eval_shape(jax.vmap(init), seed_keys(cfg["seed"] + 1, cfg["seeds"]))


def finetune_config(ctx: recipe_lib.Context, fit_config: o2ppo.Config, dataset_id: str) -> o2ppo.Config:
  """The fine-tuning's Config: the V fit's, the budget's rollouts and online steps, the dataset's
  preset (epochs, beta over 1x/2x the online steps, the std cap), then the options and the
  `--config.` overrides."""
  preset, online_steps = dataset_preset(dataset_id), ctx["online_steps"]
  config = ctx.configure(dataclasses.replace(
      fit_config, rollout_length=ctx["ppo_rollout_length"], lr_decay_steps=online_steps,
      beta_steps=online_steps * preset["beta_factor"], epochs=preset["epochs"],
      max_log_std=_max_log_std(preset["max_std"])))
  try:
    o2ppo.check_config(config)
  except ValueError as e:
    raise O2OError(f"invalid PPO settings: {e} (--ppo_rollout_length / --ppo_minibatches)") from None
  changed = [f for f in FIT_FIELDS if getattr(config, f) != getattr(fit_config, f)]
  if changed:
    raise O2OError(f"{config_lib.PREFIX}{changed[0]}: the V fit this run starts from has "
                   f"{changed[0]}={getattr(fit_config, changed[0])!r}, which fine-tuning keeps (pass "
                   "it when the V fit runs, or a re-evaluation run with it)")
  if online_steps < config.rollout_length:
    raise O2OError(f"--online_steps ({online_steps}) is shorter than one rollout "
                   f"(--ppo_rollout_length={config.rollout_length}): no update would run")
  return config


def finetune_phase(ctx: recipe_lib.Context) -> Path:
  """PPO fine-tuning with the auxiliary advantage (or without: direct PPO); summary per seed.
  Resumable: snapshots every --checkpoint_every env steps (at rollout boundaries) under
  <run_dir>/progress, see onpolicy.run_onpolicy."""
  reevaluate_dir, log = ctx.runs["reevaluate"], ctx.log
  prev = runs.read_config(reevaluate_dir)
  dataset_id = prev["dataset"]
  online_steps, eval_every, eval_episodes = ctx["online_steps"], ctx["eval_every"], ctx["eval_episodes"]
  reference = ctx.get("o2ppo_reference", "best")
  fit_config = runs.config_from_dict(o2ppo.Config, prev["agent_config"])
  if ctx.agent == DIRECT:
    fit_config = dataclasses.replace(fit_config, aux=False)
  config = finetune_config(ctx, fit_config, dataset_id)
  interval = reference_interval(reference, dataset_id, eval_every)
  run_config = {"phase": "finetune", "agent": ctx.agent, "dataset": dataset_id, "env": prev["env"],
                "seeds": prev["seeds"], "seed": prev["seed"], "from": str(reevaluate_dir),
                "steps": online_steps, "eval_every": eval_every, "eval_episodes": eval_episodes,
                "reference": reference, "agent_config": dataclasses.asdict(config)}
  if interval is not None:
    run_config["reference_interval"] = interval
  suffix = ("" if config.aux or ctx.agent == DIRECT else "-noaux") + (
      "-broadcast" if config.aux and config.aux_pairing == "broadcast" else "")
  spec = phase_lib.OnPolicyPhase(
      agent=ctx.agent, dataset_id=dataset_id, run_name=ctx.base_name() + suffix, config=run_config,
      loop=onpolicy.OnPolicyConfig(total_steps=online_steps, rollout_length=config.rollout_length,
                                   eval_every=eval_every, eval_episodes=eval_episodes),
      label=AGENT if config.aux else "ppo",
      plot_keys=("eval/normalized_score", "train/beta", "train/approx_kl", "train/value_loss"),
      plot_title=f"{'O2PPO' if config.aux else 'direct PPO'} fine-tuning on {dataset_id}",
      **ctx.phase_args())

  def build(run_dir):
    loaded = recipe_lib.load_run(reevaluate_dir, phases=("reevaluate",), template=_fit_template,
                                 want="an o2ppo re-evaluation run")
    fitted, meta = loaded.states, loaded.meta
    obs_dim, act_dim = meta["obs_dim"], meta["act_dim"]
    local = distributed.local_seed_count(prev["seeds"])  # this process's seeds (all with one)
    offline_score = jnp.asarray(meta["offline_score"], jnp.float32)

    def start(k, actor_params, value_params, score):   # pi_ref = pi_off, best score = pi_off's
      s = o2ppo.init(k, obs_dim, act_dim, config, actor_params, value_params)
      return o2ppo.init_reference(s, score, score)

    states = jax.jit(jax.vmap(start))(seed_keys(prev["seed"] + 2, local),
                                      fitted.offline_actor_params, fitted.value.params, offline_score)
    refresh = jax.jit(jax.vmap(o2ppo.refresh_reference))
    adopt = jax.jit(jax.vmap(o2ppo.adopt_reference))

    def on_eval(step, s, score):
      if interval is None:
        return refresh(s, jnp.asarray(score, jnp.float32))
      if step % interval == 0 or (step // interval) > ((step - eval_every) // interval):
        return adopt(s, jnp.asarray(score, jnp.float32))
      return s

    data = prepared.load_data(dataset_id, meta["obs_mean"], meta["obs_std"], 1.0, batch_size=1)
    reward_fn = None
    if meta.get("reward_scaler"):   # one scaler per seed, each from the dataset pass's statistics
      reward_fn = onpolicy.RewardScaler(config.discount, local, meta["reward_scaler"])
    what = ("O2PPO (auxiliary advantage, " + config.aux_pairing + " pairing)" if config.aux
            else "direct PPO from the offline policy")
    log(f"[finetune] {what}: {online_steps} online steps, rollouts of {config.rollout_length}, "
        f"{config.epochs} epochs, beta over {config.beta_steps} steps, reference {reference} -> "
        f"{run_dir}")
    return phase_lib.OnPolicyTraining(
        agent=o2ppo, states=states, data=data, metadata=meta,
        start_scores={"offline": np.asarray(offline_score)}, on_eval=on_eval, reward_fn=reward_fn)

  return phase_lib.run_online_phase(spec, build, log)


# ----------------------------------------------------------------------------- the recipe

def _pretrain_run_name(ctx: recipe_lib.Context) -> str:
  preset = ctx["o2ppo_iql_preset"]
  return ctx.base_name() + ("" if preset == "corl" else f"-preset{preset}")


Option = recipe_lib.Option
OPTIONS = (
    Option("o2ppo_aux", True, "O2PPO's auxiliary advantage (eq. 17-18); false = direct PPO "
           "fine-tuning of the IQL policy (paper appendix A, figure 4).", kind="bool", field="aux"),
    Option("o2ppo_aux_pairing", "paired", "How A_alpha meets the GAE advantage: 'paired' per sample "
           "(paper eq. 18) or 'broadcast' (the released code's [rollout x rollout] matrix; each "
           "minibatch row's ratio meets every column).", kind="enum", choices=("paired", "broadcast"),
           field="aux_pairing"),
    Option("o2ppo_aux_clip", "per_dim", "Softplus floor of eq. 51: per action dimension (paper) or on "
           "the sum over dimensions with floor 4|A| (released code).", kind="enum",
           choices=("per_dim", "sum"), field="aux_clip_per_dim", convert=lambda v: v == "per_dim"),
    Option("o2ppo_aux_alpha", 2.0, "alpha of eq. 17 (2 = the paper's 2*std(A) rescaling).",
           field="aux_alpha"),
    Option("o2ppo_beta_steps", None, "Env steps over which beta anneals from 1 to 0 (default: the "
           "online steps; twice that for medium-expert/expert sets, H.5).", kind="int",
           field="beta_steps", check="positive"),
    Option("o2ppo_reference", "best", "pi_ref update: 'best' (the best evaluated policy, per seed), "
           "'interval:N' (pi_on every N env steps; paper C.3) or 'interval' (the released code's "
           "interval: every update_n evaluations, update_n 4 on hopper medium-expert/expert, else 1).",
           kind="str"),
    Option("o2ppo_reward_scaling", "auto", "Reward scaling: 'dynamic' divides rewards by the running "
           "std of the discounted return (Uni-O4); 'auto' = dynamic on halfcheetah, none elsewhere "
           "(released code).", kind="enum", choices=("auto", "none", "dynamic")),
    Option("o2ppo_max_std", None, "Cap on the policy std at the start of fine-tuning (default: 0.05 on "
           "hopper medium-expert/expert as H.5, none elsewhere; 0 = no cap).", field="max_log_std",
           convert=_max_log_std),
    Option("o2ppo_epochs", None, "PPO epochs per rollout (default: 5 on hopper medium-expert/expert, "
           "10 elsewhere, as the released code).", kind="int", field="epochs", check="positive"),
    Option("o2ppo_value_hidden", None, "Hidden sizes of the tanh value net (paper 256,256,256; quick "
           "64,64,64).", kind="list"),
    Option("o2ppo_value_batch_size", 512, "Batch size of the V fitting (released 512).", kind="int",
           check="positive"),
    Option("o2ppo_iql_preset", "none", "Hyperparameter preset of the IQL pre-training: 'none' = IQL's "
           "defaults with a Gaussian actor (the released OCR-CFT code); 'corl' uses CORL's "
           "per-dataset settings (a deterministic actor on hopper-medium, which O2PPO cannot use).",
           kind="enum", choices=tuple(presets.PRESETS)),
    Option("ppo_rollout_length", None, "Env steps per seed between PPO updates (paper 2048, quick "
           "512).", kind="int", check="positive"),
    Option("ppo_minibatches", 16, "Minibatches per epoch (2048 / 16 = 128 in the paper).", kind="int",
           field="num_minibatches", check="positive"),
    Option("ppo_actor_lr", 3e-5, "Actor learning rate (decays linearly to 0 over the online steps).",
           field="actor_lr"),
    Option("ppo_critic_lr", 2e-4, "Critic learning rate (decays linearly to 0 over the online steps).",
           field="critic_lr"),
    Option("ppo_clip_eps", 0.2, "PPO ratio clip epsilon.", field="clip_eps"),
    Option("ppo_entropy_coef", 0.01, "Entropy bonus coefficient.", field="entropy_coef"),
)

# The options a direct_ppo run has no use for (the auxiliary advantage's and pi_ref's).
AUX_OPTIONS = ("o2ppo_aux", "o2ppo_aux_pairing", "o2ppo_aux_clip", "o2ppo_aux_alpha", "o2ppo_beta_steps",
               "o2ppo_reference")


def _recipe(agent: str, doc: str) -> recipe_lib.Recipe:
  direct = agent == DIRECT
  return recipe_lib.Recipe(
      agent=agent, doc=doc, config=o2ppo.Config, budgets=BUDGETS,
      reads=("offline_algo", "reevaluate_steps"), check=check,
      options=tuple(o for o in OPTIONS if not (direct and o.name in AUX_OPTIONS)),
      phases=(offline.pretrain_phase("iql", preset=lambda ctx: ctx["o2ppo_iql_preset"],
                                     run_name=_pretrain_run_name),
              recipe_lib.Phase("reevaluate", "fit", reevaluate_phase, needs=("pretrain",),
                               accepts=lambda cfg: cfg.get("agent") == AGENT,
                               step=o2ppo.value_fit_step, act=o2ppo.offline_act,
                               data="the offline dataset, V targets = Monte-Carlo returns (with the "
                                    "dynamic reward scaler's dataset pass where it applies)"),
              recipe_lib.Phase("finetune", "on-policy online", finetune_phase, needs=("reevaluate",),
                               step=o2ppo.update, act=o2ppo.act,
                               data="rollouts of --ppo_rollout_length env steps per seed (explore: "
                                    "o2ppo.explore), advantages normalised over each rollout",
                               hook="" if direct else
                                    "pi_ref refresh (--o2ppo_reference: the best evaluated policy, "
                                    "or every N env steps)")))


RECIPES = {AGENT: _recipe(AGENT, "O2PPO: IQL pre-training, V fitted to the offline Monte-Carlo "
                          "returns, then on-policy PPO fine-tuning with the auxiliary advantage"),
           DIRECT: _recipe(DIRECT, "Direct PPO fine-tuning from IQL: O2PPO's V fit, then plain PPO "
                           "(O2PPO without the auxiliary advantage; paper appendix A, figure 4)")}
