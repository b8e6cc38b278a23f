"""The ONNX form of :mod:`.nms_op`'s greedy NMS: one ``Loop`` of ``keep`` steps (onnxscript).

Each step is :func:`.nms_op.steps`', op for op: ``ArgMax`` (the first of equal scores), the
chosen box's IoU with every candidate (``max``/``min`` corners, ``ReLU`` of the sides, their
product, ``inter / max(union, tiny)``), and the candidates of its class above the threshold, and
itself, set to ``-inf``. The step's pick and whether it was a real one are written into column
``i`` of the two outputs.

No ``from __future__ import annotations`` here: onnxscript reads the annotations as types.
"""

from onnxscript import BOOL, FLOAT, INT64, script
from onnxscript import opset18 as op

__all__ = ["greedy_nms_onnx"]


@script()
def greedy_nms_onnx(
    boxes: FLOAT,
    scores: FLOAT,
    classes: INT64,
    keep: int,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[INT64, BOOL]:
    neg = op.Constant(value_float=float("-inf"))
    thr = op.Constant(value_float=score_threshold)
    left = op.Where(op.Greater(scores, thr), scores, neg)
    n = op.Shape(scores, start=0, end=1)
    a = op.Shape(scores, start=1, end=2)
    zero = op.Constant(value_int=0)
    one = op.Constant(value_int=1)
    positions = op.Unsqueeze(op.Range(zero, op.Squeeze(a), one), op.Constant(value_ints=[0]))
    k = op.Reshape(op.Constant(value_int=keep), op.Constant(value_ints=[1]))
    picks = op.Expand(op.Constant(value_ints=[0]), op.Concat(n, k, axis=0))
    valid = op.Expand(op.Constant(value_ints=[0]), op.Concat(n, k, axis=0))
    lo_b = op.Slice(boxes, [0], [2], [2])
    hi_b = op.Slice(boxes, [2], [4], [2])
    area_b = op.ReduceProd(op.Sub(hi_b, lo_b), [2], keepdims=0)
    for i in range(keep):
        # every outer tensor the body reads is carried through it, not read from outside:
        # ONNX Runtime's optimizer merges equal outer values and warns, at every session,
        # that it cannot rename them inside a Loop's body
        boxes = op.Identity(boxes)
        classes = op.Identity(classes)
        positions = op.Identity(positions)
        lo_b = op.Identity(lo_b)
        hi_b = op.Identity(hi_b)
        area_b = op.Identity(area_b)
        n = op.Identity(n)
        neg = op.Constant(value_float=float("-inf"))
        iou_t = op.Constant(value_float=iou_threshold)
        tiny = op.Constant(value_float=1.1754943508222875e-38)
        corner = op.Constant(value_ints=[1, 4])
        one_col = op.Constant(value_ints=[1])
        index = op.ArgMax(left, axis=1, keepdims=1)
        best = op.GatherElements(left, index, axis=1)
        at = op.Expand(op.Unsqueeze(index, [2]), op.Concat(n, corner, axis=0))
        box = op.GatherElements(boxes, at, axis=1)
        lo_a = op.Slice(box, [0], [2], [2])
        hi_a = op.Slice(box, [2], [4], [2])
        inter = op.ReduceProd(
            op.Relu(op.Sub(op.Min(hi_a, hi_b), op.Max(lo_a, lo_b))), [2], keepdims=0
        )
        area_a = op.ReduceProd(op.Sub(hi_a, lo_a), [2], keepdims=0)
        iou = op.Div(inter, op.Max(op.Sub(op.Add(area_a, area_b), inter), tiny))
        same = op.Equal(classes, op.GatherElements(classes, index, axis=1))
        gone = op.Or(op.And(op.Greater(iou, iou_t), same), op.Equal(positions, index))
        left = op.Where(gone, neg, left)
        column = op.Expand(op.Reshape(op.Cast(i, to=7), [1, 1]), op.Concat(n, one_col, axis=0))
        picks = op.ScatterElements(picks, column, index, axis=1)
        real = op.Cast(op.Greater(best, neg), to=7)
        valid = op.ScatterElements(valid, column, real, axis=1)
    return picks, op.Cast(valid, to=9)
