"""Heatmap heads as pure tensor functions (the Explainer module composes them).

Every head takes the tapped feature map ``A`` of shape ``[N, C, h, w]`` and channel weights
``α`` ``[N, C]`` (none for ``sum``), and returns a map ``[N, 1, h, w]``:

- ``sum``: :math:`m = \\sum_k A_k`;
- ``cam``: :math:`α_k = W[c,k]`, the linear layer's weights for class ``c``;
- ``gradcam``: :math:`α_k = \\frac{1}{hw}\\sum_{ij} \\partial y_c / \\partial A_k(i,j)`;

and for ``cam`` and ``gradcam`` :math:`m = \\mathrm{ReLU}(\\sum_k α_k A_k)`. Then :func:`finish`
resizes and min-maxes. They use only ops that trace and export to TorchScript and ONNX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_EPS",
    "cam",
    "cam_weights",
    "channel_sum",
    "finish",
    "gradcam",
    "gradcam_weights",
    "guard",
    "heatmap",
    "magnitude",
    "minmax_normalize",
    "render",
    "resize_bilinear",
    "resize_matrix",
    "weighted_sum",
]

# A range below this fraction of the map's magnitude is float32 rounding noise, not signal.
DEFAULT_EPS = 1e-5


def _check_map(features: Tensor) -> None:
    if features.dim() != 4:
        raise ValueError(f"expected a [N,C,h,w] feature map, got shape {list(features.shape)}")


def channel_sum(features: Tensor) -> Tensor:
    r"""Feature-map superposition: :math:`m = \sum_k A_k`.

    Example:
        >>> channel_sum(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 1, 4, 4])
    """
    _check_map(features)
    return features.sum(dim=1, keepdim=True)


def weighted_sum(features: Tensor, weights: Tensor) -> Tensor:
    r""":math:`m = \mathrm{ReLU}(\sum_k α_k A_k)` per image, ``weights`` ``α`` of shape ``[N, C]``.

    Example:
        >>> weighted_sum(torch.ones(1, 2, 3, 3), torch.tensor([[1.0, -3.0]]))[0, 0, 0]
        tensor([0., 0., 0.])
    """
    _check_map(features)
    n, c, h, w = features.shape
    m = torch.bmm(weights.unsqueeze(1), features.reshape(n, c, h * w))  # [N, 1, h*w]
    return torch.relu(m).reshape(n, 1, h, w)


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


def cam(features: Tensor, weight: Tensor, class_index: Tensor) -> Tensor:
    r"""Class activation map: :math:`m = \mathrm{ReLU}(\sum_k W[c,k]\,A_k)`.

    For a head ``logits = W · GAP(A) + b`` this equals Grad-CAM up to the factor
    :math:`1/(h w)`, since :math:`\partial y_c / \partial A_k(i,j) = W[c,k]/(h w)`.

    Args:
        features: ``A``, ``[N, C, h, w]``.
        weight: the linear layer's weight ``W``, ``[K, C]``.
        class_index: the target class ``c`` per image, int64 ``[N]``.

    Example:
        >>> a = torch.rand(2, 8, 7, 7); w = torch.randn(10, 8)
        >>> cam(a, w, torch.tensor([3, 5])).shape
        torch.Size([2, 1, 7, 7])
    """
    _check_map(features)
    return weighted_sum(features, cam_weights(weight, class_index))


def gradcam(features: Tensor, grad: Tensor) -> Tensor:
    r"""Grad-CAM: :math:`m = \mathrm{ReLU}(\sum_k α_k A_k)`, :math:`α_k = \mathrm{mean}_{ij}
    \partial y_c/\partial A_k(i,j)`, for ``grad`` = :math:`\partial y_c / \partial A`.

    Example:
        >>> a = torch.rand(2, 8, 7, 7)
        >>> gradcam(a, torch.ones_like(a)).shape
        torch.Size([2, 1, 7, 7])
    """
    _check_map(features)
    return weighted_sum(features, gradcam_weights(grad))


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


def render(
    features: Tensor,
    weights: Tensor | None,
    size: tuple[int, int] | torch.Size,
    eps: float = DEFAULT_EPS,
    matrices: tuple[Tensor, Tensor] | None = None,
    bound: float | None = None,
) -> Tensor:
    r"""The heatmap: the head, resized to ``size`` and min-maxed, in one pass over ``A``.

    With :math:`\hat α = g\,α / b` (:func:`guard` ``g``; ``b`` = ``bound`` if given, a known
    bound on :math:`|α|`, else :math:`\max_k |α_k|` per image; for ``sum``, where ``weights`` is
    None, :math:`\hat α_k = g`), the map :math:`\hat m = \sum_k \hat α_k A_k` (ReLU'd where
    there are weights) has terms at most :math:`g` times a finite value, so every sum is finite.
    Divided by its terms' magnitude :math:`s = \max_{ij} \sum_k |\hat α_k A_k|`
    (:func:`magnitude`) it lies in [-1, 1]; it is resized to ``size`` and min-maxed, and a range
    of at most ``eps`` is float32 noise (a sum that cancels): flat, 0. The result equals
    ``finish(head(A), size, eps, magnitude)``, since every head is positively homogeneous in
    ``A`` and ``α``.

    ``weights`` ``[N, C]`` or ``[N, 1, C]``. ``matrices`` ``(R_h [H,h], R_wᵀ [w,W])``
    (:func:`resize_matrix`) resize by two products instead of :func:`resize_bilinear` (the size
    is then fixed).
    """
    _check_map(features)
    n, c, h, w = features.shape
    g = guard(c)
    flat = features.reshape(n, c, h * w)
    if weights is None:  # a plain sum: no weights (and no constant made on a device)
        raw = (flat * g).sum(dim=1, keepdim=True).reshape(n, 1, h, w)
        scale = (flat.abs() * g).sum(dim=1, keepdim=True).amax(dim=2, keepdim=True)
    else:
        alpha = weights if weights.dim() == 3 else weights[:, None]
        if bound is None:
            peak = alpha.abs().amax(dim=2, keepdim=True)
            alpha = alpha / peak.clamp_min(torch.finfo(alpha.dtype).tiny) * g
        else:
            alpha = alpha * (g / max(bound, torch.finfo(alpha.dtype).tiny))
        # the contractions over C as matrix products: [N,1,C] @ [N,C,hw] -> [N,1,hw]
        raw = torch.relu((alpha @ flat).reshape(n, 1, h, w))
        scale = (alpha.abs() @ flat.abs()).amax(dim=2, keepdim=True)
    # |m| <= 1 from here on: tiny (even subnormal) maps keep their precision through the resize
    m = raw / scale.unsqueeze(3).clamp_min(torch.finfo(raw.dtype).tiny)
    m = resize_bilinear(m, size) if matrices is None else matrices[0] @ m @ matrices[1]
    lo = m.amin(dim=(1, 2, 3), keepdim=True)
    span = m.amax(dim=(1, 2, 3), keepdim=True) - lo
    # x / inf = 0: a flat map is 0 everywhere, with no NaN and no mask product
    return (m - lo) / torch.where(span > eps, span, float("inf"))


def heatmap(
    features: Tensor,
    size: tuple[int, int] | torch.Size,
    method: str = "sum",
    weight: Tensor | None = None,
    class_index: Tensor | None = None,
    eps: float = DEFAULT_EPS,
    grad: Tensor | None = None,
) -> Tensor:
    """The whole head by name: ``sum``, ``cam`` (needs ``weight`` and ``class_index``) or
    ``gradcam`` (needs ``grad`` = ∂y_c/∂A): the method's weights (:mod:`.methods`), then
    :func:`render`."""
    from . import methods

    return render(features, methods.get(method).weights(grad, weight, class_index), size, eps)
