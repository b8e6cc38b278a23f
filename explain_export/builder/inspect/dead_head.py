"""Why every map is flat: a classifier that cannot tell images apart.

Where the classifier's weight is all zeros (timm zero-initialises the heads of MLP-Mixer,
ResMLP and Sequencer; torchvision's ViT does too), ``logits = b`` for every image, so
``∂y_c/∂A = 0`` at every layer and cam's ``Σ_k W[c,k] A_k = 0``: every layer and method gives a
flat map. The same holds wherever the logits do not depend on the image. :func:`diagnose`
says which of the two it is, in one line that names the classifier; no ``--layer`` or
``--method`` can fix either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .gap_head import classifiers
from .probe import Probe

__all__ = ["CONSTANT_RTOL", "classifier", "diagnose"]

CONSTANT_RTOL = 1e-6  # logits "equal" across images: within this of max(1, max |logits|)


def classifier(result: Probe, model: nn.Module) -> tuple[str, nn.Module] | None:
    """The module that gives the logits ``[N, K]``: the last ``nn.Linear`` whose output is the
    logits (:func:`.gap_head.classifiers`), else the last ``nn.Linear`` or 1x1 ``nn.Conv2d``
    call with ``K`` outputs (a SqueezeNet-like per-class map, pooled after); None if neither."""
    found = classifiers(result)
    if found:
        return found[-1].name, model.get_submodule(found[-1].name)
    k = result.logits.shape[1] if result.logits.dim() >= 2 else None
    for rec in reversed(result.records):
        module = model.get_submodule(rec.name)
        if isinstance(module, nn.Linear) and module.out_features == k:
            return rec.name, module
        if (
            isinstance(module, nn.Conv2d)
            and module.out_channels == k
            and tuple(module.kernel_size) == (1, 1)
        ):
            return rec.name, module
    return None


def _constant(logits: Sequence[Tensor]) -> bool:
    """Every image's logits equal the first's, to ``CONSTANT_RTOL`` of their magnitude."""
    rows = torch.cat([t.detach().float().flatten(1) for t in logits])
    if rows.shape[0] < 2 or not torch.isfinite(rows).all():
        return False
    scale = max(1.0, float(rows.abs().max()))
    return bool((rows - rows[:1]).abs().max() <= CONSTANT_RTOL * scale)


def diagnose(model: nn.Module, result: Probe, logits: Sequence[Tensor]) -> str | None:
    """Why no map can have a signal, or None: the classifier's weight is all zeros, or the
    ``logits`` (of distinct probe images, batches ``[n, K, ...]``) are equal for every image."""
    head = classifier(result, model)
    weight = getattr(head[1], "weight", None) if head else None
    if head and isinstance(weight, Tensor) and not weight.detach().any():
        return (
            f"the classifier '{head[0]}' has all-zero weights (an untrained head?), so the "
            "logits do not depend on the image and no layer or method has a map to show: "
            "load trained weights"
        )
    if _constant(logits):
        n = sum(t.shape[0] for t in logits)
        named = f" (the classifier '{head[0]}' gives the same scores" if head else " (the same"
        return (
            f"the logits do not depend on the image{named} for all {n} distinct probe images), "
            "so no layer or method has a map to show: check that the model's trained weights "
            "are loaded and that its forward reads its input"
        )
    return None
