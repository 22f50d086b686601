"""Trains / evaluates ME-GraphAU; everything is chosen by the config (``config.mode``), nothing by editing code.

  python main.py --config=configs/synthetic.py --workdir=/tmp/synthetic
  python main.py --config=configs/bp4d_resnet50.py --workdir=runs/bp4d_r50 --config.mode=folds
  python main.py --config=configs/bp4d_resnet50.py --workdir=runs/eval --config.mode=eval \
      --config.checkpoint=runs/bp4d_r50/fold1/stage2

Rerunning the same command resumes from the latest checkpoint in ``--workdir``. Exit statuses: 0 finished,
2 wrong input (config, data, checkpoint, weights; or the workdir is in use), 3 training diverged,
75 stopped early after a checkpoint (SIGTERM, Ctrl-C): rerun to resume; 1 an unexpected error.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # before TensorFlow loads: its C++ INFO lines off

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from megraph_jax import errors
from megraph_jax.launch import distributed
from megraph_jax.train import experiment  # noqa: E402
from megraph_jax.train.preemption import EXIT_PREEMPTED  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs, results.json and results.md.")
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.key=value for overrides")
  tf.config.set_visible_devices([], "GPU")  # tf.data runs on the CPU only: keep TensorFlow off JAX's accelerators
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
    results = experiment.run(FLAGS.config, FLAGS.workdir)
  except errors.UserError as e:  # the input (config, data, files), not the code: the message says what to do
    print(f"error: {e}", file=sys.stderr)
    sys.exit(errors.EXIT_USAGE)
  except errors.TrainingDiverged as e:
    print(f"error: training diverged: {e}", file=sys.stderr)
    sys.exit(errors.EXIT_DIVERGED)
  if results.preempted:
    print(f"stopped before the end (exit status {EXIT_PREEMPTED}): {results.message}", file=sys.stderr)
    sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
  app.run(main)
