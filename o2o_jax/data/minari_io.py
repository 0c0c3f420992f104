"""Minari dataset -> flat, device-ready transition arrays (D4RL `qlearning_dataset` style).

Lookup order for an id: Minari's local store (`$MINARI_DATASETS_PATH`, else `~/.minari/datasets`), then
the datasets shipped inside this package (`o2o_jax/datasets/<id>/`). Nothing is downloaded.

Flattening (per episode with T steps and T+1 stored observations):
  observations = O[:-1], next_observations = O[1:], terminals = terminations,
  timeouts = truncations & ~terminations (an episode boundary that still bootstraps).
The flat float32 arrays are cached as .npz (keyed by the dataset's files), so a second load of a
1M-transition dataset is sub-second.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from o2o_jax.errors import DatasetError
from o2o_jax.types import Transition

PACKAGE_DATASETS = Path(__file__).resolve().parent.parent / "datasets"
GENERATE_HINT = ("generate one with `python -m experiments.make_dataset --env=hopper "
                 "--levels=medium` (or put downloaded Minari datasets under $MINARI_DATASETS_PATH)")


@dataclasses.dataclass(frozen=True)
class OfflineDataset:
  """A flattened offline dataset. Arrays are numpy float32 on the host; `device_transitions()` puts
  them on the device once (shared by all seeds of a vmapped run)."""
  dataset_id: str
  path: str
  transitions: Transition          # numpy arrays, transition axis first
  timeouts: np.ndarray             # bool: truncated (not terminated) episode ends
  episode_starts: np.ndarray       # int64 index of each episode's first transition
  episode_lengths: np.ndarray      # int64
  episode_returns: np.ndarray      # float64 undiscounted returns
  obs_mean: np.ndarray
  obs_std: np.ndarray
  ref_min_score: Optional[float]
  ref_max_score: Optional[float]
  env_spec: Optional[str]          # JSON (Minari's serialised gymnasium EnvSpec)
  eval_env_spec: Optional[str]
  description: str = ""

  @property
  def size(self) -> int:
    return int(self.transitions.rewards.shape[0])

  @property
  def observation_dim(self) -> int:
    return int(self.transitions.observations.shape[-1])

  @property
  def action_dim(self) -> int:
    return int(self.transitions.actions.shape[-1])

  @property
  def env_id(self) -> Optional[str]:
    for spec in (self.eval_env_spec, self.env_spec):
      if spec:
        try:
          return json.loads(spec)["id"]
        except (ValueError, KeyError, TypeError):
          pass
    return None

  def normalized_score(self, returns):
    return normalized_score(returns, self.ref_min_score, self.ref_max_score, self.dataset_id)

  def top_episode_indices(self, num_episodes: int) -> np.ndarray:
    """Transition indices of the `num_episodes` episodes with the highest returns (ACA's top-N
    trajectory seeding of the online buffer; OCR-CFT table 6 'Part')."""
    if num_episodes <= 0:
      return np.zeros((0,), np.int64)
    best = np.argsort(-self.episode_returns, kind="stable")[:num_episodes]
    return np.concatenate([np.arange(self.episode_starts[i], self.episode_starts[i] + self.episode_lengths[i])
                           for i in np.sort(best)]).astype(np.int64)

  def device_transitions(self) -> Transition:
    import jax.numpy as jnp
    return Transition(*(jnp.asarray(x) for x in dataclasses.astuple(self.transitions)))


def normalized_score(returns, ref_min: Optional[float], ref_max: Optional[float],
                     dataset_id: str = "dataset"):
  """D4RL's normalised score in percent: 100 * (R - ref_min) / (ref_max - ref_min)."""
  if ref_min is None or ref_max is None:
    raise DatasetError(f"{dataset_id} has no reference scores (ref_min_score/ref_max_score): "
                       "normalised scores need them; regenerate it with experiments.make_dataset")
  return 100.0 * (np.asarray(returns, np.float64) - ref_min) / (ref_max - ref_min)


def _minari_root() -> Path:
  from minari.storage.datasets_root_dir import get_dataset_path
  return Path(get_dataset_path())


def _ids_under(root: Path) -> List[str]:
  if not root.is_dir():
    return []
  return sorted(str(p.parent.relative_to(root)) for p in root.glob("**/data")
                if (p / "metadata.json").exists())


def list_datasets() -> Dict[str, str]:
  """Every dataset id this machine can load, mapped to its folder (the local store wins)."""
  found = {i: str(PACKAGE_DATASETS / i) for i in _ids_under(PACKAGE_DATASETS)}
  root = _minari_root()
  found.update({i: str(root / i) for i in _ids_under(root)})
  return dict(sorted(found.items()))


def find_dataset_path(dataset_id: str) -> Path:
  for root in (_minari_root(), PACKAGE_DATASETS):
    candidate = root / dataset_id
    if (candidate / "data" / "metadata.json").exists():
      return candidate
  known = ", ".join(list_datasets()) or "none"
  raise DatasetError(f"unknown dataset id '{dataset_id}'. Datasets found locally: {known}. "
                     f"To make one, {GENERATE_HINT}")


def _cache_file(path: Path) -> Path:
  data_files = sorted((path / "data").iterdir())
  key = hashlib.sha1(json.dumps([(f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                 for f in data_files]).encode()).hexdigest()[:16]
  cache_root = Path(os.environ.get("O2O_JAX_CACHE", Path.home() / ".cache" / "o2o_jax"))
  return cache_root / "datasets" / str(path).strip("/").replace("/", "__") / f"flat-{key}.npz"


def _flatten(minari_dataset) -> Dict[str, np.ndarray]:
  n = minari_dataset.total_steps
  obs_dim = int(np.prod(minari_dataset.observation_space.shape))
  act_dim = int(np.prod(minari_dataset.action_space.shape))
  out = {k: np.empty((n, d), np.float32) for k, d in
         [("observations", obs_dim), ("next_observations", obs_dim), ("actions", act_dim)]}
  out.update(rewards=np.empty(n, np.float32), terminals=np.empty(n, np.float32),
             timeouts=np.empty(n, bool))
  starts, lengths, returns = [], [], []
  i = 0
  for ep in minari_dataset.iterate_episodes():
    t = len(ep.rewards)
    if t == 0:
      continue
    obs = np.asarray(ep.observations).reshape(t + 1, obs_dim)
    out["observations"][i:i + t] = obs[:-1]
    out["next_observations"][i:i + t] = obs[1:]
    out["actions"][i:i + t] = np.asarray(ep.actions).reshape(t, act_dim)
    out["rewards"][i:i + t] = ep.rewards
    terminations = np.asarray(ep.terminations, bool)
    out["terminals"][i:i + t] = terminations
    out["timeouts"][i:i + t] = np.asarray(ep.truncations, bool) & ~terminations
    starts.append(i)
    lengths.append(t)
    returns.append(float(np.sum(ep.rewards, dtype=np.float64)))
    i += t
  out = {k: v[:i] for k, v in out.items()}
  out.update(episode_starts=np.asarray(starts, np.int64), episode_lengths=np.asarray(lengths, np.int64),
             episode_returns=np.asarray(returns, np.float64))
  return out


def _validate(dataset_id: str, arrays: Dict[str, np.ndarray]) -> None:
  if arrays["rewards"].shape[0] == 0:
    raise DatasetError(f"dataset '{dataset_id}' is empty (0 transitions): regenerate it")
  for name in ("observations", "actions", "rewards", "next_observations"):
    bad = ~np.isfinite(arrays[name])
    if bad.any():
      rows = np.unique(np.nonzero(bad)[0])
      raise DatasetError(f"dataset '{dataset_id}' has {bad.sum()} NaN/inf values in '{name}' "
                         f"(first at transition {rows[0]}, {len(rows)} transitions affected): "
                         "clean or regenerate the dataset")


def _read_cache(cache: Path, keys=None) -> Optional[Dict[str, np.ndarray]]:
  """The flat arrays (all, or `keys`) of a cache file; None when it is missing or unreadable (it is
  then rebuilt from the dataset)."""
  if not cache.exists():
    return None
  try:
    with np.load(cache) as f:
      return {k: f[k] for k in (f.files if keys is None else keys)}
  except Exception:
    return None


def fingerprint(dataset_id: str) -> Dict[str, object]:
  """What identifies a dataset's content, for a run's launch.json: its size, episodes, mean return,
  reference scores and a SHA-1 (first 12 hex digits) of its rewards and actions. Two sets under one
  id differ when the generator ran on another host type (MuJoCo and XLA round differently on AVX2 and
  AVX-512, and the rollouts diverge), which the id alone does not show. Reads only those arrays from
  the flat cache when it is there."""
  path = find_dataset_path(dataset_id)
  meta = json.loads((path / "data" / "metadata.json").read_text())
  arrays = _read_cache(_cache_file(path), ("rewards", "actions", "episode_returns"))
  if arrays is None:
    d = load_dataset(dataset_id)
    arrays = dict(rewards=d.transitions.rewards, actions=d.transitions.actions,
                  episode_returns=d.episode_returns)
  digest = hashlib.sha1(np.ascontiguousarray(arrays["rewards"], np.float32).tobytes())
  digest.update(np.ascontiguousarray(arrays["actions"], np.float32).tobytes())
  returns = arrays["episode_returns"]
  return {"id": dataset_id, "sha1": digest.hexdigest()[:12],
          "transitions": int(arrays["rewards"].shape[0]), "episodes": int(returns.shape[0]),
          "mean_return": round(float(returns.mean()), 1) if len(returns) else None,
          "ref_min_score": meta.get("ref_min_score"), "ref_max_score": meta.get("ref_max_score")}


def load_dataset(dataset_id: str, use_cache: bool = True) -> OfflineDataset:
  """Loads a Minari dataset by id as flat float32 arrays; raises DatasetError with a fix on bad input."""
  path = find_dataset_path(dataset_id)
  import minari  # deferred: importing the package must stay light
  try:
    md = minari.MinariDataset(str(path / "data"))
  except Exception as e:  # a corrupt metadata.json or HDF5 file
    raise DatasetError(f"dataset '{dataset_id}' at {path} cannot be opened ({type(e).__name__}: {e}); "
                       "delete and regenerate it") from None
  meta = md.storage.metadata
  cache = _cache_file(path)
  arrays = _read_cache(cache) if use_cache else None
  if arrays is None:
    try:
      arrays = _flatten(md)
    except OSError as e:   # e.g. HDF5 locked by a process still writing it, or a truncated file
      raise DatasetError(f"dataset '{dataset_id}' at {path} cannot be read ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160]}); if another process is writing it, wait "
                         "for it to finish, otherwise delete and regenerate it") from None
    if use_cache:
      cache.parent.mkdir(parents=True, exist_ok=True)
      tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")    # processes may race to write it
      np.savez(tmp, **arrays)
      os.replace(tmp, cache)
  _validate(dataset_id, arrays)
  obs = arrays["observations"]
  transitions = Transition(observations=obs, actions=arrays["actions"], rewards=arrays["rewards"],
                           next_observations=arrays["next_observations"],
                           terminals=arrays["terminals"])

  def _score(key):
    value = meta.get(key)
    return None if value is None else float(value)

  return OfflineDataset(
      dataset_id=dataset_id, path=str(path), transitions=transitions, timeouts=arrays["timeouts"],
      episode_starts=arrays["episode_starts"], episode_lengths=arrays["episode_lengths"],
      episode_returns=arrays["episode_returns"],
      obs_mean=obs.mean(0).astype(np.float32), obs_std=(obs.std(0) + 1e-3).astype(np.float32),
      ref_min_score=_score("ref_min_score"), ref_max_score=_score("ref_max_score"),
      env_spec=meta.get("env_spec"), eval_env_spec=meta.get("eval_env_spec"),
      description=meta.get("description") or "")
