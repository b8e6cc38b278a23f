"""Greedy NMS as one operator of the graph: ``explain_export::greedy_nms``.

A two-stage detector's RPN keeps 1000 proposals: written as steps (:func:`.boxes.select`),
that is 1000 copies of the step in the graph, and an export that takes an hour. As one
operator, the graph holds it once and each format runs it as a loop:

- eager and ``torch.export``: the operator, whose kernel is :func:`steps` (a ``.pt2`` file
  needs this module imported to load: :mod:`.artifact.runtime` does);
- TorchScript: :func:`steps` itself, scripted with the graph into a ``for`` loop
  (:func:`.lowering.script_graph` calls it in the operator's place, :func:`inline_steps`);
- ONNX: :func:`onnx_translation`, an ONNX ``Loop`` over the same steps (onnxscript).

Each step: the best candidate left (the first of equal scores), then every candidate of its
class whose IoU with it is above the threshold, and itself, dropped. The IoU is
:func:`.boxes.box_iou`'s, op for op, so every format keeps the same boxes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["NAME", "greedy_nms", "inline_steps", "onnx_translation", "steps"]

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


def inline_steps(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose FX graphs call :func:`steps` where they call the operator:
    TorchScript scripts that into a loop; an exporter without custom translations (torch < 2.6
    for ONNX) unrolls it."""
    import copy

    module = copy.deepcopy(module)
    op = greedy_nms._opoverload
    for graph_module in module.modules():
        if not isinstance(graph_module, torch.fx.GraphModule):
            continue
        nodes = [n for n in graph_module.graph.nodes if n.target is op]
        for node in nodes:
            node.target = steps
        if nodes:
            graph_module.recompile()
    return module


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

    return {greedy_nms._opoverload: translate}
