"""Detection artifacts made in the tests, to the detection contract (issue 27), without the
exporter: a tiny module whose forward returns ``boxes, scores, classes, count, heatmap`` with
the contract's shapes and dtypes, exported to ONNX or TorchScript, with ``explainer.json``.

:class:`FixedDetector`: D = 3 rows, of which the first :data:`COUNT` are detections (class
:data:`CLASSES`, score :data:`SCORES`, box :data:`BOXES` in input pixels) where the image is not
black (its mean over 0.02), none on a black image (count 0); map j a gaussian blob at box j's
centre (``σ = 6`` input pixels), padding rows all zero. ``per_image``: one map ``[N,1,H,W]``.
``masks``: a sixth output ``masks [N,D,H,W]`` as a Mask R-CNN export has it, detection j's
mask probability 0.9 inside the ellipse of :func:`ellipse` (box j's centre, semi-axes
:data:`AXES` of its half-width and half-height), 0.1 elsewhere in box j, 0 outside it and on
padding rows; its metadata stamped as the exporter stamps it."""

from __future__ import annotations

import json
import os

import torch

from explain_export.artifact.contract import DETECTION_OUTPUTS, FILES, METADATA_FILE

SIZE = (48, 64)  # (H, W) of the graph input
D = 3
COUNT = 2
BOXES = [[8.0, 4.0, 40.0, 36.0], [30.0, 20.0, 60.0, 44.0], [0.0, 0.0, 0.0, 0.0]]
SCORES = [0.9, 0.6, 0.0]
CLASSES = [0, 2, -1]
LABELS = ["person", "bicycle", "car"]
AXES = 0.8  # a mask's ellipse: semi-axes this share of its box's half-width and half-height


def ellipse(j: int) -> tuple[float, float, float, float]:
    """Mask j's ellipse in input pixels: centre ``(cx, cy)`` and semi-axes ``(a, b)``."""
    x1, y1, x2, y2 = BOXES[j]
    return (x1 + x2) / 2, (y1 + y2) / 2, AXES * (x2 - x1) / 2, AXES * (y2 - y1) / 2


def mask_probabilities() -> torch.Tensor:
    """``[D, H, W]``: each row's mask probability (see the module)."""
    h, w = SIZE
    ys, xs = torch.arange(h).float()[:, None], torch.arange(w).float()[None, :]
    out = torch.zeros(D, h, w)
    for j in range(COUNT):
        cx, cy, a, b = ellipse(j)
        x1, y1, x2, y2 = BOXES[j]
        box = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
        inside = ((xs - cx) / a) ** 2 + ((ys - cy) / b) ** 2 <= 1
        out[j] = 0.1 * box.float() + 0.8 * (inside & box).float()
    return out


class FixedDetector(torch.nn.Module):
    def __init__(self, per_image: bool = False, masks: bool = False) -> None:
        super().__init__()
        self.per_image, self.masks = per_image, masks
        self.register_buffer("probabilities", mask_probabilities())
        self.register_buffer("boxes", torch.tensor(BOXES))
        self.register_buffer("scores", torch.tensor(SCORES))
        self.register_buffer("classes", torch.tensor(CLASSES, dtype=torch.int64))
        h, w = SIZE
        ys, xs = torch.arange(h).float()[:, None], torch.arange(w).float()[None, :]
        cx = (self.boxes[:, 0] + self.boxes[:, 2]) / 2
        cy = (self.boxes[:, 1] + self.boxes[:, 3]) / 2
        blobs = torch.exp(-((xs - cx[:, None, None]) ** 2 + (ys - cy[:, None, None]) ** 2) / 72)
        self.register_buffer("blobs", blobs / blobs.amax(dim=(1, 2), keepdim=True))

    def forward(self, image: torch.Tensor):
        n = image.shape[0]
        lit = image.mean(dim=(1, 2, 3)) > 0.02  # a black image has no detections
        count = torch.where(lit, torch.full_like(lit, COUNT, dtype=torch.int64), 0 * lit.long())
        real = torch.arange(D)[None, :] < count[:, None]  # [N, D]
        zero = 0.0 * image.sum(dim=(1, 2, 3))[:, None]  # keeps the graph's input
        boxes = torch.where(real[..., None], self.boxes[None] + zero[..., None], 0.0)
        scores = torch.where(real, self.scores[None] + zero, 0.0)
        classes = torch.where(real, self.classes[None].expand(n, D), -1)
        maps = torch.where(real[..., None, None], self.blobs[None], 0.0)
        if self.per_image:
            maps = maps.amax(dim=1, keepdim=True)
        if self.masks:
            masks = torch.where(real[..., None, None], self.probabilities[None], 0.0)
            return boxes, scores, classes, count, maps, masks
        return boxes, scores, classes, count, maps


def metadata(
    per_image: bool = False, labels: list[str] | None = LABELS, masks: bool = False
) -> dict:
    h, w = SIZE
    maps = 1 if per_image else D
    meta = {
        "input_size": [h, w],
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["N", 3, h, w]}],
        "outputs": [
            {"name": "boxes", "dtype": "float32", "shape": ["N", D, 4]},
            {"name": "scores", "dtype": "float32", "shape": ["N", D]},
            {"name": "classes", "dtype": "int64", "shape": ["N", D]},
            {"name": "count", "dtype": "int64", "shape": ["N"]},
            {"name": "heatmap", "dtype": "float32", "shape": ["N", maps, h, w]},
        ],
        "model": "FixedDetector (tests)",
        "method": "eigencam" if per_image else "gradcam",
        "task": "detection",
        "num_classes": len(LABELS),
        "labels": labels,
        "detection": {
            "max_detections": D,
            "score_threshold": 0.25,
            "iou_threshold": 0.7,
            "score": "sigmoid",
            "family": "generic",
            "maps": "per-image" if per_image else "per-detection",
            "label_set": None,
        },
    }
    if masks:  # as builder.export.detection.detection_metadata stamps a Mask R-CNN export
        meaning = "each detection's mask probability at input size; 0 on padding rows"
        spec = {"name": "masks", "dtype": "float32", "shape": ["N", D, h, w], "meaning": meaning}
        meta["outputs"].append(spec)
        meta["detection"]["masks"] = True
    return meta


def export(out: str, kind: str = "onnx", per_image: bool = False, masks: bool = False) -> str:
    """Export :class:`FixedDetector` into folder ``out`` as ``kind`` (onnx or torchscript), with
    its ``explainer.json``; returns the file's path."""
    os.makedirs(out, exist_ok=True)
    model = FixedDetector(per_image, masks).eval()
    example = (torch.rand(2, 3, *SIZE),)
    path = os.path.join(out, FILES[kind])
    with torch.no_grad():
        if kind == "onnx":
            batch = torch.export.Dim("N", min=1, max=64)
            torch.onnx.export(
                model,
                example,
                path,
                dynamo=True,
                external_data=False,
                input_names=["image"],
                output_names=[*DETECTION_OUTPUTS, *(["masks"] if masks else [])],
                dynamic_shapes={"image": {0: batch}},
            )
        else:
            torch.jit.save(torch.jit.trace(model, example, check_trace=False), path)
    with open(os.path.join(out, METADATA_FILE), "w") as f:
        json.dump(metadata(per_image, masks=masks), f)
    return path


class Classifier(torch.nn.Module):
    """Not a detector: ``logits [N, 3]`` and one ``heatmap [N, 1, H, W]``."""

    def forward(self, image: torch.Tensor):
        logits = image.mean(dim=(2, 3))
        return logits, image[:, :1]


def export_classifier(out: str) -> str:
    """:class:`Classifier` as TorchScript with its ``explainer.json``; returns its path."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, FILES["torchscript"])
    model = Classifier().eval()
    torch.jit.save(torch.jit.trace(model, (torch.rand(1, 3, *SIZE),)), path)
    meta = {
        "input_size": list(SIZE),
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["N", 3, *SIZE]}],
        "outputs": [{"name": "logits"}, {"name": "heatmap"}],
        "num_classes": 3,
        "method": "gradcam",
    }
    with open(os.path.join(out, METADATA_FILE), "w") as f:
        json.dump(meta, f)
    return path
