"""Cal-QL's recipe (agent calql), CORL's `finetune/cal_ql.py` split into the runner's two phases:

  pretrain   Cal-QL offline: CQL with the return-to-go lower bound on the policy actions' Q
             (offline algorithm "calql", the dataset rows carrying V^mu; reused)  runs/pretrain/calql/...
  finetune   CORL's switch (calibration off, alpha_cql := cql_alpha_online), then the same CQL loss
             online, one update per env step from the first step, each batch half offline rows and
             half online rows (`mixing_ratio` 0.5)                                runs/finetune/calql/...

  python -m experiments.finetune --agent=calql --budget=quick
  python -m experiments.finetune --agent=calql --calql_alpha_online=5
  python -m experiments.finetune --agent=calql --from=runs/pretrain/calql/...

Everything carries over at the switch (networks, Adam moments, alpha, alpha'), as CORL's one trainer
continues; rewards and states keep the pretrain run's transforms.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from o2o_jax import loops, runs
from o2o_jax import phase as phase_lib
from o2o_jax import recipe as recipe_lib
from o2o_jax.agents.o2o import calql
from o2o_jax.data import prepared
from o2o_jax.errors import O2OError
from o2o_jax.recipes import offline, ocr_cft
from o2o_jax.types import seed_keys

# --budget: ocr_cft.BUDGETS' offline/online step counts (the OCR-CFT protocol: 100k online steps,
# evaluation every 1k); no warm-up, since CORL updates on the mixed batch from the first env step.
BUDGETS = {b: {**{k: v[k] for k in ("pretrain_steps", "pretrain_eval_every", "online_steps",
                                     "eval_every", "eval_episodes", "hidden_dims")}, "warmup_steps": 0}
           for b, v in ocr_cft.BUDGETS.items()}
MIXING_RATIO = 0.5      # CORL `mixing_ratio`: the offline share of each online batch


def _leaf_forms(tree):
  return [(tuple(x.shape), x.dtype) for x in jax.tree_util.tree_leaves(tree)]


def restore_pretrain(pretrain_dir: Path, config: calql.Config) -> recipe_lib.LoadedRun:
  """A finished Cal-QL pretrain run restored with `config` (the online Config: its learning rates
  build the optimisers); a one-line error if `config` would change the networks it trained."""
  cfg = runs.read_config(pretrain_dir)
  if cfg.get("phase") != "pretrain" or cfg.get("algo") != "calql":
    raise O2OError(f"{pretrain_dir} is not a pretrain run of calql (phase {cfg.get('phase')!r}, algo "
                   f"{cfg.get('algo')!r}): calql fine-tunes its own calibrated pre-training")
  trained = calql.online_config(runs.config_from_dict(calql.Config, cfg["agent_config"]))

  def template(c, m):
    shapes = lambda conf: loops.init_shapes(calql, seed_keys(c["seed"], c["seeds"]), m["obs_dim"],
                                            m["act_dim"], conf)
    wanted = shapes(config)
    if _leaf_forms(wanted) != _leaf_forms(shapes(trained)):
      changed = [f.name for f in dataclasses.fields(config)
                 if getattr(config, f.name) != getattr(trained, f.name)]
      raise O2OError(f"--config: {', '.join(changed)} would change the networks trained by "
                     f"{pretrain_dir} (the pretrain phase's sizes come from --hidden_dims and the "
                     "dataset preset)")
    return wanted

  loaded = recipe_lib.load_run(pretrain_dir, phases=("pretrain",), template=template,
                               want="a pretrain run of calql")
  return dataclasses.replace(loaded, agent_config=config)


def finetune_phase(ctx: recipe_lib.Context) -> Path:
  """Cal-QL online from its pretrain run: the run's Config with the options and the --config.
  overrides, then CORL's switch (`calql.online_config`)."""
  pretrain_dir = ctx.runs["pretrain"]
  trained = runs.config_from_dict(calql.Config, runs.read_config(pretrain_dir)["agent_config"])
  config = calql.online_config(ctx.configure(trained))
  loaded = restore_pretrain(pretrain_dir, config)
  cfg, states, meta = loaded.config, loaded.states, loaded.meta
  seeds, seed, utd, batch_size = cfg["seeds"], cfg["seed"], ctx.get("utd") or 1, ctx["batch_size"]
  online_steps, warmup_steps, mixing = ctx["online_steps"], ctx["warmup_steps"], ctx["calql_mixing_ratio"]
  eval_every, eval_episodes, log = ctx["eval_every"], ctx["eval_episodes"], ctx.log
  run_config = {"phase": "finetune", "agent": "calql", "dataset": cfg["dataset"], "env": cfg["env"],
                "seeds": seeds, "seed": seed, "from": str(pretrain_dir), "steps": online_steps,
                "reward_transform": dict(zip(("scale", "shift"), prepared.reward_transform(meta))),
                "agent_config": dataclasses.asdict(config), "utd": utd, "warmup_steps": warmup_steps,
                "mixing_ratio": mixing, "eval_every": eval_every, "eval_episodes": eval_episodes,
                "batch_size": batch_size}
  spec = phase_lib.OnlinePhase(
      agent="calql", dataset_id=cfg["dataset"], run_name=ctx.base_name(), config=run_config,
      loop=phase_lib.online_loop(online_steps, warmup_steps, eval_every, eval_episodes, utd=utd,
                                 batch_size=batch_size, offline_fraction=mixing),
      plot_keys=("eval/normalized_score", "train/critic_loss", "train/cql_gap", "train/actor_loss"),
      **ctx.phase_args())

  def build(run_dir):
    scale, shift = prepared.reward_transform(meta)
    data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"], scale,
                              batch_size=batch_size, reward_shift=shift)
    log(f"[finetune] calql: {online_steps} online steps, UTD {utd}, calibration off, alpha_cql "
        f"{config.cql_alpha}, each batch {mixing:.0%} offline rows ({data.dataset.size} transitions) "
        f"and the rest online -> {run_dir}")
    return phase_lib.OnlineTraining(
        learner=loops.Learner(ctx.phase.step, ctx.phase.act), states=states, data=data,
        metadata={**meta, "agent": "calql"},
        start_scores={"offline": np.asarray(meta["eval_score"], np.float32)})

  return phase_lib.run_online_phase(spec, build, log)


def check(ctx: recipe_lib.Context) -> None:
  """The fields CORL's switch sets are refused as overrides (they would be replaced silently)."""
  if "cql_alpha" in ctx.overrides:
    raise O2OError("--config.cql_alpha: online, Cal-QL's alpha_cql is cql_alpha_online (CORL's "
                   "switch); pass --calql_alpha_online")
  if "calibrated" in ctx.overrides:
    raise O2OError("--config.calibrated: Cal-QL fine-tunes as CORL does, without the calibration "
                   "(online rows have no return-to-go); it is on in the pretrain phase")


OPTIONS = (
    recipe_lib.Option("calql_alpha_online", None, "Cal-QL alpha_cql after the switch (CORL "
                      "`cql_alpha_online`; default the pretrain run's: 10 on MuJoCo, 5 on AntMaze).",
                      field="cql_alpha_online", check="nonnegative"),
    recipe_lib.Option("calql_mixing_ratio", MIXING_RATIO, "Cal-QL: offline share of each online batch "
                      "(CORL `mixing_ratio` 0.5).", check="unit"),
)

RECIPES = {"calql": recipe_lib.Recipe(
    agent="calql", doc="Cal-QL: calibrated CQL pre-training (Q of policy actions bounded below by "
    "the return-to-go), then CQL online without the bound on half offline, half online batches",
    config=calql.Config, budgets=BUDGETS, reads=("warmup_steps", "utd"), options=OPTIONS, check=check,
    phases=(dataclasses.replace(
                offline.pretrain_phase("calql", ("calql",), preset=lambda ctx: "corl",
                                       why="Cal-QL pre-trains with its own calibrated objective"),
                accepts=lambda cfg: cfg.get("algo") == "calql",
                data="the offline dataset (the preset's reward and state transforms), each row with "
                     "its return-to-go V^mu (calql.offline_dataset)"),
            recipe_lib.Phase("finetune", "off-policy online", finetune_phase, needs=("pretrain",),
                             step=calql.update, act=calql.act,
                             data="half the offline dataset's rows, half the online buffer's",
                             replay="online steps only (the offline rows are sampled beside it)")))}
