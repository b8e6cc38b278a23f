"""The heatmap head of the methods whose gradient is taken at the image (:mod:`.pixels`).

:class:`PixelHead` is :class:`.heatmap_head.HeatmapHead` with another step 3: the method's map
is made at input size from ``x`` (the graph's float image), ``∂y/∂x`` and, where the method asks,
a layer's ``A`` and ``∂y/∂A`` (guided Grad-CAM) or the bias layers' gradients (FullGrad), then
min-maxed with no resize (:func:`.pixels.unit`). A map at a layer's size is resized to the
image by two constant matrix products where the size is fixed at export (one pair per size),
else bilinearly. The outputs are assembled as the other heads' are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..plan import GraphOptions
from . import graph_io, heads, pixels
from .heatmap_head import HeatmapHead
from .methods import Method, Needs
from .targets import ClassLogit, Region, Target

__all__ = ["PixelHead"]


class PixelHead(HeatmapHead):
    """Steps 3-4 at input size: ``(image, logits, maps, grads) -> outputs``.

    ``maps``: the layer's ``[A]`` for guided Grad-CAM, else empty; ``grads``: ``[∂y/∂x, ∂y/∂A
    (guided Grad-CAM), ∂y/∂O_l ... (FullGrad)]``. ``input_size``: the image's ``(H, W)`` at
    export; ``map_sizes``: the ``(h, w)`` of every map the head resizes (the layer's, the bias
    layers'), for the constant resize matrices; ``biases`` and ``bias_sizes``: FullGrad's bias
    vector and map size of each bias layer call.
    """

    takes_lists = True

    def __init__(
        self,
        method: Method,
        eps: float = heads.DEFAULT_EPS,
        target: Target = ClassLogit(),
        layout: str = "NCHW",
        graph: GraphOptions = GraphOptions(),
        input_size: tuple[int, int] = (224, 224),
        map_sizes: Sequence[tuple[int, int]] = (),
        biases: Sequence[Tensor] = (),
        bias_sizes: Sequence[tuple[int, int]] = (),
    ) -> None:
        super().__init__(method, eps, target, layout, graph)
        self.input_size = tuple(input_size)
        self.fixed_size = True
        self.sizes = None
        self._sizes = sorted({tuple(s) for s in map_sizes if tuple(s) != self.input_size})
        big_h, big_w = self.input_size
        for h, w in self._sizes:
            rows, cols = heads.resize_matrix(h, big_h), heads.resize_matrix(w, big_w).T
            self.register_buffer(f"rows_{h}x{w}", rows, persistent=False)
            self.register_buffer(f"cols_{h}x{w}", cols, persistent=False)
        for i, b in enumerate(biases):
            self.register_buffer(f"bias_{i}", b.float().clone(), persistent=False)
        self.n_biases = len(biases)
        same = self.input_size
        self.bias_keys = tuple(None if tuple(s) == same else tuple(s) for s in bias_sizes)

    def resize(self, m: Tensor, size: Sequence[int]) -> Tensor:
        """``m`` ``[M,1,h,w]`` bilinearly to the image's ``size``: by its constant matrices where
        the sizes are those of the export, else :func:`.heads.resize_bilinear`."""
        key = tuple(m.shape[-2:])
        fixed = all(isinstance(d, int) for d in (*key, *size))
        if self.fixed_size and fixed and tuple(size) == self.input_size and key in self._sizes:
            h, w = key
            return getattr(self, f"rows_{h}x{w}") @ m @ getattr(self, f"cols_{h}x{w}")
        return heads.resize_bilinear(m, tuple(size))

    def maps(  # type: ignore[override]
        self,
        image: Tensor,
        logits: Tensor,
        features: Sequence[Tensor],
        grad: Sequence[Tensor] | None = None,
        weight: Tensor | None = None,
        class_index: Tensor | None = None,
        relu: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``(heatmaps float32 [M,1,H,W] in [0,1], classes)`` as :meth:`HeatmapHead.maps`."""
        if grad is None or not grad:
            raise ValueError("a method at the image needs the gradient at the image")
        k = self.target.top_k
        region = isinstance(self.target, Region)
        classes = None
        if k is not None or region:
            classes = self.target.classes(logits, class_index, keepdim=True)
        size = graph_io.image_size(image, self.graph.input_format)
        x = graph_io.to_float_nchw(image, self.graph.input_format).float()
        a = list(features)
        if self.layout == "NHWC":
            a = [t.permute(0, 3, 1, 2) for t in a]
        grads = list(grad)
        if self.method.layer_map and self.layout == "NHWC":
            grads[1] = grads[1].permute(0, 3, 1, 2)
        if k is not None:  # image by image, k maps each
            x = x[:, None].expand(-1, k, -1, -1, -1).flatten(0, 1)
            a = [t[:, None].expand(-1, k, -1, -1, -1).flatten(0, 1) for t in a]
        n_layer = 1 if self.method.layer_map else 0
        needs = Needs(
            a[0] if a else x,
            grads[1] if n_layer else None,
            image=x,
            image_grad=grads[0],
            bias_grads=tuple(grads[1 + n_layer :]),
            biases=tuple(getattr(self, f"bias_{i}") for i in range(self.n_biases)),
            bias_sizes=self.bias_keys,
            resize=lambda m: self.resize(m, size),
        )
        terms = self.method.terms(needs)
        m = torch.relu(terms.map) if relu else terms.map
        return pixels.unit(m, terms.scale, self.eps), (classes if k is not None or region else None)
