"""Per-dataset hyperparameter presets, from shared/reference/baselines.md §2 (CORL's configs).

A preset is a dict of agent-config overrides plus the reward transform. `--preset=none` keeps the
algorithms' defaults, which are exactly what the official OCR-CFT code uses for every MuJoCo set.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

PRESETS = ("corl", "none")


def dataset_env_and_level(dataset_id: str) -> Tuple[str, str]:
  """'o2o/hopper/medium-replay-v0' -> ('hopper', 'medium-replay')."""
  parts = dataset_id.split("/")
  level = parts[-1].rsplit("-v", 1)[0]
  env = parts[-2] if len(parts) > 1 else ""
  return env.split("-")[0], level


def offline_preset(algo: str, dataset_id: str, preset: str = "corl") -> Dict:
  """{'config': overrides, 'normalize_reward': bool} for an offline algorithm on a dataset."""
  out = {"config": {}, "normalize_reward": False}
  if preset == "none":
    return out
  env, level = dataset_env_and_level(dataset_id)
  if algo == "iql" and env == "hopper":
    if level in ("medium", "medium-replay"):
      out["config"] = {"deterministic": True, "tau": 0.001}
      out["normalize_reward"] = True
    elif level == "medium-expert":
      out["config"] = {"expectile": 0.5, "beta": 6.0}
  if algo == "cql" and env == "hopper" and level == "medium":
    out["normalize_reward"] = True
  return out


def reward_scale(episode_returns: np.ndarray) -> float:
  """CORL's `normalize_reward` for MuJoCo: r * 1000 / (max_return - min_return) over the dataset."""
  spread = float(np.max(episode_returns) - np.min(episode_returns))
  return 1000.0 / spread if spread > 0 else 1.0
