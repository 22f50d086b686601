"""Pictures of predictions: a face with its AU bars, its AU relation graph (paper Fig. 4), AUs over time."""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # Figures without pyplot: no backend or global state is touched
from matplotlib.patches import FancyArrowPatch

from megraph_jax.task import AMBIGUOUS_SUB_AUS, au_description

ACTIVE, INACTIVE = "#d7301f", "#9ecae1"  # bar colours: above / below the threshold
NODE_CMAP = "YlOrRd"
SIDE = re.compile(r"AU([LR])(\d+)")  # OpenGraphAU's left/right AUs: AUL1, AUR1, ...


def au_label(name: str) -> str:
  """``AU12`` -> ``AU12 Lip corner puller`` (the description when known; L12/R12 marked ambiguous)."""
  if name in AMBIGUOUS_SUB_AUS:
    return f"{name} (AU11 node; see README)"
  desc = au_description(name)
  return f"{name} {desc}" if desc else name


def _bars(ax, probs: np.ndarray, labels: Sequence[str], threshold: float) -> None:
  """Horizontal bars of ``probs``, top to bottom, with values; red above the threshold."""
  y = np.arange(len(probs))
  on = probs >= threshold
  ax.barh(y, probs, color=np.where(on, ACTIVE, INACTIVE), edgecolor="black", linewidth=0.4)
  for yi, p in zip(y, probs):
    inside = p > 0.85  # no room right of the bar: write inside it
    ax.text(
      p - 0.02 if inside else p + 0.02,
      yi,
      f"{p:.2f}",
      va="center",
      ha="right" if inside else "left",
      fontsize=8,
      color="white" if inside else "black",
      fontweight="bold" if p >= threshold else "normal",
      bbox=None if inside else {"facecolor": "white", "edgecolor": "none", "pad": 0.3, "alpha": 0.8},
    )
  ax.axvline(threshold, color="black", linestyle="--", linewidth=0.8)
  ax.set_yticks(y, labels, fontsize=9)
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_xlabel(f"score (dashed: threshold {threshold:g})")
  ax.grid(axis="x", alpha=0.3)


def _sides(ax, probs: np.ndarray, names: Sequence[str], threshold: float) -> None:
  """Left/right AU pairs as mirrored bars: left AU to the left, right AU to the right of the centre line."""
  found = {int(m.group(2)) for a in names if (m := SIDE.fullmatch(a))}
  pairs = sorted(found, key=lambda a: names.index(f"AUL{a}"))
  y = np.arange(len(pairs))
  for side, sign in (("L", -1.0), ("R", 1.0)):
    p = np.array([probs[names.index(f"AU{side}{a}")] for a in pairs])
    ax.barh(y, sign * p, color=np.where(p >= threshold, ACTIVE, INACTIVE), edgecolor="black", linewidth=0.4)
    for yi, v in zip(y, p):
      ax.text(sign * (v + 0.03), yi, f"{v:.2f}", va="center", ha="left" if sign > 0 else "right", fontsize=8,
              fontweight="bold" if v >= threshold else "normal")  # fmt: skip
  for x in (-threshold, threshold):
    ax.axvline(x, color="black", linestyle="--", linewidth=0.8)
  ax.axvline(0, color="black", linewidth=0.8)
  labels = [
    f"AUL{a} | AUR{a}\n" + ("AU11 node (see README)" if f"AUL{a}" in AMBIGUOUS_SUB_AUS else au_description(f"AU{a}"))
    for a in pairs
  ]
  ax.set_yticks(y, labels, fontsize=9)
  ax.invert_yaxis()
  ax.set_xlim(-1.25, 1.25)
  ax.set_xticks([-1, -0.5, 0, 0.5, 1], ["1", "0.5", "0", "0.5", "1"])
  ax.set_xlabel("L (left)  |  R (right), as the official labels")
  ax.set_title("left / right AUs", fontsize=10)


def plot_face(
  crop: np.ndarray | None, probs: np.ndarray, au_names: Sequence[str], *, threshold: float = 0.5, title: str = ""
) -> Figure:
  """The face beside bars of its AU scores (red: occurring); left/right AUs (OpenGraphAU) as mirrored pairs."""
  probs = np.asarray(probs, np.float32)
  names = list(au_names)
  main = [i for i, a in enumerate(names) if not SIDE.fullmatch(a)]
  sides = len(main) < len(names)
  fig = Figure(figsize=(15 if sides else 10, max(4.0, 0.3 * len(main) + 1.4)), layout="constrained")
  ratios = [1, 1.3, 1.1] if sides else [1, 1.25]
  axes = fig.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios})
  ax_im = axes[0]
  if crop is not None:
    ax_im.imshow(crop)
  ax_im.set_axis_off()
  ax_im.set_title("face", fontsize=10)
  _bars(axes[1], probs[main], [au_label(names[i]) for i in main], threshold)
  if sides:
    _sides(axes[2], probs, names, threshold)
  on = probs >= threshold
  occurring = ", ".join(np.asarray(names)[on]) or "none"
  ax_im.text(0.5, -0.03, f"{int(on.sum())} of {len(names)} AUs occurring (score >= {threshold:g}):\n"
             + "\n".join(textwrap.wrap(occurring, 45)), transform=ax_im.transAxes, ha="center", va="top",
             fontsize=10, color=ACTIVE if on.any() else "black")  # fmt: skip
  if title:
    fig.suptitle(title, fontsize=11)
  return fig


def _circle(n: int) -> np.ndarray:
  """Node positions on the unit circle, clockwise from the top (AU order runs brows -> mouth)."""
  a = np.pi / 2 - 2 * np.pi * np.arange(n) / n
  return np.stack([np.cos(a), np.sin(a)], axis=1)


def _draw_knn(
  ax, probs: np.ndarray, au_names: Sequence[str], adjacency: np.ndarray, threshold: float, k: int | None
) -> None:
  n = len(au_names)
  pos = _circle(n)
  a = np.asarray(adjacency) > 0.5
  np.fill_diagonal(a, False)
  node_pt = 30.0 if n <= 12 else 22.0  # node diameter in points
  shrink = node_pt / 2 + 2
  for i in range(n):
    for j in range(n):
      if not a[i, j] or (a[j, i] and j < i):
        continue
      mutual = a[j, i]
      ax.add_patch(
        FancyArrowPatch(
          pos[i],
          pos[j],
          arrowstyle="<|-|>" if mutual else "-|>",
          mutation_scale=9,
          shrinkA=shrink,
          shrinkB=shrink,
          color="#404040" if mutual else "#8c8c8c",
          linewidth=1.4 if mutual else 0.9,
          connectionstyle="arc3,rad=0.0" if mutual else "arc3,rad=0.12",
          zorder=1,
        )
      )
  cmap = matplotlib.colormaps[NODE_CMAP]
  on = probs >= threshold
  sc = ax.scatter(
    pos[:, 0],
    pos[:, 1],
    s=node_pt**2,
    c=probs,
    cmap=cmap,
    vmin=0,
    vmax=1,
    edgecolors=np.where(on, "black", "#8c8c8c"),
    linewidths=np.where(on, 2.2, 0.8),
    zorder=2,
  )
  in_links = a.sum(axis=0)
  for i, name in enumerate(au_names):
    ax.text(
      *pos[i],
      name,
      ha="center",
      va="center",
      fontsize=7 if len(name) <= 4 else 6,
      zorder=3,
      color="white" if probs[i] > 0.7 else "black",
      fontweight="bold",
    )
    r = 1.0 + (0.2 if n <= 12 else 0.16)
    ax.text(
      *(pos[i] * r),
      f"{probs[i]:.2f}\n{in_links[i]} in",
      ha="center",
      va="center",
      fontsize=7,
      color="black" if on[i] else "#606060",
    )
  ax.set_xlim(-1.4, 1.4)
  ax.set_ylim(-1.4, 1.4)
  ax.set_aspect("equal")
  ax.set_axis_off()
  ax.set_title(f"{'K=%d ' % k if k else ''}nearest neighbours of the AU node features", fontsize=10)
  ax.text(
    0.5,
    -0.02,
    "arrow i→j: j is one of i's nearest (double: mutual); black ring: occurring AU\n"
    "numbers: probability, and 'in' = how many AUs count it among their nearest",
    transform=ax.transAxes,
    ha="center",
    va="top",
    fontsize=8,
    color="#404040",
  )
  ax.figure.colorbar(sc, ax=ax, fraction=0.04, pad=0.02).set_label("AU probability", fontsize=8)


EDGE_TITLE = "edge strength from the learned edge features\nP(AU i and AU j both occur) of edge e_ij"
GATE_TITLE = (  # OpenGraphAU stage 2: no edge classifier; predict draws N x the channel mean of the last layer's gates
  "learned edges: N x mean over channels of the last GatedGCN gate\n"
  "softmax_j sigmoid(e_ij) (1 = an average neighbour; row i: what feeds AU i)"
)


def _draw_edges(ax, strength: np.ndarray, au_names: Sequence[str], title: str, unit_range: bool) -> None:
  im = ax.imshow(strength, cmap="viridis", **({"vmin": 0, "vmax": 1} if unit_range else {}))
  n = len(au_names)
  ax.set_xticks(range(n), au_names, rotation=90, fontsize=7)
  ax.set_yticks(range(n), au_names, fontsize=7)
  ax.set_xlabel("AU j")
  ax.set_ylabel("AU i")
  ax.set_title(title, fontsize=9)
  ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)


def plot_graph(
  probs: np.ndarray,
  au_names: Sequence[str],
  adjacency: np.ndarray,
  *,
  edge_strength: np.ndarray | None = None,
  edge_title: str = EDGE_TITLE,
  threshold: float = 0.5,
  k: int | None = None,
  title: str = "",
) -> Figure:
  """The face's AU relation graph: kNN links of the node features and, for stage 2, learned edge strengths.

  The graph's nodes are the first N = ``len(adjacency)`` outputs (OpenGraphAU: its 27 main AUs of 41).
  ``edge_title`` says what ``edge_strength`` is; the default (a probability) is drawn on a 0..1 scale.
  """
  n = len(adjacency)
  probs, au_names = np.asarray(probs, np.float32)[:n], list(au_names)[:n]
  panels = 1 if edge_strength is None else 2
  scale = 1.35 if n > 20 else 1.0  # OpenGraphAU's 27 nodes need room
  fig = Figure(figsize=(6.2 * panels * scale, 6.4 * scale), layout="constrained")
  axes = fig.subplots(1, panels, squeeze=False)
  _draw_knn(axes[0, 0], probs, au_names, adjacency, threshold, k)
  if edge_strength is not None:
    _draw_edges(axes[0, 1], np.asarray(edge_strength, np.float32), au_names, edge_title, edge_title == EDGE_TITLE)
  if title:
    fig.suptitle(title, fontsize=11)
  return fig


def plot_timeline(
  times: np.ndarray,
  probs: np.ndarray,
  au_names: Sequence[str],
  *,
  tracks: np.ndarray | None = None,
  threshold: float = 0.5,
  xlabel: str = "time (s)",
  title: str = "",
) -> Figure:
  """AU probabilities over a video: one strip per AU, one line per tracked face."""
  times, probs = np.asarray(times, np.float64), np.asarray(probs, np.float32)  # [T], [T, N]
  tracks = np.zeros(len(times), int) if tracks is None else np.asarray(tracks)
  n = len(au_names)
  fig = Figure(figsize=(10, 0.55 * n + 1.3), layout="constrained")
  axes = fig.subplots(n, 1, sharex=True, squeeze=False)
  colors = matplotlib.colormaps["tab10"]
  track_ids = sorted(set(tracks.tolist()))
  for a, ax in enumerate(axes[:, 0]):
    for c, t in enumerate(track_ids):
      sel = tracks == t
      ax.plot(
        times[sel],
        probs[sel, a],
        color=colors(c % 10),
        linewidth=1.2,
        marker="." if sel.sum() < 40 else None,
        label=f"face {t}",
      )
      if len(track_ids) == 1:  # shade where the AU occurs
        ax.fill_between(
          times[sel],
          0,
          1,
          where=probs[sel, a] >= threshold,
          color=ACTIVE,
          alpha=0.2,
          step="mid",
          transform=ax.get_xaxis_transform(),
          linewidth=0,
        )
    ax.axhline(threshold, color="black", linestyle="--", linewidth=0.6)
    ax.set_ylim(0, 1)
    ax.set_yticks([0, 1])
    ax.tick_params(labelsize=7)
    ax.set_ylabel(au_names[a], rotation=0, ha="right", va="center", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
  if len(track_ids) > 1:
    axes[0, 0].legend(fontsize=7, ncol=min(len(track_ids), 6), loc="lower right", bbox_to_anchor=(1, 1))
  axes[-1, 0].set_xlabel(xlabel)
  fig.suptitle(title or "AU probabilities over time", fontsize=11)
  fig.get_layout_engine().set(h_pad=0.02, hspace=0.0)
  return fig


def save(fig: Figure, path: str | os.PathLike, *, dpi: int = 110) -> str:
  """Writes ``fig`` as a PNG (folders created); returns the path."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi)
  return path


def save_face_pictures(
  p, directory: str, stem: str, au_names: Sequence[str], *, threshold: float, k: int, spec
) -> list[str]:
  """``<stem>_au.png`` (the face and its AU scores) and ``<stem>_graph.png`` (the relation graph) of one prediction
  ``p`` (a ``records.FacePrediction`` with its crop) of a model of ``spec`` (``model_factory.ModelSpec``)."""
  if p.status != "ok":
    return []
  title = f"{os.path.basename(p.file)}" + (f"  frame {p.frame}" if p.is_video else "") + f"  face {p.face}"
  face = plot_face(p.crop, p.probs, au_names, threshold=threshold, title=title)
  written = [save(face, os.path.join(directory, f"{stem}_au.png"))]
  if p.adjacency is not None:  # the baseline has no graph
    graph = plot_graph(
      p.probs,
      au_names,
      p.adjacency,
      edge_strength=p.edge_strength,
      threshold=threshold,
      **({"edge_title": GATE_TITLE} if spec.head == "opengraphau" else {}),
      k=k,
      title=f"{title}  (stage-{spec.stage} model)",
    )
    written.append(save(graph, os.path.join(directory, f"{stem}_graph.png")))
  return written


def timeline_figure(preds: Sequence, au_names: Sequence[str], *, threshold: float) -> Figure | None:
  """The AU-scores-over-time figure of one video's predictions (``records.FacePrediction``); None without a face.
  Its x axis is the time in seconds, or the frame number when a frame has no time."""
  ok = [p for p in preds if p.status == "ok"]
  if not ok:
    return None
  has_time = all(p.time is not None for p in ok)
  t = np.array([p.time if has_time else p.frame for p in ok])
  return plot_timeline(
    t,
    np.stack([p.probs for p in ok]),
    au_names,
    tracks=np.array([p.face for p in ok]),
    threshold=threshold,
    xlabel="time (s)" if has_time else "frame",
    title=f"{os.path.basename(ok[0].file)}: AU probabilities over time",
  )


def save_timeline(preds: Sequence, path: str, au_names: Sequence[str], *, threshold: float) -> str | None:
  """Writes :func:`timeline_figure` to ``path``; returns the path (None without a face)."""
  fig = timeline_figure(preds, au_names, threshold=threshold)
  return None if fig is None else save(fig, path)
