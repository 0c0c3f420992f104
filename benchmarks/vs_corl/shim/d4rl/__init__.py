"""`d4rl` stand-in: `qlearning_dataset` returns the Minari dataset named by $O2O_DATASET, flattened the
way o2o_jax's loader flattens it (`o2o_jax/data/minari_io.py`), without importing JAX."""
import os

import minari
import numpy as np


def _dataset():
  return minari.load_dataset(os.environ["O2O_DATASET"])


def qlearning_dataset(env=None, dataset=None, **kwargs):
  del env, dataset, kwargs
  parts = {k: [] for k in ("observations", "actions", "rewards", "next_observations", "terminals",
                           "timeouts")}
  for ep in _dataset().iterate_episodes():
    obs = np.asarray(ep.observations, np.float32)
    term = np.asarray(ep.terminations, bool)
    parts["observations"].append(obs[:-1])
    parts["next_observations"].append(obs[1:])
    parts["actions"].append(np.asarray(ep.actions, np.float32))
    parts["rewards"].append(np.asarray(ep.rewards, np.float32))
    parts["terminals"].append(term.astype(np.float32))
    parts["timeouts"].append((np.asarray(ep.truncations, bool) & ~term).astype(np.float32))
  return {k: np.concatenate(v) for k, v in parts.items()}


def ref_scores():
  meta = _dataset().storage.metadata
  return float(meta["ref_min_score"]), float(meta["ref_max_score"])
