"""Offline data: Minari datasets as flat arrays (`minari_io`), a dataset prepared for a training phase
with its state and reward transforms and its env (`prepared`), Monte-Carlo returns-to-go
(`returns`), and the functional replay buffer (`replay`)."""
from o2o_jax.data.minari_io import (OfflineDataset, find_dataset_path, list_datasets, load_dataset,
                                    normalized_score)
from o2o_jax.data import replay

__all__ = ["OfflineDataset", "find_dataset_path", "list_datasets", "load_dataset",
           "normalized_score", "replay"]
