"""The extra detection passes of a still (``faces.Detector.still``): mirrored detections map back onto the image
(box and landmark order), ``merge`` keeps one detection per face, a hard face that plain MTCNN misses is found, and
face-free photos stay face-free. MTCNN in JAX only (no TensorFlow)."""

import numpy as np
import pytest

from megraph_jax.predict import faces

skdata = pytest.importorskip("skimage.data")
ASTRONAUT_FACE = (182, 64, 265, 172)  # x0, y0, x1, y1 of the face in skimage's astronaut (by eye)


@pytest.fixture(scope="module")
def detector():
  from megraph_jax.predict import mtcnn  # pylint: disable=import-outside-toplevel

  try:
    mtcnn.weights_dir()
  except ImportError:
    pytest.skip("the mtcnn package (its weights) is not installed")
  return faces.Detector()


def _face(x0, y0, x1, y1, score=0.99):
  cx, w = (x0 + x1) / 2, x1 - x0
  lm = np.array([[cx - w / 4, y0 + 0.4 * w], [cx + w / 4, y0 + 0.4 * w], [cx, y0 + 0.6 * w]] + [
    [cx - w / 5, y0 + 0.8 * w], [cx + w / 5, y0 + 0.8 * w]])  # fmt: skip
  return faces.Face(box=np.array([x0, y0, x1, y1], np.float64), score=score, landmarks=lm)


def test_mirrored_maps_box_and_landmarks_back(detector):
  """A face found in the mirror image lands on the same face of the image: box and landmarks within 6 px of the
  plain detection (measured 4.0 px on this 83 px face: MTCNN is not mirror-symmetric), left eye / mouth corner on
  the image's left (a missing swap puts them 30+ px off)."""
  a = skdata.astronaut()
  plain = detector.detect_many([a])[0]
  mirror = detector.detect_many([np.ascontiguousarray(a[:, ::-1])])[0]
  assert len(plain) == len(mirror) == 1
  back = faces.mirrored(mirror[0], a.shape[1])
  box_err = np.abs(back.box - plain[0].box).max()
  lm_err = np.abs(back.landmarks - plain[0].landmarks).max()
  print(f"mirrored vs plain: box {box_err:.2f} px, landmarks {lm_err:.2f} px")
  assert box_err < 6 and lm_err < 6, (back, plain[0])
  assert back.landmarks[0, 0] < back.landmarks[1, 0] and back.landmarks[3, 0] < back.landmarks[4, 0]
  # and exactly: a mirror of a mirror is the face itself, a box at x in [10, 50] of a 200 px image goes to [150, 190]
  f = _face(10.0, 20.0, 50.0, 60.0)
  m = faces.mirrored(f, 200)
  np.testing.assert_allclose(m.box, [150, 20, 190, 60])
  np.testing.assert_allclose(m.landmarks[:, 0], 200 - f.landmarks[[1, 0, 2, 4, 3], 0])
  twice = faces.mirrored(m, 200)
  np.testing.assert_allclose(twice.box, f.box)
  np.testing.assert_allclose(twice.landmarks, f.landmarks)


def test_merge_keeps_one_detection_per_face():
  """A later pass's detection of a face already found is dropped (the first one's box is kept), a new face is
  added, and the result is largest first."""
  first = [_face(100, 100, 200, 200, 0.9)]
  again = _face(104, 98, 206, 204, 0.99)  # the same face, a higher score: still the first pass's detection kept
  new_small, new_big = _face(300, 10, 330, 40, 0.95), _face(400, 200, 600, 400, 0.9)
  dup_of_new = _face(302, 12, 331, 41, 0.9)  # two detections of one new face within the later pass
  out = faces.merge(first, [again, new_small, dup_of_new, new_big])
  assert [tuple(f.box) for f in out] == [tuple(new_big.box), tuple(first[0].box), tuple(new_small.box)]
  assert faces.merge([], []) == [] and len(faces.merge(first, [])) == 1


def test_a_hard_still_is_found_by_the_extra_passes(detector):
  """The astronaut at 8% of its contrast: plain MTCNN finds nothing, the still's passes find the face; on the plain
  astronaut every thorough pass finds the face again and it stays one face."""
  a = skdata.astronaut()
  hard = np.clip(0.08 * a.astype(np.float64) + 110, 0, 255).astype(np.uint8)
  assert detector.detect_many([hard])[0] == []
  found = detector.still(hard)
  assert len(found) == 1 and faces.iou(found[0].box, ASTRONAUT_FACE) > 0.5, found
  assert detector(hard, relaxed=True)[0].score == found[0].score  # the predictor's call for stills does the same
  plain = detector.detect_many([a])[0]
  assert detector.still(a, plain) == plain  # by default a still whose face is found gets no extra pass
  thorough = detector.detect_passes(a, faces.THOROUGH_PASSES, plain)
  assert len(thorough) == 1 and thorough[0] is plain[0]


def test_face_free_stills_stay_face_free(detector):
  """No detection in face-free photos (a cat and coffee, 512 x 512: the size compiled above) after all of a still's
  passes (where nothing is found, the default runs every pass of --thorough; the benchmark has 39 more)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  from megraph_jax.predict import media  # pylint: disable=import-outside-toplevel

  for name in ("chelsea", "coffee"):
    img = np.asarray(Image.fromarray(media.as_rgb(getattr(skdata, name)())).resize((512, 512)))
    assert detector.still(img) == [], name
