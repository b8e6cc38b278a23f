"""Which detector a model is, and its explainer: one-stage (:mod:`.detect_explainer`) or
two-stage (:mod:`.rcnn_explainer`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from ..errors import OptionError
from .detect_explainer import DetectionExplainer
from .maths.methods import Method
from .model.detectors import Detector
from .model.outputs import OutputKey
from .model.torchvision_rcnn import TwoStageDetector
from .rcnn_explainer import TwoStageExplainer

__all__ = ["build_detector", "find_detector"]


def find_detector(
    model: nn.Module, input_size: tuple[int, int], output: str | None = None
) -> tuple[Detector, OutputKey] | None:
    """``(the detector, its raw output's key)`` where ``model`` is a torchvision R-CNN
    (:func:`.torchvision_rcnn.recognise`) or one-stage detector
    (:func:`.torchvision_heads.recognise`), or its output (or ``output``) on one
    forward pass at ``input_size`` is a one-stage detector's (:func:`.detectors.recognise`);
    None where it is not (a classifier, or an output no key picks)."""
    from .inspect.probe import device_of
    from .model.detectors import recognise
    from .model.outputs import choose_output
    from .model.torchvision_heads import recognise as recognise_torchvision
    from .model.torchvision_rcnn import recognise as recognise_rcnn

    model = model.eval()
    try:
        rcnn = recognise_rcnn(model, input_size)
    except ValueError as exc:
        raise OptionError("model", "{name}: " + str(exc)) from exc
    if rcnn is not None:
        return rcnn, OutputKey()
    tv = recognise_torchvision(model, input_size)
    if tv is not None:
        return tv, OutputKey()
    h, w = input_size
    example = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    example = example.to(device_of(model))
    with torch.no_grad():
        out = model(example)
    try:
        key = choose_output(out, output)
    except OptionError:
        return None
    detector = recognise(model, key, example)
    return None if detector is None else (detector, key)


def build_detector(
    model: nn.Module,
    input_size: tuple[int, int] = (640, 640),
    method: str | Method = "gradcam",
    layers: Sequence[str] | None = None,
    output: str | None = None,
    max_detections: int = 10,
    score_threshold: float | None = None,
    iou_threshold: float | None = None,
    input_format: str = "float-nchw",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    target: str | None = None,
) -> DetectionExplainer:
    """Recognise ``model`` as a detector at ``input_size`` (:func:`find_detector`) and build
    its explainer: a :class:`.TwoStageExplainer` for an R-CNN (``target``: ``box``, the
    default, or ``mask``), else a :class:`DetectionExplainer`. ``mean``, ``std`` replace the
    detector's own normalization (YOLO: none).

    Raises an :class:`~.errors.OptionError` where it is no detector this package reads, naming
    the form its raw output must have."""
    from .maths import methods
    from .model.detectors import RAW_FORM

    if max_detections < 1:
        raise OptionError("max_detections", "{name} must be at least 1, got {v}", v=max_detections)
    spec = methods.get(method)
    found = find_detector(model, input_size, output)
    if found is None:
        raise OptionError(
            "output",
            "the model is no detector this package reads; a one-stage detector's raw output "
            "(or {name}) must be {form}, or wrap the model to return that",
            form=RAW_FORM,
        )
    detector, key = found
    if isinstance(detector, TwoStageDetector):
        if layers is not None or output is not None or mean is not None or std is not None:
            raise OptionError(
                "layer",
                "a two-stage detector is explained at the maps its RoI heads read, with its "
                "own transform; leave {name}, --output, --mean and --std out",
            )
        return TwoStageExplainer(
            model,
            detector,
            spec,
            max_detections,
            score_threshold,
            iou_threshold,
            input_format,
            input_size,
            target or "box",
        )
    if target is not None:
        raise OptionError("target", "{name} is for two-stage detectors (Mask R-CNN: mask)")
    if mean is not None or std is not None:
        detector = replace(
            detector,
            mean=tuple(mean if mean is not None else detector.mean),
            std=tuple(std if std is not None else detector.std),
        )
    return DetectionExplainer(
        model,
        detector,
        spec,
        key,
        layers,
        max_detections,
        score_threshold,
        iou_threshold,
        input_format,
        input_size,
    )
