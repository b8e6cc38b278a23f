"""Heatmap heads as pure tensor functions (the Explainer module composes them).

Every function takes the tapped feature map ``A`` of shape ``[N, C, h, w]`` and
returns a map ``[N, 1, h, w]`` (heads) or works on such maps (resize, min-max).
They use only ops that trace and export to TorchScript and ONNX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# A range below this fraction of the map's magnitude is float32 rounding noise, not signal.
DEFAULT_EPS = 1e-5


def channel_sum(features: Tensor) -> Tensor:
    r"""Feature-map superposition: :math:`m = \sum_k A_k`.

    Example:
        >>> channel_sum(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 1, 4, 4])
    """
    if features.dim() != 4:
        raise ValueError(f"expected a [N,C,h,w] feature map, got shape {list(features.shape)}")
    return features.sum(dim=1, keepdim=True)


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
    if features.dim() != 4:
        raise ValueError(f"expected a [N,C,h,w] feature map, got shape {list(features.shape)}")
    n, c, h, w = features.shape
    wc = weight.index_select(0, class_index)  # [N, C]
    m = torch.bmm(wc.unsqueeze(1), features.reshape(n, c, h * w))  # [N, 1, h*w]
    return torch.relu(m).reshape(n, 1, h, w)


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


def minmax_normalize(maps: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    r"""Per-image min-max: :math:`m \leftarrow (m - \min m) / (\max m - \min m)`, or 0 if flat.

    The map is first scaled by :func:`unit_scale` (which changes nothing in exact arithmetic), so
    no difference overflows and ``ε`` is relative: a map whose range is at most ``ε·max|m|`` is
    flat, and gives 0 everywhere. Interpolating a constant map, for one, leaves a few ulps of
    noise that a plain min-max would stretch to [0, 1]. The result lies in [0, 1], never NaN.

    Example:
        >>> minmax_normalize(torch.tensor([[[[1.0, 3.0]]]]))
        tensor([[[[0., 1.]]]])
    """
    maps = unit_scale(maps)
    lo = maps.amin(dim=(1, 2, 3), keepdim=True)
    hi = maps.amax(dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    return (maps - lo) / span.clamp_min(eps) * (span > eps).to(maps.dtype)


def finish(maps: Tensor, size: tuple[int, int] | torch.Size, eps: float = DEFAULT_EPS) -> Tensor:
    """Resize to the image size, then min-max (the order in which the result spans [0, 1])."""
    return minmax_normalize(resize_bilinear(maps, size), eps)


def heatmap(
    features: Tensor,
    size: tuple[int, int] | torch.Size,
    method: str = "sum",
    weight: Tensor | None = None,
    class_index: Tensor | None = None,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """The whole head: ``finish(head(unit_scale(A)))`` with ``head`` = ``sum`` or ``cam``.

    Both heads are positively homogeneous (``head(s·A) = s·head(A)`` for ``s > 0``), so the unit
    scaling leaves the result unchanged while keeping every intermediate finite.
    """
    a = unit_scale(features)
    if method == "sum":
        raw = channel_sum(a)
    elif method == "cam":
        if weight is None or class_index is None:
            raise ValueError("cam needs the linear weight and the class index")
        raw = cam(a, weight, class_index)
    else:
        raise ValueError(f"unknown method '{method}'")
    return finish(raw, size, eps)
