"""Sweeps: grid expansion, CLI checks, a 2 folds x 2 lambda sweep run in-process and its gathered table; mode 'folds'
as the sweep of its folds."""

import json
import os

import pytest
from helpers import TINY_AUS, TINY_SYNTHETIC, tiny_config
from sweep_files import bad_variants, tiny_overrides, write_sweep

from megraph_jax import errors
from megraph_jax.launch import sweep, sweep_spec
from megraph_jax.train import experiment, reporting, results
from megraph_jax.train.results import RunResult


def _tiny_sweep(cache: str) -> dict:
  return {
    "name": "t",
    "config": "configs/synthetic.py",
    # mode stage1 (stage 2 would need a stage 1 first): lambda only varies the stored config here
    "overrides": {
      "mode": "stage1",
      "dataset.au_names": TINY_AUS,
      "dataset.synthetic.cache_dir": cache,
      "dataset.image_size": 36,
      "dataset.crop_size": 32,
      "batch_size": 8,
      "eval_batch_size": 8,
      "stage1.epochs": 1,
      "log_every_steps": 4,
      **{f"dataset.synthetic.{k}": v for k, v in TINY_SYNTHETIC.items()},
    },
    "grid": {"dataset.fold": [1, 2], "stage2.lam": [0.01, 0.05]},
  }


def test_expand_names_overrides_and_errors():
  runs = sweep_spec.expand(_tiny_sweep("/c"), {"seed": 3})
  assert [r["name"] for r in runs] == ["fold1_lam0.01", "fold1_lam0.05", "fold2_lam0.01", "fold2_lam0.05"]
  assert runs[3]["overrides"]["stage2.lam"] == 0.05 and runs[3]["overrides"]["dataset.fold"] == 2
  assert all(r["overrides"]["seed"] == 3 for r in runs)
  config = sweep_spec.build_config(runs[2])
  assert (config.dataset.fold, config.stage2.lam, config.seed, config.dataset.au_names) == (2, 0.01, 3, TINY_AUS)
  with pytest.raises(KeyError, match="stage2.lamda"):
    sweep_spec.build_config({**runs[0], "overrides": {"stage2.lamda": 1.0}})
  with pytest.raises(ValueError, match="non-empty list"):
    sweep_spec.expand({"name": "x", "config": "configs/synthetic.py", "grid": {"seed": 1}})
  with pytest.raises(KeyError, match="'stage2.epochs'.*cannot be casted"):
    sweep_spec.build_config({**runs[0], "overrides": {"stage2.epochs": "two"}})
  assert sweep_spec.parse_sets(["stage2.lam=0.1", "model.backbone=resnet50"]) == {
    "stage2.lam": 0.1,
    "model.backbone": "resnet50",
  }


def test_table3_ablation_is_a_sweep_of_named_variants():
  spec = sweep_spec.load_module("configs/sweeps/table3_ablation.py").get_sweep()
  runs = sweep_spec.expand({**spec, "grid": {"seed": [0, 1]}})
  assert [r["name"] for r in runs] == [
    "backbone_only_seed0", "backbone_only_seed1", "afg_seed0", "afg_seed1", "anfl_mefl_seed0", "anfl_mefl_seed1",
  ]  # fmt: skip
  configs = {r["name"]: sweep_spec.build_config(r) for r in runs}
  assert (configs["backbone_only_seed1"].model.head, configs["backbone_only_seed1"].seed) == ("baseline", 1)
  assert configs["afg_seed0"].model.use_fgg is False and configs["afg_seed0"].mode == "stage1"
  assert configs["anfl_mefl_seed0"].mode == "train" and configs["anfl_mefl_seed0"].model.use_fgg is True
  assert runs[2]["grid"] == {"variant": "afg", "seed": 0}


def test_placement_flags_need_ray(capsys):
  with pytest.raises(SystemExit):
    sweep.main(["run", "configs/sweeps/bp4d_paper.py", "--root=runs/bp4d", "--tpu=v5e:2x4"])
  assert "add --ray=ADDRESS" in capsys.readouterr().err
  assert sweep.main(["list", "configs/sweeps/bp4d_paper.py", "--root=runs/bp4d"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 6 and lines[-1].startswith("configbp4d_swin_fold3 ")


def test_sweep_runs_and_gathers_all_four(tmp_path, synthetic_cache, monkeypatch):
  spec = _tiny_sweep(synthetic_cache)
  module = type("M", (), {"get_sweep": staticmethod(lambda: spec), "get_config": staticmethod(_synthetic_config)})
  monkeypatch.setattr(sweep_spec, "load_module", lambda path: module())
  root = str(tmp_path / "sweep")
  assert sweep.main(["run", "any.py", f"--root={root}"]) == 0
  for name in ("fold1_lam0.01", "fold1_lam0.05", "fold2_lam0.01", "fold2_lam0.05"):
    with open(os.path.join(root, name, "results.json")) as f:
      res = json.load(f)
    fold = name[4]
    assert res["config"]["stage2"]["lam"] == float(name.split("lam")[1])
    assert list(res["folds"]) == [fold] and "stage1" in res["folds"][fold]
  with open(os.path.join(root, "sweep.md")) as f:
    table = f.read()
  for name in ("fold1_lam0.01", "fold1_lam0.05", "fold2_lam0.01", "fold2_lam0.05"):
    assert f"| {name} (fold {name[4]}, stage 1) |" in table
  assert "| lam=0.01 [stage 1], avg. over 2 folds |" in table and "| lam=0.05 [stage 1], avg. over 2 folds |" in table
  assert "| all-positive baseline, fold 1 |" in table and "| all-positive baseline, fold 2 |" in table
  with open(os.path.join(root, "sweep.json")) as f:
    assert len(json.load(f)["runs"]) == 4
  statuses = sweep.run_all(sweep_spec.expand(spec), root)  # finished runs are skipped
  assert [(s["status"], s["attempts"]) for s in statuses] == [("done", 0)] * 4


def test_sweep_with_bad_runs_finishes_the_good_ones_and_reports_each_bad_one_once(
  tmp_path, synthetic_cache, monkeypatch, capsys
):
  """Without Ray: a run whose dataset is missing (found at run time) comes first, one with a backbone that does not
  exist (found before any run starts) next; the good run after them still runs, the table holds it, each bad run
  gets one error: line, and the exit status says that some runs did not finish."""
  root = str(tmp_path / "sweep")
  spec = {
    "name": "bad",
    "config": "configs/synthetic.py",
    "overrides": tiny_overrides(synthetic_cache, mode="stage1", **{"stage1.epochs": 1}),
    "variants": {"nodata": bad_variants(root)["nodata"], "resnet19": bad_variants(root)["resnet19"], "ok": {}},
  }
  module = type("M", (), {"get_sweep": staticmethod(lambda: spec), "get_config": staticmethod(_synthetic_config)})
  monkeypatch.setattr(sweep_spec, "load_module", lambda path: module())
  assert sweep.main(["run", "any.py", f"--root={root}"]) == sweep.EXIT_RUNS_FAILED == 4
  out, err = capsys.readouterr()
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(errors) == 2 and "Traceback" not in err, err[-3000:]
  assert errors[0].startswith("error: run nodata: dataset 'BP4D' not found (config key 'dataset.root')"), errors
  assert errors[1].startswith("error: run resnet19: config key 'model.backbone' = 'resnet19'; choose one of"), errors
  assert "sweep bad: 2 of 3 runs did not finish" in err
  assert "resnet19: wrong input, not started" in out and not os.path.exists(os.path.join(root, "resnet19"))
  assert os.path.isfile(os.path.join(root, "ok", "results.json"))
  with open(os.path.join(root, "sweep.md")) as f:
    table = f.read()
  assert "| ok (fold 1, stage 1) |" in table and "Not finished (2): nodata, resnet19" in table
  with open(os.path.join(root, "sweep.json")) as f:
    assert [r["run"] for r in json.load(f)["runs"]] == ["ok"]


def _synthetic_config():
  from configs import synthetic  # pylint: disable=import-outside-toplevel

  return synthetic.get_config()


def test_a_run_stopped_after_saving_stops_the_sweep_with_exit_75(tmp_path, synthetic_cache, monkeypatch, capsys):
  """Without Ray, SIGTERM (or Ctrl-C) stops the run in progress after its checkpoint (experiment.run returns it
  preempted): the runs after it are not started and the sweep exits 75, not 0, so a scheduler reruns it."""
  spec = {
    "name": "stop",
    "config": "configs/synthetic.py",
    "overrides": tiny_overrides(synthetic_cache, mode="stage1"),
    "variants": {"first": {}, "second": {"seed": 1}},
  }
  module = type("M", (), {"get_sweep": staticmethod(lambda: spec), "get_config": staticmethod(_synthetic_config)})
  monkeypatch.setattr(sweep_spec, "load_module", lambda path: module())
  started = []

  def stopped_run(config, workdir, **kwargs):  # what experiment.run returns after a SIGTERM: saved, preempted
    started.append(os.path.basename(workdir))
    return RunResult(config.mode, workdir, preempted=True, message="fold 1 stage 1: stopped at step 3")

  monkeypatch.setattr(experiment, "run", stopped_run)
  assert sweep.main(["run", "any.py", f"--root={tmp_path / 'sweep'}"]) == sweep.EXIT_PREEMPTED == 75
  assert started == ["first"]
  err = capsys.readouterr().err
  assert "sweep stop: stopped at run first after saving its checkpoint" in err and "rerun the same command" in err
  assert "error:" not in err


def _avg_cells(text: str, label: str) -> list[str]:
  """The F1 cells of the table row of ``text`` whose label is ``label``."""
  row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
  return row.split("|")[2:-1]


def _fake_run(started: list, outcome: dict | None = None):
  """An ``experiment.run`` of fixed results per fold (stage s of fold k: F1 of AU i = 0.1 k + 0.05 i + 0.01 s),
  written as the real one writes them; ``outcome`` {fold: exception or 'preempted'} stops a fold instead."""

  def run(config, workdir, *, results_name=""):
    k = config.dataset.fold
    started.append((config.mode, k, os.path.basename(workdir), results_name))
    what = (outcome or {}).get(k)
    if what == "preempted":
      return RunResult(config.mode, workdir, preempted=True, message=f"fold {k} stage 1: stopped at step 2")
    if what is not None:
      raise what
    evals = {}
    for s in (1, 2):
      f1 = {a: 0.1 * k + 0.05 * i + 0.01 * s for i, a in enumerate(TINY_AUS)}
      evals[s] = results.EvalResult(f1, f1, sum(f1.values()) / len(f1), 0.5, 1.0, epoch=1, step=4)
    fold = results.FoldResult(k, "/data", 32, 16, {a: 0.2 * k for a in TINY_AUS},
                              stages={s: results.StageResult(s, k, e, e) for s, e in evals.items()})  # fmt: skip
    out = RunResult(config.mode, workdir, folds={k: fold}, au_names=TINY_AUS, wall_time_s=10.0 * k,
                    config=config.to_dict())  # fmt: skip
    experiment.report(out, results_name or "results")
    return out

  return run


def test_mode_folds_is_the_sweep_of_its_folds(tmp_path, synthetic_cache, monkeypatch):
  """Mode 'folds' (main.py's ``run_config``) is the mode-'train' runs of its folds (a fake run here), one after another
  in one workdir: results.json holds each fold as its run wrote it (results_fold<k>.json), results.md averages them as
  ``results.fold_average`` does, and a sweep file over the same folds averages them to the same numbers. A fold that
  stops early or fails ends mode 'folds' there, as main.py meets it (exit 75, 3)."""
  started = []
  monkeypatch.setattr(experiment, "run", _fake_run(started))
  workdir = str(tmp_path / "w")
  config = tiny_config(synthetic_cache, mode="folds")
  result = sweep.run_config(config, workdir)
  assert started == [("train", k, "w", f"results_fold{k}") for k in (1, 2, 3)]
  parts = {k: RunResult.read(os.path.join(workdir, f"results_fold{k}.json")) for k in (1, 2, 3)}
  saved = RunResult.read(os.path.join(workdir, "results.json"))
  assert saved.to_json() == json.loads(json.dumps(result.to_json())) and saved.mode == "folds"
  assert saved.to_json()["folds"] == {str(k): p.to_json()["folds"][str(k)] for k, p in parts.items()}
  assert saved.wall_time_s == 60.0 and saved.config["dataset"]["folds"] == [1, 2, 3]
  with open(os.path.join(workdir, "results.md")) as f:
    table = f.read()
  for s in (1, 2):  # the one fold average of the per-fold results
    label, f1 = results.fold_average(f"stage {s}, last epoch", [p.folds[k].stages[s].last.f1 for k, p in parts.items()])
    assert reporting.f1_table([(label, f1)], TINY_AUS).splitlines()[-1] in table

  root = str(tmp_path / "sweep")  # the same folds as a sweep file: the same averages
  path = write_sweep(str(tmp_path / "folds.py"), "folds", tiny_overrides(synthetic_cache, mode="train"),
                     {"dataset.fold": [1, 2, 3]})  # fmt: skip
  assert sweep.main(["run", path, f"--root={root}"]) == 0
  with open(os.path.join(root, "sweep.md")) as f:
    swept = f.read()
  for s in (1, 2):
    want = _avg_cells(table, f"stage {s}, last epoch, avg. over 3 folds")
    assert _avg_cells(swept, f"all [stage {s}], avg. over 3 folds") == want

  for outcome in ({2: "preempted"}, {2: errors.DiskFullError("no space left")}):
    started.clear()
    monkeypatch.setattr(experiment, "run", _fake_run(started, outcome))
    if outcome[2] == "preempted":
      assert sweep.run_config(config, str(tmp_path / "p")).preempted
    else:
      with pytest.raises(errors.DiskFullError):
        sweep.run_config(config, str(tmp_path / "d"))
    assert [k for _, k, _, _ in started] == [1, 2]  # fold 3 not started
  with pytest.raises(errors.ConfigError, match="grid over 'dataset.fold'"):  # a sweep's runs are not mode folds
    sweep.check_run({"name": "r", "config": config, "overrides": {}, "grid": {}})
  monkeypatch.undo()
  with pytest.raises(errors.ConfigError, match="mode 'folds' is a sweep"):  # no second way to run the folds
    experiment.run(config, str(tmp_path / "x"))
