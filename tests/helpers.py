"""Test helpers (imported by the tests; ``conftest.py`` holds only fixtures and process-wide settings): the tiny
synthetic set and the tiny training config every end-to-end test trains."""

import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
from flax import nnx
from PIL import Image

from megraph_jax import task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))  # tools/golden_cases.py: the golden cases, shared with benchmarks/
# The golden-case pieces moved to tools/golden_cases.py (benchmarks/device_check.py reads them too); kept importable
# from here for the tests and tools/make_opengraphau_golden.py.
from golden_cases import (  # noqa: E402,F401
  FIXED_BUFFERS,
  OPENGRAPHAU_FULL,
  official_tensors,
  seeded_images,
  seeded_state_dict,
  write_official_pth,
)

# A model's call jitted, as training and predict run it: one program per model structure and input (run op by op,
# a ResNet forward compiles hundreds of one-op programs). Equal structures share the program, so a loaded or
# converted model and its source compare bit for bit. nnx.jit carries train-mode BatchNorm updates back.
forward = nnx.jit(lambda model, *args: model(*args))

TINY_AUS = ("AU1", "AU2", "AU6", "AU12")
TINY_SYNTHETIC = dict(num_subjects=3, frames_per_subject=16, image_size=40, seed=0)  # fold 1: 32 train, 16 test


def tiny_config(cache_dir: str, **overrides) -> ml_collections.ConfigDict:
  """configs/synthetic.py shrunk to ResNet-18 at 32 px, 4 AUs, batch 8 (4 steps per epoch), 2 + 1 epochs."""
  from configs import synthetic  # pylint: disable=import-outside-toplevel

  config = synthetic.get_config()
  config.dataset.au_names = TINY_AUS
  config.dataset.synthetic.cache_dir = cache_dir
  for k, v in TINY_SYNTHETIC.items():
    setattr(config.dataset.synthetic, k, v)
  config.dataset.image_size = 36
  config.dataset.crop_size = 32
  config.batch_size = 8
  config.eval_batch_size = 8
  config.stage1.epochs = 2
  config.stage2.epochs = 1
  config.log_every_steps = 2
  config.update_from_flattened_dict(overrides)  # dotted keys, e.g. {"stage2.init": "none"}
  return config


def tiny_main_args(cache_dir: str, workdir: str, *overrides: str) -> list[str]:
  """``python main.py`` arguments running ``tiny_config`` (its data and sizes) in ``workdir``, plus ``overrides``."""
  s = TINY_SYNTHETIC
  return [
    sys.executable,
    os.path.join(REPO, "main.py"),
    "--config=" + os.path.join(REPO, "configs", "synthetic.py"),
    f"--workdir={workdir}",
    f"--config.dataset.au_names=({','.join(repr(a) for a in TINY_AUS)})",
    f"--config.dataset.synthetic.cache_dir={cache_dir}",
    f"--config.dataset.synthetic.num_subjects={s['num_subjects']}",
    f"--config.dataset.synthetic.frames_per_subject={s['frames_per_subject']}",
    f"--config.dataset.synthetic.image_size={s['image_size']}",
    "--config.dataset.image_size=36",
    "--config.dataset.crop_size=32",
    "--config.batch_size=8",
    "--config.eval_batch_size=8",
    "--config.stage1.epochs=2",
    "--config.stage2.epochs=1",
    "--config.log_every_steps=2",
    *overrides,
  ]


def write_lists(root, name, split, paths, labels, fold=1):
  """The official list files of one split: ``{name}_{split}_img_path_fold{fold}.txt`` and its labels."""
  os.makedirs(os.path.join(root, "list"), exist_ok=True)
  with open(os.path.join(root, "list", f"{name}_{split}_img_path_fold{fold}.txt"), "w") as f:
    f.write("".join(p + "\n" for p in paths))
  np.savetxt(os.path.join(root, "list", f"{name}_{split}_label_fold{fold}.txt"), labels, fmt="%d")


def id_dataset(root, n, num_aus=3):
  """Constant-colour PNGs whose red value encodes the index (crop/flip/resize keep it)."""
  paths = []
  for k in range(n):
    p = f"S1/{k}.png"
    os.makedirs(os.path.join(root, "img", "S1"), exist_ok=True)
    Image.fromarray(np.full((40, 48, 3), (10 + 20 * k, 50, 90), np.uint8)).save(os.path.join(root, "img", p))
    paths.append(p)
  labels = (np.arange(n)[:, None] + np.arange(num_aus)[None]) % 2
  write_lists(str(root), "X", "train", paths, labels)
  write_lists(str(root), "X", "test", paths, labels)
  return str(root)


def batch_ids(batch):
  """The indices ``id_dataset`` encoded in a batch's images (after ImageNet normalisation)."""
  red = batch["image"][:, :, :, 0] * task.IMAGENET_STD[0] + task.IMAGENET_MEAN[0]  # [B, H, W] in [0, 1]
  v = red.reshape(red.shape[0], -1).mean(1) * 255
  return np.rint((v - 10) / 20).astype(int).tolist()


def seeded_photo(seed: int, height: int, width: int) -> np.ndarray:
  """A smooth RGB uint8 picture ``[height, width, 3]`` (gradients + blobs) of any size, drawn from ``seed``."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  img = np.zeros((height, width, 3))
  for c in range(3):
    for _ in range(4):
      cy, cx, r = rng.uniform(0, 1, 3)
      img[..., c] += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (0.02 + 0.1 * r))
    img[..., c] += rng.uniform(-1, 1) * x + rng.uniform(-1, 1) * y
  img += 0.05 * rng.standard_normal(img.shape)
  img = (img - img.min()) / (img.max() - img.min())
  return (255 * img).round().astype(np.uint8)


def official_subjects(dataset: str) -> dict[str, list[str]]:
  """{'train_fold1': subjects in order, ...} of ME-GraphAU's official ``<dataset>_*_img_path_fold*.txt`` lists, from
  tests/data/official_subjects.json (tools/make_official_subjects.py); with MEGRAPHAU_OFFICIAL=<an ME-GraphAU
  checkout> the shipped file is first checked against that checkout's lists (subjects, line counts, git blobs)."""
  import json  # pylint: disable=import-outside-toplevel

  import make_official_subjects  # tools/  # pylint: disable=import-outside-toplevel

  with open(os.path.join(REPO, "tests", "data", "official_subjects.json")) as f:
    shipped = json.load(f)[dataset]
  assert set(shipped) == set(make_official_subjects.KEYS)
  checkout = os.environ.get("MEGRAPHAU_OFFICIAL")
  if checkout:
    for key, entry in shipped.items():
      path = make_official_subjects.list_path(checkout, dataset, key)
      assert make_official_subjects.read_list(path) == entry, f"{path} differs from tests/data/official_subjects.json"
  return {key: entry["subjects"] for key, entry in shipped.items()}


# The float64 stage-2 runs of tests/test_sharding.py (1 vs 8 devices) and tests/test_multiprocess.py (1 vs 2 processes):
# ``tiny_config``'s stage 2 from scratch, one epoch (4 steps), float64 (JAX_ENABLE_X64=1), in a subprocess with
# ``devices`` CPU devices, one run per set of config overrides (several in one process: one start-up). Prints each
# run's losses (TensorBoard, one per step), F1 and device count; saves every parameter and BatchNorm statistic of
# its latest checkpoint.
FLOAT64_WORKER = textwrap.dedent("""
    import json, os, sys
    sys.path[:0] = [{repo!r}, os.path.join({repo!r}, "tests")]
    import jax, numpy as np
    from flax import nnx
    from helpers import read_stage2_run, tiny_config
    from megraph_jax import model_factory
    from megraph_jax.train.experiment import run
    root, extras = sys.argv[1], json.loads(sys.argv[2])
    for k, extra in enumerate(extras):
      workdir, out = os.path.join(root, f"work_{{k}}"), os.path.join(root, f"params_{{k}}.npz")
      config = tiny_config({cache!r}, mode="stage2", log_every_steps=1,
                           **{{"model.dtype": "float64", "stage2.init": "none"}}, **extra)
      info = {{}}
      if config.sharding.params == "fsdp":  # check that the state really is split over the devices
        from megraph_jax import sharding
        specs = jax.tree.leaves(sharding.state_shardings(nnx.state(model_factory.build_from_config(config, 2)),
                                sharding.make_mesh(), "fsdp", config.sharding.fsdp_min_size))
        info["sharded_leaves"] = sum(s.spec != () and any(a is not None for a in s.spec) for s in specs)
      config.stage2.epochs = 1
      results = run(config, workdir)
      _, flat, losses, _ = read_stage2_run(config, os.path.join(workdir, "fold1", "stage2"))
      np.savez(out, **flat)
      info.update(devices=jax.device_count(), losses=losses, f1=results.folds[1].stages[2].last.f1)
      print("RUN " + json.dumps(info), flush=True)
""")


def float64_stage2_runs(
  devices: int, tmp_dir, cache: str, extras: list[dict]
) -> list[tuple[dict, dict[str, np.ndarray]]]:
  """[(info: devices, losses, f1[, sharded_leaves], {name: parameter or statistic})] of ``FLOAT64_WORKER``, one per
  set of config overrides in ``extras``, all in one process."""
  root = os.path.join(str(tmp_dir), f"float64_{devices}")
  os.makedirs(root, exist_ok=True)
  script = os.path.join(root, "float64_worker.py")
  with open(script, "w") as f:
    f.write(FLOAT64_WORKER.format(repo=REPO, cache=cache))
  env = dict(
    os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1"
  )
  proc = subprocess.run(
    [sys.executable, script, root, json.dumps(extras)],
    env=env,
    capture_output=True,
    text=True,
    timeout=400 * len(extras),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  infos = [json.loads(line[len("RUN ") :]) for line in proc.stdout.splitlines() if line.startswith("RUN ")]
  assert len(infos) == len(extras) and all(info["devices"] == devices for info in infos), proc.stdout[-2000:]
  return [(info, dict(np.load(os.path.join(root, f"params_{k}.npz")))) for k, info in enumerate(infos)]


def float64_stage2_run(devices: int, tmp_dir, cache: str, **extra) -> tuple[dict, dict[str, np.ndarray]]:
  """The one run of :func:`float64_stage2_runs` with config overrides ``extra``."""
  return float64_stage2_runs(devices, tmp_dir, cache, [extra])[0]


def read_stage2_run(config, stage_dir: str) -> tuple[int, dict[str, np.ndarray], list[float], int]:
  """(latest step, {name: parameter or BatchNorm statistic} of its checkpoint, the TensorBoard ``train/total`` losses
  by step, number of event files) of a stage-2 directory trained from ``config`` (the float64 runs' subprocesses)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from megraph_jax import checkpointing, model_factory  # pylint: disable=import-outside-toplevel

  _, state = nnx.split(nnx.eval_shape(lambda: model_factory.build_from_config(config, 2)))
  step, state = checkpointing.restore_model_state(stage_dir, state, which="latest")
  flat = {
    "/".join(map(str, p)): np.asarray(v[...])
    for p, v in nnx.to_flat_state(state)
    if isinstance(v, (nnx.Param, nnx.BatchStat))
  }
  events = [n for n in os.listdir(stage_dir) if n.startswith("events.out")]
  losses = {}
  for name in events:
    for e in tf.compat.v1.train.summary_iterator(os.path.join(stage_dir, name)):
      for v in e.summary.value:
        if v.tag == "train/total":
          losses[e.step] = float(tf.make_ndarray(v.tensor))
  return int(step), flat, [losses[k] for k in sorted(losses)], len(events)
