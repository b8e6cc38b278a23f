"""The heatmap head as a module: ``(image, logits, A, ∂y/∂A) -> (logits, heatmap[, overlay])``.

:class:`HeatmapHead` is steps 3-4 of :mod:`.explainer` and the optional in-graph overlay: the
method's channel weights (:mod:`.methods`), :func:`.heads.render`, the output dtype and the
overlay (:mod:`.graph_io`). It holds no model weights, so the same module follows the eager
capture and a lowered ``gradcam`` graph (:mod:`.lowering`). :class:`GraphOptions` says how the
graph meets a server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import graph_io, heads, methods

__all__ = ["GraphOptions", "HeatmapHead", "target_class"]


@dataclass(frozen=True)
class GraphOptions:
    """How the graph meets a server (see :mod:`.graph_io`).

    ``input_format``: ``float-nchw`` or ``uint8-nhwc``. ``overlay``: add a third output, the
    overlay as uint8 ``[N,H,W,3]`` RGB, blended with ``overlay_alpha`` and the ``colormap``.
    ``half``: fp16 weights and compute in the backbone (the head and min-max stay float32).
    ``heatmap_dtype``: ``float32`` in [0, 1], or ``uint8`` ``round(255·m)`` (4x fewer bytes out,
    for servers that only draw).
    """

    input_format: str = "float-nchw"
    overlay: bool = False
    overlay_alpha: float = 0.4
    colormap: str = "JET"
    half: bool = False
    heatmap_dtype: str = "float32"


def target_class(
    logits: Tensor,
    class_index: Tensor | None = None,
    default: int | None = None,
    keepdim: bool = False,
) -> Tensor:
    """Per image, ``class_index`` where it is >= 0, else ``default``, else the logits' argmax:
    ``[N]``, or ``[N, 1]`` with ``keepdim`` (then ``W[target]`` gathers ``[N, 1, C]``)."""
    best = logits.argmax(dim=1, keepdim=keepdim)
    if default is not None:
        best = torch.full_like(best, default)
    if class_index is None:
        return best
    chosen = class_index.to(best.dtype).reshape(best.shape)
    return torch.where(chosen >= 0, chosen, best)


class HeatmapHead(nn.Module):
    """Steps 3-4 and the optional overlay: ``(image, logits, A, ∂y/∂A) -> outputs``.

    It holds no model weights (``cam``'s linear weight is passed in), so a lowered ``gradcam``
    graph (:mod:`.lowering`) can be followed by this same module, traced as ``cam``'s is.

    ``sizes`` ``((h, w), (H, W))``, the map's and the image's size at export, lets the head
    resize by two constant matrix products (:func:`.heads.resize_matrix`) at exactly those
    sizes; other sizes, and any size while :attr:`fixed_size` is off (a graph whose size is
    free), use :func:`.heads.resize_bilinear`. ``weight_bound``, a bound on ``cam``'s
    ``|W|``, saves scaling ``α`` at run time (see :func:`.heads.render`).
    """

    def __init__(
        self,
        method: str,
        eps: float = heads.DEFAULT_EPS,
        target: int | None = None,
        layout: str = "NCHW",
        graph: GraphOptions = GraphOptions(),
        sizes: tuple[tuple[int, int], tuple[int, int]] | None = None,
        weight_bound: float | None = None,
    ) -> None:
        super().__init__()
        self.spec = methods.get(method)
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
        ``weight`` the linear weight for ``cam``."""
        if self.layout == "NHWC":
            features = features.permute(0, 3, 1, 2)
            grad = None if grad is None else grad.permute(0, 3, 1, 2)
        target = None
        if self.spec.has_class and self.spec.needs_linear:
            target = target_class(logits, class_index, self.target, keepdim=True)
        alpha = self.spec.weights(grad, weight, target)
        size = graph_io.image_size(image, self.graph.input_format)
        bound = self.weight_bound if self.spec.needs_linear else None
        heat = heads.render(features, alpha, size, self.eps, self._matrices(features, size), bound)
        out = graph_io.heatmap_output(heat, self.graph.heatmap_dtype)
        if not self.graph.overlay:
            return logits, out
        pixels = graph_io.pixels_nhwc(image, self.graph.input_format)
        return logits, out, graph_io.overlay_rgb(pixels, heat, self.lut, self.graph.overlay_alpha)
