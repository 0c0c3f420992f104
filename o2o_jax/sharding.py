"""Seeds over devices: the seed axis of states, buffers and keys is sharded along a mesh axis `seed`;
the offline dataset is replicated (one copy per device, shared by that device's seeds).

The loops call `place_seeds` / `place_shared` on their inputs once; the jitted, seed-vmapped steps
then run as one SPMD program over the devices (XLA partitions the vmapped computation; no collective
is needed because seeds are independent), and their outputs keep the sharding, so nothing moves
between devices inside the loop. With one device (or a seed count that no device count > 1 divides)
everything stays on the default device and these functions are the identity.

Set O2O_JAX_SEED_DEVICES=1 to keep a run on one device; N to use the first N devices.
"""
from __future__ import annotations

import os
from typing import Optional

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def seed_mesh(num_seeds: int) -> Optional[Mesh]:
  """A 1-D mesh over the largest number of local devices that divides `num_seeds` (None: 1 device)."""
  devices = jax.local_devices()
  limit = int(os.environ.get("O2O_JAX_SEED_DEVICES", len(devices)))
  n = max(d for d in range(1, min(limit, len(devices)) + 1) if num_seeds % d == 0)
  if n == 1:
    return None
  import numpy as np
  return Mesh(np.array(devices[:n]), ("seed",))


def place_seeds(tree, mesh: Optional[Mesh]):
  """Leaves with the seed axis first, split over the mesh's devices."""
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("seed")))


def place_shared(tree, mesh: Optional[Mesh]):
  """Leaves every seed reads (the offline dataset): one replica per device."""
  if mesh is None or tree is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
