"""The heatmap head as a module: ``(image, logits, A, ∂y/∂A) -> (logits, heatmap[, overlay])``.

:class:`HeatmapHead` is steps 3-4 of :mod:`.explainer` and the optional in-graph overlay: the
method's map before resize (its record's function, :mod:`.methods`), :func:`.heads.to_unit`,
the output dtype and the overlay (:mod:`.graph_io`). It holds no model weights, so the same
module follows the eager capture and a lowered gradient graph (:mod:`.lowering`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from . import graph_io, heads
from .methods import Method, Needs
from .plan import GraphOptions
from .targets import ClassLogit, Target

__all__ = ["HeatmapHead"]


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

    def _heat(
        self,
        image: Tensor,
        features: Tensor,
        grad: Tensor | None,
        weight: Tensor | None,
        classes: Tensor | None,
        matrices: tuple[Tensor, Tensor] | None,
    ) -> Tensor:
        """The method's map, resized and min-maxed: float32 ``[M, 1, H, W]`` for ``M`` maps."""
        bound = self.weight_bound if self.method.needs_linear else None
        terms = self.method.terms(Needs(features, grad, weight, classes, bound))
        size = graph_io.image_size(image, self.graph.input_format)
        return heads.to_unit(terms.map, terms.scale, size, self.eps, matrices)

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
        if self.layout == "NHWC":
            features = features.permute(0, 3, 1, 2)
            grad = None if grad is None else grad.permute(0, 3, 1, 2)
        k = self.target.top_k
        classes = None
        if self.method.has_class and (self.method.needs_linear or k is not None):
            classes = self.target.classes(logits, class_index, keepdim=True)
        matrices = self._matrices(features, graph_io.image_size(image, self.graph.input_format))
        if k is None:
            heat = self._heat(image, features, grad, weight, classes, matrices)
            out = graph_io.heatmap_output(heat, self.graph.heatmap_dtype)
        else:  # image by image, k maps each: the batch of N·k maps, back to [N, k, H, W]
            assert classes is not None
            n = features.shape[0]
            many = features[:, None].expand(-1, k, -1, -1, -1).flatten(0, 1)
            heat = self._heat(image, many, grad, weight, classes.reshape(-1, 1), matrices)
            heat = heat.reshape(n, k, heat.shape[2], heat.shape[3])
            return logits, graph_io.heatmap_output(heat, self.graph.heatmap_dtype), classes
        if not self.graph.overlay:
            return logits, out
        pixels = graph_io.pixels_nhwc(image, self.graph.input_format)
        return logits, out, graph_io.overlay_rgb(pixels, heat, self.lut, self.graph.overlay_alpha)
