"""Heatmap heads as pure tensor functions (the Explainer module composes them).

Every function takes the tapped feature map ``A`` of shape ``[N, C, h, w]`` and
returns a map ``[N, 1, h, w]`` (heads) or works on such maps (resize, min-max).
They use only ops that trace and export to TorchScript and ONNX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_EPS = 1e-12


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


def minmax_normalize(maps: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    r"""Per-image min-max: :math:`m \leftarrow (m - \min m) / \max(\max m - \min m, \varepsilon)`.

    The result lies in [0, 1]; a constant map gives 0 everywhere, never NaN.

    Example:
        >>> minmax_normalize(torch.tensor([[[[1.0, 3.0]]]]))
        tensor([[[[0., 1.]]]])
    """
    lo = maps.amin(dim=(1, 2, 3), keepdim=True)
    hi = maps.amax(dim=(1, 2, 3), keepdim=True)
    return (maps - lo) / (hi - lo).clamp_min(eps)


def finish(maps: Tensor, size: tuple[int, int] | torch.Size, eps: float = DEFAULT_EPS) -> Tensor:
    """Resize to the image size, then min-max (the order in which the result spans [0, 1])."""
    return minmax_normalize(resize_bilinear(maps, size), eps)
