"""ACA end to end (agent aca), dispatched by experiments/finetune.py:

  pretrain   SAC+ML with the state baseline Z ("sacml", ocr_cft.pretrain; reused)  runs/pretrain/sacml/...
    or       any other stochastic offline actor (--offline_algo=cql|iql|awac|bc), then
  zfit       Z fitted with that actor fixed as pi0 [recon]                        runs/zfit/aca/...
  finetune   the switch (R := Z, alpha := 1, pi0 frozen) and SAC on the re-parameterised critic
             R + w_t c(log pi0), online data only, optionally seeded with the top-N offline
             episodes (o2o_jax.phase)                                              runs/finetune/aca/...

  python -m experiments.finetune --agent=aca --budget=quick
  python -m experiments.finetune --agent=aca --offline_algo=cql --budget=quick
  python -m experiments.finetune --agent=aca --from=runs/pretrain/sacml/... --aca_top_n=50

The per-dataset settings (clip beta, w schedule, top-N, entropy coefficient) come from the official
code's table (`aca.DATASET_PRESETS`); each --aca_ flag given overrides its entry.

States: the official chain (`run_sacml.py`, `run_aca.py`) gives d3rlpy no `scaler`, so SAC+ML, Z and
the online stage see raw observations; the SAC+ML pretrain started here does too
(`normalize_states=False`; `--aca_normalize_states` standardises them). Another offline actor keeps
its own preset's normalisation (pi0 is a function of the states it was trained on), and the Z-fit and
online stages reuse whatever the offline run recorded.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Optional

import jax
import numpy as np
from absl import flags

from experiments import common
from o2o_jax import presets
from o2o_jax.recipes import offline
from o2o_jax import loops, networks, runs
from o2o_jax import phase as phase_lib
from o2o_jax.agents import registry
from o2o_jax.agents.o2o import aca
from o2o_jax.checkpoints import Checkpointer
from o2o_jax.data import prepared
from o2o_jax.errors import O2OError
from o2o_jax.types import seed_keys

# --budget: 'paper' = the official code (SAC+ML 500k steps, 100k online; Z-fit as long as SAC+ML
# [recon]) with the framework's evaluation protocol; 'quick' = minutes on a laptop CPU.
BUDGETS = {
    "paper": dict(pretrain_steps=500_000, pretrain_eval_every=10_000, aca_zfit_steps=500_000,
                  online_steps=100_000, warmup_steps=1_000, eval_every=1_000, eval_episodes=10,
                  hidden_dims=(256, 256), critic_hidden=(256, 256)),
    "quick": dict(pretrain_steps=10_000, pretrain_eval_every=5_000, aca_zfit_steps=5_000,
                  online_steps=10_000, warmup_steps=1_000, eval_every=2_000, eval_episodes=5,
                  hidden_dims=(64, 64), critic_hidden=(64, 64)),
}

flags.DEFINE_integer("aca_zfit_steps", None, "ACA: steps fitting Z to another offline actor "
                     "(--offline_algo other than sacml; paper budget 500k, quick 5k).")
flags.DEFINE_float("aca_zfit_alpha", 1.0, "ACA: temperature alpha in Z's target when fitting Z to "
                   "another offline actor (1 = the online start's alpha, so Q~ = log pi0 + Z is "
                   "consistent with the soft backup there).")
flags.DEFINE_float("aca_clip_beta", None, "ACA lower clip of log pi0 at beta standard deviations "
                   "(table: 7 random/medium(-replay), 15 (medium-)expert, 3 AntMaze); 0 = no clip.")
flags.DEFINE_float("aca_w_init", None, "ACA w0 (table: 1).")
flags.DEFINE_float("aca_w_decay_k", None, "ACA K: w falls by w0/(K*1000) per update (table: 10 random, "
                   "40 medium(-replay), 100 (medium-)expert, 200 AntMaze).")
flags.DEFINE_float("aca_w_min", None, "ACA w_min (table: 0 random, 0.5 medium(-replay)/AntMaze, "
                   "1 (medium-)expert).")
flags.DEFINE_integer("aca_top_n", None, "ACA: top-N offline episodes by return seeding the online buffer "
                     "(table: 50 medium-replay/(medium-)expert, else 0).")
flags.DEFINE_float("aca_entropy_coef", None, "ACA c_H of the online target entropy -c_H|A| (table: 1, "
                   "AntMaze 0.5).")
flags.DEFINE_float("aca_actor_grad_clip", 0.25, "ACA online actor gradient-norm clip (0 = none).")
flags.DEFINE_bool("aca_normalize_states", False, "ACA: standardise observations in the SAC+ML pretrain "
                  "started here (the official code does not: no d3rlpy scaler). Another "
                  "--offline_algo keeps its own preset's choice.")

ZFIT_FIELDS = ("actor_kind", "gaussian_tanh_mean", "hidden_dims", "log_std_min", "log_std_max",
               "learnable_log_std_scale", "orthogonal_init")


def actor_config_fields(actor_module) -> dict:
  """The ACA actor options that rebuild `actor_module` (an offline agent's actor)."""
  common_ = dict(hidden_dims=tuple(actor_module.hidden_dims), log_std_min=actor_module.log_std_min,
                 log_std_max=actor_module.log_std_max, orthogonal_init=actor_module.orthogonal_init)
  if isinstance(actor_module, networks.TanhGaussianActor):
    return dict(common_, actor_kind="tanh_gaussian",
                learnable_log_std_scale=actor_module.learnable_log_std_scale)
  if isinstance(actor_module, networks.GaussianActor):
    return dict(common_, actor_kind="gaussian", gaussian_tanh_mean=actor_module.tanh_mean)
  raise O2OError(f"ACA aligns the critic to the offline actor's density log pi0(a|s), so it needs a "
                 f"stochastic actor; this one is a {type(actor_module).__name__} (use sacml, cql, "
                 "iql with a Gaussian actor (--preset=none on hopper-medium), awac or bc)")


def _restore_pretrain(pretrain_dir: Path):
  cfg = runs.read_config(pretrain_dir)
  module = registry.get(cfg["algo"], registry.OFFLINE)
  base_config = runs.config_from_dict(module.Config, cfg["agent_config"])
  meta = Checkpointer(pretrain_dir / "checkpoints").read_metadata()
  template = loops.init_shapes(module, seed_keys(cfg["seed"], cfg["seeds"]), meta["obs_dim"],
                               meta["act_dim"], base_config)
  states, meta = runs.restore_result(pretrain_dir, template)
  return cfg, states, meta


@functools.lru_cache(maxsize=None)
def _zfit_init(config: aca.Config, obs_dim: int, act_dim: int):
  """The jitted, seed-vmapped Z-fit start around pi0's parameters, compiled once per process."""
  return jax.jit(jax.vmap(lambda k, p: aca.init(k, obs_dim, act_dim, config, p)))


def fit_baseline(*, pretrain_dir: Path, steps: int, critic_hidden, zfit_alpha: float, batch_size: int,
                 eval_episodes: int, out_dir: str, run_name: str, restart: bool, progress: bool,
                 checkpoint_every: Optional[int] = None, log=print) -> Path:
  """Z fitted with another offline actor held fixed as pi0: its own run directory. Resumable
  (snapshots every `checkpoint_every` steps under <run_dir>/progress, see loops.run_offline)."""
  cfg, base_states, meta = _restore_pretrain(pretrain_dir)
  fields = actor_config_fields(base_states.actor.apply_fn.__self__)
  config = aca.Config(**fields, critic_hidden_dims=tuple(critic_hidden), init_alpha=zfit_alpha)
  seeds, seed = cfg["seeds"], cfg["seed"]
  run_config = {"phase": "zfit", "agent": "aca", "dataset": cfg["dataset"], "env": cfg["env"],
                "seeds": seeds, "seed": seed, "from": str(pretrain_dir), "steps": steps,
                "offline_algo": cfg["algo"], "agent_config": dataclasses.asdict(config),
                "batch_size": batch_size}
  spec = phase_lib.OfflinePhase(
      phase="zfit", agent="aca", dataset_id=cfg["dataset"], run_name=run_name, config=run_config,
      loop=loops.OfflineConfig(num_steps=steps, batch_size=batch_size, chunk=min(steps, 5_000),
                               eval_every=steps, eval_episodes=eval_episodes),
      score_key="eval_score", desc="aca z-fit", out_dir=out_dir, restart=restart, progress=progress,
      checkpoint_every=checkpoint_every)

  def build(run_dir):
    obs_dim, act_dim = meta["obs_dim"], meta["act_dim"]
    expected = jax.eval_shape(lambda: aca.init(jax.random.PRNGKey(0), obs_dim, act_dim,
                                               config).actor.params)
    given = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                                   base_states.actor.params)
    if jax.tree_util.tree_structure(expected) != jax.tree_util.tree_structure(given):
      raise O2OError(f"the {cfg['algo']} actor does not fit ACA's actor (different network layout)")
    states = _zfit_init(config, obs_dim, act_dim)(seed_keys(seed + 1, seeds), base_states.actor.params)
    # Z serves the online critic, which sees raw env rewards: no reward transform here.
    data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"], 1.0,
                              batch_size=batch_size)
    log(f"[zfit] aca: fitting Z to the frozen {cfg['algo']} actor for {steps} steps (alpha "
        f"{zfit_alpha}) -> {run_dir}")
    out_meta = {**{k: meta[k] for k in ("dataset_id", "env_id", "obs_dim", "act_dim", "obs_mean",
                                        "obs_std")},
                "reward_transform": {"scale": 1.0, "shift": 0.0}, "phase": "zfit", "agent": "aca",
                "offline_algo": cfg["algo"]}
    return phase_lib.Training(loops.Learner(aca.fit_baseline_step, aca.act), states, data.device,
                              data, out_meta)

  return phase_lib.run_offline_phase(spec, build, log)


def finetune(*, offline_dir: Path, overrides, online_steps: int, warmup_steps: int, eval_every: int,
             eval_episodes: int, utd: int, batch_size: int, out_dir: str, run_name: str,
             restart: bool, progress: bool, checkpoint_every: Optional[int] = None,
             log=print) -> Path:
  """The switch and online SAC on the re-parameterised critic, from a sacml pretrain or a zfit run."""
  cfg = runs.read_config(offline_dir)
  base = runs.config_from_dict(aca.Config, cfg["agent_config"])
  meta = Checkpointer(offline_dir / "checkpoints").read_metadata()
  obs_dim, act_dim = meta["obs_dim"], meta["act_dim"]
  env, level = presets.dataset_env_and_level(cfg["dataset"])
  values = {**aca.dataset_preset(env, level), **{k: v for k, v in overrides.items() if v is not None}}
  if values["clip_beta"] is not None and values["clip_beta"] <= 0:
    values["clip_beta"] = None
  if values.get("actor_grad_clip") is not None and values["actor_grad_clip"] <= 0:
    values["actor_grad_clip"] = None
  config = dataclasses.replace(base, **values)
  seeds, seed = cfg["seeds"], cfg["seed"]
  run_config = {"phase": "finetune", "agent": "aca", "dataset": cfg["dataset"], "env": cfg["env"],
                "seeds": seeds, "seed": seed, "from": str(offline_dir), "steps": online_steps,
                "offline_algo": cfg.get("offline_algo", cfg.get("algo")),
                "agent_config": dataclasses.asdict(config), "utd": utd, "warmup_steps": warmup_steps,
                "eval_every": eval_every, "eval_episodes": eval_episodes, "batch_size": batch_size}
  spec = phase_lib.OnlinePhase(
      agent="aca", dataset_id=cfg["dataset"], run_name=run_name, config=run_config,
      loop=phase_lib.online_loop(online_steps, warmup_steps, eval_every, eval_episodes, utd=utd,
                                 batch_size=batch_size, offline_fraction=0.0),
      plot_keys=("eval/normalized_score", "train/w", "train/alpha", "train/critic_loss"),
      out_dir=out_dir, restart=restart, progress=progress, checkpoint_every=checkpoint_every)

  def build(run_dir):
    template = loops.init_shapes(aca, seed_keys(seed, seeds), obs_dim, act_dim, base)
    states, meta = runs.restore_result(offline_dir, template)
    states = jax.jit(jax.vmap(functools.partial(aca.start_online, act_dim=act_dim,
                                                config=config)))(states)
    data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"], 1.0,
                              batch_size=batch_size)
    rows = data.dataset.top_episode_indices(config.top_n_trajectories)
    prefill = jax.tree_util.tree_map(lambda x: x[rows], data.device) if len(rows) else None
    log(f"[finetune] aca from {run_config['offline_algo']}: {online_steps} online steps, UTD {utd}, "
        f"clip beta {config.clip_beta}, w {config.w_init} -> {config.w_min} (K {config.w_decay_k}), "
        f"buffer seeded with {len(rows)} transitions of the top {config.top_n_trajectories} episodes "
        f"-> {run_dir}")
    return phase_lib.OnlineTraining(
        learner=loops.Learner(aca.online_update, aca.act), states=states, data=data,
        metadata={**meta, "agent": "aca"},
        start_scores={"offline": np.asarray(meta["eval_score"], np.float32)}, prefill=prefill)

  return phase_lib.run_online_phase(spec, build, log)


def pretrain_normalizes_states(algo: str, aca_normalize_states: bool = False) -> Optional[bool]:
  """`offline.pretrain(normalize_states=...)`: SAC+ML on raw observations, as the official ACA code
  (no d3rlpy scaler), unless asked otherwise; None for any other offline algorithm (its preset's
  choice)."""
  if algo != "sacml":
    return None
  return bool(aca_normalize_states)


def run(FLAGS):
  """experiments.finetune --agent=aca: SAC+ML (or another actor + Z-fit; reused) -> ACA online."""
  d = common.finetune_budget(BUDGETS, FLAGS, positive=("aca_zfit_steps",))
  utd = FLAGS.utd or 1
  if FLAGS.aca_top_n is not None and FLAGS.aca_top_n < 0:
    raise O2OError(f"--aca_top_n must not be negative (got {FLAGS.aca_top_n})")
  name = FLAGS.run_name or f"seed{FLAGS.seed}x{FLAGS.seeds}"
  common_args = dict(out_dir=FLAGS.out_dir, restart=FLAGS.restart, progress=FLAGS.progress,
                     checkpoint_every=FLAGS.checkpoint_every)

  if getattr(FLAGS, "from"):
    offline_dir = Path(getattr(FLAGS, "from"))
    prev = runs.read_config(offline_dir)
    if prev.get("phase") not in ("pretrain", "zfit"):
      raise O2OError(f"--from={offline_dir} is a '{prev.get('phase')}' run: aca starts from a pretrain "
                     "run (sacml, or another stochastic actor) or a zfit run")
  else:
    algo = FLAGS.offline_algo or "sacml"
    if algo not in registry.OFFLINE:
      raise O2OError(f"--offline_algo={algo} is not an offline algorithm ({', '.join(registry.OFFLINE)})")
    offline_dir = offline.pretrain(
        algo=algo, dataset_id=FLAGS.dataset, seeds=FLAGS.seeds, seed=FLAGS.seed,
        num_steps=d["pretrain_steps"], eval_every=min(d["pretrain_eval_every"], d["pretrain_steps"]),
        eval_episodes=d["eval_episodes"], hidden_dims=d["hidden_dims"], batch_size=FLAGS.batch_size,
        normalize_states=pretrain_normalizes_states(algo, FLAGS.aca_normalize_states), run_name=name,
        **common_args)
    prev = runs.read_config(offline_dir)
  source = prev.get("algo") if prev["phase"] == "pretrain" else prev.get("offline_algo")
  suffix = "" if source == "sacml" else f"-{source}"     # run names tell the offline actor apart
  if prev["phase"] == "pretrain" and source != "sacml":
    offline_dir = fit_baseline(pretrain_dir=offline_dir, steps=d["aca_zfit_steps"],
                               critic_hidden=d["critic_hidden"], zfit_alpha=FLAGS.aca_zfit_alpha,
                               batch_size=FLAGS.batch_size, eval_episodes=d["eval_episodes"],
                               run_name=name + suffix, **common_args)
  overrides = dict(clip_beta=FLAGS.aca_clip_beta, w_init=FLAGS.aca_w_init, w_decay_k=FLAGS.aca_w_decay_k,
                   w_min=FLAGS.aca_w_min, top_n_trajectories=FLAGS.aca_top_n,
                   entropy_coef=FLAGS.aca_entropy_coef, actor_grad_clip=FLAGS.aca_actor_grad_clip)
  finetune(offline_dir=offline_dir, overrides=overrides, online_steps=d["online_steps"],
                  warmup_steps=d["warmup_steps"], eval_every=d["eval_every"],
                  eval_episodes=d["eval_episodes"], utd=utd, batch_size=FLAGS.batch_size,
                  run_name=name + suffix, **common_args)
