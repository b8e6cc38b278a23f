"""The explainer: one module from image to (logits, heatmap).

``forward(image)`` runs, in one pass:

1. normalization, ``x = (image - mean) / std``, with ``image`` RGB in [0, 1], ``[N, 3, H, W]``;
2. the backbone, ``logits = model(x)``, while a :class:`~.tap.Tap` keeps the map ``A`` (and, for
   ``gradcam``, autograd gives ``∂y_c/∂A``, differentiating only the path from ``A`` on);
3. the head (:mod:`.methods`): ``sum`` gives ``Σ_k A_k``, ``cam`` ``ReLU(Σ_k W[c,k] A_k)``,
   ``gradcam`` ``ReLU(Σ_k α_k A_k)`` with ``α_k = mean_ij ∂y_c/∂A_k(i,j)``;
4. a bilinear resize to ``(H, W)``, then a per-image min-max into [0, 1].

It returns ``logits [N, K]`` and ``heatmap [N, 1, H, W]``. ``sum`` and ``cam`` trace as they
are; ``gradcam`` is first lowered to forward ops (:mod:`.lowering`). Either way the module
exports to TorchScript, ONNX and ``torch.export`` (:mod:`.export`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..artifact import samples
from ..artifact.contract import HEATMAP_DTYPES, INPUT_FORMATS, graph_image
from ..errors import OptionError, UsageError
from . import gap_head, graph_io, heads, layers, methods, probe
from .heatmap_head import GraphOptions, HeatmapHead, target_class
from .methods import AUTO
from .tap import Tap, TapSpec

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Explainer",
    "ExplainerInfo",
    "GraphOptions",
    "HeatmapHead",
    "build_explainer",
    "check_norm",
    "target_class",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ExplainerInfo:
    """What :func:`build_explainer` chose and checked."""

    method: str
    layer: str
    head: str | None  # the linear layer cam uses
    target: int | None  # the fixed class to explain; None: the argmax
    num_classes: int
    feature_shape: tuple[int, ...]  # A's shape [C, h, w] at the probe size
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    graph: GraphOptions = GraphOptions()
    requested: str = ""  # the method asked for ("auto", or the method itself)
    reason: str = ""  # why ``method`` was chosen, for auto
    layout: str = "NCHW"  # the tapped tensor's layout; NHWC maps are permuted
    cloned: bool = False  # an in-place op changes the tapped tensor later: the tap copies it


class Explainer(nn.Module):
    """``image -> (logits, heatmap)`` for ``model``, tapping ``layer``.

    Args:
        model: the classifier, in eval mode.
        layer: the map to explain, as ``NAME[:input|:output][@CALL]`` (see :mod:`.tap`).
        method: ``"cam"``, ``"gradcam"`` or ``"sum"`` (see :mod:`.methods`).
        head: for ``cam``, the name of the ``nn.Linear`` that follows the global average pool.
        target: for ``cam`` and ``gradcam``, a fixed class to explain instead of the argmax.
        clone: the tap copies ``A`` (an in-place op changes it later; :mod:`.probe` tells).
        layout: ``"NHWC"`` for a channels-last map, which is permuted to ``[N,C,h,w]``.
        sizes: ``((h, w), (H, W))``, the map's size at the image size ``(H, W)`` the graph is
            exported for: the head then resizes by constant matrices (:class:`HeatmapHead`).
        mean, std: per-channel normalization applied to the [0, 1] RGB input.
        graph: input format, in-graph overlay, fp16 (:class:`GraphOptions`). With ``half`` the
            model must already be in fp16.

    Use :func:`build_explainer` to get one whose layer and head have been checked. The tap's
    hook stays on ``model`` until :meth:`remove` (or the end of a ``with`` block).

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        >>> explainer, info = build_explainer(model, input_size=(32, 32))
        >>> info.method, info.layer  # the map the pooling reads; cam is exact there
        ('cam', '2:input')
        >>> images = torch.rand(2, 3, 32, 32)  # float [N,3,H,W] RGB in [0,1]
        >>> with explainer, torch.inference_mode():  # the hook is removed at the end
        ...     logits, heatmap = explainer(images, torch.tensor([3, -1]))  # class per image
        >>> tuple(logits.shape), tuple(heatmap.shape)
        ((2, 10), (2, 1, 32, 32))
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
        clone: bool = False,
        layout: str = "NCHW",
        sizes: tuple[tuple[int, int], tuple[int, int]] | None = None,
    ) -> None:
        super().__init__()
        spec = methods.get(method)
        if spec.needs_linear and head is None:
            raise UsageError(f"method {method} needs the name of its linear head")
        if spec.needs_gradient:  # weights are constants; only ∂y/∂A is ever asked for
            for p in model.parameters():
                p.requires_grad_(False)
        self.model = model
        self.method = method
        self.spec = spec
        self.head = head
        self.target = target
        self.tap = Tap(
            model,
            TapSpec.parse(layer) if isinstance(layer, str) else layer,
            clone=clone,
            grad=spec.needs_gradient,
        )
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        if graph.heatmap_dtype not in HEATMAP_DTYPES:
            raise UsageError(
                f"unknown heatmap dtype '{graph.heatmap_dtype}'; "
                f"choose one of {', '.join(HEATMAP_DTYPES)}"
            )
        if graph.input_format not in INPUT_FORMATS:
            raise UsageError(
                f"unknown input format '{graph.input_format}'; "
                f"choose one of {', '.join(INPUT_FORMATS)}"
            )
        self.graph = graph
        bound = None
        if spec.needs_linear:
            bound = float(model.get_submodule(head).weight.detach().abs().max())
        self.heatmap_head = HeatmapHead(method, eps, target, layout, graph, sizes, bound)

    def remove(self) -> None:
        """Take the tap's hook off the model (the explainer cannot run after this)."""
        self.tap.remove()

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @property
    def lut(self) -> Tensor:
        """The in-graph overlay's colormap (``graph.overlay`` only)."""
        return self.heatmap_head.lut

    def forward(self, image: Tensor, class_index: Tensor | None = None) -> tuple[Tensor, ...]:
        """``image``: float ``[N,3,H,W]`` RGB in [0,1] (or uint8 ``[N,H,W,3]``, see
        :class:`GraphOptions`); ``class_index``: optional int64 ``[N]`` (-1: default class),
        used by the methods that explain a class. Returns ``logits [N,K]``, ``heatmap
        [N,1,H,W]`` (float32), and with ``graph.overlay`` the ``overlay`` uint8 ``[N,H,W,3]``."""
        return self.explain(image, class_index)

    def explain(
        self, image: Tensor, class_index: Tensor | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """:meth:`forward`, with ``noise`` added to the normalized input (see :meth:`capture`)."""
        logits, features, grad = self.capture(image, class_index, noise)
        weight = None
        if self.spec.needs_linear:
            weight = self.model.get_submodule(self.head).weight.float()
        return self.heatmap_head(image, logits, features, grad, weight, class_index)

    def capture(
        self, image: Tensor, class_index: Tensor | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Steps 1-2: ``(logits, A, ∂y_c/∂A or None)`` for the graph input ``image``.

        ``noise`` is added to the normalized input (verification measures how much the eager
        heatmap itself moves under it; see :func:`.verify.heatmap_limits`)."""
        x = (graph_io.to_float_nchw(image, self.graph.input_format) - self.mean) / self.std
        if noise is not None:
            x = x + noise
        if self.spec.needs_gradient:
            return self.gradient(x, class_index)
        self.tap.clear()
        logits = self.model(x.half() if self.graph.half else x).float()
        return logits, self.tap.take().float(), None

    def gradient(
        self, x: Tensor, class_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits, A, ∂y_c/∂A)`` for the normalized batch ``x``, by autograd.

        The tap makes ``A`` a leaf, so only the path from ``A`` to the logits is differentiated;
        ``y_c`` is summed over the batch (images are independent). Works under
        ``torch.inference_mode`` and ``torch.no_grad`` too.
        """
        with torch.inference_mode(False), torch.enable_grad():
            if x.is_inference():
                x = x.clone()
            self.tap.clear()
            logits = self.model(x.half() if self.graph.half else x)
            a = self.tap.take()
            target = target_class(logits.detach(), class_index, self.target)
            # Σ_n y_{n,c_n} as a masked sum, not a gather: its backward is a product, where a
            # gather's is a scatter-add, which ONNX Runtime's CPU provider lacks in fp16.
            classes = torch.arange(logits.shape[1], device=logits.device)
            y = (logits * (classes[None, :] == target[:, None]).to(logits.dtype)).sum()
            grad = None
            if y.requires_grad:
                grad = torch.autograd.grad(y, a, allow_unused=True)[0]
            if grad is None:  # the logits do not depend on A
                grad = torch.zeros_like(a)
        return logits.detach().float(), a.detach().float(), grad.float()


def check_norm(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Three means and three positive stds, as float tuples."""
    mean, std = _check_triplet("mean", mean), _check_triplet("std", std)
    if any(s <= 0 for s in std):
        raise OptionError(
            "std", "{name} values must be positive, got {v}", v=" ".join(map(str, std))
        )
    return mean, std


def _check_triplet(name: str, values: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise OptionError(name, "{name} takes 3 values (R G B), got {n}", n=len(values))
    return values


def build_explainer(
    model: nn.Module,
    layer: str | None = None,
    method: str = AUTO,
    input_size: tuple[int, int] = (224, 224),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    head: str | None = None,
    target: int | None = None,
    graph: GraphOptions = GraphOptions(),
) -> tuple[Explainer, ExplainerInfo]:
    """Probe ``model`` at ``input_size``, check the layer (and for ``cam`` the head), build.

    ``layer=None`` takes the map the classifier pools (see :func:`.layers.default_layer`).
    ``method="auto"`` takes ``cam`` where it is exact (the map feeds global average pooling + one
    ``nn.Linear``), else ``gradcam``; the info says which and why. ``target`` fixes the class to
    explain (default: the argmax). ``graph`` sets the input format, the in-graph overlay and
    fp16; with ``graph.half`` the model is converted to fp16 in place, after the probe; with
    ``gradcam`` its parameters stop requiring grad. Raises :class:`~.errors.UsageError` naming
    what is wrong, also when the heatmap is flat (no signal) on the probe images.
    """
    if method != AUTO:
        methods.get(method)
    mean, std = check_norm(mean, std)
    h, w = input_size
    if h <= 0 or w <= 0:
        raise OptionError("input_size", "{name} must be positive, got {h} {w}", h=h, w=w)
    model = model.eval()
    result = probe.probe_at_size(model, (h, w), mean, std)
    spec = TapSpec.parse(layer) if layer else layers.default_layer(result)
    record = probe.select(result, model, spec)
    shape = record.shape(spec.port)
    layout = probe.layout(shape, result.input_size)
    feature_shape = probe.spatial(shape, result.input_size)
    num_classes = int(result.logits.shape[1])
    chosen, reason, head_name = _choose_method(method, result, model, record, spec, head, layout)
    if target is not None:
        if not methods.get(chosen).has_class:
            raise OptionError(
                "target",
                "{name} needs a method that explains a class (cam, gradcam); {chosen} has no "
                "target class",
                chosen=chosen,
            )
        if not 0 <= target < num_classes:
            raise OptionError(
                "target",
                "{name} {target} is out of range: the model has {n} classes (0..{last})",
                target=target,
                n=num_classes,
                last=num_classes - 1,
            )
    if graph.overlay and graph.overlay_alpha < 0:
        raise OptionError("overlay_alpha", "{name} must not be negative")
    if graph.half:
        model = model.half()
    explainer = Explainer(
        model,
        spec,
        chosen,
        head_name,
        mean,
        std,
        target=target,
        graph=graph,
        clone=record.mutated(spec.port),
        layout=layout,
        sizes=((int(feature_shape[1]), int(feature_shape[2])), (h, w)),
    )
    info = ExplainerInfo(
        chosen,
        str(spec),
        head_name,
        target,
        num_classes,
        tuple(feature_shape),
        (h, w),
        mean,
        std,
        graph,
        requested=method,
        reason=reason,
        layout=layout,
        cloned=record.mutated(spec.port),
    )
    explainer.to(probe.device_of(model))  # its buffers (mean, std, head) where the model is
    _check_signal(explainer, info)
    return explainer, info


def _choose_method(
    method: str,
    result: probe.Probe,
    model: nn.Module,
    record: probe.CallRecord,
    spec: TapSpec,
    head: str | None,
    layout: str,
) -> tuple[str, str, str | None]:
    """``(method, why, linear head)``: ``auto`` takes cam where the probe shows it exact.

    A ``head`` given by name asks for cam."""
    if head is not None and method == AUTO:
        method = "cam"
    if method not in (AUTO, "cam"):
        if head is not None:
            raise OptionError(
                "head", "{name} names cam's linear layer; {m} does not use one", m=method
            )
        return method, "", None
    if method == "cam":
        found = gap_head.find_gap_linear_head(result, model, record, spec, head)
        return "cam", f"'{spec}' feeds global average pooling + '{found.linear}'", found.linear
    if layout == "NCHW":
        try:
            found = gap_head.find_gap_linear_head(result, model, record, spec, head)
        except UsageError as exc:
            why = str(exc).split(";")[0]
        else:
            return (
                "cam",
                f"'{spec}' feeds global average pooling + '{found.linear}', where cam equals "
                "Grad-CAM",
                found.linear,
            )
    else:
        why = "the map is channels-last"
    return "gradcam", f"cam is not exact here ({why}), so the gradient is computed", None


def _check_signal(explainer: Explainer, info: ExplainerInfo) -> None:
    """A UsageError if the heatmap is flat on every probe image (random ones and a photo)."""
    h, w = info.input_size
    images = [np.random.default_rng(0).random((2, 3, h, w), dtype=np.float32)]
    with contextlib.suppress(FileNotFoundError):  # scikit-image missing: random images only
        images.append(samples.load_rgb(samples.photo_path("chelsea.png"), (h, w))[None])
    with torch.no_grad():
        for image in images:
            graph_input = torch.from_numpy(graph_image(image, explainer.graph.input_format))
            graph_input = graph_input.to(explainer.mean.device)
            if explainer(graph_input)[1].amax() > 0:
                return
    raise OptionError(
        "layer",
        "the {m} map of '{spec}' is flat on every probe image (it varies by less than 1e-5 of "
        "the magnitude of the terms it sums, e.g. a channel sum that cancels to rounding noise), "
        "so it has no signal to show; pick another {name} or {method}",
        m=info.method,
        spec=info.layer,
    )
