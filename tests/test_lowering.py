"""The lowering: each backward op's forward-op decomposition against PyTorch's own kernel, and
the lowered graph's properties (no backward ops, no autograd, batch kept symbolic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explain_export.builder.explainer import build_explainer
from explain_export.builder.lower import lowering
from explain_export.errors import UsageError

from models import head_kind, mha_vit, tiny_resnet

aten = torch.ops.aten


def _grad(y: torch.Tensor, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    return g, torch.autograd.grad(y, x, g)[0]


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation", "groups"),
    [
        ((9, 9), 3, 1, 1, 1, 1),
        ((10, 7), 3, 2, 1, 1, 1),
        ((11, 12), 5, 3, 2, 2, 1),
        ((8, 8), 1, 1, 0, 1, 1),
        ((9, 10), 3, 2, 1, 1, 4),  # depthwise-like groups
        ((7, 7), 4, 4, 0, 1, 1),  # patchify (ConvNeXt's stem)
    ],
)
def test_convolution_backward_is_a_transposed_convolution(
    size, kernel, stride, padding, dilation, groups
):
    x = torch.randn(2, 4, *size, requires_grad=True)
    w = torch.randn(8, 4 // groups, kernel, kernel)
    y = F.conv2d(x, w, None, stride, padding, dilation, groups)
    g, ref = _grad(y, x)
    ours, gw, gb = lowering.convolution_backward(
        g, x, w, None, [stride], [padding], [dilation], False, [0, 0], groups, [True, False, True]
    )
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    assert gw is None
    torch.testing.assert_close(gb, g.sum((0, 2, 3)))


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation", "groups"),
    [
        ((10, 7), 3, 2, 1, 1, 1),
        ((11, 12), 5, 3, 2, 2, 1),
        ((9, 10), 3, 2, 1, 1, 4),
        ((13, 13), 3, 2, 0, 1, 1),
    ],
)
def test_the_unpadded_transpose_for_a_free_size_equals_the_kernel(
    size, kernel, stride, padding, dilation, groups
):
    """With a free image size the output padding is unknown at export; the transposed
    convolution without padding, padded at the tail and cropped, gives the same gradient."""
    from explain_export.builder.lower.adjoints import _unpadded_transpose

    x = torch.randn(2, 4, *size, requires_grad=True)
    w = torch.randn(8, 4 // groups, kernel, kernel)
    y = F.conv2d(x, w, None, stride, padding, dilation, groups)
    g, ref = _grad(y, x)
    ours = _unpadded_transpose(g, x, w, [stride] * 2, [padding] * 2, [dilation] * 2, groups)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_transposed_convolution_backward_is_a_convolution():
    x = torch.randn(2, 4, 5, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3)
    y = F.conv_transpose2d(x, w, None, 2, 1, 1)
    g, ref = _grad(y, x)
    ours = lowering.convolution_backward(
        g, x, w, None, [2], [1], [1], True, [1, 1], 1, [True, False, False]
    )[0]
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "ceil_mode", "include_pad", "divisor"),
    [
        ((8, 8), 2, 2, 0, False, True, None),  # DenseNet's transition
        ((9, 7), 3, 1, 1, False, True, None),  # Inception's branch pooling
        ((9, 7), 3, 1, 1, False, False, None),
        ((10, 11), 3, 2, 1, True, False, None),
        ((10, 11), 3, 2, 1, True, True, None),
        ((7, 7), 3, 2, 0, False, True, 5),
    ],
)
def test_avg_pool2d_backward(size, kernel, stride, padding, ceil_mode, include_pad, divisor):
    x = torch.randn(2, 3, *size, requires_grad=True)
    y = F.avg_pool2d(x, kernel, stride, padding, ceil_mode, include_pad, divisor)
    g, ref = _grad(y, x)
    ours = lowering.avg_pool2d_backward(
        g, x, [kernel], [stride], [padding], ceil_mode, include_pad, divisor
    )
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("size", "out"), [((7, 7), (1, 1)), ((10, 7), (3, 3)), ((5, 9), (2, 4))])
def test_adaptive_avg_pool2d_backward(size, out):
    x = torch.randn(2, 3, *size, requires_grad=True)
    y = aten._adaptive_avg_pool2d(x, list(out))
    g, ref = _grad(y, x)
    torch.testing.assert_close(lowering.adaptive_avg_pool2d_backward(g, x), ref)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "ceil_mode"),
    [(2, 2, 0, False), (3, 2, 1, False), (3, 2, 0, True)],
)
def test_max_pool2d_backward_scatters_to_the_argmax(kernel, stride, padding, ceil_mode):
    x = torch.randn(2, 3, 11, 9, requires_grad=True)
    y, idx = aten.max_pool2d_with_indices(x, [kernel], [stride], [padding], [1], ceil_mode)
    g, ref = _grad(y, x)
    ours = lowering.max_pool2d_with_indices_backward(
        g, x, [kernel], [stride], [padding], [1], ceil_mode, idx
    )
    torch.testing.assert_close(ours, ref)


def test_adaptive_max_pool2d_backward():
    x = torch.randn(2, 3, 10, 7, requires_grad=True)
    y, idx = aten.adaptive_max_pool2d(x, [3, 2])
    g, ref = _grad(y, x)
    torch.testing.assert_close(lowering.adaptive_max_pool2d_backward(g, x, idx), ref)


def _lowered(model, layer=None, size=(64, 64)):
    explainer = build_explainer(model, layer=layer, method="gradcam", input_size=size)
    return explainer, lowering.lower(explainer, (torch.rand(2, 3, *size),), {0: [0]})


def _graph(lowered) -> torch.fx.Graph:
    return lowered.graph_module.graph


@pytest.mark.parametrize("kind", ["layernorm-head", "mlp-head", "functional-relu-pool"])
def test_lowered_graph_has_forward_ops_only_and_a_free_batch(kind):
    explainer, graph = _lowered(head_kind(kind))
    targets = {str(n.target) for n in _graph(graph).nodes if n.op == "call_function"}
    assert not [t for t in targets if "backward" in t]
    assert "aten.as_strided.default" not in targets  # rewritten to views
    for batch in (1, 5):
        x = torch.rand(batch, 3, 64, 64)
        with torch.no_grad():
            ref = explainer(x)
        got = graph(x)
        torch.testing.assert_close(got[0], ref[0])
        torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=0)


def test_lowered_graph_through_pooling_and_convolutions():
    """A tap early in DenseNet-like features: the gradient passes average pooling and convs."""
    model = head_kind("functional-relu-pool")
    explainer, graph = _lowered(model, layer="features.1")
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(graph(x)[1].numpy(), explainer(x)[1].numpy(), atol=1e-5)


class Pool3d(nn.Module):
    """A head with 3-D max pooling after the tap: its backward has no forward decomposition."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        a = F.max_pool3d(self.conv(x).unsqueeze(2), (1, 2, 2)).squeeze(2)
        return self.fc(a.mean((2, 3)))


def test_a_backward_op_without_decomposition_is_refused_by_name():
    with pytest.raises(UsageError, match=r"gradcam cannot put the gradient of .*max_pool3d"):
        _lowered(Pool3d().eval(), layer="conv", size=(32, 32))


def test_weights_are_frozen_constants_in_the_lowered_graph():
    model = tiny_resnet()
    _, graph = _lowered(model, layer="layer2")
    assert not any(p.requires_grad for p in model.parameters())
    placeholders = [n for n in _graph(graph).nodes if n.op == "placeholder"]
    assert len(placeholders) == 1  # the image; every weight is a constant


def _broadcast_weights(graph: torch.fx.Graph) -> list[str]:
    """``expand`` nodes that repeat a matrix over new leading dims (a weight copied per batch
    element, once the graph is ONNX)."""
    return [
        n.name
        for n in graph.nodes
        if n.target is aten.expand.default
        and n.args[0].meta["val"].dim() == 2
        and n.meta["val"].dim() >= 3
    ]


def _weight_product(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` sequence-first (a transposed view, as nn.MultiheadAttention reads tokens) times a
    weight that needs no grad, and the gradient of a weighted sum of it by ``x``."""
    y = torch.matmul(x.transpose(0, 1), w)
    return y, torch.autograd.grad((y * y.detach()).sum(), x)[0]


@pytest.mark.parametrize("shape", [(2, 5, 4), (2, 5, 3, 4)])
def test_a_batched_product_with_a_weight_is_folded_into_one_mm(shape):
    """``matmul`` of a transposed batch and a weight that needs no grad calls ``bmm`` with the
    weight expanded over the batch, forward and backward (``Wᵀ``); the rewrite makes each one
    ``mm`` of the flattened rows, with the same values."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from explain_export.builder.lower.rewrites import fold_broadcast_bmm

    w = torch.randn(4, 6)
    x = torch.randn(*shape, requires_grad=True)
    graph = make_fx(_weight_product)(x, w)
    assert _broadcast_weights(graph.graph)
    assert fold_broadcast_bmm(graph) == 2  # the product and its backward
    assert _broadcast_weights(graph.graph) == []
    x2 = torch.randn(*shape, requires_grad=True)
    for got, ref in zip(graph(x2, w), _weight_product(x2, w), strict=True):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_multihead_attention_holds_no_weight_copied_over_the_tokens(monkeypatch):
    """torchvision's ViT layout (nn.MultiheadAttention, batch_first): its input projection is
    traced as ``bmm`` of the weight expanded over the tokens (ViT-B/16: [197, 768, 2304] per
    block, 16 GB once ONNX Runtime runs it); the lowered graph holds none, same gradient."""
    explainer = build_explainer(mha_vit(), input_size=(64, 64))
    x = torch.rand(2, 3, 64, 64)
    lowered = lowering.lower(explainer, (x,), {0: [0]})
    assert _broadcast_weights(_graph(lowered)) == []
    for batch in (1, 3):
        image = torch.rand(batch, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(lowered(image)[1], explainer(image)[1], atol=1e-5, rtol=0)
    monkeypatch.setattr(lowering, "fold_broadcast_bmm", lambda graph: 0)  # without the rewrite
    assert len(_broadcast_weights(_graph(lowering.lower(explainer, (x,), {0: [0]})))) >= 2
    explainer.remove()


def test_a_product_with_a_row_broadcast_over_the_matrix_is_left_alone():
    """``bmm`` with ``b`` expanded from one row (``[1, p]`` to ``[B, k, p]``) is no repeated
    ``[k, p]`` matrix; the rewrite leaves it as it is."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from explain_export.builder.lower.rewrites import fold_broadcast_bmm

    def f(a, row):
        return torch.bmm(a, row.expand(a.shape[0], a.shape[2], row.shape[1]))

    a, row = torch.randn(3, 5, 4), torch.randn(1, 6)
    graph = make_fx(f)(a, row)
    assert fold_broadcast_bmm(graph) == 0
    torch.testing.assert_close(graph(a, row), f(a, row))


class _ResizeTwice(nn.Module):
    """``∂y/∂a`` through a nearest upsample, then a bilinear resize of a map no gradient needs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            a = x.detach().requires_grad_(True)
            up = F.interpolate(a, scale_factor=2.0, mode="nearest")  # on the gradient's path
            (g,) = torch.autograd.grad(self.conv(up).square().sum(), a)
        heat = F.interpolate(g.detach(), size=(13, 17), mode="bilinear", align_corners=False)
        half = F.interpolate(g.detach(), scale_factor=0.5, mode="nearest")
        return heat, half


def test_trace_keeps_a_resize_off_the_gradients_path_as_one_op():
    # decomposed, a 640x640 resize is index arithmetic and four gathers per map (ONNX GatherND,
    # 35 ms of YOLO11n's maps); kept, it is one Resize. On the gradient's path it is decomposed.
    model = _ResizeTwice().eval()
    x = torch.randn(2, 2, 6, 8)
    graph = lowering.trace(model, (x,), {0: [0]}, model)
    targets = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    assert targets.count(aten.upsample_bilinear2d.vec) == 1
    assert targets.count(aten.upsample_nearest2d.vec) == 1  # `half`; the upsample in grad: not
    assert not any("backward" in str(t) for t in targets)
    other = torch.randn(3, 2, 6, 8)  # another batch size: the batch stayed symbolic
    for got, want in zip(graph(other), model(other), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
