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

import torch
import torch.nn.functional as F
from torch import Tensor

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
    r"""CAM's channel weights :math:`α_k = W[c,k]`: rows of the linear weight ``[K, C]``."""
    return weight.index_select(0, class_index)


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
    n, c, h, w = features.shape
    a = features.abs().reshape(n, c, h * w)
    total = a.sum(dim=1) if weights is None else torch.bmm(weights.abs().unsqueeze(1), a)[:, 0]
    return total.amax(dim=1).reshape(n, 1, 1, 1)


def resize_bilinear(maps: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear resize to ``size`` = (H, W), ``align_corners=False``.

    This samples like ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)``.
    """
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def unit_scale(maps: Tensor) -> Tensor:
    r"""Divide each image's map by its largest magnitude: :math:`m / \max(\max |m|, tiny)`.

    Every head and the min-max are invariant to this positive factor; it keeps sums of huge
    values finite and lifts tiny ones, so the result never overflows to inf or NaN.
    """
    peak = maps.abs().amax(dim=tuple(range(1, maps.dim())), keepdim=True)
    return maps / peak.clamp_min(torch.finfo(maps.dtype).tiny)


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
    maps = maps / peak.clamp_min(torch.finfo(maps.dtype).tiny)
    lo = maps.amin(dim=(1, 2, 3), keepdim=True)
    hi = maps.amax(dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    return (maps - lo) / span.clamp_min(eps) * (span > eps).to(maps.dtype)


def finish(
    maps: Tensor,
    size: tuple[int, int] | torch.Size,
    eps: float = DEFAULT_EPS,
    scale: Tensor | None = None,
) -> Tensor:
    """Resize to the image size, then min-max (the order in which the result spans [0, 1])."""
    return minmax_normalize(resize_bilinear(maps, size), eps, scale)


def render(
    features: Tensor,
    weights: Tensor | None,
    size: tuple[int, int] | torch.Size,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """``finish(head(unit_scale(A)))``: the channel sum where ``weights`` is None, else
    :func:`weighted_sum` with ``unit_scale(α)``; flatness is judged by :func:`magnitude`.

    Every head is positively homogeneous in ``A`` and in ``α``, so the unit scaling of both
    leaves the result unchanged while keeping every intermediate finite.
    """
    a = unit_scale(features)
    if weights is None:
        raw = channel_sum(a)
    else:
        weights = unit_scale(weights)
        raw = weighted_sum(a, weights)
    return finish(raw, size, eps, magnitude(a, weights))


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
