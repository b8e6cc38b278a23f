"""One image pipeline for the runner and the server: fit → run → map back → blend.

``explain-run`` (:func:`.runner.run`) and ``explain-serve`` (:mod:`.serve.app`) take the same
steps, and it matters that they agree, so both call these: :func:`fit` per image (the decoded
BGR pixels to the graph's float input), :func:`infer` per batch (one model call), and
:func:`render` per image (top-k, the heatmap at the original resolution, the blend). Decoding
stays with the callers: files there, request bodies here, each with its own errors. No torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..errors import OptionError
from . import images, overlay

__all__ = [
    "Fitted",
    "OptionError",
    "OverlayOptions",
    "Rendered",
    "fit",
    "infer",
    "render",
    "softmax_topk",
]


class Fitted(NamedTuple):
    """A decoded image and its graph input."""

    bgr: np.ndarray  # uint8 [h, w, 3], the original pixels
    input: np.ndarray  # float32 [3, H, W], RGB in [0, 1]
    geometry: images.Geometry


@dataclass(frozen=True)
class OverlayOptions:
    """How images are fitted to the graph and the heatmap drawn over them, for the runner and
    the server alike (see :mod:`.images`, :mod:`.overlay`). Checked when made."""

    alpha: float = overlay.DEFAULT_ALPHA  # heat weight in the blend
    colormap: str = overlay.DEFAULT_COLORMAP  # an OpenCV colormap name
    seed_blend: bool = False  # rescale alpha·heat + image by its max, instead of saturating
    resize: str = "stretch"  # or "pad" (scale, keep the aspect, pad)
    max_pixels: int = images.DEFAULT_MAX_PIXELS  # larger images are refused

    def __post_init__(self) -> None:
        if not self.alpha >= 0:  # NaN too
            raise OptionError("alpha", "{name} must not be negative")
        if self.colormap.upper() not in overlay.COLORMAPS:
            names = ", ".join(sorted(overlay.COLORMAPS))
            raise OptionError(
                "colormap",
                "unknown {name} '{given}'; choose one of {names}",
                given=self.colormap,
                names=names,
            )
        if self.resize not in images.RESIZE_MODES:
            modes = ", ".join(images.RESIZE_MODES)
            raise OptionError(
                "resize",
                "{name} must be one of {modes}, not '{given}'",
                modes=modes,
                given=self.resize,
            )
        if self.max_pixels < 1:
            raise OptionError("max_pixels", "{name} must be at least 1")


class Rendered(NamedTuple):
    """One image explained: top-k, the heatmap at the original resolution, and its drawing."""

    topk: list[dict[str, Any]]
    heatmap: np.ndarray  # float32 [h, w] in [0, 1]
    heat: np.ndarray | None  # uint8 BGR [h, w, 3], the colour-mapped heatmap (if drawn)
    blended: np.ndarray | None  # uint8 BGR [h, w, 3] (if drawn)


def fit(bgr: np.ndarray, size: tuple[int, int], resize: str) -> Fitted:
    """The graph input for decoded pixels: fitted to ``size`` by ``resize`` (stretch or pad)."""
    return Fitted(bgr, *images.to_input(bgr, size, resize))


def infer(
    artifact: Any, inputs: Sequence[np.ndarray], class_index: Any = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One model call for a batch of graph inputs: ``(logits [K], heatmap [H, W])`` per image;
    ``class_index`` the class each heatmap explains, one int for all or one per image (None:
    the graph's default)."""
    logits, heatmaps = artifact(np.stack(inputs), class_index)
    return [(lg, hm[0]) for lg, hm in zip(logits, heatmaps, strict=True)]


def render(
    image: Fitted,
    logits: np.ndarray,
    heatmap: np.ndarray,
    topk: int,
    labels: Sequence[str] | None,
    blend: OverlayOptions,
    draw: bool = True,
) -> Rendered:
    """Top-k of ``logits``; ``heatmap`` (the graph's, at the input size) mapped back to the
    original resolution and, with ``draw``, blended over the original pixels."""
    full = images.map_back(heatmap, image.geometry)
    heat = blended = None
    if draw:
        heat, blended = overlay.overlay(
            image.bgr, full, blend.alpha, blend.colormap, blend.seed_blend
        )
    return Rendered(softmax_topk(logits, topk, labels), full, heat, blended)


def softmax_topk(logits: np.ndarray, k: int, labels: Sequence[str] | None) -> list[dict[str, Any]]:
    """Top-``k`` classes of one logit vector, with softmax scores (at least one)."""
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z) / np.exp(z).sum()
    order = np.argsort(-p)[: max(1, k)]
    return [
        {
            "class": int(i),
            "label": labels[i] if labels else str(int(i)),
            "score": round(float(p[i]), 6),
        }
        for i in order
    ]
