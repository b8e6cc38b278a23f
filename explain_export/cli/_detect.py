"""``explain-export`` for a one-stage detector: its flags checked, the explainer built, exported,
verified, and the report printed.

A model whose output (or ``--output``) is YOLO-style raw predictions ``[N, 4+K, A]`` takes this
path (:func:`find_detector`); the classifier flags that mean nothing for it are refused in one
line, as the detector flags are on a classifier (:func:`check_not_detection`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import OptionError, UsageError
from ._common import log, write_triton
from ._export_checks import COCO, check_label_count

__all__ = ["add_detector_arguments", "check_not_detection", "find_detector", "run_detector"]

DETECTOR_FLAGS = {
    "target": "--target",
    "max_detections": "--max-detections",
    "score_threshold": "--score-threshold",
    "iou_threshold": "--iou-threshold",
}
# classifier flags a detector export refuses: flag attribute -> (its flag, the value it is off)
CLASSIFIER_FLAGS: dict[str, tuple[str, Any]] = {
    "top_k": ("--top-k", None),
    "class_index": ("--class-index", None),
    "class_input": ("--class-input", False),
    "overlay_output": ("--overlay-output", False),
    "half": ("--half", False),
    "dynamic_size": ("--dynamic-size", False),
    "head": ("--head", None),
    "tokens": ("--tokens", None),
    "heatmap_dtype": ("--heatmap-dtype", "float32"),
    "fuse": ("--fuse", None),
}
DEFAULT_SIZE = (640, 640)  # YOLO's


def add_detector_arguments(p: argparse.ArgumentParser) -> None:
    """The detector flags of ``explain-export``."""
    d = p.add_argument_group(
        "detectors (YOLO-style output [N, 4+K, A]; torchvision's RetinaNet, FCOS, SSD, "
        "Faster and Mask R-CNN)"
    )
    d.add_argument(
        "--max-detections",
        type=int,
        default=None,
        metavar="D",
        help="detections per image, each with its own map: boxes [N,D,4], scores, classes, "
        "count and heatmap [N,D,H,W]; rows past count are padding (class -1) (default: 10)",
    )
    d.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        metavar="T",
        help="keep detections scored above T (default: the model's own; YOLO 0.25)",
    )
    d.add_argument(
        "--iou-threshold",
        type=float,
        default=None,
        metavar="T",
        help="NMS suppresses a box of the same class overlapping a kept one by IoU above T "
        "(default: the model's own; YOLO 0.7)",
    )
    d.add_argument(
        "--target",
        choices=("box", "mask"),
        default=None,
        help="Mask R-CNN: what each detection's map explains: box (its class score) or mask "
        "(its mask logits summed over its own mask) (default: box)",
    )


def find_detector(model: Any, size: tuple[int, int], output: str | None) -> Any:
    """``(detector, output key)`` where the model is a one-stage detector, else None. A model
    that fails at ``size`` is tried once more at the next multiple of 64 (a detector's grids
    need a multiple of its largest stride; :func:`_size` then says so); where it fails there
    too, None: the classifier path reports the failure at ``size``."""
    from ..builder.detect_build import find_detector as find

    try:
        return find(model, size, output)
    except Exception:
        safe = (-(-size[0] // 64) * 64, -(-size[1] // 64) * 64)
        if safe == size:
            return None
        try:
            return find(model, safe, output)
        except Exception:
            return None


def check_not_detection(args: argparse.Namespace) -> None:
    """A UsageError where a detector flag is given for a model that is no detector."""
    for attr, flag in DETECTOR_FLAGS.items():
        if getattr(args, attr, None) is not None:
            raise UsageError(
                f"{flag} applies to detectors (a model whose output is raw predictions "
                "[N,4+K,A]); this model is not one, so leave it out"
            )


def _check_flags(args: argparse.Namespace) -> None:
    for attr, (flag, off) in CLASSIFIER_FLAGS.items():
        if getattr(args, attr, off) != off:
            raise UsageError(f"{flag} does not apply to a detector's export; leave it out")


def _size(args: argparse.Namespace, step: int) -> tuple[int, int]:
    """The export size: ``--input-size``, else 640x640; a multiple of ``step`` (YOLO: the
    largest stride; torchvision: 1, its transform resizes)."""
    size = tuple(args.input_size) if args.input_size else DEFAULT_SIZE
    if any(s % step for s in size):
        fit = tuple(max(step, round(s / step) * step) for s in size)
        raise OptionError(
            "input_size",
            "{name} {h} {w} is not a multiple of the detector's largest stride {s}; try {fh} {fw}",
            h=size[0],
            w=size[1],
            s=step,
            fh=fit[0],
            fw=fit[1],
        )
    return size[0], size[1]


def _labels(args: argparse.Namespace, flags: Any, loaded: Any, detector: Any) -> tuple[Any, Any]:
    """``(labels, label set name)``: ``--labels coco`` by the class count, a file, the model's
    own names, or none."""
    k = detector.num_classes
    if args.labels in COCO:
        from ..artifact.labels import label_set

        name = {"coco": {80: "coco80", 91: "coco91"}.get(k)}.get(args.labels, args.labels)
        if name is None or len(label_set(name)) != k:
            raise UsageError(
                f"--labels {args.labels} names COCO's 80 classes (YOLO) or 91 ids (torchvision), "
                f"but the detector has {k} classes; pass a file with one label per class"
            )
        return label_set(name), name
    if flags.labels is not None:
        check_label_count(flags.labels, args.labels, k)
        return flags.labels, None
    if loaded.labels is not None and len(loaded.labels) == k:
        return loaded.labels, None
    return (list(detector.names) if detector.names else None), None


def run_detector(args: argparse.Namespace, flags: Any, loaded: Any, found: Any) -> int:
    """Build, export and verify a detector's explainer; print what was done, as for a
    classifier."""
    from ..builder.detect_build import build_detector
    from ..builder.export.detection import export_detector
    from ..builder.export.detection_parity import format_rows
    from ..builder.export.export import DEFAULT_OPSET

    _check_flags(args)
    detector, _ = found
    size = _size(args, detector.size_step)
    labels, label_set = _labels(args, flags, loaded, detector)
    method = "gradcam" if args.method == "auto" else args.method
    explainer = build_detector(
        loaded.model,
        size,
        method,
        args.layer or None,
        args.output,
        args.max_detections or 10,
        args.score_threshold,
        args.iou_threshold,
        args.input_format,
        args.mean,
        args.std,
        args.target,
    )
    det = explainer.detector
    print(f"model:  {loaded.description}")
    print(
        f"task:   detection ({det.family}), {det.num_classes} classes, anchors on strides "
        f"{', '.join(map(str, det.strides))}; score: {det.score_kind}"
    )
    print(
        f"        up to {explainer.max_detections} detections per image: score above "
        f"{explainer.score_threshold:g}, class-aware NMS at IoU {explainer.iou_threshold:g}"
    )
    for layer in explainer.layers:
        print(f"layer:  {layer}")
    per = "one map per detection" if explainer.per_detection else "one map per image"
    print(f"method: {explainer.method.name}, {per}; input {size[0]}x{size[1]}")
    sys.stdout.flush()
    result = export_detector(
        explainer,
        args.out,
        flags.formats,
        model=loaded.description,
        labels=labels,
        label_set=label_set,
        opset=args.opset or DEFAULT_OPSET,
        faithfulness=args.faithfulness,
        log=log,
    )
    print(format_rows(result.metadata["parity"]["rows"]))
    for path in result.paths.values():
        print(f"wrote {path}")
    write_triton(args, result.paths, result.metadata)
    return 0
