"""The lowering: each backward op's forward-op decomposition against PyTorch's own kernel, and
the lowered graph's properties (no backward ops, no autograd, batch kept symbolic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explain_export.builder import lowering
from explain_export.builder.explainer import build_explainer
from explain_export.errors import UsageError

from models import head_kind, tiny_resnet

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
