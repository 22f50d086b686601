"""Experiment sweeps: expand a grid into runs with their own workdirs, run them (here or on Ray), gather them.

A sweep file (``configs/sweeps/*.py``) defines ``get_sweep()`` returning a dict with
``name``, ``config`` (the base config file, relative to the repository root), ``overrides``
({key: value} applied to every run) and ``grid`` ({key: [values]}; the key ``config`` varies the
base config file itself, e.g. over datasets and backbones). Every combination is one run, named by
its grid values, in ``ROOT/<run name>``.

  python -m megraph_jax.sweep run configs/sweeps/synthetic_tiny.py --root=/tmp/sweep     # one after another
  python -m megraph_jax.sweep run configs/sweeps/synthetic_tiny.py --root=/tmp/sweep --ray=local --ray_cpus=2
  python -m megraph_jax.sweep run configs/sweeps/bp4d_paper.py --root=/mnt/runs --ray=auto --tpu=v5e:2x4
  python -m megraph_jax.sweep gather configs/sweeps/synthetic_tiny.py --root=/tmp/sweep  # one table

``--set key=value`` (repeatable) adds overrides on the command line. A run whose ``results.json``
exists is skipped by ``run``; an interrupted one resumes from its checkpoints. With ``--ray`` every
run is Ray work (``megraph_jax.ray_sweep``): runs go side by side as the cluster's resources allow,
one process per host of a run, failed runs retried from their checkpoints.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import itertools
import json
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


def set_key(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """``config.a.b = value`` for key 'a.b'; unknown keys are an error naming the key."""
  node = config
  *parents, leaf = key.split(".")
  for i, p in enumerate(parents):
    if p not in node:
      raise KeyError(f"sweep key {key!r}: the config has no {'.'.join(parents[: i + 1])!r}")
    node = node[p]
  if leaf not in node:
    raise KeyError(f"sweep key {key!r}: the config has no such field")
  current = node[leaf]
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  setattr(node, leaf, value)


def _short(key: str) -> str:
  return {
    "dataset.fold": "fold",
    "stage2.lam": "lam",
    "model.neighbor_num": "K",
    "model.backbone": "backbone",
    "config": "config",
  }.get(key, key.split(".")[-1])


def _fmt(value: Any) -> str:
  if isinstance(value, str):
    return os.path.splitext(os.path.basename(value))[0]
  return str(value)


def expand(sweep: dict[str, Any], extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
  """The runs of a sweep: [{'name', 'config' (file), 'overrides' {key: value}, 'grid' {key: value}}]."""
  grid = dict(sweep.get("grid", {}) or {})
  for key, values in grid.items():
    if not isinstance(values, (list, tuple)) or not values:
      raise ValueError(f"sweep {sweep['name']!r}: grid[{key!r}] must be a non-empty list of values")
  for key in ("name", "config"):
    if key not in sweep:
      raise ValueError(f"sweep file: get_sweep() must give {key!r} (and 'grid', optionally 'overrides')")
  keys = list(grid)
  runs = []
  for combo in itertools.product(*(grid[k] for k in keys)):
    point = dict(zip(keys, combo))
    name = "_".join(f"{_short(k)}{_fmt(v)}" for k, v in point.items()) or "run"
    overrides = {
      **dict(sweep.get("overrides", {}) or {}),
      **{k: v for k, v in point.items() if k != "config"},
      **(extra or {}),
    }
    runs.append({"name": name, "config": point.get("config", sweep['config']), "overrides": overrides, "grid": point})
  names = [r["name"] for r in runs]
  if len(set(names)) != len(names):
    raise ValueError(f"sweep {sweep['name']!r}: two runs share a name; make the grid values distinct")
  return runs


def build_config(run: dict[str, Any]) -> ml_collections.ConfigDict:
  config = load_module(run["config"]).get_config()
  for key, value in run["overrides"].items():
    set_key(config, key, value)
  return config


def command(run: dict[str, Any], root: str, python: str = "python") -> str:
  """The main.py command line of one run."""
  parts = [python, "main.py", f"--config={run['config']}", f"--workdir={os.path.join(root, run['name'])}"]
  parts += [f"--config.{k}={_cli_value(v)}" for k, v in run["overrides"].items()]
  return " ".join(shlex.quote(p) for p in parts)


def _cli_value(v: Any) -> str:
  if isinstance(v, (list, tuple)):
    return repr(tuple(v))  # config_flags parses Python literals: ('AU1', 'AU2')
  return str(v)


def run_all(runs: list[dict[str, Any]], root: str) -> list[str]:
  """Runs every unfinished run in this process, one after another; returns the names run."""
  from megraph_jax import train  # pylint: disable=import-outside-toplevel

  done = []
  for i, r in enumerate(runs):
    workdir = os.path.join(root, r["name"])
    if os.path.isfile(os.path.join(workdir, "results.json")):
      print(f"[{i + 1}/{len(runs)}] {r['name']}: finished earlier, skipped", flush=True)
      continue
    print(f"[{i + 1}/{len(runs)}] {r['name']}: {command(r, root)}", flush=True)
    config = build_config(r)
    if config.dataset.synthetic.enabled and not config.dataset.synthetic.cache_dir:
      config.dataset.synthetic.cache_dir = os.path.join(root, "data")  # one generated set for all runs
    result = train.run(config, workdir)
    if result.get("preempted"):
      print(f"{r['name']}: stopped before the end; rerun the sweep to resume", flush=True)
      break
    done.append(r["name"])
  return done


def gather(runs: list[dict[str, Any]], root: str) -> tuple[str, list[dict[str, Any]]]:
  """One Markdown table over the finished runs: per run (and fold), then averaged over folds."""
  from megraph_jax import reporting  # pylint: disable=import-outside-toplevel

  rows, records, missing = [], [], []
  au_names = None
  groups: dict[str, list[dict[str, float]]] = {}
  for r in runs:
    path = os.path.join(root, r["name"], "results.json")
    if not os.path.isfile(path):
      missing.append(r["name"])
      continue
    with open(path) as f:
      res = json.load(f)
    for fold, fr in sorted(res["folds"].items()):
      stage = "stage2" if "stage2" in fr else "stage1"
      f1 = fr[stage]["last"]["f1"]
      au_names = au_names or list(f1)
      rows.append((f"{r['name']} (fold {fold}, {stage})", f1))
      records.append(
        {
          "run": r["name"],
          "fold": int(fold),
          "stage": stage,
          "grid": r["grid"],
          "mean_f1": fr[stage]["last"]["mean_f1"],
          "f1": f1,
        }
      )
      group = ", ".join(f"{_short(k)}={_fmt(v)}" for k, v in r["grid"].items() if k != "dataset.fold") or "all"
      groups.setdefault(f"{group} [{stage}]", []).append(f1)
  if not rows:
    raise FileNotFoundError(
      f"no finished run under {root} (expected {root}/<run>/results.json for {[r['name'] for r in runs][:4]}...)"
    )
  for group, f1s in groups.items():
    if len(f1s) > 1:
      rows.append((f"{group}, avg. over {len(f1s)} folds", reporting.mean_f1_dicts(f1s)))
  text = reporting.f1_table(rows, au_names)
  if missing:
    text += f"\n\nNot finished ({len(missing)}): {', '.join(missing)}"
  return text, records


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("action", choices=("list", "run", "gather"))
  p.add_argument("sweep", help="sweep file, e.g. configs/sweeps/synthetic_tiny.py")
  p.add_argument("--root", required=True, help="parent folder of the runs' workdirs")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every run")
  r = p.add_argument_group("Ray (run --ray=...)")
  r.add_argument(
    "--ray",
    default=None,
    metavar="ADDRESS",
    help="run every run as Ray work: 'local' (a one-machine cluster), 'auto' or a cluster address",
  )
  r.add_argument("--ray_cpus", type=int, default=None, help="--ray=local: CPUs of the local cluster (default all)")
  r.add_argument("--cpus", type=float, default=1.0, help="Ray CPUs per process of a run")
  r.add_argument("--gpus", type=float, default=0.0, help="GPUs per process of a run (one process per GPU host)")
  r.add_argument("--hosts", type=int, default=1, help="processes (hosts) per run on CPU/GPU nodes")
  r.add_argument("--cpu_devices", type=int, default=0, help="CPU runs: XLA host devices per process")
  r.add_argument("--tpu", default="", help="TPU slice per run, e.g. v5e:2x4 or v4:2x2x2 (one process per host)")
  r.add_argument(
    "--tpu_subslice",
    action="store_true",
    help="with --tpu: each run takes an ICI-aligned subslice --tpu of the cluster's bigger slices",
  )
  r.add_argument("--max_retries", type=int, default=3, help="attempts after a failure, each resuming from checkpoints")
  a = p.parse_args(argv)
  if (a.tpu or a.tpu_subslice or a.gpus or a.hosts != 1 or a.cpu_devices) and not a.ray:
    p.error("--tpu, --tpu_subslice, --gpus, --hosts and --cpu_devices place runs on a Ray cluster: add --ray=ADDRESS")
  failed: list = []
  module = load_module(a.sweep)
  if not hasattr(module, "get_sweep"):
    p.error(f"{a.sweep}: a sweep file must define get_sweep() (see configs/sweeps/)")
  sweep = module.get_sweep()
  runs = expand(sweep, parse_sets(a.set))
  root = a.root if "://" in a.root else os.path.abspath(a.root)
  if a.action == "list":
    for r in runs:
      print(r["name"], json.dumps(r["overrides"]))
  elif a.action == "run" and a.ray:
    from megraph_jax import ray_sweep  # pylint: disable=import-outside-toplevel

    res = ray_sweep.Resources(
      hosts=a.hosts, cpus=a.cpus, gpus=a.gpus, cpu_devices=a.cpu_devices, tpu=a.tpu, tpu_subslice=a.tpu_subslice
    )
    statuses = ray_sweep.run_sweep(
      runs, root, address=a.ray, resources=res, max_retries=a.max_retries, num_cpus=a.ray_cpus
    )
    failed = [s for s in statuses if s["status"] != "done"]
    for s in failed:
      print(
        f"{s['name']}: {s['status']} after {s['attempts']} attempts: {s.get('message', '')[-500:]}", file=sys.stderr
      )
  elif a.action == "run":
    run_all(runs, root)
  if a.action == "gather" or (a.action == "run" and len(failed) < len(runs)):
    text, records = gather(runs, root)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "sweep.md"), "w") as f:
      f.write(f"# Sweep {sweep['name']}: F1 (%), last epoch\n\n{text}\n")
    with open(os.path.join(root, "sweep.json"), "w") as f:
      json.dump({"sweep": sweep['name'], "runs": records}, f, indent=1)
    print(text)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
