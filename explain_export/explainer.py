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

from . import graph_io, heads, probe
from .errors import UsageError
from .tap import Tap, TapSpec

METHODS = ("cam", "sum")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class GraphOptions:
    """How the graph meets a server (see :mod:`.graph_io`).

    ``input_format``: ``float-nchw`` or ``uint8-nhwc``. ``overlay``: add a third output, the
    overlay as uint8 ``[N,H,W,3]`` RGB, blended with ``overlay_alpha`` and the ``colormap``.
    ``half``: fp16 weights and compute in the backbone (the head and min-max stay float32).
    """

    input_format: str = "float-nchw"
    overlay: bool = False
    overlay_alpha: float = 0.4
    colormap: str = "JET"
    half: bool = False


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
    graph: GraphOptions = GraphOptions()


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
        graph: input format, in-graph overlay, fp16 (:class:`GraphOptions`). With ``half`` the
            model must already be in fp16.

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
        graph: GraphOptions = GraphOptions(),
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
        if graph.input_format not in graph_io.INPUT_FORMATS:
            raise UsageError(
                f"unknown input format '{graph.input_format}'; "
                f"choose one of {', '.join(graph_io.INPUT_FORMATS)}"
            )
        self.graph = graph
        if graph.overlay:
            self.register_buffer("lut", graph_io.colormap_lut(graph.colormap))

    def forward(self, image: Tensor, class_index: Tensor | None = None) -> tuple[Tensor, ...]:
        """``image``: float ``[N,3,H,W]`` RGB in [0,1] (or uint8 ``[N,H,W,3]``, see
        :class:`GraphOptions`); ``class_index``: optional int64 ``[N]`` (-1: default class),
        used by ``cam`` only. Returns ``logits [N,K]``, ``heatmap [N,1,H,W]`` (float32), and
        with ``graph.overlay`` the ``overlay`` uint8 ``[N,H,W,3]``."""
        x = (graph_io.to_float_nchw(image, self.graph.input_format) - self.mean) / self.std
        self.tap.clear()
        logits = self.model(x.half() if self.graph.half else x).float()
        features = self.tap.take().float()
        weight = target = None
        if self.method == "cam":
            weight = self.model.get_submodule(self.head).weight.float()
            target = target_class(logits, class_index, self.target)
        heat = heads.heatmap(features, x.shape[-2:], self.method, weight, target, self.eps)
        if not self.graph.overlay:
            return logits, heat
        pixels = graph_io.pixels_nhwc(image, self.graph.input_format)
        return logits, heat, graph_io.overlay_rgb(pixels, heat, self.lut, self.graph.overlay_alpha)


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
    graph: GraphOptions = GraphOptions(),
) -> tuple[Explainer, ExplainerInfo]:
    """Probe ``model`` at ``input_size``, check the layer (and for ``cam`` the head), build.

    ``layer=None`` takes the map that feeds a global-average-pool + linear head, where there is
    one, else the last 4-D map. ``target`` fixes cam's class (default: the argmax). ``graph``
    sets the input format, the in-graph overlay and fp16; with ``graph.half`` the model is
    converted to fp16 in place, after the probe. Raises :class:`~.errors.UsageError` naming what
    is wrong.
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
    if graph.overlay and graph.overlay_alpha < 0:
        raise UsageError("--overlay-alpha must not be negative")
    if graph.half:
        model = model.half()
    explainer = Explainer(model, spec, method, head_name, mean, std, target=target, graph=graph)
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
        graph,
    )
    return explainer, info
