"""The explainer: one module from image to (logits, heatmap).

``forward(image)`` runs, in one pass:

1. normalization, ``x = (image - mean) / std``, with ``image`` RGB in [0, 1], ``[N, 3, H, W]``;
2. the backbone, ``logits = model(x)``, while a :class:`~.tap.Tap` keeps the map ``A`` (and, for
   ``gradcam``, autograd gives ``∂y_c/∂A``, differentiating only the path from ``A`` on);
3. the head: the method's map (:mod:`.methods`; ``sum`` gives ``Σ_k A_k``, ``cam``
   ``ReLU(Σ_k W[c,k] A_k)``, ``gradcam`` ``ReLU(Σ_k α_k A_k)`` with
   ``α_k = mean_ij ∂y_c/∂A_k(i,j)``), for the target ``y`` (:mod:`.targets`);
4. a bilinear resize to ``(H, W)``, then a per-image min-max into [0, 1].

It returns ``logits [N, K]`` and ``heatmap [N, 1, H, W]``. ``sum`` and ``cam`` trace as they
are; a gradient method is first lowered to forward ops (:mod:`.lowering`). Either way the
module exports to TorchScript, ONNX and ``torch.export`` (:mod:`.export`). What is explained
and how is decided first, as a :class:`~.plan.Plan`, which the explainer carries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..artifact import samples
from ..artifact.contract import graph_image
from ..errors import OptionError, UsageError
from .conflicts import check_request
from .inspect import dead_head, probe
from .inspect.biases import BiasTaps
from .inspect.tap import Tap, TapSpec
from .inspect.tokens import to_map
from .maths import fusion, graph_io, heads, methods
from .maths.heatmap_head import FusedHead, HeatmapHead
from .maths.hessian import shapley_gradient
from .maths.methods import AUTO, Method
from .maths.pixel_head import PixelHead
from .maths.sampling import Sampling, make_samples
from .pixel_capture import capture_at_image
from .plan import IMAGENET_MEAN, IMAGENET_STD, GraphOptions, Plan, check_norm, make_plan

__all__ = ["Explainer", "Maps", "build_explainer", "check_input_size"]

Maps = Tensor | list[Tensor]  # one layer's map (or gradient), or one per fused layer


class Explainer(nn.Module):
    """``image -> (logits, heatmap)`` for ``model``, as its :class:`~.plan.Plan` says.

    Args:
        model: the classifier, in eval mode (in fp16 where ``plan.graph.half``).
        plan: the layer, method, target and graph options (:func:`.plan.make_plan`); the
            explainer keeps it as :attr:`plan`.
        eps: the flatness threshold of the min-max (:func:`.heads.to_unit`).

    Use :func:`build_explainer` to plan and build in one call. The tap's hook stays on
    ``model`` until :meth:`remove` (or the end of a ``with`` block).

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        >>> explainer = build_explainer(model, input_size=(32, 32))
        >>> explainer.plan.method, explainer.plan.layer  # the map the pooling reads; cam is exact
        ('cam', '2:input')
        >>> images = torch.rand(2, 3, 32, 32)  # float [N,3,H,W] RGB in [0,1]
        >>> with explainer, torch.inference_mode():  # the hook is removed at the end
        ...     logits, heatmap = explainer(images, torch.tensor([3, -1]))  # class per image
        >>> tuple(logits.shape), tuple(heatmap.shape)
        ((2, 10), (2, 1, 32, 32))
    """

    def __init__(self, model: nn.Module, plan: Plan, eps: float = heads.DEFAULT_EPS) -> None:
        super().__init__()
        method: Method = plan.method_spec
        if method.needs_linear and plan.head is None:
            raise UsageError(f"method {method.name} needs the name of its linear head")
        plan.graph.check()
        if method.needs_gradient:  # weights are constants; only ∂y/∂A is ever asked for
            for p in model.parameters():
                p.requires_grad_(False)
        self.model = model
        self.plan = plan
        self.method = method
        self.target = plan.target_spec
        self.graph = plan.graph
        self.taps = [
            Tap(model, TapSpec.parse(p.layer), clone=p.cloned, grad=method.needs_gradient)
            for p in plan.layers
            if not method.at_image or method.layer_map
        ]
        self.tap = self.taps[0] if self.taps else None
        self.register_buffer("mean", torch.tensor(plan.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(plan.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.sampler = make_samples(method.samples, plan.sampling or Sampling(), plan.input_size)
        self.bias_taps = BiasTaps(model) if method.biases else None
        if method.at_image:
            self.heatmap_head: HeatmapHead | FusedHead = self._pixel_head(eps)
            return
        bound = None
        if method.needs_linear:
            bound = float(model.get_submodule(plan.head).weight.detach().abs().max())
        layer_heads = [
            HeatmapHead(
                method, eps, plan.target_spec, p.layout, plan.graph, p.sizes(plan.input_size), bound
            )
            for p in plan.layers
        ]
        self.heatmap_head = (
            layer_heads[0]
            if len(layer_heads) == 1
            else FusedHead(layer_heads, eps, fusion.get(plan.fuse))
        )

    def _pixel_head(self, eps: float) -> PixelHead:
        """The head of a method at the image; FullGrad's bias layers surveyed on one forward."""
        plan, sizes, bias_sizes = self.plan, [], []
        if self.method.layer_map:
            sizes.append(plan.layers[0].sizes(plan.input_size)[0])
        if self.bias_taps is not None:
            p = next(self.model.parameters(), None)
            example = torch.zeros(1, 3, *plan.input_size, device=self.mean.device)
            self.bias_taps.survey(self.model, example.to(p.dtype) if p is not None else example)
            bias_sizes = self.bias_taps.sizes
            sizes += bias_sizes
        biases = [] if self.bias_taps is None else self.bias_taps.biases
        calls = [] if self.bias_taps is None else self.bias_taps.calls
        return PixelHead(
            self.method,
            eps,
            plan.target_spec,
            plan.layout,
            plan.graph,
            plan.input_size,
            sizes,
            [biases[i] for i in calls],
            bias_sizes,
        )

    @property
    def capture_counts(self) -> tuple[int, int]:
        """How many maps and gradients :meth:`capture` gives (a lowered graph's outputs)."""
        maps = len(self.taps)
        if not self.method.at_image:
            return maps, maps if self.method.needs_gradient else 0
        calls = 0 if self.bias_taps is None else len(self.bias_taps.calls)
        return maps, 1 + maps + calls

    def remove(self) -> None:
        """Take the taps' hooks off the model (the explainer cannot run after this)."""
        for tap in self.taps:
            tap.remove()
        if self.bias_taps is not None:
            self.bias_taps.remove()

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
        :class:`~.plan.GraphOptions`); ``class_index``: optional int64 ``[N]`` (-1: default
        class), used by the methods that explain a class. Returns ``logits [N,K]``, ``heatmap
        [N,1,H,W]`` (float32), and with ``graph.overlay`` the ``overlay`` uint8 ``[N,H,W,3]``."""
        return self.finish(image, *self.capture(image, class_index), class_index)

    def normalize(self, image: Tensor) -> Tensor:
        """Step 1: ``x = (image - mean) / std``, float ``[N,3,H,W]``, from the graph input."""
        return (graph_io.to_float_nchw(image, self.graph.input_format) - self.mean) / self.std

    def capture(
        self, image: Tensor, class_index: Tensor | None = None
    ) -> tuple[Tensor, Maps, Maps | None]:
        """Steps 1-2: ``(logits, A, ∂y/∂A or None)`` for the graph input ``image`` (for a method
        at the image, :func:`.pixel_capture.capture_at_image`'s lists)."""
        if self.method.at_image:
            x = graph_io.to_float_nchw(image, self.graph.input_format)
            return capture_at_image(self, x, class_index)
        return self.run(self.normalize(image), class_index)

    def run(self, x: Tensor, class_index: Tensor | None = None) -> tuple[Tensor, Maps, Maps | None]:
        """Step 2: ``(logits, A, ∂y/∂A or None)`` for the normalized batch ``x``."""
        if self.method.at_image:
            return capture_at_image(self, x * self.std + self.mean, class_index)
        if self.method.needs_gradient:
            return self.gradient(x, class_index)
        for tap in self.taps:
            tap.clear()
        logits = self.plan.output.pick(self.model(x.half() if self.graph.half else x)).float()
        return logits, self._as_maps([tap.take().float() for tap in self.taps]), None

    def _as_maps(self, tensors: list[Tensor]) -> Maps:
        """Each layer's tensor as a map ``[N,C,h,w]``: token sequences laid on their grid
        (:func:`.tokens.to_map`), maps as they are."""
        return _one(self.as_map_list(tensors))

    def as_map_list(self, tensors: list[Tensor]) -> list[Tensor]:
        """:meth:`_as_maps` as a list, one per tapped layer."""
        return [to_map(t, p.layout) for t, p in zip(tensors, self.plan.layers, strict=False)]

    def finish(
        self,
        image: Tensor,
        logits: Tensor,
        features: Maps,
        grad: Maps | None,
        class_index: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """Steps 3-4 (:class:`.HeatmapHead`), given ``cam``'s linear weight."""
        weight = None
        if self.method.needs_linear:
            weight = self.model.get_submodule(self.plan.head).weight.float()
        return self.heatmap_head(image, logits, features, grad, weight, class_index)

    def gradient(self, x: Tensor, class_index: Tensor | None = None) -> tuple[Tensor, Maps, Maps]:
        """``(logits, A, ∂y/∂A)`` for the normalized batch ``x``, by autograd (lists of them
        for fused layers).

        The tap makes ``A`` a leaf, so only the path from ``A`` to the logits is differentiated;
        ``y`` is the target's score (:mod:`.targets`), summed over the batch (images are
        independent). A top-k target has ``k`` scores: ``∂y_j/∂A`` for each, by ``k`` backward
        passes from the logits to ``A`` (the backbone before ``A`` runs once), stacked image by
        image, ``[N·k, ...]``. Works under ``torch.inference_mode`` and ``torch.no_grad`` too.
        """
        with torch.inference_mode(False), torch.enable_grad():
            if x.is_inference():
                x = x.clone()
            for tap in self.taps:
                tap.clear()
            logits = self.plan.output.pick(self.model(x.half() if self.graph.half else x))
            maps = [tap.take() for tap in self.taps]
            ys = self.target.scores(logits, self.target.classes(logits.detach(), class_index))
            second = self.method.second_order
            per_y = [
                self._grads(y, maps, retain=j < len(ys) - 1, second_order=second)
                for j, y in enumerate(ys)
            ]
        grads = [  # per map: ∂y/∂A, or the k of a top-k target image by image [N·k, ...]
            g[0] if self.target.top_k is None else torch.stack(g, 1).flatten(0, 1)
            for g in zip(*per_y, strict=True)
        ]
        return (
            logits.detach().float(),
            self._as_maps([a.detach().float() for a in maps]),
            self._as_maps([g.float() for g in grads]),
        )

    @staticmethod
    def _grads(
        y: Tensor, maps: list[Tensor], retain: bool, second_order: bool = False
    ) -> list[Tensor]:
        """``∂y/∂A`` for each map; zeros where the logits do not depend on it.

        ``second_order`` (ShapleyCAM): ``g − ½ H·A`` instead, each map on its own
        (:func:`.hessian.shapley_gradient`: ``g`` is taken with ``create_graph``, then
        differentiated again)."""
        grads: list[Tensor | None] = [None] * len(maps)
        if y.requires_grad:
            grads = list(
                torch.autograd.grad(
                    y,
                    maps,
                    retain_graph=retain or second_order,
                    allow_unused=True,
                    create_graph=second_order,
                )
            )
        if second_order:
            grads = [
                None if g is None else shapley_gradient(g, a, retain or i < len(maps) - 1)
                for i, (a, g) in enumerate(zip(maps, grads, strict=True))
            ]
        return [torch.zeros_like(a) if g is None else g for a, g in zip(maps, grads, strict=True)]


def check_input_size(input_size: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)``, checked: both positive; else an :class:`.OptionError`."""
    h, w = input_size
    if h <= 0 or w <= 0:
        raise OptionError("input_size", "{name} must be positive, got {h} {w}", h=h, w=w)
    return h, w


def build_explainer(
    model: nn.Module,
    layer: str | Sequence[str] | None = None,
    method: str | Method = AUTO,
    input_size: tuple[int, int] = (224, 224),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    head: str | None = None,
    target: int | None = None,
    graph: GraphOptions = GraphOptions(),
    top_k: int | None = None,
    output: str | None = None,
    background: int | None = 0,
    tokens: int | None = None,
    sampling: Sampling | None = None,
    fuse: str | None = None,
) -> Explainer:
    """Probe ``model`` at ``input_size``, plan (:func:`.plan.make_plan`), build, check.

    ``layer=None`` takes the map the classifier pools (see :func:`.layers.default_layer`); a
    list of layers fuses their maps (:class:`.heatmap_head.FusedHead`), by ``fuse``: ``mean``
    (None: the default) or ``product`` (pytorch-grad-cam's RefineCAM, :mod:`.fusion`).
    ``method="auto"`` takes ``cam`` where it is exact (the map feeds global average pooling + one
    ``nn.Linear``), else ``gradcam``; ``explainer.plan`` says which and why. ``target`` fixes the
    class to explain (default: the argmax); ``top_k`` explains the ``top_k`` best classes of each
    image instead, one map each (``heatmap [N,k,H,W]`` and ``classes [N,k]``). ``output`` picks
    the logits where the model returns several outputs (a dict key, a position, an attribute;
    default: :func:`.outputs.choose_output`'s obvious one); a segmentation model's per-pixel
    scores explain the class with most pixels, ``background`` left out (:class:`.targets.Region`).
    ``tokens``: how many prefix tokens (class, register) a token layer holds (default: what the
    model says, else ``T − h·w``). ``sampling``: the steps, noise and seed of a sampling method
    (``integrated-gradients``, ``smoothgrad``; :class:`.sampling.Sampling`).
    ``graph`` sets the input format, the in-graph overlay and fp16; with ``graph.half`` the model
    is converted to fp16 in place, after the probe; with a gradient method its parameters stop
    requiring grad.
    Raises
    :class:`~.errors.UsageError` naming what is wrong, also when the heatmap is flat (no
    signal) on the probe images.
    """
    if method != AUTO:  # the cheap checks before the probe; make_plan repeats them for callers
        method = methods.get(method)
    check_request(method, target, top_k, graph, head, layer, fuse)
    mean, std = check_norm(mean, std)
    h, w = check_input_size(input_size)
    model = model.eval()
    result = probe.probe_at_size(model, (h, w), mean, std, output)
    plan = make_plan(
        model,
        result,
        layer,
        method,
        head,
        target,
        mean,
        std,
        graph,
        top_k,
        background,
        tokens,
        sampling,
        fuse,
    )
    if graph.half:
        model = model.half()
    explainer = Explainer(model, plan)
    explainer.to(probe.device_of(model))  # its buffers (mean, std, head) where the model is
    _check_signal(explainer, result)
    return explainer


def _one(tensors: list[Tensor]) -> Maps:
    """One layer's tensor as it is; several layers' as the list (:class:`.FusedHead`)."""
    return tensors[0] if len(tensors) == 1 else tensors


def _check_signal(explainer: Explainer, result: probe.Probe) -> None:
    """A UsageError if the heatmap is flat on every probe image (random ones and a photo):
    one that says so where the classifier cannot tell the images apart
    (:func:`.dead_head.diagnose`: an all-zero head, or logits equal for every image), which
    no layer or method can fix; else one that says to pick another layer or method."""
    h, w = explainer.plan.input_size
    images = [np.random.default_rng(0).random((2, 3, h, w), dtype=np.float32)]
    with contextlib.suppress(FileNotFoundError):  # scikit-image missing: random images only
        images.append(samples.load_rgb(samples.photo_path("chelsea.png"), (h, w))[None])
    logits = []
    with torch.no_grad():
        for image in images:
            graph_input = torch.from_numpy(graph_image(image, explainer.graph.input_format))
            graph_input = graph_input.to(explainer.mean.device)
            outputs = explainer(graph_input)
            if outputs[1].amax() > 0:
                return
            logits.append(outputs[0])
    why = dead_head.diagnose(explainer.model, result, logits)
    if why is not None:
        raise UsageError(why)
    raise OptionError(
        "layer",
        "the {m} map of '{spec}' is flat on every probe image (it varies by less than 1e-5 of "
        "the magnitude of the terms it sums, e.g. a channel sum that cancels to rounding noise), "
        "so it has no signal to show; pick another {name} or {method}",
        m=explainer.plan.method,
        spec=explainer.plan.layer,
    )
