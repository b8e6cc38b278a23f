"""References for the one-stage detector tests, written here: a plain greedy NMS loop, and an
autograd Grad-CAM of each detection's score of :class:`.TinyYolo` from cloning hooks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectors import TinyYolo
from torch import Tensor, nn

from explain_export.builder.maths.boxes import box_iou

__all__ = ["fuse", "greedy_nms", "reference_gradcam"]


def greedy_nms(
    boxes: Tensor, scores: Tensor, classes: Tensor, iou: float, thr: float, limit: int = 10**9
) -> list:
    """Kept indices, best first: sort by score, keep one, drop what overlaps it (same class);
    the first ``limit`` kept."""
    order = [int(i) for i in torch.argsort(scores, descending=True, stable=True) if scores[i] > thr]
    kept: list[int] = []
    for i in order:
        if len(kept) == limit:
            break
        if all(
            classes[i] != classes[k] or box_iou(boxes[k][None, None], boxes[i][None, None]) <= iou
            for k in kept
        ):
            kept.append(i)
    return kept


def fuse(maps: list[Tensor], size: tuple[int, int]) -> Tensor:
    """Per map: resize (bilinear), min-max; then the mean, min-maxed (the fused-layer rule)."""

    def unit(m: Tensor) -> Tensor:
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        lo, hi = m.amin((2, 3), keepdim=True), m.amax((2, 3), keepdim=True)
        return (m - lo) / (hi - lo).clamp_min(1e-7)

    units = [unit(m) for m in maps]
    return units[0] if len(units) == 1 else unit(torch.stack(units).mean(0))


def reference_gradcam(model: TinyYolo, images: Tensor, keep: int = 10) -> dict[str, Tensor]:
    """Detections and their Grad-CAM maps by autograd, image by image, detection by detection:
    a pre-hook clones the maps the head takes (each requires grad), ``y`` is the class
    probability of the detection at its anchor, ``α = mean_ij ∂y/∂A``, ``ReLU(Σ α A)``."""
    kept: dict[str, list] = {"boxes": [], "classes": [], "scores": [], "heatmap": []}  # per image
    held: list[Tensor] = []

    def hook(module: nn.Module, args: tuple) -> tuple:
        held[:] = [a.detach().clone().requires_grad_(True) for a in args[0]]
        return (list(held),)

    for image in images:
        handle = model.detect.register_forward_pre_hook(hook)
        with torch.enable_grad():
            raw = model(image[None])[0][0]  # [4+K, A]
        handle.remove()
        probs = raw[4:].detach()
        score, cls = probs.max(0)
        xy, wh = raw[:2].detach().T, raw[2:4].detach().T
        boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1)
        maps = []
        for a in greedy_nms(boxes, score, cls, 0.7, 0.25, keep):
            grads = torch.autograd.grad(raw[4 + cls[a], a], held, retain_graph=True)
            cams = [
                torch.relu((g.mean((2, 3), keepdim=True) * m).sum(1, keepdim=True))
                for g, m in zip(grads, held, strict=True)
            ]
            maps.append(fuse([c.detach() for c in cams], images.shape[-2:])[0, 0])
            kept["boxes"].append(boxes[a])
            kept["classes"].append(cls[a])
            kept["scores"].append(score[a])
        kept["heatmap"].append(torch.stack(maps))
        for key in ("boxes", "classes", "scores"):
            kept[key][-len(maps) :] = [torch.stack(kept[key][-len(maps) :])]
    return kept
