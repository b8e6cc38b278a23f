"""Which detector a model is, and how its raw output reads as candidate detections.

A one-stage detector is recognised from one forward pass (:func:`recognise`):

- **YOLO-style raw predictions** ``[N, 4+K, A]``: per anchor ``a``, the box ``cx, cy, w, h``
  in input pixels, then ``K`` class probabilities. Ultralytics' ``DetectionModel`` (v5u, v8,
  11, 26) returns this first (in eval mode, beside a dict of the head's raw tensors); any model
  whose output (or ``--output``) has this form is read the same way. ``A`` must be the anchor
  count of strides ``2^k`` over the input (``Σ_s ⌈H/s⌉·⌈W/s⌉``), and the ``K`` rows
  probabilities, or it is not taken for one.

The :class:`Detector` record says how to read it: :meth:`Detector.candidates` gives every
anchor's box (corners), best class and its score (Ultralytics' single-label rule: the class of
the highest probability); :meth:`Detector.score` the score ``y`` of chosen ``(anchor, class)``
pairs as the model outputs it, differentiably, which is what a detection's map explains.
The default taps are the maps the detection head reads: the inputs of the head module
(:func:`head_inputs`, the last module called with a list of maps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..inspect.class_branch import ClassBranch
from ..inspect.class_branch import find as find_class_branch
from ..maths.boxes import cxcywh_to_xyxy
from .outputs import OutputKey

__all__ = [
    "Candidates",
    "Detector",
    "anchor_strides",
    "head_inputs",
    "recognise",
]

YOLO_SCORE = "class probability (sigmoid)"
RAW_FORM = "[N, 4+K, A] (cx, cy, w, h in input pixels, then K class probabilities per anchor)"


class Candidates(NamedTuple):
    """The detections NMS chooses from: ``boxes [N, M, 4]`` (corners, input pixels),
    ``scores [N, M]``, ``classes`` int64 ``[N, M]``, and ``anchors`` int64 ``[N, M]``, where in
    the raw output each one's score is (:meth:`Detector.score` reads it there). YOLO: every
    anchor, with its best class."""

    boxes: Tensor
    scores: Tensor
    classes: Tensor
    anchors: Tensor


@dataclass(frozen=True)
class Detector:
    """A recognised detector: ``family`` (``yolo``: Ultralytics; ``generic``: another model with
    YOLO-style raw output), ``num_classes`` K, the ``head`` module whose inputs are the default
    taps (None where none was found), the ``strides`` of its anchor grid, ``score_kind`` (what
    a detection's score is), and the class ``names`` the model carries."""

    family: str
    num_classes: int
    head: str | None
    strides: tuple[int, ...]
    score_kind: str = YOLO_SCORE
    names: tuple[str, ...] | None = None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # YOLO: [0, 1] RGB, no normalization
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    score_threshold: float = 0.25  # Ultralytics' predict defaults
    iou_threshold: float = 0.7
    head_output: bool = False  # the head returns the model's output (it can run on its own)
    output: OutputKey = OutputKey()  # which of the model's outputs is the raw prediction
    class_branch: ClassBranch | None = None  # the head's per-level class logits (checked)

    def run(self, model: nn.Module, x: Tensor) -> Any:
        """The raw predictions for the normalized batch ``x``: the model's chosen output."""
        return self.output.pick(model(x))

    def from_head(self, out: Any) -> Any:
        """The raw predictions from what the head returns (where :attr:`head_output`)."""
        return self.output.pick(out)

    @property
    def size_step(self) -> int:
        """The export size must be a multiple of this: the largest stride (YOLO's grids)."""
        return max(self.strides, default=1)

    def window(self, maps: Tensor) -> Tensor:
        """A tap's map ``[M, 1, h, w]`` over the part of the model's input the graph input
        fills (YOLO: all of it; torchvision: the resized image, not its padding)."""
        return maps

    def candidates(self, raw: Tensor) -> Candidates:
        """``raw [N, 4+K, A]`` as candidates: corners, the best class and its probability."""
        boxes = cxcywh_to_xyxy(raw[:, :4].transpose(1, 2))
        scores, classes = raw[:, 4 : 4 + self.num_classes].max(dim=1)
        anchors = torch.arange(raw.shape[2], device=raw.device).expand_as(classes)
        return Candidates(boxes, scores, classes, anchors)

    def score(self, raw: Tensor, anchors: Tensor, classes: Tensor) -> Tensor:
        r"""``y [N, D]``: the probability of class ``classes[n, j]`` at anchor ``anchors[n, j]``,
        :math:`y_{nj} = \mathrm{raw}[n, 4 + c_{nj}, a_{nj}]`, as a differentiable gather."""
        probs = raw[:, 4 : 4 + self.num_classes]  # [N, K, A]
        at = probs.gather(2, anchors[:, None, :].expand(-1, probs.shape[1], -1))  # [N, K, D]
        return at.gather(1, classes.clamp_min(0)[:, None, :]).squeeze(1)


def anchor_strides(anchors: int, size: tuple[int, int]) -> tuple[int, ...] | None:
    """The strides ``2^k`` whose grids over ``size`` hold ``anchors`` cells together (the
    longest run of consecutive strides from 8, 4 or 16 that fits), or None."""
    h, w = size
    for first in (8, 4, 16, 2, 32):
        strides: list[int] = []
        total, s = 0, first
        while total < anchors and s <= max(h, w):
            total += -(-h // s) * -(-w // s)
            strides.append(s)
            s *= 2
        if total == anchors:
            return tuple(strides)
    return None


def _is_probability(rows: Tensor) -> bool:
    return bool(rows.numel()) and bool(((rows >= 0) & (rows <= 1)).all())


def _yolo_raw(value: Any, size: tuple[int, int]) -> tuple[int, tuple[int, ...]] | None:
    """``(K, strides)`` where ``value`` is YOLO-style raw output at input ``size``, else None."""
    if not isinstance(value, Tensor) or value.dim() != 3 or value.shape[1] < 5:
        return None
    strides = anchor_strides(int(value.shape[2]), size)
    if strides is None or not _is_probability(value[:, 4:].detach()):
        return None
    return int(value.shape[1]) - 4, strides


def head_inputs(model: nn.Module, example: Tensor) -> tuple[str | None, Any, Any, list[Tensor]]:
    """The last module called with a list (or tuple) of maps ``[N, C, h, w]`` as
    its first input: a detection head and the feature maps it reads. ``(its name, its output,
    the model's output, the maps)``; the name None where there is none."""
    found: list[tuple[str, Any, list[Tensor]]] = []

    def hook(name: str) -> Any:
        def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            first = args[0] if args else None
            if (
                isinstance(first, list | tuple)
                and len(first) >= 1
                and all(isinstance(t, Tensor) and t.dim() == 4 for t in first)
            ):
                found.append((name, output, list(first)))

        return post

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for handle in handles:
            handle.remove()
    name, head_out, maps = found[-1] if found else (None, None, [])
    return name, head_out, out, maps


def _names(model: nn.Module, k: int) -> tuple[str, ...] | None:
    """The class names a model carries (Ultralytics: ``names``, a dict or list), if ``k``."""
    names = getattr(model, "names", None)
    if isinstance(names, dict):
        names = [names[i] for i in sorted(names)] if sorted(names) == list(range(k)) else None
    if isinstance(names, Sequence) and len(names) == k and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None


def recognise(model: nn.Module, output: OutputKey, example: Tensor) -> Detector | None:
    """The detector ``model`` is, from its ``output`` (the one chosen to explain) on
    ``example`` ``[N, 3, H, W]``; None where that output is no detector's."""
    size = (int(example.shape[2]), int(example.shape[3]))
    head, head_out, out, maps = head_inputs(model, example)
    raw = output.pick(out)
    found = _yolo_raw(raw, size)
    if found is None:
        return None
    k, strides = found
    same = head_out is out or _picks_same(output, head_out, out)
    ultralytics = type(model).__module__.startswith("ultralytics.")
    family = "yolo" if ultralytics else "generic"
    names = _names(model, k)
    branch = None
    if same and head is not None:
        branch = find_class_branch(model.get_submodule(head), maps, raw, k)
    return Detector(
        family, k, head, strides, names=names, head_output=same, output=output, class_branch=branch
    )


def _picks_same(output: OutputKey, head_out: Any, out: Any) -> bool:
    """Whether ``output`` takes the same tensor from the head's output as the model's."""
    try:
        return output.pick(head_out) is output.pick(out)
    except (KeyError, IndexError, TypeError, AttributeError):
        return False
