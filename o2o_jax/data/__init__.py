"""Offline data: Minari datasets as flat arrays, and the functional replay buffer."""
from o2o_jax.data.minari_io import (OfflineDataset, find_dataset_path, list_datasets, load_dataset,
                                    normalized_score)
from o2o_jax.data import replay

__all__ = ["OfflineDataset", "find_dataset_path", "list_datasets", "load_dataset",
           "normalized_score", "replay"]
