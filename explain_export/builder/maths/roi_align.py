r"""RoIAlign as torchvision computes it (``aligned=False``, a fixed ``sampling_ratio``), over
the levels of a feature pyramid as ``MultiScaleRoIAlign`` assigns them, and its adjoint, all as
gathers and scatters with static shapes (no torchvision).

**Sampling.** A RoI ``(x1, y1, x2, y2)`` (the resized image's pixels) read from a map ``A``
``[C, h, w]`` at scale ``s`` starts at ``y1·s`` and spans ``L = max(y2·s − y1·s, 1)`` rows, cut
into ``ph`` bins of ``b = L / ph``; bin ``p`` has ``g`` sample rows
``y_pi = y1·s + p·b + (i + ½)·b / g`` (``g`` the sampling ratio; columns likewise, at
``x_qj``). A sample reads 0 unless ``−1 ≤ y ≤ h`` and ``−1 ≤ x ≤ w``. Otherwise
``y ← max(y, 0)``, ``y₀ = ⌊y⌋``, ``y₁ = y₀ + 1``, except where ``y₀ ≥ h − 1``:
``y₀ = y₁ = h − 1`` and ``y = y₀``; ``ly = y − y₀``, ``hy = 1 − ly`` (``x`` likewise), and the
sample is ``hy·hx·A[y₀, x₀] + hy·lx·A[y₀, x₁] + ly·hx·A[y₁, x₀] + ly·lx·A[y₁, x₁]``. The bin is
the mean of its ``g²`` samples. So ``pooled[c, p, q] = Σ_t w_t A[c, idx_t]`` over the bin's
``4g²`` taps ``t``, with the same weights ``w_t`` (``/ g²``) and flat indices for every channel.
Coordinates are computed in the kernel's order and dtype, so ``⌊·⌋`` lands where it does.

**Levels.** A RoI goes to one level ``k = ⌊k₀ + log₂(√area / s₀) + 10⁻⁶⌋`` clamped to
``[k_min, k_max]`` (``s₀ = 224``, ``k₀ = 4``, ``k_min = −log₂`` of the first level's scale,
``k_max`` of the last); a level's scale is ``2^round(log₂(h_l / H))`` for a map of height
``h_l`` and the batch's largest resized image height ``H`` (torchvision's ``_setup_scales``).
Every level's maps go into one channels-last table ``[N·T, C]`` (``T = Σ h_l·w_l``), and each
RoI's taps are computed at its own level's scale and size, so one weighted gather serves all
levels: ``embedding_bag``'s fused weighted sum in eager and TorchScript; under ``torch.export``
(and so ONNX, where ``embedding_bag`` becomes a loop) a ``Gather`` and a weighted sum per
bilinear corner. The maps' sizes are constants of the graph; the numbers of RoIs and images
are free.

**Adjoint.** ``pooled_m`` is linear in the map of image ``b_m``, so for the gradient ``G_m``
``[C, ph, pw]`` of row ``m``, ``∂⟨G_m, pooled_m⟩/∂A_l[b_m]`` is the scatter-add of
``G_m[c, bin(t)]·w_t`` at ``idx_t`` (ONNX ``ScatterElements``, ``reduction="add"``), at the
RoI's own level, and 0 at the others. Grad-CAM needs only its channel mean, which needs no
scatter: the four weights of a sample sum to ``(hy + ly)(hx + lx) = 1`` in range and 0 out of
it, so a bin's weights sum to ``n_y(p)·n_x(q) / g²`` (its in-range sample rows and columns), and
``mean_ij = (1 / (g²·h·w)) Σ_pq G[c, p, q]·n_y(p)·n_x(q)``, a weighted sum of ``G``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx.experimental import proxy_tensor

__all__ = ["RoiGradient", "RoiPooler", "scales_for"]


def scales_for(
    feature_sizes: Sequence[tuple[int, int]], image_sizes: Sequence[tuple[int, int]]
) -> tuple[float, ...]:
    """Each level's scale ``2^round(log₂(h_l / H))`` (``H``: the largest image height of the
    batch's resized images ``(h, w)``), rounded in float32 as ``_setup_scales`` rounds it.

    Example:
        >>> scales_for([(200, 200), (100, 100), (50, 50), (25, 25)], [(800, 800)])
        (0.25, 0.125, 0.0625, 0.03125)
    """
    if not image_sizes:
        raise ValueError("scales_for needs at least one image size")
    height = max(int(s[0]) for s in image_sizes)
    return tuple(
        2.0 ** float(torch.tensor(float(h) / float(height)).log2().round())
        for h, _ in feature_sizes
    )


class _Taps(NamedTuple):
    """Each RoI's taps at its own level: flat ``index`` into its level's map and ``weight``
    (``/ g²``, 0 out of range), both ``[M, ph·pw, 4g²]``; ``bins`` ``[M, ph·pw]``: each bin's
    weights' sum ``n_y·n_x / g²``."""

    index: Tensor
    weight: Tensor
    bins: Tensor


def _axis(
    start: Tensor, end: Tensor, size: Tensor, pooled: int, g: int
) -> tuple[Tensor, Tensor, Tensor]:
    """One axis of RoIs ``[M]`` on maps of ``size`` ``[M]`` (module docstring): the low and high
    indices ``[M, pooled, g, 2]``, their weights ``[M, pooled, g, 2]`` (0 out of range), and
    which samples are in range ``[M, pooled, g]``."""
    length = (end - start).clamp_min(1.0)
    step = length / pooled
    p = torch.arange(pooled, device=start.device).to(start.dtype)
    i = torch.arange(g, device=start.device).to(start.dtype) + 0.5
    at = (start[:, None, None] + p[:, None] * step[:, None, None]) + (i * step[:, None, None]) / g
    limit = size[:, None, None]
    inside = (at >= -1.0) & (at <= limit)  # NaN: out
    at = torch.where(inside, at, torch.zeros_like(at)).clamp_min(0.0)
    low = at.floor()
    top = low >= limit - 1
    low = torch.where(top, (limit - 1).expand_as(low), low)
    high = torch.where(top, low, low + 1)
    frac = torch.where(top, torch.zeros_like(at), at - low)
    weight = torch.stack([1.0 - frac, frac], -1) * inside[..., None].to(at.dtype)
    return torch.stack([low, high], -1).long(), weight, inside


def _exporting() -> bool:
    """Whether this call is being traced to a graph: ``torch.export`` (the ONNX exporter's
    too), or ``make_fx`` (:func:`.lowering.trace`, whose graph the ONNX file is made from, so
    the file holds the gathers, not ``embedding_bag``'s ONNX loop)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    if bool(is_exporting and is_exporting()) or torch.onnx.is_in_onnx_export():
        return True
    get_mode = getattr(proxy_tensor, "get_proxy_mode", None)
    return get_mode is not None and get_mode() is not None


def _weighted_rows(table: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """``out[b] = Σ_k weight[b, k]·table[index[b, k]]`` ``[B, C]`` (``index``, ``weight``:
    ``[B, K]``, ``K = 4g²``). Eager and TorchScript: ``embedding_bag``'s fused weighted sum (it
    holds no ``[B, K, C]``). ``torch.export``/ONNX, where ``embedding_bag`` becomes a loop: a
    ``Gather`` and a weighted sum per bilinear corner, ``B·g²`` rows at a time."""
    if not _exporting():
        return F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")
    b, c = index.shape[0], table.shape[1]
    index, weight = index.reshape(b, -1, 4), weight.reshape(b, -1, 4)
    out = None
    for k in range(4):
        rows = table.index_select(0, index[:, :, k].reshape(-1)).reshape(b, -1, c)
        term = (rows * weight[:, :, k, None]).sum(1)
        out = term if out is None else out + term
    return out


def _per_level(level: Tensor, values: Sequence[float], like: Tensor) -> Tensor:
    """``values[level]`` ``[M]`` in ``like``'s dtype (``values[0]`` at level −1), as ``where``s
    on constants, not a tensor made from a list (a constant the tracer warns about)."""
    out = torch.full_like(level, values[0], dtype=like.dtype)
    for i, v in enumerate(values[1:], 1):
        out = torch.where(level == i, torch.full_like(out, v), out)
    return out


@dataclass(frozen=True)
class RoiPooler:
    """torchvision's ``MultiScaleRoIAlign``: one scale per level (:func:`scales_for`), the
    pooled ``output_size`` ``(ph, pw)``, a fixed ``sampling_ratio`` ``g > 0``, and the level
    rule's canonical box size and level (module docstring)."""

    scales: tuple[float, ...]
    output_size: tuple[int, int] = (7, 7)
    sampling_ratio: int = 2
    canonical_scale: int = 224
    canonical_level: int = 4

    def __post_init__(self) -> None:
        if self.sampling_ratio <= 0:
            raise ValueError("RoiPooler needs a fixed sampling_ratio > 0 (torchvision's is 2)")
        if not self.scales:
            raise ValueError("RoiPooler needs at least one level's scale")

    @property
    def k_range(self) -> tuple[int, int]:
        """``(k_min, k_max)``: ``−log₂`` of the first and last level's scales."""
        return round(-math.log2(self.scales[0])), round(-math.log2(self.scales[-1]))

    def levels(self, boxes: Tensor) -> Tensor:
        """Each RoI's level index ``[M]`` int64 in ``[0, L)``; −1 where its area is negative
        (torchvision pools such a RoI at no level: zeros). One level: all 0."""
        if len(self.scales) == 1:
            return torch.zeros(boxes.shape[:1], dtype=torch.int64, device=boxes.device)
        k_min, k_max = self.k_range
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        ratio = area.sqrt() / self.canonical_scale
        k = torch.floor(self.canonical_level + torch.log2(ratio) + 1e-6)
        k = k.clamp(k_min, k_max) - k_min
        return torch.where(torch.isnan(k), torch.full_like(k, -1.0), k).long()

    def _taps(self, shapes: Sequence[tuple[int, int]], boxes: Tensor, level: Tensor) -> _Taps:
        """Each RoI's taps at its own level (``level`` from :meth:`levels`)."""
        if len(shapes) != len(self.scales):
            raise ValueError(f"{len(shapes)} feature maps for {len(self.scales)} scales")
        scale = _per_level(level, self.scales, boxes)
        height = _per_level(level, [float(h) for h, _ in shapes], boxes)
        width = _per_level(level, [float(w) for _, w in shapes], boxes)
        (ph, pw), g, m = self.output_size, self.sampling_ratio, boxes.shape[0]
        lo, hi = boxes[:, :2] * scale[:, None], boxes[:, 2:] * scale[:, None]
        yi, yw, yin = _axis(lo[:, 1], hi[:, 1], height, ph, g)
        xi, xw, xin = _axis(lo[:, 0], hi[:, 0], width, pw, g)
        # [M, ph, pw, g, g, 2, 2]: bin (p, q), sample (i, j), corner (a, b)
        stride = width.long().reshape(m, 1, 1, 1, 1, 1, 1)
        index = yi[:, :, None, :, None, :, None] * stride + xi[:, None, :, None, :, None, :]
        known = (level >= 0).to(boxes.dtype)
        weight = yw[:, :, None, :, None, :, None] * xw[:, None, :, None, :, None, :]
        weight = weight * (known / (g * g))[:, None, None, None, None, None, None]
        ny = yin.to(boxes.dtype).sum(-1)  # [M, ph]
        nx = xin.to(boxes.dtype).sum(-1)  # [M, pw]
        bins = (ny[:, :, None] * nx[:, None, :]) * (known / (g * g))[:, None, None]
        return _Taps(
            index.reshape(m, ph * pw, -1), weight.reshape(m, ph * pw, -1), bins.reshape(m, -1)
        )

    @staticmethod
    def table(features: Sequence[Tensor]) -> Tensor:
        """The levels' maps as one channels-last table ``[N·T, C]`` (image, level, pixel), to
        build once where several :meth:`pool` calls read the same maps."""
        n, c = features[0].shape[:2]
        rows = [a.permute(0, 2, 3, 1).reshape(n, -1, c) for a in features]
        return torch.cat(rows, 1).reshape(-1, c)

    def pool(
        self,
        features: Sequence[Tensor],
        boxes: Tensor,
        batch: Tensor,
        table: Tensor | None = None,
    ) -> Tensor:
        """``[M, C, ph, pw]``: RoI ``m`` (``boxes`` ``[M, 4]``) pooled from the map of image
        ``batch[m]`` (int64 ``[M]``) at its level (``features``: ``[N, C, h_l, w_l]`` each;
        ``table``: their :meth:`table`, built here if not given)."""
        shapes = [(int(a.shape[2]), int(a.shape[3])) for a in features]
        boxes = boxes.to(features[0].dtype)
        level = self.levels(boxes)
        taps = self._taps(shapes, boxes, level)
        table = self.table(features) if table is None else table
        sizes = [h * w for h, w in shapes]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        base = batch * sum(sizes) + _per_level(level, offsets, batch)
        m, bins, c = boxes.shape[0], taps.index.shape[1], table.shape[1]
        index = (taps.index + base[:, None, None]).reshape(m * bins, -1)
        out = _weighted_rows(table, index, taps.weight.reshape(m * bins, -1))
        ph, pw = self.output_size
        return out.reshape(m, ph, pw, c).permute(0, 3, 1, 2)

    def adjoint(
        self, grad: Tensor, shapes: Sequence[tuple[int, int]], boxes: Tensor, batch: Tensor
    ) -> list[RoiGradient]:
        """Per level, ``∂⟨grad_m, pooled_m⟩/∂A_l`` of each row ``m`` separately (w.r.t. the map
        of image ``batch[m]``; 0 at the levels other than its own). ``grad``: ``[M, C, ph, pw]``;
        ``shapes``: each level's ``(h, w)``. ``batch`` only says which image a row's map is."""
        del batch  # a row's gradient is its own image's; the rows stay apart
        boxes = boxes.to(grad.dtype)
        level = self.levels(boxes)
        taps = self._taps(shapes, boxes, level)
        sums = torch.matmul(grad.flatten(2), taps.bins[:, :, None].to(grad.dtype))[..., 0]
        return [
            RoiGradient(grad, taps.index, taps.weight, level == i, sums, (int(h), int(w)))
            for i, (h, w) in enumerate(shapes)
        ]


@dataclass(frozen=True)
class RoiGradient:
    """One level's gradient for ``M`` RoIs: ``grad`` ``[M, C, ph, pw]`` spread over each bin's
    taps (``index``, ``weight``: ``[M, ph·pw, 4g²]``, each RoI's at its own level) on a map of
    ``size`` ``(h, w)``, for the RoIs ``here`` (bool ``[M]``: at this level; 0 for the rest);
    ``sums`` ``[M, C]``: ``Σ_bin grad·(the bin's weights' sum)``."""

    grad: Tensor
    index: Tensor
    weight: Tensor
    here: Tensor
    sums: Tensor
    size: tuple[int, int]

    def full(self) -> Tensor:
        """``∂y_m/∂A`` ``[M, C, h, w]``: each tap's ``grad·weight`` scatter-added at its pixel."""
        m, c = self.grad.shape[:2]
        h, w = self.size
        low = self.grad.dtype in (torch.float16, torch.bfloat16)  # ORT's scatter-add: no fp16
        grad = self.grad.float() if low else self.grad
        weight = self.weight.to(grad.dtype) * self.here[:, None, None].to(grad.dtype)
        src = grad.reshape(m, c, -1, 1) * weight[:, None]
        index = torch.where(self.here[:, None, None], self.index, torch.zeros_like(self.index))
        index = index.reshape(m, 1, -1).expand(-1, c, -1)
        out = grad.new_zeros((m, c, h * w)).scatter_add(2, index, src.reshape(m, c, -1))
        return out.reshape(m, c, h, w).to(self.grad.dtype)

    def channel_mean(self) -> Tensor:
        """``mean_ij ∂y_m/∂A_c(i, j)`` ``[M, C]`` without the map: ``sums / (h·w)``."""
        h, w = self.size
        return self.sums * self.here[:, None].to(self.sums.dtype) / (h * w)
