"""The benchmark's plot: median latency (ms per batch) against the batch size, one line per
variant, both axes logarithmic, drawn with OpenCV (no plotting library needed)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import cv2
import numpy as np

__all__ = ["plot", "title"]

# BGR, one per variant in .config.VARIANTS order; distinguishable in colour and in grey.
_COLORS = {
    "eager": (180, 119, 31),
    "eager_logits": (232, 199, 174),
    "torchscript": (44, 160, 44),
    "ort": (40, 39, 214),
    "ort_logits": (150, 152, 255),
    "compile": (189, 103, 148),
    "autograd": (14, 127, 255),
    "eager_gradcam": (127, 127, 127),
    "ort_gradcam": (34, 189, 188),
    "gradcam_numpy": (75, 86, 140),
    "ort_numpy": (0, 0, 128),
    "ort_cudagraph": (194, 119, 227),
}
_DASHED = {"eager_logits", "ort_logits"}
_LEGEND_STEP = 22  # px per legend entry


def _series(result: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    series = {}
    for name, v in result["variants"].items():
        points = [(int(b), m["median_ms"]) for b, m in v["batches"].items() if "median_ms" in m]
        if points:
            series[name] = sorted(points)
    return series


def _method_color(i: int) -> tuple[int, ...]:
    """The ``i``-th ``--methods`` variant's colour (BGR): TURBO, ten steps apart."""
    lut = cv2.applyColorMap(np.uint8([[(20 + 24 * i) % 256]]), cv2.COLORMAP_TURBO)
    return tuple(int(c) for c in lut[0, 0])


def _dashed_line(img: np.ndarray, p: tuple[int, int], q: tuple[int, int], color: Any) -> None:
    length = math.hypot(q[0] - p[0], q[1] - p[1])
    steps = max(int(length // 6), 1)
    for i in range(0, steps, 2):
        a = (p[0] + (q[0] - p[0]) * i // steps, p[1] + (q[1] - p[1]) * i // steps)
        j = min(i + 1, steps)
        b = (p[0] + (q[0] - p[0]) * j // steps, p[1] + (q[1] - p[1]) * j // steps)
        cv2.line(img, a, b, color, 2, cv2.LINE_AA)


def title(result: dict[str, Any]) -> str:
    """The plot's title: the model (its first clause), the method, the input size, the device
    and the threads, e.g. ``TinyResNet 64x64, gradcam, cpu, 2 threads: median ms per batch``."""
    c = result["config"]
    return (
        f"{c['model'].split(',')[0]} {c['input_size'][0]}x{c['input_size'][1]}, {c['method']}, "
        f"{c['device']}, {result['machine']['torch_threads']} threads: median ms per batch"
    )


def plot(result: dict[str, Any], size: tuple[int, int] = (720, 420)) -> np.ndarray:
    """Median ms per batch vs batch size (log-log), one line per variant, legend at the right
    (the image grows where the legend needs it; ``--methods`` variants dashed).

    Returns a BGR uint8 image.
    """
    series = _series(result)
    font, grey, black = cv2.FONT_HERSHEY_SIMPLEX, (200, 200, 200), (40, 40, 40)
    labels = [cv2.getTextSize(result["variants"][n]["label"], font, 0.42, 1)[0][0] for n in series]
    left, right, top, bottom = 62, max([230, *(56 + w for w in labels)]), 36, 48
    width = size[0] + right - 230
    height = max(size[1], top + bottom + 10 + _LEGEND_STEP * len(series))
    img = np.full((height, width, 3), 255, np.uint8)
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    cv2.putText(img, title(result), (left, 22), font, 0.45, black, 1, cv2.LINE_AA)
    if not series:
        cv2.putText(img, "nothing measured", (x0 + 20, (y0 + y1) // 2), font, 0.6, black, 1)
        return img
    batches = sorted({b for pts in series.values() for b, _ in pts})
    values = [ms for pts in series.values() for _, ms in pts]
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    hi = max(hi, lo + 1)
    bx_lo, bx_hi = math.log2(batches[0]), math.log2(batches[-1])
    span = bx_hi - bx_lo or 1.0

    def px(batch: int) -> int:
        if len(batches) == 1:
            return (x0 + x1) // 2
        return round(x0 + 20 + (x1 - x0 - 40) * (math.log2(batch) - bx_lo) / span)

    def py(ms: float) -> int:
        return round(y1 - (y1 - y0) * (math.log10(ms) - lo) / (hi - lo))

    for decade in range(lo, hi + 1):
        for mult in (1, 2, 5):
            ms = mult * 10.0**decade
            if ms > 10.0**hi:
                break
            y = py(ms)
            cv2.line(img, (x0, y), (x1, y), grey if mult == 1 else (235, 235, 235), 1)
            if mult == 1 or hi - lo <= 2:
                text = f"{ms:g}"
                tw = cv2.getTextSize(text, font, 0.4, 1)[0][0]
                cv2.putText(img, text, (x0 - 6 - tw, y + 4), font, 0.4, black, 1, cv2.LINE_AA)
    for b in batches:
        x = px(b)
        cv2.line(img, (x, y0), (x, y1), (235, 235, 235), 1)
        tw = cv2.getTextSize(str(b), font, 0.4, 1)[0][0]
        cv2.putText(img, str(b), (x - tw // 2, y1 + 16), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y0), (x1, y1), black, 1)
    cv2.putText(img, "batch size", ((x0 + x1) // 2 - 30, y1 + 36), font, 0.45, black, 1)
    cv2.putText(img, "ms", (x0 - 30, y0 - 8), font, 0.45, black, 1, cv2.LINE_AA)

    extra = itertools.count()
    for i, (name, points) in enumerate(series.items()):
        color = _COLORS.get(name) or _method_color(next(extra))
        dashed = name in _DASHED or name not in _COLORS
        xy = [(px(b), py(ms)) for b, ms in points]
        for p, q in itertools.pairwise(xy):
            if dashed:
                _dashed_line(img, p, q, color)
            else:
                cv2.line(img, p, q, color, 2, cv2.LINE_AA)
        for p in xy:
            cv2.circle(img, p, 4, color, -1, cv2.LINE_AA)
        ly = y0 + 10 + _LEGEND_STEP * i
        lx = x1 + 14
        if dashed:
            _dashed_line(img, (lx, ly), (lx + 26, ly), color)
        else:
            cv2.line(img, (lx, ly), (lx + 26, ly), color, 2, cv2.LINE_AA)
        cv2.circle(img, (lx + 13, ly), 4, color, -1, cv2.LINE_AA)
        label = result["variants"][name]["label"]
        cv2.putText(img, label, (lx + 34, ly + 4), font, 0.42, black, 1, cv2.LINE_AA)
    return img
