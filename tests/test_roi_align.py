"""RoIAlign over pyramid levels (:mod:`explain_export.builder.maths.roi_align`) against the loop
reference (``roi_reference``, torchvision's kernel written out), its adjoint against autograd
through that reference, and the whole thing traced and exported to ONNX."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from explain_export.builder.export.writers import to_onnx
from explain_export.builder.maths import roi_align
from explain_export.builder.maths.roi_align import RoiPooler, scales_for

import roi_reference as ref

IMAGE = (96, 80)  # a resized image (h, w); its maps at strides 4, 8, 16 are not square
SHAPES = [(24, 20), (12, 10), (6, 5)]
CANONICAL = 24  # so that boxes this small span the three levels (torchvision's is 224)
ATOL = 1e-5


def maps(batch: int = 2, channels: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, h, w, generator=g) for h, w in SHAPES]


def pooler(size=(3, 4), ratio=2) -> RoiPooler:
    return RoiPooler(scales_for(SHAPES, [IMAGE]), size, ratio, canonical_scale=CANONICAL)


# (x1, y1, x2, y2) in the image's pixels, by what they exercise
CASES = {
    "random": [[5.3, 7.9, 41.2, 30.6], [17.0, 2.2, 25.8, 80.1], [60.4, 50.3, 77.7, 93.0]],
    "edges": [[0, 0, 80, 96], [72, 88, 80, 96], [0, 90, 6, 96], [76.5, 0, 80, 3.5]],
    "outside": [[-7, -9, 5, 4], [84, 100, 120, 130], [-30, 10, -9, 30], [70, -20, 95, 110]],
    "tiny": [[10, 10, 10.3, 10.2], [33.3, 40.1, 33.3, 40.1], [79.9, 95.9, 80, 96], [0, 0, 1, 1]],
    "levels": [[4, 4, 9, 9], [4, 4, 16, 16], [4, 4, 28, 28], [0, 0, 64, 90], [5, 5, 17, 17]],
    # at 3x4 bins, ratio 2, level 2 (6x5): the last samples at exactly y = 6 = h and x = 5 = w
    # (in range), the first at exactly y = x = -1 (in range)
    "exact": [[20, 52, 84, 100], [-20, -20, 24, 28]],
}


def all_boxes() -> tuple[torch.Tensor, torch.Tensor]:
    boxes = torch.tensor([b for case in CASES.values() for b in case], dtype=torch.float32)
    return boxes, torch.arange(len(boxes)) % 2


def reference(feats, boxes, batch, p: RoiPooler) -> torch.Tensor:
    scales, size = list(p.scales), p.output_size
    return ref.multi_scale(feats, boxes, batch, scales, size, p.sampling_ratio, p.canonical_scale)


def test_the_scales_are_the_nearest_powers_of_two():
    sizes = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    for image in ([(800, 1216)], [(797, 1200)], [(640, 480), (800, 600)]):
        height = max(h for h, _ in image)
        assert scales_for(sizes, image) == tuple(ref.scale_of(h, height) for h, _ in sizes)


def test_the_level_rule_at_its_boundaries():
    """Sides at the canonical sizes and a hair either side: ``+1e-6`` and the clamp decide."""
    p = RoiPooler(scales_for([(200, 200), (100, 100), (50, 50), (25, 25)], [(800, 800)]))
    sides = [0.0, 1.0, 55.9, 56.0, 111.9, 112.0, 112.1, 223.9, 224.0, 447.9, 448.0, 1e4]
    boxes = torch.tensor([[3.0, 5.0, 3.0 + s, 5.0 + s] for s in sides])
    expected = [ref.level_of(b, list(p.scales)) for b in boxes.tolist()]
    assert p.levels(boxes).tolist() == expected
    assert sorted(set(expected)) == [0, 1, 2, 3]
    assert RoiPooler((0.25,)).levels(boxes).tolist() == [0] * len(sides)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("size", "ratio"), [((3, 4), 2), ((2, 2), 1), ((2, 3), 3)])
def test_pool_equals_the_reference(case, size, ratio):
    feats = maps()
    p = pooler(size, ratio)
    boxes = torch.tensor(CASES[case], dtype=torch.float32)
    batch = torch.arange(len(boxes)) % 2
    torch.testing.assert_close(
        p.pool(feats, boxes, batch), reference(feats, boxes, batch, p), atol=ATOL, rtol=0
    )


def test_the_cases_reach_every_level_and_branch():
    """The boxes above hit what they are named for, so the comparisons cover it."""
    boxes, _ = all_boxes()
    p = pooler()
    assert set(p.levels(boxes).tolist()) == {0, 1, 2}
    assert p.levels(torch.tensor(CASES["exact"], dtype=torch.float32)).tolist() == [2, 2]
    out = p.pool(maps(), boxes, torch.zeros(len(boxes), dtype=torch.long))
    assert (out.abs().flatten(1).max(1).values == 0).any()  # a RoI wholly outside reads zeros
    outside = torch.tensor(CASES["outside"])
    assert (outside[:, :2] < 0).any() and (outside[:, 2:] > torch.tensor([80, 96])).any()


def test_a_half_pixel_shift_fails_the_comparison():
    """The comparison can fail: the grid shifted by half a map pixel (``aligned=True``'s
    convention) differs from the reference by far more than the tolerance."""
    feats = maps()
    boxes, batch = all_boxes()
    p = pooler()
    ours = p.pool(feats, boxes, batch)
    level = p.levels(boxes)
    half = 0.5 / torch.tensor(p.scales)[level]
    shifted = reference(feats, boxes - half[:, None], batch, p)
    assert float((ours - shifted).abs().max()) > 100 * ATOL


def test_the_export_path_equals_the_reference(monkeypatch):
    """Under ``torch.export`` the fused ``embedding_bag`` gives way to a gather per corner."""
    monkeypatch.setattr(roi_align, "_exporting", lambda: True)
    feats = maps()
    boxes, batch = all_boxes()
    p = pooler((2, 3), 3)
    torch.testing.assert_close(
        p.pool(feats, boxes, batch), reference(feats, boxes, batch, p), atol=ATOL, rtol=0
    )


def test_a_table_built_once_serves_every_pool():
    feats = maps()
    boxes, batch = all_boxes()
    p = pooler()
    table = p.table(feats)
    for part in (slice(0, 5), slice(5, None)):
        torch.testing.assert_close(
            p.pool(feats, boxes[part], batch[part], table),
            reference(feats, boxes[part], batch[part], p),
            atol=ATOL,
            rtol=0,
        )


def test_one_level_pools_every_roi_there():
    feats = maps()[:1]
    boxes, batch = all_boxes()
    p = RoiPooler((0.25,), (3, 4), 2)
    torch.testing.assert_close(
        p.pool(feats, boxes, batch), reference(feats, boxes, batch, p), atol=ATOL, rtol=0
    )


def test_full_is_each_rows_gradient_through_the_reference():
    feats = [f.requires_grad_(True) for f in maps()]
    boxes, batch = all_boxes()
    p = pooler()
    grad = torch.randn(len(boxes), 3, 3, 4, generator=torch.Generator().manual_seed(1))
    parts = p.adjoint(grad, SHAPES, boxes, batch)
    fulls = [part.full() for part in parts]
    for m in range(len(boxes)):
        row = reference(feats, boxes[m : m + 1], batch[m : m + 1], p)
        tied = sum(0 * f.sum() for f in feats)  # a RoI wholly outside reads no map
        expected = torch.autograd.grad((row * grad[m]).sum() + tied, feats)
        for full, exp in zip(fulls, expected, strict=True):
            n = int(batch[m])
            torch.testing.assert_close(full[m], exp[n], atol=ATOL, rtol=0)
            assert exp.shape[0] == 2 and float(exp[1 - n].abs().max()) == 0


def test_autograd_through_pool_is_the_sum_of_the_rows_full_maps():
    """``pool`` is differentiable too (eager), and its gradient is the rows' ``full()`` summed
    per image."""
    feats = [f.requires_grad_(True) for f in maps()]
    boxes, batch = all_boxes()
    p = pooler()
    grad = torch.randn(len(boxes), 3, 3, 4, generator=torch.Generator().manual_seed(3))
    expected = torch.autograd.grad((p.pool(feats, boxes, batch) * grad).sum(), feats)
    for part, exp in zip(p.adjoint(grad, SHAPES, boxes, batch), expected, strict=True):
        summed = torch.zeros_like(exp).index_add(0, batch, part.full())
        torch.testing.assert_close(summed, exp, atol=ATOL, rtol=0)


def test_channel_mean_is_the_mean_of_full():
    boxes, batch = all_boxes()
    grad = torch.randn(len(boxes), 5, 3, 4, generator=torch.Generator().manual_seed(2))
    parts = pooler().adjoint(grad, SHAPES, boxes, batch)
    for part in parts:
        full = part.full()
        assert full.shape[1:] == (5, *part.size)
        torch.testing.assert_close(part.channel_mean(), full.mean((2, 3)), atol=1e-7, rtol=1e-5)
    assert sum(float(p.full().abs().sum()) > 0 for p in parts) == len(SHAPES)


def test_a_fixed_sampling_ratio_is_required():
    with pytest.raises(ValueError, match="sampling_ratio"):
        RoiPooler((0.25,), (7, 7), 0)


class Probe(nn.Module):
    """pool, and every level's full() and channel_mean(), as one graph."""

    def __init__(self, p: RoiPooler) -> None:
        super().__init__()
        self.p = p

    def forward(self, f0, f1, f2, boxes, batch, grad):
        parts = self.p.adjoint(grad, [tuple(f.shape[2:]) for f in (f0, f1, f2)], boxes, batch)
        pooled = self.p.pool([f0, f1, f2], boxes, batch)
        return (pooled, *[q.full() for q in parts], *[q.channel_mean() for q in parts])


def probe_inputs(m: int, seed: int, images: int = 2) -> tuple[torch.Tensor, ...]:
    boxes, _ = all_boxes()
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(boxes), generator=g)[:m]
    jitter = torch.rand(m, 4, generator=g) * 3
    batch = torch.randint(0, images, (m,), generator=g)
    grad = torch.randn(m, 3, 3, 4, generator=g)
    return (*maps(images, seed=seed), boxes[pick] + jitter, batch, grad)


def test_the_probe_traces_to_torchscript():
    module = Probe(pooler()).eval()
    traced = torch.jit.trace(module, probe_inputs(6, 0), check_trace=False)
    for m, seed, n in ((6, 1, 2), (9, 2, 3)):
        args = probe_inputs(m, seed, n)
        for got, want in zip(traced(*args), module(*args), strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_the_probe_exports_to_onnx_with_a_scatter_add(tmp_path):
    module = Probe(pooler()).eval()
    names = ["f0", "f1", "f2", "boxes", "batch", "grad"]
    rois, images = torch.export.Dim("rois"), torch.export.Dim("images")
    dynamic = {n: {0: images} for n in names[:3]} | {n: {0: rois} for n in names[3:]}
    path = str(tmp_path / "roi.onnx")
    outputs = ["pooled", "full0", "full1", "full2", "mean0", "mean1", "mean2"]
    to_onnx(module, probe_inputs(6, 0), path, 18, dynamic, outputs)
    scatters = [n for n in onnx.load(path).graph.node if n.op_type == "ScatterElements"]
    assert scatters and all(
        any(a.name == "reduction" and a.s == b"add" for a in n.attribute) for n in scatters
    )
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for m, seed, n in ((6, 1, 2), (11, 2, 3), (4, 3, 1)):
        args = probe_inputs(m, seed, n)
        got = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})
        with torch.no_grad():
            want = module(*args)
        for name, g, w in zip(outputs, got, want, strict=True):
            torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-5, rtol=0, msg=name)


@pytest.mark.slow
def test_the_probe_under_torch_export_equals_eager():
    module = Probe(pooler()).eval()
    rois = torch.export.Dim("rois")
    dynamic = ({}, {}, {}, {0: rois}, {0: rois}, {0: rois})
    program = torch.export.export(module, probe_inputs(6, 0), dynamic_shapes=dynamic, strict=False)
    nodes = {str(n.target) for n in program.graph.nodes}
    assert not any("embedding_bag" in n for n in nodes) and any("scatter_add" in n for n in nodes)
    args = probe_inputs(11, 2)
    for got, want in zip(program.module()(*args), module(*args), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
