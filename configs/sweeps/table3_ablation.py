"""The paper's Table 3 ablation on the synthetic set (3 runs, ~5 min each on an idle 2-core machine).

  python -m megraph_jax.launch.sweep run configs/sweeps/table3_ablation.py --root=/tmp/ablation

Rows (same data, schedule and seed; F1 of the last epoch; the table is ROOT/sweep.md):
  backbone_only (stage 1): backbone + global_linear + average pooling + linear classifier (model.head='baseline');
  afg (stage 1): stage 1 without the FGG graph (model.use_fgg=False);
  anfl_mefl (stage 1): ANFL (AFG + FGG); anfl_mefl (stage 2): + MEFL, started from stage 1's last checkpoint.
All rows use the weighted asymmetric loss (the paper's rows 1-2 use a weighted BCE). One seed and one fold
cannot rank rows this close: add e.g. ``sweep["grid"]["seed"] = [0, 1, 2]`` for several seeds. On BP4D:
``--set`` nothing, but change ``config`` to ``configs/bp4d_resnet50.py`` and give the ImageNet weights.
"""


def get_sweep() -> dict:
  sweep = {}
  sweep["name"] = "table3_ablation"
  sweep["config"] = "configs/synthetic.py"
  sweep["overrides"] = {}
  sweep["variants"] = {
    "backbone_only": {"model.head": "baseline", "mode": "stage1"},
    "afg": {"model.use_fgg": False, "mode": "stage1"},
    "anfl_mefl": {"mode": "train"},
  }
  return sweep
