"""A second derivative as forward ops: what ``make_fx`` needs to trace a double backward.

ShapleyCAM (:data:`.methods.SHAPLEYCAM`) needs the Hessian-vector product
``H·A = ∂(g·A)/∂A`` of ``g = ∂y/∂A``: autograd takes ``g`` with ``create_graph`` and then
differentiates it again. :func:`.lowering.trace` records both passes as forward ops, as it does
the first. The double-backward formulas PyTorch has for layer and group norm, activations,
softmax, pooling, attention and resizes trace with the batch symbolic; two do not, as they are
C++ that reads fixed sizes and so bake the batch into the graph:

- the convolution's (``_convolution_double_backward``), which also computes the weight's
  gradient, never used here (per group: 48 convolutions for a depthwise one);
- batch norm's (``batchnorm_double_backward``), even in eval mode, where it is affine.

Within :func:`twice_differentiable` they are written so that autograd differentiates forward
ops instead: a convolution's input gradient is the transposed convolution
(:func:`.adjoints.convolution_backward`) inside :class:`_Convolution`, whose derivative is a
plain convolution again (the double backward of ``y = conv(x, w)`` with ``w`` frozen is
``conv(ggI, w)``); an eval-mode batch norm is its affine map ``x·s + t`` per channel, with
``s = γ/√(σ² + ε)`` and ``t = β − μ s`` from the running statistics.

Measured against autograd's double backward (``benchmarks/hvp_error.py``: the tests'
LayerNorm-head model at three layers, the photos, float32): the traced ``H·A`` is within 2.5e-7
of ``max |H·A|`` of autograd's, and within 3.3e-7 of float64 autograd's (autograd's own float32
error there: 3.6e-7). A central difference of the lowered gradient,
``(g(A(1+ε)) − g(A(1−ε))) / 2ε`` in one batch, the other way to forward ops, is 300 times
further off or more: 6.5e-5 to 1.8e-4 at ``ε`` = 1e-2 or 1e-3, 1.0e-2 to 1.8e-2 at 0.1
(truncation), 4.8e-4 to 1.7e-3 at 1e-4 (rounding).

SiLU's double backward makes a tensor of ones as ``empty_like`` then a fill, and ``empty_like``
is recorded as ``empty_permuted``, which no exporter to ONNX takes: :func:`empty_as_full`
writes it as a tensor of zeros (its values are never read).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .adjoints import convolution_backward

__all__ = ["empty_as_full", "twice_differentiable"]

aten = torch.ops.aten
_CONVOLUTIONS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}


def _tuple(value: int | Sequence[int], dims: int) -> list[int]:
    return [value] * dims if isinstance(value, int) else list(value)


class _Convolution(torch.autograd.Function):
    """``conv(x, w, b)`` whose backward is autograd-differentiable forward ops (the weight and
    bias are constants: no gradient for them)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: list[int],
        padding: list[int],
        dilation: list[int],
        groups: int,
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.params = (stride, padding, dilation, groups)
        dims = x.dim() - 2
        return aten.convolution(
            x, weight, bias, stride, padding, dilation, False, [0] * dims, groups
        )

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.params
        dims = x.dim() - 2
        mask = (True, False, False)
        grad_x, _, _ = convolution_backward(
            grad, x, weight, None, stride, padding, dilation, False, [0] * dims, groups, mask
        )
        return grad_x, None, None, None, None, None, None


class _TwiceDifferentiable(TorchFunctionMode):
    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        dims = _CONVOLUTIONS.get(func)
        if dims is not None:
            return _convolution(func, dims, *args, **kwargs)
        if func is F.batch_norm:
            return _batch_norm(*args, **kwargs)
        return func(*args, **kwargs)


def _convolution(
    func: Any,
    dims: int,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | str | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """The convolution through :class:`_Convolution`; as it is where no gradient is asked of
    it, where the weight needs one, or where padding is given by name (``"same"``)."""
    plain = not (x.requires_grad and torch.is_grad_enabled()) or weight.requires_grad
    if plain or isinstance(padding, str) or x.dim() != dims + 2:
        return func(x, weight, bias, stride, padding, dilation, groups)
    return _Convolution.apply(
        x,
        weight,
        bias,
        _tuple(stride, dims),
        _tuple(padding, dims),
        _tuple(dilation, dims),
        groups,
    )


def _batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """An eval-mode batch norm as ``x·s + t`` per channel; as it is in training mode or
    without running statistics."""
    if training or running_mean is None or running_var is None:
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    view = (1, -1, *([1] * (x.dim() - 2)))
    return x * scale.reshape(view) + shift.reshape(view)


@contextlib.contextmanager
def twice_differentiable() -> Iterator[None]:
    """Within (a trace of a double backward): every ``F.conv1d/2d/3d`` of an input that needs
    a gradient goes through :class:`_Convolution`, and an eval-mode ``F.batch_norm`` is its
    affine map (see the module)."""
    with _TwiceDifferentiable():
        yield


def empty_as_full(graph: torch.fx.GraphModule) -> None:
    """Each ``empty_permuted(size, identity)`` in ``graph`` (``empty_like`` of a contiguous
    tensor) as ``full(size, 0)`` of its dtype and device: an ONNX ``ConstantOfShape``. Where
    ``empty_like`` stands, the values are written before they are read, so any will do."""
    changed = False
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target is not aten.empty_permuted.default:
            continue
        size, order = node.args[0], list(node.args[1])
        if order != list(range(len(order))):
            continue
        kwargs = {k: v for k, v in node.kwargs.items() if k in ("dtype", "layout", "device")}
        with graph.graph.inserting_before(node):
            full = graph.graph.call_function(aten.full.default, (size, 0.0), kwargs)
        full.meta = dict(node.meta)
        node.replace_all_uses_with(full)
        graph.graph.erase_node(node)
        changed = True
    if changed:
        graph.recompile()
