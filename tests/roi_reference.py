"""torchvision's RoIAlign (CPU kernel, ``aligned=False``, a fixed sampling ratio) and
``MultiScaleRoIAlign``'s level rule, written out as loops: per RoI, per bin, per sample, each of
the kernel's branches in Python on float32 scalars, vectorized over channels only. Differentiable
in the maps by torch autograd (the samples index them), so its gradients are the kernel's
backward. Independent of ``explain_export.builder.maths.roi_align``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

F32 = np.float32


def scale_of(feature_height: int, image_height: int) -> float:
    """A level's scale: the power of two nearest the ratio of heights (on a log scale)."""
    return 2.0 ** round(math.log2(feature_height / image_height))


def level_of(box: list[float], scales: list[float], canonical: int = 224, level: int = 4) -> int:
    """The FPN paper's level for a box, as an index into ``scales``; -1 for a negative area."""
    if len(scales) == 1:
        return 0
    x1, y1, x2, y2 = (F32(v) for v in box)
    area = F32((x2 - x1) * (y2 - y1))
    if area < 0:
        return -1
    with np.errstate(divide="ignore"):  # a zero area: log2(0) = -inf, the lowest level
        k = np.floor(F32(level) + np.log2(F32(np.sqrt(area)) / F32(canonical)) + F32(1e-6))
    k_min, k_max = -math.log2(scales[0]), -math.log2(scales[-1])
    return int(min(max(float(k), k_min), k_max) - k_min)


def bilinear(a: Tensor, y: np.float32, x: np.float32) -> Tensor:
    """One sample of ``a`` ``[C, H, W]`` at ``(y, x)``: ``[C]``."""
    height, width = a.shape[1], a.shape[2]
    if not (y >= -1.0 and y <= height and x >= -1.0 and x <= width):
        return a.new_zeros(a.shape[0])
    if y <= 0:
        y = F32(0)
    if x <= 0:
        x = F32(0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = F32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = F32(x_low)
    else:
        x_high = x_low + 1
    ly, lx = F32(y - F32(y_low)), F32(x - F32(x_low))
    hy, hx = F32(F32(1) - ly), F32(F32(1) - lx)
    return (
        float(hy * hx) * a[:, y_low, x_low]
        + float(hy * lx) * a[:, y_low, x_high]
        + float(ly * hx) * a[:, y_high, x_low]
        + float(ly * lx) * a[:, y_high, x_high]
    )


def roi_align_one(
    a: Tensor, box: list[float], scale: float, size: tuple[int, int], ratio: int
) -> Tensor:
    """One RoI ``(x1, y1, x2, y2)`` pooled from ``a`` ``[C, H, W]`` at ``scale``, ``[C, ph, pw]``
    for ``size = (ph, pw)`` and ``ratio²`` samples a bin."""
    s = F32(scale)
    x1, y1, x2, y2 = (F32(v) for v in box)
    start_x, start_y = F32(x1 * s), F32(y1 * s)
    roi_w = max(F32(F32(x2 * s) - start_x), F32(1))
    roi_h = max(F32(F32(y2 * s) - start_y), F32(1))
    ph, pw = size
    bin_h, bin_w = F32(roi_h / F32(ph)), F32(roi_w / F32(pw))
    g = F32(ratio)
    rows = []
    for p in range(ph):
        row = []
        for q in range(pw):
            total = a.new_zeros(a.shape[0])
            for i in range(ratio):
                y = F32(F32(start_y + F32(p) * bin_h) + F32(F32(i + 0.5) * bin_h) / g)
                for j in range(ratio):
                    x = F32(F32(start_x + F32(q) * bin_w) + F32(F32(j + 0.5) * bin_w) / g)
                    total = total + bilinear(a, y, x)
            row.append(total / (ratio * ratio))
        rows.append(torch.stack(row, -1))
    return torch.stack(rows, -2)


def multi_scale(
    features: list[Tensor],
    boxes: Tensor,
    batch: Tensor,
    scales: list[float],
    size: tuple[int, int],
    ratio: int,
    canonical: int = 224,
) -> Tensor:
    """``MultiScaleRoIAlign``: each RoI pooled at its level (``canonical``: the level rule's box
    size) from its image's map, ``[M, C, ph, pw]`` (zeros for a RoI at no level)."""
    out = []
    for box, n in zip(boxes.tolist(), batch.tolist(), strict=True):
        k = level_of(box, scales, canonical)
        if k < 0:
            out.append(features[0].new_zeros(features[0].shape[1], *size))
        else:
            out.append(roi_align_one(features[k][n], box, scales[k], size, ratio))
    return torch.stack(out)
