"""``--faithfulness`` for a detector: the four scores of each detection's map.

For detection ``j`` of image ``x`` (class ``c_j``, box ``b_j``, score ``s_j``, map ``m_j``), the
detector runs again on ``x ⊙ m_j`` (``m_j`` over every channel; ``N·D`` masked images, one per
row), through a second explainer of the same model (:func:`second_detector`). The detection of
``x ⊙ m_j`` that *is* detection ``j`` is the one of class ``c_j`` whose box overlaps ``b_j`` most,
if that IoU is at least :data:`MATCH_IOU` (pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``
takes the most overlapping box of any class, then checks its class); then

- ``score = s_j``;
- ``masked_score`` = the matched detection's score, 0 where none matches;
- ``complexity = mean(m_j)``;
- ``coherency = (pearson(m_j, m'_j) + 1) / 2``, ``m'_j`` the matched detection's map on
  ``x ⊙ m_j`` (0.5, no correlation, where none matches).

Padding rows (class −1) score 0 throughout. Every output is ``[N, D]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..errors import OptionError
from .detect_explainer import DetectionExplainer, HeadInputs
from .faithful import coherency
from .maths import graph_io
from .maths.boxes import box_iou
from .rcnn_explainer import TwoStageExplainer

__all__ = [
    "MATCH_IOU",
    "DetectionScores",
    "detection_scores",
    "detector_scoring",
    "second_detector",
]

MATCH_IOU = 0.5  # the least IoU of a masked image's detection with the box it must be


def second_detector(explainer: DetectionExplainer) -> DetectionExplainer:
    """The explainer of the masked images: ``explainer``'s model, detector, method, taps,
    ``D`` and NMS rule (an R-CNN's target), float ``[N,3,H,W]`` input. Refuses, in one line, a
    method with one map per image (no detection's map to score)."""
    if not explainer.per_detection:
        raise OptionError(
            "faithfulness",
            "{name} scores each detection's map, and {m} gives one map per image; pick gradcam "
            "or drop {name}",
            m=explainer.method.name,
        )
    if isinstance(explainer, TwoStageExplainer):  # no hooks: the graph runs the model's parts
        return TwoStageExplainer(
            explainer.model,
            explainer.detector,
            explainer.method,
            explainer.max_detections,
            explainer.score_threshold,
            explainer.iou_threshold,
            "float-nchw",
            explainer.input_size,
            explainer.target,
        ).to(explainer.mean.device)
    head = isinstance(explainer.taps[0], HeadInputs)  # the head's inputs, not named layers
    second = DetectionExplainer(
        explainer.model,
        explainer.detector,
        explainer.method,
        explainer.output,
        None if head else explainer.layers,
        explainer.max_detections,
        explainer.score_threshold,
        explainer.iou_threshold,
        "float-nchw",
        explainer.input_size,
        explainer.eps,
    )
    return second.to(explainer.mean.device)


def detection_scores(
    second: DetectionExplainer,
    image: Tensor,
    input_format: str,
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    heat: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(score, masked_score, complexity, coherency)``, each ``[N, D]``, of the detections
    ``boxes [N,D,4]``, ``scores``, ``classes [N,D]`` and their maps ``heat [N,D,H,W]`` found on
    the graph input ``image`` (the module's docstring says how)."""
    n, d, h, w = heat.shape
    x = graph_io.to_float_nchw(image, input_format).to(heat.dtype)
    masked = (x[:, None] * heat[:, :, None]).flatten(0, 1)  # [N·D, 3, H, W], row n·D + j
    boxes2, scores2, classes2, _, heat2 = second(masked)[:5]  # (an R-CNN's masks after)
    want = classes.reshape(-1, 1)
    iou = box_iou(boxes.reshape(-1, 1, 4).to(boxes2.dtype), boxes2)  # [N·D, D]
    iou = torch.where((classes2 == want) & (want >= 0), iou, torch.zeros_like(iou))
    best = iou.argmax(1, keepdim=True)  # [N·D, 1]
    hit = (iou.gather(1, best) >= MATCH_IOU).to(heat.dtype)  # [N·D, 1]
    masked_score = scores2.gather(1, best) * hit
    m2 = heat2.gather(1, best[:, :, None, None].expand(-1, 1, h, w)) * hit[:, :, None, None]
    real = (classes >= 0).to(heat.dtype)
    coherent = coherency(heat.reshape(-1, 1, h, w), m2)[:, 0].reshape(n, d) * real
    return scores, masked_score.reshape(n, d), heat.mean((2, 3)), coherent


class DetectionScores(nn.Module):
    """:func:`detection_scores` as the module a :class:`.DetectionExplainer` calls after its
    outputs (its ``scorer``): ``(image, boxes, scores, classes, heat) -> the four``."""

    def __init__(self, second: DetectionExplainer, input_format: str) -> None:
        super().__init__()
        self.second = second
        self.input_format = input_format

    def forward(
        self, image: Tensor, boxes: Tensor, scores: Tensor, classes: Tensor, heat: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return detection_scores(self.second, image, self.input_format, boxes, scores, classes, heat)


@contextlib.contextmanager
def detector_scoring(explainer: DetectionExplainer, faithfulness: bool) -> Iterator[None]:
    """Within: with ``faithfulness``, ``explainer`` returns the four scores after its outputs
    (its ``scorer``, :class:`DetectionScores` of :func:`second_detector`), taken off after."""
    if not faithfulness:
        yield
        return
    second = second_detector(explainer)
    explainer.scorer = DetectionScores(second, explainer.input_format)
    try:
        yield
    finally:
        explainer.scorer = None
        second.remove()
