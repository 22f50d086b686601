"""Sweep files for tests: the tiny config of helpers.tiny_config as a sweep (configs/synthetic.py + overrides)."""

import json
import os
import sys
from typing import Any

from helpers import tiny_config


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def tiny_overrides(cache: str, **extra: Any) -> dict[str, Any]:
  """Overrides turning configs/synthetic.py into ``helpers.tiny_config(cache, **extra)``: every key that differs."""
  from configs import synthetic  # pylint: disable=import-outside-toplevel

  base, tiny = _flat(synthetic.get_config().to_dict()), _flat(tiny_config(cache, **extra).to_dict())
  return {k: list(v) if isinstance(v, tuple) else v for k, v in tiny.items() if k not in base or base[k] != v}


def write_sweep(
  path: str, name: str, overrides: dict[str, Any], grid: dict[str, list], variants: dict[str, dict] | None = None
) -> str:
  """Writes a sweep file (``get_sweep()``) for ``python -m megraph_jax.launch.sweep``; returns its path."""
  spec = {"name": name, "config": "configs/synthetic.py", "overrides": overrides, "grid": grid}
  if variants:
    spec["variants"] = variants
  with open(path, "w") as f:
    f.write(f"import json\n\ndef get_sweep():\n  return json.loads({json.dumps(json.dumps(spec))})\n")
  return path


def bad_variants(root: str) -> dict[str, dict[str, Any]]:
  """Two runs whose input is wrong: a backbone that does not exist (found before any run starts) and a dataset
  folder that does not exist (found when the run reads it)."""
  return {
    "resnet19": {"model.backbone": "resnet19"},
    "nodata": {"dataset.synthetic.enabled": False, "dataset.root": os.path.join(root, "no_such_dataset")},
  }


def sweep_env(**extra: str) -> dict[str, str]:
  """Environment of a sweep subprocess: CPU JAX, this repository importable (also by Ray's workers)."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if not k.startswith(("MEGRAPH_", "XLA_FLAGS", "RAY_"))}
  if "RAY_TMPDIR" in os.environ:  # the suite's own folder for Ray's session files (conftest), removed at its end
    env["RAY_TMPDIR"] = os.environ["RAY_TMPDIR"]
  # RAY_worker_niceness: Ray starts workers at nice 15, which starves them next to any other load on a CI machine.
  env.update(
    JAX_PLATFORMS="cpu",
    TF_CPP_MIN_LOG_LEVEL="2",
    RAY_worker_niceness="0",
    PYTHONPATH=os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p),
    **extra,
  )
  return env


PYTHON = sys.executable
