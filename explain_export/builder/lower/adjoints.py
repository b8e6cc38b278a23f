"""Backward ops of convolution and pooling written as forward ops (their adjoints), so that a
lowered gradient (:mod:`.lowering`) exports to ONNX, TorchScript and ``torch.export``:

- convolution: ``∂L/∂x`` is the transposed convolution of ``∂L/∂y`` with the same weight;
- average pooling: the transposed convolution of ``∂L/∂y / divisor`` with a kernel of ones;
- adaptive average pooling: ``Pₕᵀ (∂L/∂y / counts) P_w`` with 0/1 window-membership matrices;
- max pooling (fixed and adaptive): ``∂L/∂y`` scattered (summed) to the argmax indices.

Each takes the arguments of the ATen backward op it replaces; tests check each against
PyTorch's own backward kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d_backward",
    "avg_pool2d_backward",
    "convolution_backward",
    "max_pool2d_with_indices_backward",
]

aten = torch.ops.aten


def _pairs(values: Sequence[int], n: int) -> list[int]:
    values = list(values)
    return values * n if len(values) == 1 else values


def convolution_backward(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    bias_sizes: Any,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    output_mask: Sequence[bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    r"""``∂L/∂x`` of a convolution as a transposed convolution (and ``∂L/∂b`` as a sum).

    For ``y = conv(x, w)`` with stride ``s``, padding ``p``, dilation ``d``, kernel ``k``:
    :math:`∂L/∂x = \mathrm{conv}^\top(∂L/∂y, w)` with output padding
    :math:`x - ((y-1)s - 2p + d(k-1) + 1)` per spatial dim, so that it has ``x``'s size.
    Weight gradients are never needed (the weights are frozen) and are refused.
    """
    if output_mask[1]:
        return NotImplemented  # left to the kernel; check_lowered names it
    dims = input.dim() - 2
    stride, padding, dilation = (_pairs(v, dims) for v in (stride, padding, dilation))
    grad_input = None
    if output_mask[0]:
        if transposed:
            grad_input = aten.convolution(
                grad_output, weight, None, stride, padding, dilation, False, [0] * dims, groups
            )
        else:
            extra = [
                input.shape[i + 2]
                - (
                    (grad_output.shape[i + 2] - 1) * stride[i]
                    - 2 * padding[i]
                    + dilation[i] * (weight.shape[i + 2] - 1)
                    + 1
                )
                for i in range(dims)
            ]
            if all(isinstance(e, int) for e in extra):
                grad_input = aten.convolution(
                    grad_output, weight, None, stride, padding, dilation, True, extra, groups
                )
            else:  # a free image size: the output padding is only known at run time
                grad_input = _unpadded_transpose(
                    grad_output, input, weight, stride, padding, dilation, groups
                )
    grad_bias = grad_output.sum([0, *range(2, grad_output.dim())]) if output_mask[2] else None
    return grad_input, None, grad_bias


def _unpadded_transpose(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """The transposed convolution without padding, over the padded input's coordinates, then
    cropped to the input: input position ``i`` is padded position ``i + p``, and positions no
    window reached get 0. Equal to the output-padded form, with no output padding attribute
    (ONNX's must be a constant, and with a free size it depends on the size's parity)."""
    dims = input.dim() - 2
    full = aten.convolution(
        grad_output, weight, None, stride, [0] * dims, dilation, True, [0] * dims, groups
    )
    pads: list[Any] = []
    for i in reversed(range(dims)):
        pads += [0, torch.sym_max(0, input.shape[i + 2] + 2 * padding[i] - full.shape[i + 2])]
    full = aten.constant_pad_nd(full, pads, 0.0)
    for i in range(dims):
        full = full.narrow(i + 2, padding[i], input.shape[i + 2])
    return full


def avg_pool2d_backward(
    grad_output: Tensor,
    input: Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Tensor:
    r"""``∂L/∂x`` of ``avg_pool2d``: each window spreads ``∂L/∂y / divisor`` over its inputs.

    The divisor of each window comes from pooling a map of ones the same way
    (:math:`1/\mathrm{divisor} = \mathrm{avg}(1) / \mathrm{sum}(1)`), and the spreading is a
    transposed convolution with a kernel of ones.
    """
    kernel = _pairs(kernel_size, 2)
    stride = _pairs(stride or kernel_size, 2)
    padding = _pairs(padding, 2)
    n, c, h, w = input.shape
    ones = input.new_ones((1, 1, h, w))
    sums = aten.avg_pool2d(ones, kernel, stride, padding, ceil_mode, True, 1)
    means = aten.avg_pool2d(
        ones, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override
    )
    scaled = grad_output * (means / sums)
    oh, ow = grad_output.shape[-2:]
    full = aten.convolution(
        scaled.reshape(n * c, 1, oh, ow),
        input.new_ones((1, 1, *kernel)),
        None,
        stride,
        [0, 0],
        [1, 1],
        True,
        [0, 0],
        1,
    )
    # ``full`` covers the padded input up to the last window; crop the padding, pad the tail
    # that no window reached (floor mode) with zeros.
    fh, fw = full.shape[-2:]
    full = aten.constant_pad_nd(
        full, [0, max(0, w + 2 * padding[1] - fw), 0, max(0, h + 2 * padding[0] - fh)], 0.0
    )
    return full[:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w].reshape(n, c, h, w)


def _window_matrix(size: Any, out: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """0/1 ``[out, size]`` membership of adaptive pooling's windows, and each window's length.

    Window ``i`` covers ``[floor(i·size/out), ceil((i+1)·size/out))``, as in PyTorch.
    """
    i = torch.arange(out, device=like.device)
    start = torch.div(i * size, out, rounding_mode="floor")
    end = torch.div((i + 1) * size + out - 1, out, rounding_mode="floor")
    pos = torch.arange(size, device=like.device)
    member = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    return member.to(like.dtype), (end - start).to(like.dtype)


def adaptive_avg_pool2d_backward(grad_output: Tensor, input: Tensor) -> Tensor:
    r"""``∂L/∂x`` of adaptive average pooling: :math:`P_h^\top (∂L/∂y \oslash c) P_w`.

    ``P`` are the 0/1 window-membership matrices and ``c`` the window sizes; for a global pool
    (1x1 output) this is :math:`∂L/∂y / (hw)`, broadcast.
    """
    h, w = input.shape[-2:]
    oh, ow = grad_output.shape[-2:]
    if oh == 1 and ow == 1:
        return (grad_output / (h * w)).expand(input.shape).contiguous()
    mh, ch = _window_matrix(h, oh, grad_output)
    mw, cw = _window_matrix(w, ow, grad_output)
    scaled = grad_output / (ch[:, None] * cw[None, :])
    return torch.matmul(torch.matmul(mh.t(), scaled), mw)


def _scatter_to_indices(grad_output: Tensor, input: Tensor, indices: Tensor) -> Tensor:
    """Sum ``grad_output`` into a zero map shaped like ``input`` at the flat ``indices``."""
    n, c, h, w = input.shape
    g = grad_output.float()  # ONNX Runtime's CPU scatter-add has no fp16
    flat = g.new_zeros((n, c, h * w))
    out = flat.scatter_add(2, indices.reshape(n, c, -1), g.reshape(n, c, -1))
    return out.reshape(n, c, h, w).to(grad_output.dtype)


def max_pool2d_with_indices_backward(
    grad_output: Tensor,
    input: Tensor,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    ceil_mode: bool,
    indices: Tensor,
) -> Tensor:
    """``∂L/∂x`` of max pooling: each output's gradient goes to its argmax (summed on ties)."""
    return _scatter_to_indices(grad_output, input, indices)


def adaptive_max_pool2d_backward(grad_output: Tensor, input: Tensor, indices: Tensor) -> Tensor:
    """``∂L/∂x`` of adaptive max pooling, as for max pooling."""
    return _scatter_to_indices(grad_output, input, indices)
