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
# Direct fine-tuning: the OCR-CFT agent's module with every component switched off (recipes.ocr_cft,
# recipes.o2ppo).
O2O.update({"direct_td3": "o2o_jax.agents.o2o.o2td3", "direct_sac": "o2o_jax.agents.o2o.o2sac",
            "direct_ppo": "o2o_jax.agents.o2o.o2ppo"})
OFFLINE.update({"iql5": "o2o_jax.agents.o2o.o3f", "sacml": "o2o_jax.agents.o2o.aca"})
# IQL and AWAC fine-tuning (CORL's finetune protocol) and PEX, on the offline iql / awac runs.
O2O.update({"iql_ft": "o2o_jax.agents.o2o.iql_ft", "awac_ft": "o2o_jax.agents.o2o.awac_ft",
            "pex": "o2o_jax.agents.o2o.pex"})
# Cal-QL pre-trains with its own calibrated objective ("calql" offline) and fine-tunes it online;
# SAMG runs on it too (samg.Config.base "calql").
OFFLINE["calql"] = "o2o_jax.agents.o2o.calql"
O2O.update({"calql": "o2o_jax.agents.o2o.calql", "samg_calql": "o2o_jax.agents.o2o.samg"})
# PROTO on CQL (SAC-PROTO) and on TD3+BC (TD3-PROTO): one module, proto_td3 its TD3 face.
O2O.update({"proto": "o2o_jax.agents.o2o.proto", "proto_td3": "o2o_jax.agents.o2o.proto_td3"})
# Off2On: an ensemble of CQL agents (pre-trained as seeds of one "cql" run) with balanced replay.
O2O["off2on"] = "o2o_jax.agents.o2o.off2on"


def get(name: str, family: dict = None) -> ModuleType:
  families = [family] if family is not None else [ONLINE, OFFLINE, O2O]
  for fam in families:
    if name in fam:
      return importlib.import_module(fam[name])
  known = sorted(k for fam in families for k in fam)
  raise O2OError(f"unknown agent '{name}': choose one of {', '.join(known)}")
