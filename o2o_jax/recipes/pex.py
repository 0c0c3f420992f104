"""PEX's recipe (agent pex; Haichao-Zhang/PEX `main_online.py --algorithm=pex`):

  pretrain   IQL (reused; the same run as iql_ft's)                             runs/pretrain/iql/...
  finetune   policy expansion: pi_beta = the IQL actor, frozen, plus a new pi_theta; every step the
             Boltzmann choice between them by Q; IQL's V/Q/target steps and pi_theta's AWR on the
             chosen actions; batches half offline rows, half online buffer; no update for the first
             --warmup_steps env steps (the composite policy acts)          runs/finetune/pex/...

  python -m experiments.finetune --agent=pex --budget=quick
  python -m experiments.finetune --agent=pex --dataset=o2o/hopper/medium-v0 --seeds=5
  python -m experiments.finetune --agent=pex --from=runs/pretrain/iql/... --pex_inv_temperature=5

The offline run's observation statistics and reward transform (--preset, 'official' by default: raw
rewards on MuJoCo as PEX's `get_env_and_dataset`; AntMaze r - 1 with beta 10 / expectile 0.9, as its
README's runs) apply to the offline rows and to every online reward.
"""
from __future__ import annotations

from pathlib import Path

import jax

from o2o_jax import distributed
from o2o_jax import recipe as recipe_lib
from o2o_jax.agents.o2o import pex
from o2o_jax.recipes import iql_way, o3f, offline, online_from_offline
from o2o_jax.types import seed_keys

# --budget: ocr_cft.BUDGETS' offline/online step counts (as O3F's); warm-up 5000 env steps before the
# first update (`initial_collection_steps`), 1000 on the quick budget's 10k online steps.
BUDGETS = {"paper": {**o3f.BUDGETS["paper"], "warmup_steps": 5_000},
           "quick": {**o3f.BUDGETS["quick"], "warmup_steps": 1_000}}


def finetune_phase(ctx: recipe_lib.Context) -> Path:
  """PEX online from the IQL run: its Config carried over, then the options and the --config.
  overrides; each seed's pi_theta initialised from its own key (the keys of seed + 1)."""
  loaded = online_from_offline.restore(ctx.runs["pretrain"], iql_way.IQL_ALGOS, "pex")
  config = ctx.configure(online_from_offline.carried_config(pex.Config, loaded.agent_config)).checked()
  meta, cfg = loaded.meta, loaded.config
  keys = seed_keys(cfg["seed"] + 1, distributed.local_seed_count(cfg["seeds"]))   # this process's seeds

  def start(states):
    return jax.jit(jax.vmap(lambda s, k: pex.start_online(s, k, meta["obs_dim"], meta["act_dim"],
                                                         config)))(states, keys)

  fraction = ctx["pex_offline_fraction"]

  def describe(data):
    return (f"pex from {cfg['algo']}: {ctx['online_steps']} online steps (updates after "
            f"{ctx['warmup_steps']}), UTD {ctx.get('utd') or 1}, Boltzmann choice between the frozen "
            f"offline policy and a new one (alpha_inv {config.inv_temperature}), batches "
            f"{fraction:.0%} of the {data.dataset.size} offline transitions")

  return online_from_offline.finetune_phase(
      ctx, "pex", loaded, config, start, describe, offline_fraction=fraction,
      plot_keys=("eval/normalized_score", "train/critic_loss", "train/value_loss", "train/actor_loss",
                 "train/online_policy_prob"),
      extra_config={"offline_fraction": fraction})


Option = recipe_lib.Option
OPTIONS = (
    Option("pex_inv_temperature", 10.0, "PEX: inverse temperature alpha_inv of the Boltzmann choice "
           "between pi_beta and pi_theta by min_k Q (PEX default 10).", field="inv_temperature",
           check="nonnegative"),
    Option("pex_eval_epsilon", 0.1, "PEX: at evaluation, pi_theta's sample instead of its mode and a "
           "Boltzmann draw instead of the argmax, each with this probability (PEX 0.1).",
           field="eval_epsilon", check="unit"),
    Option("pex_online_actor_lr", 3e-4, "PEX: pi_theta's learning rate (constant).",
           field="online_actor_lr", check="positive"),
    Option("pex_offline_fraction", 0.5, "PEX: share of each batch drawn from the offline data, the "
           "rest from the online buffer (PEX 0.5).", check="unit"),
    Option("pex_beta", None, "PEX: AWR inverse temperature beta of pi_theta's update (default: the "
           "IQL run's, 3 on MuJoCo, 10 on AntMaze).", field="beta", check="nonnegative"),
)

RECIPES = {"pex": recipe_lib.Recipe(
    agent="pex", doc="PEX: IQL pre-training, then policy expansion online (the frozen IQL policy and "
    "a new one, chosen per step by a Boltzmann draw over Q)", config=pex.Config, budgets=BUDGETS,
    reads=("offline_algo", "preset", "warmup_steps", "utd"), defaults={"preset": "official"},
    options=OPTIONS, run_name=offline.preset_run_name,
    check=online_from_offline.refuse_network_overrides,
    phases=(offline.pretrain_phase("iql", iql_way.IQL_ALGOS, why="PEX expands an IQL policy on IQL's "
                                   "learner"),
            recipe_lib.Phase("finetune", "off-policy online", finetune_phase, needs=("pretrain",),
                             step=pex.update, act=pex.act,
                             data="half offline rows, half the online buffer (--pex_offline_fraction)",
                             replay="online transitions only (the offline rows join each batch)")))}
