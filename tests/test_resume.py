"""Preemption and resume: stopped runs (mid-epoch, on an epoch's last step, with a damaged latest checkpoint,
with a Swin backbone) end with the same parameters and the same evaluations as an uninterrupted run."""

import glob
import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import TINY_AUS, TINY_SYNTHETIC, tiny_config

from megraph_jax import checkpointing, model_factory, task
from megraph_jax.data import synthetic
from megraph_jax.errors import ConfigChangedError
from megraph_jax.launch.sweep import run_config
from megraph_jax.train.experiment import run
from megraph_jax.train.preemption import StopRequest


def _final(workdir, config, stage):
  graphdef, state = nnx.split(nnx.eval_shape(lambda: model_factory.build_from_config(config, stage)))
  step, state = checkpointing.restore_model_state(
    os.path.join(workdir, "fold1", f"stage{stage}"), state, which="latest"
  )
  return step, {"/".join(map(str, p)): _numpy(v[...]) for p, v in nnx.to_flat_state(state)}


def _numpy(x):
  """NumPy copy of a state leaf; typed PRNG keys (Swin's DropPath streams) as their key data."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.asarray(x)


def _assert_same_final(workdir_a, workdir_b, config, stages=(1, 2)):
  for stage in stages:
    step_a, a = _final(workdir_a, config, stage)
    step_b, b = _final(workdir_b, config, stage)
    assert step_a == step_b
    assert a.keys() == b.keys()
    for k in a:  # bit-identical: same data order, same DropPath draws, same arithmetic
      np.testing.assert_array_equal(b[k], a[k], err_msg=f"stage {stage}: {k}")


def _history(workdir, stage):
  with open(os.path.join(workdir, "fold1", f"stage{stage}", "history.json")) as f:
    return [(h["epoch"], h["step"], h["mean_f1"], h["loss"]) for h in json.load(f)]


@pytest.fixture(scope="module")
def straight(tiny_train_run):
  """An uninterrupted mode-'train' run: stage 1 (2 epochs x 4 steps), then stage 2 (1 x 4) (conftest's, shared)."""
  workdir, _, result = tiny_train_run
  return workdir, result


def test_rerun_of_a_finished_run_trains_nothing_and_keeps_its_wall_time(straight, tmp_path, synthetic_cache):
  """The same command again on a finished workdir: nothing trained or evaluated, the same results, and
  results.json keeps the training's ``wall_time_s`` (not the rerun's few seconds)."""
  workdir = str(tmp_path / "rerun")
  shutil.copytree(straight[0], workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    before = json.load(f)
  assert before["wall_time_s"] == straight[1].wall_time_s > 0
  again = run(tiny_config(synthetic_cache, mode="train"), workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    after = json.load(f)
  assert after["wall_time_s"] == before["wall_time_s"] == again.wall_time_s
  assert after["folds"] == before["folds"]  # the same evaluations: none was redone
  for stage in (1, 2):
    assert _history(workdir, stage) == _history(straight[0], stage)


def test_interrupted_run_resumes_to_identical_parameters(straight, tmp_path, synthetic_cache):
  config = tiny_config(synthetic_cache, mode="train")
  resumed = str(tmp_path / "resumed")
  first = run(tiny_config(synthetic_cache, mode="train", stop_after_steps=3), resumed)  # stage 1, epoch 1, batch 3
  assert first.preempted and "step 3" in first.message
  assert checkpointing.StageCheckpoints(os.path.join(resumed, "fold1", "stage1")).latest_step() == 3
  second = run(tiny_config(synthetic_cache, mode="train", stop_after_steps=7), resumed)  # stage 1 to 8, stage 2 to 2
  assert second.preempted and "stage 2: stopped at step 2" in second.message
  done = run(config, resumed)  # the same command again finishes
  assert not done.preempted
  _assert_same_final(straight[0], resumed, config)
  assert [h.mean_f1 for h in done.folds[1].stages[2].history] == [
    h.mean_f1 for h in straight[1].folds[1].stages[2].history
  ]


def test_stop_on_an_epochs_last_step_still_evaluates_every_epoch_once(straight, tmp_path, synthetic_cache):
  """Stops on stage 1's first epoch end (step 4) and on the last step of the one-epoch stage 2. Run as mode 'folds'
  (``main.py``'s ``run_config``: the sweep of mode-'train' runs, here of fold 1): its stops and resumes are the fold
  run's, a rerun of the finished folds trains nothing and keeps ``wall_time_s``, and a changed experiment is refused."""
  folds = {"dataset.folds": (1,)}
  config = tiny_config(synthetic_cache, mode="folds", **folds)
  workdir = str(tmp_path / "resumed")
  first = run_config(tiny_config(synthetic_cache, mode="folds", stop_after_steps=4, **folds), workdir)
  assert first.preempted and "stage 1: stopped at step 4" in first.message
  second = run_config(tiny_config(synthetic_cache, mode="folds", stop_after_steps=8, **folds), workdir)  # 4 + 4
  assert second.preempted and "stage 2: stopped at step 4" in second.message
  done = run_config(config, workdir)
  assert not done.preempted and done.mode == "folds"
  for stage in (1, 2):
    assert _history(workdir, stage) == _history(straight[0], stage)  # each epoch once, same numbers
  assert [h.epoch for h in done.folds[1].stages[1].history] == [1, 2]
  assert [h.epoch for h in done.folds[1].stages[2].history] == [1]
  _assert_same_final(straight[0], workdir, config)
  with open(os.path.join(workdir, "results.json")) as f:
    before = json.load(f)
  with open(os.path.join(workdir, "results_fold1.json")) as f:
    assert before["folds"] == json.load(f)["folds"] and before["mode"] == "folds"
  again = run_config(config, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f) == before and again.wall_time_s == before["wall_time_s"] > 0
  with pytest.raises(ConfigChangedError, match="seed"):
    run_config(tiny_config(synthetic_cache, mode="folds", seed=1, **folds), workdir)


def _damage(checkpoint_dir):
  """Truncates the largest file of a checkpoint to half its size (a disk-full or killed copy)."""
  files = [f for f in glob.glob(os.path.join(checkpoint_dir, "**", "*"), recursive=True) if os.path.isfile(f)]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)
  return biggest


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(straight, tmp_path, synthetic_cache):
  config = tiny_config(synthetic_cache, mode="stage1")
  workdir = str(tmp_path / "damaged")
  assert run(tiny_config(synthetic_cache, mode="stage1", stop_after_steps=4), workdir).preempted
  assert run(tiny_config(synthetic_cache, mode="stage1", stop_after_steps=2), workdir).preempted
  stage_dir = os.path.join(workdir, "fold1", "stage1")
  assert checkpointing.StageCheckpoints(stage_dir).latest.all_steps() == [4, 6]
  _damage(os.path.join(stage_dir, "checkpoints", "6"))
  done = run(config, workdir)  # resumes from step 4 with a warning, moves step 6 aside
  assert not done.preempted
  assert [
    os.path.basename(p).split("-")[0] for p in glob.glob(os.path.join(stage_dir, "unreadable_checkpoints", "*"))
  ] == ["6"]
  _assert_same_final(straight[0], workdir, config, stages=(1,))
  assert _history(workdir, 1) == _history(straight[0], 1)


def test_no_readable_checkpoint_is_an_error_that_moves_nothing(tmp_path, synthetic_cache):
  from megraph_jax.errors import CheckpointError  # pylint: disable=import-outside-toplevel

  workdir = str(tmp_path / "damaged")
  assert run(tiny_config(synthetic_cache, mode="stage1", stop_after_steps=2), workdir).preempted
  stage_dir = os.path.join(workdir, "fold1", "stage1")
  damaged = _damage(os.path.join(stage_dir, "checkpoints", "2"))
  with pytest.raises(CheckpointError, match="no checkpoint can be restored.*step 2"):
    run(tiny_config(synthetic_cache, mode="stage1"), workdir)
  assert os.path.isfile(damaged) and not os.path.exists(os.path.join(stage_dir, "unreadable_checkpoints"))


def _tiny_swin(monkeypatch):
  """Swin-T's code at toy size (2 stages, window 4, DropPath 0.3) so that it trains in seconds at 32 px."""
  from megraph_jax.models import backbones, swin  # pylint: disable=import-outside-toplevel

  real = swin.SwinTransformer

  def tiny(name, **kw):
    assert name == "swin_transformer_tiny"
    kw.setdefault("drop_path_rate", 0.3)
    return real(embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4, patch_size=4, **kw)

  monkeypatch.setattr(backbones, "swin", tiny)  # the name build_backbone calls


def test_swin_kill_and_resume_is_bit_identical(monkeypatch, tmp_path, synthetic_cache):
  """Swin's state holds DropPath RNG keys and counts: they must checkpoint and restore exactly."""
  _tiny_swin(monkeypatch)
  kw = {"model.backbone": "swin_transformer_tiny", "stage1.epochs": 1}
  config = tiny_config(synthetic_cache, mode="stage1", **kw)
  straight_dir, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  run(config, straight_dir)
  assert run(tiny_config(synthetic_cache, mode="stage1", stop_after_steps=2, **kw), resumed).preempted
  assert not run(config, resumed).preempted
  _, state = _final(resumed, config, 1)
  assert any("rngs" in k or "key" in k for k in state), sorted(state)[:20]  # the RNG state was checkpointed
  _assert_same_final(straight_dir, resumed, config, stages=(1,))
  assert _history(resumed, 1) == _history(straight_dir, 1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_request_a_stop_at_the_next_step(sig):
  stop = StopRequest().install()
  try:
    assert not stop.step_done(1)
    os.kill(os.getpid(), sig)
    assert stop.signalled and stop.step_done(2)
    if sig == signal.SIGINT:  # a second Ctrl-C stops at once
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
  finally:
    stop.uninstall()
  assert signal.getsignal(sig) is not stop._handle  # pylint: disable=protected-access


def test_resume_refuses_other_labels_and_accepts_the_same_data_moved(tmp_path, synthetic_cache):
  """A stage stores a fingerprint of each split it reads (image paths and labels): a rerun on a copy of the dataset
  in another folder resumes; one whose training labels differ is refused, naming the split."""
  src = synthetic.ensure_generated(
    synthetic_cache, name="BP4D", aus=[int(a[2:]) for a in TINY_AUS], **TINY_SYNTHETIC
  )  # the session's set
  first, moved, other = (str(tmp_path / d) for d in ("first", "moved", "other"))
  for d in (first, moved, other):
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("synthetic.json"))
  labels = os.path.join(other, "list", "BP4D_train_label_fold1.txt")
  y = np.loadtxt(labels, dtype=np.int64)
  y[:4] = 1 - y[:4]  # same images, other labels for 4 of them
  np.savetxt(labels, y, fmt="%d")
  relations = os.path.join(other, "list", "BP4D_train_AU_relation_fold1.txt")
  np.savetxt(relations, task.relation_labels(y), fmt="%d")  # consistent with them

  def config(root, **kw):
    return tiny_config(
      synthetic_cache, mode="stage1", **{"dataset.synthetic.enabled": False, "dataset.root": root}, **kw
    )

  workdir = str(tmp_path / "work")
  assert run(config(first, stop_after_steps=3), workdir).preempted
  with pytest.raises(ConfigChangedError, match=r"data\.train: .*sha256") as e:
    run(config(other), workdir)
  assert [k for k, _, _ in e.value.changed] == ["data.train"]  # the test split is unchanged
  done = run(config(moved), workdir)  # the same content elsewhere: a legitimate rerun
  assert not done.preempted and _history(workdir, 1)
