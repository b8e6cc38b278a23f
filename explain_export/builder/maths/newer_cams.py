r"""The newer CAMs of pytorch-grad-cam 1.5.7 at a layer, as pure tensor functions of ``A`` and
``g = ∂y_c/∂A`` (both ``[N, C, h, w]``), to a map before resize with its terms' magnitude.

- FEM (:func:`fem_weights`), class-free: :math:`w_k = \mathrm{mean}_{ij}[A_{kij} > μ_k + 2σ_k]`,
  ``μ_k``, ``σ_k`` the mean and the population standard deviation (``ddof = 0``, numpy's
  ``np.std``) of channel ``k`` over the pixels; the map :math:`\mathrm{ReLU}(\sum_k w_k A_k)`
  (the ReLU is BaseCAM's).
- KPCA-CAM (:func:`kpca_terms`), class-free: ``X`` the centred map (``hw × C``, each channel's
  spatial mean removed), the sigmoid kernel :math:`K_{ij} = \tanh(γ\,x_i·x_j + 1)`,
  ``γ = 1/C`` (scikit-learn's ``KernelPCA`` defaults), centred as ``KernelCenterer`` centres
  it, :math:`K_c = K - \bar K_{i\cdot} - \bar K_{\cdot j} + \bar K`; the map is its first
  eigenvector ``u`` (:math:`m ∝ K_c u`), the sign that makes :math:`\max m \ge |\min m|`
  (scikit-learn's ``svd_flip``: the entry largest in magnitude positive), then ReLU.
- Seg-Eigen-CAM (:func:`segeigen_terms`): EigenCAM (:func:`.cams.eigen_terms`, with its sign
  rule) of :math:`|g| ⊙ A`.

``u`` comes from squaring ``K_c`` (scaled to a peak of 1 before each squaring)
:data:`KPCA_SQUARINGS` times: :math:`K_c^{2^q}` is :math:`λ_1^{2^q} u u^\top` to
:math:`(λ_2/λ_1)^{2^q}`, and its column of largest norm is ``±u``. No eigendecomposition is in
the graph (no ONNX op), and the same ops run at any size. This is the eigenvalue largest in
magnitude; scikit-learn takes the largest one, which is the same unless a negative eigenvalue
of the (not positive semi-definite) sigmoid kernel outweighs it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cams import eigen_terms, unit_peak
from .heads import channel_terms

__all__ = [
    "FEM_K",
    "KPCA_COEF0",
    "KPCA_SQUARINGS",
    "fem_terms",
    "fem_weights",
    "kpca_direction",
    "kpca_kernel",
    "kpca_terms",
    "segeigen_terms",
]

FEM_K = 2.0  # pytorch-grad-cam's FEM: the k-sigma rule's k
KPCA_COEF0 = 1.0  # scikit-learn's KernelPCA default coef0 (gamma: 1 / n_features)
# K_c^(2^q): the map's error shrinks like (λ₂/λ₁)^(2^q); q = 10 gives 2e-6 for λ₂/λ₁ <= 0.987.
# Measured on the embedded model and the four photos: λ₂/λ₁ from 0.38 (default layer) to 0.95
# (_blocks.15), the most negative eigenvalue at most 0.25 of λ₁ in magnitude. The cost: 10
# products of hw × hw matrices per image (49 × 49 at the default layer, 196 × 196 at _blocks.10).
KPCA_SQUARINGS = 10
# x·y is formed as (x/s)·(y/s) s² with s the map's peak; s is held at most 1e18, so that s²
# stays finite in float32 (a larger map saturates tanh anyway).
_PEAK_MAX = 1e18


def fem_weights(features: Tensor, k: float = FEM_K) -> Tensor:
    r"""FEM's channel weights ``[N, C]``: the fraction of each channel's pixels above
    :math:`μ_k + k σ_k` (``ddof = 0``). Scale-free, so the threshold is taken on ``A / max|A|``
    (no square overflows).

    Example:
        >>> a = torch.zeros(1, 2, 3, 3); a[0, 0, 1, 1] = 9.0  # one pixel far above the rest
        >>> fem_weights(a)
        tensor([[0.1111, 0.0000]])
    """
    x = unit_peak(features)
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True).sqrt()
    return (x > mean + k * std).to(x.dtype).mean(dim=(2, 3))


def fem_terms(features: Tensor, k: float = FEM_K) -> tuple[Tensor, Tensor]:
    r"""FEM's map :math:`\mathrm{ReLU}(\sum_k w_k A_k)` (:func:`.heads.channel_terms`)."""
    return channel_terms(features, fem_weights(features, k))


def kpca_kernel(features: Tensor, coef0: float = KPCA_COEF0) -> tuple[Tensor, Tensor]:
    r"""``(K_c, K)`` ``[N, hw, hw]``: the sigmoid kernel :math:`K = \tanh(x_i·x_j / C + coef0)`
    of the centred map's rows ``x_i`` (``X`` ``hw × C``), and ``K_c`` it centred
    (:math:`K - \bar K_{i\cdot} - \bar K_{\cdot j} + \bar K`)."""
    n, c, h, w = features.shape
    x = unit_peak(features.reshape(n, c, h * w).transpose(1, 2))  # [N, hw, C], |x| <= 1
    peak = features.abs().flatten(1).amax(dim=1).clamp(max=_PEAK_MAX).reshape(n, 1, 1)
    x = x - x.mean(dim=1, keepdim=True)
    kernel = torch.tanh((x @ x.transpose(1, 2)) * (peak * peak / c) + coef0)
    centred = (
        kernel
        - kernel.mean(dim=1, keepdim=True)
        - kernel.mean(dim=2, keepdim=True)
        + kernel.mean(dim=(1, 2), keepdim=True)
    )
    return centred, kernel


def kpca_direction(centred: Tensor, squarings: int = KPCA_SQUARINGS) -> Tensor:
    r"""The unit eigenvector ``[N, hw, 1]`` of the symmetric ``centred`` ``[N, hw, hw]`` for its
    eigenvalue largest in magnitude (sign arbitrary): the column of largest norm of
    :math:`K_c^{2^q}`, ``q = squarings``, each square scaled to a peak of 1 first."""
    g = centred
    for _ in range(squarings):
        g = unit_peak(g)
        g = g @ g
    norms = torch.linalg.vector_norm(g, dim=1, keepdim=True)  # [N, 1, hw]: column norms
    pick = norms.argmax(dim=2, keepdim=True).expand(-1, g.shape[1], -1)  # [N, hw, 1]
    u = torch.gather(g, 2, pick)
    return u / torch.linalg.vector_norm(u, dim=1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)


def kpca_terms(
    features: Tensor, squarings: int = KPCA_SQUARINGS, coef0: float = KPCA_COEF0
) -> tuple[Tensor, Tensor]:
    r"""KPCA-CAM's map ``[N, 1, h, w]`` (see the module): :math:`m = K_c u` with the sign that
    makes :math:`\max m \ge |\min m|`, then ReLU; and ``s = max_i Σ_j |K_ij u_j|`` ``[N, 1, 1]``,
    its terms' magnitude in the kernel before centring, against which a ``K_c`` of float32
    rounding noise (a map whose rows are all alike) is flat.

    Example:
        >>> a = torch.zeros(1, 2, 3, 3); a[0, 0, 1, 1] = 5.0; a[0, 1, 1, 1] = 5.0
        >>> m, s = kpca_terms(a)
        >>> m[0, 0].argmax().item()  # the one pixel that differs from the rest
        4
    """
    n, _, h, w = features.shape
    centred, kernel = kpca_kernel(features, coef0)
    u = kpca_direction(centred, squarings)
    m = (centred @ u).transpose(1, 2)  # [N, 1, hw]
    flip = (-m.amin(dim=2, keepdim=True)) > m.amax(dim=2, keepdim=True)
    m = torch.where(flip, -m, m)
    scale = (kernel.abs() @ u.abs()).amax(dim=1, keepdim=True)  # [N, 1, 1]
    return torch.relu(m).reshape(n, 1, h, w), scale


def segeigen_terms(features: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    r"""Seg-Eigen-CAM: :func:`.cams.eigen_terms` of :math:`|g| ⊙ A` (the sign rule included)."""
    return eigen_terms(unit_peak(grad).abs() * features)
