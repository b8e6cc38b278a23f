"""Greedy NMS as one operator of the graph: ``explain_export::greedy_nms``.

A two-stage detector's RPN keeps 1000 proposals: written as steps (:func:`.boxes.select`),
that is 1000 copies of the step in the graph, and an export that takes an hour. As one
operator, the graph holds it once and each format runs it as a loop:

- eager and ``torch.export``: the operator, whose kernel is :func:`steps` (a ``.pt2`` file
  needs this module imported to load: :mod:`.artifact.runtime` does);
- TorchScript: :func:`scripted`, the same steps in a scripted ``for`` loop
  (:func:`.lowering.script_graph` calls it in the operator's place);
- ONNX: :func:`onnx_translation`, an ONNX ``Loop`` over the same steps (onnxscript).

Each step: the best candidate left (the first of equal scores), then every candidate of its
class whose IoU with it is above the threshold, and itself, dropped. The IoU is
:func:`.boxes.box_iou`'s, op for op, so every format keeps the same boxes.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

__all__ = ["NAME", "greedy_nms", "onnx_translation", "scripted", "steps"]

NAME = "explain_export::greedy_nms"


@torch.library.custom_op(NAME, mutates_args=())
def greedy_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    keep: int,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    """``(index [N, keep], valid [N, keep])``: :func:`steps` as one operator."""
    return steps(boxes, scores, classes, keep, iou_threshold, score_threshold)


@greedy_nms.register_fake
def _shapes(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    keep: int,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    n = scores.shape[0]
    return (
        scores.new_empty((n, keep), dtype=torch.int64),
        scores.new_empty((n, keep), dtype=torch.bool),
    )


def steps(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    keep: int,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    """Class-aware greedy NMS, the first ``keep`` kept, as ``keep`` steps over candidates
    ``boxes [N, A, 4]``, ``scores [N, A]``, ``classes [N, A]`` (a candidate counts where its
    score is above ``score_threshold``): ``(index [N, keep], valid [N, keep])``."""
    n, a = scores.shape[0], scores.shape[1]
    neg = float("-inf")
    left = scores.masked_fill(~(scores > score_threshold), neg)
    positions = torch.arange(a, device=scores.device).expand(n, a)
    tiny = 1.1754943508222875e-38 if boxes.dtype == torch.float32 else 2.2250738585072014e-308
    area_b = (boxes[:, :, 2:] - boxes[:, :, :2]).prod(-1)
    picks, valid = [], []
    for _ in range(keep):
        best, index = left.max(dim=1)
        box = boxes.gather(1, index[:, None, None].expand(n, 1, 4))
        lo = torch.maximum(box[:, :, :2], boxes[:, :, :2])
        hi = torch.minimum(box[:, :, 2:], boxes[:, :, 2:])
        inter = (hi - lo).clamp_min(0).prod(-1)
        area_a = (box[:, :, 2:] - box[:, :, :2]).prod(-1)
        iou = inter / (area_a + area_b - inter).clamp_min(tiny)
        cls = classes.gather(1, index[:, None])
        gone = (iou > iou_threshold) & (classes == cls)
        left = left.masked_fill(gone | (positions == index[:, None]), neg)
        picks.append(index)
        valid.append(best > neg)
    return torch.stack(picks, 1), torch.stack(valid, 1)


@functools.cache
def scripted() -> Any:
    """The operator's steps as a TorchScript function (a ``for`` loop in the file)."""
    return torch.jit.script(steps)


def onnx_translation() -> dict[Any, Any]:
    """``{operator: its ONNX translation}`` for ``torch.onnx.export``'s
    ``custom_translation_table``: an ONNX ``Loop`` (:mod:`._nms_onnx`)."""
    from ._nms_onnx import greedy_nms_onnx

    def translate(
        boxes: Any,
        scores: Any,
        classes: Any,
        keep: int,
        iou_threshold: float,
        score_threshold: float,
    ) -> tuple[Any, Any]:
        picks, valid = greedy_nms_onnx(
            boxes,
            scores,
            classes,
            keep=keep,
            iou_threshold=iou_threshold,
            score_threshold=score_threshold,
        )
        return picks, valid

    return {torch.ops.explain_export.greedy_nms.default: translate}
