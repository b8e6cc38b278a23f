"""The detection explainer: ``image -> (boxes, scores, classes, count, heatmap)``, one graph.

``forward(image)`` runs, in one pass:

1. ``x = (image - mean) / std`` (YOLO: the [0, 1] image as it is, no op in the graph);
2. the detector, while the taps keep the maps ``A_l`` the head reads (each a leaf, so only the
   part of the model after them is differentiated);
3. the candidates (:meth:`.detectors.Detector.candidates`) and greedy class-aware NMS, the
   first ``D`` kept (:func:`.boxes.select`): boxes, scores, classes, ``count``; padding rows
   have class −1, score 0 and a zero box;
4. per detection ``j``, its score ``y_j`` as the model outputs it
   (:meth:`.detectors.Detector.score`), and ``∂y_j/∂A_l`` by one backward pass each from the
   head's output to the taps (the backbone runs once);
5. the method's map of each tap, for each detection (``gradcam``:
   ``ReLU(Σ_k α_k A_k)``, ``α_k = mean_ij ∂y_j/∂A_k``), resized and min-maxed; several taps are
   fused as repeated ``--layer`` maps are (:func:`.heads.fuse`): ReLU, resize and min-max each,
   then the mean, min-maxed again. Padding rows' maps are 0. A class-free method (``eigencam``,
   ``sum``) gives one map per image, ``[N, 1, H, W]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..artifact.contract import DETECTION_OUTPUTS, FAITHFULNESS_OUTPUTS
from ..errors import OptionError
from .inspect.class_branch import WindowGradient, window_gradients
from .inspect.tap import Tap, TapSpec, resolve_module
from .maths import graph_io, heads
from .maths.boxes import select
from .maths.methods import Method, Needs, Terms
from .model.detectors import Candidates, Detector
from .model.outputs import OutputKey

__all__ = ["DetectionExplainer", "HeadInputs", "SparseGradient", "kept"]


class SparseGradient(Protocol):
    """A per-detection gradient ``∂y/∂A`` ``[N·D, C, h, w]`` kept sparse (a window's, a RoI's):
    :meth:`full` writes it out; :meth:`channel_mean` is Grad-CAM's weights without doing so."""

    def full(self) -> Tensor: ...

    def channel_mean(self) -> Tensor: ...


def kept(
    cand: Candidates, keep: int, iou_threshold: float, score_threshold: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The first ``keep`` candidates greedy NMS keeps (:func:`.boxes.select`), as the graph's
    rows: ``(boxes [N,D,4], scores [N,D], classes [N,D], anchors [N,D], valid [N,D])``; a
    padding row has a zero box, score 0 and class −1."""
    picked = select(cand.boxes, cand.scores, cand.classes, keep, iou_threshold, score_threshold)
    index, valid = picked.index, picked.valid
    boxes = cand.boxes.gather(1, index[..., None].expand(-1, -1, 4)) * valid[..., None]
    scores = torch.where(valid, cand.scores.gather(1, index), 0.0)  # a pad may be -inf
    classes = torch.where(valid, cand.classes.gather(1, index), -1)
    return boxes, scores, classes, cand.anchors.gather(1, index), valid


class HeadInputs:
    """Keeps the list of maps a module (a detection head) takes as its first input, at each
    forward pass; with ``grad``, each map becomes a leaf that requires grad and the module gets
    the leaves, so ``∂y/∂A_l`` is the gradient through the head alone."""

    def __init__(self, model: nn.Module, name: str, *, grad: bool = False) -> None:
        self.name = name
        self.grad = grad
        self._value: list[Tensor] | None = None
        self._armed = False
        module = resolve_module(model, name)
        self._handle = module.register_forward_pre_hook(self._pre_hook)

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not self._armed or not args or not isinstance(args[0], list | tuple):
            return None
        maps = [t.detach().requires_grad_(True) if self.grad else t for t in args[0]]
        self._value = list(maps)  # a copy: a head may write into the list it is given
        return (type(args[0])(maps), *args[1:]) if self.grad else None

    def module(self, model: nn.Module) -> nn.Module:
        return resolve_module(model, self.name)

    def clear(self) -> None:
        self._value, self._armed = None, True

    def take(self) -> list[Tensor]:
        value, self._value, self._armed = self._value, None, False
        if value is None:
            raise OptionError(
                "layer", "the head '{v}' did not run in this forward pass", v=self.name
            )
        return value

    def remove(self) -> None:
        self._handle.remove()


class DetectionExplainer(nn.Module):
    """``image -> (boxes [N,D,4], scores [N,D], classes [N,D], count [N], heatmap)`` for a
    one-stage detector (see the module's docstring for the steps).

    Args:
        model: the detector, in eval mode.
        detector: what it is (:func:`.detectors.recognise`).
        method: the heatmap method's record (:mod:`.methods`); ``cam`` has no linear head here.
        output: which of the model's outputs holds the raw predictions.
        layers: taps named with the usual grammar; None: the head's inputs.
        max_detections: ``D``, the rows of every output.
        score_threshold, iou_threshold: the NMS rule (default: the model's own).
        input_format: ``float-nchw`` or ``uint8-nhwc`` (:mod:`.graph_io`).
        input_size: ``(H, W)`` of the export.
    """

    def __init__(
        self,
        model: nn.Module,
        detector: Detector,
        method: Method,
        output: OutputKey = OutputKey(),
        layers: Sequence[str] | None = None,
        max_detections: int = 10,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        input_format: str = "float-nchw",
        input_size: tuple[int, int] = (640, 640),
        eps: float = heads.DEFAULT_EPS,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        if max_detections < 1:
            raise OptionError("max_detections", "{name} must be at least 1")
        cap = getattr(detector, "detections_per_img", None)
        if cap is not None and max_detections > cap:
            raise OptionError(
                "max_detections",
                "{name} {v} is more than the model's detections_per_img {cap}; pass at most {cap}",
                v=max_detections,
                cap=cap,
            )
        if method.needs_linear or method.second_order or method.target_kind is not None:
            why = "{name} {m} needs a classifier's logits; use gradcam for detectors"  # cam's W
            raise OptionError("method", why, m=method.name)
        if method.at_image:
            why = "{name} {m} is a pixel-level method for classifiers; use gradcam for detectors"
            raise OptionError("method", why, m=method.name)
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        if score_threshold is not None or iou_threshold is not None:
            # the detector's own record carries them (torchvision thresholds per level)
            detector = replace(
                detector,
                score_threshold=detector.score_threshold
                if score_threshold is None
                else score_threshold,
                iou_threshold=detector.iou_threshold if iou_threshold is None else iou_threshold,
            )
        self.detector = detector
        self.method = method
        self.output = output
        self.max_detections = max_detections
        self.score_threshold = detector.score_threshold
        self.iou_threshold = detector.iou_threshold
        self.input_format = input_format
        self.eps = eps
        self.layers, self.taps = self._taps(model, detector, layers, method.needs_gradient)
        self.normalizes = tuple(detector.mean) != (0, 0, 0) or tuple(detector.std) != (1, 1, 1)
        self.register_buffer("mean", torch.tensor(detector.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(detector.std).view(1, 3, 1, 1))
        # --faithfulness: (image, boxes, scores, classes, heat) -> four more outputs
        self.scorer: nn.Module | None = None  # (.faithful_detect.detector_scoring sets it)

    @property
    def per_detection(self) -> bool:
        """One map per detection (a method that explains a score), not one per image."""
        return self.method.has_class

    @property
    def output_names(self) -> tuple[str, ...]:
        """The graph's outputs, in order (the contract's detection outputs, and with a
        ``scorer`` the faithfulness scores)."""
        return (*DETECTION_OUTPUTS, *(FAITHFULNESS_OUTPUTS if self.scorer is not None else ()))

    def detections(self, image: Tensor) -> tuple[Tensor, ...]:
        """``(boxes, scores, classes, count)``: what :meth:`forward` returns less the heatmap,
        computed as it computes them (normalization, detector, candidates, greedy NMS), with no
        gradient and no map: the detector alone, the baseline a map's cost is measured on."""
        x = graph_io.to_float_nchw(image, self.input_format).to(self.mean.dtype)
        if self.normalizes:
            x = (x - self.mean) / self.std
        with torch.no_grad():
            cand = self.detector.candidates(self.detector.run(self.model, x))
            boxes, scores, classes, _, valid = kept(
                cand, self.max_detections, self.iou_threshold, self.score_threshold
            )
        return boxes, scores, classes, valid.sum(dim=1)

    def _taps(
        self, model: nn.Module, detector: Detector, layers: Sequence[str] | None, grad: bool
    ) -> tuple[list[str], list[Tap | HeadInputs]]:
        """The taps' names and hooks: ``layers``, or the maps the detection head reads."""
        if layers is not None:
            return list(layers), [Tap(model, TapSpec.parse(name), grad=grad) for name in layers]
        if detector.head is None:
            raise OptionError(
                "layer",
                "found no detection head (a module taking a list of maps); name the maps "
                "it reads with {name}",
            )
        return [f"{detector.head}:input"], [HeadInputs(model, detector.head, grad=grad)]

    def remove(self) -> None:
        for tap in self.taps:
            tap.remove()

    def __enter__(self) -> DetectionExplainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _maps(self) -> list[Tensor]:
        maps: list[Tensor] = []
        for tap in self.taps:
            taken = tap.take()
            maps.extend(taken if isinstance(taken, list) else [taken])
        for a in maps:
            if a.dim() != 4:
                raise OptionError(
                    "layer", "{name} must name maps [N,C,h,w]; one is {shape}", shape=list(a.shape)
                )
        return maps

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        """``(boxes, scores, classes, count, heatmap)`` for the graph input ``image``."""
        # in the mean's dtype: float64 where the float64 check runs (a uint8 input comes float32)
        x = graph_io.to_float_nchw(image, self.input_format).to(self.mean.dtype)
        if self.normalizes:  # YOLO's mean 0, std 1 is no op (two passes over the image saved)
            x = (x - self.mean) / self.std
        grad = self.method.needs_gradient
        with torch.inference_mode(False), torch.set_grad_enabled(grad):
            if grad and x.is_inference():
                x = x.clone()
            for tap in self.taps:
                tap.clear()
            raw = self.detector.run(self.model, x)
            maps = self._maps()
            cand = self.detector.candidates(raw.detach())
            boxes, scores, classes, anchors, valid = kept(
                cand, self.max_detections, self.iou_threshold, self.score_threshold
            )
            grads = self._gradients(raw, maps, anchors, classes, valid) if grad else None
        count = valid.sum(dim=1)
        maps = [a.detach() for a in maps]
        heat = self._heatmap(image, maps, grads, valid)
        out = (boxes.detach(), scores.detach(), classes, count, heat)
        if self.scorer is None:
            return out
        return (*out, *self.scorer(image, boxes.detach(), scores.detach(), classes, heat))

    def _gradients(
        self, raw: Tensor, maps: list[Tensor], anchors: Tensor, classes: Tensor, valid: Tensor
    ) -> Sequence[Tensor | WindowGradient]:
        """Per tap, ``∂y_j/∂A`` for every detection, image by image: ``[N·D, C, h, w]`` (or its
        windows, :class:`.class_branch.WindowGradient`).

        Where the taps are the head's inputs and the head has a class branch per level
        (:mod:`.class_branch`: Ultralytics' ``Detect``), each detection's gradient is the
        branch's on a window of its level's map, all ``N·D`` at once. Else, where the taps are
        the head's inputs and the head returns the model's output, the head
        runs once more on the maps repeated ``D`` times (``N·D`` rows, row ``n·D + j`` for
        detection ``j`` of image ``n``) and one backward pass of ``Σ_nj y_nj`` gives every
        detection's gradient (rows are independent). Otherwise ``D`` backward passes, one per
        detection, from the model's output to the taps.
        """
        if isinstance(self.taps[0], HeadInputs) and self.detector.class_branch is not None:
            branch = self.detector.class_branch
            modules = branch.modules(self.taps[0].module(self.model))
            return window_gradients(modules, branch.radii, maps, anchors, classes, valid)
        if self.detector.head_output and isinstance(self.taps[0], HeadInputs):
            return self._batched(maps, anchors, classes, valid)
        y = self.detector.score(raw, anchors, classes) * valid  # [N, D]
        per_j = []
        for j in range(self.max_detections):
            found = torch.autograd.grad(
                y[:, j].sum(), maps, retain_graph=j < self.max_detections - 1, allow_unused=True
            )
            per_j.append(
                [torch.zeros_like(a) if g is None else g for a, g in zip(maps, found, strict=True)]
            )
        return [torch.stack(g, 1).flatten(0, 1).detach() for g in zip(*per_j, strict=True)]

    def _batched(
        self, maps: list[Tensor], anchors: Tensor, classes: Tensor, valid: Tensor
    ) -> list[Tensor]:
        """``∂y/∂A`` of every detection from one backward pass through the head alone."""
        d = self.max_detections
        rows = [
            a.detach()[:, None].expand(-1, d, -1, -1, -1).flatten(0, 1).requires_grad_(True)
            for a in maps
        ]
        head = self.taps[0].module(self.model)  # type: ignore[union-attr]
        raw = self.detector.from_head(head(list(rows)))  # YOLO: [N·D, 4+K, A]
        y = self.detector.score(raw, anchors.reshape(-1, 1), classes.reshape(-1, 1))
        found = torch.autograd.grad((y.reshape(-1) * valid.reshape(-1)).sum(), rows)
        return [g.detach() for g in found]

    def _heatmap(
        self,
        image: Tensor,
        maps: list[Tensor],
        grads: Sequence[Tensor | SparseGradient] | None,
        valid: Tensor,
    ) -> Tensor:
        """``[N, D, H, W]`` (one map per detection), or ``[N, 1, H, W]`` (per image)."""
        size = graph_io.image_size(image, self.input_format)
        d = self.max_detections if self.per_detection else 1
        units = []
        for i, a in enumerate(maps):
            a = a.float()
            g = None if grads is None else grads[i]
            sparse = g is not None and not isinstance(g, Tensor)  # a window's or a RoI's
            if sparse and self.method.name == "gradcam":
                terms = self._gradcam_per_detection(a, g)  # type: ignore[arg-type]
            else:
                if self.per_detection:
                    a = a[:, None].expand(-1, d, -1, -1, -1).flatten(0, 1)
                g = g.full() if sparse else g  # type: ignore[union-attr]
                terms = self.method.terms(Needs(a, None if g is None else g.float()))
            m = torch.relu(terms.map) if len(maps) > 1 else terms.map
            m = self.detector.window(m)
            units.append(heads.to_unit(m, terms.scale, size, self.eps))
        heat = units[0] if len(units) == 1 else heads.fuse(units, self.eps)
        heat = heat.reshape(-1, d, heat.shape[2], heat.shape[3])
        if self.per_detection:
            heat = heat * valid[..., None, None]
        return heat

    def _gradcam_per_detection(self, a: Tensor, g: SparseGradient) -> Terms:
        r"""Grad-CAM's terms of every detection from ``A`` ``[N, C, h, w]`` as it is: the
        weights ``α [N, D, C]`` from the window gradients' sums, the ``D`` maps
        :math:`\mathrm{ReLU}(\sum_k α_{jk} A_k)` as one product per image, with no copy of
        ``A`` per detection (the general path's maps, rows ``n·D + j``)."""
        n, c, h, w = a.shape
        alpha = g.channel_mean().float().reshape(n, self.max_detections, c)
        raw, scale = heads.channel_terms(a, alpha)
        return Terms(raw.reshape(-1, 1, h, w), scale.reshape(-1, 1, 1))
