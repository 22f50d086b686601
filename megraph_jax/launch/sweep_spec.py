"""Sweep files: load one, expand its grid and variants into runs, build each run's config and main.py command.

A sweep file (``configs/sweeps/*.py``) defines ``get_sweep()`` returning a dict with ``name``, ``config``
(the base config file, relative to the repository root), ``overrides`` ({key: value} applied to every run),
``grid`` ({key: [values]}; the key ``config`` varies the base config file itself, e.g. over datasets and
backbones) and ``variants`` ({name: {key: value}}, e.g. the rows of the paper's Table 3). Every variant at
every grid point is one run, named by the variant and its grid values; keys are ml_collections' dotted keys
of the locked config. Running and gathering sweeps: ``megraph_jax.launch.sweep``.

A run is a dict: ``name``, ``config`` (a config file, or a ``ConfigDict``), ``overrides``, ``grid``, and optionally
``workdir`` (default ``ROOT/<name>``) and ``results`` (its results file's name, default ``results``). Mode 'folds'
(``sweep.fold_runs``) gives its fold runs one workdir and ``results_fold<k>``.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_module(path: str):
  """Imports a config or sweep file by path (absolute, or relative to the cwd or the repository)."""
  for candidate in (path, os.path.join(REPO, path)):
    if os.path.isfile(candidate):
      spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(candidate))[0], candidate)
      module = importlib.util.module_from_spec(spec)
      if REPO not in sys.path:
        sys.path.insert(0, REPO)
      spec.loader.exec_module(module)
      return module
  raise FileNotFoundError(f"{path}: no such config or sweep file (looked in {os.getcwd()} and {REPO})")


def parse_value(text: str) -> Any:
  """'0.05' -> 0.05, '(1, 2)' -> (1, 2), 'True' -> True, anything else stays a string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
  out = {}
  for item in items:
    if "=" not in item:
      raise ValueError(f"--set {item!r}: expected key=value, e.g. --set stage2.epochs=2")
    key, value = item.split("=", 1)
    out[key.strip()] = parse_value(value.strip())
  return out


def short_key(key: str) -> str:
  return {
    "dataset.fold": "fold",
    "stage2.lam": "lam",
    "model.neighbor_num": "K",
    "model.backbone": "backbone",
    "config": "config",
  }.get(key, key.split(".")[-1])


def fmt_value(value: Any) -> str:
  if isinstance(value, str):
    return os.path.splitext(os.path.basename(value))[0]
  return str(value)


def expand(sweep: dict[str, Any], extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
  """The runs of a sweep: [{'name', 'config' (file), 'overrides' {key: value}, 'grid' {key: value}}].

  Every named variant (``variants``: {name: overrides}, default one unnamed) runs at every grid point.
  """
  for key in ("name", "config"):
    if key not in sweep:
      raise ValueError(f"sweep file: get_sweep() must give {key!r} (and 'grid', 'variants', 'overrides', optionally)")
  grid = dict(sweep.get("grid", {}) or {})
  for key, values in grid.items():
    if not isinstance(values, (list, tuple)) or not values:
      raise ValueError(f"sweep {sweep['name']!r}: grid[{key!r}] must be a non-empty list of values")
  variants = dict(sweep.get("variants", {}) or {"": {}})
  keys = list(grid)
  runs = []
  for variant, variant_overrides in variants.items():
    for combo in itertools.product(*(grid[k] for k in keys)):
      point = dict(zip(keys, combo))
      name = "_".join([variant] * bool(variant) + [f"{short_key(k)}{fmt_value(v)}" for k, v in point.items()]) or "run"
      overrides = {
        **dict(sweep.get("overrides", {}) or {}),
        **dict(variant_overrides),
        **{k: v for k, v in point.items() if k != "config"},
        **(extra or {}),
      }
      grid_point = {**({"variant": variant} if variant else {}), **point}
      runs.append({"name": name, "config": point.get("config", sweep["config"]), "overrides": overrides,
                   "grid": grid_point})  # fmt: skip
  names = [r["name"] for r in runs]
  if len(set(names)) != len(names):
    raise ValueError(f"sweep {sweep['name']!r}: two runs share a name; make the grid values distinct")
  return runs


def workdir(run: dict[str, Any], root: str) -> str:
  """The run's workdir: its ``workdir`` when it names one, else ``ROOT/<name>``."""
  return run.get("workdir") or os.path.join(root, run["name"])


def results_name(run: dict[str, Any]) -> str:
  return run.get("results", "results")


def results_path(run: dict[str, Any], root: str) -> str:
  """The run's results.json (or its ``results`` name): there, the run is finished."""
  return os.path.join(workdir(run, root), results_name(run) + ".json")


def build_config(run: dict[str, Any]) -> ml_collections.ConfigDict:
  """The run's config (file) with its overrides (dotted keys; an unknown key or a wrong type is an error)."""
  base = run["config"]
  if isinstance(base, ml_collections.ConfigDict):
    config = base.copy_and_resolve_references()
  else:
    config = load_module(base).get_config()
  config.lock()
  for key, value in run["overrides"].items():
    try:
      config.update_from_flattened_dict({key: value})
    except (KeyError, TypeError) as e:
      raise KeyError(f"run {run['name']!r}, key {key!r}: {str(e)[:300]}") from e
  return config


def command(run: dict[str, Any], root: str, python: str = "python") -> str:
  """The main.py command line of one run."""
  config = run["config"] if isinstance(run["config"], str) else "<the config given>"
  parts = [python, "main.py", f"--config={config}", f"--workdir={workdir(run, root)}"]
  parts += [f"--config.{k}={_cli_value(v)}" for k, v in run["overrides"].items()]
  return " ".join(shlex.quote(p) for p in parts)


def _cli_value(v: Any) -> str:
  if isinstance(v, (list, tuple)):
    return repr(tuple(v))  # config_flags parses Python literals: ('AU1', 'AU2')
  return str(v)
