"""A detection artifact's detections, per image: boxes mapped back to the original image, named,
and drawn. numpy and OpenCV, no torch; the runner, the server and the Ray engine all list and
draw detections with these (as :mod:`.regions` does for segmentation).

The graph returns ``boxes [D, 4]`` (x1, y1, x2, y2 in the graph input's pixels, best first),
``scores [D]``, ``classes [D]`` and ``count``: rows ``j < count`` are detections, the rest
padding. An image placed by a :class:`.images.Geometry` (content ``top, left, ch, cw`` inside
the ``H × W`` input, original ``h × w``) maps an input point back by

    x' = (x - left) · w / cw,    y' = (y - top) · h / ch,

clipped to ``[0, w] × [0, h]``: with ``stretch`` (``top = left = 0``, ``ch, cw = H, W``) a
scale per axis, with ``pad`` one scale and the padding taken off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from .images import Geometry

__all__ = ["FIELDS", "boxes_back", "class_colour", "describe", "draw_boxes", "listed", "tag"]

FIELDS = ("box", "class", "label", "score")  # one detection's answer, in order
_HALO = (0, 0, 0)


def boxes_back(boxes: np.ndarray, geometry: Geometry) -> np.ndarray:
    """``[D, 4]`` boxes in graph-input pixels -> float64 ``[D, 4]`` in the original image's
    pixels (see the module's formula)."""
    top, left, ch, cw = geometry.content
    h, w = geometry.original
    out = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    out[:, 0::2] = np.clip((out[:, 0::2] - left) * (w / cw), 0, w)
    out[:, 1::2] = np.clip((out[:, 1::2] - top) * (h / ch), 0, h)
    return out


def listed(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    count: int,
    geometry: Geometry,
    labels: Sequence[str] | None,
) -> list[dict[str, Any]]:
    """The first ``count`` rows as ``{box, class, label, score}`` (:data:`FIELDS`): the box in
    the original image's pixels (:func:`boxes_back`, rounded to 0.01), the label None where the
    export has no labels; padding rows left out."""
    n = max(0, min(int(count), len(boxes)))
    back = boxes_back(boxes[:n], geometry)
    out = []
    for j in range(n):
        c = int(classes[j])
        label = labels[c] if labels and 0 <= c < len(labels) else None
        box = [round(float(v), 2) for v in back[j]]
        out.append({"box": box, "class": c, "label": label, "score": round(float(scores[j]), 6)})
    return out


def class_colour(c: int) -> tuple[int, int, int]:
    """A bright BGR colour for class ``c``, the same for every image (hue by the golden ratio)."""
    hue = int((c * 0.618033988749895 % 1.0) * 180)
    hsv = np.array([[[hue, 220, 255]]], np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def tag(detection: dict[str, Any]) -> str:
    """``label score`` (``person 0.91``); the class number where there is no label."""
    label = detection["label"] if detection["label"] is not None else str(detection["class"])
    return f"{label} {detection['score']:.2f}"


def draw_boxes(image: np.ndarray, found: Sequence[dict[str, Any]]) -> np.ndarray:
    """A copy of ``image`` (BGR uint8 ``[h, w, 3]``) with each detection's box (in its pixels,
    ``found`` as :func:`listed` gives it) in its class's colour over a dark halo, and its
    label and score on a filled tag above the box (inside it where the box touches the top)."""
    out = image.copy()
    side = max(image.shape[:2])
    t = max(1, round(side / 400))
    scale = max(0.4, side / 1600)
    for d in found:
        x1, y1, x2, y2 = (round(v) for v in d["box"])
        colour = class_colour(d["class"])
        cv2.rectangle(out, (x1, y1), (x2, y2), _HALO, t + 2, cv2.LINE_AA)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, t, cv2.LINE_AA)
        text = tag(d)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, t)
        ty = y1 - base - 2 if y1 - th - base - 4 >= 0 else y1 + th + 2
        cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 4, ty + base), colour, -1)
        cv2.putText(out, text, (x1 + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, _HALO, t, cv2.LINE_AA)
    return out


def describe(found: Sequence[dict[str, Any]], shown: int = 3) -> str:
    """Detections in words, for the console and the sheet: ``3 detections: person (0.91), dog
    (0.80), car (0.55)`` (the first ``shown``, then ``...``), or ``no detections``."""
    if not found:
        return "no detections"
    named = ", ".join(f"{d['label'] or d['class']} ({d['score']:.2f})" for d in found[:shown])
    more = ", ..." if len(found) > shown else ""
    word = "detection" if len(found) == 1 else "detections"
    return f"{len(found)} {word}: {named}{more}"
