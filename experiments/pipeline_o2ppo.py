"""O2PPO end to end (`python -m experiments.finetune --agent=o2ppo`): IQL pre-training -> policy
re-evaluation (V fitted to Monte-Carlo returns) -> PPO fine-tuning with the auxiliary advantage.

  python -m experiments.finetune --agent=o2ppo --budget=quick                 # embedded dataset
  python -m experiments.finetune --agent=o2ppo --dataset=o2o/hopper/medium-v0 --seeds=5
  python -m experiments.finetune --agent=o2ppo --o2ppo_aux=false              # direct PPO from IQL
  python -m experiments.finetune --agent=o2ppo --from=runs/reevaluate/o2ppo/...

Run directories: runs/pretrain/iql/..., runs/reevaluate/o2ppo/..., runs/finetune/o2ppo/...; a
finished phase is reused. The re-evaluation run depends only on the V settings, so O2PPO and the
direct-PPO comparison share it. Per-dataset settings follow the released code (reference §5).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from absl import flags

from experiments import common
from o2o_jax import presets

AGENT = "o2ppo"
# --budget: 'paper' = 250k online env steps (paper §5 / H.5), evaluated every 2.5k steps with 10
# episodes, V fitted for 1M steps (released code), IQL for 1M; 'quick' = minutes on a laptop CPU:
# 51,200 online steps = 100 rollouts of 512 (~3 min for 5 seeds here). 12 rollouts (session 5)
# were too few for PPO to move off pi_off (BUILD_NOTES, "OCR-CFT quick benchmarks").
BUDGETS = {
    "paper": dict(pretrain_steps=1_000_000, pretrain_eval_every=10_000, reevaluate_steps=1_000_000,
                  online_steps=250_000, eval_every=2_500, eval_episodes=10, hidden_dims=(256, 256),
                  value_hidden=(256, 256, 256), rollout_length=2048),
    "quick": dict(pretrain_steps=10_000, pretrain_eval_every=5_000, reevaluate_steps=5_000,
                  online_steps=51_200, eval_every=2_048, eval_episodes=5, hidden_dims=(64, 64),
                  value_hidden=(64, 64, 64), rollout_length=512),
}

flags.DEFINE_bool("o2ppo_aux", True, "O2PPO's auxiliary advantage (eq. 17-18); false = direct PPO "
                  "fine-tuning of the IQL policy (paper appendix A, figure 4).")
flags.DEFINE_enum("o2ppo_aux_pairing", "paired", ["paired", "broadcast"],
                  "How A_alpha meets the GAE advantage: 'paired' per sample (paper eq. 18) or "
                  "'broadcast' (the released code's [rollout x rollout] matrix; each minibatch "
                  "row's ratio meets every column).")
flags.DEFINE_enum("o2ppo_aux_clip", "per_dim", ["per_dim", "sum"],
                  "Softplus floor of eq. 51: per action dimension (paper) or on the sum over "
                  "dimensions with floor 4|A| (released code).")
flags.DEFINE_float("o2ppo_aux_alpha", 2.0, "alpha of eq. 17 (2 = the paper's 2*std(A) rescaling).")
flags.DEFINE_integer("o2ppo_beta_steps", None, "Env steps over which beta anneals from 1 to 0 "
                     "(default: the online steps; twice that for medium-expert/expert sets, H.5).")
flags.DEFINE_string("o2ppo_reference", "best", "pi_ref update: 'best' (the best evaluated policy, per "
                    "seed), 'interval:N' (pi_on every N env steps; paper C.3) or 'interval' (the "
                    "released code's interval: every update_n evaluations, update_n 4 on hopper "
                    "medium-expert/expert, else 1).")
flags.DEFINE_enum("o2ppo_reward_scaling", "auto", ["auto", "none", "dynamic"],
                  "Reward scaling: 'dynamic' divides rewards by the running std of the discounted "
                  "return (Uni-O4); 'auto' = dynamic on halfcheetah, none elsewhere (released code).")
flags.DEFINE_float("o2ppo_max_std", None, "Cap on the policy std at the start of fine-tuning (default: "
                   "0.05 on hopper medium-expert/expert as H.5, none elsewhere; 0 = no cap).")
flags.DEFINE_integer("o2ppo_epochs", None, "PPO epochs per rollout (default: 5 on hopper "
                     "medium-expert/expert, 10 elsewhere, as the released code).")
flags.DEFINE_list("o2ppo_value_hidden", None, "Hidden sizes of the tanh value net (paper 256,256,256; "
                  "quick 64,64,64).")
flags.DEFINE_integer("o2ppo_value_batch_size", 512, "Batch size of the V fitting (released 512).")
flags.DEFINE_enum("o2ppo_iql_preset", "none", list(presets.PRESETS),
                  "Hyperparameter preset of the IQL pre-training: 'none' = IQL's defaults with a "
                  "Gaussian actor (the released OCR-CFT code); 'corl' uses CORL's per-dataset "
                  "settings (a deterministic actor on hopper-medium, which O2PPO cannot use).")
flags.DEFINE_integer("ppo_rollout_length", None, "Env steps per seed between PPO updates (paper 2048, "
                     "quick 512).")
flags.DEFINE_integer("ppo_minibatches", 16, "Minibatches per epoch (2048 / 16 = 128 in the paper).")
flags.DEFINE_float("ppo_actor_lr", 3e-5, "Actor learning rate (decays linearly to 0 over the online "
                   "steps).")
flags.DEFINE_float("ppo_critic_lr", 2e-4, "Critic learning rate (decays linearly to 0 over the online "
                   "steps).")
flags.DEFINE_float("ppo_clip_eps", 0.2, "PPO ratio clip epsilon.")
flags.DEFINE_float("ppo_entropy_coef", 0.01, "Entropy bonus coefficient.")


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
  from o2o_jax.errors import O2OError
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


# ----------------------------------------------------------------------------- phases

def _value_config(actor_config, algo: str, value_hidden: Sequence[int]):
  from o2o_jax.agents.o2o import o2ppo
  return o2ppo.Config(hidden_dims=tuple(actor_config.hidden_dims), value_hidden_dims=tuple(value_hidden),
                      tanh_mean=(algo != "awac"))


def _check_actor(algo, actor_config, o2ppo_config, meta, actor_params):
  import jax
  from o2o_jax.agents.online import ppo
  from o2o_jax.errors import O2OError
  if getattr(actor_config, "deterministic", False) or getattr(actor_config, "actor_type", "gaussian") != "gaussian":
    raise O2OError(f"the {algo} actor is not a Gaussian policy, which O2PPO fine-tunes: pretrain IQL "
                   "with --o2ppo_iql_preset=none (its default), or pass a Gaussian offline run")
  expected = jax.eval_shape(lambda: ppo.make_actor(o2ppo_config, meta["act_dim"]).init(
      jax.random.PRNGKey(0), jax.numpy.zeros((1, meta["obs_dim"]))))
  given = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), actor_params)
  same = jax.tree_util.tree_structure(expected) == jax.tree_util.tree_structure(given) and all(
      a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(expected),
                                         jax.tree_util.tree_leaves(given)))
  if not same:
    raise O2OError(f"the {algo} actor does not fit O2PPO's Gaussian actor (state-independent log-std): "
                   "pretrain with --offline_algo=iql")


def reevaluate(*, pretrain_dir: Path, steps: int, value_hidden: Sequence[int], batch_size: int,
               eval_episodes: int, reward_scaling: str, out_dir: str, run_name: str, restart: bool,
               progress: bool, checkpoint_every: Optional[int] = None, log=print) -> Path:
  """Policy re-evaluation for O2PPO: V fitted to the offline Monte-Carlo returns (its own run dir)."""
  import jax
  from o2o_jax.recipes import offline
  from o2o_jax import distributed, loops, onpolicy, runs
  from o2o_jax import phase as phase_lib
  from o2o_jax.agents.o2o import o2ppo
  from o2o_jax.agents import registry
  from o2o_jax.data import prepared
  from o2o_jax.errors import O2OError
  from o2o_jax.types import seed_keys

  prev = runs.read_config(pretrain_dir)
  if prev.get("phase") != "pretrain":
    raise O2OError(f"{pretrain_dir} is a '{prev.get('phase')}' run, not a pretrain run")
  # The run config needs only the offline config; the actor is restored once the run must train.
  actor_config = runs.config_from_dict(registry.get(prev["algo"], registry.OFFLINE).Config,
                                       prev["agent_config"])
  config = _value_config(actor_config, prev["algo"], value_hidden)
  dataset_id = prev["dataset"]
  run_config = {"phase": "reevaluate", "agent": AGENT, "dataset": dataset_id, "env": prev["env"],
                "seeds": prev["seeds"], "seed": prev["seed"], "from": str(pretrain_dir), "steps": steps,
                "batch_size": batch_size, "reward_scaling": reward_scaling,
                "offline_algo": prev["algo"], "agent_config": dataclasses.asdict(config)}
  spec = phase_lib.OfflinePhase(
      phase="reevaluate", agent=AGENT, dataset_id=dataset_id, run_name=run_name, config=run_config,
      loop=loops.OfflineConfig(num_steps=steps, batch_size=batch_size, chunk=min(steps, 5_000),
                               eval_every=steps, eval_episodes=eval_episodes),
      score_key="offline_score", desc="fit V",
      summary=lambda scores, _: phase_lib.summary_line("[reevaluate] pi_off score", scores),
      out_dir=out_dir, restart=restart, progress=progress, checkpoint_every=checkpoint_every)

  def build(run_dir):
    actor_params, actor_config, meta = offline.offline_actor_params(pretrain_dir)
    _check_actor(prev["algo"], actor_config, config, meta, actor_params)
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
    return phase_lib.Training(loops.Learner(o2ppo.value_fit_step, o2ppo.offline_act), states,
                              data.device.replace(rewards=returns), data, out_meta)

  return phase_lib.run_offline_phase(spec, build, log)


def finetune(*, reevaluate_dir: Path, online_steps: int, rollout_length: int, eval_every: int,
             eval_episodes: int, overrides: Dict[str, Any], beta_steps: Optional[int],
             reference: str, out_dir: str, run_name: str, restart: bool, progress: bool,
             checkpoint_every: Optional[int] = None, log=print) -> Path:
  """PPO fine-tuning with the auxiliary advantage (or without: direct PPO); summary per seed.
  Resumable: snapshots every `checkpoint_every` env steps (at rollout boundaries) under
  <run_dir>/progress, see onpolicy.run_onpolicy."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from o2o_jax.recipes import ocr_cft
  from o2o_jax import distributed, onpolicy, runs
  from o2o_jax import phase as phase_lib
  from o2o_jax.agents.o2o import o2ppo
  from o2o_jax.agents.online import ppo
  from o2o_jax.checkpoints import Checkpointer
  from o2o_jax.data import prepared
  from o2o_jax.errors import O2OError
  from o2o_jax.types import seed_keys

  prev = runs.read_config(reevaluate_dir)
  if prev.get("phase") != "reevaluate" or prev.get("agent") != AGENT:
    raise O2OError(f"{reevaluate_dir} is not an o2ppo re-evaluation run")
  dataset_id = prev["dataset"]
  preset = dataset_preset(dataset_id)
  fit_config = runs.config_from_dict(o2ppo.Config, prev["agent_config"])
  config = dataclasses.replace(
      fit_config, rollout_length=rollout_length, lr_decay_steps=online_steps,
      beta_steps=beta_steps or online_steps * preset["beta_factor"],
      **{"epochs": preset["epochs"], **overrides})
  try:
    o2ppo.check_config(config)
  except ValueError as e:
    raise O2OError(f"invalid PPO settings: {e} (--ppo_rollout_length / --ppo_minibatches)") from None
  if online_steps < rollout_length:
    raise O2OError(f"--online_steps ({online_steps}) is shorter than one rollout "
                   f"(--ppo_rollout_length={rollout_length}): no update would run")
  interval = reference_interval(reference, dataset_id, eval_every)
  run_config = {"phase": "finetune", "agent": AGENT, "dataset": dataset_id, "env": prev["env"],
                "seeds": prev["seeds"], "seed": prev["seed"], "from": str(reevaluate_dir),
                "steps": online_steps, "eval_every": eval_every, "eval_episodes": eval_episodes,
                "reference": reference, "agent_config": dataclasses.asdict(config)}
  if interval is not None:
    run_config["reference_interval"] = interval
  run_dir, done = ocr_cft.prepare_online_run(
      agent_name=AGENT, dataset_id=dataset_id, run_config=run_config, online_steps=online_steps,
      out_dir=out_dir, run_name=run_name, restart=restart, log=log)
  if done:
    return run_dir

  meta = Checkpointer(reevaluate_dir / "checkpoints").read_metadata()
  obs_dim, act_dim = meta["obs_dim"], meta["act_dim"]
  keys = seed_keys(prev["seed"] + 1, prev["seeds"])   # the template holds every seed of the run
  local = distributed.local_seed_count(prev["seeds"])  # this process's seeds (all with one)

  def fit_template(k):
    params = ppo.make_actor(fit_config, act_dim).init(k, jnp.zeros((1, obs_dim)))
    return o2ppo.init_value_fit(k, obs_dim, act_dim, fit_config, params)

  # The restore template only needs shapes: eval_shape compiles nothing. Restored: this process's seeds.
  fitted, meta = runs.restore_result(reevaluate_dir, jax.eval_shape(jax.vmap(fit_template), keys))
  offline_score = jnp.asarray(meta["offline_score"], jnp.float32)

  def start(k, actor_params, value_params, score):   # pi_ref = pi_off, best score = pi_off's
    s = o2ppo.init(k, obs_dim, act_dim, config, actor_params, value_params)
    return o2ppo.init_reference(s, score, score)

  states = jax.jit(jax.vmap(start))(seed_keys(prev["seed"] + 2, local),
                                    fitted.offline_actor_params, fitted.value.params, offline_score)
  refresh = jax.jit(jax.vmap(o2ppo.refresh_reference))
  adopt = jax.jit(jax.vmap(o2ppo.adopt_reference))
  data = prepared.load_data(dataset_id, meta["obs_mean"], meta["obs_std"], 1.0, batch_size=1)
  reward_fn = None
  if meta.get("reward_scaler"):   # one scaler per seed, each from the dataset pass's statistics
    reward_fn = onpolicy.RewardScaler(config.discount, local, meta["reward_scaler"])
  what = ("O2PPO (auxiliary advantage, " + config.aux_pairing + " pairing)" if config.aux
          else "direct PPO from the offline policy")
  log(f"[finetune] {what}: {online_steps} online steps, rollouts of {rollout_length}, "
      f"{config.epochs} epochs, beta over {config.beta_steps} steps, reference {reference} -> {run_dir}")

  writer, ckpt = phase_lib.writer_and_checkpointer(run_dir, local)
  snapshots = phase_lib.snapshots(run_dir, checkpoint_every)
  if snapshots.latest_step() is None:
    writer.write(0, {"eval/normalized_score": np.asarray(offline_score),
                     "eval/offline_score": np.asarray(offline_score)})

  def on_eval(step, s, returns):
    score = data.normalized_score(returns).mean(1)
    if interval is None:
      s = refresh(s, jnp.asarray(score, jnp.float32))
    elif step % interval == 0 or (step // interval) > ((step - eval_every) // interval):
      s = adopt(s, jnp.asarray(score, jnp.float32))
    if step >= online_steps:   # with every seed's reward-scaler state (per-seed arrays, gathered)
      scaler_state = ({f"reward_scaler_{k}": np.asarray(v) for k, v in reward_fn.state(True).items()}
                      if reward_fn is not None else {})
      ckpt.save(step, s, {**meta, "phase": "finetune", "step": step, "final_score": score,
                          **scaler_state})
    return s

  loop_config = onpolicy.OnPolicyConfig(total_steps=online_steps, rollout_length=rollout_length,
                                        eval_every=eval_every, eval_episodes=eval_episodes)
  t0 = time.time()
  _, history = onpolicy.run_onpolicy(
      o2ppo, states, make_env=data.make_env, num_seeds=local, seed=prev["seed"],
      config=loop_config, obs_mean=data.obs_mean, obs_std=data.obs_std, metrics_writer=writer,
      on_eval=on_eval, normalized_score=data.normalized_score, reward_fn=reward_fn,
      progress=progress and distributed.is_primary(),
      desc="finetune o2ppo" if config.aux else "finetune ppo",
      snapshots=snapshots, phase="finetune", log=log)
  writer.close()
  ckpt.close()
  snapshots.discard()
  # Every process's seeds (collectives, in the same order everywhere); the primary writes the files.
  scores = [(h["step"], distributed.gather_seeds(data.normalized_score(h["returns"]).mean(1)))
            for h in history]
  start_scores = {"offline": distributed.gather_seeds(np.asarray(offline_score))}
  phase_lib.plot(run_dir, ["eval/normalized_score", "train/beta", "train/approx_kl", "train/value_loss"],
                 f"{'O2PPO' if config.aux else 'direct PPO'} fine-tuning on {dataset_id}")
  ocr_cft.write_summary(run_dir, dataset_id=dataset_id, agent_name=AGENT if config.aux else "ppo",
                       seeds=prev["seeds"], start_scores=start_scores, scores=scores,
                       wall_time_s=time.time() - t0)
  return run_dir


# ----------------------------------------------------------------------------- launcher entry

def run(FLAGS):
  """Called by experiments.finetune for --agent=o2ppo; runs the missing phases."""
  import math
  from o2o_jax.recipes import offline
  from o2o_jax import runs
  from o2o_jax.errors import O2OError
  d = common.finetune_budget(BUDGETS, FLAGS, nonnegative=("pretrain_steps", "reevaluate_steps"))
  value_hidden = (tuple(int(h) for h in FLAGS.o2ppo_value_hidden) if FLAGS.o2ppo_value_hidden
                  else d["value_hidden"])
  rollout_length = FLAGS.ppo_rollout_length or d["rollout_length"]
  for name in ("ppo_rollout_length", "ppo_minibatches", "o2ppo_epochs", "o2ppo_beta_steps",
               "o2ppo_value_batch_size"):
    value = getattr(FLAGS, name)
    if value is not None and value < 1:
      raise O2OError(f"--{name} must be positive (got {value})")
  if FLAGS.o2ppo_max_std is not None and FLAGS.o2ppo_max_std < 0:
    raise O2OError(f"--o2ppo_max_std must be positive, or 0 for no cap (got {FLAGS.o2ppo_max_std})")
  _reference_mode(FLAGS.o2ppo_reference)
  if rollout_length % FLAGS.ppo_minibatches:
    raise O2OError(f"--ppo_rollout_length ({rollout_length}) must be a multiple of the number of "
                   f"minibatches (--ppo_minibatches={FLAGS.ppo_minibatches})")
  overrides = {"aux": FLAGS.o2ppo_aux, "aux_pairing": FLAGS.o2ppo_aux_pairing,
               "aux_clip_per_dim": FLAGS.o2ppo_aux_clip == "per_dim", "aux_alpha": FLAGS.o2ppo_aux_alpha,
               "num_minibatches": FLAGS.ppo_minibatches, "actor_lr": FLAGS.ppo_actor_lr,
               "critic_lr": FLAGS.ppo_critic_lr, "clip_eps": FLAGS.ppo_clip_eps,
               "entropy_coef": FLAGS.ppo_entropy_coef}
  if FLAGS.o2ppo_epochs is not None:
    overrides["epochs"] = FLAGS.o2ppo_epochs
  name = FLAGS.run_name or f"seed{FLAGS.seed}x{FLAGS.seeds}"
  common_args = dict(out_dir=FLAGS.out_dir, restart=FLAGS.restart, progress=FLAGS.progress,
                     checkpoint_every=FLAGS.checkpoint_every)

  start, from_dir = "pretrain", None
  if getattr(FLAGS, "from"):
    from_dir = Path(getattr(FLAGS, "from"))
    cfg = runs.read_config(from_dir)
    phase = cfg.get("phase")
    if phase == "pretrain":
      start = "reevaluate"
    elif phase == "reevaluate" and cfg.get("agent") == AGENT:
      start = "finetune"
    else:
      raise O2OError(f"--from={from_dir} is a '{phase}' run of {cfg.get('agent', cfg.get('algo'))}: "
                     "pass a pretrain run or an o2ppo reevaluate run")
  dataset_id = FLAGS.dataset
  if start == "pretrain":
    algo = FLAGS.offline_algo or "iql"
    if d["pretrain_steps"] < 1:
      raise O2OError("--pretrain_steps must be positive when the offline policy is trained here")
    preset = FLAGS.o2ppo_iql_preset
    from_dir = offline.pretrain(algo=algo, dataset_id=dataset_id, seeds=FLAGS.seeds, seed=FLAGS.seed,
                               num_steps=d["pretrain_steps"], eval_every=min(d["pretrain_eval_every"],
                                                                             max(d["pretrain_steps"], 1)),
                               eval_episodes=d["eval_episodes"], hidden_dims=d["hidden_dims"],
                               batch_size=FLAGS.batch_size, preset=preset,
                               run_name=name if preset == "corl" else f"{name}-preset{preset}",
                               **common_args)
    start = "reevaluate"
  if start == "reevaluate":
    dataset_id = runs.read_config(from_dir)["dataset"]
    reward_scaling = FLAGS.o2ppo_reward_scaling
    if reward_scaling == "auto":
      reward_scaling = dataset_preset(dataset_id)["reward_scaling"]
    from_dir = reevaluate(pretrain_dir=from_dir, steps=d["reevaluate_steps"], value_hidden=value_hidden,
                          batch_size=FLAGS.o2ppo_value_batch_size, eval_episodes=d["eval_episodes"],
                          reward_scaling=reward_scaling,
                          run_name=name + ("" if d["reevaluate_steps"] else "-noreevaluate"),
                          **common_args)
  dataset_id = runs.read_config(from_dir)["dataset"]
  max_std = FLAGS.o2ppo_max_std if FLAGS.o2ppo_max_std is not None else dataset_preset(dataset_id)["max_std"]
  overrides["max_log_std"] = math.log(max_std) if max_std else None
  suffix = "" if FLAGS.o2ppo_aux else "-noaux"
  suffix += "-broadcast" if FLAGS.o2ppo_aux and FLAGS.o2ppo_aux_pairing == "broadcast" else ""
  finetune(reevaluate_dir=from_dir, online_steps=d["online_steps"], rollout_length=rollout_length,
           eval_every=d["eval_every"], eval_episodes=d["eval_episodes"],
           overrides=overrides, beta_steps=FLAGS.o2ppo_beta_steps,
           reference=FLAGS.o2ppo_reference, run_name=name + suffix, **common_args)

