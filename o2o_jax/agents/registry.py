"""Agent name -> module: the one place launchers look agents up."""
from __future__ import annotations

import importlib
from types import ModuleType

from o2o_jax.errors import O2OError

ONLINE = {"sac": "o2o_jax.agents.online.sac", "td3": "o2o_jax.agents.online.td3",
          "ppo": "o2o_jax.agents.online.ppo"}
OFFLINE = {"td3bc": "o2o_jax.agents.offline.td3_bc", "cql": "o2o_jax.agents.offline.cql",
           "iql": "o2o_jax.agents.offline.iql", "awac": "o2o_jax.agents.offline.awac",
           "bc": "o2o_jax.agents.offline.bc"}
O2O = {"o2td3": "o2o_jax.agents.o2o.o2td3", "o2sac": "o2o_jax.agents.o2o.o2sac",
       "o2ppo": "o2o_jax.agents.o2o.o2ppo"}
# SAMG on each base: one module, the base is `samg.Config.base`.
O2O.update({f"samg_{b}": "o2o_jax.agents.o2o.samg" for b in ("cql", "awac", "iql")})
# O3F fine-tunes IQL with 5 critics ("iql5", its offline stage); ACA's offline stage is SAC+ML ("sacml").
O2O.update({"o3f": "o2o_jax.agents.o2o.o3f", "aca": "o2o_jax.agents.o2o.aca"})
OFFLINE.update({"iql5": "o2o_jax.agents.o2o.o3f", "sacml": "o2o_jax.agents.o2o.aca"})


def get(name: str, family: dict = None) -> ModuleType:
  families = [family] if family is not None else [ONLINE, OFFLINE, O2O]
  for fam in families:
    if name in fam:
      return importlib.import_module(fam[name])
  known = sorted(k for fam in families for k in fam)
  raise O2OError(f"unknown agent '{name}': choose one of {', '.join(known)}")
