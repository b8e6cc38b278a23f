"""Step 2 for the methods whose gradient is taken at the image (:mod:`.maths.pixels`).

``x`` is the graph's float RGB image in [0,1]; normalization, ``(x - mean) / std``, is part of
what is differentiated, so ``g = ∂y_c/∂x`` is the gradient in the image's own units. In one pass:

1. a sampling method's ``S`` points per image (:mod:`.maths.sampling`) join ``x`` in one batch
   ``[N + N·S, 3, H, W]``; the first ``N`` rows give the logits and the class, the others the
   scores differentiated;
2. the target's scores ``y`` (one per map an image gets, :mod:`.maths.targets`);
3. ``∂y/∂x`` (at the points, then reduced over them), under :class:`.maths.guided.Guided` for a
   guided method; with it, where the method asks, ``∂y/∂A`` at the layer (plain, for guided
   Grad-CAM) and ``∂y/∂O_l`` at every bias layer (FullGrad).

Autograd runs here in eager mode; an export records the same ops (:mod:`.lower.lowering`).
In eager mode a sampling method runs its points ``CHUNK`` at a time, so that memory does not
grow with ``N·S`` (the sum is the same); the traced graph takes them as one batch.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor

from .maths.guided import Guided

__all__ = ["CHUNK", "capture_at_image"]

CHUNK = 8  # a sampling method's points per model call in eager mode


def capture_at_image(
    explainer: Any, image: Tensor, class_index: Tensor | None = None
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """``(logits, maps, grads)`` of the :class:`.explainer.Explainer` ``explainer`` for the
    float ``[N,3,H,W]`` image ``image`` in [0,1]: ``maps``
    the layer's ``A`` (guided Grad-CAM; else empty), ``grads`` ``[∂y/∂x (reduced over the
    samples), ∂y/∂A (guided Grad-CAM), ∂y/∂O_l for each bias layer call (FullGrad)]``, each
    ``[N·k, ...]`` image by image for a top-k target."""
    method, sampler, biases = explainer.method, explainer.sampler, explainer.bias_taps
    n = image.shape[0]
    if sampler is not None and not isinstance(image, FakeTensor):
        return _sampled_in_chunks(explainer, image, class_index)
    with torch.inference_mode(False), torch.enable_grad():
        x = image.clone() if image.is_inference() else image
        x = x.detach()
        if sampler is None:
            wrt = x.requires_grad_(True)
            batch = wrt
        else:
            wrt = sampler.points(x).flatten(0, 1).detach().requires_grad_(True)
            batch = torch.cat([x, wrt])
        for tap in explainer.taps:
            tap.clear()
        if biases is not None:
            biases.clear()
        normalized = (batch - explainer.mean) / explainer.std
        out = explainer.plan.output.pick(
            explainer.model(normalized.half() if explainer.graph.half else normalized)
        )
        maps = [tap.take() for tap in explainer.taps]
        outputs = [] if biases is None else biases.take()
        logits = out if sampler is None else out[:n]
        classes = explainer.target.classes(logits.detach(), class_index)
        scored = out
        if sampler is not None:
            scored = out[n:]
            classes = classes.repeat_interleave(sampler.steps, dim=0)
        ys = explainer.target.scores(scored, classes)
        per_y = []
        for j, y in enumerate(ys):
            retain = j < len(ys) - 1
            layer = _grads(y, maps, retain=True) if maps else []
            guided = Guided() if method.guided else contextlib.nullcontext()
            with guided:
                g, *bias_grads = _grads(y, [wrt, *outputs], retain)
            if sampler is not None:
                g = sampler.reduce(g.reshape(n, sampler.steps, *g.shape[1:]))
            per_y.append([g.float(), *(a.float() for a in layer), *(b.float() for b in bias_grads)])
    grads = [
        ranks[0] if explainer.target.top_k is None else torch.stack(ranks, 1).flatten(0, 1)
        for ranks in zip(*per_y, strict=True)
    ]
    a = explainer.as_map_list([m.detach().float() for m in maps])
    if maps:  # ∂y/∂A laid out as A is (token sequences on their grid)
        grads[1] = explainer.as_map_list([grads[1]])[0]
    return logits.detach().float(), a, grads


def _grads(y: Tensor, tensors: list[Tensor], retain: bool) -> list[Tensor]:
    """``∂y/∂t`` for each tensor; zeros where ``y`` does not depend on it."""
    if not tensors:
        return []
    found: list[Tensor | None] = [None] * len(tensors)
    if y.requires_grad:
        found = list(torch.autograd.grad(y, tensors, retain_graph=retain, allow_unused=True))
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, found, strict=True)]


def _sampled_in_chunks(
    explainer: Any, image: Tensor, class_index: Tensor | None
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """:func:`capture_at_image` of a sampling method in eager mode: the image's logits first,
    then the points ``CHUNK`` at a time, each chunk's gradients kept and reduced at the end."""
    sampler, target, model = explainer.sampler, explainer.target, explainer.model
    n = image.shape[0]

    def scores(batch: Tensor) -> Tensor:
        normalized = (batch - explainer.mean) / explainer.std
        return explainer.plan.output.pick(
            model(normalized.half() if explainer.graph.half else normalized)
        )

    with torch.inference_mode(False), torch.enable_grad():
        x = (image.clone() if image.is_inference() else image).detach()
        with torch.no_grad():
            logits = scores(x)
        classes = target.classes(logits, class_index).repeat_interleave(sampler.steps, dim=0)
        points = sampler.points(x).flatten(0, 1).detach()
        chunks: list[list[Tensor]] = []
        for start in range(0, points.shape[0], CHUNK):
            p = points[start : start + CHUNK].requires_grad_(True)
            ys = target.scores(scores(p), classes[start : start + CHUNK])
            chunks.append([_grads(y, [p], j < len(ys) - 1)[0] for j, y in enumerate(ys)])
    per_y = [
        sampler.reduce(torch.cat(gs).reshape(n, sampler.steps, *gs[0].shape[1:])).float()
        for gs in zip(*chunks, strict=True)
    ]
    grad = per_y[0] if target.top_k is None else torch.stack(per_y, 1).flatten(0, 1)
    return logits.detach().float(), [], [grad]
