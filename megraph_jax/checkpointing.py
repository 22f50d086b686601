"""What a training stage directory holds (its layout: ``megraph_jax.stage_dirs``): orbax checkpoints (the last k,
and the best by test mean F1), the stage's config and model description; the resume policy (which config keys a
rerun may change, the check that the others did not); and the workdir lock that keeps two trainings apart."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import logging as pylogging
import os
import re
import shutil
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from megraph_jax import sharding, stage_dirs
from megraph_jax.errors import CheckpointError, ConfigChangedError, DiskFullError, WorkdirLockedError
from megraph_jax.stage_dirs import BEST, CHECKPOINTS, MODEL_JSON, STAGE_CONFIG, UNREADABLE, latest_step

if TYPE_CHECKING:
  import ml_collections

ITEM = "state"  # the one orbax item of a checkpoint: the train state in checkpoints/, the model state in best/
NO_SPACE = {errno.ENOSPC: os.strerror(errno.ENOSPC), errno.EDQUOT: os.strerror(errno.EDQUOT)}  # a full disk, a quota


def no_space(e: BaseException | None) -> str | None:
  """The OS's words ('No space left on device', 'Disk quota exceeded') if ``e`` or an exception it was raised from
  is a full disk or quota, else None: an ``OSError`` ENOSPC / EDQUOT, or TensorStore's error for one in orbax's
  writing thread (``ValueError: RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']``)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in NO_SPACE:
      return NO_SPACE[e.errno]
    text = str(e)
    code = re.search(r"os_error_code='?(\d+)", text)
    if code and int(code.group(1)) in NO_SPACE:
      return NO_SPACE[int(code.group(1))]
    found = [words for words in NO_SPACE.values() if words in text]
    if found:
      return found[0]
    e = e.__cause__ or e.__context__
  return None


class _NoSpaceTracebacks(pylogging.Filter):
  """Orbax logs a failed write with its traceback from each thread it passes through (hundreds of lines for one full
  disk); the :class:`DiskFullError` raised for it says it in one line. Keeps the first 300 characters of those."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    if record.exc_info and no_space(record.exc_info[1]):
      record.msg, record.args = " ".join(record.getMessage().split())[:300], ()
      record.exc_info, record.exc_text = None, None
    return True


_NO_SPACE_FILTER = _NoSpaceTracebacks()


def _bytes(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB"):
    if n < 1000:
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1000
  return f"{n:.1f} TB"


def _tree_size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def free_space(path: str) -> str:
  """'<free> free of <total>' on the filesystem of ``path`` (or of its nearest existing parent)."""
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  usage = shutil.disk_usage(path)
  return f"{_bytes(usage.free)} free of {_bytes(usage.total)}"


def _abstract(tree: Any) -> Any:
  """Restore targets replicated over the devices of *this* run, whatever topology wrote the checkpoint."""
  repl = sharding.replicated(sharding.make_mesh())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), tree)


class StageCheckpoints:
  """``<stage_dir>/checkpoints`` (the train state: model + optimizer, last ``keep``) and ``<stage_dir>/best``
  (the model state of the best epoch).

  The step number of a checkpoint is the global optimizer step, so it also gives the data position
  (epoch = step // steps_per_epoch, batch = step % steps_per_epoch).
  """

  def __init__(self, stage_dir: str, *, keep: int = 2):
    self.stage_dir = os.path.abspath(stage_dir)
    pylogging.getLogger("absl").addFilter(_NO_SPACE_FILTER)  # orbax's loggers: once per process
    self.latest = ocp.CheckpointManager(
      stage_dirs.checkpoints_dir(self.stage_dir),
      item_names=(ITEM,),
      options=ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True),
    )
    self.best = ocp.CheckpointManager(
      stage_dirs.best_dir(self.stage_dir),
      item_names=(ITEM,),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=1,
        best_fn=lambda m: m["mean_f1"],
        best_mode="max",
        keep_checkpoints_without_metrics=False,
        create=True,
      ),
    )

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def checkpoint_dir(self, step: int) -> str:
    return stage_dirs.checkpoint_dir(self.stage_dir, step)

  def save(self, step: int, state: Any) -> None:
    """Starts saving the train state at ``step`` (in orbax's thread; ``finish_save()`` waits for it)."""
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=ocp.args.Composite(**{ITEM: ocp.args.StandardSave(state)}), force=True)

  def finish_save(self) -> None:
    """Waits for the train state being saved. A full disk is a :class:`DiskFullError` (the partial checkpoint
    removed, the previous ones kept); any other failure is raised as orbax raised it."""
    self._wait(self.latest, CHECKPOINTS)

  def restore(self, state: Any) -> tuple[int, Any] | None:
    """(step, train state) of the newest readable checkpoint shaped like ``state``, or None.

    A checkpoint that fails to restore (truncated or partly deleted files) is skipped with a warning
    when an older one restores, and moved to ``<stage_dir>/unreadable_checkpoints`` so that training
    can write that step again. When none restores, nothing is moved and the error names each failure.
    """
    failures = []
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        out = self.latest.restore(step, args=ocp.args.Composite(**{ITEM: ocp.args.StandardRestore(_abstract(state))}))
      except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore raise many kinds
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        logging.warning(
          "checkpoint %s cannot be restored (%s); trying the previous one", self.checkpoint_dir(step), reason
        )
        failures.append((step, reason))
        continue
      if failures:
        self._set_aside([s for s, _ in failures], restored=step)
      return step, out[ITEM]
    if failures:
      listing = "; ".join(f"step {s}: {r}" for s, r in failures)
      raise CheckpointError(
        f"{stage_dirs.checkpoints_dir(self.stage_dir)}: no checkpoint can be restored ({listing}). If the "
        "model or its config changed, use a new --workdir; if the files are damaged, delete the stage folder "
        f"{self.stage_dir} to train it again."
      )
    return None

  def _set_aside(self, steps: list[int], *, restored: int) -> None:
    """Moves unreadable checkpoints out of the manager's folder (process 0), then rereads the folder."""
    if jax.process_index() == 0:
      dest = os.path.join(self.stage_dir, UNREADABLE)
      os.makedirs(dest, exist_ok=True)
      for step in steps:
        target = os.path.join(dest, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(self.checkpoint_dir(step), target)
        logging.warning(
          "skipped unreadable checkpoint of step %d (moved to %s); resuming from step %d", step, target, restored
        )
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("unreadable checkpoints moved")
    self.latest.reload()

  def save_best(self, step: int, state: Any, metrics: dict[str, float]) -> None:
    """Offers the model state at ``step`` with its validation metrics; kept if its mean F1 is the best. Returns once
    it is written (a full disk: :class:`DiskFullError`, the best one so far kept)."""
    if step in self.best.all_steps():
      return
    self.best.save(
      step,
      args=ocp.args.Composite(**{ITEM: ocp.args.StandardSave(state)}),
      metrics={k: float(v) for k, v in metrics.items()},
    )
    self._wait(self.best, BEST)

  def best_step(self) -> int | None:
    return self.best.best_step()

  def wait(self) -> None:
    self._wait(self.latest, CHECKPOINTS)
    self._wait(self.best, BEST)

  def _wait(self, manager: ocp.CheckpointManager, sub: str) -> None:
    try:
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  # orbax raises its writing thread's error here
      words = no_space(e)
      if words is None:
        raise
      raise self._disk_full(sub, words) from e

  def _disk_full(self, sub: str, words: str) -> DiskFullError:
    """The error of a save into ``<stage_dir>/<sub>`` that found the disk full, once its partial files are removed."""
    directory = os.path.join(self.stage_dir, sub)
    partial = sorted(glob.glob(os.path.join(directory, "*.orbax-checkpoint-tmp*")))
    if jax.process_index() == 0:
      for path in partial:  # orbax writes <step>.orbax-checkpoint-tmp and renames it to <step> once complete
        shutil.rmtree(path, ignore_errors=True)
    steps = [int(n) for n in (os.path.basename(p).split(".")[0] for p in partial) if n.isdigit()]
    what = f"the checkpoint of step {max(steps)}" if steps else "a checkpoint"
    return self.disk_full_error(words, what, directory, removed=bool(partial))

  def disk_full_error(self, words: str, what: str, path: str, *, removed: bool = False) -> DiskFullError:
    """One line: ``words`` writing ``what`` to ``path``, the space free there, and what a rerun resumes from."""
    last = latest_step(self.stage_dir)
    if last is None:
      kept = "no checkpoint of this stage is saved yet: free space and rerun the same command to start it again"
    else:
      size = _bytes(_tree_size(self.checkpoint_dir(last)))
      kept = (
        f"the last good checkpoint (step {last}, {size}) is kept: free space and rerun the same command to resume "
        "from it"
      )
    removed_text = "; the partial files were removed" if removed else ""
    return DiskFullError(f"{words} writing {what} to {path} ({free_space(path)} there{removed_text}); {kept}")

  def close(self) -> None:
    self.latest.close()
    self.best.close()

  def abort(self) -> None:
    """``close()`` on the way out of a failure: an error orbax raises again (a failed save's) is logged, not raised
    over the one that stopped training."""
    for manager in (self.latest, self.best):
      try:
        manager.close()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("closing %s: %s", manager.directory, (str(e) or type(e).__name__).splitlines()[0][:300])


def write_model_json(stage_dir: str, cfg: dict[str, Any]) -> None:
  """Stores the model spec (``ModelSpec.to_json()``) next to its checkpoints (process 0)."""
  if jax.process_index() == 0:
    os.makedirs(stage_dir, exist_ok=True)
    with open(os.path.join(stage_dir, MODEL_JSON), "w") as f:
      json.dump(cfg, f, indent=2)


@contextlib.contextmanager
def _quiet_read_only():
  """Drops orbax's warnings that a read-only manager is read-only (they look like problems at every stage-2 start and
  every checkpoint load, and are not)."""

  def keep(record: pylogging.LogRecord) -> bool:
    return not record.getMessage().startswith(("Given directory is read only", "CheckpointManagerOptions.read_only"))

  logger = pylogging.getLogger("absl")
  logger.addFilter(keep)
  try:
    yield
  finally:
    logger.removeFilter(keep)


def restore_model_state(stage_dir: str, abstract_state: Any, *, which: str = "best") -> tuple[int, Any]:
  """(step, model state) from ``stage_dir/best`` (which='best') or ``stage_dir/checkpoints`` ('latest')."""
  sub = BEST if which == "best" else CHECKPOINTS
  directory = os.path.join(os.path.abspath(stage_dir), sub)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory}: no checkpoints; train that stage first or point to another directory")
  with (
    _quiet_read_only(),
    ocp.CheckpointManager(
      directory, item_names=(ITEM,), options=ocp.CheckpointManagerOptions(read_only=True, create=False)
    ) as mgr,
  ):
    step = mgr.latest_step()  # the best manager keeps only the best one
    if step is None:
      raise FileNotFoundError(f"{directory}: no checkpoint saved yet")
    target = _abstract(abstract_state)
    if sub == BEST:
      return step, mgr.restore(step, args=ocp.args.Composite(**{ITEM: ocp.args.StandardRestore(target)}))[ITEM]
    try:  # the model part of a train state {'model', 'optimizer'}
      item = {"model": target}
      restore_args = ocp.checkpoint_utils.construct_restore_args(item)
      partial = ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
      return step, mgr.restore(step, args=ocp.args.Composite(**{ITEM: partial}))[ITEM]["model"]
    except Exception:  # pylint: disable=broad-except  # workdirs of 2026-11-25 and before: the model state alone
      return step, mgr.restore(step, args=ocp.args.Composite(**{ITEM: ocp.args.StandardRestore(target)}))[ITEM]


# ----------------------------------------------------------------------------- resume policy


# Config keys that change how a run is executed or reported, not the experiment: a resume may change them.
RUN_KEYS = (
  "mode",
  "checkpoint",
  "init_from",
  "keep_checkpoints",
  "eval_every_epochs",
  "log_every_steps",
  "stop_after_steps",
  "eval_batch_size",
  "dataset.root",
  "dataset.fold",
  "dataset.folds",
  "dataset.synthetic.cache_dir",
  "sharding",
  "model.remat",
  "model.imagenet_weights",
  "model.precision",
  "model.layout",
)


def experiment_config(config: ml_collections.ConfigDict, stage: int, splits: Sequence[Any] = ()) -> dict[str, Any]:
  """The config of ``stage`` without RUN_KEYS and the other stage's settings, plus the fingerprint of each split it
  reads (``data.<split>``: image paths and labels, so a moved dataset resumes and other content does not): what a
  resume must keep."""
  out = config.to_dict()
  if splits:
    out["data"] = {s.split or f"split{i}": s.fingerprint() for i, s in enumerate(splits)}
  for key in RUN_KEYS + (("stage2",) if stage == 1 else ("stage1",)):
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
      node = node.get(p, {})
    node.pop(leaf, None)
  return out


def write_stage_config(stage_dir: str, config: dict[str, Any], *, init: str) -> None:
  """Stores the stage's experiment config and where its initial weights came from (process 0)."""
  if jax.process_index() == 0:
    os.makedirs(stage_dir, exist_ok=True)
    tmp = os.path.join(stage_dir, STAGE_CONFIG + ".tmp")
    with open(tmp, "w") as f:
      json.dump({"config": config, "init": init}, f, indent=1)
    os.replace(tmp, os.path.join(stage_dir, STAGE_CONFIG))


def read_stage_config(stage_dir: str) -> dict[str, Any]:
  """``{"config": ..., "init": ...}`` stored by :func:`write_stage_config`, or {} for older stage folders."""
  path = os.path.join(stage_dir, STAGE_CONFIG)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def check_stage_config(stage_dir: str, config: dict[str, Any]) -> None:
  """Raises ConfigChangedError naming the keys in which ``config`` differs from the stage's stored config."""
  stored = read_stage_config(stage_dir).get("config")
  if stored is None:
    logging.warning(
      "%s has no %s (written by an older megraph-jax): resuming without checking the config", stage_dir, STAGE_CONFIG
    )
    return
  old, new = _flatten(stored), _flatten(json.loads(json.dumps(config)))  # tuples -> lists, as stored
  if "data" not in stored:  # written before data fingerprints were stored: nothing to compare them with
    new = {k: v for k, v in new.items() if not k.startswith("data.")}
  changed = [
    (k, old.get(k, "<absent>"), new.get(k, "<absent>"))
    for k in sorted(set(old) | set(new))
    if old.get(k, "<absent>") != new.get(k, "<absent>")
  ]
  if changed:
    raise ConfigChangedError(stage_dir, changed)


class WorkdirLock:
  """An exclusive lock on ``<workdir>/.lock`` held by process 0 while it trains (released when it exits)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self._file = None

  def __enter__(self) -> "WorkdirLock":
    if jax.process_index() != 0:
      return self
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    f = open(self.path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or "unknown process"
      f.close()
      raise WorkdirLockedError(os.path.dirname(self.path), holder) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    f.flush()
    self._file = f
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
