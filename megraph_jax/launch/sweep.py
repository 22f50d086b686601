"""Experiment sweeps: expand a grid into runs with their own workdirs, run them (here or on Ray), gather them.

The sweep file format is described in ``megraph_jax.launch.sweep_spec``; every run lives in ``ROOT/<run name>``.

  python -m megraph_jax.launch.sweep run configs/sweeps/synthetic_tiny.py --root=/tmp/sweep     # one after another
  python -m megraph_jax.launch.sweep run configs/sweeps/synthetic_tiny.py --root=/tmp/sweep --ray=local --ray_cpus=2
  python -m megraph_jax.launch.sweep run configs/sweeps/bp4d_paper.py --root=/mnt/runs --ray=auto --tpu=v5e:2x4
  python -m megraph_jax.launch.sweep gather configs/sweeps/synthetic_tiny.py --root=/tmp/sweep  # one table

``--set key=value`` (repeatable) adds overrides on the command line. A run whose ``results.json``
exists is skipped by ``run``; an interrupted one resumes from its checkpoints. With ``--ray`` every
run is Ray work (``megraph_jax.launch.ray_sweep``): runs go side by side as the cluster's resources allow,
one process per host of a run, failed runs retried from their checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from megraph_jax.launch import ray_sweep, sweep_spec
from megraph_jax.train import experiment, reporting
from megraph_jax.train.results import RunResult


def run_all(runs: list[dict[str, Any]], root: str) -> list[str]:
  """Runs every unfinished run in this process, one after another; returns the names run."""
  done = []
  for i, r in enumerate(runs):
    workdir = os.path.join(root, r["name"])
    if os.path.isfile(os.path.join(workdir, "results.json")):
      print(f"[{i + 1}/{len(runs)}] {r['name']}: finished earlier, skipped", flush=True)
      continue
    print(f"[{i + 1}/{len(runs)}] {r['name']}: {sweep_spec.command(r, root)}", flush=True)
    config = sweep_spec.build_config(r)
    if config.dataset.synthetic.enabled and not config.dataset.synthetic.cache_dir:
      config.dataset.synthetic.cache_dir = os.path.join(root, "data")  # one generated set for all runs
    if experiment.run(config, workdir).preempted:
      print(f"{r['name']}: stopped before the end; rerun the sweep to resume", flush=True)
      break
    done.append(r["name"])
  return done


def gather(runs: list[dict[str, Any]], root: str) -> tuple[str, list[dict[str, Any]]]:
  """One Markdown table over the finished runs' last epochs: per run, fold and stage, then each group of runs
  that differ only in the fold averaged over its folds, then the all-positive baseline of each fold."""
  rows, records, missing, baselines = [], [], [], {}
  au_names = None
  groups: dict[str, list[dict[str, float]]] = {}
  for r in runs:
    path = os.path.join(root, r["name"], "results.json")
    if not os.path.isfile(path):
      missing.append(r["name"])
      continue
    res = RunResult.read(path)
    if au_names is not None and tuple(res.au_names) != tuple(au_names):
      raise ValueError(f"{path}: AUs {res.au_names} differ from the other runs' {au_names}; gather one AU set")
    au_names = res.au_names
    point = {k: v for k, v in r["grid"].items() if k != "dataset.fold"}
    group = ", ".join(f"{sweep_spec.short_key(k)}={sweep_spec.fmt_value(v)}" for k, v in point.items()) or "all"
    for fold, fr in sorted(res.folds.items()):
      baselines.setdefault(fold, fr.all_positive_f1)
      for stage, sr in sorted(fr.stages.items()):
        rows.append((f"{r['name']} (fold {fold}, stage {stage})", sr.last.f1))
        records.append({"run": r["name"], "fold": fold, "stage": f"stage{stage}", "grid": r["grid"],
                        "mean_f1": sr.last.mean_f1, "f1": sr.last.f1})  # fmt: skip
        groups.setdefault(f"{group} [stage {stage}]", []).append(sr.last.f1)
  if not rows:
    raise FileNotFoundError(
      f"no finished run under {root} (expected {root}/<run>/results.json for {[r['name'] for r in runs][:4]}...)"
    )
  for group, f1s in groups.items():
    if len(f1s) > 1 and len(baselines) > 1:
      rows.append((f"{group}, avg. over {len(f1s)} folds", reporting.mean_f1_dicts(f1s)))
  rows += [(f"all-positive baseline, fold {k}", f1) for k, f1 in sorted(baselines.items())]
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
  module = sweep_spec.load_module(a.sweep)
  if not hasattr(module, "get_sweep"):
    p.error(f"{a.sweep}: a sweep file must define get_sweep() (see configs/sweeps/)")
  sweep = module.get_sweep()
  runs = sweep_spec.expand(sweep, sweep_spec.parse_sets(a.set))
  root = a.root if "://" in a.root else os.path.abspath(a.root)
  if a.action == "list":
    for r in runs:
      print(r["name"], json.dumps(r["overrides"]))
  elif a.action == "run" and a.ray:
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
