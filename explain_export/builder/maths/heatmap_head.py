"""The heatmap head as a module: ``(image, logits, A, ∂y/∂A) -> (logits, heatmap[, overlay])``.

:class:`HeatmapHead` is steps 3-4 of :mod:`.explainer` and the optional in-graph overlay: the
method's map before resize (its record's function, :mod:`.methods`), :func:`.heads.to_unit`,
the output dtype and the overlay (:mod:`.graph_io`). It holds no model weights, so the same
module follows the eager capture and a lowered gradient graph (:mod:`.lowering`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from ..plan import GraphOptions
from . import fusion, graph_io, heads
from .methods import Method, Needs
from .targets import ClassLogit, Region, Target

__all__ = ["FusedHead", "HeatmapHead"]


class HeatmapHead(nn.Module):
    """Steps 3-4 and the optional overlay: ``(image, logits, A, ∂y/∂A) -> outputs``.

    ``method`` is the resolved record (:mod:`.methods`), ``target`` what is explained
    (:mod:`.targets`). It holds no model weights (``cam``'s linear weight is passed in), so a
    lowered gradient graph (:mod:`.lowering`) can be followed by this same module, traced as
    ``cam``'s is.

    ``sizes`` ``((h, w), (H, W))``, the map's and the image's size at export, lets the head
    resize by two constant matrix products (:func:`.heads.resize_matrix`) at exactly those
    sizes; other sizes, and any size while :attr:`fixed_size` is off (a graph whose size is
    free), use :func:`.heads.resize_bilinear`. ``weight_bound``, a bound on ``cam``'s
    ``|W|``, saves scaling ``α`` at run time (see :func:`.heads.render`).
    """

    def __init__(
        self,
        method: Method,
        eps: float = heads.DEFAULT_EPS,
        target: Target = ClassLogit(),
        layout: str = "NCHW",
        graph: GraphOptions = GraphOptions(),
        sizes: tuple[tuple[int, int], tuple[int, int]] | None = None,
        weight_bound: float | None = None,
    ) -> None:
        super().__init__()
        self.method = method
        self.weight_bound = weight_bound
        self.eps = eps
        self.target = target
        self.layout = layout
        self.graph = graph
        if graph.overlay:
            self.register_buffer("lut", graph_io.colormap_lut(graph.colormap))
        self.sizes = sizes
        self.fixed_size = sizes is not None
        if sizes is not None:
            (h, w), (big_h, big_w) = sizes
            self.register_buffer("resize_rows", heads.resize_matrix(h, big_h), persistent=False)
            self.register_buffer("resize_cols", heads.resize_matrix(w, big_w).T, persistent=False)

    @contextlib.contextmanager
    def free_size(self) -> Iterator[None]:
        """Within: resize by :func:`.heads.resize_bilinear` at every size (for graphs exported
        with a free image size, which must not bake in the fixed-size matrices)."""
        fixed, self.fixed_size = self.fixed_size, False
        try:
            yield
        finally:
            self.fixed_size = fixed

    def _matrices(self, features: Tensor, size: Sequence[int]) -> tuple[Tensor, Tensor] | None:
        if not self.fixed_size or self.sizes is None:
            return None
        now = (tuple(features.shape[-2:]), tuple(size))
        if not all(isinstance(d, int) for pair in now for d in pair):
            return None  # symbolic sizes: a graph whose size is free
        return (self.resize_rows, self.resize_cols) if now == self.sizes else None

    def maps(
        self,
        image: Tensor,
        logits: Tensor,
        features: Tensor,
        grad: Tensor | None = None,
        weight: Tensor | None = None,
        class_index: Tensor | None = None,
        relu: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``(heatmaps float32 [M,1,H,W] in [0,1], classes)``: the method's map per image (per
        image and class with a top-k target, ``M = N·k``), ReLU'd first with ``relu``, resized
        and min-maxed; ``classes`` the top-k target's ``[N,k]``, else None."""
        if self.layout == "NHWC":
            features = features.permute(0, 3, 1, 2)
            grad = None if grad is None else grad.permute(0, 3, 1, 2)
        k = self.target.top_k
        region = isinstance(self.target, Region)
        classes = None
        if self.method.has_class and (self.method.needs_linear or k is not None or region):
            classes = self.target.classes(logits, class_index, keepdim=True)
        size = graph_io.image_size(image, self.graph.input_format)
        matrices = self._matrices(features, size)
        target = classes
        if k is not None and classes is not None:  # image by image, k maps each
            features = features[:, None].expand(-1, k, -1, -1, -1).flatten(0, 1)
            target = classes.reshape(-1, 1)
        bound = self.weight_bound if self.method.needs_linear else None
        terms = self.method.terms(Needs(features, grad, weight, target, bound))
        m = torch.relu(terms.map) if relu else terms.map
        heat = heads.to_unit(m, terms.scale, size, self.eps, matrices)
        return heat, (classes if k is not None or region else None)

    def assemble(
        self, image: Tensor, logits: Tensor, heat: Tensor, classes: Tensor | None
    ) -> tuple[Tensor, ...]:
        """The graph's outputs from :meth:`maps`' heatmaps: ``(logits, heatmap[, overlay])``,
        or with a top-k target ``(logits, heatmap [N,k,H,W], classes [N,k])``, with a
        segmentation region ``(scores [N,K,H',W'], heatmap, classes [N,1])``."""
        k = self.target.top_k
        if classes is not None:  # top-k: [N,k] maps; a segmentation region: its class [N,1]
            heat = heat.reshape(-1, k or 1, heat.shape[2], heat.shape[3])
            return logits, graph_io.heatmap_output(heat, self.graph.heatmap_dtype), classes
        out = graph_io.heatmap_output(heat, self.graph.heatmap_dtype)
        if not self.graph.overlay:
            return logits, out
        pixels = graph_io.pixels_nhwc(image, self.graph.input_format)
        return logits, out, graph_io.overlay_rgb(pixels, heat, self.lut, self.graph.overlay_alpha)

    def forward(
        self,
        image: Tensor,
        logits: Tensor,
        features: Tensor,
        grad: Tensor | None = None,
        weight: Tensor | None = None,
        class_index: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """``(logits, heatmap[, overlay])`` for the graph input ``image`` (its size sets the
        heatmap's); ``features`` is ``A`` as tapped, ``grad`` its gradient for ``gradcam``,
        ``weight`` the linear weight for ``cam``, ``class_index`` the run-time class per image.

        A top-k target (:class:`~.targets.TopK`) gives ``(logits, heatmap [N,k,H,W], classes
        [N,k])``: each image's map is made for each of its ``k`` classes (``grad`` then holds
        ``N·k`` gradients, image by image) and min-maxed on its own."""
        heat, classes = self.maps(image, logits, features, grad, weight, class_index)
        return self.assemble(image, logits, heat, classes)


class FusedHead(nn.Module):
    """Several layers' heads as one (:mod:`.fusion`): each layer's map is made by its
    :class:`HeatmapHead`, ReLU'd, resized and min-maxed; the maps are fused by ``how`` (averaged
    by default, or multiplied) and min-maxed again. Takes the maps and gradients as lists, one
    per layer, in the heads' order."""

    def __init__(
        self,
        layer_heads: Sequence[HeatmapHead],
        eps: float = heads.DEFAULT_EPS,
        how: fusion.Fusion = fusion.MEAN,
    ) -> None:
        super().__init__()
        self.heads = nn.ModuleList(layer_heads)
        self.eps = eps
        self.how = how

    @property
    def lut(self) -> Tensor:
        return self.heads[0].lut

    @contextlib.contextmanager
    def free_size(self) -> Iterator[None]:
        """Every layer's :meth:`HeatmapHead.free_size`."""
        with contextlib.ExitStack() as stack:
            for head in self.heads:
                stack.enter_context(head.free_size())
            yield

    def forward(
        self,
        image: Tensor,
        logits: Tensor,
        features: Sequence[Tensor],
        grad: Sequence[Tensor] | None = None,
        weight: Tensor | None = None,
        class_index: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        grads = [None] * len(features) if grad is None else list(grad)
        units, classes = [], None
        for head, a, g in zip(self.heads, features, grads, strict=True):
            heat, classes = head.maps(image, logits, a, g, weight, class_index, relu=True)
            units.append(heat)
        return self.heads[0].assemble(image, logits, self.how.combine(units, self.eps), classes)
