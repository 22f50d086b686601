"""Errors a user can act on, each with its exit status (``main.py`` prints the message, no traceback).

Exit statuses of ``python main.py`` (also in the README):
  0   finished (results.json written)
  1   an unexpected error (a bug: the traceback is printed)
  2   the input is wrong: config (a bad value or an unknown key), dataset, checkpoint or weights file (also one that
      is not a plain tensor checkpoint: never loaded), the workdir is in use or is not a directory
  3   training diverged (a non-finite loss or gradient); nothing was saved after the last good step
  74  a write found no space left on the device (a checkpoint); the last good checkpoint is kept: free space, rerun
      to resume
  75  stopped early (SIGTERM, SIGINT, ``stop_after_steps``) after saving a checkpoint: rerun to resume
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from megraph_jax.stage_dirs import STAGE_CONFIG

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_DISK_FULL = 74  # sysexits' EX_IOERR


class UserError(Exception):
  """An error in what the user gave (config, data, files); the message says what to do."""

  exit_status = EXIT_USAGE


class DatasetError(UserError, ValueError):
  """The dataset is wrong: a list file or an image it names is missing or malformed (the message names the file and
  line, and says how to fix or prepare it)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
  """The dataset folder, a list file of it, or images it lists do not exist."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work; the message names the config key."""


class ConfigChangedError(UserError):
  """A rerun into a stage directory whose stored config differs in keys that change the experiment."""

  def __init__(self, stage_dir: str, changed: Sequence[tuple[str, object, object]]):
    lines = "\n".join(f"  {key}: {old!r} (stored) -> {new!r} (now)" for key, old, new in changed)
    super().__init__(
      f"{stage_dir} was trained with another config; resuming would mix two experiments. Changed keys:\n{lines}\n"
      "Use a new --workdir for the new experiment, or rerun with the stored values (see "
      f"{os.path.join(stage_dir, STAGE_CONFIG)}) to resume."
    )
    self.changed = list(changed)


class CheckpointError(UserError, ValueError):
  """A checkpoint that is missing, unreadable, or whose AUs (or model) do not fit the dataset or the config."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """A checkpoint path that does not exist."""


class WorkdirLockedError(UserError):
  """Another training holds the workdir's lock."""

  def __init__(self, workdir: str, holder: str):
    super().__init__(
      f"{workdir} is in use by another training ({holder}); two trainings in one workdir would overwrite each "
      "other's checkpoints. Wait for it to end (or stop it), or use another --workdir."
    )


class ImageNetWeightsError(UserError):
  """The paper's recipe starts from ImageNet weights and the file is not there (or is refused: not plain tensors)."""


class WorkdirError(UserError):
  """A ``--workdir`` that cannot be one: an existing file, or a directory that cannot be created."""


class CheckpointAUsError(CheckpointError):
  """A checkpoint trained for other AUs than the dataset it is evaluated on."""

  def __init__(self, path: str, num_aus: int | None, au_names: Sequence[str] | None, dataset: str, want: Sequence[str]):
    names = f" ({', '.join(au_names)})" if au_names else ""
    super().__init__(
      f"{path}: a model of {num_aus} AUs{names}, but dataset {dataset!r} has {len(want)} ({', '.join(want)}); "
      "evaluate it on the dataset it was trained for (e.g. --config=configs/bp4d_resnet50.py for 12 BP4D AUs, "
      "configs/disfa_resnet50.py for 8 DISFA AUs, configs/opengraphau_resnet50.py for OpenGraphAU's 41)"
    )


class StageOneMissingError(ConfigError):
  """Stage 2 should start from stage 1 of the workdir, which is absent or unfinished."""

  def __init__(self, stage1_dir: str, fold: int, latest: int | None, done: int):
    if latest is None:
      what = f"stage 2 of fold {fold} starts from stage 1, but {stage1_dir} holds no stage-1 checkpoint"
      todo = "train stage 1 first (--config.mode=train or stage1 with this --workdir), or name the weights"
    else:
      what = f"stage 1 in {stage1_dir} stopped at step {latest} of {done}"
      todo = "finish it first (rerun with --config.mode=stage1 or train), or name other weights"
    super().__init__(f"{what}: {todo} to start from with --config.init_from=<stage-1 dir or official .pth>")


class CaptureError(UserError):
  """A live source (``predict --camera``) that cannot be opened; the message names it."""


class NoInputsError(UserError):
  """``predict`` inputs (files, folders) that hold no image or video at all."""


class DiskFullError(Exception):
  """A write that found no space left on its device (ENOSPC, or a quota: EDQUOT). Nothing saved before it is lost;
  the message names what failed, where, the space free there, and that rerunning the same command resumes."""

  exit_status = EXIT_DISK_FULL


class TrainingDiverged(Exception):
  """A non-finite loss or gradient; raised before anything non-finite is saved."""

  exit_status = EXIT_DIVERGED

  def __init__(
    self, tag: str, step: int, epoch: int, batch: int, values: dict[str, float], lr: float, saved: int, stage: int,
    learning_rate: float,
  ):  # fmt: skip
    parts = ", ".join(f"{k} {v:.6g}" for k, v in values.items())
    super().__init__(
      f"{tag}: non-finite values at step {step} (epoch {epoch}, batch {batch}): {parts} (finite_state 0 = a "
      f"parameter or BatchNorm statistic is inf/NaN); lr at that step {lr:.3g}. Nothing was saved after step "
      f"{saved}. Hint: lower stage{stage}.learning_rate (now {learning_rate:g}) or set optim.clip_norm, in a new "
      "--workdir (a changed config does not resume), and check the input images."
    )
    self.step, self.values = step, dict(values)
