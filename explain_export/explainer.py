"""The explainer: one module from image to (logits, heatmap).

``forward(image)`` runs, in one pass:

1. normalization, ``x = (image - mean) / std``, with ``image`` RGB in [0, 1], ``[N, 3, H, W]``;
2. the backbone, ``logits = model(x)``, while a :class:`~.tap.Tap` keeps the map ``A``;
3. the head: ``sum`` gives ``Σ_k A_k``, ``cam`` gives ``ReLU(Σ_k W[c,k] A_k)``;
4. a bilinear resize to ``(H, W)``, then a per-image min-max into [0, 1].

It returns ``logits [N, K]`` and ``heatmap [N, 1, H, W]``. Everything is traceable, so the
same module exports to TorchScript and ONNX (:mod:`.export`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import heads, probe
from .errors import UsageError
from .tap import Tap, TapSpec

METHODS = ("cam", "sum")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ExplainerInfo:
    """What :func:`build_explainer` chose and checked."""

    method: str
    layer: str
    head: str | None  # the linear layer cam uses
    target: int | None  # cam's fixed class; None: the argmax
    num_classes: int
    feature_shape: tuple[int, ...]  # A's shape [C, h, w] at the probe size
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def target_class(
    logits: Tensor, class_index: Tensor | None = None, default: int | None = None
) -> Tensor:
    """Per image, ``class_index`` where it is >= 0, else ``default``, else the logits' argmax."""
    best = logits.argmax(dim=1)
    if default is not None:
        best = torch.full_like(best, default)
    if class_index is None:
        return best
    return torch.where(class_index >= 0, class_index.to(best.dtype), best)


class Explainer(nn.Module):
    """``image -> (logits, heatmap)`` for ``model``, tapping ``layer``.

    Args:
        model: the classifier, in eval mode.
        layer: the map to explain, as ``NAME[:input|:output][@CALL]`` (see :mod:`.tap`).
        method: ``"cam"`` or ``"sum"``.
        head: for ``cam``, the name of the ``nn.Linear`` that follows the global average pool.
        target: for ``cam``, a fixed class to explain instead of the argmax.
        mean, std: per-channel normalization applied to the [0, 1] RGB input.

    Use :func:`build_explainer` to get one whose layer and head have been checked.

    Example:
        >>> explainer = build_explainer(model, layer="layer4", method="cam")[0]
        >>> logits, heatmap = explainer(images)  # images: float [N,3,H,W] in [0,1]
        >>> logits, heatmap = explainer(images, torch.tensor([281, -1]))  # class per image
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | TapSpec,
        method: str = "cam",
        head: str | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        eps: float = heads.DEFAULT_EPS,
        target: int | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise UsageError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
        if method == "cam" and head is None:
            raise UsageError("method cam needs the name of its linear head")
        self.model = model
        self.method = method
        self.head = head
        self.target = target
        self.eps = eps
        self.tap = Tap(model, TapSpec.parse(layer) if isinstance(layer, str) else layer)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: Tensor, class_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``image`` float ``[N,3,H,W]`` RGB in [0,1]; ``class_index`` optional int64 ``[N]``
        (-1: argmax), used by ``cam`` only. Returns ``logits [N,K]``, ``heatmap [N,1,H,W]``."""
        self.tap.clear()
        logits = self.model((image - self.mean) / self.std)
        features = self.tap.take()
        weight = target = None
        if self.method == "cam":
            weight = self.model.get_submodule(self.head).weight
            target = target_class(logits, class_index, self.target)
        heat = heads.heatmap(features, image.shape[-2:], self.method, weight, target, self.eps)
        return logits, heat


def check_norm(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Three means and three positive stds, as float tuples."""
    mean, std = _check_triplet("mean", mean), _check_triplet("std", std)
    if any(s <= 0 for s in std):
        raise UsageError(f"--std values must be positive, got {' '.join(map(str, std))}")
    return mean, std


def _check_triplet(name: str, values: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise UsageError(f"--{name} takes 3 values (R G B), got {len(values)}")
    return values


def build_explainer(
    model: nn.Module,
    layer: str | None = None,
    method: str = "cam",
    input_size: tuple[int, int] = (224, 224),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    head: str | None = None,
    target: int | None = None,
) -> tuple[Explainer, ExplainerInfo]:
    """Probe ``model`` at ``input_size``, check the layer (and for ``cam`` the head), build.

    ``layer=None`` takes the map that feeds a global-average-pool + linear head, where there is
    one, else the last 4-D map. ``target`` fixes cam's class (default: the argmax). Raises
    :class:`~.errors.UsageError` naming what is wrong.
    """
    if method not in METHODS:
        raise UsageError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    mean, std = check_norm(mean, std)
    h, w = input_size
    if h <= 0 or w <= 0:
        raise UsageError(f"--input-size must be positive, got {h} {w}")
    model = model.eval()
    result = probe.probe_at_size(model, (h, w), mean, std)
    spec = TapSpec.parse(layer) if layer else probe.default_layer(result)
    record = probe.select(result, model, spec)
    feature_shape = (record.input_shape if spec.port == "input" else record.output_shape)[1:]
    head_name = None
    num_classes = int(result.logits.shape[1])
    if target is not None:
        if method != "cam":
            raise UsageError("--class-index needs --method cam (sum has no target class)")
        if not 0 <= target < num_classes:
            raise UsageError(
                f"--class-index {target} is out of range: the model has {num_classes} classes "
                f"(0..{num_classes - 1})"
            )
    if method == "cam":
        head_name = probe.find_gap_linear_head(result, model, record, spec, head).linear
    explainer = Explainer(model, spec, method, head_name, mean, std, target=target)
    info = ExplainerInfo(
        method,
        str(spec),
        head_name,
        target,
        num_classes,
        tuple(feature_shape),
        (h, w),
        mean,
        std,
    )
    return explainer, info
