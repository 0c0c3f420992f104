"""SAMG end to end (agents samg_cql, samg_awac, samg_iql), dispatched by experiments/finetune.py:

  pretrain   the base algorithm offline (ocr_cft.pretrain; reused when finished)  runs/pretrain/<algo>/...
  cvae       the state-action C-VAE on the dataset + the normal fit of its latent means
                                                                                  runs/cvae/samg/...
  finetune   SAMG online: frozen offline critic, mixed target, online-only buffer seeded with
             `--samg_prefill` transitions of the offline policy (o2o_jax.phase); samg_cql also
             draws offline rows for its p-weighted conservative term (--samg_cql_offline_penalty)
                                                                                  runs/finetune/samg_<algo>/...

  python -m experiments.finetune --agent=samg_iql --budget=quick
  python -m experiments.finetune --agent=samg_cql --seeds=5 --samg_threshold=0.5

The C-VAE depends on the dataset only (not on the base algorithm), so one cvae run serves all three
agents. Agent-specific flags are defined here at import (prefix --samg_); the shared ones
(dataset, seeds, budget, ...) come from experiments/finetune.py.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import common
from o2o_jax import presets
from o2o_jax.recipes import offline
from o2o_jax import distributed, loops, resume, runs
from o2o_jax import phase as phase_lib
from o2o_jax import logging as log_lib
from o2o_jax.agents import registry
from o2o_jax.agents.o2o import samg
from o2o_jax.checkpoints import Checkpointer
from o2o_jax.data import prepared
from o2o_jax.errors import O2OError
from o2o_jax.types import seed_keys

AGENTS = ("samg_cql", "samg_awac", "samg_iql")
# --budget: 'paper' = the OCR-CFT protocol (1M offline steps, 100k online, eval every 1k with 10
# episodes; the SAMG paper itself fine-tunes 500k/1M steps) and a 100k-step C-VAE [recon];
# 'quick' = minutes on a laptop CPU. The 1000 prefill transitions play the paper's 1000-step warm-up,
# so no further warm-up by default. Networks: 'paper' keeps each base algorithm's own default
# architecture (hidden_dims None, resolved by ocr_cft.pretrain: CQL 3x256 actor and critics and AWAC
# 3x256, as CORL's cql.py / awac.py; IQL 2x256, as CORL's iql.py), since the paper runs CORL's
# settings (App. C.2); only 'quick' shrinks them. An explicit --hidden_dims wins either way.
BUDGETS = {
    "paper": dict(pretrain_steps=1_000_000, pretrain_eval_every=10_000, samg_cvae_steps=100_000,
                  online_steps=100_000, warmup_steps=0, eval_every=1_000, eval_episodes=10,
                  hidden_dims=None, samg_cvae_hidden=(750, 750)),
    "quick": dict(pretrain_steps=10_000, pretrain_eval_every=5_000, samg_cvae_steps=3_000,
                  online_steps=10_000, warmup_steps=0, eval_every=2_000, eval_episodes=5,
                  hidden_dims=(64, 64), samg_cvae_hidden=(64, 64)),
}

flags.DEFINE_float("samg_threshold", 0.5, "SAMG p_m^off: the weight p(s,a) is 0 below it (paper 0.5 on "
                   "MuJoCo; 0.4 for Cal-QL on AntMaze).")
flags.DEFINE_enum("samg_weight_at", "sa", samg.WEIGHT_AT, "SAMG weight of a transition: 'sa' = p(s,a) "
                  "of the sampled pair (the reviewers' reading), 'next' = p(s',a') of the bootstrap pair.")
flags.DEFINE_integer("samg_cvae_steps", None, "SAMG C-VAE gradient steps (paper budget 100k, quick 3k).")
flags.DEFINE_list("samg_cvae_hidden", None, "SAMG C-VAE hidden sizes of encoder and decoder "
                  "(paper budget 750,750 as CPQ/BCQ; quick 64,64).")
flags.DEFINE_list("samg_cvae_decoder_hidden", None, "SAMG smaller decoder hidden sizes (the paper's "
                  "'simplified decoder' on hopper/walker2d); default: same as the encoder.")
flags.DEFINE_integer("samg_latent_dim", None, "SAMG C-VAE latent size (default 2|A|).")
flags.DEFINE_float("samg_cvae_lr", 1e-3, "SAMG C-VAE learning rate.")
flags.DEFINE_float("samg_kl_weight", 0.5, "SAMG C-VAE KL weight beta_KL (after annealing).")
flags.DEFINE_integer("samg_kl_anneal_steps", None, "SAMG KL annealing: beta_KL ramps linearly from 0 "
                     "over this many C-VAE steps (default: half the C-VAE steps on hopper, as the "
                     "paper anneals there; 0 elsewhere).")
flags.DEFINE_bool("samg_cvae_raw_states", True, "SAMG C-VAE on raw (unnormalised) states, as the paper "
                  "advises against normalising (posterior collapse).")
flags.DEFINE_integer("samg_prefill", 1000, "SAMG: transitions of the offline policy that seed each "
                     "seed's online buffer (paper 1000).")
flags.DEFINE_integer("samg_buffer_size", 50_000, "SAMG online buffer capacity (paper 50k); applied when "
                     "the online phase accepts a buffer size, else the buffer holds every online step.")
flags.DEFINE_float("samg_exploration_noise", 0.03, "SAMG: std of the Gaussian exploration noise of a "
                   "deterministic base actor (CORL finetune/iql.py `expl_noise` 0.03); stochastic actors "
                   "sample instead.")
flags.DEFINE_float("samg_exploration_noise_clip", 0.5, "SAMG: the exploration noise is clipped to "
                   "[-clip, clip] before it is added (CORL finetune/iql.py `noise_clip` 0.5).")
flags.DEFINE_float("samg_cql_offline_penalty", 1.0, "samg_cql: weight, relative to CQL's alpha, of the "
                   "p-weighted conservative term on offline rows (paper App. C.1); each update then "
                   "draws as many offline rows as online ones. 0: off (no offline data online).")
flags.DEFINE_integer("samg_guidance_steps", None, "SAMG: online env steps with offline guidance; after "
                     "them p = 0 and the base algorithm runs unchanged (paper App. C.4 cuts it 'after a "
                     "specific period', length not given). Default: the whole run.")


# ----------------------------------------------------------------------------- cvae phase

def cvae_config_fields(config: samg.Config) -> Dict[str, Any]:
  names = ("cvae_hidden_dims", "cvae_decoder_hidden_dims", "latent_dim", "cvae_lr", "kl_weight",
           "kl_anneal_steps", "cvae_raw_states")
  return {k: getattr(config, k) for k in names}


@functools.lru_cache(maxsize=None)
def _cvae_init(config: samg.Config, obs_dim: int, act_dim: int):
  """The jitted, seed-vmapped C-VAE init (compiled once per process: its compilation is slow)."""
  return jax.jit(jax.vmap(lambda k: samg.cvae_init(k, obs_dim, act_dim, config)))


def _cvae_template(config: samg.Config, seeds: int, seed: int, obs_dim: int, act_dim: int):
  """The shapes of a cvae run's checkpoint, to restore it (eval_shape compiles nothing)."""
  states = jax.eval_shape(_cvae_init(config, obs_dim, act_dim), seed_keys(seed + 2, seeds))
  d = config.latent_dim
  return {"cvae": states, "latent_mean": jax.ShapeDtypeStruct((seeds, d), jnp.float32),
          "latent_std": jax.ShapeDtypeStruct((seeds, d), jnp.float32)}


@functools.lru_cache(maxsize=None)
def _encoder_means_fn(config: samg.Config):
  return jax.jit(jax.vmap(lambda p, o, a: samg.encoder_means(p, config, o, a), in_axes=(0, None, None)))


def _encode_all(params, config: samg.Config, observations, actions, chunk: int = 50_000):
  """Encoder means of every row, per seed: (S, N, d_z), computed in chunks."""
  fn = _encoder_means_fn(config)
  return jnp.concatenate([fn(params, observations[i:i + chunk], actions[i:i + chunk])
                          for i in range(0, observations.shape[0], chunk)], axis=1)


def train_cvae(*, dataset_id: str, config: samg.Config, seeds: int, seed: int, steps: int,
               batch_size: int, out_dir: str, run_name: str, restart: bool, progress: bool,
               checkpoint_every: Optional[int] = None, log=print) -> Path:
  """Trains one C-VAE per seed (vmapped) on the dataset, fits N(m_j, s_j^2) to its latent means and
  checkpoints both; reused when a finished run of the same settings exists. Resumable: chunks end
  at multiples of `checkpoint_every`, where the C-VAE states and the PRNG key are snapshotted under
  <run_dir>/progress (and on SIGINT/SIGTERM, see resume.Session)."""
  run_config = {"phase": "cvae", "agent": "samg", "dataset": dataset_id, "seeds": seeds, "seed": seed,
                "steps": steps, "batch_size": batch_size, "cvae_config": cvae_config_fields(config)}
  run_dir = runs.run_dir_for(out_dir, "cvae", "samg", dataset_id, run_name)
  resumed = runs.prepare_run_dir(run_dir, run_config, restart=restart)
  if resumed and runs.finished(run_dir, steps):
    log(f"[cvae] reusing the finished run {run_dir}")
    return run_dir
  data = prepared.load_data(dataset_id, normalize_states=not config.cvae_raw_states,
                            batch_size=batch_size)
  ds = data.device
  obs_dim, act_dim = ds.observations.shape[-1], ds.actions.shape[-1]
  states = _cvae_init(config, obs_dim, act_dim)(seed_keys(seed + 2, seeds))
  log(f"[cvae] state-action C-VAE on {dataset_id} ({'raw' if config.cvae_raw_states else 'normalised'} "
      f"states, latent {config.latent_dim}, hidden {config.cvae_hidden_dims}) for {steps} steps "
      f"-> {run_dir}")
  writer = log_lib.MetricsWriter(run_dir)
  key, t0, step, metrics = jax.random.PRNGKey(seed + 3), time.time(), 0, {}
  snapshots = phase_lib.snapshots(run_dir, checkpoint_every)
  session = resume.Session(snapshots, "cvae", log=log)
  restored, _, step = session.restore({"cvae": loops.unalias(states), "key": key})
  states, key = restored["cvae"], restored["key"]
  writer.truncate_after(step)
  bar = log_lib.progress(steps, "cvae", initial=step, disable=not progress)
  with session:
    while step < steps:
      n = int(min(5_000, steps - step, session.next_due(step) - step))
      key, k = jax.random.split(key)
      states, metrics = loops.offline_chunk_fn(samg.cvae_update, batch_size, n)(
          states, distributed.split_seeds(k, seeds), ds)
      step += n
      bar.update(n)
      session.fault.at(step)
      metrics = jax.device_get(metrics)
      session.check_finite(metrics[loops.GUARD_KEY], step=step, states=states, metrics=metrics)
      writer.write(step, {f"train/{k_}": v for k_, v in metrics.items() if k_ != loops.GUARD_KEY})
      if session.due(step, steps):
        writer.flush()
        session.save(step, {"cvae": states, "key": key})
      session.stop_if_requested(step, (bar.close, writer.close))
  bar.close()
  # Normal fit of the encoder means over the whole dataset (per seed, per latent dimension).
  means = _encode_all(states.vae.params, config, ds.observations, ds.actions)
  latent_mean, latent_std = jax.vmap(samg.latent_statistics)(means)
  weigh = jax.vmap(lambda mu, m, s: samg.confidence_weight(mu, m, s, config.threshold))
  p_data = weigh(means, latent_mean, latent_std)
  rand_actions = jax.random.uniform(jax.random.PRNGKey(seed), ds.actions[:50_000].shape, minval=-1.0,
                                    maxval=1.0)
  p_rand = weigh(_encode_all(states.vae.params, config, ds.observations[:50_000], rand_actions),
                 latent_mean, latent_std)
  diag = {"kl": np.asarray(metrics["kl"]), "recon_loss": np.asarray(metrics["recon_loss"]),
          "weight_data": np.asarray(p_data.mean(1)), "weight_data_nonzero": np.asarray((p_data > 0).mean(1)),
          "weight_random_actions": np.asarray(p_rand.mean(1)),
          "weight_random_actions_nonzero": np.asarray((p_rand > 0).mean(1))}
  writer.write(steps, {f"fit/{k}": v for k, v in diag.items()})
  writer.close()
  ckpt = Checkpointer(run_dir / "checkpoints")
  ckpt.save(steps, {"cvae": states, "latent_mean": latent_mean, "latent_std": latent_std},
            {"phase": "cvae", "dataset_id": dataset_id, "obs_dim": obs_dim, "act_dim": act_dim,
             "threshold_at_fit": config.threshold, **diag})
  ckpt.close()
  snapshots.discard()
  log_lib.plot_curves(run_dir / "metrics.csv", run_dir / "curves.png",
                      ["train/recon_loss", "train/kl", "train/kl_weight"], title=f"SAMG C-VAE on {dataset_id}")
  fmt = lambda v: ", ".join(f"{x:.3f}" for x in np.atleast_1d(v))
  log(f"[cvae] done in {time.time() - t0:.0f}s: KL {fmt(diag['kl'])}, recon {fmt(diag['recon_loss'])}; "
      f"mean weight p on the data {fmt(diag['weight_data'])} (nonzero {fmt(diag['weight_data_nonzero'])}), "
      f"on uniform-random actions {fmt(diag['weight_random_actions'])}")
  return run_dir


def restore_cvae(cvae_dir: Path, config: samg.Config, seeds: int, seed: int, obs_dim: int, act_dim: int):
  cfg = runs.read_config(cvae_dir)
  template = _cvae_template(config, cfg["seeds"], cfg["seed"], obs_dim, act_dim)
  if cfg["seeds"] != seeds:
    raise O2OError(f"the C-VAE run {cvae_dir} has {cfg['seeds']} seeds, the offline run {seeds}")
  restored, _ = runs.restore_result(cvae_dir, template)
  return restored


# ----------------------------------------------------------------------------- online phase

def _offline_run(pretrain_dir: Path, base: str, extra_steps: int):
  """Restores a finished pretrain run of the base algorithm: (cfg, base config, states, meta)."""
  cfg = runs.read_config(pretrain_dir)
  if cfg.get("phase") != "pretrain" or cfg.get("algo") != base:
    raise O2OError(f"{pretrain_dir} is not a pretrain run of {base} (phase {cfg.get('phase')!r}, algo "
                   f"{cfg.get('algo')!r}): samg_{base} fine-tunes a {base} run")
  module = registry.get(base, registry.OFFLINE)
  base_config = runs.config_from_dict(module.Config, cfg["agent_config"])
  if base == "iql":
    # CORL fine-tunes IQL with the actor's cosine schedule spanning offline + online steps; the
    # offline run's schedule ended at its own length (lr 0), so the horizon is extended here.
    base_config = dataclasses.replace(base_config, max_steps=base_config.max_steps + extra_steps)
  meta = Checkpointer(pretrain_dir / "checkpoints").read_metadata()
  template = loops.init_shapes(module, seed_keys(cfg["seed"], cfg["seeds"]), meta["obs_dim"],
                               meta["act_dim"], base_config)
  states, meta = runs.restore_result(pretrain_dir, template)
  return cfg, base_config, states, meta


def finetune(*, agent_name: str, pretrain_dir: Path, cvae_dir: Path, config: samg.Config,
             online_steps: int, warmup_steps: int, eval_every: int, eval_episodes: int, utd: int,
             batch_size: int, prefill_steps: int, buffer_size: int, out_dir: str, run_name: str,
             restart: bool, progress: bool, checkpoint_every: Optional[int] = None,
             log=print) -> Path:
  base = agent_name.split("_", 1)[1]
  cfg, base_config, base_states, meta = _offline_run(pretrain_dir, base, online_steps * utd)
  seeds, seed = cfg["seeds"], cfg["seed"]
  config = dataclasses.replace(config, base=base, base_config=base_config).resolved(meta["act_dim"])
  # The CQL offline term (paper App. C.1) needs offline rows: each update's batch is then
  # [batch_size offline rows | batch_size online rows] (samg.update_with_offline splits it).
  offline_fraction = samg.OFFLINE_FRACTION if config.uses_offline_rows else 0.0
  run_config = {"phase": "finetune", "agent": agent_name, "dataset": cfg["dataset"], "env": cfg["env"],
                "seeds": seeds, "seed": seed, "from": str(pretrain_dir), "cvae": str(cvae_dir),
                "steps": online_steps, "agent_config": dataclasses.asdict(config), "utd": utd,
                "warmup_steps": warmup_steps, "eval_every": eval_every, "eval_episodes": eval_episodes,
                "batch_size": batch_size, "prefill": prefill_steps, "buffer_size": buffer_size,
                "offline_fraction": offline_fraction}
  spec = phase_lib.OnlinePhase(
      agent=agent_name, dataset_id=cfg["dataset"], run_name=run_name, config=run_config,
      loop=phase_lib.online_loop(online_steps, warmup_steps, eval_every, eval_episodes, utd=utd,
                                 batch_size=batch_size * 2 if offline_fraction else batch_size,
                                 offline_fraction=offline_fraction, buffer_size=buffer_size),
      plot_keys=("eval/normalized_score", "train/samg_weight", "train/samg_weight_nonzero",
                 "train/critic_loss"),
      out_dir=out_dir, restart=restart, progress=progress, checkpoint_every=checkpoint_every)

  def build(run_dir):
    cv = restore_cvae(cvae_dir, config, seeds, seed, meta["obs_dim"], meta["act_dim"])
    obs_mean, obs_std = (np.asarray(meta["obs_mean"], np.float32),
                         np.asarray(meta["obs_std"], np.float32))
    scale = float(meta["reward_transform"]["scale"])
    states = jax.jit(jax.vmap(lambda b, p, m, s: samg.from_offline(b, p, m, s, obs_mean, obs_std,
                                                                   config)))(
        base_states, cv["cvae"].vae.params, cv["latent_mean"], cv["latent_std"])
    data = prepared.load_data(meta["dataset_id"], obs_mean, obs_std, scale, batch_size=batch_size)
    t0 = time.time()
    prefill = (loops.collect_prefill(samg.act, states, data.make_env, seeds, seed + 7_919,
                                     prefill_steps, obs_mean, obs_std, scale)
               if prefill_steps > 0 else None)
    offline_use = (f"{batch_size} offline rows per update for the p-weighted CQL term (weight "
                   f"{config.cql_offline_penalty})" if offline_fraction else "no offline data")
    guidance = ("for the whole run" if config.guidance_steps is None
                else f"for {config.guidance_steps} updates")
    log(f"[finetune] {agent_name}: {prefill_steps} offline-policy transitions per seed seed the "
        f"online buffer ({time.time() - t0:.0f}s); {online_steps} online steps, UTD {utd}, "
        f"{offline_use}, threshold {config.threshold}, guidance {guidance} -> {run_dir}")
    update = samg.update_with_offline if offline_fraction else samg.update
    return phase_lib.OnlineTraining(
        learner=loops.Learner(update, samg.act), states=states, data=data,
        metadata={**meta, "agent": agent_name, "cvae_dir": str(cvae_dir)},
        start_scores={"offline": np.asarray(meta["eval_score"], np.float32)}, prefill=prefill)

  return phase_lib.run_online_phase(spec, build, log)


# ----------------------------------------------------------------------------- launcher entry

def network_dims(budget_dims):
  """Hidden sizes of a new offline run: the budget's (quick) or --hidden_dims when set, else None,
  which ocr_cft.pretrain resolves to the base algorithm's own architecture with its dataset preset
  (CQL/AWAC 3x256, IQL 2x256; CQL's 5x256 critics on AntMaze)."""
  return tuple(int(h) for h in budget_dims) if budget_dims else None


def _kl_anneal_default(dataset_id: str, cvae_steps: int) -> int:
  env, _ = presets.dataset_env_and_level(dataset_id)
  return cvae_steps // 2 if env == "hopper" else 0


def run(FLAGS):
  """experiments.finetune --agent=samg_<base>: pretrain (reused) -> C-VAE (reused) -> online."""
  agent_name = FLAGS.agent
  if agent_name not in AGENTS:
    raise O2OError(f"pipeline_samg runs {', '.join(AGENTS)} (got {agent_name})")
  base = agent_name.split("_", 1)[1]
  d = common.finetune_budget(BUDGETS, FLAGS, positive=("samg_cvae_steps",))
  utd = FLAGS.utd or 1
  if FLAGS.samg_prefill < 0 or FLAGS.samg_prefill + d["warmup_steps"] < 1:
    raise O2OError("--samg_prefill must not be negative, and --samg_prefill + --warmup_steps must be at "
                   f"least 1 so the first update has data (got {FLAGS.samg_prefill}, {d['warmup_steps']})")
  if not 0.0 <= FLAGS.samg_threshold <= 1.0:
    raise O2OError(f"--samg_threshold must lie in [0, 1] (got {FLAGS.samg_threshold})")
  if FLAGS.samg_guidance_steps is not None and FLAGS.samg_guidance_steps < 0:
    raise O2OError(f"--samg_guidance_steps must not be negative (got {FLAGS.samg_guidance_steps})")
  name = FLAGS.run_name or f"seed{FLAGS.seed}x{FLAGS.seeds}"
  common_args = dict(out_dir=FLAGS.out_dir, restart=FLAGS.restart, progress=FLAGS.progress,
                     checkpoint_every=FLAGS.checkpoint_every)

  if getattr(FLAGS, "from"):
    pretrain_dir = Path(getattr(FLAGS, "from"))
    prev = runs.read_config(pretrain_dir)
    if prev.get("phase") != "pretrain":
      raise O2OError(f"--from={pretrain_dir} is a '{prev.get('phase')}' run: {agent_name} starts from "
                     f"a pretrain run of {base}")
  else:
    pretrain_dir = offline.pretrain(
        algo=base, dataset_id=FLAGS.dataset, seeds=FLAGS.seeds, seed=FLAGS.seed,
        num_steps=d["pretrain_steps"], eval_every=d["pretrain_eval_every"],
        eval_episodes=d["eval_episodes"], hidden_dims=network_dims(d["hidden_dims"]),
        batch_size=FLAGS.batch_size, run_name=name, **common_args)
    prev = runs.read_config(pretrain_dir)
  dataset_id = prev["dataset"]

  kl_anneal = (FLAGS.samg_kl_anneal_steps if FLAGS.samg_kl_anneal_steps is not None
               else _kl_anneal_default(dataset_id, d["samg_cvae_steps"]))
  decoder = (tuple(int(h) for h in FLAGS.samg_cvae_decoder_hidden)
             if FLAGS.samg_cvae_decoder_hidden else None)
  meta = Checkpointer(pretrain_dir / "checkpoints").read_metadata()
  config = samg.Config(base=base, cvae_hidden_dims=tuple(d["samg_cvae_hidden"]),
                       cvae_decoder_hidden_dims=decoder, latent_dim=FLAGS.samg_latent_dim,
                       cvae_lr=FLAGS.samg_cvae_lr, kl_weight=FLAGS.samg_kl_weight,
                       kl_anneal_steps=kl_anneal, cvae_raw_states=FLAGS.samg_cvae_raw_states,
                       threshold=FLAGS.samg_threshold, weight_at=FLAGS.samg_weight_at,
                       exploration_noise=FLAGS.samg_exploration_noise,
                       exploration_noise_clip=FLAGS.samg_exploration_noise_clip,
                       cql_offline_penalty=FLAGS.samg_cql_offline_penalty,
                       guidance_steps=(None if FLAGS.samg_guidance_steps is None
                                       else FLAGS.samg_guidance_steps * utd),   # env steps -> updates
                       ).resolved(meta["act_dim"])
  cvae_dir = train_cvae(dataset_id=dataset_id, config=config, seeds=prev["seeds"], seed=prev["seed"],
                        steps=d["samg_cvae_steps"], batch_size=FLAGS.batch_size, run_name=name,
                        **common_args)
  finetune(agent_name=agent_name, pretrain_dir=pretrain_dir, cvae_dir=cvae_dir, config=config,
           online_steps=d["online_steps"], warmup_steps=d["warmup_steps"],
           eval_every=d["eval_every"], eval_episodes=d["eval_episodes"], utd=utd,
           batch_size=FLAGS.batch_size, prefill_steps=FLAGS.samg_prefill,
           buffer_size=FLAGS.samg_buffer_size, run_name=name, **common_args)
  # (returns None: absl's app.run exits with main's return value)
