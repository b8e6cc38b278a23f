"""A segmentation artifact's region, per image: the pixels predicted as the explained class,
their share of the image, and their outline on the overlay. numpy and OpenCV, no torch; the
runner, the server and the Ray engine all draw and name regions with these.

The graph returns per-pixel scores ``S`` ``[K, H', W']`` over its input and the class ``c`` it
explained (``classes``). Its target summed ``S_c`` over the mask ``M = [argmax_k S_k = c]``;
here ``M`` is taken over the image's part of the score grid (all of it with ``--resize
stretch``; the padding left out with ``pad``), and

- ``pixel_share(c) = |M| / |grid ∩ image|``: the fraction of the image's score pixels
  predicted as ``c`` (the model's own prediction, at its own resolution);
- the outline: ``M`` resized to the original ``h × w`` (bilinear, area averaging when
  shrinking) and thresholded at 1/2, then its contours (``cv2.findContours``), drawn in
  :data:`OUTLINE_BGR` over a dark halo so it shows on any colormap and photo.

A class that no pixel of the image is predicted as has ``pixel_share`` 0 and no outline; its
target was 0, so its heatmap is flat (all 0), and the ``note`` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np

from .images import Geometry

__all__ = [
    "FIELDS",
    "HALO_BGR",
    "OUTLINE_BGR",
    "Region",
    "describe",
    "draw_outline",
    "fields",
    "image_part",
    "region",
    "shares",
]

FIELDS = ("class", "label", "pixel_share", "note", "predicted")  # a region's answer, in order
OUTLINE_BGR = (255, 0, 255)  # magenta: in no OpenCV colormap a heatmap is drawn with by default
HALO_BGR = (0, 0, 0)


class Region(NamedTuple):
    """The region of one image's explained class."""

    cls: int
    share: float  # pixel_share of cls
    mask: np.ndarray  # bool [h, w]: the pixels of the original image predicted as cls
    shares: np.ndarray  # float64 [K]: every class's pixel_share


def image_part(geometry: Geometry, grid: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and columns of a ``grid`` (H', W') of scores over the graph input that the
    image covers (``geometry.content`` scaled by ``H'/H``, ``W'/W``; at least one of each)."""
    (hh, ww), (top, left, ch, cw) = geometry.size, geometry.content
    sy, sx = grid[0] / hh, grid[1] / ww
    r0, c0 = min(grid[0] - 1, round(top * sy)), min(grid[1] - 1, round(left * sx))
    r1, c1 = max(r0 + 1, round((top + ch) * sy)), max(c0 + 1, round((left + cw) * sx))
    return slice(r0, r1), slice(c0, c1)


def shares(predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """``[K]`` float64: the fraction of ``predicted`` (class indices) equal to each class."""
    counts = np.bincount(predicted.ravel(), minlength=num_classes)[:num_classes]
    return counts / max(1, predicted.size)


def _resize(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A 0/1 float mask at ``hw``, thresholded at 1/2 (area when shrinking, else bilinear)."""
    h, w = hw
    shrink = h * w < mask.shape[0] * mask.shape[1]
    way = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(mask.astype(np.float32), (w, h), interpolation=way) > 0.5


def region(scores: np.ndarray, cls: int, geometry: Geometry) -> Region:
    """The region of class ``cls`` in per-pixel ``scores`` ``[K, H', W']`` (the graph's
    ``logits`` for one image), for an image placed by ``geometry``."""
    rows, cols = image_part(geometry, scores.shape[-2:])
    predicted = scores[:, rows, cols].argmax(axis=0)
    every = shares(predicted, scores.shape[0])
    share = float(every[cls]) if 0 <= cls < every.size else 0.0
    return Region(int(cls), share, _resize(predicted == cls, geometry.original), every)


def draw_outline(
    image: np.ndarray,
    mask: np.ndarray,
    thickness: int | None = None,
    colour: tuple[int, int, int] = OUTLINE_BGR,
) -> np.ndarray:
    """A copy of ``image`` (BGR uint8 ``[h, w, 3]``) with the outline of ``mask`` (bool
    ``[h, w]``): each contour in ``colour`` (default :data:`OUTLINE_BGR`), ``thickness`` pixels
    wide (default: 1 per 250 pixels of the longer side, at least 2), over a halo 2 pixels
    wider."""
    out = image.copy()
    if not mask.any():
        return out
    t = thickness or max(2, round(max(mask.shape) / 250))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, HALO_BGR, t + 2, cv2.LINE_AA)
    cv2.drawContours(out, contours, -1, colour, t, cv2.LINE_AA)
    return out


def _label(c: int, labels: Sequence[str] | None) -> str:
    return labels[c] if labels and 0 <= c < len(labels) else str(c)


def fields(found: Region, labels: Sequence[str] | None, flat: bool, top: int = 5) -> dict[str, Any]:
    """A region's answer, the keys of :data:`FIELDS`: ``class``, ``label``, ``pixel_share``
    (rounded to 1e-6), a ``note`` where no pixel is the class (``flat``: the heatmap is), and
    ``predicted``: the ``top`` classes with the most pixels, most first, as ``{class, label,
    pixel_share}`` (classes with no pixel left out)."""
    c = found.cls
    out: dict[str, Any] = {"class": c, "label": _label(c, labels)}
    out["pixel_share"] = round(found.share, 6)
    if found.share == 0:
        out["note"] = f"no pixel of the image is predicted as {out['label']}" + (
            "; the heatmap is flat: nothing to explain" if flat else ""
        )
    order = [int(k) for k in np.argsort(-found.shares, kind="stable") if found.shares[k] > 0]
    out["predicted"] = [
        {"class": k, "label": _label(k, labels), "pixel_share": round(float(found.shares[k]), 6)}
        for k in order[: max(1, top)]
    ]
    return out


def describe(answer: dict[str, Any]) -> str:
    """A region's answer (:func:`fields`) in words: ``cat, 25.6% of the pixels``, or ``cat, no
    pixel predicted`` (for captions and summaries)."""
    share = answer["pixel_share"]
    if share == 0:
        return f"{answer['label']}, no pixel predicted"
    amount = "<0.1%" if share < 0.001 else f"{share:.1%}"
    return f"{answer['label']}, {amount} of the pixels"
