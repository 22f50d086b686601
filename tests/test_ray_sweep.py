"""Sweeps on a real local Ray cluster: the same results as one by one, and a killed worker resumes from its checkpoint.

One sweep of 2 tiny runs (seeds 0 and 1; stage 1, 2 epochs of 4 steps each) and 2 runs whose input is wrong (a
backbone that does not exist, found before any run starts; a dataset folder that does not exist, found by the run)
goes through ``python -m megraph_jax.launch.sweep run --ray=local`` on a 2-CPU local cluster, two runs side by side.
While it runs, the test SIGKILLs the Ray worker process training seed 1 once that run's first (intermediate,
step 4 of 8) stage-1 checkpoint exists: its retry must resume from step 4 and train steps 5-8 again. The same
sweep file, run one after another without Ray, is the reference: F1 tables, loss histories and every parameter
must be identical. Both use the suite's persistent compilation cache (the seeds change no program), so the runs
compile once in all, and not at all where another file compiled the tiny stage 1 first.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from flax import nnx
from helpers import tiny_config
from sweep_files import PYTHON, bad_variants, sweep_env, tiny_overrides, write_sweep

from megraph_jax import checkpointing, model_factory
from megraph_jax.launch import ray_sweep, sweep_spec

pytest.importorskip("ray")

RUNS = ("seed0", "seed1")  # side by side on the 2 CPUs; seed 1 is killed and retried
KILLED = "seed1"
BAD = ("resnet19", "nodata")


def _sweep_file(tmp_path, cache) -> str:
  variants = {**{name: {"seed": int(name[4:])} for name in RUNS}, **bad_variants(str(tmp_path))}
  return write_sweep(str(tmp_path / "sweep_ray.py"), "ray", tiny_overrides(cache, mode="stage1"), {}, variants)


def _env() -> dict:
  """The suite's persistent compilation cache (conftest): a program another file compiled is not compiled again."""
  return sweep_env(
    JAX_COMPILATION_CACHE_DIR=os.environ["JAX_COMPILATION_CACHE_DIR"],
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )


def _final_params(workdir: str, cache: str, stage: int, seed: int) -> tuple[int, dict[str, np.ndarray]]:
  config = tiny_config(cache, seed=seed)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: model_factory.build_from_config(config, stage)))
  del graphdef
  step, state = checkpointing.restore_model_state(
    os.path.join(workdir, "fold1", f"stage{stage}"), state, which="latest"
  )
  return step, {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def _results(root: str, name: str) -> dict:
  with open(os.path.join(root, name, "results.json")) as f:
    return json.load(f)["folds"]["1"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, synthetic_cache):
  """Runs the sweep one by one (reference) and on Ray with one worker killed; gives both roots and the kill."""
  tmp = tmp_path_factory.mktemp("ray_sweep")
  sweep = _sweep_file(tmp, synthetic_cache)
  ref, on_ray = str(tmp / "one_by_one"), str(tmp / "ray")
  t0 = time.time()
  seq = subprocess.run(
    [PYTHON, "-m", "megraph_jax.launch.sweep", "run", sweep, f"--root={ref}"],
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert seq.returncode == 4, seq.stderr[-3000:]  # EXIT_RUNS_FAILED: the bad runs
  t_seq = time.time() - t0

  t0 = time.time()
  proc = subprocess.Popen(
    [
      PYTHON,
      "-m",
      "megraph_jax.launch.sweep",
      "run",
      sweep,
      f"--root={on_ray}",
      "--ray=local",
      "--ray_cpus=2",
      "--cpus=1",
      "--max_retries=2",
    ],
    env=_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  killed = None
  try:
    workdir = os.path.join(on_ray, KILLED)
    deadline = time.time() + 500
    while killed is None and time.time() < deadline and proc.poll() is None:
      starts = [a for a in ray_sweep.read_attempts(workdir) if "checkpoints" in a]
      if starts and os.path.isdir(os.path.join(workdir, "fold1", "stage1", "checkpoints", "4")):
        os.kill(starts[0]["pid"], signal.SIGKILL)  # the Ray worker process training the run
        killed = {
          "pid": starts[0]["pid"],
          "time": time.time(),
          "results_existed": os.path.isfile(os.path.join(workdir, "results.json")),
          "checkpoints": ray_sweep.checkpoint_steps(workdir),  # after the kill: what the retry can find
        }
      time.sleep(0.05)
    out, _ = proc.communicate(timeout=600)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 4, out[-4000:]
  print(f"one by one {t_seq:.0f} s, on Ray {time.time() - t0:.0f} s")
  yield {
    "ref": ref,
    "ray": on_ray,
    "killed": killed,
    "log": out,
    "t_seq": t_seq,
    "t_ray": time.time() - t0,
    "sweep": sweep,
    "seq_stderr": seq.stderr,
  }
  shutil.rmtree(tmp, ignore_errors=True)  # ~0.7 GB of checkpoints: not kept to the end of the session


def test_ray_sweep_matches_one_by_one(sweeps):
  ref, on_ray = sweeps["ref"], sweeps["ray"]
  for name in RUNS:
    a, b = _results(ref, name), _results(on_ray, name)
    for stage in ("stage1", "stage2"):
      assert (stage in a) == (stage in b), name
      if stage in a:
        assert b[stage]["last"]["f1"] == a[stage]["last"]["f1"], f"{name} {stage}"
        assert [h["loss"] for h in b[stage]["history"]] == [h["loss"] for h in a[stage]["history"]], f"{name} {stage}"
  with open(os.path.join(on_ray, "sweep.md")) as f:
    table = f.read()
  assert all(f"| {name} (fold 1, " in table for name in RUNS)
  # Side by side: two attempts of different runs were running at the same time.
  spans = {n: _attempt_spans(os.path.join(on_ray, n), sweeps["killed"]) for n in RUNS}
  assert all(spans.values()), spans
  overlaps = [
    (m, n) for m in RUNS for n in RUNS if m < n for a in spans[m] for b in spans[n] if a[0] < b[1] and b[0] < a[1]
  ]
  assert overlaps, f"no two runs' attempts overlap in time: {spans}"
  # A finished run is never redone: a second invocation starts no process.
  before = {n: len(ray_sweep.read_attempts(os.path.join(on_ray, n))) for n in RUNS}
  good = [r for r in ray_sweep_runs(sweeps["sweep"]) if r["name"] in RUNS]
  statuses = ray_sweep.run_sweep(good, on_ray, address="unused")
  assert [s["status"] for s in statuses] == ["done"] * len(RUNS) and all(s["attempts"] == 0 for s in statuses)
  assert {n: len(ray_sweep.read_attempts(os.path.join(on_ray, n))) for n in RUNS} == before


def test_bad_runs_are_reported_once_and_not_retried_while_the_good_ones_finish(sweeps):
  """Both ways: one error: line per bad run, the table of the good ones, exit status 4 (checked in the fixture);
  the backbone is refused before any run starts, the missing dataset on its one Ray attempt, not retried."""
  for log, root in ((sweeps["seq_stderr"], sweeps["ref"]), (sweeps["log"], sweeps["ray"])):
    lines = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and "Traceback" not in "".join(lines), log[-4000:]
    assert lines[0].startswith("error: run resnet19: config key 'model.backbone' = 'resnet19'; choose one of"), lines
    assert lines[1].startswith("error: run nodata: dataset 'BP4D' not found (config key 'dataset.root')"), lines
    assert f"sweep ray: 2 of {len(RUNS) + 2} runs did not finish" in log
    assert not os.path.exists(os.path.join(root, "resnet19"))  # never started
    with open(os.path.join(root, "sweep.md")) as f:
      assert "Not finished (2): resnet19, nodata" in f.read()
  starts = [a for a in ray_sweep.read_attempts(os.path.join(sweeps["ray"], "nodata")) if "checkpoints" in a]
  assert [a["attempt"] for a in starts] == [0], starts  # one process, no retry
  assert "nodata: DatasetNotFoundError, not retried" in sweeps["log"] and "nodata: attempt" not in sweeps["log"]


def _attempt_spans(workdir: str, killed: dict | None) -> list[tuple[float, float]]:
  """(start, end) times of a run's attempts: from its start and end records; the killed attempt ends at the kill."""
  records = ray_sweep.read_attempts(workdir)
  spans = []
  for s in (r for r in records if "checkpoints" in r):
    ends = [r["time"] for r in records if "end" in r and (r["attempt"], r["process"]) == (s["attempt"], s["process"])]
    if not ends and killed is not None and s["pid"] == killed["pid"]:
      ends = [killed["time"]]
    spans += [(s["time"], ends[0])] if ends else []
  return spans


def ray_sweep_runs(path: str) -> list:

  return sweep_spec.expand(sweep_spec.load_module(path).get_sweep())


def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(sweeps, synthetic_cache):
  killed, workdir = sweeps["killed"], os.path.join(sweeps["ray"], KILLED)
  assert killed is not None and not killed["results_existed"], sweeps["log"][-3000:]
  # The kill came between the intermediate checkpoint (step 4) and the final one (step 8), so the retry has
  # steps 5-8 to train again (from the final checkpoint it would retrain nothing and match trivially).
  assert killed["checkpoints"] == {"fold1/stage1": 4}, f"killed too late: {killed}"
  starts = [a for a in ray_sweep.read_attempts(workdir) if "checkpoints" in a]
  assert [a["attempt"] for a in starts] == [0, 1], starts
  assert starts[0]["pid"] == killed["pid"] and starts[1]["pid"] != killed["pid"]
  assert starts[0]["checkpoints"] == {}  # a fresh start
  assert starts[1]["checkpoints"] == {"fold1/stage1": 4}, starts[1]  # the retry resumed from step 4: not 0, not 8
  assert starts[1]["time"] > killed["time"]
  assert "attempt 0 failed" in sweeps["log"] and "retrying" in sweeps["log"]
  step_a, a = _final_params(os.path.join(sweeps["ref"], KILLED), synthetic_cache, 1, seed=1)
  step_b, b = _final_params(workdir, synthetic_cache, 1, seed=1)
  assert step_a == step_b == 8
  assert a.keys() == b.keys() and len(a) > 50
  for k in a:
    np.testing.assert_array_equal(b[k], a[k], err_msg=k)


class _FakeRay:
  """Just enough of ``ray`` to run ``ray_sweep._attempt`` synchronously: remote, options, get, wait, cancel."""

  def __init__(self, probes):
    self.probes, self.calls = probes, []

  def remote(self, fn):
    fake = self

    class Remote:
      def options(self, **opts):
        return type("Bound", (), {"remote": lambda _, *a: fake._call(fn, opts, a)})()

    return Remote()

  class Ref:
    def __init__(self, value):
      self.value = value

  def _call(self, fn, opts, args):
    self.calls.append((fn.__name__, opts, args))
    if fn is ray_sweep._coordinator_probe:  # pylint: disable=protected-access
      return self.Ref(self.probes[opts["scheduling_strategy"].placement_group_bundle_index])
    return self.Ref({"status": "done", "env": opts["runtime_env"]["env_vars"], "args": args})

  def get(self, refs):
    return [r.value for r in refs] if isinstance(refs, list) else refs.value

  def wait(self, pending, num_returns=1):
    return pending[:num_returns], pending[num_returns:]

  def cancel(self, ref, force=False):
    pass


def test_tpu_slice_placement_and_coordinator(monkeypatch):
  """--tpu=v5e:4x4: a slice placement group of 4 hosts; one process per bundle, coordinator = TPU worker 0."""
  from ray.util import tpu as ray_tpu  # pylint: disable=import-outside-toplevel

  made, shut = [], []

  class Handle:
    placement_group = type("PG", (), {"ready": lambda self: _FakeRay.Ref(None)})()
    num_hosts, bundle_resources = 4, {"CPU": 1, "TPU": 4}

    def shutdown(self):
      shut.append(True)

  def fake_slice(topology, version, **kw):
    made.append((topology, version, kw))
    return Handle()

  monkeypatch.setattr(ray_tpu, "slice_placement_group", fake_slice)
  # bundle i sits on the host with TPU worker number (2, 0, 3, 1)[i]
  probes = [{"ip": f"10.0.0.{w}", "port": 1234 + w, "tpu_worker": w} for w in (2, 0, 3, 1)]
  fake = _FakeRay(probes)
  task = fake.remote(ray_sweep.run_process)
  res = ray_sweep.Resources(tpu="v5e:4x4")
  outs = ray_sweep._attempt(fake, task, {"name": "r"}, "/root", res, 0)  # pylint: disable=protected-access
  assert made == [("4x4", "v5litepod", {"name": "megraph-r-0"})] and shut == [True]
  runs = [c for c in fake.calls if c[0] == "run_process"]
  assert [c[1]["scheduling_strategy"].placement_group_bundle_index for c in runs] == [1, 3, 0, 2]
  assert all(c[1]["num_cpus"] == 1 and c[1]["resources"] == {"TPU": 4} for c in runs)
  envs = [o["env"] for o in outs]
  assert {e["MEGRAPH_COORDINATOR_ADDRESS"] for e in envs} == {"10.0.0.0:1234"}
  assert [e["MEGRAPH_PROCESS_ID"] for e in envs] == ["0", "1", "2", "3"]
  assert all(e["MEGRAPH_NUM_PROCESSES"] == "4" and "JAX_PLATFORMS" not in e for e in envs)
