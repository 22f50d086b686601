"""lambda x K on the synthetic set, fold 1 (the paper's Figure 5 / Table 5 style study, 9 runs of ~5 min).

python -m megraph_jax.launch.sweep run configs/sweeps/synthetic_lambda_k.py --root=/tmp/sweep_lk
"""


def get_sweep() -> dict:
  sweep = {}
  sweep["name"] = "synthetic_lambda_k"
  sweep["config"] = "configs/synthetic.py"
  sweep["overrides"] = {}
  sweep["grid"] = {"stage2.lam": [0.01, 0.05, 0.1], "model.neighbor_num": [2, 4, 6]}
  return sweep
