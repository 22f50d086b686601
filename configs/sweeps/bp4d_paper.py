"""The paper's BP4D protocol: {ResNet-50, Swin-B} x 3 folds, official settings (6 runs of both stages).

  python -m megraph_jax.launch.sweep run configs/sweeps/bp4d_paper.py --root=/mnt/runs/bp4d --ray=auto --tpu=v5e:2x4
  python -m megraph_jax.launch.sweep gather configs/sweeps/bp4d_paper.py --root=/mnt/runs/bp4d

ImageNet weights: --set model.imagenet_weights=FOLDER, a folder holding the official files (resnet50-19c8e357.pth
or torchvision's resnet50-0676ba61.pth, and swin_base_patch4_window7_224.pth): each backbone finds its own file.
"""


def get_sweep() -> dict:
  sweep = {}
  sweep["name"] = "bp4d_paper"
  sweep["config"] = "configs/bp4d_resnet50.py"
  sweep["overrides"] = {}
  sweep["grid"] = {"config": ["configs/bp4d_resnet50.py", "configs/bp4d_swin.py"], "dataset.fold": [1, 2, 3]}
  return sweep
