"""Greedy NMS as one operator (``explain_export::greedy_nms``): the same picks as the plain
loop of ``tests/detectors.py`` in eager, in the ONNX ``Loop``, in the scripted TorchScript loop
and unrolled (the path for exporters without custom translations)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectors import greedy_nms
from torch import Tensor, nn
from torch.fx.experimental.proxy_tensor import make_fx

from explain_export import nms_op
from explain_export.builder.export.writers import to_onnx

KEEP = 12


class Picks(nn.Module):
    def forward(self, boxes: Tensor, scores: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ops.explain_export.greedy_nms(boxes, scores, classes, KEEP, 0.5, 0.2)


def _candidates(n: int = 2, a: int = 60, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, a, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(n, a, 2, generator=g) * 40 + 1], -1)
    scores = torch.rand(n, a, generator=g)
    return boxes, scores, torch.randint(0, 3, (n, a), generator=g)


def _reference(boxes: Tensor, scores: Tensor, classes: Tensor) -> list[list[int]]:
    """The plain loop's first KEEP kept, of those scored above 0.2, per image."""
    out = []
    for b, s, c in zip(boxes, scores, classes, strict=True):
        ok = torch.where(s > 0.2)[0]
        out.append(ok[greedy_nms(b[ok], s[ok], c[ok], 0.5)][:KEEP].tolist())
    return out


def _picked(index: Tensor | np.ndarray, valid: Tensor | np.ndarray) -> list[list[int]]:
    index, valid = np.asarray(index), np.asarray(valid)
    return [index[n][valid[n]].tolist() for n in range(index.shape[0])]


def test_the_operator_keeps_what_greedy_nms_keeps() -> None:
    for seed in range(2):
        args = _candidates(seed=seed)
        index, valid = Picks()(*args)
        assert index.shape == (2, KEEP) and valid.dtype == torch.bool
        assert _picked(index, valid) == _reference(*args)
    few = _candidates(a=12)  # fewer than KEEP left: padding rows, not valid
    index, valid = Picks()(*few)
    assert not valid[:, -1].any() and _picked(index, valid) == _reference(*few)


def test_the_scripted_and_unrolled_loops_equal_the_operator() -> None:
    args = _candidates(seed=4)
    graph = make_fx(Picks())(*args)  # as the lowering traces
    assert any(n.target is torch.ops.explain_export.greedy_nms.default for n in graph.graph.nodes)
    scripted = torch.jit.script(nms_op.inline_steps(graph))  # as script_graph does
    want = Picks()(*args)
    for got in (scripted(*args), nms_op.inline_steps(graph)(*args)):
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


@pytest.mark.slow
@pytest.mark.skipif(
    "custom_translation_table" not in torch.onnx.export.__code__.co_varnames,
    reason="torch < 2.6: the ONNX file holds the steps unrolled",
)
def test_the_onnx_loop_keeps_the_same_boxes_at_any_batch(tmp_path) -> None:
    import onnx
    import onnxruntime as ort

    path = str(tmp_path / "nms.onnx")
    batch = torch.export.Dim("batch")
    dims = {name: {0: batch} for name in ("boxes", "scores", "classes")}
    to_onnx(Picks(), _candidates(), path, 18, dims, ["index", "valid"])
    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert "Loop" in ops and ops.count("ArgMax") == 0  # one loop, not KEEP copies of a step
    session = ort.InferenceSession(path)
    for n, seed in ((1, 5), (3, 6)):
        args = _candidates(n=n, seed=seed)
        feeds = dict(zip(("boxes", "scores", "classes"), (t.numpy() for t in args), strict=True))
        index, valid = session.run(None, feeds)
        assert _picked(index, valid) == _reference(*args)
