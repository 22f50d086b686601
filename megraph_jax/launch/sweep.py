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

Every run's config is checked before any run starts (its keys, then what ``main.py`` checks: ``check_run``); a run whose
input is wrong is not started, and one that fails while running does not stop the others. ``run`` ends with
one ``error:`` line per run that did not finish, the table of those that did, and exit status
``EXIT_RUNS_FAILED`` (4) if any did not (0 if all did); ``EXIT_PREEMPTED`` (75) when, without Ray, a run was stopped
(SIGTERM, Ctrl-C) after saving its checkpoint and the runs after it were not started: rerun to resume.

Mode 'folds' (the paper's 3-fold protocol, ``python main.py --config.mode=folds``) is such a sweep: one mode-'train'
run per fold of ``dataset.folds`` (:func:`fold_runs`), all in one workdir (``fold<k>/stage<s>``, each fold's
``results_fold<k>.json``), run one after another by :func:`run_all` as one job, then ``results.json`` / ``results.md``
of all folds with their averages (:func:`run_folds`). Inside a sweep file the same runs are a grid over
``dataset.fold``; both tables average folds with ``results.fold_average``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import ml_collections

from megraph_jax import errors
from megraph_jax.launch import ray_sweep, sweep_spec
from megraph_jax.train import experiment, results
from megraph_jax.train.preemption import EXIT_PREEMPTED  # 75: without Ray, a run stopped after saving (SIGTERM)
from megraph_jax.train.results import RunResult

EXIT_RUNS_FAILED = 4  # some runs did not finish (an ``error:`` line each); the table holds the others


def check_run(run: dict[str, Any]) -> ml_collections.ConfigDict:
  """The run's config, checked as far as it can be without its data: its keys and their types, then
  ``experiment.check_config`` (what ``main.py`` checks first). A wrong one is a :class:`errors.ConfigError` naming
  the key."""
  try:
    config = sweep_spec.build_config(run)
  except (KeyError, TypeError) as e:  # a key the config does not have, a value of the wrong type
    raise errors.ConfigError(str(e.args[0]) if e.args else str(e)) from None
  experiment.check_config(config)
  if config.mode == "folds":  # the same runs as a grid
    raise errors.ConfigError(
      f"run {run['name']!r}: mode 'folds' in a sweep file; use mode 'train' with a grid over 'dataset.fold' (the "
      "same runs: the table averages them over the folds)"
    )
  return config


def check_runs(runs: list[dict[str, Any]], root: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """(runs to start, statuses of the runs whose config is wrong): every unfinished run checked before any starts."""
  todo, bad = [], []
  for r in runs:
    if os.path.isfile(sweep_spec.results_path(r, root)):
      todo.append(r)  # finished earlier: skipped by either runner
      continue
    try:
      check_run(r)
    except errors.UserError as e:
      print(f"{r['name']}: wrong input, not started (its error: line comes at the end)", flush=True)
      bad.append({"name": r["name"], "status": "error", "attempts": 0, "failures": 0, "message": str(e)})
      continue
    todo.append(r)
  return todo, bad


def run_all(runs: list[dict[str, Any]], root: str, *, one_job: bool = False) -> list[dict[str, Any]]:
  """Runs every unfinished run in this process, one after another; returns the status of each run reached, as
  ``ray_sweep.run_sweep`` does: 'done' (also a run finished earlier, 0 attempts), 'error' (wrong input, diverged,
  a full disk: its message), 'failed' (an unexpected error: its traceback is printed), 'preempted' (stopped after
  saving; the runs after it are not started), with the ``result`` of each run started. A failed run does not stop the
  others; a full disk does.

  ``one_job`` (mode 'folds', one ``main.py`` job): a finished run is started too (it checks its config against its
  stages' and trains nothing, as a rerun of ``main.py``), and the first error is raised, as ``main.py`` meets it."""
  out: list[dict[str, Any]] = []
  for i, r in enumerate(runs):
    workdir = sweep_spec.workdir(r, root)
    status = {"name": r["name"], "status": "done", "attempts": 0, "failures": 0}
    out.append(status)
    if not one_job and os.path.isfile(sweep_spec.results_path(r, root)):
      print(f"[{i + 1}/{len(runs)}] {r['name']}: finished earlier, skipped", flush=True)
      continue
    print(f"[{i + 1}/{len(runs)}] {r['name']}: {sweep_spec.command(r, root)}", flush=True)
    status["attempts"] = 1
    try:
      config = check_run(r)
      if config.dataset.synthetic.enabled and not config.dataset.synthetic.cache_dir:
        config.dataset.synthetic.cache_dir = os.path.join(root, "data")  # one generated set for all runs
      result = experiment.run(config, workdir, results_name=sweep_spec.results_name(r))
    except ray_sweep.not_retried() as e:  # the same input would fail again: reported, the next run starts
      if one_job:
        raise
      status.update(status="error", message=ray_sweep.describe(e))
      print(f"{r['name']}: {type(e).__name__}, not finished (reported at the end)", flush=True)
      if isinstance(e, errors.DiskFullError):  # the runs after it write to the same disk
        print(f"{r['name']}: the disk is full; the runs after it are not started", flush=True)
        break
      continue
    except Exception as e:  # pylint: disable=broad-except  # a bug: its traceback, then the next run
      if one_job:
        raise
      traceback.print_exc()
      status.update(status="failed", failures=1, message=ray_sweep.describe(e))
      print(f"{r['name']}: failed ({type(e).__name__}; traceback above), continuing with the next run", flush=True)
      continue
    status["result"] = result
    if result.preempted:
      status.update(status="preempted", message=result.message)
      print(f"{r['name']}: stopped before the end; rerun the same command to resume", flush=True)
      break
  return out


def fold_runs(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Mode 'folds' as a sweep: one mode-'train' run of ``config`` per fold of ``dataset.folds``, named 'fold<k>', all
  in ``workdir`` (its stages in ``fold<k>/stage<s>``, its results in ``results_fold<k>.json``)."""
  spec = {"name": "folds", "config": config, "overrides": {"mode": "train"},
          "grid": {"dataset.fold": list(config.dataset.folds)}}  # fmt: skip
  return [{**r, "workdir": workdir, "results": f"results_{r['name']}"} for r in sweep_spec.expand(spec)]


def run_folds(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
  """Mode 'folds', the paper's 3-fold protocol: :func:`fold_runs` one after another (:func:`run_all` as one job, the
  first error raised), then ``results.json`` / ``results.md`` of every fold with the fold averages (``results.table``);
  ``wall_time_s`` is the folds' sum. Returns a ``preempted`` result when a fold was stopped after saving."""
  experiment.check_config(config)  # the config's own problems (dataset.folds...), before anything is written
  workdir = os.path.abspath(workdir)
  statuses = run_all(fold_runs(config, workdir), workdir, one_job=True)
  if statuses[-1]["status"] == "preempted":
    return RunResult(config.mode, workdir, preempted=True, message=statuses[-1]["message"])
  parts = [s["result"] for s in statuses]
  folds = {k: fold for part in parts for k, fold in part.folds.items()}
  result = RunResult(config.mode, workdir, folds=folds, au_names=parts[0].au_names,
                     wall_time_s=sum(p.wall_time_s for p in parts), config=config.to_dict())  # fmt: skip
  experiment.report(result)
  return result


def run_config(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
  """One config as ``python main.py`` runs it: mode 'folds' by :func:`run_folds`, any other by ``experiment.run``."""
  return run_folds(config, workdir) if config.mode == "folds" else experiment.run(config, workdir)


def report_failures(statuses: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Prints one ``error:`` line per run that did not finish (stderr); returns their statuses."""
  failed = [s for s in statuses if s["status"] not in ("done", "preempted")]
  for s in failed:
    message = " ".join(str(s.get("message", "")).split())
    if s["status"] == "failed" and s.get("attempts", 0) > 1:  # Ray's error: a traceback, the exception last
      last = [line.strip() for line in str(s.get("message", "")).splitlines() if line.strip()][-1:]
      message = f"failed {s['attempts']} times, the last with {' '.join(last)[-1000:]}"
    print(f"error: run {s['name']}: {message}", file=sys.stderr, flush=True)
  return failed


def gather(runs: list[dict[str, Any]], root: str) -> tuple[str, list[dict[str, Any]]]:
  """One Markdown table over the finished runs' last epochs: per run, fold and stage, then each group of runs
  that differ only in the fold averaged over its folds, then the all-positive baseline of each fold."""
  finished, records, missing = [], [], []
  au_names = None
  for r in runs:
    path = sweep_spec.results_path(r, root)
    if not os.path.isfile(path):
      missing.append(r["name"])
      continue
    res = RunResult.read(path)
    if au_names is not None and tuple(res.au_names) != tuple(au_names):
      raise ValueError(f"{path}: AUs {res.au_names} differ from the other runs' {au_names}; gather one AU set")
    au_names = res.au_names
    point = {k: v for k, v in r["grid"].items() if k != "dataset.fold"}
    group = ", ".join(f"{sweep_spec.short_key(k)}={sweep_spec.fmt_value(v)}" for k, v in point.items()) or "all"
    finished.append((r["name"], group, res))
    for fold, fr in sorted(res.folds.items()):
      for stage, sr in sorted(fr.stages.items()):
        records.append({"run": r["name"], "fold": fold, "stage": f"stage{stage}", "grid": r["grid"],
                        "mean_f1": sr.last.mean_f1, "f1": sr.last.f1})  # fmt: skip
  if not records:
    raise FileNotFoundError(
      f"no finished run under {root} (expected {root}/<run>/results.json for {[r['name'] for r in runs][:4]}...)"
    )
  text = results.sweep_table(finished)
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
  stopped: list = []
  finished = False
  module = sweep_spec.load_module(a.sweep)
  if not hasattr(module, "get_sweep"):
    p.error(f"{a.sweep}: a sweep file must define get_sweep() (see configs/sweeps/)")
  sweep = module.get_sweep()
  runs = sweep_spec.expand(sweep, sweep_spec.parse_sets(a.set))
  root = a.root if "://" in a.root else os.path.abspath(a.root)
  if a.action == "list":
    for r in runs:
      print(r["name"], json.dumps(r["overrides"]))
  elif a.action == "run":
    todo, statuses = check_runs(runs, root)  # a run with a wrong config is never started
    if a.ray and todo:
      res = ray_sweep.Resources(
        hosts=a.hosts, cpus=a.cpus, gpus=a.gpus, cpu_devices=a.cpu_devices, tpu=a.tpu, tpu_subslice=a.tpu_subslice
      )
      statuses += ray_sweep.run_sweep(
        todo, root, address=a.ray, resources=res, max_retries=a.max_retries, num_cpus=a.ray_cpus
      )
    elif todo:
      statuses += run_all(todo, root)
    order = {r["name"]: i for i, r in enumerate(runs)}
    failed = report_failures(sorted(statuses, key=lambda s: order[s["name"]]))
    finished = any(s["status"] == "done" for s in statuses)
    stopped = [s["name"] for s in statuses if s["status"] == "preempted"]  # without Ray: SIGTERM, Ctrl-C
    if failed:
      print(f"sweep {sweep['name']}: {len(failed)} of {len(runs)} runs did not finish", file=sys.stderr)
    if stopped:
      print(
        f"sweep {sweep['name']}: stopped at run {stopped[0]} after saving its checkpoint, the runs after it not "
        f"started (exit status {EXIT_PREEMPTED}); rerun the same command to resume",
        file=sys.stderr,
      )
  if a.action == "gather" or finished:
    text, records = gather(runs, root)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "sweep.md"), "w") as f:
      f.write(f"# Sweep {sweep['name']}: F1 (%), last epoch\n\n{text}\n")
    with open(os.path.join(root, "sweep.json"), "w") as f:
      json.dump({"sweep": sweep['name'], "runs": records}, f, indent=1)
    print(text)
  if stopped:
    return EXIT_PREEMPTED  # rerun to resume (the failed runs are reported again at its end)
  return EXIT_RUNS_FAILED if failed else 0


if __name__ == "__main__":
  sys.exit(main())
