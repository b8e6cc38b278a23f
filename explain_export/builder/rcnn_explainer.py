"""The two-stage explainer: ``image -> (boxes, scores, classes, count, heatmap[, masks])``.

``forward(image)`` runs, in one graph (:mod:`.torchvision_rcnn` has the detector's steps):

1. the transform, the backbone, the RPN's proposals, RoIAlign of all ``P`` of them, the box
   head and the class-aware NMS: the ``D`` detections, with no gradient kept;
2. the explanation branch, on the ``D`` detections only: each one's pooled RoI ``R_j``
   (a copy of the row pooled in step 1) goes through the box head again and
   ``y_j = softmax(z_j)[c_j]``; one backward pass through the box head gives every
   ``∂y_j/∂R_j`` (rows are independent), and RoIAlign's adjoint
   (:meth:`.roi_align.RoiPooler.adjoint`) takes each to ``∂y_j/∂A_l`` on the maps the RoI heads
   read: a scatter of the bilinear weights, or, for Grad-CAM, its channel means alone. So the
   backward covers ``D`` RoIs, not the ``P`` proposals, and never the backbone;
3. Mask R-CNN: RoIAlign of the detections' boxes, the mask head and predictor, the class's mask
   ``σ(L_j)``, pasted at input size (:func:`.masks.paste`): ``masks [N, D, H, W]``. With
   ``target="mask"`` the explained score is ``y_j = Σ_uv L_j[u, v]·[σ(L_j[u, v]) > 0.5]`` (the
   detection's mask logits over its own mask) and step 2's gradient comes through the mask head
   instead;
4. the maps (:meth:`.DetectionExplainer._heatmap`): each level's map over the padded image is cut
   to the resized image, resized to the input and min-maxed; the levels are fused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..artifact.contract import DETECTION_OUTPUTS, FAITHFULNESS_OUTPUTS
from ..errors import OptionError
from .detect_explainer import DetectionExplainer, HeadInputs, SparseGradient, kept
from .inspect.tap import Tap
from .maths import graph_io
from .maths.masks import paste
from .maths.methods import Method
from .model.detectors import Detector
from .model.outputs import OutputKey
from .model.torchvision_rcnn import TwoStageDetector, run_masks

__all__ = ["TARGETS", "TwoStageExplainer"]

TARGETS = ("box", "mask")
ROI_MAPS = "roi_heads.box_roi_pool:input"  # the maps the RoI heads read: the default taps


class TwoStageExplainer(DetectionExplainer):
    """The explainer of a torchvision R-CNN (the module's docstring).

    Args:
        model: the detector, in eval mode.
        detector: what it is (:func:`.torchvision_rcnn.recognise`).
        method: the heatmap method's record; as for one-stage detectors.
        max_detections: ``D``, at most the model's ``detections_per_img``.
        score_threshold, iou_threshold: the RoI heads' rule (default: the model's own).
        input_format, input_size: as for one-stage detectors.
        target: ``box`` (the detection's class score) or ``mask`` (Mask R-CNN: its mask logits).
    """

    detector: TwoStageDetector

    def __init__(
        self,
        model: nn.Module,
        detector: TwoStageDetector,
        method: Method,
        max_detections: int = 10,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        input_format: str = "float-nchw",
        input_size: tuple[int, int] = (800, 800),
        target: str = "box",
    ) -> None:
        if target not in TARGETS:
            raise OptionError("target", "{name} must be box or mask for a two-stage detector")
        if target == "mask" and not detector.has_masks:
            raise OptionError("target", "{name} mask needs a Mask R-CNN; this model has no masks")
        super().__init__(
            model,
            detector,
            method,
            OutputKey(),
            None,
            max_detections,
            score_threshold,
            iou_threshold,
            input_format,
            input_size,
        )
        self.target = target

    @property
    def output_names(self) -> tuple[str, ...]:
        """The one-stage outputs, Mask R-CNN's ``masks``, then with a ``scorer`` the
        faithfulness scores."""
        masks = ("masks",) if self.detector.has_masks else ()
        scored = FAITHFULNESS_OUTPUTS if self.scorer is not None else ()
        return (*DETECTION_OUTPUTS, *masks, *scored)

    def _taps(
        self, model: nn.Module, detector: Detector, layers: Sequence[str] | None, grad: bool
    ) -> tuple[list[str], list[Tap | HeadInputs]]:
        """No hooks: the graph runs the model's parts itself and reads the RoI maps."""
        if layers is not None:
            raise OptionError(
                "layer",
                "a two-stage detector is explained at the maps its RoI heads read; leave {name} "
                "out",
            )
        return [ROI_MAPS], []

    def _detect(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor, tuple[Tensor, ...]]:
        """Step 1 with no gradient kept: ``(maps, proposals, pooled, (boxes, scores, classes,
        index, valid))``, the boxes in the resized image's frame."""
        det = self.detector
        with torch.no_grad():
            feats = det.features(self.model, x)
            maps = det.roi_maps(feats)
            proposals, pvalid = det.proposals(self.model, feats)
            pooled, logits, regression = det.classify(self.model, maps, proposals)
            cand = det.box_candidates(logits, regression, proposals, pvalid)
            found = kept(cand, self.max_detections, self.iou_threshold, self.score_threshold)
        return maps, proposals, pooled, found

    def detections(self, image: Tensor) -> tuple[Tensor, ...]:
        """``(boxes, scores, classes, count[, masks])``: what :meth:`forward` returns less the
        heatmap, computed as it computes them (the detector without its explanation)."""
        x = graph_io.to_float_nchw(image, self.input_format).to(self.mean.dtype)
        maps, _, _, (boxes, scores, classes, _, valid) = self._detect(x)
        out = (self.detector.to_input(boxes) * valid[..., None], scores, classes, valid.sum(dim=1))
        if not self.detector.has_masks:
            return out
        batch = torch.arange(x.shape[0], device=x.device).repeat_interleave(self.max_detections)
        with torch.no_grad():
            masks, _ = self._masks(maps, boxes, batch, classes, valid, image, False)
        return (*out, masks)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        """``(boxes, scores, classes, count, heatmap[, masks])`` for the graph input ``image``."""
        det, d = self.detector, self.max_detections
        x = graph_io.to_float_nchw(image, self.input_format).to(self.mean.dtype)
        maps, proposals, pooled, (boxes, scores, classes, index, valid) = self._detect(x)
        n, p = proposals.shape[:2]
        batch = torch.arange(n, device=x.device).repeat_interleave(d)
        grads: list[SparseGradient] | None = None
        want = self.method.needs_gradient
        with torch.inference_mode(False), torch.enable_grad():
            if classes.is_inference():  # run under inference_mode: autograd cannot save these
                classes, valid = classes.clone(), valid.clone()
            if want and self.target == "box":
                rows = (
                    torch.arange(n, device=x.device)[:, None] * p + index // (det.num_classes - 1)
                ).reshape(-1)
                grads = self._box_gradients(
                    maps, pooled[rows], proposals.reshape(-1, 4)[rows], batch, classes, valid
                )
            masks = None
            if det.has_masks:
                want_mask = want and self.target == "mask"
                masks, mask_grads = self._masks(
                    maps, boxes, batch, classes, valid, image, want_mask
                )
                grads = mask_grads if want_mask else grads
        count = valid.sum(dim=1)
        heat = self._heatmap(image, [a.detach() for a in maps], grads, valid)
        boxes = det.to_input(boxes).detach() * valid[..., None]
        out = (boxes, scores.detach(), classes, count, heat, *(() if masks is None else (masks,)))
        if self.scorer is None:
            return out
        return (*out, *self.scorer(image, boxes, scores.detach(), classes, heat))

    def _box_gradients(
        self,
        maps: list[Tensor],
        pooled: Tensor,
        rois: Tensor,
        batch: Tensor,
        classes: Tensor,
        valid: Tensor,
    ) -> list[SparseGradient]:
        """``∂y_j/∂A_l`` of each detection's class score, through its RoI alone."""
        leaf = pooled.detach().clone().requires_grad_(True)
        logits, _ = self.detector.box_scores(self.model, leaf)
        y = self.detector.score_of(logits, classes.reshape(-1)) * valid.reshape(-1)
        (g,) = torch.autograd.grad(y.sum(), leaf)
        assert self.detector.pooler is not None
        shapes = [(int(a.shape[2]), int(a.shape[3])) for a in maps]
        return self.detector.pooler.adjoint(g.detach(), shapes, rois, batch)

    def _masks(
        self,
        maps: list[Tensor],
        boxes: Tensor,
        batch: Tensor,
        classes: Tensor,
        valid: Tensor,
        image: Tensor,
        want: bool,
    ) -> tuple[Tensor, list[SparseGradient] | None]:
        """``masks [N, D, H, W]`` pasted at input size, and (``want``: the mask target's
        gradient) each detection's ``∂y_j/∂A_l`` through its mask RoI."""
        det = self.detector
        assert det.mask_pooler is not None
        rois = boxes.reshape(-1, 4).detach()
        with torch.set_grad_enabled(want):
            pooled = det.mask_pooler.pool([a.detach() for a in maps], rois, batch)
            leaf = pooled.detach().clone().requires_grad_(True) if want else pooled
            logits = run_masks(self.model, leaf, classes.reshape(-1))  # [N·D, s, s]
            probs = torch.sigmoid(logits)
        grads = None
        if want:
            y = (logits * (probs > 0.5)).sum((1, 2)) * valid.reshape(-1)
            (g,) = torch.autograd.grad(y.sum(), leaf)
            shapes = [(int(a.shape[2]), int(a.shape[3])) for a in maps]
            grads = det.mask_pooler.adjoint(g.detach(), shapes, rois, batch)
        size = graph_io.image_size(image, self.input_format)
        where = det.to_input(boxes).reshape(-1, 4)
        pasted = paste(probs.detach(), where.detach(), size)
        pasted = pasted.reshape(-1, self.max_detections, *size) * valid[..., None, None]
        return pasted, grads
