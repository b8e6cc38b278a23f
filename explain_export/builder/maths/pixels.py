r"""Pixel-level attribution maps, the input-gradient methods' math, as pure tensor functions.

``x`` is the graph's float RGB image in [0,1] ``[N,3,H,W]`` (after the uint8 conversion, before
mean/std) and ``g = ∂y_c/∂x``. Every map is at input size, ``[N,1,H,W]``, with the magnitude of
the terms it was made of ``[N,1,1]`` (:class:`.methods.Terms`); the head min-maxes it with no
resize (:func:`unit`):

- saliency: :math:`m = \max_{ch} |g|`;
- Input×Gradient: :math:`m = \mathrm{ReLU}(\sum_{ch} x ⊙ g)`; Integrated Gradients is the same
  with ``g`` replaced by the path's weighted gradient sum (:mod:`.sampling`);
- guided Grad-CAM: :math:`m = \max_{ch} |\hat g ⊙ \mathrm{up}(c)|`, ``ĝ`` the guided gradient,
  ``c`` the ReLU'd Grad-CAM at a layer, ``up`` bilinear to the image;
- FullGrad: :math:`m = \sum_{ch} u(|x ⊙ g|) + \sum_l \mathrm{up}(\sum_{ch} u(|b_l ⊙ ∂y/∂O_l|))`,
  with ``u`` each channel's own min-max, ``(t - \min t) / (\max t - \min t + 10^{-7})``, taken
  at the map's own size before the resize (pytorch-grad-cam's ``FullGrad``), and ``O_l`` the
  output of bias layer ``l`` (:mod:`.biases`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "CHANNEL_EPS",
    "channel_unit",
    "fullgrad_terms",
    "guided_gradcam_terms",
    "inputxgradient_terms",
    "saliency_terms",
    "unit",
]

CHANNEL_EPS = 1e-7  # FullGrad's per-channel min-max: (t - min) / (max - min + 1e-7)


def _peak(m: Tensor) -> Tensor:
    """``[N,1,1]``: each image's largest value of a map that is never negative."""
    return m.flatten(1).amax(dim=1)[:, None, None]


def saliency_terms(grad: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`m = \max_{ch} |g|` ``[N,1,H,W]`` and its peak: the gradient's largest magnitude
    over the colour channels of each pixel (captum's ``Saliency(abs=True)``, reduced by the
    channel max)."""
    m = grad.abs().amax(dim=1, keepdim=True)
    return m, _peak(m)


def inputxgradient_terms(image: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`m = \mathrm{ReLU}(\sum_{ch} x ⊙ g)` and :math:`\max_{ij} \sum_{ch} |x ⊙ g|`."""
    products = image * grad
    m = torch.relu(products.sum(dim=1, keepdim=True))
    return m, _peak(products.abs().sum(dim=1, keepdim=True))


def guided_gradcam_terms(guided: Tensor, cam_up: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`m = \max_{ch} |\hat g ⊙ \mathrm{up}(c)|` for the guided gradient ``guided``
    ``[N,3,H,W]`` and the ReLU'd Grad-CAM already at input size ``cam_up`` ``[N,1,H,W]``
    (never negative, so ``|ĝ ⊙ up(c)| = |ĝ| ⊙ up(c)``)."""
    m = (guided.abs() * cam_up).amax(dim=1, keepdim=True)
    return m, _peak(m)


def channel_unit(t: Tensor, eps: float = CHANNEL_EPS) -> Tensor:
    """Each channel of ``t`` ``[N,C,h,w]`` min-maxed on its own:
    ``(t - min) / (max - min + eps)``, per image and channel."""
    lo = t.amin(dim=(2, 3), keepdim=True)
    shifted = t - lo
    return shifted / (shifted.amax(dim=(2, 3), keepdim=True) + eps)


def fullgrad_terms(
    image: Tensor,
    grad: Tensor,
    biases: Sequence[Tensor],
    bias_grads: Sequence[Tensor],
    sizes: Sequence[object],
    resize: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    r"""FullGrad's map (see the module): the input term :math:`\sum_{ch} u(|x ⊙ g|)` plus, per
    bias layer, :math:`\sum_{ch} u(|b ⊙ ∂y/∂O|)` at the layer's size, resized to the image by
    ``resize``. ``sizes`` names each layer's size at export (None: the image's, no resize);
    the channel sums of layers of one size are added before their one resize (resizing is
    linear), so there is one resize per size, not one per layer or channel.
    """
    total = channel_unit((image * grad).abs()).sum(dim=1, keepdim=True)
    by_size: dict[object, Tensor] = {}
    for bias, g, size in zip(biases, bias_grads, sizes, strict=True):
        term = channel_unit((bias[None, :, None, None] * g).abs()).sum(dim=1, keepdim=True)
        by_size[size] = term if size not in by_size else by_size[size] + term
    for size, term in by_size.items():
        total = total + (term if size is None else resize(term))
    return total, _peak(total)


def unit(maps: Tensor, scale: Tensor, eps: float) -> Tensor:
    """A map already at input size to the heatmap: divided by its terms' magnitude ``scale``
    ``[N,1,1]``, then min-maxed; a range of at most ``eps`` of it is flat, 0 (as
    :func:`.heads.to_unit`, without the resize)."""
    from .heads import _span_to_unit

    m = maps / scale.unsqueeze(3).clamp_min(torch.finfo(maps.dtype).tiny)
    return _span_to_unit(m, eps)
