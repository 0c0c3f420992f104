"""O3F's recipe (agent o3f):

  pretrain   IQL with an ensemble of 5 critics ("iql5"; reused)                 runs/pretrain/iql5/...
             on the rewards of the IQL O3F builds on (--preset=official, the default: CORL iql.py
             `modify_reward`, locomotion r * 1000 / (max - min episode return), AntMaze r - 1)
  finetune   the same IQL objective online, the replay buffer initialised with the whole offline
             dataset, every env step the best of N candidates around the policy action by mean Q
                                                                                 runs/finetune/o3f/...

  python -m experiments.finetune --agent=o3f --budget=quick
  python -m experiments.finetune --agent=o3f --offline_algo=iql          # a 2-critic CORL IQL run
  python -m experiments.finetune --agent=o3f --from=runs/pretrain/iql5/... --o3f_omega=1

The reward transform of the IQL run (its checkpoint metadata) is applied to the offline buffer and to
every online reward (o2o_jax.data.prepared.load_data / o2o_jax.phase.train_online), so both share one
scale.
"""
from __future__ import annotations

import functools
from pathlib import Path

import jax
from o2o_jax import presets
from o2o_jax import recipe as recipe_lib
from o2o_jax.agents.o2o import o3f
from o2o_jax.recipes import offline, ocr_cft, online_from_offline

IQL_ALGOS = ("iql5", "iql")     # offline runs O3F can fine-tune (IQL's state, any number of critics)
# --budget: ocr_cft.BUDGETS' offline/online step counts; no warm-up, since the buffer starts with the
# whole dataset and Algorithm 1 updates from the first env step.
BUDGETS = {b: {**{k: v[k] for k in ("pretrain_steps", "pretrain_eval_every", "online_steps",
                                     "eval_every", "eval_episodes", "hidden_dims")}, "warmup_steps": 0}
           for b, v in ocr_cft.BUDGETS.items()}

def restore_iql(pretrain_dir: Path) -> recipe_lib.LoadedRun:
  """A finished IQL pretrain run (any number of critics)."""
  return online_from_offline.restore(pretrain_dir, IQL_ALGOS, "o3f")


def finetune_phase(ctx: recipe_lib.Context) -> Path:
  """O3F online from the pretrain run: the IQL run's Config carried over, sigma for the dataset's env
  (paper: 0.2 on locomotion, 0.05 elsewhere), then the options and the --config. overrides."""
  loaded = restore_iql(ctx.runs["pretrain"])
  env, _ = presets.dataset_env_and_level(loaded.config["dataset"])
  config = ctx.configure(online_from_offline.carried_config(o3f.Config, loaded.agent_config,
                                                            sigma=o3f.sigma_for_env(env)))

  def describe(data):
    return (f"o3f from {loaded.config['algo']} ({config.num_critics} critics"
            f"{', deterministic actor' if config.deterministic else ''}): {ctx['online_steps']} "
            f"online steps, UTD {ctx.get('utd') or 1}, best of {config.num_candidates} candidates "
            f"(sigma {config.sigma}, omega {config.omega}), buffer = the {data.dataset.size} offline "
            "transitions + online")

  return online_from_offline.finetune_phase(
      ctx, "o3f", loaded, config, jax.jit(jax.vmap(functools.partial(o3f.start_online, config=config))),
      describe, offline_union=True,    # the buffer "starts as the whole dataset"
      plot_keys=("eval/normalized_score", "train/critic_loss", "train/value_loss", "train/actor_loss"))


OPTIONS = (
    recipe_lib.Option("o3f_sigma", None, "O3F candidate std sigma (paper: 0.2 on locomotion, 0.05 "
                      "elsewhere; default chosen from the dataset's env).", field="sigma",
                      check="nonnegative"),
    recipe_lib.Option("o3f_num_candidates", 100, "O3F candidate actions per env step N (paper 100).",
                      kind="int", field="num_candidates", check="positive"),
    recipe_lib.Option("o3f_omega", 0.0, "O3F optimism weight omega of f = Q_mean + omega Q_std (paper "
                      "0; 1 is the UCB ablation).", field="omega"),
    recipe_lib.Option("o3f_clip_candidates", True, "O3F: clip candidates to the action box [-1, 1].",
                      kind="bool", field="clip_candidates"),
    recipe_lib.Option("o3f_online_actor_lr", 3e-4, "O3F actor learning rate online (constant; IQL's "
                      "fine-tuning does not decay it).", field="online_actor_lr"),
)

RECIPES = {"o3f": recipe_lib.Recipe(
    agent="o3f", doc="O3F: IQL (5 critics) pre-training, then IQL online with the best of N "
    "candidate actions by Q", config=o3f.Config, budgets=BUDGETS,
    reads=("offline_algo", "preset", "warmup_steps", "utd"), defaults={"preset": "official"},
    options=OPTIONS,
    phases=(offline.pretrain_phase("iql5", IQL_ALGOS, chain="o3f",
                                   why="O3F keeps IQL's objective online; the paper: IQL with 5 "
                                       "critics, iql5"),
            recipe_lib.Phase("finetune", "off-policy online", finetune_phase, needs=("pretrain",),
                             step=o3f.update, act=o3f.act,
                             data="one buffer: the whole offline dataset, then every online step",
                             replay="the whole offline dataset (Algorithm 1)")),
    run_name=offline.preset_run_name)}
