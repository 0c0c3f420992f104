"""Per-dataset hyperparameter presets of the offline (pre-training) algorithms.

A preset is a dict: `config` (agent-config overrides) and `normalize_reward` (CORL's locomotion
reward normalisation, r * 1000 / (max return - min return)), plus, only where they apply,
`reward_scale` / `reward_shift` (an affine reward transform r * scale + shift, AntMaze),
`normalize_states` (False: raw observations) and `unsupported` (reference settings this framework's
agent does not implement; recorded in the run's config.json and printed, never silently dropped).

  official  the reference code of the O2O chain the offline run feeds (the default of the O2O chains):
            cql / td3bc / iql: the official OCR-CFT offline scripts (`offline/{cql,td3_bc,iql}.py`):
              their dataclass defaults on MuJoCo (raw rewards, normalised states; td3bc's nets
              initialised as `net.py`'s MLP, scheme "ocr_cft"), the
              `config/offline/<algo>/antmaze/*.yaml` settings on AntMaze;
            iql5, and iql in the O3F chain: the IQL that O3F builds on (CORL `iql.py`
              `modify_reward`): locomotion rewards normalised, AntMaze rewards r - 1;
            awac: CORL `finetune/awac.py`, which OCR-CFT ran: its defaults on MuJoCo, lambda 0.1 and
              rewards r - 1 on AntMaze; bc: the algorithm's defaults;
            calql (the same under 'corl': OCR-CFT ran Cal-QL with CORL's `finetune/cal_ql.py`): its
              TrainConfig defaults on MuJoCo, `configs/finetune/cal_ql/antmaze/*.yaml` on AntMaze.
  corl      CORL's `configs/offline/<algo>/<env>/<dataset>.yaml` (shared/reference/baselines.md §2),
            e.g. IQL's deterministic actor and CQL's reward normalisation on hopper-medium.
  none      the algorithm's defaults, raw rewards.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

PRESETS = ("official", "corl", "none")
# Env names whose rewards CORL's `modify_reward` normalises (the D4RL locomotion suite).
LOCOMOTION_REWARD_ENVS = ("halfcheetah", "hopper", "walker2d")


def dataset_env_and_level(dataset_id: str) -> Tuple[str, str]:
  """'o2o/hopper/medium-replay-v0' -> ('hopper', 'medium-replay'); an AntMaze id in either form,
  'D4RL/antmaze/medium-play-v1' or 'D4RL/antmaze-medium-play-v1', -> ('antmaze', 'medium-play')."""
  parts = dataset_id.split("/")
  for part in parts:
    if part.startswith("antmaze-"):
      return "antmaze", part[len("antmaze-"):].rsplit("-v", 1)[0]
  level = parts[-1].rsplit("-v", 1)[0]
  env = parts[-2] if len(parts) > 1 else ""
  return env.split("-")[0], level


def antmaze_size(dataset_id: str) -> Optional[str]:
  """'umaze', 'medium' or 'large' for an AntMaze dataset id (`*/antmaze/*` or `*/antmaze-*`), else
  None. An AntMaze id without a known maze size counts as 'umaze' (the default maze settings)."""
  env, level = dataset_env_and_level(dataset_id)
  if env != "antmaze":
    return None
  for size in ("medium", "large"):
    if level.startswith(size):
      return size
  return "umaze"


def d4rl_name(dataset_id: str) -> str:
  """The D4RL-style env name the reference scripts test substrings of: 'hopper-medium-expert'."""
  env, level = dataset_env_and_level(dataset_id)
  return f"{env}-{level}"


def offline_preset(algo: str, dataset_id: str, preset: str = "corl",
                   chain: Optional[str] = None) -> Dict[str, Any]:
  """The preset of offline algorithm `algo` on a dataset (see the module docstring); `chain` is the
  O2O agent the run feeds (o2sac, o2td3, o2ppo, o3f, ...) or None for a standalone offline run."""
  if preset not in PRESETS:
    from o2o_jax.errors import O2OError
    raise O2OError(f"--preset must be one of {', '.join(PRESETS)} (got {preset!r})")
  if algo == "calql" and preset != "none":
    return _calql(dataset_id)
  if preset == "official":
    return _official(algo, dataset_id, chain)
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


def _official(algo: str, dataset_id: str, chain: Optional[str]) -> Dict[str, Any]:
  env, _ = dataset_env_and_level(dataset_id)
  antmaze = antmaze_size(dataset_id) is not None
  out: Dict[str, Any] = {"config": {}, "normalize_reward": False}
  if algo == "iql5" or (chain == "o3f" and algo == "iql"):
    # CORL iql.py `modify_reward` (the IQL O3F builds on): locomotion r * 1000 / (max - min return);
    # AntMaze r - 1.
    if env in LOCOMOTION_REWARD_ENVS:
      out["normalize_reward"] = True
    elif antmaze:
      out["reward_shift"] = -1.0
    return out
  if algo == "td3bc":
    # OCR-CFT offline/td3_bc.py: DeterministicPolicy and CriticFunction on net.py `MLP`, every layer
    # orthogonal with gain 1 (CORL's TD3+BC keeps PyTorch's default init).
    out["config"] = {"actor_init": "ocr_cft", "critic_init": "ocr_cft"}
  if not antmaze:
    return out     # OCR-CFT offline/{cql,td3_bc,iql}.py dataclass defaults: raw rewards, states normalised
  if algo == "cql":
    # OCR-CFT config/offline/cql/antmaze/*.yaml (and O2SAC.py's hard-coded modify_reward(.., 10, -5)).
    out["config"] = {"critic_hidden_dims": (256,) * 5, "actor_lr": 1e-4, "cql_alpha": 5.0,
                     "lagrange": True, "target_action_gap": 0.8}
    out.update(reward_scale=10.0, reward_shift=-5.0, normalize_states=False,
               unsupported={"cql_max_target_backup": True, "cql_clip_diff_min": -200.0})
  elif algo == "td3bc":
    out["reward_shift"] = -1.0        # OCR-CFT config/offline/td3_bc/antmaze/*.yaml + utils.modify_reward
  elif algo == "iql":
    out["config"] = {"beta": 10.0, "expectile": 0.9}    # config/offline/iql/antmaze/*.yaml
    out["reward_shift"] = -1.0
  elif algo == "awac":
    # OCR-CFT ran AWAC with CORL's finetune/awac.py: configs/finetune/awac/antmaze/*.yaml set
    # awac_lambda 0.1 and normalize_reward (its modify_reward: r - 1 on AntMaze).
    out["config"] = {"awac_lambda": 0.1}
    out["reward_shift"] = -1.0
  return out


def _calql(dataset_id: str) -> Dict[str, Any]:
  """Cal-QL (CORL `finetune/cal_ql.py`): on MuJoCo its TrainConfig defaults (the agent's Config: raw
  rewards, `normalize_reward: false`, states normalised); on AntMaze `configs/finetune/cal_ql/
  antmaze/*.yaml` (the same for every maze): 5x256 critics, policy (and alpha) lr 1e-4, alpha_cql 5
  offline and online with Lagrange gap 0.8, r * 10 - 5, raw states, sparse V^mu."""
  out: Dict[str, Any] = {"config": {}, "normalize_reward": False}
  if antmaze_size(dataset_id) is None:
    return out
  out["config"] = {"critic_hidden_dims": (256,) * 5, "actor_lr": 1e-4, "alpha_lr": 1e-4,
                   "cql_alpha": 5.0, "cql_alpha_online": 5.0, "lagrange": True,
                   "target_action_gap": 0.8, "sparse_reward": True}
  out.update(reward_scale=10.0, reward_shift=-5.0, normalize_states=False,
             unsupported={"cql_max_target_backup": True, "cql_clip_diff_min": -200.0})
  return out


def reward_transform(preset: Dict[str, Any], episode_returns: np.ndarray) -> Tuple[float, float]:
  """(scale, shift) of a preset on a dataset: rewards become r * scale + shift."""
  if preset.get("normalize_reward"):
    return reward_scale(episode_returns), 0.0
  return float(preset.get("reward_scale", 1.0)), float(preset.get("reward_shift", 0.0))


def reward_scale(episode_returns: np.ndarray) -> float:
  """CORL's `normalize_reward` for MuJoCo: r * 1000 / (max_return - min_return) over the dataset."""
  spread = float(np.max(episode_returns) - np.min(episode_returns))
  return 1000.0 / spread if spread > 0 else 1.0
