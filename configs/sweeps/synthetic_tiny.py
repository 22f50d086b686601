"""2 folds x 2 values of lambda on a tiny synthetic set (about 2 minutes on 2 CPU cores): a sweep smoke test.

python -m megraph_jax.launch.sweep run configs/sweeps/synthetic_tiny.py --root=/tmp/sweep
"""


def get_sweep() -> dict:
  sweep = {}
  sweep["name"] = "synthetic_tiny"
  sweep["config"] = "configs/synthetic.py"
  sweep["overrides"] = {  # every run: 6 subjects x 16 frames at 48 px, 1 + 1 epochs
    "dataset.synthetic.num_subjects": 6,
    "dataset.synthetic.frames_per_subject": 16,
    "dataset.synthetic.image_size": 48,
    "dataset.image_size": 40,
    "dataset.crop_size": 32,
    "batch_size": 8,
    "eval_batch_size": 16,
    "stage1.epochs": 1,
    "stage2.epochs": 1,
    "log_every_steps": 4,
  }
  sweep["grid"] = {"dataset.fold": [1, 2], "stage2.lam": [0.01, 0.05]}
  return sweep
