"""Lower an explainer whose head needs ``∂y_c/∂A`` to one graph of forward ops, with no autograd.

``gradcam`` runs autograd in eager mode. No exporter takes ``torch.autograd.grad`` inside
``forward`` (``torch.jit.trace`` and ``torch.export`` both refuse it), so :func:`lower` traces
the explainer's capture step (normalize, model, tap, gradient) with ``make_fx``: the autograd
engine runs during tracing, and what it executes (forward ops, then the backward ops of the path
from ``A`` to the logits) is recorded as plain ATen ops. Weights are constants, and only the
batch (and, with ``dynamic_size``, the image size) stays symbolic. :class:`Lowered` runs that
graph, then the explainer's :class:`~.heatmap_head.HeatmapHead`, which the exporters trace as they
trace ``cam``'s.

The backward ops are decomposed into forward ops as they are recorded, so that ONNX, TorchScript
and ``torch.export`` can all run them: PyTorch's own decompositions (layer norm, batch norm,
activations, softmax ...) plus the ones here, written as the adjoint of each forward op:

- convolution: ``∂L/∂x`` is the transposed convolution of ``∂L/∂y`` with the same weight;
- average pooling: the transposed convolution of ``∂L/∂y / divisor`` with a kernel of ones;
- adaptive average pooling: ``Pₕᵀ (∂L/∂y / counts) P_w`` with 0/1 window-membership matrices;
- max pooling (fixed and adaptive): ``∂L/∂y`` scattered (summed) to the argmax indices.

Attention (``F.scaled_dot_product_attention``, which timm's ViTs and ``nn.MultiheadAttention``
call) is traced on its math path, whose backward is matmuls and softmax (:func:`_math_attention`).
A backward op that none of these covers is refused by name (:func:`check_lowered`). The traced
graph is then rewritten where an exporter needs it or where it would hold a broadcast weight
copied (:mod:`.rewrites`).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ... import nms_op
from ...errors import OptionError
from .adjoints import (
    adaptive_avg_pool2d_backward,
    adaptive_max_pool2d_backward,
    avg_pool2d_backward,
    convolution_backward,
    max_pool2d_with_indices_backward,
)
from .rewrites import (
    KEPT_RESIZES,
    as_strided_to_views,
    fold_broadcast_bmm,
    kept_resizes,
    resizes_as_vec,
)
from .second_order import empty_as_full, twice_differentiable
from .trace_state import kept_attributes

__all__ = [
    "Lowered",
    "check_lowered",
    "decompositions",
    "holds_lowered",
    "lower",
    "script_graph",
    "to_script",
    "trace",
]

aten = torch.ops.aten


def decompositions() -> dict[Any, Callable[..., Any]]:
    """PyTorch's core ATen decompositions plus the backward ops above."""
    from torch._decomp import core_aten_decompositions

    table: dict[Any, Callable[..., Any]] = dict(core_aten_decompositions())
    table.update(
        {
            aten.convolution_backward.default: convolution_backward,
            aten.avg_pool2d_backward.default: avg_pool2d_backward,
            aten._adaptive_avg_pool2d_backward.default: adaptive_avg_pool2d_backward,
            aten.max_pool2d_with_indices_backward.default: max_pool2d_with_indices_backward,
            aten.adaptive_max_pool2d_backward.default: adaptive_max_pool2d_backward,
        }
    )
    return table


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _math_attention() -> Iterator[None]:
    """Within: ``F.scaled_dot_product_attention`` takes its math path (``softmax(QKᵀ/√d)V`` as
    matmuls and a softmax), whose backward autograd records as forward ops; the fused kernels'
    backward ops (``_scaled_dot_product_flash_attention_for_cpu_backward``) have no
    decomposition. The math path computes the same attention."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no backend choice
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


def trace(
    fn: Callable[..., Any],
    args: tuple[Tensor, ...],
    dynamic: dict[int, Sequence[int]],
    owner: nn.Module,
    second_order: bool = False,
) -> torch.fx.GraphModule:
    """``fn(*args)`` as an FX graph of forward ATen ops, autograd included: the autograd engine
    runs while ``make_fx`` records, and every backward op is decomposed into forward ops
    (:func:`decompositions`; a resize off the gradient's path is kept, :func:`.kept_resizes`),
    then the graph is rewritten for the exporters and checked (:func:`check_lowered`).
    ``dynamic`` maps an argument's position to its dimensions that stay symbolic; every other
    size is fixed to that of ``args``. ``owner``'s plain attributes are kept as they were
    (:func:`.trace_state.kept_attributes`). ``second_order``: ``fn`` differentiates a gradient
    again (ShapleyCAM's Hessian-vector product), so convolutions and batch norms are traced
    as :func:`.second_order.twice_differentiable` writes them.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import (
        DimDynamic,
        ShapeEnv,
        StatelessSymbolicContext,
    )

    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    fakes = []
    for i, arg in enumerate(args):
        dims = set(dynamic.get(i, ()))
        sizes = [DimDynamic.DYNAMIC if d in dims else DimDynamic.STATIC for d in range(arg.dim())]
        context = StatelessSymbolicContext(dynamic_sizes=sizes)
        fakes.append(mode.from_tensor(arg, symbolic_context=context))
    owner.eval()
    # kept_attributes: a model that caches tensors in plain attributes (timm's TinyViT) keeps
    # its own, not the trace's fake ones; explain-bench lowers without the export around it
    twice = twice_differentiable() if second_order else contextlib.nullcontext()
    with _quiet(), _math_attention(), kept_attributes(owner), kept_resizes(), twice:
        graph = make_fx(
            fn,
            decomposition_table={
                op: f for op, f in decompositions().items() if op not in KEPT_RESIZES
            },
            tracing_mode="symbolic",
            _allow_non_fake_inputs=True,
        )(*fakes)
    if second_order:
        empty_as_full(graph)
    as_strided_to_views(graph)
    fold_broadcast_bmm(graph)
    resizes_as_vec(graph)
    check_lowered(graph)
    return graph


def lower(explainer: Any, args: tuple[Tensor, ...], dynamic: dict[int, Sequence[int]]) -> Lowered:
    """Trace ``explainer.capture(*args)`` to an FX graph of forward ATen ops, autograd included
    (:func:`trace`), and return it followed by the explainer's heatmap head.

    ``dynamic`` maps an argument's position to its dimensions that stay symbolic (the batch,
    and H, W with a dynamic size); every other size is fixed to that of ``args``.
    """

    def capture(*inputs: Tensor) -> tuple[Tensor, ...]:  # flat: (logits, *maps, *gradients)
        logits, features, grads = explainer.capture(*inputs)
        return (logits, *_as_list(features), *_as_list(grads))

    graph = trace(capture, args, dynamic, explainer, explainer.method.second_order)
    return Lowered(graph, explainer.heatmap_head, explainer.capture_counts, len(args))


def _as_list(maps: Tensor | list[Tensor]) -> list[Tensor]:
    return list(maps) if isinstance(maps, list | tuple) else [maps]


def check_lowered(graph: torch.fx.GraphModule) -> None:
    """Refuse a graph that still holds a backward op (one with no forward decomposition)."""
    left = sorted(
        {
            str(node.target)
            for node in graph.graph.nodes
            if node.op == "call_function" and "backward" in str(node.target)
        }
    )
    if left:
        raise OptionError(
            "layer",
            "gradcam cannot put the gradient of {ops} into the exported graph; tap a layer "
            "after that op (see {list_layers})",
            ops=", ".join(left),
        )


class Lowered(nn.Module):
    """A lowered capture graph and the heatmap head: ``forward(image[, class_index])``.

    ``graph_module`` maps the inputs to ``(logits, A, ∂y_c/∂A)`` (``(logits, A_1..A_L, ∂y_c/∂A_1
    ..∂y_c/∂A_L)`` for ``L`` fused maps; a method at the image's maps and gradients,
    :mod:`..pixel_capture`); ``counts`` says how many maps and gradients; ``head`` is the
    explainer's :class:`~.heatmap_head.HeatmapHead`, :class:`~.heatmap_head.FusedHead` or
    :class:`~.pixel_head.PixelHead` (no model weights); ``inputs`` how many inputs the graph
    takes (the image, and a class index).
    """

    def __init__(
        self,
        graph: torch.fx.GraphModule | nn.Module,
        head: nn.Module,
        counts: tuple[int, int] = (1, 1),
        inputs: int = 1,
    ) -> None:
        super().__init__()
        self.graph_module = graph
        self.head = head
        self.counts = counts
        self.inputs = inputs

    def forward(self, image: Tensor, class_index: Tensor | None = None) -> tuple[Tensor, ...]:
        if class_index is None:
            out = self.graph_module(image)
        else:
            out = self.graph_module(image, class_index)
        n, m = self.counts
        features, grad = list(out[1 : 1 + n]), list(out[1 + n : 1 + n + m])
        if n == 1 and m == 1 and not getattr(self.head, "takes_lists", False):
            return self.head(image, out[0], features[0], grad[0], None, class_index)
        return self.head(image, out[0], features, grad, None, class_index)


_SYM_BUILTINS: dict[Any, Any] = {torch.sym_max: max, torch.sym_min: min}


class _Script(nn.Module):
    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph_module = graph

    def forward(self, image: Tensor) -> list[Tensor]:
        return self.graph_module(image)


class _ScriptWithClass(_Script):
    def forward(self, image: Tensor, class_index: Tensor) -> list[Tensor]:  # type: ignore[override]
        return self.graph_module(image, class_index)


def _device_of_input(graph: torch.fx.Graph) -> None:
    """Tensors the graph creates (``empty``, ``arange``) go on the image's device, not on the
    device the graph was traced on, so the TorchScript file runs on any device."""
    image = next(n for n in graph.nodes if n.op == "placeholder")
    device = None
    for node in list(graph.nodes):
        if isinstance(node.kwargs.get("device"), torch.device):
            if device is None:
                with graph.inserting_after(image):
                    device = graph.call_function(torch.ops.prim.device, (image,))
            node.kwargs = {**node.kwargs, "device": device}


def script_graph(graph_module: torch.fx.GraphModule, inputs: int = 1) -> torch.jit.ScriptModule:
    """A lowered FX graph as TorchScript, scripted rather than traced (tracing would bake the
    batch size into its shape arithmetic): its ATen overloads become the overload packets that
    TorchScript resolves by signature, and tensors it creates go on the input's device.
    ``inputs``: how many inputs the graph takes (the image, and a class index)."""
    graph = nms_op.inline_steps(graph_module)  # a copy; NMS scripted into a loop in the file
    assert isinstance(graph, torch.fx.GraphModule)
    _device_of_input(graph.graph)
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target in _SYM_BUILTINS:
            node.target = _SYM_BUILTINS[node.target]
        elif node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            if node.target is aten.sym_size.int:
                node.target = aten.size.int
            node.target = node.target.overloadpacket
    graph.recompile()
    wrapper = _ScriptWithClass(graph) if inputs > 1 else _Script(graph)
    with _quiet():
        return torch.jit.script(wrapper.eval())


def to_script(module: nn.Module, args: tuple[Tensor, ...]) -> torch.jit.ScriptModule:
    """TorchScript of a module that is, or holds as its children, lowered explainers
    (:class:`Lowered`): each lowered graph scripted (:func:`script_graph`), the rest (a head,
    the faithfulness scores) traced around them like ``cam``'s, calling the scripted graphs."""
    if isinstance(module, Lowered):
        traced = _scripted(module)
    else:  # a shallow copy whose lowered children run scripted graphs
        traced = copy.copy(module)
        traced._modules = {
            name: _scripted(child) if isinstance(child, Lowered) else child
            for name, child in module.named_children()
        }
    with _quiet():
        return torch.jit.trace(traced.eval(), args, check_trace=False)


def _scripted(lowered: Lowered) -> Lowered:
    """``lowered`` with its graph scripted (:func:`script_graph`)."""
    scripted = script_graph(lowered.graph_module, lowered.inputs)
    return Lowered(scripted, lowered.head, lowered.counts, lowered.inputs)


def holds_lowered(module: nn.Module) -> bool:
    """Whether ``module`` is a :class:`Lowered` or has one as a child."""
    return isinstance(module, Lowered) or any(
        isinstance(child, Lowered) for child in module.children()
    )
