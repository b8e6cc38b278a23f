"""Whether a detection file computes what eager computes: one case's outputs compared row by row.

- The same ``classes`` in every row, each real detection's box within IoU 0.99 of eager's (or
  its corners within 0.05 pixels: a box of no area has no IoU) and its score within 1e-3;
- every map within the heatmap limit (1e-4);
- Mask R-CNN: each real detection's mask, taken at 0.5, within IoU 0.99 of eager's (a box corner
  on a pixel's edge may paste the mask one pixel over in another runtime).

Greedy NMS breaks ties by order, and a backend's rounding may order two candidates scored within
1e-5 of each other the other way (a random-init head's scores crowd near 0.5). Where the first
row that differs is such a tie (or a candidate within 1e-5 of the threshold), the image is
compared up to that row, and the row counts the tie (``ties``); any other difference fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ...artifact.contract import FAITHFULNESS_OUTPUTS
from ..maths.boxes import box_iou
from .verify import HEATMAP_TOL, SCORES_TOL, Case

__all__ = [
    "BOX_ATOL",
    "BOX_IOU_MIN",
    "FLOAT64_RULE",
    "MASK_IOU_MIN",
    "SCORE_TIE",
    "SCORE_TOL",
    "DetectionRow",
    "compare",
    "compared_rows",
    "format_rows",
]

BOX_IOU_MIN = 0.99
BOX_ATOL = 0.05  # pixels: boxes whose corners agree this well are the same box (a float32
# ResNet-50 detector moves corners by ~0.01 px between runtimes; a box of no area has no IoU)
SCORE_TOL = 1e-3
MASK_IOU_MIN = 0.99
SCORE_TIE = 1e-5  # candidates scored this close may swap places between backends
FLOAT64_RULE = (
    "where only the heatmap fails: max |file - float64 eager| <= max(limit, 4·Y), Y = eager "
    "float32's largest heatmap error against float64 eager over the cases (.detection64)"
)


@dataclass(frozen=True)
class DetectionRow:
    """One file against eager on one case: how many detections, and the worst of each part."""

    format: str
    input: str
    batch: int
    count: int  # real detections in the case, over its images
    same_detections: bool  # every row agrees, or up to a tie (see compared_rows)
    box_iou_min: float  # the smallest IoU of a real detection's box with eager's (1: none)
    score_err: float
    heatmap_err: float
    ok: bool
    ties: int = 0  # images whose detections part at a tie (compared up to it)
    float64: dict[str, float] | None = None  # judged against float64 eager (.detection64)
    mask_iou_min: float | None = None  # Mask R-CNN: the smallest IoU of a mask with eager's
    scores_err: float | None = None  # --faithfulness: the four scores' max |diff|, rows compared

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row_agrees(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], n: int, j: int) -> bool:
    """Row ``j`` of image ``n``: the same class, and for a real detection the same box (IoU, or
    the corners within :data:`BOX_ATOL` for a box of no area) and score."""
    if got["classes"][n, j] != ref["classes"][n, j]:
        return False
    if ref["classes"][n, j] < 0:
        return True
    want, have = torch.from_numpy(ref["boxes"][n, j]), torch.from_numpy(got["boxes"][n, j])
    iou = float(box_iou(want.reshape(1, 1, 4), have.reshape(1, 1, 4)))
    corners = float((want - have).abs().max())
    score = abs(float(got["scores"][n, j]) - float(ref["scores"][n, j]))
    return (iou >= BOX_IOU_MIN or corners <= BOX_ATOL) and score <= SCORE_TOL


def _found_later(x: dict[str, np.ndarray], y: dict[str, np.ndarray], n: int, j: int) -> bool:
    """Whether ``x``'s detection ``j`` (class and box) is one of ``y``'s later rows."""
    box = torch.from_numpy(x["boxes"][n, j]).reshape(1, 1, 4)
    for k in range(j + 1, y["classes"].shape[1]):
        if y["classes"][n, k] == x["classes"][n, j]:
            other = torch.from_numpy(y["boxes"][n, k]).reshape(1, 1, 4)
            if float(box_iou(box, other)) >= BOX_IOU_MIN:
                return True
    return False


def _tied(
    got: dict[str, np.ndarray], ref: dict[str, np.ndarray], n: int, j: int, threshold: float
) -> bool:
    """Whether the first row that differs, ``j``, is a tie, which greedy NMS may break either
    way: two different candidates scored within :data:`SCORE_TIE` of each other (one of them is
    a later row of the other list, or ``j`` is the last row), or a candidate within it of the
    threshold against a padding row."""
    a, b = float(got["scores"][n, j]), float(ref["scores"][n, j])
    real_a, real_b = got["classes"][n, j] >= 0, ref["classes"][n, j] >= 0
    if not (real_a and real_b):
        return max(a, b) <= threshold + SCORE_TIE
    last = j == ref["classes"].shape[1] - 1
    swapped = last or _found_later(got, ref, n, j) or _found_later(ref, got, n, j)
    return abs(a - b) <= SCORE_TIE and swapped


def compared_rows(
    got: dict[str, np.ndarray], ref: dict[str, np.ndarray], threshold: float
) -> tuple[np.ndarray, bool, int]:
    """``(rows [N, D] to compare, whether every image agrees, how many images tie)``: per image,
    every row where all agree; up to the first differing row where that row is a tie
    (:func:`_tied`: from there the two greedy paths may part, and both are right); else up to
    that row, and the image disagrees."""
    n, d = ref["classes"].shape
    rows = np.zeros((n, d), dtype=bool)
    agree, ties = True, 0
    for i in range(n):
        first = next((j for j in range(d) if not _row_agrees(got, ref, i, j)), d)
        rows[i, :first] = True
        if first < d:
            tie = _tied(got, ref, i, first, threshold)
            ties += tie
            agree = agree and tie
    return rows, agree, ties


def compare(
    fmt: str,
    case: Case,
    got: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    threshold: float = 0.0,
) -> DetectionRow:
    """One file's outputs against eager's on ``case`` (the module's docstring says the rule);
    ``threshold``: the export's score threshold (a candidate on it is a tie)."""
    rows, same, ties = compared_rows(got, ref, threshold)
    shown = rows.copy()  # the rows compared, and where an image disagrees, its first other row
    for n in range(rows.shape[0]):
        first = int(rows[n].sum())
        if (
            not same
            and first < rows.shape[1]
            and got["classes"][n, first] == ref["classes"][n, first]
        ):
            shown[n, first] = True
    real = shown & (ref["classes"] >= 0)
    iou_min, score_err = 1.0, 0.0
    if real.any():
        want, have = torch.from_numpy(ref["boxes"]), torch.from_numpy(got["boxes"])
        ious = box_iou(want.reshape(-1, 1, 4), have.reshape(-1, 1, 4)).reshape(real.shape)
        same_corners = (want - have).abs().amax(-1) <= BOX_ATOL  # a box of no area has no IoU
        ious = torch.where(same_corners, 1.0, ious)
        iou_min = float(ious[torch.from_numpy(real)].min())
        score_err = float(np.abs(got["scores"] - ref["scores"])[real].max())
    heat = np.abs(got["heatmap"].astype(np.float64) - ref["heatmap"])
    if heat.shape[1] == rows.shape[1]:  # a map per detection: the rows compared
        heat = heat[rows] if rows.any() else np.zeros(1)
    heat_err = float(heat.max())
    ok = same and iou_min >= BOX_IOU_MIN and score_err <= SCORE_TOL and heat_err <= HEATMAP_TOL
    mask_iou = _mask_iou_min(got, ref, real) if "masks" in ref else None
    ok = ok and (mask_iou is None or mask_iou >= MASK_IOU_MIN)
    scores_err = None
    if FAITHFULNESS_OUTPUTS[0] in ref:  # each compared row's four scores
        diffs = [np.abs(got[k].astype(np.float64) - ref[k])[rows] for k in FAITHFULNESS_OUTPUTS]
        scores_err = max((float(x.max()) for x in diffs if x.size), default=0.0)
        ok = ok and scores_err <= SCORES_TOL
    count = int(ref["count"].sum())
    batch = case.image.shape[0]
    return DetectionRow(
        fmt, case.label, batch, count, same, iou_min, score_err, heat_err, ok, ties,
        mask_iou_min=mask_iou, scores_err=scores_err,
    )  # fmt: skip


def _mask_iou_min(
    got: dict[str, np.ndarray], ref: dict[str, np.ndarray], real: np.ndarray
) -> float:
    """The smallest IoU of a real detection's mask (``> 0.5``) with eager's; 1 where both are
    empty or there is none."""
    a, b = got["masks"][real] > 0.5, ref["masks"][real] > 0.5  # [R, H, W]
    if not a.size:
        return 1.0
    inter = (a & b).sum((1, 2))
    union = (a | b).sum((1, 2))
    return float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).min())


def _same_word(row: dict[str, Any]) -> str:
    if not row["same_detections"]:
        return "NO"
    return "tie" if row.get("ties") else "yes"


def _float64_note(check: dict[str, float] | None) -> str:
    if not check:
        return ""
    return (
        f"  (vs float64: heatmap {check['heatmap_err']:.1e}/{check['heatmap_limit']:.1e}, "
        f"Y {check['eager_heatmap_err']:.1e})"
    )


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The parity rows (:meth:`DetectionRow.to_dict`) as a table, with the rule under it."""
    scored = any(r.get("scores_err") is not None for r in rows)  # --faithfulness
    head = (
        f"{'format':<12}{'input':<28}{'batch':>5}{'dets':>6}  {'same':<5}"
        f"{'box IoU':>9}{'score':>10}{'heatmap':>10}"
        + (f"{'scores':>10}" if scored else "")
        + "  ok"
    )
    lines = [head]
    for r in rows:
        extra = f"{r['scores_err']:>10.1e}" if scored else ""
        lines.append(
            f"{r['format']:<12}{r['input']:<28}{r['batch']:>5}{r['count']:>6}  "
            f"{_same_word(r):<5}{r['box_iou_min']:>9.4f}"
            f"{r['score_err']:>10.1e}{r['heatmap_err']:>10.1e}{extra}  "
            f"{'ok' if r['ok'] else 'FAIL'}" + _float64_note(r.get("float64"))
        )
    lines.append(
        f"limits: the same classes, box IoU >= {BOX_IOU_MIN}, score within {SCORE_TOL:g}, "
        f"heatmap within {HEATMAP_TOL:g}; 'tie': an image's detections part at two "
        f"candidates scored within {SCORE_TIE:g} (compared up to there)"
        + (f"; faithfulness scores within {SCORES_TOL:g} on the rows compared" if scored else "")
    )
    if any(r.get("float64") for r in rows):
        lines.append(f"  float64: {FLOAT64_RULE}")
    return "\n".join(lines)
