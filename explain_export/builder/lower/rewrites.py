"""Rewrites of a lowered graph (:mod:`.lowering`) that the exporters need or that keep the
exported file lean; each computes the same values as the op it replaces.

- :func:`as_strided_to_views`: ``as_strided`` of a contiguous geometry as plain views, which
  ONNX can take.
- :func:`fold_broadcast_bmm`: ``bmm`` whose second operand is one matrix repeated over the
  batch as one ``mm``, so that no file holds that matrix copied once per batch element.
- :func:`kept_resizes`: while it is on, ``F.interpolate`` (nearest, bilinear) of a tensor that
  nothing differentiates is traced as the resize op, not its decomposition (index arithmetic
  and gathers: ``GatherND``, 35 ms of YOLO11n's ten 640x640 maps on 2 cores); the op is
  recorded in the form (``.vec``) the exporters keep, one ONNX ``Resize``. A resize on the
  gradient's path is decomposed as before: its backward op has no decomposition.
- :func:`attention_in_4d`: while it is on, ``F.scaled_dot_product_attention`` on queries of more
  than 4 dims (NesT's blocked attention, ``[N, heads, blocks, n, d]``) runs on them folded to
  4-D, which ONNX's attention takes.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx import Graph, GraphModule, Node
from torch.overrides import TorchFunctionMode

__all__ = [
    "KEPT_RESIZES",
    "as_strided_to_views",
    "attention_in_4d",
    "fold_broadcast_bmm",
    "kept_resizes",
    "resizes_as_vec",
]

aten = torch.ops.aten


def _value(arg: Any) -> Any:
    """A graph argument's value: an int, or the symbolic size a node stands for."""
    return arg.meta.get("val") if isinstance(arg, Node) else arg


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # a symbolic comparison that cannot be decided
        return False


def _contiguous_geometry(size: Sequence[Any], stride: Sequence[Any]) -> bool:
    """``stride`` is the row-major stride of ``size``, dims of size 1 aside (any stride fits)."""
    expected: Any = 1
    pairs = zip(map(_value, size), map(_value, stride), strict=True)
    for n, s in reversed(list(pairs)):
        if isinstance(n, int) and n == 1:
            continue
        if not _same(s, expected):
            return False
        expected = expected * n
    return True


def as_strided_to_views(graph: GraphModule) -> None:
    """Rewrite ``as_strided`` on a contiguous tensor with a contiguous geometry as
    ``view(slice(flatten(base)))``.

    Autograd's backward of a strided view (``adaptive_avg_pool2d`` returns one for a
    channels-last map, as in ConvNeXt) writes into ``as_strided`` views of a zero buffer.
    ONNX can take the plain views; it cannot take the ``as_strided_scatter`` that
    functionalization would otherwise make of the writes.
    """
    g = graph.graph
    for node in list(g.nodes):
        if node.op != "call_function" or node.target is not aten.as_strided.default:
            continue
        base, size, stride = node.args[:3]
        offset = node.args[3] if len(node.args) > 3 else node.kwargs.get("storage_offset", 0)
        val = getattr(base, "meta", {}).get("val")
        if (
            not isinstance(val, Tensor)
            or not _same(_value(offset) or 0, 0)
            or not _contiguous_geometry(size, stride)
        ):
            continue
        try:
            if not (val.is_contiguous() and val.storage_offset() == 0):
                continue
        except Exception:
            continue
        with g.inserting_before(node):
            flat = g.call_function(aten.view.default, (base, [-1]))
            part = g.call_function(aten.slice.Tensor, (flat, 0, 0, _numel(g, size)))
            view = g.call_function(aten.view.default, (part, list(size)))
        node.replace_all_uses_with(view)
        g.erase_node(node)
    g.lint()
    graph.recompile()


def _numel(g: Graph, size: Sequence[Any]) -> Any:
    """The product of ``size`` (ints and symbolic-size nodes) as a graph value."""
    total: Any = 1
    for n in size:
        total = (
            n
            if isinstance(total, int) and total == 1
            else g.call_function(operator.mul, (total, n))
        )
    return total


# ops whose output holds the same matrices as their input where the last two dims are kept
_KEEPS_MATRICES = (
    aten.view.default,
    aten._unsafe_view.default,
    aten.reshape.default,
    aten.clone.default,
    aten.alias.default,
)


def _shape(node: Any) -> list[Any] | None:
    val = _value(node)
    return list(val.shape) if isinstance(val, Tensor) else None


def _broadcast_matrix(node: Any) -> tuple[Node, bool] | None:
    """Where ``node`` (``[..., k, p]``) is one matrix repeated over all its leading dims (an
    ``expand`` of a matrix, then reshapes, copies and swaps of the last two dims): that matrix's
    node (``[k, p]``, or ``[1, .., 1, k, p]``) and whether ``node`` holds it transposed."""
    transposed = False
    while isinstance(node, Node) and node.op == "call_function":
        shape, source = _shape(node), node.args[0] if node.args else None
        inner = _shape(source)
        if shape is None or inner is None:
            return None
        last_two = len(inner) >= 2 and all(map(_same, shape[-2:], inner[-2:]))
        if node.target is aten.expand.default:  # only over leading dims of size 1
            ones = all(isinstance(d, int) and d == 1 for d in inner[:-2])
            return (source, transposed) if last_two and ones else None
        if node.target in _KEEPS_MATRICES and last_two:
            node = source
            continue
        rank = len(inner)
        swap = [*range(rank - 2), rank - 1, rank - 2]
        if node.target is aten.permute.default and rank >= 2:
            dims = [d % rank for d in node.args[1]]
            if dims != swap:
                return None
            transposed, node = not transposed, source
            continue
        if node.target is aten.transpose.int and rank >= 2:
            if sorted(d % rank for d in node.args[1:3]) != [rank - 2, rank - 1]:
                return None
            transposed, node = not transposed, source
            continue
        return None
    return None


def _size(g: Graph, node: Node, dim: int) -> Any:
    """Dim ``dim`` of ``node``'s value: an int, or a ``sym_size`` node where it is symbolic."""
    n = _shape(node)[dim]  # type: ignore[index]
    return n if isinstance(n, int) else g.call_function(aten.sym_size.int, (node, dim))


def fold_broadcast_bmm(graph: GraphModule) -> int:
    r"""Rewrite ``bmm(a, b)`` for ``a`` ``[B, n, k]`` and ``b`` one matrix ``M`` repeated over
    the batch (:func:`_broadcast_matrix`) as ``mm(a.reshape(B·n, k), M).view(B, n, p)``; drop
    the repeat. Returns how many were rewritten.

    ``torch.matmul`` of ``x`` ``[.., n, k]`` and a matrix ``W`` folds ``x`` into one ``mm``
    itself only where ``x``'s leading dims are contiguous or ``W`` requires grad (an
    explainer's weights do not); else it calls ``bmm`` with ``W`` expanded over the batch, as
    does that product's backward with ``Wᵀ``. Eager expands by a stride-0 view; ONNX's
    ``Expand`` copies. torchvision's ViT-B/16 reads its tokens sequence-first
    (``nn.MultiheadAttention``), so each block's input projection held ``W`` ``[768, 2304]``
    197 times (1.3 GB), and ONNX Runtime needed over 14 GB to run the file at batch 1.
    """
    g = graph.graph
    folded = 0
    for node in list(g.nodes):
        if node.op != "call_function" or node.target is not aten.bmm.default:
            continue
        a, b = node.args[:2]
        found = _broadcast_matrix(b)
        if found is None or _shape(a) is None or _shape(node) is None:
            continue
        matrix, transposed = found
        with g.inserting_before(node):
            if len(_shape(matrix)) > 2:  # type: ignore[arg-type]
                sizes = [_size(g, matrix, -2), _size(g, matrix, -1)]
                matrix = g.call_function(aten.view.default, (matrix, sizes))
            if transposed:
                matrix = g.call_function(aten.permute.default, (matrix, [1, 0]))
            rows = g.call_function(aten.reshape.default, (a, [-1, _size(g, a, 2)]))
            product = g.call_function(aten.mm.default, (rows, matrix))
            out = [_size(g, a, 0), _size(g, a, 1), -1]
            folded_node = g.call_function(aten.view.default, (product, out))
        node.replace_all_uses_with(folded_node)
        g.erase_node(node)
        _erase_unused(g, b)
        folded += 1
    if folded:
        g.lint()
        graph.recompile()
    return folded


def _erase_unused(g: Graph, node: Any) -> None:
    """Erase ``node`` and then its inputs, as long as nothing else uses them."""
    while isinstance(node, Node) and node.op == "call_function" and not node.users:
        source = node.args[0] if node.args else None
        g.erase_node(node)
        node = source


@contextlib.contextmanager
def attention_in_4d() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` folds queries, keys and values of more than 4 dims to
    ``[-1, *shape[-3:]]`` around the call (and a mask with them) and unfolds the result: the same
    values, since attention is independent over every dim before the last two."""
    original = F.scaled_dot_product_attention

    def folded(query: Tensor, key: Tensor, value: Tensor, attn_mask: Any = None, *a, **kw):
        if query.dim() <= 4:
            return original(query, key, value, attn_mask, *a, **kw)
        lead = query.shape[:-2]

        def fold(t: Tensor) -> Tensor:
            return t.expand(*lead, *t.shape[-2:]).reshape(-1, *t.shape[-3:])

        mask = None if attn_mask is None else fold(attn_mask)
        out = original(fold(query), fold(key), fold(value), mask, *a, **kw)
        return out.reshape(*lead, out.shape[-2], out.shape[-1])

    F.scaled_dot_product_attention = folded
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


# what :func:`kept_resizes` records (a decomposition table for the trace must leave them out);
# :func:`resizes_as_vec` then writes them as the ``.vec`` ops the exporters keep
KEPT_RESIZES = (aten.upsample_bilinear2d.default, aten.upsample_nearest2d.default)


class _KeptResizes(TorchFunctionMode):
    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.interpolate:
            kept = _resize(*args, **kwargs)
            if kept is not None:
                return kept
        return func(*args, **kwargs)


@contextlib.contextmanager
def kept_resizes() -> Iterator[None]:
    """Within (a trace): a 4-D nearest or bilinear ``F.interpolate`` (no antialias) of a tensor
    that needs no gradient is recorded as :data:`KEPT_RESIZES` with the output size and scales
    ``F.interpolate`` passes (the module's docstring says why)."""
    with _KeptResizes():
        yield


def _resize(
    x: Tensor,
    size: Any = None,
    scale_factor: Any = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
    antialias: bool = False,
) -> Tensor | None:
    """The resize as a kept op, or None where it is none of them (``F.interpolate`` runs)."""
    if mode not in ("nearest", "bilinear") or antialias or x.dim() != 4:
        return None
    if x.requires_grad and torch.is_grad_enabled():
        return None
    if size is not None:
        out = [size, size] if isinstance(size, int) else list(size)
        scales: list[float | None] = [None, None]
    elif scale_factor is not None:
        f = [scale_factor] * 2 if isinstance(scale_factor, int | float) else list(scale_factor)
        out = [math.floor(float(x.shape[2 + i]) * float(f[i])) for i in range(2)]
        scales = [None, None] if recompute_scale_factor else [float(v) for v in f]
    else:
        return None
    # The ops' Python decompositions run at the Autograd key: below it (nothing here needs a
    # gradient) the op itself is what a trace records.
    with torch._C._AutoDispatchBelowAutograd():
        if mode == "nearest":
            return aten.upsample_nearest2d.default(x, out, *scales)
        return aten.upsample_bilinear2d.default(x, out, bool(align_corners), *scales)


def resizes_as_vec(graph: GraphModule) -> int:
    """Rewrite each :data:`KEPT_RESIZES` node as its ``.vec`` op (``output_size`` or
    ``scale_factors``, as ``F.interpolate`` calls it), which ONNX's exporter writes as one
    ``Resize`` (it decomposes the others); the number rewritten."""
    done = 0
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target not in KEPT_RESIZES:
            continue
        nearest = node.target is aten.upsample_nearest2d.default
        x, size, *rest = node.args
        corners = () if nearest else (rest.pop(0),)
        scales = [*rest, None, None][:2]
        factors = None if None in scales else list(scales)
        vec = aten.upsample_nearest2d.vec if nearest else aten.upsample_bilinear2d.vec
        node.target = vec
        node.args = (x, None if factors else size, *corners, factors)
        node.kwargs = {}
        done += 1
    graph.recompile()
    return done
