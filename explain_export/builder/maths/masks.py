r"""Instance masks pasted at input size with static shapes: torchvision's
``paste_masks_in_image(masks[:, None], boxes, size, padding=1)[:, 0]`` as batched products.

A detection's mask ``P`` is ``S x S`` probabilities over its box. torchvision pads it with one
zero on each side (``S' = S + 2``) and widens the box about its centre by ``r = S'/S`` so that
the padded mask covers it; per axis, in the boxes' dtype,

.. math::

    c = (x_1 + x_2)/2, \quad h = (x_2 - x_1)/2 \cdot r, \quad
    b_0 = \operatorname{trunc}(c - h), \quad b_1 = \operatorname{trunc}(c + h)

(``trunc`` is the cast to an integer, towards zero). The padded mask is resized bilinearly
(``F.interpolate``, ``align_corners=False``) to ``n = b_1 - b_0 + 1`` pixels (at least 1) and
written at ``[b_0, b_1]``, clipped to the image; every other pixel is 0, and a box that is
empty after the cast (``b_1 < b_0``) pastes nothing.

Here the resize is done for every output pixel at once. Along one axis, image pixel ``x`` is
pixel ``j = x - b_0`` of the resized mask, which ``interpolate`` reads from the padded mask at

.. math::

    u = \max\big(\rho\,(j + \tfrac12) - \tfrac12,\ 0\big), \quad \rho = S'/n, \quad
    i_0 = \min(\lfloor u \rfloor, S'-1), \quad i_1 = \min(i_0 + 1, S'-1), \quad
    \lambda_1 = \operatorname{clip}(u - i_0, 0, 1), \quad \lambda_0 = 1 - \lambda_1,

with weights 0 where ``x ∉ [b_0, b_1]``. Written as a matrix ``R[x, k] = λ_0 [k = i_0] + λ_1
[k = i_1]`` (``[M, W, S']``, two entries a row, a zero row outside the box), the paste is
``R_y · P · R_xᵀ``: two batched products, the second of ``O(M·H·W·S')``, the only one of
image size. With ``exact=True`` it is instead PyTorch's CPU kernel bit for bit, rounding
included: ``ρ`` is divided in the masks' dtype, ``ρ(j+½) − ½`` is one fused multiply-add
(rounded once; both paths take this), ``⌊u⌋`` is taken of ``u`` in float32 (``floorf``), and
the kernel depends on the resized size:

- ``n_y + n_x > 128``: separable, ``t_r = fma(P[r,i_0], λ_0, P[r,i_1]·λ_1)`` along x, then
  ``fma(t_{i_0}, λ_0, t_{i_1}·λ_1)`` along y: a gather of columns to ``[M, S', W]``, then of
  rows to ``[M, H, W]``.
- ``n_y + n_x ≤ 128`` (the channels-last kernel): ``fma(P_11, w_11, fma(P_10, w_10,
  fma(P_00, w_00, P_01·w_01)))`` with ``w_ab = λ_a^y·λ_b^x``, computed on a ``127 x 127``
  canvas per box and moved into the image by a gather.

For float32 each fused multiply-add is one float64 multiply-add rounded to float32 (the
product is exact in float64; the sum rounds twice only in rare ties); float64 takes the plain
``a·b + c`` (a few ulps from the kernel). Gathers are ``index_select`` over flattened rows, so
no index is ever ``[M, H, W]``. The exact path makes about ten passes over ``[M, H, W]``, the
product one: the product is the default, within an ulp or two of the kernel. Neither loops
over detections or has a data-dependent shape: both trace, and export to ONNX and
``torch.export`` with a free number of detections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PADDING", "SMALL", "expand", "paste"]

PADDING = 1  # torchvision's padding of each mask before it is pasted
SMALL = 128  # resized sizes with n_y + n_x <= SMALL take PyTorch's channels-last CPU kernel


def expand(boxes: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The integer corners ``(b0, b1)`` (``[..., 2]`` each, ``x, y``, int64) that a mask of
    ``size`` x ``size``, padded by :data:`PADDING`, is pasted over (see the module's maths).

    Example:
        >>> lo, hi = expand(torch.tensor([[10.0, 20.0, 38.0, 48.0]]), 28)
        >>> lo.tolist(), hi.tolist()
        ([[9, 19]], [[39, 49]])
    """
    ratio = float(size + 2 * PADDING) / size
    half = (boxes[..., 2:4] - boxes[..., 0:2]) * 0.5
    centre = (boxes[..., 2:4] + boxes[..., 0:2]) * 0.5
    half = half * ratio
    return (centre - half).to(torch.int64), (centre + half).to(torch.int64)


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``a·b + c`` rounded once for float32 (through float64, where ``a·b`` is exact); plain
    ``a·b + c`` for float64."""
    if a.dtype == torch.float64:
        return a * b + c
    return (a.double() * b.double() + c.double()).to(a.dtype)


def _source(ratio: Tensor, centre: Tensor) -> Tensor:
    """``ratio·centre − ½`` rounded once (the kernel's fused multiply-add). Float32 goes
    through float64, where both steps are exact. Float64 splits ``ratio`` into halves of 26
    bits (Veltkamp), whose products with ``centre`` (a half-integer of under 27 bits) are exact,
    so only the last sum rounds."""
    if ratio.dtype != torch.float64:
        return (ratio.double() * centre.double() - 0.5).to(ratio.dtype)
    spread = ratio * 134217729.0  # 2**27 + 1
    high = spread - (spread - ratio)
    return (high * centre - 0.5) + (ratio - high) * centre


def _axis(
    lo: Tensor, hi: Tensor, length: int, source: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One axis of the resize of ``source`` padded pixels to boxes ``[lo, hi]`` (``[M]``)
    over ``length`` output pixels: ``i0, i1`` (int64) and ``λ0, λ1`` (0 outside the box), each
    ``[M, length]``."""
    dst = torch.arange(length, device=lo.device)
    j = dst[None, :] - lo[:, None]
    inside = (j >= 0) & (dst[None, :] <= hi[:, None])
    pixels = torch.clamp(hi - lo + 1, min=1).to(dtype)
    ratio = torch.full_like(pixels, float(source)) / pixels
    real = torch.clamp(_source(ratio[:, None], j.to(dtype) + 0.5), min=0.0)
    i0 = torch.clamp(torch.floor(real.to(torch.float32)).to(torch.int64), max=source - 1)
    lam1 = torch.clamp(real - i0.to(dtype), min=0.0, max=1.0)
    zero = torch.zeros_like(lam1)
    lam0 = torch.where(inside, 1.0 - lam1, zero)
    lam1 = torch.where(inside, lam1, zero)
    return i0, torch.clamp(i0 + 1, max=source - 1), lam0, lam1


def _matrix(lo: Tensor, hi: Tensor, length: int, source: int, dtype: torch.dtype) -> Tensor:
    """The sampling matrix ``R`` ``[M, length, source]`` of one axis: ``λ0`` at ``i0``, ``λ1``
    at ``i1`` (summed where they meet), a zero row outside the box."""
    i0, i1, lam0, lam1 = _axis(lo, hi, length, source, dtype)
    k = torch.arange(source, device=lo.device)
    return (i0[..., None] == k) * lam0[..., None] + (i1[..., None] == k) * lam1[..., None]


def _rows(data: Tensor, index: Tensor) -> Tensor:
    """``out[m, l] = data[m, index[m, l]]`` for ``data`` ``[M, R, C]``, ``index`` ``[M, L]``:
    one ``index_select`` over the ``M·R`` rows."""
    count, rows, cols = data.shape
    base = torch.arange(count, device=data.device)[:, None] * rows
    flat = data.reshape(count * rows, cols).index_select(0, (index + base).reshape(-1))
    return flat.reshape(count, index.shape[1], cols)


def _cols(data: Tensor, index: Tensor) -> Tensor:
    """``out[m, :, l] = data[m, :, index[m, l]]``: :func:`_rows` of the transpose."""
    return _rows(data.transpose(1, 2), index).transpose(1, 2)


def _small(padded: Tensor, lo: Tensor, hi: Tensor, size: tuple[int, int]) -> Tensor:
    """The channels-last kernel's values (``n_y + n_x ≤ 128``) on a ``127 x 127`` canvas per
    box, moved into the ``H x W`` image (0 outside the box); ``lo, hi`` are ``[M, 2]``."""
    side, source, dtype = SMALL - 1, padded.shape[-1], padded.dtype
    start = torch.zeros_like(lo[:, 0])
    y0, y1, a0, a1 = _axis(start, hi[:, 1] - lo[:, 1], side, source, dtype)
    x0, x1, b0, b1 = _axis(start, hi[:, 0] - lo[:, 0], side, source, dtype)
    left, right = _cols(padded, x0), _cols(padded, x1)
    p00, p01, p10, p11 = _rows(left, y0), _rows(right, y0), _rows(left, y1), _rows(right, y1)
    a0, a1, b0, b1 = a0[:, :, None], a1[:, :, None], b0[:, None, :], b1[:, None, :]
    canvas = _fma(p11, a1 * b1, _fma(p10, a1 * b0, _fma(p00, a0 * b0, p01 * (a0 * b1))))
    canvas = F.pad(canvas, (0, 1, 0, 1))  # row and column `side` are 0: outside the box
    height, width = size
    spots = []
    for axis, length in ((0, width), (1, height)):
        j = torch.arange(length, device=lo.device)[None, :] - lo[:, axis : axis + 1]
        inside = (j >= 0) & (j <= hi[:, axis : axis + 1] - lo[:, axis : axis + 1])
        spots.append(torch.where(inside, torch.clamp(j, max=side), side))
    return _rows(_cols(canvas, spots[0]), spots[1])


def paste(masks: Tensor, boxes: Tensor, size: tuple[int, int], exact: bool = False) -> Tensor:
    """Each mask ``[..., S, S]`` pasted over its box ``[..., 4]`` (``x1, y1, x2, y2``, input
    pixels) in an image of ``size = (H, W)``: ``[..., H, W]``, 0 outside the widened box.

    Equals ``paste_masks_in_image(masks[:, None], boxes, size, padding=1)[:, 0]`` of
    torchvision for ``[M, S, S]`` masks within an ulp or two (two batched products); with
    ``exact``, bit for bit with PyTorch's CPU kernel in float32 (a few ulps in float64), at
    several times the cost.

    Example: a 2 x 2 mask of ones over a 2-pixel box, padded to 4 x 4 and widened to 5 pixels
    (0 on the padding's edge):

        >>> m = paste(torch.ones(1, 2, 2), torch.tensor([[1.0, 1.0, 3.0, 3.0]]), (5, 6))
        >>> (m[0] * 100).round().int().tolist()  # doctest: +NORMALIZE_WHITESPACE
        [[0, 0, 0, 0, 0, 0], [0, 49, 70, 49, 0, 0], [0, 70, 100, 70, 0, 0],
         [0, 49, 70, 49, 0, 0], [0, 0, 0, 0, 0, 0]]
    """
    height, width = size
    lead, side = masks.shape[:-2], masks.shape[-1]
    source = side + 2 * PADDING
    padded = F.pad(masks.reshape(-1, masks.shape[-2], side), (PADDING,) * 4)
    lo, hi = expand(boxes.reshape(-1, 4), side)
    if exact:
        out = _exact(padded, lo, hi, size)
    else:
        across = _matrix(lo[:, 0], hi[:, 0], width, source, padded.dtype)
        down = _matrix(lo[:, 1], hi[:, 1], height, source, padded.dtype)
        out = torch.bmm(down, torch.bmm(padded, across.transpose(1, 2)))
    return out.reshape(*lead, height, width)


def _exact(padded: Tensor, lo: Tensor, hi: Tensor, size: tuple[int, int]) -> Tensor:
    """The kernel's own arithmetic (``exact=True``): ``[M, H, W]``."""
    height, width = size
    source, dtype = padded.shape[-1], padded.dtype
    x0, x1, wx0, wx1 = _axis(lo[:, 0], hi[:, 0], width, source, dtype)
    y0, y1, wy0, wy1 = _axis(lo[:, 1], hi[:, 1], height, source, dtype)
    rows = _fma(_cols(padded, x0), wx0[:, None, :], _cols(padded, x1) * wx1[:, None, :])
    out = _fma(_rows(rows, y0), wy0[:, :, None], _rows(rows, y1) * wy1[:, :, None])
    sides = torch.clamp(hi - lo + 1, min=1).sum(-1)
    return torch.where((sides <= SMALL)[:, None, None], _small(padded, lo, hi, size), out)
