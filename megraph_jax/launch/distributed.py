"""Multi-process (multi-host) start-up: jax.distributed.initialize() when the environment says so."""

from __future__ import annotations

import os

import jax
from absl import logging

# Environment variables that mean "several JAX processes cooperate" and what they stand for.
_SLURM = ("SLURM_JOB_ID", "SLURM_NTASKS")
_EXPLICIT = ("MEGRAPH_COORDINATOR_ADDRESS", "MEGRAPH_NUM_PROCESSES", "MEGRAPH_PROCESS_ID")


def _env_int(name: str) -> int:
  value = os.environ[name]
  try:
    return int(value)
  except ValueError as e:
    raise ValueError(f"environment variable {name}={value!r} must be an integer") from e


def multiprocess_setting() -> str | None:
  """Which launcher set this process up: 'explicit', 'slurm', 'tpu_pod', or None (single process)."""
  if any(k in os.environ for k in _EXPLICIT):
    missing = [k for k in _EXPLICIT if k not in os.environ]
    if missing:
      raise ValueError(f"multi-process run: set all of {_EXPLICIT}; missing {missing}")
    return "explicit"
  if all(k in os.environ for k in _SLURM) and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return "slurm"
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1 or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ:
    return "tpu_pod"
  return None


def initialize(local_device_ids: list[int] | None = None) -> None:
  """Calls ``jax.distributed.initialize`` once, with explicit arguments when given by MEGRAPH_* variables.

  TPU pods and SLURM clusters are detected by JAX itself; ``MEGRAPH_COORDINATOR_ADDRESS``,
  ``MEGRAPH_NUM_PROCESSES`` and ``MEGRAPH_PROCESS_ID`` start any other cluster (and the CPU test).
  A single process does nothing. Must run before any other JAX call touches the devices.
  """
  setting = multiprocess_setting()
  if setting is None:
    return
  if jax.distributed.is_initialized():
    return
  if setting == "explicit":
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
      # CPU devices of different processes talk through gloo (TCP); the default has no cross-process collectives.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=os.environ["MEGRAPH_COORDINATOR_ADDRESS"],
      num_processes=_env_int("MEGRAPH_NUM_PROCESSES"),
      process_id=_env_int("MEGRAPH_PROCESS_ID"),
      local_device_ids=local_device_ids,
    )
  else:
    jax.distributed.initialize()
  logging.info(
    "jax.distributed initialised (%s): process %d of %d, %d local / %d global devices",
    setting,
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
