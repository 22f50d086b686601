"""Device mesh and shardings: the batch is split over a 'data' axis; parameters replicated, or FSDP-sharded.

FSDP ('fully sharded data parallel'): every large parameter and optimizer moment is split over the
same 'data' axis along its largest dimension that the device count divides; XLA (GSPMD) gathers a
parameter where it is used and reduce-scatters its gradient. Same arithmetic as replicated parameters
(tests/test_sharding.py), 1/n of their memory per device.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from megraph_jax.errors import ConfigError

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
    raise ConfigError(
      f"config key '{key}' = {global_batch} must be a multiple of the {n} devices "
      f"({jax.process_count()} processes); set --config.{key}=<multiple of {n}>"
    )


def put_batch(batch: dict[str, Any], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's part of a global batch (numpy) -> global jax.Arrays sharded on the batch axis."""
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree (state, optimizer state) on every device."""
  return jax.device_put(tree, replicated(mesh))


# XLA:CPU's collectives (gloo) give the processes 30 s, not configurable, to meet at their first collective; processes
# that compile the same step at different speeds (shared cores, one of them a cache hit) miss that. A barrier of
# JAX's coordination service takes no collective and waits as long as we say.
BARRIER_TIMEOUT_S = 1800
_barriers = itertools.count()


def wait_for_all_processes(what: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
  """Returns when every process has called it (in the same order); at once with one process."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=import-outside-toplevel  # the client jax.distributed set up

  distributed.global_state.client.wait_at_barrier(f"megraph:{next(_barriers)}:{what}", int(timeout_s * 1000))


def compile_then_meet(jitted: Callable, what: str) -> Callable:
  """``jitted`` itself with one process; with several, its first call compiles it, waits until every process has
  compiled (``wait_for_all_processes``) and runs it; later calls run the executable."""
  if jax.process_count() == 1:
    return jitted
  compiled = None

  def call(*args):
    nonlocal compiled
    if compiled is None:
      compiled = jitted.lower(*args).compile()
      wait_for_all_processes(f"{what} compiled")
    return compiled(*args)

  return call


PARAM_MODES = ("replicated", "fsdp")


def leaf_sharding(shape: tuple[int, ...], mesh: Mesh, mode: str, min_size: int) -> NamedSharding:
  """Replicated, or (fsdp, size >= min_size) split on the largest axis divisible by the 'data' axis size."""
  n = mesh.shape[DATA_AXIS]
  if mode == "replicated" or n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return replicated(mesh)
  axes = sorted((a for a in range(len(shape)) if shape[a] % n == 0), key=lambda a: (-shape[a], a))
  if not axes:
    return replicated(mesh)
  spec = [None] * len(shape)
  spec[axes[0]] = DATA_AXIS
  return NamedSharding(mesh, P(*spec))


def state_shardings(tree: Any, mesh: Mesh, mode: str = "replicated", min_size: int = 2**14) -> Any:
  """Per-leaf shardings of a model / optimizer state pytree (config keys sharding.params, .fsdp_min_size)."""
  if mode not in PARAM_MODES:
    raise ConfigError(f"config key 'sharding.params' = {mode!r}; choose one of {PARAM_MODES}")
  return jax.tree.map(lambda x: leaf_sharding(tuple(np.shape(x)), mesh, mode, min_size), tree)
