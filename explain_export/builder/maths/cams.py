r"""The rest of the CAM family as pure tensor functions: what each needs from ``A`` and
``g = ∂y_c/∂A`` (both ``[N, C, h, w]``), to a map before resize with its terms' magnitude.

Channel-weighted (their weights then go through :func:`.heads.channel_terms`,
:math:`m = \mathrm{ReLU}(\sum_k w_k A_k)`):

- Grad-CAM++ (:func:`gradcampp_weights`): :math:`w_k = \sum_{ij} a_{kij}\,\mathrm{ReLU}(g_{kij})`,
  :math:`a = g^2 / (2g^2 + (\sum_{ij} A_{kij})\,g^3 + ε)`, and :math:`a = 0` where :math:`g = 0`;
- XGrad-CAM (:func:`xgradcam_weights`): :math:`w_k = \sum_{ij} g_{kij} A_{kij} /
  (\sum_{ij} A_{kij} + ε)`.

Pixel-wise (:func:`elementwise_terms`): HiResCAM :math:`\mathrm{ReLU}(\sum_k g_k ⊙ A_k)`,
element-wise Grad-CAM :math:`\sum_k \mathrm{ReLU}(g_k ⊙ A_k)`, LayerCAM
:math:`\mathrm{ReLU}(\sum_k \mathrm{ReLU}(g_k) ⊙ A_k)`.

Principal component (:func:`eigen_terms`): EigenCAM projects the centred map ``X`` (``hw × C``)
onto its first right singular vector, found by power iteration (SVD is no ONNX op); the sign is
fixed so that the larger magnitude is positive; then ReLU. Eigen-Grad-CAM does the same on
:math:`g ⊙ A`.

Every function here is positively homogeneous where the method is (a map scaled by ``s > 0``
gives the same heatmap), and scales what it sums so that no finite input overflows
(:func:`.heads.guard`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .heads import guard

__all__ = [
    "EIGEN_ITERATIONS",
    "EIGEN_SQUARINGS",
    "GRADCAMPP_EPS",
    "XGRADCAM_EPS",
    "eigen_terms",
    "eigengradcam_terms",
    "elementwise_terms",
    "gradcam_elementwise_terms",
    "gradcampp_weights",
    "gram_direction",
    "hirescam_terms",
    "layercam_terms",
    "power_direction",
    "unit_peak",
    "xgradcam_weights",
]

GRADCAMPP_EPS = 1e-6  # pytorch-grad-cam's GradCAMPlusPlus
XGRADCAM_EPS = 1e-7  # pytorch-grad-cam's XGradCAM
# EigenCAM's power steps: v ∝ (XᵀX)^K 1, K = 2^q + 1. The map's error shrinks like
# (σ₂/σ₁)^(2K): K = 65 gives 1e-6 for σ₂/σ₁ <= 0.9. Measured: 0.61 to 0.81 for the embedded
# model on the photos, up to 0.90 for a ConvNeXt-Tiny. Where the smaller side S of X (hw or C)
# is small, the S × S Gram matrix is squared q times instead of K plain steps: the same vector,
# in q products. On the embedded model (S = 49, C = 1280) that loop takes 0.26 ms on ONNX
# Runtime against 3.4 ms for 48 plain steps (benchmarks/eigencam_loop.py).
EIGEN_SQUARINGS = 6
EIGEN_ITERATIONS = 2**EIGEN_SQUARINGS + 1


def unit_peak(x: Tensor) -> Tensor:
    """``x / max|x|`` per image (``[N, ...]``): the same direction, every value in [-1, 1]."""
    peak = x.abs().flatten(1).amax(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
    return x / peak.reshape(-1, *([1] * (x.dim() - 1)))


def gradcampp_weights(features: Tensor, grad: Tensor, eps: float = GRADCAMPP_EPS) -> Tensor:
    r"""Grad-CAM++'s channel weights ``[N, C]``:
    :math:`w_k = \sum_{ij} a_{kij}\,\mathrm{ReLU}(g_{kij})` with
    :math:`a = g^2 / (2g^2 + (\sum_{ij} A_{kij})\,g^3 + ε)`, :math:`a = 0` where :math:`g = 0`.

    Not homogeneous in ``g`` (the powers differ), so ``g`` is used as it is, like the reference.

    Example:
        >>> a = torch.ones(1, 2, 2, 2)
        >>> g = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1).expand(1, 2, 2, 2)
        >>> gradcampp_weights(a, g)  # a = 1 / (2 + 4): four pixels of 1/6 for channel 0
        tensor([[0.6667, 0.0000]])
    """
    g2 = grad * grad
    total = features.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + total * g2 * grad + eps)
    alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
    return (alpha * torch.relu(grad)).sum(dim=(2, 3))


def xgradcam_weights(features: Tensor, grad: Tensor, eps: float = XGRADCAM_EPS) -> Tensor:
    r"""XGrad-CAM's channel weights ``[N, C]``:
    :math:`w_k = \sum_{ij} g_{kij} A_{kij} / (\sum_{ij} A_{kij} + ε)`.

    Example:
        >>> xgradcam_weights(torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 3.0))
        tensor([[3.]])
    """
    total = features.sum(dim=(2, 3), keepdim=True)
    return (grad * features / (total + eps)).sum(dim=(2, 3))


def elementwise_terms(products: Tensor, relu_terms: bool) -> tuple[Tensor, Tensor]:
    r"""A pixel-wise head over per-channel terms ``T`` ``[N, C, h, w]`` (e.g. :math:`g ⊙ A`):
    :math:`\mathrm{ReLU}(\sum_k T_k)`, or :math:`\sum_k \mathrm{ReLU}(T_k)` with ``relu_terms``.

    Returns ``(m [N,1,h,w], s [N,1,1])``, ``s = max_ij Σ_k |T_k|`` its terms' magnitude. ``T``
    is scaled by ``guard(C) / max|T|`` first, so no sum overflows; both heads are positively
    homogeneous in ``T``.
    """
    terms = unit_peak(products) * guard(products.shape[1])
    n, _, h, w = terms.shape
    raw = torch.relu(terms).sum(dim=1, keepdim=True) if relu_terms else terms.sum(1, keepdim=True)
    scale = terms.abs().sum(dim=1).reshape(n, h * w).amax(dim=1).reshape(n, 1, 1)
    return torch.relu(raw), scale


def eigen_terms(features: Tensor, squarings: int = EIGEN_SQUARINGS) -> tuple[Tensor, Tensor]:
    r"""EigenCAM's map: the centred map ``X`` (``hw × C`` per image, each channel's spatial mean
    removed) projected onto its first right singular vector ``v``, :math:`m = X v`, with the
    sign that makes :math:`\max m \ge |\min m|`, then ReLU.

    ``v`` is :math:`(X^\top X)^K \mathbf 1` normalized, ``K = 2^squarings + 1``, from the
    all-ones direction: an SVD's first vector to :math:`(σ_2/σ_1)^{2K}` (see
    :data:`EIGEN_SQUARINGS`), by :func:`gram_direction` where that is cheaper for this shape,
    else by :func:`power_direction`; both give the same vector. The sign of a singular vector is
    arbitrary, so an SVD-based EigenCAM (pytorch-grad-cam's ``EigenCAM``) may show the negative
    of this map. Returns ``(m [N,1,h,w], s [N,1,1])``, ``s = max_i Σ_k |X_ik v_k|``.

    Example:
        >>> a = torch.zeros(1, 2, 3, 3); a[0, 0, 1, 1] = 5.0; a[0, 1, 1, 1] = 5.0
        >>> m, s = eigen_terms(a)
        >>> m[0, 0].argmax().item()  # the one pixel that differs from the rest
        4
    """
    n, c, h, w = features.shape
    x = features.reshape(n, c, h * w).transpose(1, 2)  # [N, hw, C]
    x = unit_peak(x - x.mean(dim=1, keepdim=True))  # every |X_ik| <= 1
    if _gram_is_cheaper(h * w, c, squarings):
        v = gram_direction(x, squarings)
    else:
        v = power_direction(x, 2**squarings + 1)
    m = (x @ v).transpose(1, 2)  # [N, 1, hw]
    flip = (-m.amin(dim=2, keepdim=True)) > m.amax(dim=2, keepdim=True)
    m = torch.where(flip, -m, m)
    scale = (x.abs() @ v.abs()).amax(dim=1, keepdim=True)  # [N, 1, 1]
    return torch.relu(m).reshape(n, 1, h, w), scale


def _gram_is_cheaper(hw: object, c: int, squarings: int) -> bool:
    """Multiply-adds: the Gram matrix (``S² L``) and its ``q`` squarings (``q S³``) against
    ``2^q + 1`` power steps (``2 S L`` each), ``S ≤ L`` the sides of ``X``. A size that is not
    a plain int (symbolic in a graph with a free size, or traced) takes the power steps, which
    suit every size."""
    if not isinstance(hw, int):
        return False
    s, big = min(hw, c), max(hw, c)
    return s * s * big + squarings * s**3 < 2 * (2**squarings + 1) * s * big


def _unit(v: Tensor, dim: int) -> Tensor:
    """``v / ‖v‖`` along ``dim`` (zero stays zero)."""
    norm = torch.linalg.vector_norm(v, dim=dim, keepdim=True)
    return v / norm.clamp_min(torch.finfo(v.dtype).tiny)


def gram_direction(x: Tensor, squarings: int = EIGEN_SQUARINGS) -> Tensor:
    r""":math:`v ∝ (X^\top X)^{2^q + 1} \mathbf 1` (``q = squarings``) for ``x`` ``[N, hw, C]``
    with every entry in [-1, 1], as ``[N, C, 1]`` of norm 1 (or 0).

    Squares the Gram matrix of the smaller side, :math:`G = X X^\top` (``hw ≤ C``, then
    :math:`v ∝ X^\top G^{2^q} X \mathbf 1`) or :math:`G = X^\top X` (then
    :math:`v ∝ G^{2^q} G \mathbf 1`), scaled to a peak of 1 before each squaring, so every
    entry stays at most the side's length."""
    hw, c = x.shape[1], x.shape[2]
    ones = torch.ones_like(x[:, :1, :]).transpose(1, 2)  # [N, C, 1]
    if hw <= c:
        g, start = x @ x.transpose(1, 2), x @ ones  # [N, hw, hw], [N, hw, 1]
    else:
        g = x.transpose(1, 2) @ x  # [N, C, C]
        start = g @ ones
    for _ in range(squarings):
        g = unit_peak(g)
        g = g @ g
    u = _unit(g @ _unit(start, 1), 1)
    return _unit(x.transpose(1, 2) @ u, 1) if hw <= c else u


def power_direction(x: Tensor, iterations: int = EIGEN_ITERATIONS) -> Tensor:
    r"""``iterations`` power steps :math:`v \leftarrow X^\top X v / \|X^\top X v\|` from
    :math:`\mathbf 1`, for ``x`` ``[N, hw, C]`` with every entry in [-1, 1] (so every sum is at
    most ``hw·C``): ``[N, C, 1]``. No constant factor on ``x`` here: ONNX Runtime would fold it
    into every step's products (4x the loop's time, ``benchmarks/eigencam_loop.py``)."""
    xt = x.transpose(1, 2).contiguous()  # [N, C, hw], once: not a transpose per step
    v = torch.ones_like(xt[:, :, :1])  # [N, C, 1]
    for _ in range(iterations):
        v = _unit(xt @ (x @ v), 1)
    return v


def hirescam_terms(features: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    r"""HiResCAM: :math:`\mathrm{ReLU}(\sum_k g_k ⊙ A_k)` (:func:`elementwise_terms`)."""
    return elementwise_terms(unit_peak(grad) * features, relu_terms=False)


def gradcam_elementwise_terms(features: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    r"""Element-wise Grad-CAM: :math:`\sum_k \mathrm{ReLU}(g_k ⊙ A_k)`."""
    return elementwise_terms(unit_peak(grad) * features, relu_terms=True)


def layercam_terms(features: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    r"""LayerCAM: :math:`\mathrm{ReLU}(\sum_k \mathrm{ReLU}(g_k) ⊙ A_k)`."""
    return elementwise_terms(torch.relu(unit_peak(grad)) * features, relu_terms=False)


def eigengradcam_terms(features: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    r"""Eigen-Grad-CAM: :func:`eigen_terms` of :math:`g ⊙ A`."""
    return eigen_terms(unit_peak(grad) * features)
