"""Device mesh and shardings: the batch is split over a 'data' axis, everything else is replicated."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh over all (global) devices, axis 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of params, batch stats, optimizer state and scalars: a full copy on every device."""
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of batch arrays: leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh, key: str = "batch_size") -> None:
  """Raises unless ``global_batch`` divides over the devices and processes."""
  n = mesh.devices.size
  if global_batch % n or global_batch % jax.process_count():
    raise ValueError(f"config key '{key}' = {global_batch} must be a multiple of the {n} devices "
                     f"({jax.process_count()} processes); set --config.{key}=<multiple of {n}>")


def put_batch(batch: dict[str, Any], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's part of a global batch (numpy) -> global jax.Arrays sharded on the batch axis."""
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree (state, optimizer state) on every device."""
  return jax.device_put(tree, replicated(mesh))
