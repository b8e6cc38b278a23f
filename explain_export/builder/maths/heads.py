"""The heatmap's math as pure tensor functions; :mod:`.methods` and :mod:`.heatmap_head` compose
them.

A channel-weighted head takes the tapped map ``A`` ``[N, C, h, w]`` and channel weights ``α``
``[N, C]`` (none for ``sum``) and gives a map ``[N, 1, h, w]``: ``sum`` is
:math:`m = \\sum_k A_k`; ``cam`` (:func:`cam_weights`, :math:`α_k = W[c,k]`) and ``gradcam``
(:func:`gradcam_weights`, :math:`α_k = \\frac{1}{hw}\\sum_{ij} \\partial y_c / \\partial A_k(i,j)`)
are :math:`m = \\mathrm{ReLU}(\\sum_k α_k A_k)`. :func:`channel_terms` computes it scaled so
that nothing overflows, with its terms' magnitude; :func:`to_unit` resizes and min-maxes any
map before resize (:func:`render` is the two in one); :func:`fuse` averages the heatmaps of
several layers, :func:`fuse_product` multiplies them. :func:`finish` is the same tail for a map
computed elsewhere (the benchmarks' eager Grad-CAM). Only ops that trace and export to
TorchScript and ONNX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_EPS",
    "cam_weights",
    "channel_terms",
    "finish",
    "fuse",
    "fuse_product",
    "gradcam_weights",
    "guard",
    "magnitude",
    "minmax_normalize",
    "render",
    "resize_bilinear",
    "resize_matrix",
    "to_unit",
]

# A range below this fraction of the map's magnitude is float32 rounding noise, not signal.
DEFAULT_EPS = 1e-5


def _check_map(features: Tensor) -> None:
    if features.dim() != 4:
        raise ValueError(f"expected a [N,C,h,w] feature map, got shape {list(features.shape)}")


def cam_weights(weight: Tensor, class_index: Tensor) -> Tensor:
    r"""CAM's channel weights :math:`α_k = W[c,k]`: rows of the linear weight ``[K, C]``,
    ``[N, C]`` for ``class_index`` ``[N]`` (``[N, 1, C]`` for ``[N, 1]``)."""
    return F.embedding(class_index, weight)  # one Gather in ONNX for either index shape


def gradcam_weights(grad: Tensor) -> Tensor:
    r"""Grad-CAM's channel weights: :math:`α_k = \mathrm{mean}_{ij} \partial y_c/\partial A_k(i,j)`.

    ``grad`` is :math:`\partial y_c / \partial A`, ``[N, C, h, w]``; the result is ``[N, C]``.
    """
    _check_map(grad)
    return grad.mean(dim=(2, 3))


def magnitude(features: Tensor, weights: Tensor | None = None) -> Tensor:
    r"""The largest sum of the terms' magnitudes per image: :math:`\max_{ij} \sum_k |α_k A_k(i,j)|`.

    A head's sum can cancel to rounding noise (a LayerNorm output sums to ~0 over channels);
    that noise is of the order of float32's epsilon times this, not times the sum itself.
    Returns ``[N, 1, 1, 1]``; ``weights`` None means all ones (``sum``).
    """
    _check_map(features)
    a = features.abs()
    if weights is not None:
        a = weights.abs()[:, :, None, None] * a
    return a.sum(dim=1, keepdim=True).amax(dim=(2, 3), keepdim=True)


def resize_bilinear(maps: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear resize to ``size`` = (H, W), ``align_corners=False``.

    This samples like ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)``.
    """
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def resize_matrix(n_in: int, n_out: int) -> Tensor:
    """The ``[n_out, n_in]`` matrix of 1-D linear interpolation (``align_corners=False``).

    Bilinear resizing is separable, so ``R_h · m · R_wᵀ`` equals :func:`resize_bilinear` of
    ``m`` (to rounding): two small matrix products where the size is fixed at export time.

    Example:
        >>> m = torch.rand(1, 1, 7, 5)
        >>> out = resize_matrix(7, 32) @ m @ resize_matrix(5, 20).T
        >>> bool(torch.allclose(out, resize_bilinear(m, (32, 20)), atol=1e-6))
        True
    """
    eye = torch.eye(n_in, dtype=torch.float64).unsqueeze(0)  # [1, n_in, n_in]: n_in signals
    rows = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0]
    return rows.T.contiguous().to(torch.float32)


def _span_to_unit(maps: Tensor, eps: float) -> Tensor:
    """Min-max of maps whose magnitude is at most 1: flat (span <= eps) gives 0."""
    lo = maps.amin(dim=(1, 2, 3), keepdim=True)
    span = maps.amax(dim=(1, 2, 3), keepdim=True) - lo
    # x / inf = 0: a flat map is 0 everywhere, with no NaN and no second mask product
    return (maps - lo) / torch.where(span > eps, span, float("inf"))


def minmax_normalize(maps: Tensor, eps: float = DEFAULT_EPS, scale: Tensor | None = None) -> Tensor:
    r"""Per-image min-max: :math:`m \leftarrow (m - \min m) / (\max m - \min m)`, or 0 if flat.

    The map is first divided by :math:`s = \max(\max|m|, \mathrm{scale})` (which changes nothing
    in exact arithmetic), so no difference overflows and ``ε`` is relative: a map whose range is
    at most ``ε·s`` is flat, and gives 0 everywhere. ``scale`` ``[N,1,1,1]`` is the magnitude of
    the terms the map was summed from (:func:`magnitude`): a sum that cancels to rounding noise
    is flat too. Interpolating a constant map, for one, leaves a few ulps of noise that a plain
    min-max would stretch to [0, 1]. The result lies in [0, 1], never NaN.

    Example:
        >>> minmax_normalize(torch.tensor([[[[1.0, 3.0]]]]))
        tensor([[[[0., 1.]]]])
    """
    peak = maps.abs().amax(dim=(1, 2, 3), keepdim=True)
    if scale is not None:
        peak = torch.maximum(peak, scale)
    return _span_to_unit(maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), eps)


def finish(
    maps: Tensor,
    size: tuple[int, int] | torch.Size,
    eps: float = DEFAULT_EPS,
    scale: Tensor | None = None,
) -> Tensor:
    """Resize to the image size, then min-max (the order in which the result spans [0, 1])."""
    return minmax_normalize(resize_bilinear(maps, size), eps, scale)


def guard(channels: int) -> float:
    r""":math:`g = 2^{-(\lceil \log_2 C \rceil + 1)}`: terms of magnitude at most ``g·x`` sum, over
    ``C`` channels, to at most ``x/2``, so no sum of finite terms overflows. A power of two, so
    scaling by it is exact."""
    return 2.0 ** -(math.ceil(math.log2(max(channels, 1))) + 1)


def channel_terms(
    features: Tensor, weights: Tensor | None, bound: float | None = None
) -> tuple[Tensor, Tensor]:
    r"""A channel-weighted head, scaled so that no sum overflows: ``(m̂ [N,1,h,w], s [N,1,1])``.

    With :math:`\hat α = g\,α / b` (:func:`guard` ``g``; ``b`` = ``bound`` if given, a known
    bound on :math:`|α|`, else :math:`\max_k |α_k|` per image; for ``sum``, where ``weights`` is
    None, :math:`\hat α_k = g`), the map :math:`\hat m = \sum_k \hat α_k A_k` (ReLU'd where
    there are weights) has terms at most :math:`g` times a finite value, so every sum is finite;
    :math:`s = \max_{ij} \sum_k |\hat α_k A_k|` is its terms' magnitude (:func:`magnitude`).
    ``weights`` ``[N, C]`` or ``[N, 1, C]``; ``[N, D, C]`` gives ``D`` maps per image
    (``[N, D, h, w]``, ``[N, D, 1]``), one per row of weights.
    """
    _check_map(features)
    n, c, h, w = features.shape
    g = guard(c)
    flat = features.reshape(n, c, h * w)
    if weights is None:  # a plain sum: no weights (and no constant made on a device)
        raw = (flat * g).sum(dim=1, keepdim=True).reshape(n, 1, h, w)
        scale = (flat.abs() * g).sum(dim=1, keepdim=True).amax(dim=2, keepdim=True)
        return raw, scale
    alpha = weights if weights.dim() == 3 else weights[:, None]
    if bound is None:
        peak = alpha.abs().amax(dim=2, keepdim=True)
        alpha = alpha / peak.clamp_min(torch.finfo(alpha.dtype).tiny) * g
    else:
        alpha = alpha * (g / max(bound, torch.finfo(alpha.dtype).tiny))
    # the contractions over C as matrix products: [N,1,C] @ [N,C,hw] -> [N,1,hw] (or, with
    # weights [N,D,C], D maps per image from one A: [N,D,hw])
    raw = torch.relu((alpha @ flat).reshape(n, alpha.shape[1], h, w))
    scale = (alpha.abs() @ flat.abs()).amax(dim=2, keepdim=True)
    return raw, scale


def to_unit(
    maps: Tensor,
    scale: Tensor,
    size: tuple[int, int] | torch.Size,
    eps: float = DEFAULT_EPS,
    matrices: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    r"""A map before resize ``[N,1,h,w]`` to the heatmap: divided by its terms' magnitude
    ``scale`` ``[N,1,1]`` it lies in [-1, 1]; resized to ``size``, then min-maxed
    (:func:`_span_to_unit`), where a range of at most ``eps`` is float32 noise (a sum that
    cancels): flat, 0.

    ``matrices`` ``(R_h [H,h], R_wᵀ [w,W])`` (:func:`resize_matrix`) resize by two products
    instead of :func:`resize_bilinear` (the size is then fixed).
    """
    # |m| <= 1 from here on: tiny (even subnormal) maps keep their precision through the resize
    m = maps / scale.unsqueeze(3).clamp_min(torch.finfo(maps.dtype).tiny)
    m = resize_bilinear(m, size) if matrices is None else matrices[0] @ m @ matrices[1]
    return _span_to_unit(m, eps)


def render(
    features: Tensor,
    weights: Tensor | None,
    size: tuple[int, int] | torch.Size,
    eps: float = DEFAULT_EPS,
    matrices: tuple[Tensor, Tensor] | None = None,
    bound: float | None = None,
) -> Tensor:
    r"""The heatmap of a channel-weighted head in one pass over ``A``:
    :func:`channel_terms`, then :func:`to_unit`.

    The result equals ``finish(head(A), size, eps, magnitude)``, since every such head is
    positively homogeneous in ``A`` and ``α``.
    """
    return to_unit(*channel_terms(features, weights, bound), size, eps, matrices)


def fuse(maps: list[Tensor], eps: float = DEFAULT_EPS) -> Tensor:
    r"""Several layers' heatmaps, each ``[M,1,H,W]`` in [0, 1] (ReLU'd, resized, min-maxed), as
    one: :math:`\mathrm{minmax}(\frac{1}{L}\sum_l m_l)`; flat (a range of at most ``eps``)
    gives 0.

    Example:
        >>> fuse([torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([[[[0.0, 0.5]]]])])
        tensor([[[[0., 1.]]]])
    """
    total = maps[0]
    for m in maps[1:]:  # a running sum: no stacked copy of the maps (YOLO: 3 x D x 640 x 640)
        total = total + m
    return _span_to_unit(total / len(maps), eps)


def fuse_product(maps: list[Tensor], eps: float = DEFAULT_EPS) -> Tensor:
    r"""Several layers' heatmaps, each ``[M,1,H,W]`` in [0, 1], as one by their product:
    :math:`\mathrm{minmax}(\prod_l m_l)`; flat (a range of at most ``eps``) gives 0.
    pytorch-grad-cam's ``RefineCAM`` (its per-layer maps are min-maxed as these are).

    Example:
        >>> fuse_product([torch.tensor([[[[0.5, 1.0]]]]), torch.tensor([[[[1.0, 0.25]]]])])
        tensor([[[[1., 0.]]]])
    """
    total = maps[0]
    for m in maps[1:]:
        total = total * m
    return _span_to_unit(total, eps)
