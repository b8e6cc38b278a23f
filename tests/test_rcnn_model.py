"""The tests' two-stage detector (``tests/rcnn.py``) is a sane reference: detections on photos
obey torchvision's rules (sorted, inside the image, NMS per class, ``score > score_thresh``), its
pieces follow torchvision's conventions (anchor layout, RoIAlign, level mapper), its scores stay
in the graph of the FPN maps the RoIs read, and the Grad-CAM references are real maps (issue
29). ``benchmarks/rcnn_tiny_peers.py`` checks the same model against torchvision itself."""

from __future__ import annotations

import itertools

import pytest
import torch
from rcnn import (
    ImageList,
    TinyTwoStage,
    capture,
    gradcam,
    mask_target_gradcam,
    photos,
    tiny_two_stage,
)
from rcnn_parts import TinyLevelMapper, roi_align
from torch import Tensor

SIZE = (100, 150)  # resized to 96x144, padded to 96x160


@pytest.fixture(scope="module")
def images() -> Tensor:
    return photos(("chelsea.png", "coffee.png"), SIZE)


@pytest.fixture(scope="module", params=["faster", "mask"])
def model(request: pytest.FixtureRequest) -> TinyTwoStage:
    return tiny_two_stage(request.param)


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union


def test_detections_are_sorted_inside_and_not_suppressed(
    model: TinyTwoStage, images: Tensor
) -> None:
    heads, rpn = model.roi_heads, model.rpn
    with torch.no_grad():
        out = model(images)
    for o in out:
        d = len(o["scores"])
        assert 2 <= d <= heads.detections_per_img
        s = o["scores"]
        assert (s[:-1] >= s[1:]).all() and (s > heads.score_thresh).all() and (s < 1).all()
        b = o["boxes"]
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= SIZE[1]).all() and (b[:, 3] <= SIZE[0]).all()
        assert (b[:, 2:] > b[:, :2]).all()
        assert set(o["labels"].tolist()) <= {1, 2, 3}
        boxes, labels = b.tolist(), o["labels"].tolist()
        for i in range(d):
            for k in range(i):
                assert labels[i] != labels[k] or _iou(boxes[i], boxes[k]) <= heads.nms_thresh
        assert len(o["rpn_boxes"]) <= rpn.post_nms_top_n() and o["proposals"].max() < 30
        r = o["rpn_scores"]
        assert len(r) == len(o["rpn_boxes"]) and (r[:-1] >= r[1:]).all()  # best first
        props = o["rpn_boxes"]
        assert (props[:, 2] <= 144).all() and (props[:, 3] <= 96).all() and (props >= 0).all()
    assert len({tuple(o["labels"].tolist()) for o in out}) == 2  # the photos differ


def test_a_batch_is_each_image_alone(model: TinyTwoStage, images: Tensor) -> None:
    with torch.no_grad():
        batch = model(images)
        alone = [model(images[n : n + 1])[0] for n in range(len(images))]
    for b, a in zip(batch, alone, strict=True):
        assert b.keys() == a.keys()
        for key in b:
            torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-4)


def test_the_score_threshold_is_strict(images: Tensor) -> None:
    """torchvision keeps ``score > box_score_thresh``: at detection k's score, k and those
    after it go, those before stay (NMS only lets a better box drop a worse one)."""
    model = tiny_two_stage("faster")
    with torch.no_grad():
        ref = model(images[:1])[0]
        model.roi_heads.score_thresh = float(ref["scores"][3])
        out = model(images[:1])[0]
    torch.testing.assert_close(out["scores"], ref["scores"][:3])
    torch.testing.assert_close(out["boxes"], ref["boxes"][:3])


@pytest.mark.parametrize("where", ["roi_heads", "rpn"])
def test_nothing_above_the_threshold_gives_empty_rows(where: str, images: Tensor) -> None:
    model = tiny_two_stage("mask")
    getattr(model, where).score_thresh = 0.9999
    with torch.no_grad():
        out = model(images)
    for o in out:
        assert o["boxes"].shape == (0, 4) and o["scores"].shape == o["labels"].shape == (0,)
        assert o["masks"].shape == (0, 1, *SIZE) and o["mask_logits"].shape == (0, 28, 28)
        assert len(o["rpn_boxes"]) == (0 if where == "rpn" else 30)


def test_anchors_are_laid_out_cell_by_cell_then_ratio_then_size() -> None:
    model = TinyTwoStage()
    gen = model.rpn.anchor_generator
    maps = [torch.zeros(1, 16, h, w) for h, w in ((12, 20), (6, 10), (3, 5), (2, 3))]
    anchors = gen(ImageList(torch.zeros(1, 3, 96, 160), [(96, 144)]), maps)[0]
    per_cell = len(gen.sizes[0]) * len(gen.aspect_ratios[0])
    assert per_cell == 4 and len(anchors) == per_cell * (240 + 60 + 15 + 6)
    start = 0
    for level, (f, sy, sx) in enumerate(zip(maps, (8, 16, 32, 48), (8, 16, 32, 53), strict=True)):
        h, w = f.shape[-2:]
        for y, x in ((0, 0), (1, 2), (h - 1, w - 1)):
            for i, r in enumerate(gen.aspect_ratios[level]):
                for j, s in enumerate(gen.sizes[level]):
                    hh, ww = round(s * r**0.5 / 2), round(s / r**0.5 / 2)
                    expect = [x * sx - ww, y * sy - hh, x * sx + ww, y * sy + hh]
                    row = start + (y * w + x) * per_cell + i * len(gen.sizes[level]) + j
                    assert anchors[row].tolist() == expect
        start += h * w * per_cell


def test_roi_align_reads_a_linear_map_exactly_and_nothing_outside() -> None:
    """On ``f = x + 10·y`` bilinear sampling is exact, so a bin is the value at its centre
    (its 2x2 samples are symmetric about it); a box beyond ``[-1, W]`` reads zeros."""
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(20.0), indexing="ij")
    fmap = torch.stack([xs + 10 * ys, 2 * xs])
    boxes = torch.tensor([[8.0, 8, 100, 60], [16, 20, 40, 44], [40, 24, 72, 48]])
    out = roi_align(fmap, boxes, (7, 7), 1 / 8, 2)
    for box, pooled in zip(boxes / 8, out, strict=True):
        bw, bh = (box[2] - box[0]) / 7, (box[3] - box[1]) / 7
        cx = box[0] + (torch.arange(7) + 0.5) * bw
        cy = box[1] + (torch.arange(7) + 0.5) * bh
        torch.testing.assert_close(pooled[0], cx[None, :] + 10 * cy[:, None])
        torch.testing.assert_close(pooled[1], 2 * cx[None, :].expand(7, 7))
    far = roi_align(fmap, torch.tensor([[200.0, 8, 260, 60]]), (7, 7), 1 / 8, 2)
    assert (far == 0).all()


def test_the_level_mapper_is_the_fpn_papers_rule() -> None:
    mapper = TinyLevelMapper(3, 5, canonical_scale=24, canonical_level=4)
    sides = torch.tensor([4.0, 23.9, 24.0, 47.9, 48.0, 200.0])
    boxes = torch.stack([torch.zeros(6), torch.zeros(6), sides, sides], 1)
    assert mapper([boxes]).tolist() == [0, 0, 1, 1, 2, 2]


def test_a_score_reads_only_the_level_of_its_roi(model: TinyTwoStage, images: Tensor) -> None:
    """The RPN's proposals are detached, so detection j's score depends on the maps through its
    RoI alone: a gradient at its level, none at the others (``"pool"`` feeds only the RPN)."""
    outs, maps = capture(model, images)
    names = model.roi_heads.box_roi_pool.featmap_names
    seen = set()
    for n, o in enumerate(outs):
        for j, level in enumerate(o["levels"].tolist()):
            grads = torch.autograd.grad(
                o["scores"][j], list(maps.values()), retain_graph=True, allow_unused=True
            )
            by_name = dict(zip(maps, grads, strict=True))
            assert by_name["pool"] is None
            for k, name in enumerate(names):
                g = by_name[name]
                on = g is not None and bool(g[n].abs().sum() > 0)
                assert on == (k == level), (n, j, name)
                assert g is None or (g[1 - n] == 0).all()  # nor the other image
            seen.add(level)
    assert len(seen) >= 2


def test_the_mask_target_reads_only_the_mask_branch(images: Tensor) -> None:
    """The mask target's gradient reaches the maps through the mask pooling of the detection's
    box alone: at the level of that box, not the box branch's level of its proposal (RoIAlign
    has no gradient to its boxes, as torchvision's), though they differ for some detection."""
    model = tiny_two_stage("mask")
    outs, maps = capture(model, images)
    names = model.roi_heads.mask_roi_pool.featmap_names
    differ = 0
    for n, o in enumerate(outs):
        resized = o["boxes"].detach() * torch.tensor([144 / 150, 96 / 100] * 2)
        levels = model.roi_heads.mask_roi_pool.map_levels([resized]).tolist()
        differ += sum(a != b for a, b in zip(levels, o["levels"].tolist(), strict=True))
        for j, level in enumerate(levels):
            z = o["mask_logits"][j]
            y = (z * (z.sigmoid() > 0.5)).sum()
            grads = torch.autograd.grad(
                y, [maps[k] for k in names], retain_graph=True, allow_unused=True
            )
            on = [g is not None and bool(g[n].abs().sum() > 0) for g in grads]
            assert on == [k == level for k in range(len(names))], (n, j)
    assert differ > 0


def test_the_gradcam_references_are_maps(model: TinyTwoStage, images: Tensor) -> None:
    cams = [gradcam(model, images[0], j) for j in range(3)]
    if model.kind == "mask":
        cams.append(mask_target_gradcam(model, images[0], 0))
    for cam in cams:
        assert cam.shape == SIZE and torch.isfinite(cam).all()
        assert cam.min() == 0 and cam.max() == 1 and cam.std() > 0.05
    for a, b in itertools.pairwise(cams):
        assert (a - b).abs().max() > 0.1


def test_masks_are_probabilities_inside_their_boxes(images: Tensor) -> None:
    model = tiny_two_stage("mask")
    with torch.no_grad():
        out = model(images)
    for o in out:
        masks, boxes = o["masks"], o["boxes"]
        assert masks.shape == (len(boxes), 1, *SIZE)
        assert masks.min() >= 0 and masks.max() <= 1
        on = masks[:, 0] > 0.5
        assert (on.flatten(1).sum(1) > 0).float().mean() >= 0.5
        ys, xs = torch.meshgrid(torch.arange(SIZE[0]), torch.arange(SIZE[1]), indexing="ij")
        for m, (x1, y1, x2, y2) in zip(on, boxes.tolist(), strict=True):
            inside = (xs >= x1 - 2) & (xs <= x2 + 2) & (ys >= y1 - 2) & (ys <= y2 + 2)
            assert not (m & ~inside).any()
        # pasted, a mask keeps about the mean of its 28x28 probabilities inside its box
        for m, z, (x1, y1, x2, y2) in zip(
            masks[:, 0], o["mask_logits"], boxes.tolist(), strict=True
        ):
            window = m[round(y1) : round(y2), round(x1) : round(x2)]
            assert abs(float(window.mean() - z.sigmoid().mean())) < 0.1


def test_a_checkpoint_rebuilds_the_model(images: Tensor) -> None:
    """``TinyTwoStage(kind)`` plus the state dict is the same detector (as ``--arch
    rcnn:TinyTwoStage --ckpt`` builds it): nothing lives outside the state dict."""
    made = tiny_two_stage("mask")
    rebuilt = TinyTwoStage("mask")
    rebuilt.load_state_dict(made.state_dict(), strict=True)
    with torch.no_grad():
        a, b = made(images), rebuilt.eval()(images)
    for x, y in zip(a, b, strict=True):
        for key in x:
            torch.testing.assert_close(x[key], y[key])


def test_roi_align_equals_the_loop_reference() -> None:
    """The model's RoIAlign (separable bilinear matrices) equals ``tests/roi_reference.py``
    (the CPU kernel's loops, sample by sample) on boxes across the map's edges and under a
    pixel, values and gradients; and its level mapper equals ``level_of``."""
    import roi_reference

    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(4, 12, 20, generator=g)
    xy = torch.rand(12, 2, generator=g) * torch.tensor([200.0, 120]) - 20
    wh = torch.rand(12, 2, generator=g) * 100 + 0.5
    tiny = torch.tensor([[40.0, 30, 40.4, 30.3], [-9, -9, -8.5, 3]])  # under a pixel; outside
    boxes = torch.cat([torch.cat([xy, xy + wh], 1), tiny])
    a = fmap.clone().requires_grad_(True)
    b = fmap.clone().requires_grad_(True)
    ours = roi_align(a, boxes, (7, 7), 1 / 8, 2)
    ref = torch.stack(
        [roi_reference.roi_align_one(b, box, 1 / 8, (7, 7), 2) for box in boxes.tolist()]
    )
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn(ours.shape, generator=g)
    (ga,) = torch.autograd.grad((ours * w).sum(), a)
    (gb,) = torch.autograd.grad((ref * w).sum(), b)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-5)
    mapper = TinyLevelMapper(3, 5, canonical_scale=24, canonical_level=4)
    scales = [1 / 8, 1 / 16, 1 / 32]
    expect = [roi_reference.level_of(box, scales, 24) for box in boxes.tolist()]
    assert mapper([boxes]).tolist() == expect and len(set(expect)) == 3
