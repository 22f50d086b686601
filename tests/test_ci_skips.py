"""CI fails on a skip caused by a missing required package (tests/conftest.py), and only on those."""

import types

import conftest
import pytest


def _report(reason: str, when: str = "call") -> types.SimpleNamespace:
  return types.SimpleNamespace(skipped=True, outcome="skipped", when=when, longrepr=("x.py", 3, f"Skipped: {reason}"))


def test_required_modules_follow_the_requirement_files():
  required = conftest.required_modules("requirements-test.txt")
  # requirements-test.txt itself, requirements.txt through -r, distribution names mapped to import names
  assert {"torch", "torchvision", "timm", "sklearn", "skimage", "ray", "libtpu", "nbclient"} <= required
  assert {"jax", "flax", "tensorflow", "tensorflow_datasets", "cv2", "mtcnn", "PIL", "absl", "orbax"} <= required
  assert not {"apache_beam", "mlcroissant"} & required  # the optional `tfds build` extras
  extra = conftest.required_modules("requirements-test.txt,requirements-tfds-cli.txt,mlcroissant")
  assert {"apache_beam", "mlcroissant"} <= extra


@pytest.mark.parametrize(
  "reason",
  [
    "could not import 'no_such_pkg_x.data': No module named 'no_such_pkg_x'",  # pytest.importorskip
    "compiling for TPU needs no_such_pkg_x",  # a skipif naming it
    "no_such_pkg_x, mlcroissant not installed; pip install ...",  # tests/tfds_cli.py
  ],
)
def test_a_skip_for_a_missing_required_module_fails_in_ci(monkeypatch, reason):
  monkeypatch.setenv("CI", "true")
  monkeypatch.setenv("MEGRAPH_TEST_REQUIREMENTS", "requirements-test.txt,no-such-pkg-x")
  for when in ("setup", "call", "collect"):
    report = _report(reason, when)
    conftest._fail_if_required_missing(report)  # pylint: disable=protected-access
    assert report.outcome == "failed" and "no_such_pkg_x" in str(report.longrepr) and reason in str(report.longrepr)


def test_other_skips_stay_skips(monkeypatch):
  missing = "could not import 'no_such_pkg_x': No module named 'no_such_pkg_x'"
  for ci, requirements, reason in (
    ("true", "requirements-test.txt", missing),  # not a required package
    ("true", "requirements-test.txt", "could not import 'numpy': it failed for another reason"),  # importable here
    ("true", "requirements-test.txt,no-such-pkg-x", "needs a GPU"),
    ("", "requirements-test.txt,no-such-pkg-x", missing),  # CI not set: a developer's machine may lack a package
  ):
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("MEGRAPH_TEST_REQUIREMENTS", requirements)
    report = _report(reason)
    conftest._fail_if_required_missing(report)  # pylint: disable=protected-access
    assert report.outcome == "skipped", (ci, reason)
