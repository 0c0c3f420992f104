"""SAMG's recipes (agents samg_cql, samg_awac, samg_iql, samg_calql: SAMG on the base algorithm of
the name):

  pretrain   the base algorithm offline (offline.pretrain; reused when finished)  runs/pretrain/<base>/...
  cvae       the state-action C-VAE on the dataset + the normal fit of its latent means
                                                                                  runs/cvae/samg/...
  finetune   SAMG online: frozen offline critic, mixed target, online-only buffer seeded with
             `--samg_prefill` transitions of the offline policy (o2o_jax.phase); samg_cql and
             samg_calql also draw offline rows for their p-weighted conservative term
             (--samg_cql_offline_penalty); Cal-QL runs online as after CORL's switch (no calibration,
             alpha_cql = its cql_alpha_online)
                                                                                  runs/finetune/samg_<base>/...

  python -m experiments.finetune --agent=samg_iql --budget=quick
  python -m experiments.finetune --agent=samg_cql --seeds=5 --samg_threshold=0.5
  python -m experiments.finetune --agent=samg_cql --from=runs/pretrain/cql/... --config.threshold=0.4

The C-VAE depends on the dataset only (not on the base algorithm), so one cvae run serves all three
agents; it takes the seeds and the action size of the pretrain run, and still runs after
`--from=<pretrain run>` (the only kind of run `--from` accepts). The --samg_* options set fields of
`samg.Config`, which `--config.<field>=<value>` overrides (a C-VAE field changes the cvae run too).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import distributed, loops, presets, resume, runs
from o2o_jax import phase as phase_lib
from o2o_jax import recipe as recipe_lib
from o2o_jax import logging as log_lib
from o2o_jax.agents import registry
from o2o_jax.agents.o2o import samg
from o2o_jax.checkpoints import Checkpointer
from o2o_jax.data import prepared
from o2o_jax.errors import O2OError
from o2o_jax.recipes import offline
from o2o_jax.types import seed_keys

AGENTS = ("samg_cql", "samg_awac", "samg_iql", "samg_calql")
BASE_NAMES = {"cql": "CQL", "awac": "AWAC", "iql": "IQL", "calql": "Cal-QL"}
# --budget: 'paper' = the OCR-CFT protocol (1M offline steps, 100k online, eval every 1k with 10
# episodes; the SAMG paper itself fine-tunes 500k/1M steps) and a 100k-step C-VAE [recon];
# 'quick' = minutes on a laptop CPU. The 1000 prefill transitions play the paper's 1000-step warm-up,
# so no further warm-up by default. Networks: 'paper' keeps each base algorithm's own default
# architecture (hidden_dims None, resolved by offline.pretrain: CQL 3x256 actor and critics and AWAC
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
CVAE_CHUNK = 5_000        # C-VAE updates fused per lax.scan call (chunks also end at snapshot steps)


def base_of(agent: str) -> str:
  return agent.split("_", 1)[1]


def network_dims(budget_dims):
  """Hidden sizes of a new offline run: the budget's (quick) or --hidden_dims when set, else None,
  which offline.pretrain resolves to the base algorithm's own architecture with its dataset preset
  (CQL/AWAC 3x256, IQL 2x256; CQL's 5x256 critics on AntMaze)."""
  return tuple(int(h) for h in budget_dims) if budget_dims else None


def kl_anneal_default(dataset_id: str, cvae_steps: int) -> int:
  """The paper anneals beta_KL on hopper: over half the C-VAE steps there, not elsewhere."""
  env, _ = presets.dataset_env_and_level(dataset_id)
  return cvae_steps // 2 if env == "hopper" else 0


def samg_config(ctx: recipe_lib.Context, dataset_id: str, act_dim: int) -> samg.Config:
  """The run's samg.Config: the budget's C-VAE sizes, the dataset's KL annealing and the guidance
  length in updates (--samg_guidance_steps counts env steps: x UTD), then the --samg_* options and
  the --config. overrides (Context.configure), resolved for the action size."""
  guidance, utd = ctx["samg_guidance_steps"], ctx.get("utd") or 1
  config = samg.Config(base=base_of(ctx.agent), cvae_hidden_dims=tuple(ctx["samg_cvae_hidden"]),
                       kl_anneal_steps=kl_anneal_default(dataset_id, ctx["samg_cvae_steps"]),
                       guidance_steps=None if guidance is None else guidance * utd)   # env steps -> updates
  return ctx.configure(config).resolved(act_dim)


def _pretrain_run(ctx: recipe_lib.Context):
  """(config.json, checkpoint metadata) of the recipe's pretrain run (built or --from)."""
  pretrain_dir = ctx.runs["pretrain"]
  return runs.read_config(pretrain_dir), Checkpointer(pretrain_dir / "checkpoints").read_metadata()


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


def cvae_spec(dataset_id: str, config: samg.Config, seeds: int, seed: int, steps: int,
              batch_size: int, run_name: str, **phase_args) -> phase_lib.OfflinePhase:
  """The cvae phase of `seeds` C-VAEs (base seed `seed`) trained `steps` steps on `dataset_id`;
  `phase_args`: out_dir, restart, progress, checkpoint_every (Context.phase_args)."""
  run_config = {"phase": "cvae", "agent": "samg", "dataset": dataset_id, "seeds": seeds, "seed": seed,
                "steps": steps, "batch_size": batch_size, "cvae_config": cvae_config_fields(config)}
  return phase_lib.OfflinePhase(
      phase="cvae", agent="samg", dataset_id=dataset_id, run_name=run_name, config=run_config,
      loop=loops.OfflineConfig(num_steps=steps, batch_size=batch_size, chunk=CVAE_CHUNK),
      plot_keys=("train/recon_loss", "train/kl", "train/kl_weight"),
      plot_title=f"SAMG C-VAE on {dataset_id}", **phase_args)


def train_cvae(spec: phase_lib.OfflinePhase, config: samg.Config, log=print) -> Path:
  """Trains one C-VAE per seed (vmapped) on the dataset, fits N(m_j, s_j^2) to its latent means and
  checkpoints both; reused when a finished run of the same settings exists (phase_lib.prepare).
  Resumable: chunks end at multiples of `spec.checkpoint_every`, where the C-VAE states and the PRNG
  key are snapshotted under <run_dir>/progress (and on SIGINT/SIGTERM, see resume.Session).

  Not `phase_lib.run_offline_phase`: the C-VAE has no policy to evaluate, its loop draws each
  chunk's key by splitting one running key (run_offline folds the step into a base key) and the
  phase ends with the latent fit, so runs of that skeleton would differ from the existing ones."""
  run_dir, done = phase_lib.prepare(spec, log)
  if done:
    return run_dir
  dataset_id, seeds, seed = spec.dataset_id, spec.config["seeds"], spec.config["seed"]
  steps, batch_size = spec.loop.num_steps, spec.loop.batch_size
  data = prepared.load_data(dataset_id, normalize_states=not config.cvae_raw_states,
                            batch_size=batch_size)
  ds = data.device
  obs_dim, act_dim = ds.observations.shape[-1], ds.actions.shape[-1]
  local = distributed.local_seed_count(seeds)        # this process's seeds (all of them with one)
  states = _cvae_init(config, obs_dim, act_dim)(seed_keys(seed + 2, local))
  log(f"[cvae] state-action C-VAE on {dataset_id} ({'raw' if config.cvae_raw_states else 'normalised'} "
      f"states, latent {config.latent_dim}, hidden {config.cvae_hidden_dims}) for {steps} steps "
      f"-> {run_dir}")
  writer, ckpt = phase_lib.writer_and_checkpointer(run_dir, local)
  key, t0, step, metrics = jax.random.PRNGKey(seed + 3), time.time(), 0, {}
  snapshots = phase_lib.snapshots(run_dir, spec.checkpoint_every)
  session = resume.Session(snapshots, spec.phase, log=log)
  restored, _, step = session.restore({"cvae": loops.unalias(states), "key": key})
  states, key = restored["cvae"], restored["key"]
  writer.truncate_after(step)
  bar = log_lib.progress(steps, spec.phase, initial=step, disable=not spec.progress)
  with session:
    while step < steps:
      n = int(min(spec.loop.chunk, steps - step, session.next_due(step) - step))
      key, k = jax.random.split(key)
      states, metrics = loops.offline_chunk_fn(samg.cvae_update, batch_size, n)(
          states, distributed.split_seeds(k, local), ds)
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
  diag = distributed.gather_seeds(diag)       # every process's seeds, for the metadata and the log
  ckpt.save(steps, {"cvae": states, "latent_mean": latent_mean, "latent_std": latent_std},
            {"phase": "cvae", "dataset_id": dataset_id, "obs_dim": obs_dim, "act_dim": act_dim,
             "threshold_at_fit": config.threshold, **diag})
  ckpt.close()
  snapshots.discard()
  phase_lib.plot(run_dir, spec.plot_keys, spec.plot_title)
  fmt = lambda v: ", ".join(f"{x:.3f}" for x in np.atleast_1d(v))
  log(f"[cvae] done in {time.time() - t0:.0f}s: KL {fmt(diag['kl'])}, recon {fmt(diag['recon_loss'])}; "
      f"mean weight p on the data {fmt(diag['weight_data'])} (nonzero {fmt(diag['weight_data_nonzero'])}), "
      f"on uniform-random actions {fmt(diag['weight_random_actions'])}")
  return run_dir


def restore_cvae(cvae_dir: Path, seeds: int) -> Dict[str, Any]:
  """A finished cvae run: {'cvae': the seed-stacked CVAEState, 'latent_mean', 'latent_std'}, its
  shapes from the run's own cvae_config and checkpoint metadata; `seeds` must be its seed count."""
  def template(cfg, meta):
    config = runs.config_from_dict(samg.Config, cfg["cvae_config"])
    return _cvae_template(config, cfg["seeds"], cfg["seed"], meta["obs_dim"], meta["act_dim"])

  loaded = recipe_lib.load_run(cvae_dir, phases=("cvae",), template=template, want="a SAMG cvae run")
  if loaded.config["seeds"] != seeds:
    raise O2OError(f"the C-VAE run {cvae_dir} has {loaded.config['seeds']} seeds, the offline run {seeds}")
  return loaded.states


def cvae_phase(ctx: recipe_lib.Context) -> Path:
  """The C-VAE on the pretrain run's dataset, with its seeds (and its action size for the latent)."""
  cfg, meta = _pretrain_run(ctx)
  config = samg_config(ctx, cfg["dataset"], meta["act_dim"])
  spec = cvae_spec(cfg["dataset"], config, cfg["seeds"], cfg["seed"], ctx["samg_cvae_steps"],
                   ctx["batch_size"], ctx.base_name(), **ctx.phase_args())
  return train_cvae(spec, config, ctx.log)


# ----------------------------------------------------------------------------- online phase

def restore_base(pretrain_dir: Path, base: str, extra_steps: int) -> recipe_lib.LoadedRun:
  """A finished pretrain run of the base algorithm, its Config (`agent_config`) prepared for
  fine-tuning `extra_steps` more updates."""
  cfg = runs.read_config(pretrain_dir)
  if cfg.get("phase") != "pretrain" or cfg.get("algo") != base:
    raise O2OError(f"{pretrain_dir} is not a pretrain run of {base} (phase {cfg.get('phase')!r}, algo "
                   f"{cfg.get('algo')!r}): samg_{base} fine-tunes a {base} run")
  module = registry.get(base, registry.OFFLINE)
  base_config = runs.config_from_dict(module.Config, cfg["agent_config"])
  if base == "iql":
    # CORL fine-tunes IQL with the actor's cosine schedule spanning offline + online steps; the
    # offline run's schedule ended at its own length (lr 0), so the horizon is extended here (in
    # the restore template: the restored optimizer is the template's).
    base_config = dataclasses.replace(base_config, max_steps=base_config.max_steps + extra_steps)
  base_config = samg.online_base_config(base, base_config)     # Cal-QL: CORL's offline -> online switch
  loaded = recipe_lib.load_run(
      pretrain_dir, phases=("pretrain",), want=f"a pretrain run of {base}",
      template=lambda c, m: loops.init_shapes(module, seed_keys(c["seed"], c["seeds"]), m["obs_dim"],
                                              m["act_dim"], base_config))
  return dataclasses.replace(loaded, agent_config=base_config)


def finetune_phase(ctx: recipe_lib.Context) -> Path:
  """SAMG online from the pretrain run and the cvae run."""
  agent_name, pretrain_dir, cvae_dir = ctx.agent, ctx.runs["pretrain"], ctx.runs["cvae"]
  online_steps, warmup_steps, utd = ctx["online_steps"], ctx["warmup_steps"], ctx.get("utd") or 1
  eval_every, eval_episodes, batch_size = ctx["eval_every"], ctx["eval_episodes"], ctx["batch_size"]
  prefill_steps, buffer_size, log = ctx["samg_prefill"], ctx["samg_buffer_size"], ctx.log
  base = base_of(agent_name)
  loaded = restore_base(pretrain_dir, base, online_steps * utd)
  cfg, base_states, meta = loaded.config, loaded.states, loaded.meta
  seeds, seed = cfg["seeds"], cfg["seed"]
  config = dataclasses.replace(samg_config(ctx, cfg["dataset"], meta["act_dim"]), base=base,
                               base_config=loaded.agent_config).resolved(meta["act_dim"])
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
      agent=agent_name, dataset_id=cfg["dataset"], run_name=ctx.base_name(), config=run_config,
      loop=phase_lib.online_loop(online_steps, warmup_steps, eval_every, eval_episodes, utd=utd,
                                 batch_size=batch_size * 2 if offline_fraction else batch_size,
                                 offline_fraction=offline_fraction, buffer_size=buffer_size),
      plot_keys=("eval/normalized_score", "train/samg_weight", "train/samg_weight_nonzero",
                 "train/critic_loss"),
      **ctx.phase_args())

  def build(run_dir):
    cv = restore_cvae(cvae_dir, seeds)
    obs_mean, obs_std = (np.asarray(meta["obs_mean"], np.float32),
                         np.asarray(meta["obs_std"], np.float32))
    scale = float(meta["reward_transform"]["scale"])
    states = jax.jit(jax.vmap(lambda b, p, m, s: samg.from_offline(b, p, m, s, obs_mean, obs_std,
                                                                   config)))(
        base_states, cv["cvae"].vae.params, cv["latent_mean"], cv["latent_std"])
    data = prepared.load_data(meta["dataset_id"], obs_mean, obs_std, scale, batch_size=batch_size)
    t0 = time.time()
    prefill = (loops.collect_prefill(samg.act, states, data.make_env,
                                     distributed.local_seed_count(seeds), seed + 7_919,
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


# ----------------------------------------------------------------------------- the recipes

def check(ctx: recipe_lib.Context) -> None:
  """Before any phase runs (after the runner's checks of the shared values): the C-VAE steps, the prefill, and the
  samg.Config the options and --config. overrides make (its own checks, samg.Config.resolved)."""
  if ctx["samg_cvae_steps"] <= 0:    # (the shared values are checked by recipe.check first)
    raise O2OError(f"--samg_cvae_steps must be positive (got {ctx['samg_cvae_steps']})")
  prefill, warmup = ctx["samg_prefill"], ctx["warmup_steps"]
  if prefill < 0 or prefill + warmup < 1:
    raise O2OError("--samg_prefill must not be negative, and --samg_prefill + --warmup_steps must be at "
                   f"least 1 so the first update has data (got {prefill}, {warmup})")
  for name in ("base", "base_config"):
    if name in ctx.overrides:
      raise O2OError(f"--config.{name}: {ctx.agent}'s base algorithm is the one its name says "
                     f"({base_of(ctx.agent)}); pass --agent=samg_<base> instead")
  ctx.configure(samg.Config(base=base_of(ctx.agent))).resolved(1)


def options(agent: str):
  """The --samg_* options of `agent` (--samg_cql_offline_penalty: samg_cql's and samg_calql's)."""
  Option = recipe_lib.Option
  opts = [
      Option("samg_threshold", 0.5, "SAMG p_m^off: the weight p(s,a) is 0 below it (paper 0.5 on "
             "MuJoCo; 0.4 for Cal-QL on AntMaze).", field="threshold", check="unit"),
      Option("samg_weight_at", "sa", "SAMG weight of a transition: 'sa' = p(s,a) of the sampled pair "
             "(the reviewers' reading), 'next' = p(s',a') of the bootstrap pair.", kind="enum",
             choices=samg.WEIGHT_AT, field="weight_at"),
      Option("samg_cvae_steps", None, "SAMG C-VAE gradient steps (paper budget 100k, quick 3k).",
             kind="int", check="positive"),
      Option("samg_cvae_hidden", None, "SAMG C-VAE hidden sizes of encoder and decoder (paper budget "
             "750,750 as CPQ/BCQ; quick 64,64).", kind="list", field="cvae_hidden_dims"),
      Option("samg_cvae_decoder_hidden", None, "SAMG smaller decoder hidden sizes (the paper's "
             "'simplified decoder' on hopper/walker2d); default: same as the encoder.", kind="list",
             field="cvae_decoder_hidden_dims"),
      Option("samg_latent_dim", None, "SAMG C-VAE latent size (default 2|A|).", kind="int",
             field="latent_dim"),
      Option("samg_cvae_lr", 1e-3, "SAMG C-VAE learning rate.", field="cvae_lr"),
      Option("samg_kl_weight", 0.5, "SAMG C-VAE KL weight beta_KL (after annealing).",
             field="kl_weight"),
      Option("samg_kl_anneal_steps", None, "SAMG KL annealing: beta_KL ramps linearly from 0 over "
             "this many C-VAE steps (default: half the C-VAE steps on hopper, as the paper anneals "
             "there; 0 elsewhere).", kind="int", field="kl_anneal_steps"),
      Option("samg_cvae_raw_states", True, "SAMG C-VAE on raw (unnormalised) states, as the paper "
             "advises against normalising (posterior collapse).", kind="bool",
             field="cvae_raw_states"),
      Option("samg_prefill", 1000, "SAMG: transitions of the offline policy that seed each seed's "
             "online buffer (paper 1000).", kind="int"),
      Option("samg_buffer_size", 50_000, "SAMG online buffer capacity (paper 50k); applied when the "
             "online phase accepts a buffer size, else the buffer holds every online step.",
             kind="int"),
      Option("samg_exploration_noise", 0.03, "SAMG: std of the Gaussian exploration noise of a "
             "deterministic base actor (CORL finetune/iql.py `expl_noise` 0.03); stochastic actors "
             "sample instead.", field="exploration_noise"),
      Option("samg_exploration_noise_clip", 0.5, "SAMG: the exploration noise is clipped to "
             "[-clip, clip] before it is added (CORL finetune/iql.py `noise_clip` 0.5).",
             field="exploration_noise_clip"),
  ]
  if base_of(agent) in samg.CQL_BASES:
    opts.append(Option("samg_cql_offline_penalty", 1.0, "samg_cql, samg_calql: weight, relative to "
                       "CQL's alpha, of the p-weighted conservative term on offline rows (paper App. "
                       "C.1); each update then draws as many offline rows as online ones. 0: off (no "
                       "offline data online).", field="cql_offline_penalty"))
  # Env steps here, updates in samg.Config (x --utd): read by samg_config, not a `field`.
  opts.append(Option("samg_guidance_steps", None, "SAMG: online env steps with offline guidance; "
                     "after them p = 0 and the base algorithm runs unchanged (paper App. C.4 cuts it "
                     "'after a specific period', length not given). Default: the whole run.",
                     kind="int", check="nonnegative"))
  return tuple(opts)


def recipe(agent: str) -> recipe_lib.Recipe:
  base = base_of(agent)
  pretrain = offline.pretrain_phase(
      base, (base,), why=f"SAMG's base is the agent's name: {agent} runs on {base}",
      eval_every=lambda ctx: ctx["pretrain_eval_every"], preset=lambda ctx: "corl",
      hidden_dims=lambda ctx: network_dims(ctx["hidden_dims"]))
  return recipe_lib.Recipe(
      agent=agent, doc=f"SAMG on {BASE_NAMES[base]}: {base} pre-training, a state-action C-VAE on "
      "the dataset, then the base algorithm online with the offline critic's guidance weighted by the "
      "C-VAE", config=samg.Config, budgets=BUDGETS, reads=("warmup_steps", "utd"),
      options=options(agent), check=check,
      phases=(dataclasses.replace(pretrain, accepts=lambda cfg: cfg.get("algo") == base),
              recipe_lib.Phase("cvae", "fit", cvae_phase, needs=("pretrain",),
                               accepts=lambda cfg: False, step=samg.cvae_update,
                               data="the offline dataset's (s, a) pairs (raw states by default); "
                                    "at the end a normal fit of the latent means"),
              recipe_lib.Phase("finetune", "off-policy online", finetune_phase,
                               needs=("pretrain", "cvae"), act=samg.act,
                               data="the online buffer (samg.update; on CQL and Cal-QL "
                                    "samg.update_with_offline with as many offline rows for the "
                                    "p-weighted penalty)",
                               replay="--samg_prefill transitions of the offline policy per seed")))


RECIPES = {agent: recipe(agent) for agent in AGENTS}
