"""The dataset shipped inside the package opens with no download and no environment variable."""
import json

import numpy as np
import pytest

from o2o_jax.data import load_dataset, minari_io

DATASET = "o2o/hopper/medium-v0"


def test_shipped_dataset_is_found_in_the_package(monkeypatch, tmp_path):
  if not (minari_io.PACKAGE_DATASETS / DATASET / "data" / "metadata.json").exists():
    pytest.fail(f"{DATASET} is not shipped in {minari_io.PACKAGE_DATASETS}")
  monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))        # an empty local store
  ds = load_dataset(DATASET)
  assert ds.path.startswith(str(minari_io.PACKAGE_DATASETS))
  assert ds.env_id == "Hopper-v5" and ds.observation_dim == 11 and ds.action_dim == 3
  assert ds.size == 100_000
  assert ds.ref_min_score is not None and ds.ref_max_score > ds.ref_min_score
  desc = json.loads(ds.description)
  assert desc["level"] == "medium" and "make_dataset" in desc["command"]
  score = float(np.mean(ds.normalized_score(ds.episode_returns)))
  assert 10.0 < score < 90.0, score       # a medium policy: between random and expert
  assert np.isfinite(ds.transitions.observations).all()
