"""The deletion/insertion protocol written out directly (issue 30): a Python loop over pixels
and steps, the independent reference ``explain_export.artifact.faithfulness`` is tested
against."""

from __future__ import annotations

import cv2
import numpy as np


def reference_steps(image: np.ndarray, heatmap: np.ndarray, steps: int, insertion: bool):
    """``[steps + 1, H, W, C]``: rank pixels one by one (descending, ties in raster order),
    change the first ``round(i·H·W/steps)`` of them at step ``i``."""
    h, w = heatmap.shape
    values = [(-float(heatmap[p // w, p % w]), p) for p in range(h * w)]
    ranked = [p for _, p in sorted(values)]
    base = cv2.GaussianBlur(image, (11, 11), 5) if insertion else image
    out = []
    for i in range(steps + 1):
        k = round(i * h * w / steps)
        step = base.copy()
        for p in ranked[:k]:
            step[p // w, p % w] = image[p // w, p % w] if insertion else 0
        out.append(step)
    return np.stack(out)
