"""Trains / evaluates ME-GraphAU; everything is chosen by the config (``config.mode``), nothing by editing code.

  python main.py --config=configs/synthetic.py --workdir=/tmp/synthetic
  python main.py --config=configs/bp4d_resnet50.py --workdir=runs/bp4d_r50 --config.mode=folds
  python main.py --config=configs/bp4d_resnet50.py --workdir=runs/eval --config.mode=eval \
      --config.checkpoint=runs/bp4d_r50/fold1/stage2

Mode 'folds' runs as a sweep (``megraph_jax.launch.sweep.run_folds``: one mode-'train' run per fold, in this
workdir), every other mode as one run (``megraph_jax.train.experiment.run``). Rerunning the same command resumes from
the latest checkpoint in ``--workdir``. Exit statuses: 0 finished, 2 wrong input (a flag, a config value or key, data,
checkpoint, weights; the workdir is in use or not a directory), 3 training diverged, 74 no space left for a
checkpoint, 75 stopped early after a checkpoint (SIGTERM, Ctrl-C): rerun to resume; 1 an unexpected error (a bug: the
traceback is printed).
"""

import os
import sys
from typing import NoReturn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # before TensorFlow loads: its C++ INFO lines off

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from ml_collections.config_flags import config_path  # noqa: E402

from megraph_jax import errors, optional
from megraph_jax.launch import distributed, sweep
from megraph_jax.train.preemption import EXIT_PREEMPTED  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs, results.json and results.md.")
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def _usage_error(message: str) -> NoReturn:
  print(f"error: {' '.join(message.split())}", file=sys.stderr)  # one line
  sys.exit(errors.EXIT_USAGE)


def _unresolved_override(e: BaseException) -> str | None:
  """The ``--config.<path>`` ml_collections could not resolve in the config when it raised ``e``, else None (then
  ``e`` came from elsewhere, say the config file's own code, and stays an error with its traceback)."""
  tb = e.__traceback__
  while tb is not None:
    frame = tb.tb_frame
    if os.path.abspath(frame.f_code.co_filename) == os.path.abspath(config_path.__file__):
      names = ("config_path", "override", "field_path")  # the full path, as each function of the module names it
      return next((str(frame.f_locals[n]) for n in names if isinstance(frame.f_locals.get(n), str)), "")
    tb = tb.tb_next
  return None


def _override_message(path: str, e: BaseException) -> str:
  """One line: the key that does not exist, with ml_collections' 'Did you mean' when it has one."""
  while e.args and isinstance(e.args[0], BaseException):  # AttributeError(KeyError(...)) -> the KeyError
    e = e.args[0]
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  lines = [line.strip().strip("'\"") for line in text.splitlines() if line.strip()]
  hints = [line for line in lines if line.startswith("Did you mean")]
  detail = " ".join(hints) if hints else (lines[0] if lines and lines[0] not in path.split(".") else "")
  detail = f" ({detail})" if detail else ""
  return f"--config.{path}: the config has no key {path!r}{detail}; configs/default.py lists every key"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (``app.run``'s ``flags_parser``), with a wrong flag or ``--config.key=value`` override an
  ``error:`` line and exit status 2 instead of absl's exit status 1 (or ml_collections' traceback for a key the
  config does not have)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:  # a bad value, a missing --workdir, an unknown flag, overrides in a conflicting order
    message = f"{e} (python main.py --helpshort lists the flags)"
  except Exception as e:  # re-raised (a traceback, exit status 1) unless raised resolving a --config.<key>
    path = _unresolved_override(e)
    if path is None:
      raise
    message = _override_message(path, e)
  _usage_error(message)


def main(argv):
  if len(argv) > 1:
    _usage_error(f"unexpected arguments {argv[1:]}; use --config.key=value for overrides")
  optional.tensorflow()  # tf.data runs on the CPU only: TensorFlow imported with JAX's accelerators hidden from it
  distributed.initialize()

  logging.info(
    "JAX process %d/%d, %d local / %d global devices (%s)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.default_backend(),
  )
  try:
    results = sweep.run_config(FLAGS.config, FLAGS.workdir)
  except errors.UserError as e:  # the input (config, data, files), not the code: the message says what to do
    print(f"error: {e}", file=sys.stderr)
    sys.exit(errors.EXIT_USAGE)
  except errors.TrainingDiverged as e:
    print(f"error: training diverged: {e}", file=sys.stderr)
    sys.exit(errors.EXIT_DIVERGED)
  except errors.DiskFullError as e:  # the last good checkpoint is kept: free space, rerun to resume
    print(f"error: {e}", file=sys.stderr)
    sys.exit(errors.EXIT_DISK_FULL)
  if results.preempted:
    print(f"stopped before the end (exit status {EXIT_PREEMPTED}): {results.message}", file=sys.stderr)
    sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
