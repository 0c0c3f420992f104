"""Each O2O method's recipe (`o2o_jax.recipe.Recipe`): the phases it runs, declared as data, beside
the functions that build each phase. `get(agent)` returns an agent's recipe; `RECIPES` names the
module that declares it (its `RECIPES` dict: agent -> Recipe)."""
from __future__ import annotations

import importlib

from o2o_jax.errors import O2OError

RECIPES = {   # agent -> the module declaring its recipe
    "o2td3": "o2o_jax.recipes.ocr_cft",
    "o2sac": "o2o_jax.recipes.ocr_cft",
    "direct_td3": "o2o_jax.recipes.ocr_cft",
    "direct_sac": "o2o_jax.recipes.ocr_cft",
    "o2ppo": "o2o_jax.recipes.o2ppo",
    "direct_ppo": "o2o_jax.recipes.o2ppo",
    "o3f": "o2o_jax.recipes.o3f",
    "aca": "o2o_jax.recipes.aca",
    **{a: "o2o_jax.recipes.iql_way" for a in ("iql_ft", "awac_ft")},
    "pex": "o2o_jax.recipes.pex",
    **{a: "o2o_jax.recipes.samg" for a in ("samg_cql", "samg_awac", "samg_iql")},
    "calql": "o2o_jax.recipes.calql",
    "samg_calql": "o2o_jax.recipes.samg",
    **{a: "o2o_jax.recipes.proto" for a in ("proto", "proto_td3")},
    "off2on": "o2o_jax.recipes.off2on",
}


def get(agent: str):
  if agent not in RECIPES:
    raise O2OError(f"unknown O2O agent '{agent}': choose one of {', '.join(sorted(RECIPES))}")
  return importlib.import_module(RECIPES[agent]).RECIPES[agent]


def all_recipes():
  """{agent: Recipe} of every registered agent."""
  return {agent: get(agent) for agent in RECIPES}
