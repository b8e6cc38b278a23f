"""Faithfulness scores beside every heatmap, in the same graph (``--faithfulness``).

:class:`Faithful` runs the explainer, then scores each map ``m`` of class ``c`` on the image
``x`` (float RGB in [0, 1], what the graph makes of its input; ``m`` broadcast over channels):

- ``score = softmax(logits(x))[c]``;
- ``masked_score = softmax(logits(x ⊙ m))[c]``: one more forward pass;
- ``complexity = mean(m)``;
- ``coherency = (pearson(m, m') + 1) / 2``, ``m'`` the map of ``c`` on ``x ⊙ m`` (one more
  explanation, in the same pass); a flat map correlates with nothing (pearson 0).

A segmentation model's class has per-pixel scores: ``score`` and ``masked_score`` are then the
class's softmax probability averaged over its pixels on ``x`` (the region the map explains),
on ``x`` and on ``x ⊙ m``; ``m'`` is the map of the class's pixels on ``x ⊙ m``.

With a top-k target each of an image's ``k`` maps is scored (``[N, k]``), else ``[N]``. The
second pass is a second explainer on the same model (:func:`second_explainer`): the same
method, layer and head, its class given per image, its input float ``[N,3,H,W]`` (so ``x ⊙ m``
is never rounded to 8 bits), no overlay. The runner derives average drop, increase in
confidence and ADCC from the four (:mod:`..artifact.faithfulness`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .conflicts import check_options
from .explainer import Explainer
from .graph_options import GraphOptions
from .lower import lowering
from .maths import graph_io
from .maths.targets import ClassLogit, Finer, Region, Target

__all__ = [
    "Faithful",
    "check_faithfulness",
    "coherency",
    "region_probability",
    "scoring",
    "second_explainer",
    "with_scores",
]


def check_faithfulness(explainer: Explainer) -> None:
    """An :class:`~..errors.OptionError` in one line where the maps cannot be scored: a method that
    explains no class."""
    check_options(explainer.plan.method_spec, faithfulness=True)


def second_explainer(explainer: Explainer) -> Explainer:
    """The explainer of the masked images: ``explainer``'s model, method, layers and head, the
    class given at run time (Finer's comparison and a segmentation region kept), float
    ``[N,3,H,W]`` input, no overlay, a float32 heatmap. Its taps are armed only during its own
    calls, so the two explainers share the model."""
    plan = explainer.plan
    target: Target = ClassLogit()
    if isinstance(plan.target_spec, Finer):
        target = Finer(ClassLogit())
    elif isinstance(plan.target_spec, Region):  # the pixels of the given class on x ⊙ m
        target = Region(background=plan.target_spec.background)
    second = dataclasses.replace(plan, target_spec=target, graph=GraphOptions(half=plan.graph.half))
    return Explainer(explainer.model, second).to(explainer.mean.device)


def coherency(m: Tensor, m2: Tensor) -> Tensor:
    """``(pearson(m, m') + 1) / 2`` over the last two axes; 0.5 where either map is flat."""
    a = m.flatten(-2)
    b = m2.flatten(-2)
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    num = (a * b).sum(-1)
    den = ((a * a).sum(-1) * (b * b).sum(-1)).sqrt()
    r = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))
    return (r.clamp(-1.0, 1.0) + 1) / 2


def region_probability(scores: Tensor, classes: Tensor, pixels: Tensor) -> Tensor:
    """``[N, 1]``: the mean over ``pixels`` (bool ``[N, 1, H', W']``) of the softmax probability
    of ``classes`` (``[N, 1]``) from per-pixel ``scores`` ``[N, K, H', W']``; 0 where there are
    no pixels."""
    p = torch.softmax(scores.float(), 1)
    p_c = p.gather(1, classes[:, :, None, None].expand(-1, -1, *p.shape[2:]))
    mask = pixels.to(p.dtype)
    return (p_c * mask).sum((2, 3)) / mask.sum((2, 3)).clamp_min(1.0)


class Faithful(nn.Module):
    """``(image[, class_index]) -> (*explainer outputs, score, masked_score, complexity,
    coherency)``.

    ``first`` is what the graph would be without the scores (an :class:`.Explainer`, or its
    lowered form), ``second`` the masked images' explainer (:func:`second_explainer`, or its
    lowered form) called as ``second(x ⊙ m, c)``. ``explainer`` is the first one, eager: its
    plan gives the target (the classes explained), the input format and the outputs."""

    def __init__(self, first: nn.Module, second: nn.Module, explainer: Explainer) -> None:
        super().__init__()
        self.first = first
        self.second = second
        self.target = explainer.plan.target_spec
        self.input_format = explainer.graph.input_format
        self.top_k = explainer.plan.top_k
        self.names_classes = explainer.plan.names_classes  # top-k, or a segmentation region
        self.region = explainer.plan.segmentation

    def forward(self, image: Tensor, class_index: Tensor | None = None) -> tuple[Tensor, ...]:
        outs = self.first(image) if class_index is None else self.first(image, class_index)
        return (*outs, *self.scores(image, outs, class_index))

    def scores(
        self, image: Tensor, outs: tuple[Tensor, ...], class_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The four scores of the explainer's outputs ``outs`` for the graph input ``image``."""
        logits, heat = outs[0], outs[1]
        m = heat.to(torch.float32) / 255.0 if heat.dtype == torch.uint8 else heat
        if self.names_classes:
            classes = outs[-1]  # [N, k] or a region's [N, 1]: the graph's last output
        else:
            classes = self.target.classes(logits, class_index, keepdim=True)  # [N, 1]
        x = graph_io.to_float_nchw(image, self.input_format)
        masked = (x[:, None] * m[:, :, None]).flatten(0, 1)  # [N·k, 3, H, W]
        second = self.second(masked, classes.reshape(-1))
        logits2, heat2 = second[0], second[1]
        if self.region:  # per-pixel scores: the mean over the class's pixels on x, on both
            pixels = logits.argmax(1, keepdim=True) == classes[:, :, None, None]
            score = region_probability(logits, classes, pixels)
            masked_score = region_probability(logits2, classes, pixels)
        else:
            score = torch.softmax(logits.float(), 1).gather(1, classes)  # [N, k]
            masked_score = torch.softmax(logits2.float(), 1).gather(1, classes.reshape(-1, 1))
            masked_score = masked_score.reshape(classes.shape)
        complexity = m.mean((2, 3))
        coherent = coherency(m, heat2.reshape(m.shape))
        if self.top_k is None:  # one map per image: [N]
            return score[:, 0], masked_score[:, 0], complexity[:, 0], coherent[:, 0]
        return score, masked_score, complexity, coherent


def with_scores(
    explainer: Explainer,
    first: nn.Module,
    second: Explainer,
    dynamic_size: bool,
) -> Faithful:
    """The module to export: ``first`` (the explainer as it exports) and the scores, ``second``
    lowered to forward ops where the method needs a gradient (:func:`.lowering.lower`: batch
    free, and the size where ``dynamic_size``)."""
    if not second.method.needs_gradient:
        return Faithful(first, second, explainer)
    h, w = explainer.plan.input_size
    args = (
        torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(2)),
        torch.zeros(2).long(),
    )
    dims = {0: [0, 2, 3] if dynamic_size else [0], 1: [0]}
    return Faithful(first, lowering.lower(second, args, dims), explainer)


@contextlib.contextmanager
def scoring(
    explainer: Explainer, faithfulness: bool, dynamic_size: bool
) -> Iterator[Explainer | None]:
    """Within: with ``faithfulness``, the masked images' explainer (:func:`second_explainer`,
    its heatmap head's size free where ``dynamic_size``), its taps removed after; else None."""
    if not faithfulness:
        yield None
        return
    second = second_explainer(explainer)
    free = second.heatmap_head.free_size() if dynamic_size else contextlib.nullcontext()
    try:
        with free:
            yield second
    finally:
        second.remove()
