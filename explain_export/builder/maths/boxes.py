"""Boxes as pure tensor functions: corner form, overlap, and the greedy selection (NMS) as a
fixed number of steps, so that it exports with static shapes.

Boxes are ``x1, y1, x2, y2`` in input pixels (``[..., 4]``). :func:`select` is greedy
non-maximum suppression written as ``D`` steps: take the best candidate left, suppress every
candidate of its class that overlaps it by more than the threshold (and itself), repeat. Greedy
NMS keeps boxes in exactly that order (it sorts by score, keeps the first, suppresses what
overlaps it, moves to the next unsuppressed), so the ``D`` picks are its first ``D`` kept boxes,
and ``D`` steps over ``A`` candidates cost ``D·A`` overlaps rather than NMS's ``A²``. Each step
is an ``argmax``, a ``gather`` and an elementwise overlap, without torchvision. The steps are
one operator of the graph (:mod:`...nms_op`), held once and run as a loop in every format.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ...nms_op import greedy_nms

__all__ = [
    "Selected",
    "box_iou",
    "clip_to",
    "cxcywh_to_xyxy",
    "decode_deltas",
    "select",
]


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Centre, width, height ``[..., 4]`` -> corners ``x1, y1, x2, y2``.

    Example:
        >>> cxcywh_to_xyxy(torch.tensor([[10.0, 20.0, 4.0, 6.0]])).tolist()
        [[8.0, 17.0, 12.0, 23.0]]
    """
    xy, wh = boxes[..., :2], boxes[..., 2:4]
    return torch.cat([xy - wh / 2, xy + wh / 2], dim=-1)


def decode_deltas(
    codes: Tensor, anchors: Tensor, weights: tuple[float, float, float, float], clip: float
) -> Tensor:
    r"""Boxes from regression ``codes [..., 4]`` at ``anchors [..., 4]`` (corners), by the rule
    of torchvision's ``BoxCoder``: with anchor size ``s`` and centre ``c``, the box's centre is
    :math:`c + (d_{xy}/w_{xy})\,s` and its size :math:`s\,\exp(\min(d_{wh}/w_{wh}, clip))`.

    Example:
        >>> decode_deltas(torch.zeros(1, 4), torch.tensor([[0.0, 0, 4, 2]]), (1, 1, 1, 1), 4.1)
        tensor([[0., 0., 4., 2.]])
    """
    size = anchors[..., 2:] - anchors[..., :2]
    ctr = anchors[..., :2] + 0.5 * size
    wx, wy, ww, wh = weights
    d_xy = codes[..., :2] / torch.tensor([wx, wy], dtype=codes.dtype, device=codes.device)
    d_wh = codes[..., 2:] / torch.tensor([ww, wh], dtype=codes.dtype, device=codes.device)
    c = d_xy * size + ctr
    half = 0.5 * (torch.exp(d_wh.clamp(max=clip)) * size)
    return torch.cat([c - half, c + half], -1)


def clip_to(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """``boxes [..., 4]`` clipped to an image of ``size`` ``(h, w)``: x in ``[0, w]``, y in
    ``[0, h]``."""
    h, w = size
    lo = torch.zeros(4, dtype=boxes.dtype, device=boxes.device)
    hi = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(torch.maximum(boxes, lo), hi)


def box_iou(box: Tensor, boxes: Tensor) -> Tensor:
    r"""Intersection over union of ``box`` ``[N, 1, 4]`` with each of ``boxes`` ``[N, A, 4]``:
    :math:`|a \cap b| / (|a| + |b| - |a \cap b|)`, ``[N, A]`` (0 where both are empty).

    Example:
        >>> box_iou(torch.tensor([[[0.0, 0, 2, 2]]]), torch.tensor([[[1.0, 0, 3, 2]]])).tolist()
        [[0.3333333432674408]]
    """
    lo = torch.maximum(box[..., :2], boxes[..., :2])
    hi = torch.minimum(box[..., 2:], boxes[..., 2:])
    inter = (hi - lo).clamp_min(0).prod(-1)
    area_a = (box[..., 2:] - box[..., :2]).prod(-1)
    area_b = (boxes[..., 2:] - boxes[..., :2]).prod(-1)
    union = area_a + area_b - inter
    return inter / union.clamp_min(torch.finfo(boxes.dtype).tiny)


class Selected(NamedTuple):
    """The kept candidates, best first: ``index`` int64 ``[N, D]`` into the candidates, and
    ``valid`` bool ``[N, D]`` (False on padding rows, where fewer than ``D`` were kept)."""

    index: Tensor
    valid: Tensor


def select(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    keep: int,
    iou_threshold: float,
    score_threshold: float,
) -> Selected:
    """Class-aware greedy NMS, the first ``keep`` kept: candidates ``boxes [N, A, 4]``,
    ``scores [N, A]`` and ``classes [N, A]``; a candidate counts if its score is above
    ``score_threshold``, and is suppressed by a kept one of the same class whose IoU with it is
    above ``iou_threshold`` (as ``torchvision.ops.batched_nms``). One operator of the graph
    (:mod:`...nms_op`, its steps :func:`...nms_op.steps`): a loop in every format, not ``keep``
    copies of the step.

    Example:
        >>> boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]]])
        >>> picked = select(boxes, torch.tensor([[0.9, 0.8, 0.7]]), torch.zeros(1, 3), 3, 0.5, 0.1)
        >>> picked.index.tolist(), picked.valid.tolist()
        ([[0, 2, 0]], [[True, True, False]])
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    return Selected(*greedy_nms(boxes, scores, classes, keep, iou_threshold, score_threshold))
