"""Rendering of the procedural synthetic AU faces (NumPy + Pillow only): an identity, AU intensities -> an image.

Faces are drawn in canonical face units (face half-width 1, y down) through a similarity transform on a
supersampled PIL canvas, then downsampled, shaded, lit and given sensor noise. Each AU moves or shades
the regions FACS describes (brows, lids, nose, lips, chin, wrinkles). The label model and the dataset
writer that use this are in ``megraph_jax.data.synthetic``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from megraph_jax import task

ALL_AUS: tuple[int, ...] = tuple(sorted(set(task.BP4D_AUS) | set(task.DISFA_AUS)))  # the 15 AUs drawn
AU_INDEX: dict[int, int] = {au: i for i, au in enumerate(ALL_AUS)}  # AU -> column in the full 15-AU state
_A = AU_INDEX

_SKIN = np.array(
  [[255, 224, 196], [241, 194, 160], [224, 172, 132], [198, 134, 96], [161, 102, 69], [110, 70, 48]], np.float64
)
_HAIR = np.array(
  [[25, 20, 18], [60, 40, 28], [110, 75, 45], [200, 170, 110], [150, 150, 150], [140, 60, 30]], np.float64
)
_IRIS = np.array([[70, 45, 30], [40, 30, 25], [70, 110, 150], [80, 110, 70], [110, 90, 60]], np.float64)


@dataclasses.dataclass(frozen=True)
class Identity:
  """Appearance of one synthetic subject (canonical face units: face half-width = 1, y down)."""

  skin: np.ndarray
  hair: np.ndarray
  iris: np.ndarray
  lips: np.ndarray
  bg: tuple[np.ndarray, np.ndarray]
  cloth: np.ndarray
  hair_style: int  # 0 short, 1 long, 2 bald.
  hairline: float
  top_y: float
  chin_y: float
  jaw_taper: float
  eye_x: float
  eye_y: float
  eye_w: float
  eye_h: float
  eye_low: float
  eye_tilt: float
  brow_gap: float
  brow_in: float
  brow_out: float
  brow_thick: float
  brow_arch: float
  nose_y: float
  nose_w: float
  mouth_y: float
  mouth_w: float
  lip_up: float
  lip_low: float
  scale: float
  center: tuple[float, float]
  light_dir: float
  light_strength: float
  chin_dots: np.ndarray  # [K, 2] canonical offsets of chin-wrinkle dots.


def sample_identity(rng: np.random.Generator) -> Identity:
  """Draws a random face identity."""
  u = rng.uniform
  t = u(0, len(_SKIN) - 1)
  lo = int(np.floor(t))
  skin = _SKIN[lo] + (t - lo) * (_SKIN[min(lo + 1, len(_SKIN) - 1)] - _SKIN[lo])
  lips = 0.55 * skin + 0.45 * np.array([185, 75, 85]) - (0 if t < 3 else 25)
  bg_a = rng.uniform(40, 220, 3)
  bg_b = np.clip(bg_a + rng.normal(0, 40, 3), 0, 255)
  eye_y = u(-0.2, -0.1)
  return Identity(
    skin=skin,
    hair=_HAIR[rng.integers(len(_HAIR))] * u(0.85, 1.15),
    iris=_IRIS[rng.integers(len(_IRIS))],
    lips=lips,
    bg=(bg_a, bg_b),
    cloth=rng.uniform(20, 230, 3),
    hair_style=int(rng.choice(3, p=[0.5, 0.35, 0.15])),
    hairline=u(-0.85, -0.65),
    top_y=u(-1.38, -1.25),
    chin_y=u(1.08, 1.22),
    jaw_taper=u(0.15, 0.4),
    eye_x=u(0.36, 0.45),
    eye_y=eye_y,
    eye_w=u(0.15, 0.19),
    eye_h=u(0.075, 0.1),
    eye_low=u(0.045, 0.065),
    eye_tilt=u(-0.08, 0.12),
    brow_gap=u(0.18, 0.24),
    brow_in=u(0.1, 0.16),
    brow_out=u(0.6, 0.72),
    brow_thick=u(0.045, 0.08),
    brow_arch=u(0.02, 0.07),
    nose_y=u(0.3, 0.4),
    nose_w=u(0.15, 0.21),
    mouth_y=u(0.64, 0.74),
    mouth_w=u(0.26, 0.34),
    lip_up=u(0.04, 0.065),
    lip_low=u(0.05, 0.085),
    scale=u(0.34, 0.39),
    center=(u(0.47, 0.53), u(0.48, 0.53)),
    light_dir=u(0, 2 * np.pi),
    light_strength=u(0.05, 0.35),
    chin_dots=rng.uniform(-1, 1, (14, 2)) * np.array([0.17, 0.06]),
  )


def _mix(a: np.ndarray, b: np.ndarray | Sequence[float], alpha: float) -> tuple[int, int, int]:
  """Colour ``(1 - alpha) a + alpha b`` as an RGB int tuple."""
  c = (1.0 - alpha) * np.asarray(a, np.float64) + alpha * np.asarray(b, np.float64)
  return tuple(int(v) for v in np.clip(np.rint(c), 0, 255))


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
  """Polygon ``[n, 2]`` of an axis-aligned ellipse."""
  a = np.linspace(0, 2 * np.pi, n, endpoint=False)
  return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


class _Canvas:
  """Draws canonical-unit shapes on a supersampled PIL image through a similarity transform."""

  def __init__(self, img: Image.Image, scale_px: float, angle: float, center_px: tuple[float, float]):
    self.draw = ImageDraw.Draw(img)
    c, s = np.cos(angle), np.sin(angle)
    self.m = scale_px * np.array([[c, -s], [s, c]])
    self.t = np.asarray(center_px)
    self.scale_px = scale_px

  def px(self, pts: np.ndarray) -> list[tuple[float, float]]:
    """Canonical points ``[K, 2]`` -> pixel tuples."""
    p = np.asarray(pts, np.float64) @ self.m.T + self.t
    return [tuple(q) for q in p.tolist()]

  def poly(self, pts: np.ndarray, fill: tuple[int, int, int]) -> None:
    """Filled polygon."""
    self.draw.polygon(self.px(pts), fill=fill)

  def line(self, pts: np.ndarray, fill: tuple[int, int, int], width: float) -> None:
    """Polyline of canonical width."""
    w = max(1, int(round(width * self.scale_px)))
    self.draw.line(self.px(pts), fill=fill, width=w, joint="curve" if len(pts) > 2 else None)


def _face_outline(ident: Identity, chin_y: float, n: int = 48) -> np.ndarray:
  """Head outline ``[n, 2]``: rounded forehead, tapered jaw down to ``chin_y``."""
  a = np.linspace(0, 2 * np.pi, n, endpoint=False)
  sn, cs = np.sin(a), np.cos(a)
  lower = sn > 0
  x = cs * np.where(lower, 1.0 - ident.jaw_taper * sn**2, 1.0)
  y = np.where(lower, chin_y * sn, -ident.top_y * sn)
  return np.stack([x, y], axis=1)


def render_face(ident: Identity, r: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  """Renders one frame: ``r`` = AU intensities ``[15]`` (ALL_AUS order) -> uint8 ``[size, size, 3]``."""
  i = {au: float(r[_A[au]]) for au in ALL_AUS}
  ss = 2 if size >= 96 else 3
  big = size * ss
  # Background: vertical gradient between the identity's two colours.
  g = np.linspace(0.0, 1.0, big)[:, None, None]
  bg = (1 - g) * ident.bg[0] + g * ident.bg[1]
  canvas_img = Image.fromarray(np.broadcast_to(bg, (big, big, 3)).astype(np.uint8), "RGB")
  scale = ident.scale * np.exp(rng.normal(0, 0.03)) * big
  angle = np.deg2rad(rng.normal(0, 4.0))
  center = ((ident.center[0] + rng.normal(0, 0.015)) * big, (ident.center[1] + rng.normal(0, 0.015)) * big)
  cv = _Canvas(canvas_img, scale, angle, center)
  skin, dark = ident.skin, np.array([35, 22, 18])

  # Body, neck, ears, hair behind the head.
  cv.poly(_ellipse(0.0, 2.45, 1.9, 0.9), _mix(ident.cloth, dark, 0.0))
  cv.poly(np.array([[-0.48, 0.5], [0.48, 0.5], [0.52, 1.9], [-0.52, 1.9]]), _mix(skin, dark, 0.18))
  for sgn in (-1, 1):
    cv.poly(_ellipse(sgn * 0.98, ident.eye_y + 0.12, 0.14, 0.25), _mix(skin, dark, 0.12))
  if ident.hair_style == 1:
    cv.poly(np.array([[-1.12, -0.4], [1.12, -0.4], [1.18, 1.0], [-1.18, 1.0]]), _mix(ident.hair, dark, 0.1))
  if ident.hair_style != 2:
    cv.poly(_ellipse(0.0, -0.15, 1.1, ident.top_y * 0.97 + 0.13), _mix(ident.hair, dark, 0.05))

  # Face (jaw drop lowers the chin; chin raiser lifts it a little).
  jaw = 0.13 * i[26]
  chin_y = ident.chin_y + jaw - 0.025 * i[17]
  cv.poly(_face_outline(ident, chin_y), _mix(skin, skin, 0))
  if ident.hair_style != 2:  # Fringe: the head outline above an arched hairline.
    out = _face_outline(ident, chin_y, 96)
    top = out[out[:, 1] < ident.hairline]
    top = top[np.argsort(np.arctan2(top[:, 1], top[:, 0]))]
    xs = np.linspace(top[-1, 0], top[0, 0], 12)
    arch = np.stack([xs, ident.hairline - 0.12 * (1 - (xs / max(abs(xs).max(), 1e-6)) ** 2)], axis=1)
    cv.poly(np.concatenate([top, arch]), tuple(int(v) for v in np.clip(ident.hair, 0, 255)))

  def wrinkle(pts: np.ndarray, alpha: float, width: float = 0.014) -> None:
    if alpha > 0.03:
      cv.line(pts, _mix(skin, dark, min(alpha, 0.85)), width)

  # ---- Brows and forehead (AU1 inner raise, AU2 outer raise, AU4 lowerer, AU9 pulls down a bit).
  ey = ident.eye_y
  by = ey - ident.brow_gap
  s = np.linspace(0.0, 1.0, 9)
  top_brow = by
  for sgn in (-1, 1):
    x = ident.brow_in + s * (ident.brow_out - ident.brow_in) - 0.045 * i[4] * (1 - s)
    y = (
      by
      - ident.brow_arch * np.sin(np.pi * s * 0.9)
      + 0.03 * s**2
      - 0.14 * i[1] * (1 - s) ** 1.5
      - 0.13 * i[2] * s**1.5
      + 0.075 * i[4] * (1 - 0.5 * s)
      + 0.03 * i[9] * (1 - s)
    )
    top_brow = min(top_brow, float(y.min()))
    th = ident.brow_thick * (1.0 - 0.5 * s) * (1 + 0.3 * i[4])
    upper = np.stack([sgn * x, y - th / 2], axis=1)
    lower = np.stack([sgn * x, y + th / 2], axis=1)[::-1]
    cv.poly(np.concatenate([upper, lower]), _mix(ident.hair, dark, 0.25))
  for k in range(3):  # Horizontal forehead lines: centre from AU1, sides from AU2.
    yk = top_brow - 0.1 - 0.075 * k
    xc = np.linspace(-0.28, 0.28, 7)
    wrinkle(np.stack([xc, yk + 0.02 * (xc / 0.28) ** 2], 1), 0.6 * i[1] - 0.1 * k)
    for sgn in (-1, 1):
      xl = np.linspace(0.26, 0.62, 6)
      wrinkle(np.stack([sgn * xl, yk + 0.02 + 0.05 * ((xl - 0.26) / 0.36) ** 2], 1), 0.6 * i[2] - 0.1 * k)
  for sgn in (-1, 1):  # Glabella furrows (AU4).
    wrinkle(np.array([[sgn * 0.05, by - 0.03], [sgn * 0.065, by + 0.09]]), 0.7 * i[4], 0.016)

  # ---- Eyes (AU6 and AU7 raise the lower lid; AU7 tenses it; AU4/AU9 lower the upper lid).
  gaze = rng.normal(0, 0.25, 2)
  hu = ident.eye_h * max(0.3, 1 - 0.25 * i[7] - 0.15 * i[6] - 0.2 * i[4] - 0.1 * i[9])
  hl = ident.eye_low * max(0.08, 1 - 0.75 * i[7] - 0.5 * i[6])
  xp = np.linspace(-1.0, 1.0, 15)
  for sgn in (-1, 1):
    ex = ident.eye_x
    x = sgn * (ex + xp * ident.eye_w)
    tilt = -ident.eye_tilt * xp * ident.eye_w
    y_up = ey + tilt - hu * (1 - xp**2) ** 0.9 * (1 - 0.15 * xp)
    y_lo = ey + tilt + hl * (1 - xp**2) ** 1.1
    cv.poly(np.concatenate([np.stack([x, y_up], 1), np.stack([x, y_lo], 1)[::-1]]), (238, 236, 230))
    icx, icy = sgn * ex + gaze[0] * 0.3 * ident.eye_w, ey + gaze[1] * 0.01
    for rad, col in ((0.42 * ident.eye_w, ident.iris), (0.17 * ident.eye_w, np.array([15, 12, 12]))):
      c = _ellipse(icx, icy, rad, rad, 20)
      q = np.clip((c[:, 0] - sgn * ex) / (sgn * ident.eye_w), -0.98, 0.98)
      lo_b = np.interp(q, xp, y_up)
      hi_b = np.interp(q, xp, y_lo)
      c[:, 0] = sgn * (ex + q * ident.eye_w)
      c[:, 1] = np.clip(c[:, 1], lo_b, hi_b)
      cv.poly(c, _mix(col, col, 0))
    cv.line(np.stack([x, y_up], 1), _mix(ident.hair, dark, 0.6), 0.022)
    cv.line(np.stack([x, y_lo], 1), _mix(skin, dark, 0.35 + 0.45 * i[7]), 0.01 + 0.014 * i[7])
    crease = np.stack([x[2:-1], y_up[2:-1] - 0.045 * (1 - 0.6 * i[4]) - 0.01], 1)
    wrinkle(crease, 0.3 - 0.2 * i[4])
    # AU6: infra-orbital furrow below the lower lid and crow's feet at the outer corner.
    under = np.stack([x[2:-2], y_lo[2:-2] + 0.075 - 0.03 * i[6]], 1)
    wrinkle(under, 0.55 * i[6] + 0.2 * i[7])
    ox = sgn * (ex + ident.eye_w + 0.03)
    for ang in (-0.45, 0.0, 0.45):
      wrinkle(np.array([[ox, ey], [ox + sgn * 0.11 * np.cos(ang), ey + 0.11 * np.sin(ang)]]), 0.65 * i[6])

  # ---- Nose (AU9 wrinkles the bridge and lifts the nostrils; AU10 lifts them a little).
  ny, nw = ident.nose_y, ident.nose_w
  lift = 0.035 * i[9] + 0.015 * i[10]
  for sgn in (-1, 1):
    wrinkle(np.array([[sgn * 0.085, ey + 0.03], [sgn * 0.095, ny - 0.12]]), 0.18)
    cv.poly(_ellipse(sgn * 0.075, ny + 0.05 - lift, 0.05 * (1 + 0.3 * i[9]), 0.024, 14), _mix(skin, dark, 0.75))
    a = np.linspace(-2.2, 1.2, 9)
    wing = np.stack([sgn * (nw * 0.82 + 0.065 * np.cos(a)), ny + 0.01 - lift + 0.065 * np.sin(a)], 1)
    wrinkle(wing, 0.45)
  xt = np.linspace(-0.07, 0.07, 5)
  wrinkle(np.stack([xt, ny + 0.08 - lift + 0.02 * (1 - (xt / 0.07) ** 2)], 1), 0.3)
  for k in range(3):
    yk = ey + 0.07 + 0.045 * k
    wrinkle(np.array([[-0.11, yk + 0.015], [0.0, yk], [0.11, yk + 0.015]]), 0.75 * i[9] - 0.1 * k)

  # ---- Mouth.
  mw = ident.mouth_w * (1 + 0.22 * i[12] + 0.06 * i[14] - 0.15 * i[23] - 0.05 * i[24] - 0.1 * i[26])
  my = ident.mouth_y
  cy = my - 0.1 * i[12] - 0.02 * i[14] + 0.085 * i[15] + 0.025 * i[17] - 0.015 * i[10]
  u = np.linspace(-1.0, 1.0, 21)
  par = 1 - u**2
  seam = cy + (my - cy) * par
  close = max(0.0, 1 - i[24])
  gu = (0.012 * i[25] + 0.03 * max(0.0, i[10] - 0.3)) * close
  gl = (0.025 * i[25] + jaw * (0.35 + 0.65 * i[25])) * close
  raise10 = 0.04 * i[10] * (0.6 + 0.4 * np.abs(u) ** 0.5)
  ub = seam - gu * par**0.7 - raise10 * par**0.3
  lt = seam + gl * par**0.7 - 0.02 * i[17] * par
  tu = ident.lip_up * max(0.25, 1 - 0.55 * i[23] - 0.45 * i[24])
  tl = ident.lip_low * max(0.25, 1 - 0.55 * i[23] - 0.45 * i[24] + 0.2 * i[17])
  top = ub - tu * par**0.5 * (1 - 0.45 * np.exp(-((u / 0.12) ** 2)))
  bot = lt + tl * par**0.5 - 0.02 * i[17] * par
  x = mw * u
  lip_col = _mix(ident.lips, skin, 0.45 * i[24] + 0.2 * i[23])
  for sgn in (-1, 1):  # Nasolabial folds deepen with AU6/9/10/12.
    t = np.linspace(0, 1, 8)[:, None]
    p0, p2 = np.array([sgn * (nw + 0.03), ny - 0.01 - lift]), np.array([sgn * (mw + 0.06), cy + 0.07])
    p1 = np.array([sgn * (mw + 0.13), 0.5 * (ny + cy) - 0.02])
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    wrinkle(curve, 0.12 + 0.55 * max(i[12], 0.8 * i[10], 0.7 * i[6], 0.6 * i[9]), 0.016)
  if gu + gl > 0.004:  # Open mouth with upper teeth.
    cv.poly(np.concatenate([np.stack([x, ub], 1), np.stack([x, lt], 1)[::-1]]), (70, 22, 28))
    teeth = ub + np.minimum(0.55 * (lt - ub), 0.05) * par**0.5
    cv.poly(np.concatenate([np.stack([x, ub], 1), np.stack([x, teeth], 1)[::-1]]), (232, 228, 214))
  cv.poly(np.concatenate([np.stack([x, top], 1), np.stack([x, ub], 1)[::-1]]), lip_col)
  cv.poly(np.concatenate([np.stack([x, lt], 1), np.stack([x, bot], 1)[::-1]]), lip_col)
  cv.line(
    np.stack([x, 0.5 * (ub + lt)], 1) if gu + gl <= 0.004 else np.stack([x, ub], 1), _mix(ident.lips, dark, 0.55), 0.012
  )
  for sgn in (-1, 1):
    cx = sgn * mw
    # AU14 dimples, AU15 marionette lines.
    d = np.linspace(-1, 1, 5)
    wrinkle(np.stack([sgn * (mw + 0.045 + 0.012 * (1 - d**2)), cy + 0.04 * d], 1), 0.8 * i[14], 0.016)
    wrinkle(np.array([[cx, cy], [cx + sgn * 0.03, cy - 0.004]]), 0.6 * i[14])
    wrinkle(np.array([[cx, cy + 0.01], [cx + sgn * 0.05, cy + 0.16]]), 0.6 * i[15], 0.016)
  # AU24 pressing bulges above and below the lips.
  xb = np.linspace(-0.6, 0.6, 7) * mw
  wrinkle(np.stack([xb, np.interp(xb, x, top) - 0.03], 1), 0.5 * i[24])
  wrinkle(np.stack([xb, np.interp(xb, x, bot) + 0.03], 1), 0.5 * i[24])
  # AU17: deeper mentolabial sulcus and chin "orange-peel" dots.
  xs = np.linspace(-0.17, 0.17, 7)
  yb = float(bot[10])
  wrinkle(np.stack([xs, yb + 0.085 - 0.03 * i[17] - 0.03 * (1 - (xs / 0.17) ** 2)], 1), 0.15 + 0.5 * i[17])
  if i[17] > 0.1:
    col = _mix(skin, dark, 0.55 * i[17])
    for dx, dy in ident.chin_dots:
      cv.poly(_ellipse(dx, chin_y - 0.16 + dy, 0.012, 0.012, 6), col)

  # ---- Downsample, then soft shading, lighting and noise in NumPy.
  img = np.asarray(canvas_img.reduce(ss), np.float64)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)

  def blob(cx: float, cy_: float, sigma: float, delta: Sequence[float], amount: float) -> None:
    p = np.array([[cx, cy_]]) @ cv.m.T / ss + cv.t / ss
    sp = sigma * cv.scale_px / ss
    w = np.exp(-((xx - p[0, 0]) ** 2 + (yy - p[0, 1]) ** 2) / (2 * sp * sp))
    img[...] += amount * w[..., None] * np.asarray(delta)

  for sgn in (-1, 1):
    ccy = ey + 0.34 - 0.09 * i[6] - 0.04 * i[12]
    blob(sgn * 0.5, ccy, 0.16, (16, -6, -8), 0.5 + 0.8 * i[6] + 0.4 * i[12])
    blob(sgn * 0.5, ccy - 0.03, 0.08, (25, 25, 25), 0.7 * i[6])
  blob(0.0, chin_y - 0.15, 0.1, (20, 20, 20), 0.8 * i[17])
  d = np.array([np.cos(ident.light_dir), np.sin(ident.light_dir)])
  light = 1 + (ident.light_strength + rng.normal(0, 0.03)) * ((xx / size - 0.5) * d[0] + (yy / size - 0.5) * d[1])
  img = img * light[..., None] * rng.uniform(0.88, 1.1) + rng.normal(0, rng.uniform(1.5, 5.0), img.shape)
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)
