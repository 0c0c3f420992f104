"""IQL and AWAC online fine-tuning, CORL's protocol (`algorithms/finetune/{iql,awac}.py`; OCR-CFT ran
both with that code), agents iql_ft and awac_ft:

  pretrain   IQL (iql, or iql5) / AWAC offline (reused; shared with PEX's)     runs/pretrain/{iql,awac}/...
  finetune   the same objective online; one buffer = the whole offline dataset, then every online
             transition appended, sampled uniformly; one update per env step from the first
                                                                   runs/finetune/{iql_ft,awac_ft}/...

  python -m experiments.finetune --agent=iql_ft --budget=quick
  python -m experiments.finetune --agent=awac_ft --dataset=o2o/hopper/medium-v0 --seeds=5
  python -m experiments.finetune --agent=iql_ft --from=runs/pretrain/iql/...      # any IQL run

What CORL does at the switch and these recipes do too: nothing is re-initialised (networks, Adam
moments); IQL's actor learning rate keeps following its cosine schedule, continued past the offline
steps as PyTorch's CosineAnnealingLR does (o2o_jax/agents/o2o/iql_ft.py). The offline run's
observation statistics and reward transform (--preset, 'official' by default: raw rewards on MuJoCo;
AntMaze r - 1, IQL beta 10 / expectile 0.9, AWAC lambda 0.1, as CORL's finetune configs) apply to the
offline rows and to every online reward.
"""
from __future__ import annotations

import functools
from pathlib import Path

import jax

from o2o_jax import recipe as recipe_lib
from o2o_jax.agents.o2o import awac_ft, iql_ft
from o2o_jax.recipes import o3f as o3f_recipe
from o2o_jax.recipes import offline, online_from_offline

IQL_ALGOS = ("iql", "iql5")     # IQL runs with any number of critics (the state is the same)
# --budget: O3F's (ocr_cft.BUDGETS' offline/online step counts, no warm-up): the buffer starts with the
# whole dataset and CORL updates from the first online step.
BUDGETS = o3f_recipe.BUDGETS
PLOTS = {"iql_ft": ("eval/normalized_score", "train/critic_loss", "train/value_loss", "train/actor_loss"),
         "awac_ft": ("eval/normalized_score", "train/critic_loss", "train/actor_loss")}


def _finetune(ctx: recipe_lib.Context, agent: str, module, algos) -> Path:
  """`agent` online from the pretrain run: its Config carried over, then the options and the
  --config. overrides; `module.start_online` switches the states; buffer = dataset + online."""
  loaded = online_from_offline.restore(ctx.runs["pretrain"], algos, agent)
  config = ctx.configure(online_from_offline.carried_config(module.Config, loaded.agent_config))

  def describe(data):
    return (f"{agent} from {loaded.config['algo']}: {ctx['online_steps']} online steps, UTD "
            f"{ctx.get('utd') or 1}, the offline objective continued, buffer = the "
            f"{data.dataset.size} offline transitions + online")

  start = jax.jit(jax.vmap(functools.partial(module.start_online, config=config)))
  return online_from_offline.finetune_phase(ctx, agent, loaded, config, start, describe,
                                            offline_union=True, plot_keys=PLOTS[agent])


def iql_finetune_phase(ctx: recipe_lib.Context) -> Path:
  return _finetune(ctx, "iql_ft", iql_ft, IQL_ALGOS)


def awac_finetune_phase(ctx: recipe_lib.Context) -> Path:
  return _finetune(ctx, "awac_ft", awac_ft, ("awac",))


Option = recipe_lib.Option
IQL_OPTIONS = (
    Option("iql_ft_online_actor_lr", None, "iql_ft: a constant actor learning rate online with fresh "
           "Adam moments (O3F's choice); default: CORL's, the offline cosine schedule continued past "
           "its end (it rises again from 0 at the switch).", field="online_actor_lr",
           check="positive"),
    Option("iql_ft_beta", None, "iql_ft: AWR inverse temperature beta online (default: the IQL run's, "
           "3 on MuJoCo, 10 on AntMaze).", field="beta", check="nonnegative"),
)
AWAC_OPTIONS = (
    Option("awac_ft_lambda", None, "awac_ft: AWAC temperature lambda online (default: the AWAC run's, "
           "1/3 on MuJoCo, 0.1 on AntMaze).", field="awac_lambda", check="positive"),
)
READS = ("offline_algo", "preset", "warmup_steps", "utd")
REPLAY = "the whole offline dataset, then every online transition (CORL's load_d4rl_dataset)"

RECIPES = {
    "iql_ft": recipe_lib.Recipe(
        agent="iql_ft", doc="IQL fine-tuning (CORL finetune/iql.py): IQL pre-training, then the same "
        "objective online on the offline data plus online transitions", config=iql_ft.Config,
        budgets=BUDGETS, reads=READS, defaults={"preset": "official"}, options=IQL_OPTIONS,
        run_name=offline.preset_run_name, check=online_from_offline.refuse_network_overrides,
        phases=(offline.pretrain_phase("iql", IQL_ALGOS, why="IQL fine-tuning continues IQL's "
                                       "objective"),
                recipe_lib.Phase("finetune", "off-policy online", iql_finetune_phase,
                                 needs=("pretrain",), step=iql_ft.update, act=iql_ft.act,
                                 data="uniform batches of the one buffer", replay=REPLAY))),
    "awac_ft": recipe_lib.Recipe(
        agent="awac_ft", doc="AWAC fine-tuning (CORL finetune/awac.py): AWAC pre-training, then the "
        "same objective online on the offline data plus online transitions", config=awac_ft.Config,
        budgets=BUDGETS, reads=READS, defaults={"preset": "official"}, options=AWAC_OPTIONS,
        run_name=offline.preset_run_name, check=online_from_offline.refuse_network_overrides,
        phases=(offline.pretrain_phase("awac", ("awac",), why="AWAC fine-tuning continues AWAC's "
                                       "objective"),
                recipe_lib.Phase("finetune", "off-policy online", awac_finetune_phase,
                                 needs=("pretrain",), step=awac_ft.update, act=awac_ft.act,
                                 data="uniform batches of the one buffer", replay=REPLAY))),
}
