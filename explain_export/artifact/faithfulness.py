"""Faithfulness scores of a heatmap: the pinned deletion/insertion protocol and the scores built
on the masked image (issue 30). NumPy and OpenCV only, no torch.

Images here are ``[H, W, C]`` arrays at the graph's input size (the caller converts from and to
the graph's layout); a heatmap ``m`` is ``[H, W]`` at the same size.

**Deletion and insertion** (Petsiuk et al., the RISE paper), as ``explain-eval`` runs them:

- pixels are ranked by ``m``, descending, by a stable sort (ties keep raster order);
- at step ``i = 0..n`` the first ``k_i = round(i·H·W/n)`` ranked pixels (Python's ``round``:
  half to even) are set to 0 (deletion), or taken from the image over its blur
  ``cv2.GaussianBlur(image, (11, 11), 5)`` (insertion; step 0 is the blur alone);
- ``s_i`` is the explained class's softmax probability on step ``i``'s image, and
  ``AUC = (Σ_i s_i − (s_0 + s_n)/2) / n`` (the trapezoid rule on ``[0, 1]``).

**Scores on the masked image** ``x ⊙ m`` (``m`` broadcast over the channels): with ``score``
the class's probability on ``x``, ``masked_score`` on ``x ⊙ m``, ``complexity = mean(m)`` and
``coherency = (pearson(m, m') + 1) / 2`` (``m'``: the same class's map of ``x ⊙ m``):

- ``average_drop = max(0, score − masked_score) / score``;
- ``increase_in_confidence = [masked_score > score]``;
- ``adcc = 3 / (1/coherency + 1/(1 − complexity) + 1/(1 − average_drop))`` (Poppi et al. 2021),
  0 where any of the three terms is 0.
"""

from __future__ import annotations

import numpy as np

from .contract import FAITHFULNESS_OUTPUTS

__all__ = [
    "BLUR_KERNEL",
    "BLUR_SIGMA",
    "DERIVED",
    "adcc",
    "annotate",
    "auc",
    "average_drop",
    "blurred",
    "changed",
    "coherency",
    "deletion_steps",
    "increase_in_confidence",
    "insertion_steps",
    "map_scores",
    "pixel_ranks",
    "step_counts",
]

BLUR_KERNEL = (11, 11)
BLUR_SIGMA = 5.0


def pixel_ranks(heatmap: np.ndarray) -> np.ndarray:
    """``[H, W]`` int64: each pixel's place when the map is sorted descending by a stable sort
    (0 = the most salient; equal values keep raster order)."""
    flat = np.asarray(heatmap, dtype=np.float64).ravel()
    order = np.argsort(-flat, kind="stable")
    ranks = np.empty_like(order)
    ranks[order] = np.arange(order.size)
    return ranks.reshape(np.shape(heatmap))


def step_counts(pixels: int, steps: int) -> np.ndarray:
    """``[steps + 1]``: ``k_i = round(i·pixels/steps)``, the pixels changed at step ``i``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return np.array([round(i * pixels / steps) for i in range(steps + 1)], dtype=np.int64)


def changed(heatmap: np.ndarray, steps: int) -> np.ndarray:
    """``[steps + 1, H, W, 1]`` bool: whether each pixel is changed at each step (the first
    ``k_i`` by :func:`pixel_ranks`); deletion and insertion change the same pixels."""
    ranks = pixel_ranks(heatmap)
    counts = step_counts(ranks.size, steps)
    return (ranks[None] < counts[:, None, None])[..., None]


def deletion_steps(
    image: np.ndarray, heatmap: np.ndarray, steps: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """``[steps + 1, H, W, C]``: ``image`` with its ``k_i`` most salient pixels set to 0
    (``mask``: :func:`changed`'s, where the caller has it)."""
    mask = changed(heatmap, steps) if mask is None else mask
    return np.where(mask, np.zeros((), image.dtype), image[None])


def blurred(image: np.ndarray) -> np.ndarray:
    """``cv2.GaussianBlur(image, (11, 11), 5)``: insertion's starting image."""
    import cv2

    return cv2.GaussianBlur(image, BLUR_KERNEL, BLUR_SIGMA)


def insertion_steps(
    image: np.ndarray, heatmap: np.ndarray, steps: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """``[steps + 1, H, W, C]``: ``image``'s ``k_i`` most salient pixels over its blur
    (``mask``: :func:`changed`'s, where the caller has it)."""
    mask = changed(heatmap, steps) if mask is None else mask
    return np.where(mask, image[None], blurred(image)[None])


def auc(scores: np.ndarray) -> np.ndarray:
    """``(Σ_i s_i − (s_0 + s_n)/2) / n`` over the last axis (``n + 1`` scores per curve)."""
    s = np.asarray(scores, dtype=np.float64)
    n = s.shape[-1] - 1
    if n < 1:
        raise ValueError("a curve needs at least two scores")
    return (s.sum(-1) - (s[..., 0] + s[..., -1]) / 2) / n


def average_drop(score: np.ndarray, masked_score: np.ndarray) -> np.ndarray:
    """``max(0, score − masked_score) / score`` (0 where ``score`` is 0)."""
    score = np.asarray(score, dtype=np.float64)
    drop = np.maximum(0.0, score - np.asarray(masked_score, dtype=np.float64))
    return np.divide(drop, score, out=np.zeros_like(drop), where=score > 0)


def increase_in_confidence(score: np.ndarray, masked_score: np.ndarray) -> np.ndarray:
    """``[masked_score > score]`` as 0/1 floats."""
    return (np.asarray(masked_score) > np.asarray(score)).astype(np.float64)


def coherency(heatmap: np.ndarray, masked_heatmap: np.ndarray) -> np.ndarray:
    """``(pearson(m, m') + 1) / 2`` per map over the last two axes; a constant map correlates
    with nothing (pearson 0)."""
    a = np.asarray(heatmap, dtype=np.float64)
    b = np.asarray(masked_heatmap, dtype=np.float64)
    a = a.reshape(*a.shape[:-2], -1)
    b = b.reshape(*b.shape[:-2], -1)
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    num = (a * b).sum(-1)
    r = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return (np.clip(r, -1.0, 1.0) + 1) / 2


def adcc(coherency: np.ndarray, complexity: np.ndarray, average_drop: np.ndarray) -> np.ndarray:
    """``3 / (1/coherency + 1/(1 − complexity) + 1/(1 − average_drop))``, the harmonic mean of
    the three; 0 where any term is 0."""
    terms = [
        np.asarray(coherency, dtype=np.float64),
        1 - np.asarray(complexity, dtype=np.float64),
        1 - np.asarray(average_drop, dtype=np.float64),
    ]
    shape = np.broadcast_shapes(*(t.shape for t in terms))
    terms = [np.broadcast_to(t, shape) for t in terms]
    ok = np.all([t > 0 for t in terms], axis=0)
    inv = sum(np.divide(1.0, t, out=np.zeros(shape), where=ok) for t in terms)
    return np.divide(3.0, inv, out=np.zeros(shape), where=ok)


DERIVED = ("average_drop", "increase_in_confidence", "adcc")  # the runner's, from the graph's four


def map_scores(
    score: float, masked_score: float, complexity: float, coherency: float
) -> dict[str, float]:
    """One map's four graph scores (``--faithfulness``) and the three derived from them:
    ``average_drop``, ``increase_in_confidence`` (0 or 1) and ``adcc``, rounded to 1e-6."""
    drop = average_drop(np.float64(score), np.float64(masked_score))
    out = {
        "score": score,
        "masked_score": masked_score,
        "complexity": complexity,
        "coherency": coherency,
        "average_drop": drop,
        "increase_in_confidence": increase_in_confidence(score, masked_score),
        "adcc": adcc(np.float64(coherency), np.float64(complexity), drop),
    }
    return {k: round(float(v), 6) for k, v in out.items()}


def annotate(maps: list[dict] | dict | None, scores: dict[str, np.ndarray] | None) -> None:
    """Give each map's entry (``explained``: one per map, in map order; a segmentation
    export's ``region``, its one map) its ``faithfulness``: :func:`map_scores` of the graph's
    ``scores`` (each ``[K]``, one per map); in place. Nothing happens without scores (an export
    without ``--faithfulness``) or entries."""
    if not maps or scores is None:
        return
    for j, entry in enumerate([maps] if isinstance(maps, dict) else maps):
        entry["faithfulness"] = map_scores(
            *(float(scores[name][j]) for name in FAITHFULNESS_OUTPUTS)
        )
