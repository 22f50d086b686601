"""Table 3-style ablation on a dataset config (default: the synthetic set), measured by the real training code.

  python tools/ablation.py --config=configs/synthetic.py --workdir=/tmp/ablation [--config.key=value ...]

Rows, as the paper's Table 3 (same data, schedule and seed for every row; F1 of the last epoch):
  1. backbone only: backbone + global_linear + average pooling + linear classifier (model.head='baseline');
  2. + AFG: stage 1 without the FGG graph (model.use_fgg=False);
  3. + AFG + FGG: stage 1 (ANFL);
  4. full model: stage 2 (ANFL + MEFL) started from row 3's last checkpoint (stage2.init, official).
All rows are trained with the weighted asymmetric loss (the paper's rows 1-2 use a weighted BCE).
Writes ``WORKDIR/ablation.json`` and ``WORKDIR/ablation.md`` and prints the table.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for the runs (one sub-directory per row) and the table.")
config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Base experiment config.", lock_config=True)
flags.mark_flags_as_required(["workdir"])

ROWS = (
  ("backbone only", "baseline", {"model.head": "baseline", "mode": "stage1"}, 1),
  ("+ AFG", "afg", {"model.use_fgg": False, "mode": "stage1"}, 1),
  ("+ AFG + FGG (ANFL, stage 1)", "anfl_mefl", {"mode": "train"}, 1),
  ("+ AFG + FGG + MEFL (full, stage 2)", "anfl_mefl", {"mode": "train"}, 2),
)


def main(argv):
  del argv
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  tf.config.set_visible_devices([], "GPU")
  from megraph_jax import reporting, task, train  # pylint: disable=import-outside-toplevel

  base = FLAGS.config
  workdir = os.path.abspath(FLAGS.workdir)
  if base.dataset.synthetic.enabled and not base.dataset.synthetic.cache_dir:
    base.unlock()
    base.dataset.synthetic.cache_dir = os.path.join(workdir, "data")  # one generated set for every row
    base.lock()
  fold = str(base.dataset.fold)
  runs, rows, times = {}, [], {}
  for title, run_name, overrides, stage in ROWS:
    if run_name not in runs:
      config = base.copy_and_resolve_references()
      config.unlock()
      config.update_from_flattened_dict(overrides)
      t0 = time.time()
      runs[run_name] = train.run(config, os.path.join(workdir, run_name))
      times[run_name] = time.time() - t0
    result = runs[run_name]["folds"][fold]
    rows.append((title, result[f"stage{stage}"]["last"]["f1"]))
  baseline = runs["baseline"]["folds"][fold]
  rows.append(("all-positive baseline (predict every AU)", baseline["all_positive_f1"]))
  names = task.au_names(base.dataset)
  table = reporting.f1_table(rows, names)
  text = (
    f"# Ablation (paper's Table 3 layout): F1 (%) on fold {fold}'s test split, last epoch\n\n{table}\n\n"
    f"Backbone {base.model.backbone}, {base.dataset.crop_size} px, stage 1 {base.stage1.epochs} epochs, "
    f"stage 2 {base.stage2.epochs} epochs, batch {base.batch_size}, seed {base.seed}. "
    f"Wall time per run (s): {json.dumps({k: round(v) for k, v in times.items()})}\n"
  )
  with open(os.path.join(workdir, "ablation.md"), "w") as f:
    f.write(text)
  with open(os.path.join(workdir, "ablation.json"), "w") as f:
    json.dump({"rows": [{"method": t, "f1": f1} for t, f1 in rows], "wall_time_s": times}, f, indent=1)
  print(text, flush=True)


if __name__ == "__main__":
  app.run(main)
