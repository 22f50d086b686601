"""TPU slices as compile targets: names ('v5e:4x4', 'v4-8', 'v5litepod-16'), chips, hosts and chip figures.

Chip figures are Google Cloud's published per-chip numbers (HBM capacity, peak bf16 matmul FLOP/s);
``describe`` resolves a slice name to the compile-only devices of ``jax.experimental.topologies``,
which needs ``libtpu`` (``pip install -e '.[tpu]'``) but no TPU: it works on any CPU host.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from typing import Any

from jax.experimental import topologies

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation: what the slice names count, how many chips a host holds, published capacities."""

  version: str  # libtpu's topology prefix: v4, v5e, v5p, v6e
  hbm_gib: float  # HBM per chip (GiB)
  peak_bf16_tflops: float  # peak dense bf16 matmul TFLOP/s per chip
  dims: int  # 2 (v5e, v6e: AxB) or 3 (v4, v5p: AxBxC) torus dimensions
  cores_in_name: bool  # 'v4-8' counts TensorCores (2 per chip), 'v5e-8' counts chips
  megacore: bool  # the two TensorCores of a chip act as one JAX device
  max_single_host_chips: int  # slices up to this many chips are one host holding all of them
  ici_gbps: float  # published inter-chip interconnect bandwidth per chip (Gbit/s)
  aliases: tuple[str, ...] = ()
  ray_name: str = ""  # the generation as ray.util.tpu spells it, when it differs ('v5litepod')


CHIPS = {
  c.version: c
  for c in (
    Chip("v4", 32.0, 275.0, 3, True, True, 4, 2400.0),
    Chip("v5e", 16.0, 197.0, 2, False, False, 8, 1600.0, ("v5litepod", "v5lite"), "v5litepod"),
    Chip("v5p", 95.0, 459.0, 3, True, True, 4, 4800.0),
    Chip("v6e", 32.0, 918.0, 2, False, False, 8, 3584.0),
  )
}
CHIPS_PER_MULTI_HOST = 4  # every TPU VM of a multi-host slice of these generations holds 2x2 chips

# Pod type (chips or cores) -> topology of the usual slice shapes.
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SHAPES_3D = {
  4: "2x2x1",
  8: "2x2x2",
  16: "2x2x4",
  32: "2x4x4",
  64: "4x4x4",
  128: "4x4x8",
  256: "4x8x8",
  512: "8x8x8",
  1024: "8x8x16",
  2048: "8x16x16",
  4096: "16x16x16",
}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A resolved TPU slice: ``name`` as libtpu spells it ('v5e:4x4'), its devices (one per chip) and hosts."""

  name: str
  chip: Chip
  devices: tuple[Any, ...]
  hosts: int

  @property
  def chips(self) -> int:
    return len(self.devices)

  @property
  def pod_type(self) -> str:
    return f"{self.chip.version}-{self.chips * (2 if self.chip.cores_in_name else 1)}"


def _chip_of(prefix: str) -> Chip:
  prefix = prefix.lower()
  for chip in CHIPS.values():
    if prefix == chip.version or prefix in chip.aliases:
      return chip
  raise ValueError(f"unknown TPU generation {prefix!r}; one of {sorted(CHIPS)}")


def parse(name: str) -> tuple[Chip, tuple[int, ...]]:
  """'v5e:4x4' / 'v5e-16' / 'v5litepod-16' / 'v4-8' / 'v4:2x2x1' -> (chip, topology bounds)."""
  m = re.fullmatch(r"\s*([a-z0-9]+)\s*:\s*(\d+(?:x\d+){1,2})\s*", name.lower())
  if m:
    chip = _chip_of(m.group(1))
    bounds = tuple(int(v) for v in m.group(2).split("x"))
    if len(bounds) == 2 and chip.dims == 3:
      bounds = bounds + (1,)
    if len(bounds) != chip.dims and not (chip.dims == 2 and len(bounds) == 3 and bounds[2] == 1):
      raise ValueError(
        f"topology {name!r}: {chip.version} slices have {chip.dims} dimensions, e.g. "
        f"{chip.version}:{_SHAPES_3D[8] if chip.dims == 3 else _SHAPES_2D[16]}"
      )
    return chip, bounds[: chip.dims]
  m = re.fullmatch(r"\s*([a-z0-9]+)-(\d+)\s*", name.lower())
  if m:
    chip = _chip_of(m.group(1))
    count = int(m.group(2))
    chips = count // 2 if chip.cores_in_name else count
    shapes = _SHAPES_3D if chip.dims == 3 else _SHAPES_2D
    if chips not in shapes or (chip.cores_in_name and count % 2):
      raise ValueError(
        f"TPU slice {name!r}: no usual shape for {count} {'cores' if chip.cores_in_name else 'chips'}"
        f"; name the topology instead, e.g. --topology={chip.version}:{shapes[8 if 8 in shapes else 4]}"
      )
    return chip, tuple(int(v) for v in shapes[chips].split("x"))
  raise ValueError(f"TPU topology {name!r}: expected e.g. v5e:4x4, v4:2x2x2, v5e-16 or v4-8")


def describe(name: str, num_slices: int = 1) -> Slice:
  """Compile-only devices of a TPU slice on this (CPU) host; needs libtpu, not a TPU."""
  chip, bounds = parse(name)
  chips = math.prod(bounds)
  if chips <= chip.max_single_host_chips and chip.dims == 2:
    per_host = bounds + (1,)  # a single-host slice: one VM holds every chip
  else:
    per_host = (min(2, bounds[0]), min(2, bounds[1]), 1)
  topology = f"{chip.version}:{'x'.join(map(str, bounds))}"
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server: this host is not a TPU VM
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: no chip is opened, others may compile too
  if importlib.util.find_spec("libtpu") is None:
    raise RuntimeError(f"compiling for {topology} needs libtpu: pip install -e '.[tpu]'")

  kwargs = {"chip_config_name": "megacore"} if chip.megacore else {}
  desc = topologies.get_topology_desc(
    platform="tpu", topology_name=topology, chips_per_host_bounds=per_host, num_slices=num_slices, **kwargs
  )
  devices = tuple(desc.devices)
  return Slice(
    topology if num_slices == 1 else f"{num_slices}x{topology}", chip, devices, len({d.process_index for d in devices})
  )
