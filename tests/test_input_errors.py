"""Wrong input is one `error:` line and exit status 2, never a traceback and exit status 1 (which README reserves for
bugs, and which schedulers and the Ray driver retry): config values and keys, the workdir, and a `.pth` that would
run code, through `python main.py` and `python -m megraph_jax.predict`. A genuine bug still raises."""

import os
import subprocess
import sys

import pytest
from helpers import REPO, tiny_main_args

import main as main_py
from megraph_jax.predict import predictor as predict

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _main_py(argv: list[str], monkeypatch) -> int:
  """``python main.py ARGV`` in this process: the flag parsing ``app.run`` does (``main.parse_flags``), then
  ``main.main``; returns the exit status (0 when it returns). Other exceptions propagate, as they do to absl."""
  argv = [os.path.join(REPO, "main.py"), *argv]
  monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the --config.<key> overrides from sys.argv
  for name in [n for n in main_py.FLAGS if n.startswith("config.")]:
    delattr(main_py.FLAGS, name)  # the override flags of an earlier call
  main_py.FLAGS.unparse_flags()
  try:
    main_py.main(main_py.parse_flags(argv))
  except SystemExit as e:
    return e.code
  return 0


def _one_error_line(err: str) -> str:
  lines = [line for line in err.splitlines() if "error:" in line]
  assert len(lines) == 1, err
  assert "Traceback" not in err, err
  return lines[0]


# ----------------------------------------------------------------------------- config and workdir


@pytest.mark.parametrize(
  "override, message",
  [
    ("--config.model.backbone=resnet19", "error: config key 'model.backbone' = 'resnet19'; choose one of resnet18"),
    ("--config.foo=1", "error: --config.foo: the config has no key 'foo'; configs/default.py lists every key"),
    ("--config.stage1.epoch=3", """no key 'stage1.epoch' (Did you mean "epochs" instead of "epoch"?)"""),
    ("--config.batch_size=0", "error: config key 'batch_size' = 0: must be a positive integer"),
    ("--config.dataset.fold=4", "error: config key 'dataset.fold' = 4: folds are 1, 2, 3"),
    ("--config.dataset.folds=(1,5)", "error: config key 'dataset.folds' = (1, 5): folds are 1, 2, 3"),
  ],
)
def test_config_mistakes_are_one_error_line_and_exit_2(
  override, message, tmp_path, synthetic_cache, monkeypatch, capsys
):
  workdir = tmp_path / "w"
  mode = "--config.mode=folds" if "folds" in override else "--config.mode=train"
  assert _main_py([*tiny_main_args(synthetic_cache, str(workdir), mode, override)[2:]], monkeypatch) == 2
  assert message in _one_error_line(capsys.readouterr().err)
  assert not workdir.exists()  # found before anything is written


def test_a_workdir_that_is_a_file_is_exit_2(tmp_path, synthetic_cache, monkeypatch, capsys):
  (tmp_path / "w").write_text("not a directory")
  assert _main_py(tiny_main_args(synthetic_cache, str(tmp_path / "w"))[2:], monkeypatch) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert f"--workdir {tmp_path / 'w'}: a file, not a directory" in line


def test_an_unknown_key_through_the_real_command_line(tmp_path, synthetic_cache):
  """app.run -> main.parse_flags, in a process of its own: ml_collections' 'Did you mean' in one line, status 2."""
  proc = subprocess.run(
    tiny_main_args(synthetic_cache, str(tmp_path / "w"), "--config.stage1.epoch=3"),
    cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300, check=False,
  )  # fmt: skip
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'no key \'stage1.epoch\' (Did you mean "epochs" instead of "epoch"?)' in _one_error_line(proc.stderr)


def test_a_bug_is_not_taken_for_an_input_error(tmp_path, synthetic_cache, monkeypatch):
  """An exception that is not about the input propagates (absl prints its traceback, exit status 1): in the run (also
  a fold's run of mode 'folds', which the sweep machinery runs), and in a config file's own code while the flags are
  parsed."""

  def bug(config, workdir, **kwargs):
    raise KeyError("a bug")

  monkeypatch.setattr(main_py.sweep.experiment, "run", bug)
  for mode in ("train", "folds"):
    with pytest.raises(KeyError, match="a bug"):
      _main_py(tiny_main_args(synthetic_cache, str(tmp_path / "w"), f"--config.mode={mode}")[2:], monkeypatch)
  buggy = tmp_path / "buggy_config.py"
  buggy.write_text("def get_config():\n  return {}.no_such_attribute\n")
  with pytest.raises(AttributeError, match="no_such_attribute"):
    _main_py([f"--config={buggy}", f"--workdir={tmp_path / 'w'}"], monkeypatch)


# ----------------------------------------------------------------------------- a .pth that would run code


class _Evil:
  """Unpickled without restriction, it calls open(marker, 'w'): the marker file appears."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


@pytest.fixture
def evil_pth(tmp_path):
  """(a .pth whose pickle would create ``marker``, marker): proven live by an unrestricted load, then reset."""
  torch = pytest.importorskip("torch")
  marker = tmp_path / "MARKER"
  path = tmp_path / "evil.pth"
  torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(2)}, "x": _Evil(str(marker))}, path)
  torch.load(path, weights_only=False)  # what the refused advice would do: the code runs
  assert marker.exists()
  marker.unlink()
  return path, marker


def _refused(err: str, path) -> None:
  line = _one_error_line(err)
  assert f"{path}: not a plain tensor checkpoint (it names Python code, io.open, that unpickling would run)" in line
  assert "so it will not be loaded" in line
  assert "weights_only=False" not in err and "weights_only` set to `False" not in err


def test_a_malicious_pth_runs_nothing_in_predict(evil_pth, tmp_path, capsys):
  path, marker = evil_pth
  photo = tmp_path / "photo.png"
  photo.write_bytes(b"")
  assert predict.main(["-c", str(path), str(photo), "--no-align", "--no-progress"]) == 2
  _refused(capsys.readouterr().err, path)
  assert not marker.exists()


def test_a_malicious_pth_runs_nothing_in_eval_mode(evil_pth, tmp_path, synthetic_cache, monkeypatch, capsys):
  path, marker = evil_pth
  argv = tiny_main_args(synthetic_cache, str(tmp_path / "w"), "--config.mode=eval", f"--config.checkpoint={path}")
  assert _main_py(argv[2:], monkeypatch) == 2
  _refused(capsys.readouterr().err, path)
  assert not marker.exists()


def test_a_malicious_pth_runs_nothing_as_imagenet_weights(evil_pth, tmp_path, synthetic_cache, monkeypatch, capsys):
  path, marker = evil_pth
  argv = tiny_main_args(
    synthetic_cache, str(tmp_path / "w"), "--config.mode=stage1", "--config.model.init=imagenet",
    f"--config.model.imagenet_weights={path}",
  )  # fmt: skip
  assert _main_py(argv[2:], monkeypatch) == 2
  err = capsys.readouterr().err
  _refused(err, path)
  assert "config key 'model.imagenet_weights'" in err
  assert not marker.exists()
