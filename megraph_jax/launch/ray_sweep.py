"""Sweeps as Ray work: every run of a sweep on a Ray cluster, one process per host, retried and resumed.

  python -m megraph_jax.launch.sweep run configs/sweeps/synthetic_tiny.py --root=/tmp/sweep --ray=local
  python -m megraph_jax.launch.sweep run configs/sweeps/bp4d_paper.py --root=/mnt/runs --ray=auto --tpu=v5e:2x4

A run is ``Resources.hosts`` processes (one per host of its slice, or ``--hosts`` processes on CPU or
GPU nodes), each a fresh Ray worker process (``max_calls=1``: JAX's devices and ``jax.distributed``
are per process) that runs ``experiment.run`` on the run's config in ``ROOT/<run name>``. Several
processes join with ``jax.distributed`` through the ``MEGRAPH_*`` variables of
``megraph_jax.launch.distributed``, the coordinator being the run's first host. Ray places runs as its
resources allow (``--ray=local`` starts a one-machine cluster with ``--ray_cpus`` CPUs), so several
runs go side by side.

A run whose process fails, is killed or loses its host is stopped on every host and started again
(up to ``max_retries`` times): ``experiment.run`` resumes from the run's latest checkpoint. A run that
stopped early after saving a checkpoint (preemption: SIGTERM) starts again without counting as a
failure. A finished run (``results.json``) is never started again; an input error (any
``errors.UserError``: config, data, files), a diverged training or a full disk is not retried: another attempt
would meet it again. Every process appends one line to ``ROOT/<run>/attempts.jsonl`` when it starts: attempt,
process, pid, host, and the checkpoint steps it found (what it resumes from).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import socket
import time
from typing import Any

import jax

from megraph_jax import errors, optional
from megraph_jax.launch import distributed, sweep_spec, tpu_topology
from megraph_jax.stage_dirs import checkpoint_steps
from megraph_jax.train import experiment
from megraph_jax.train.preemption import EXIT_PREEMPTED

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTEMPTS = "attempts.jsonl"


@dataclasses.dataclass(frozen=True)
class Resources:
  """What one run asks of the cluster, per process (one process per host)."""

  hosts: int = 1  # processes of one run (CPU / GPU); a TPU run has one per host of its slice
  cpus: float = 1.0  # Ray CPUs per process
  gpus: float = 0.0  # GPUs per process (all of the host's: one process drives all of its GPUs)
  cpu_devices: int = 0  # CPU-only runs: XLA host devices per process (0: XLA's default)
  tpu: str = ""  # TPU slice (or subslice) of one run, e.g. 'v5e:2x4', 'v4:2x2x2'
  tpu_subslice: bool = False  # runs take ICI-aligned subslices ``tpu`` of the cluster's bigger TPU slices
  env: tuple[tuple[str, str], ...] = ()  # extra environment variables of every process


# ----------------------------------------------------------------------------- the worker side


def _append_attempt(workdir: str, record: dict[str, Any]) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, ATTEMPTS), "a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def run_process(run: dict[str, Any], root: str, attempt: int, process: int) -> dict[str, Any]:
  """One process of one attempt of one run (the body of the Ray task): returns its status."""
  workdir = sweep_spec.workdir(run, root)
  if os.path.isfile(sweep_spec.results_path(run, root)):
    return {"status": "done", "skipped": True}
  _append_attempt(
    workdir,
    {
      "attempt": attempt,
      "process": process,
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "checkpoints": checkpoint_steps(workdir),
      "time": time.time(),
    },
  )
  try:
    config = sweep_spec.build_config(run)
  except (KeyError, ValueError, FileNotFoundError) as e:  # the sweep file, not the cluster: no retry
    return {"status": "error", "kind": type(e).__name__, "message": describe(e)}
  if config.dataset.synthetic.enabled and not config.dataset.synthetic.cache_dir:
    config.dataset.synthetic.cache_dir = os.path.join(root, "data")  # one generated set for all runs
  distributed.initialize()

  try:
    result = experiment.run(config, workdir, results_name=sweep_spec.results_name(run))
  except not_retried() as e:  # main.py's exit statuses 2 (input errors), 3 (diverged), 74 (disk full): not retried
    if type(e).__name__ == "WorkdirLockedError":  # the previous attempt's process may still be exiting: retry
      raise
    return {"status": "error", "kind": type(e).__name__, "message": describe(e)}
  _append_attempt(
    workdir,
    {
      "attempt": attempt,
      "process": process,
      "end": "preempted" if result.preempted else "done",
      "processes": jax.process_count(),
      "devices": jax.device_count(),
      "local_devices": jax.local_device_count(),
      "mean_f1": result.mean_f1,
      "time": time.time(),
    },
  )
  if result.preempted:  # main.py's EXIT_PREEMPTED: saved, rerun to resume
    return {"status": "preempted", "exit": EXIT_PREEMPTED, "message": result.message}
  return {"status": "done", "mean_f1": result.mean_f1}


def not_retried() -> tuple[type[BaseException], ...]:
  """Errors that another attempt would meet again: the config, the data, files, a diverged training, a full disk."""
  return (errors.UserError, errors.TrainingDiverged, errors.DiskFullError)


def describe(e: BaseException) -> str:
  """A run's error as ``main.py`` words it after ``error:`` (an unexpected one with its type)."""
  if isinstance(e, errors.TrainingDiverged):
    return f"training diverged: {e}"
  if isinstance(e, (errors.UserError, errors.DiskFullError)):
    return str(e)
  return f"{type(e).__name__}: {e}"


def _coordinator_probe() -> dict[str, Any]:
  """This host's address, a free port on it and its TPU worker number (if any): who coordinates."""
  ray = optional.require("ray")

  with socket.socket() as s:
    s.bind(("", 0))
    port = s.getsockname()[1]
  worker = None
  try:
    TPUAcceleratorManager = optional.require("ray._private.accelerators").TPUAcceleratorManager  # noqa: N806

    worker = TPUAcceleratorManager.get_current_node_tpu_worker_id()
  except Exception:  # pylint: disable=broad-except
    pass
  return {"ip": ray.util.get_node_ip_address(), "port": port, "tpu_worker": worker}


# ----------------------------------------------------------------------------- the driver side


class _Group:
  """The hosts of one attempt of a run: a placement group (bundle per process) or nothing (one process)."""

  def __init__(self, ray, res: Resources, name: str):
    self.ray, self.res, self.handle, self.pg = ray, res, None, None
    self.hosts = res.hosts
    self.task_resources: dict[str, Any] = {"num_cpus": res.cpus, "num_gpus": res.gpus}
    if res.tpu:
      ray_tpu = optional.require("ray.util.tpu")

      chip, bounds = tpu_topology.parse(res.tpu)
      topo, version = "x".join(map(str, bounds)), chip.ray_name or chip.version
      if res.tpu_subslice:
        self.handle = ray_tpu.subslice_placement_group(topo, version, name=f"megraph-{name}")
      else:
        self.handle = ray_tpu.slice_placement_group(topo, version, name=f"megraph-{name}")
      self.pg = self.handle.placement_group
      self.hosts = self.handle.num_hosts
      bundle = dict(self.handle.bundle_resources)
      self.task_resources = {"num_cpus": bundle.pop("CPU", 0), "resources": bundle}
    elif res.hosts > 1:
      placement_group = optional.require("ray.util.placement_group").placement_group

      bundle = {"CPU": res.cpus, **({"GPU": res.gpus} if res.gpus else {})}
      # GPU hosts: one process per node; CPU processes may share a node (the local test cluster).
      self.pg = placement_group(
        [bundle] * res.hosts, strategy="STRICT_SPREAD" if res.gpus else "PACK", name=f"megraph-{name}"
      )
    if self.pg is not None:
      ray.get(self.pg.ready())

  def options(self, process: int) -> dict[str, Any]:
    if self.pg is None:
      return dict(self.task_resources)
    scheduling_strategies = optional.require("ray.util.scheduling_strategies")

    return {
      **self.task_resources,
      "scheduling_strategy": scheduling_strategies.PlacementGroupSchedulingStrategy(
        placement_group=self.pg, placement_group_bundle_index=process
      ),
    }

  def release(self) -> None:
    if self.handle is not None:
      self.handle.shutdown()
    elif self.pg is not None:
      remove_placement_group = optional.require("ray.util.placement_group").remove_placement_group

      remove_placement_group(self.pg)


def _process_env(res: Resources) -> dict[str, str]:
  env = {"TF_CPP_MIN_LOG_LEVEL": "1", **dict(res.env)}
  if not res.tpu and not res.gpus:
    env["JAX_PLATFORMS"] = "cpu"
    if res.cpu_devices:
      flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
      env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={res.cpu_devices}".strip()
  return env


def _attempt(ray, task, run: dict[str, Any], root: str, res: Resources, attempt: int) -> list[dict[str, Any]]:
  """Starts every process of one attempt and waits for all; the first failure stops the others and raises."""
  group = _Group(ray, res, f"{run['name']}-{attempt}")
  refs = []
  try:
    env = _process_env(res)
    order = list(range(group.hosts))
    if group.hosts > 1:  # the coordinator: the run's first host (TPU: its lowest TPU worker number)
      probe = ray.remote(_coordinator_probe)
      hosts = ray.get([probe.options(**group.options(i)).remote() for i in range(group.hosts)])
      if all(h["tpu_worker"] is not None for h in hosts):
        order.sort(key=lambda i: hosts[i]["tpu_worker"])
      first = hosts[order[0]]
      env.update(MEGRAPH_COORDINATOR_ADDRESS=f"{first['ip']}:{first['port']}", MEGRAPH_NUM_PROCESSES=str(group.hosts))
    for pid, bundle in enumerate(order):
      penv = dict(env, MEGRAPH_PROCESS_ID=str(pid)) if group.hosts > 1 else env
      refs.append(task.options(**group.options(bundle), runtime_env={"env_vars": penv}).remote(run, root, attempt, pid))
    pending, results = list(refs), {}
    while pending:
      ready, pending = ray.wait(pending, num_returns=1)
      results[ready[0]] = ray.get(ready[0])  # raises if the process died or failed
      if results[ready[0]]["status"] == "error" and pending:  # its peers may wait for it forever
        for r in pending:
          ray.cancel(r, force=True)
        return [results[ready[0]]]
    return [results[r] for r in refs]
  except BaseException:
    for r in refs:  # a process left alone would wait for its peers forever
      ray.cancel(r, force=True)
    raise
  finally:
    group.release()


def _log(text: str) -> None:
  print(f"[ray sweep {time.strftime('%H:%M:%S')}] {text}", flush=True)


def drive_run(ray, task, run: dict[str, Any], root: str, res: Resources, max_retries: int) -> dict[str, Any]:
  """Attempts of one run until it finishes, fails with a config/data error, or fails ``max_retries`` + 1 times."""
  failures, attempt = 0, 0
  while True:
    if os.path.isfile(sweep_spec.results_path(run, root)):
      return {"name": run["name"], "status": "done", "attempts": attempt, "failures": failures}
    try:
      outs = _attempt(ray, task, run, root, res, attempt)
    except Exception as e:  # pylint: disable=broad-except
      failures += 1
      _log(
        f"{run['name']}: attempt {attempt} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        + (
          f"; retrying ({failures}/{max_retries}), resuming from its checkpoints"
          if failures <= max_retries
          else "; giving up"
        )
      )
      attempt += 1
      if failures > max_retries:
        return {
          "name": run["name"],
          "status": "failed",
          "attempts": attempt,
          "failures": failures,
          "message": str(e)[-2000:],
        }
      time.sleep(min(2.0 * failures, 30.0))  # let the failed attempt's processes exit (and release the workdir)
      continue
    attempt += 1
    statuses = {o["status"] for o in outs}
    if "error" in statuses:
      out = next(o for o in outs if o["status"] == "error")
      msg = out["message"]
      _log(f"{run['name']}: {out.get('kind', 'error')}, not retried (its error: line comes at the end)")
      return {"name": run["name"], "status": "error", "attempts": attempt, "failures": failures, "message": msg}
    if "preempted" in statuses:
      _log(f"{run['name']}: stopped early after saving a checkpoint; starting again to resume")
      continue
    if any(o.get("skipped") for o in outs):
      return {"name": run["name"], "status": "done", "attempts": attempt - 1, "failures": failures}
    _log(f"{run['name']}: finished (attempt {attempt - 1}, mean F1 {outs[0].get('mean_f1')})")
    return {"name": run["name"], "status": "done", "attempts": attempt, "failures": failures}


def init_ray(address: str, num_cpus: int | None = None):
  """Connects to ``address`` ('auto', 'ray://host:10001', ...) or starts a new local cluster ('local').

  The workers import this repository: a local cluster gets it on ``PYTHONPATH``; on a remote cluster
  it must be installed on every node or shipped by ``ray job submit --working-dir .``.
  Returns (ray, whether this call started the connection).
  """
  ray = optional.require("ray")

  if ray.is_initialized():
    return ray, False
  if address == "local":
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
      address="local",
      num_cpus=num_cpus or os.cpu_count(),
      include_dashboard=False,
      log_to_driver=True,
      runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
  else:
    ray.init(address=address)
  return ray, True


def run_sweep(
  runs: list[dict[str, Any]],
  root: str,
  *,
  address: str = "local",
  resources: Resources = Resources(),
  max_retries: int = 3,
  num_cpus: int | None = None,
) -> list[dict[str, Any]]:
  """Runs every run of a sweep as Ray work (all submitted at once; Ray schedules them); returns their statuses."""
  todo = [r for r in runs if not os.path.isfile(sweep_spec.results_path(r, root))]
  for r in runs:
    if r not in todo:
      _log(f"{r['name']}: finished earlier, skipped")
  out = {r["name"]: {"name": r["name"], "status": "done", "attempts": 0, "failures": 0} for r in runs if r not in todo}
  if not todo:
    return [out[r["name"]] for r in runs]
  ray, started = init_ray(address, num_cpus)
  try:
    task = ray.remote(max_calls=1, max_retries=0)(run_process)  # retries are per run (all hosts), below
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(len(todo), 1)) as pool:
      futures = {pool.submit(drive_run, ray, task, r, root, resources, max_retries): r["name"] for r in todo}
      for f in concurrent.futures.as_completed(futures):
        out[futures[f]] = f.result()
    return [out[r["name"]] for r in runs]
  finally:
    if started:
      ray.shutdown()


def read_attempts(workdir: str) -> list[dict[str, Any]]:
  """The lines of ``workdir/attempts.jsonl`` (one per process start)."""
  path = os.path.join(workdir, ATTEMPTS)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
