"""tools/make_opengraphau_golden.py without the official code: its record of where the file came from (official
commit, library versions, per case) and ``--only``, which recomputes the named cases and keeps the others."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO

GOLDEN = os.path.join(REPO, "tests", "data", "golden_opengraphau.npz")


@pytest.fixture(scope="module")
def tool():
  sys.path.insert(0, os.path.join(REPO, "tools"))  # the tool imports make_golden from there
  spec = importlib.util.spec_from_file_location(
    "make_opengraphau_golden", os.path.join(REPO, "tools", "make_opengraphau_golden.py")
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _old_file(path):
  """A file as the tool wrote it before provenance was recorded: a few arrays of several cases."""
  old = {
    "head/h2/x": np.arange(6.0).reshape(2, 3),
    "head/h2/sd/head.sc": np.ones(4, np.float32),
    "loss/probs": np.full((2, 41), 0.5),
    "full/r18_s1/out": np.zeros((2, 41), np.float32),
    "full/r18_s1/out64": np.zeros((2, 41)),  # the recomputed case no longer has it: dropped
    "full/r18_s1/keys": np.asarray(json.dumps({"a": [1]})),
    "full/r50_s1/out": np.full((2, 41), 0.25, np.float32),
    "full/r50_s1/keys": np.asarray(json.dumps({"b": [2]})),
    "demo/og_r18_s2/out": np.full((5, 41), 0.75, np.float32),
    "photos": np.asarray([[1, 2]]),
  }
  np.savez_compressed(path, **old)
  return old


def test_only_updates_the_named_cases_and_records_their_provenance(tool, tmp_path):
  path = str(tmp_path / "golden.npz")
  old = _old_file(path)
  rec = {"official_commit": "a" * 40, "versions": {"python": "3.11.0", "torch": "2.1.0"}}
  new = {"full/r18_s1/out": np.ones((2, 41), np.float32), "full/r18_s1/keys": np.asarray(json.dumps({"c": [3]}))}
  cases = tool.resolve_only(["r18_s1"])
  assert cases == ["full/r18_s1"]
  tool.write(path, new, {c: rec for c in cases}, partial=True)
  with np.load(path) as z:
    got = {k: z[k] for k in z.files}
  for k, v in old.items():  # every other case exactly as it was
    if not k.startswith("full/r18_s1/") and k != "photos":
      np.testing.assert_array_equal(got[k], v, err_msg=k)
  np.testing.assert_array_equal(got["full/r18_s1/out"], 1.0)
  assert json.loads(str(got["full/r18_s1/keys"])) == {"c": [3]} and "full/r18_s1/out64" not in got
  np.testing.assert_array_equal(got["photos"], np.asarray(tool.PHOTOS))
  prov = json.loads(str(got["provenance"]))
  assert set(prov) == {"head/h2", "loss", "full/r18_s1", "full/r50_s1", "demo/og_r18_s2"}
  assert prov["full/r18_s1"] == rec and prov["full/r50_s1"]["official_commit"] == "unrecorded"
  assert str(got["official_commit"]) == "mixed: see provenance"  # the kept cases' commit is unknown

  # a later --only run keeps the first one's record; a whole write records one commit and its versions
  rec2 = {"official_commit": "b" * 40, "versions": rec["versions"]}
  tool.write(path, {"loss/probs": np.zeros((2, 41))}, {"loss": rec2}, partial=True)
  with np.load(path) as z:
    prov = json.loads(str(z["provenance"]))
    np.testing.assert_array_equal(z["full/r18_s1/out"], 1.0)
  assert prov["full/r18_s1"] == rec and prov["loss"] == rec2
  every = {c: rec2 for c in ["head/h2", "loss"]}
  tool.write(path, {"head/h2/x": np.zeros(1), "loss/probs": np.zeros(1)}, every, partial=False)
  with np.load(path) as z:
    assert sorted(z.files) == ["head/h2/x", "loss/probs", "official_commit", "photos", "provenance", "versions"]
    assert str(z["official_commit"]) == "b" * 40
    assert json.loads(str(z["versions"])) == rec["versions"]


def test_only_refuses_unknown_cases_and_foreign_arrays(tool, tmp_path):
  assert tool.resolve_only(["head/h2", "full/r50_s2", "demo/og_r18_s1", "loss"]) == [
    "head/h2",
    "full/r50_s2",
    "demo/og_r18_s1",
    "loss",
  ]
  assert tool.resolve_only(None) == tool.all_cases()
  with pytest.raises(SystemExit, match="no such case"):
    tool.resolve_only(["r18_s3"])
  with pytest.raises(ValueError, match="full/r50_s1/out is not an array of the recomputed cases"):
    tool.merge({}, {"full/r50_s1/out": np.zeros(1)}, {"full/r18_s1": {}})
  with pytest.raises(SystemExit, match="does not exist"):
    tool.write(str(tmp_path / "none.npz"), {}, {}, partial=True)


def test_every_array_of_the_golden_file_belongs_to_a_known_case(tool):
  """``--only``'s merge replaces whole cases: each array of the real file must be in one the tool knows."""
  with np.load(GOLDEN) as z:
    files = z.files
  cases = {tool.case_of(k) for k in files}
  assert cases - {None} <= set(tool.all_cases()), cases - set(tool.all_cases())
  assert {"head/h2", "loss", "full/mae_s1", "demo/mg_r18_s2"} <= cases


def test_commit_and_versions(tool, tmp_path):
  git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run([*git, "init", "-q"], check=True)
  (tmp_path / "OpenGraphAU").mkdir()
  (tmp_path / "OpenGraphAU" / "model.py").write_text("")
  subprocess.run([*git, "add", "."], check=True)
  subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
  head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
  assert tool.official_commit(str(tmp_path / "OpenGraphAU")) == head  # the official folder inside the checkout
  assert tool.official_commit(str(tmp_path), "given") == "given"
  (tmp_path.parent / "plain").mkdir(exist_ok=True)
  with pytest.raises(SystemExit, match="not in a git work tree"):
    tool.official_commit(str(tmp_path.parent / "plain"))
  v = tool.library_versions()
  assert set(v) == {"python", "numpy", "torch", "torchvision", "timm"} and v["numpy"] == np.__version__
