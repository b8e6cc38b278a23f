"""Colour maps, blends and the sheet's rows (original | heatmap | overlay, or original | one
overlay per class of a top-k export), in uint8 OpenCV.

Colour order: every image here is **BGR** (OpenCV's order, what ``cv2.imread`` gives and
``cv2.imwrite`` expects). Heatmaps are float ``[h, w]`` in [0, 1].

Blends, with ``heat = colormap(round(255·m))``:

- default: ``overlay = saturate(alpha·heat + image)`` (``cv2.addWeighted``, rounded, clipped
  to 255);
- seed-exact (the article): ``s = alpha·heat + image; s = s / max(s); overlay = uint8(255·s)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = [
    "COLORMAPS",
    "DEFAULT_ALPHA",
    "DEFAULT_COLORMAP",
    "blend",
    "colorize",
    "colormap_id",
    "encode_png",
    "levels",
    "overlay",
    "seed_blend",
    "sheet_row",
    "stack_rows",
]

COLORMAPS: dict[str, int] = {
    name[len("COLORMAP_") :]: getattr(cv2, name)
    for name in dir(cv2)
    if name.startswith("COLORMAP_")
}
DEFAULT_ALPHA = 0.4
DEFAULT_COLORMAP = "JET"


def colormap_id(name: str) -> int:
    """OpenCV's colormap constant for a name such as ``JET`` or ``viridis``."""
    key = name.upper()
    if key not in COLORMAPS:
        raise ValueError(f"unknown colormap '{name}'; choose one of {', '.join(sorted(COLORMAPS))}")
    return COLORMAPS[key]


def levels(heatmap: np.ndarray) -> np.ndarray:
    """``[h, w]`` in [0, 1] -> the 8-bit heatmap ``round(255·m)`` (uint8)."""
    return np.round(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)


def colorize(heatmap: np.ndarray, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """``[h, w]`` in [0, 1] -> BGR uint8 ``[h, w, 3]``: ``applyColorMap(round(255·m))``."""
    return cv2.applyColorMap(levels(heatmap), colormap_id(colormap))


def encode_png(image: np.ndarray, compression: int = 1) -> bytes:
    """A uint8 image (gray, or BGR as OpenCV writes it) as PNG bytes."""
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def blend(image: np.ndarray, heat: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """``saturate(alpha·heat + image)`` for BGR uint8 images of one size."""
    return cv2.addWeighted(heat, alpha, image, 1.0, 0.0)


def seed_blend(image: np.ndarray, heat: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """The article's blend: ``s = alpha·heat + image; s = s / max(s); uint8(255·s)``."""
    s = alpha * heat.astype(np.float32) + image.astype(np.float32)
    s = s / max(float(s.max()), 1e-12)
    return (255.0 * s).astype(np.uint8)


def overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    alpha: float = DEFAULT_ALPHA,
    colormap: str = DEFAULT_COLORMAP,
    seed: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Colour ``heatmap`` (same ``h × w`` as ``image``) and blend it; returns (heat, overlay)."""
    heat = colorize(heatmap, colormap)
    return heat, (seed_blend if seed else blend)(image, heat, alpha)


def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    width = max(1, round(w * height / h))
    shrink = height < h
    return cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def _text(image: np.ndarray, text: str, y: int, scale: float) -> None:
    cv2.putText(image, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def sheet_row(
    panels: list[np.ndarray],
    caption: str,
    height: int = 200,
    gap: int = 6,
    captions: Sequence[str] | None = None,
) -> np.ndarray:
    """One row of the sheet: the panels scaled to ``height`` side by side, a caption above;
    with ``captions``, one more line above the panels naming each (cut at its width)."""
    scaled = [_fit_height(p, height) for p in panels]
    width = sum(p.shape[1] for p in scaled) + gap * (len(scaled) - 1)
    strip, line = 30, 22 if captions else 0
    row = np.full((strip + line + height, width, 3), 255, np.uint8)
    x = 0
    for i, p in enumerate(scaled):
        row[strip + line :, x : x + p.shape[1]] = p
        if captions and captions[i]:
            cell = np.full((line, p.shape[1], 3), 255, np.uint8)  # the text clipped to its panel
            _text(cell, captions[i], 16, 0.5)
            row[strip : strip + line, x : x + p.shape[1]] = cell
        x += p.shape[1] + gap
    _text(row, caption, 21, 0.6)
    return row


def stack_rows(rows: list[np.ndarray], gap: int = 10) -> np.ndarray:
    """Rows one under another on white, left-aligned."""
    width = max(r.shape[1] for r in rows)
    height = sum(r.shape[0] for r in rows) + gap * (len(rows) + 1)
    sheet = np.full((height, width + 2 * gap, 3), 255, np.uint8)
    y = gap
    for r in rows:
        sheet[y : y + r.shape[0], gap : gap + r.shape[1]] = r
        y += r.shape[0] + gap
    return sheet
