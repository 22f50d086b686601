"""Training that refuses silent traps: ImageNet weights, changed configs, divergence, damaged inputs, a busy workdir,
and the exit statuses main.py gives a scheduler."""

import errno
import importlib
import logging
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from flax import nnx
from helpers import REPO, TINY_AUS, TINY_SYNTHETIC, tiny_config, tiny_main_args

from megraph_jax import checkpointing, errors, model_factory, stage_dirs
from megraph_jax.data import synthetic
from megraph_jax.errors import ConfigChangedError, ImageNetWeightsError, TrainingDiverged, WorkdirLockedError
from megraph_jax.train import initialization
from megraph_jax.train.experiment import run
from megraph_jax.train.preemption import EXIT_PREEMPTED

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


# ----------------------------------------------------------------------------- ImageNet initialisation


@pytest.mark.parametrize("name", ["bp4d_resnet50", "bp4d_swin", "disfa_resnet50", "disfa_swin"])
def test_paper_configs_refuse_to_start_without_imagenet_weights(name, tmp_path):
  config = importlib.import_module(f"configs.{name}").get_config()
  config.model.imagenet_weights = str(tmp_path / "checkpoints")
  expected = {"resnet50": "resnet50-19c8e357.pth", "swin_transformer_base": "swin_base_patch4_window7_224.pth"}
  with pytest.raises(ImageNetWeightsError) as e:
    initialization.init_stage_weights(_Fake(config), config, None)
  msg = str(e.value)
  assert expected[config.model.backbone] in msg and str(tmp_path / "checkpoints") in msg
  assert "--config.model.init=random" in msg and "model.imagenet_weights" in msg


class _Fake:  # the weights file is looked up before the model is touched: only its backbone name is needed
  def __init__(self, config):
    self.backbone_name = config.model.backbone


def test_imagenet_folder_gives_each_backbone_its_own_file(tmp_path):
  """One folder (the official checkpoints/) serves a sweep over backbones; a file path is taken as it is."""
  for name in ("resnet50-0676ba61.pth", "swin_base_patch4_window7_224.pth"):
    (tmp_path / name).write_bytes(b"x")
  assert initialization.imagenet_weights_file(str(tmp_path), "resnet50") == str(tmp_path / "resnet50-0676ba61.pth")
  assert initialization.imagenet_weights_file(str(tmp_path), "swin_transformer_base") == str(
    tmp_path / "swin_base_patch4_window7_224.pth"
  )
  with pytest.raises(ImageNetWeightsError, match="resnet18-5c106cde.pth"):
    initialization.imagenet_weights_file(str(tmp_path), "resnet18")
  assert initialization.imagenet_weights_file(str(tmp_path / "resnet50-0676ba61.pth"), "resnet101").endswith("ba61.pth")


def test_training_without_imagenet_weights_stops_before_writing_anything(tmp_path, synthetic_cache):
  config = tiny_config(
    synthetic_cache, mode="train", **{"model.init": "imagenet", "model.imagenet_weights": str(tmp_path / "none")}
  )
  with pytest.raises(ImageNetWeightsError, match="resnet18-5c106cde.pth"):
    run(config, str(tmp_path / "work"))
  assert not stage_dirs.has_checkpoints(str(tmp_path / "work" / "fold1" / "stage1"))
  assert not os.path.exists(tmp_path / "work" / "fold1" / "stage1" / "config.json")


# ----------------------------------------------------------------------------- changed config on resume


def test_resume_with_a_changed_config_is_refused_naming_the_keys(tmp_path, synthetic_cache):
  workdir = str(tmp_path / "work")
  assert run(tiny_config(synthetic_cache, mode="stage1", stop_after_steps=2), workdir).preempted
  stage_dir = os.path.join(workdir, "fold1", "stage1")
  before = {n: os.path.getmtime(os.path.join(stage_dir, n)) for n in ("config.json", "model.json")}
  files_before = sorted(os.listdir(stage_dir))
  changed = tiny_config(synthetic_cache, mode="stage1", **{"stage1.learning_rate": 5e-3, "stage1.epochs": 3})
  with pytest.raises(ConfigChangedError) as e:
    run(changed, workdir)
  assert [k for k, _, _ in e.value.changed] == ["stage1.epochs", "stage1.learning_rate"]
  assert "stage1.learning_rate: 0.001 (stored) -> 0.005 (now)" in str(e.value)
  other_backbone = tiny_config(synthetic_cache, mode="stage1", **{"model.backbone": "resnet34"})
  with pytest.raises(ConfigChangedError, match="model.backbone: 'resnet18' .stored. -> 'resnet34'"):
    run(other_backbone, workdir)
  assert {n: os.path.getmtime(os.path.join(stage_dir, n)) for n in before} == before  # nothing rewritten
  assert sorted(os.listdir(stage_dir)) == files_before
  # Keys that do not change the experiment (logging, mode, stage-2 settings for stage 1) may change. (A stage-2 key
  # that leaves the step programs as the other files compile them: stage 2 then starts from best/ at no new compile.)
  done = run(tiny_config(synthetic_cache, mode="train", log_every_steps=3, **{"stage2.init": "best"}), workdir)
  assert done.folds[1].stages[1].steps == 8


# ----------------------------------------------------------------------------- divergence


def test_nan_stops_at_the_first_bad_step_and_never_saves_it(tmp_path, synthetic_cache, monkeypatch):
  """NaN images from the second epoch on: the epoch-1 checkpoint stays the newest, the error names step 5."""
  from megraph_jax.train import stage as train  # pylint: disable=import-outside-toplevel

  real, calls = train._model_inputs, []  # pylint: disable=protected-access

  def poisoned(batch):
    out = real(batch)
    if "mask" not in out:  # a training batch (evaluation batches carry a padding mask)
      calls.append(1)
      if len(calls) > 4:
        out["image"] = out["image"] * np.float32("nan")
    return out

  monkeypatch.setattr(train, "_model_inputs", poisoned)
  workdir = str(tmp_path / "work")
  with pytest.raises(TrainingDiverged, match=r"non-finite values at step 5 \(epoch 2, batch 1\).*total nan") as e:
    run(tiny_config(synthetic_cache, mode="stage1"), workdir)
  assert "Nothing was saved after step 4" in str(e.value) and "stage1.learning_rate" in str(e.value)
  stage_dir = os.path.join(workdir, "fold1", "stage1")
  assert checkpointing.StageCheckpoints(stage_dir).latest.all_steps() == [4]


def test_main_exits_3_when_the_loss_diverges(tmp_path, synthetic_cache):
  proc = subprocess.run(
    tiny_main_args(synthetic_cache, str(tmp_path / "w"), "--config.mode=stage1", "--config.stage1.learning_rate=1e10"),
    cwd=REPO,
    capture_output=True,
    text=True,
    env=ENV,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "error: training diverged: fold 1 stage 1: non-finite values at step" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not stage_dirs.has_checkpoints(str(tmp_path / "w" / "fold1" / "stage1"))
  assert not os.path.exists(tmp_path / "w" / "results.json")


# ----------------------------------------------------------------------------- damaged inputs


def test_epoch_is_checkpointed_before_a_failing_evaluation(tmp_path, synthetic_cache):
  """A corrupt test image fails the first evaluation: the epoch's training is already saved."""
  cache = str(tmp_path / "cache")
  shutil.copytree(synthetic_cache, cache)
  root = synthetic.ensure_generated(cache, name="BP4D", aus=[int(a[2:]) for a in TINY_AUS], **TINY_SYNTHETIC)
  with open(os.path.join(root, "list", "BP4D_test_img_path_fold1.txt")) as f:
    victim = f.readline().strip()
  with open(os.path.join(root, "img", victim), "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 this is not a JPEG")
  workdir = str(tmp_path / "work")
  with pytest.raises(Exception) as e:
    run(tiny_config(cache, mode="stage1"), workdir)
  assert victim in str(e.value), str(e.value)[-2000:]
  assert checkpointing.StageCheckpoints(os.path.join(workdir, "fold1", "stage1")).latest.all_steps() == [4]


# ----------------------------------------------------------------------------- workdir and exit statuses


def test_second_training_in_the_same_workdir_is_refused(tmp_path, synthetic_cache):
  workdir = str(tmp_path / "work")
  with checkpointing.WorkdirLock(workdir):  # as if another training were running
    with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
      run(tiny_config(synthetic_cache, mode="stage1"), workdir)
  assert not os.path.exists(os.path.join(workdir, "fold1"))


def test_main_exits_75_when_stopped_and_0_when_resumed_to_the_end(tmp_path, synthetic_cache):
  args = tiny_main_args(synthetic_cache, str(tmp_path / "w"), "--config.mode=stage1")  # the tiny stage 1's program
  proc = subprocess.run(
    args + ["--config.stop_after_steps=2"], cwd=REPO, capture_output=True, text=True, env=ENV, timeout=600, check=False
  )
  assert proc.returncode == EXIT_PREEMPTED == 75, proc.stderr[-3000:]
  assert "stopped before the end (exit status 75)" in proc.stderr and "rerun the same command" in proc.stderr
  proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=ENV, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.isfile(tmp_path / "w" / "results.json")


# ----------------------------------------------------------------------------- a full disk

# main.py with every checkpoint write after step 4 failing in orbax's writing thread as a full disk fails it: the
# error TensorStore raises there for ENOSPC (a ValueError, the OS error in its text), from the array write itself.
_MAIN_ON_A_FULL_DISK = """
import re, runpy, sys
from orbax.checkpoint._src.serialization import serialization

write = serialization.async_serialize_from_host

async def full_disk(rslices, spec, **kw):
  step = re.search(r"/(\\d+)\\.orbax-checkpoint-tmp", str(spec))
  if step and int(step.group(1)) > 4:
    raise ValueError(
      f'RESOURCE_EXHAUSTED: Error writing in OCDBT database at local file "{step.string[:200]}": Failed to write '
      "6180864 bytes to file 6: No space left on device [os_error_code='28']"
    )
  return await write(rslices, spec, **kw)

serialization.async_serialize_from_host = full_disk
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_full_disk_stops_at_the_failed_save_keeps_the_last_checkpoint_and_resumes(tmp_path, synthetic_cache, caplog):
  """The epoch-2 checkpoint finds the disk full: exit 74 with one error line (what, where, space free, rerun), no
  traceback, no epoch evaluated after it; checkpoint 4 restores, and a rerun resumes from it to the end."""
  workdir = tmp_path / "w"
  python, main, *flags = tiny_main_args(synthetic_cache, str(workdir), "--config.mode=stage1")
  proc = subprocess.run(
    [python, "-c", _MAIN_ON_A_FULL_DISK, main, *flags], cwd=REPO, capture_output=True, text=True, env=ENV,
    timeout=600, check=False,
  )  # fmt: skip
  assert proc.returncode == errors.EXIT_DISK_FULL == 74, proc.stderr[-3000:]
  stage_dir = workdir / "fold1" / "stage1"
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert re.search(
    rf"error: No space left on device writing the checkpoint of step 8 to {re.escape(str(stage_dir))}/checkpoints "
    r"\([\d.]+ [KMGT]?B free of [\d.]+ [KMGT]?B there; .*the last good checkpoint \(step 4, [\d.]+ MB\) is kept: free "
    "space and rerun the same command to resume",
    lines[0],
  ), lines[0]
  assert "Traceback" not in proc.stderr and "epoch 2/2: test mean F1" not in proc.stderr
  assert sorted(os.listdir(stage_dir / "checkpoints")) == ["4"]  # the partial step 8 removed
  assert checkpointing.StageCheckpoints(str(stage_dir)).latest.all_steps() == [4]
  ts = nnx.eval_shape(lambda: model_factory.build_from_config(tiny_config(synthetic_cache, mode="stage1"), 1))
  step, _ = checkpointing.restore_model_state(str(stage_dir), nnx.state(ts), which="latest")
  assert step == 4
  caplog.set_level(logging.INFO)
  done = run(tiny_config(synthetic_cache, mode="stage1"), str(workdir))  # the rerun, on a disk with space
  assert "fold 1 stage 1: resuming from step 4" in caplog.text
  assert done.folds[1].stages[1].steps == 8 and [h.step for h in done.folds[1].stages[1].history] == [4, 8]
  assert os.path.isfile(workdir / "results.json")


def test_no_space_is_read_from_os_and_tensorstore_errors():
  assert checkpointing.no_space(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
  assert checkpointing.no_space(OSError(errno.EDQUOT, "quota")) == "Disk quota exceeded"
  assert checkpointing.no_space(ValueError("RESOURCE_EXHAUSTED: Failed to write [os_error_code='28']"))
  try:
    try:
      raise OSError(errno.ENOSPC, "full")
    except OSError as e:
      raise RuntimeError("save failed") from e
  except RuntimeError as e:
    assert checkpointing.no_space(e) == "No space left on device"
  assert checkpointing.no_space(OSError(errno.EACCES, "denied")) is None
  assert checkpointing.no_space(ValueError("RESOURCE_EXHAUSTED: out of memory")) is None
