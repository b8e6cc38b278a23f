#!/usr/bin/env python
"""The tests' two-stage detector (``tests/rcnn.py``, plain eager code) against torchvision's
own pieces on the same tensors (issue 29).

Not part of the test suite: it needs torchvision, so it runs in the venv that ``make peers``
builds::

    PYTHONPATH=$PWD .peers/bin/python benchmarks/rcnn_tiny_peers.py \\
        --out benchmarks/results/rcnn-tiny-peers-cpu2

Per kind (``faster``, ``mask``; ``tests/rcnn.tiny_two_stage``, seed 0) it builds torchvision's
``FasterRCNN`` / ``MaskRCNN`` from the same backbone and the same settings (``AnchorGenerator``,
``RPNHead``, ``MultiScaleRoIAlign``, ``TwoMLPHead``, ``FastRCNNPredictor``, ``MaskRCNNHeads``,
``MaskRCNNPredictor``), loads the tiny model's state dict into it (strict), and reports the
largest differences of:

- ``anchors``: our generator against ``AnchorGenerator``;
- ``rpn``: our RPN against ``RegionProposalNetwork`` and against its ``filter_proposals`` fed
  with its own head, anchors and decode (the same maps);
- ``roi_align``: ours against ``torchvision.ops.roi_align`` on boxes that cross the map's edges
  and boxes under a pixel, the values and the gradient to the map;
- ``pool``: ours against ``MultiScaleRoIAlign`` on the RPN's proposals (values, gradient);
- ``postprocess``: ours against ``RoIHeads.postprocess_detections`` on the same logits;
- ``paste``: ours against ``paste_masks_in_image`` on random masks and boxes at the edges;
- ``model``: both detectors' eager outputs (boxes, scores, labels, masks) on two photos, on a
  batch of two sizes, and per detection the gradient of its score (and, Mask, of its mask
  target) to the FPN maps and the fused Grad-CAM map (``tests/rcnn.fuse``);
- ``pytorch_grad_cam``: its ``GradCAM`` with ``FasterRCNNBoxScoreTarget`` on the twin against
  our maps (:func:`check_pytorch_grad_cam`).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import rcnn
import rcnn_parts


def torchvision_twin(mine: rcnn.TinyTwoStage) -> nn.Module:
    """torchvision's detector with our backbone, settings and weights."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import AnchorGenerator, RPNHead
    from torchvision.ops import MultiScaleRoIAlign

    rpn, heads, t = mine.rpn, mine.roi_heads, mine.transform
    gen = rpn.anchor_generator
    pool = heads.box_roi_pool
    kw = {
        "min_size": t.min_size,
        "max_size": t.max_size,
        "image_mean": t.image_mean,
        "image_std": t.image_std,
        "size_divisible": t.size_divisible,
        "rpn_anchor_generator": AnchorGenerator(gen.sizes, gen.aspect_ratios),
        "rpn_head": RPNHead(16, gen.num_anchors_per_location()[0]),
        "rpn_pre_nms_top_n_test": rpn._pre_nms_top_n["testing"],
        "rpn_post_nms_top_n_test": rpn._post_nms_top_n["testing"],
        "rpn_nms_thresh": rpn.nms_thresh,
        "rpn_score_thresh": rpn.score_thresh,
        "box_roi_pool": MultiScaleRoIAlign(
            pool.featmap_names, pool.output_size, pool.sampling_ratio,
            canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level,
        ),
        "box_head": TwoMLPHead(16 * 49, 32),
        "box_predictor": FastRCNNPredictor(32, 4),
        "box_score_thresh": heads.score_thresh,
        "box_nms_thresh": heads.nms_thresh,
        "box_detections_per_img": heads.detections_per_img,
    }  # fmt: skip
    backbone = copy.deepcopy(mine.backbone)
    if heads.mask_predictor is None:
        twin = FasterRCNN(backbone, **kw)
    else:
        mp = heads.mask_roi_pool
        twin = MaskRCNN(
            backbone,
            mask_roi_pool=MultiScaleRoIAlign(
                mp.featmap_names, mp.output_size, mp.sampling_ratio,
                canonical_scale=mp.canonical_scale, canonical_level=mp.canonical_level,
            ),
            mask_head=MaskRCNNHeads(16, [16, 16], 1),
            mask_predictor=MaskRCNNPredictor(16, 16, 4),
            **kw,
        )  # fmt: skip
    twin.load_state_dict(mine.state_dict(), strict=True)
    return twin.eval()


def gap(a: Tensor, b: Tensor) -> float:
    """max |a - b| (shapes must agree)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.detach() - b.detach()).abs().max()) if a.numel() else 0.0


def rel(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b|."""
    return gap(a, b) / max(float(b.detach().abs().max()), 1e-30) if a.numel() else 0.0


def check_pieces(mine: rcnn.TinyTwoStage, twin: nn.Module, images: Tensor) -> dict:
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.roi_heads import paste_masks_in_image
    from torchvision.models.detection.rpn import concat_box_prediction_layers
    from torchvision.ops import roi_align

    out: dict = {}
    with torch.no_grad():
        mine(images)  # sets the poolers' scales
        il, _ = twin.transform(list(images))
        feats = twin.backbone(il.tensors)
        mine_il = rcnn_parts.ImageList(il.tensors, il.image_sizes)
        maps = list(feats.values())
        a_mine = mine.rpn.anchor_generator(mine_il, maps)
        a_tv = twin.rpn.anchor_generator(ImageList(il.tensors, il.image_sizes), maps)
        out["anchors"] = max(gap(x, y) for x, y in zip(a_mine, a_tv, strict=True))
        p_mine, _ = mine.rpn(mine_il, feats)
        p_tv, _ = twin.rpn(il, feats)
        out["rpn_counts"] = [[len(x), len(y)] for x, y in zip(p_mine, p_tv, strict=True)]
        out["rpn"] = max(gap(x, y) for x, y in zip(p_mine, p_tv, strict=True))
        obj, deltas = twin.rpn.head(maps)
        per_level = [o[0].numel() for o in obj]
        obj, deltas = concat_box_prediction_layers(obj, deltas)
        props = twin.rpn.box_coder.decode(deltas, a_tv).view(len(images), -1, 4)
        p_filter, _ = twin.rpn.filter_proposals(props, obj, il.image_sizes, per_level)
        out["rpn_vs_filter_proposals"] = max(
            gap(x, y) for x, y in zip(p_mine, p_filter, strict=True)
        )
    # roi_align alone: boxes across the edges and under a pixel, values and gradients
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(1, 16, 12, 20, generator=g, dtype=torch.float64)
    xy = torch.rand(64, 2, generator=g, dtype=torch.float64) * torch.tensor([200.0, 120]) - 20
    wh = torch.rand(64, 2, generator=g, dtype=torch.float64) ** 3 * 120
    boxes = torch.cat([xy, xy + wh], 1)
    for scale in (1 / 8, 1 / 4):
        f1 = fmap.clone().requires_grad_(True)
        f2 = fmap.clone().requires_grad_(True)
        r1 = rcnn_parts.roi_align(f1[0], boxes, (7, 7), scale, 2)
        r2 = roi_align(f2, [boxes], (7, 7), scale, 2, aligned=False)
        w = torch.randn(r1.shape, generator=g, dtype=torch.float64)
        (g1,) = torch.autograd.grad((r1 * w).sum(), f1)
        (g2,) = torch.autograd.grad((r2 * w).sum(), f2)
        out[f"roi_align_f64_scale_{scale}"] = gap(r1, r2)
        out[f"roi_align_grad_f64_scale_{scale}"] = gap(g1, g2)
        out[f"roi_align_grad_f64_scale_{scale}_relative"] = rel(g1, g2)
    # MultiScaleRoIAlign on the proposals, float32, values and gradients to the maps
    leaves = {k: v.detach().requires_grad_(True) for k, v in feats.items()}
    pool_mine = rcnn_parts.TinyMultiScaleRoIAlign(
        ["0", "1", "2"], 7, 2, canonical_scale=mine.roi_heads.box_roi_pool.canonical_scale
    )
    r1 = pool_mine(leaves, p_tv, il.image_sizes)
    r2 = twin.roi_heads.box_roi_pool(leaves, p_tv, il.image_sizes)
    out["pool"] = gap(r1, r2)
    out["pool_scales"] = [pool_mine.scales, twin.roi_heads.box_roi_pool.scales]
    w = torch.randn(r1.shape, generator=g)
    g1 = torch.autograd.grad((r1 * w).sum(), list(leaves.values())[:3])
    g2 = torch.autograd.grad((r2 * w).sum(), list(leaves.values())[:3])
    out["pool_grad"] = max(gap(x, y) for x, y in zip(g1, g2, strict=True))
    out["pool_grad_relative"] = max(rel(x, y) for x, y in zip(g1, g2, strict=True))
    # the box post-processing on the same logits and deltas
    with torch.no_grad():
        x = twin.roi_heads.box_head(r2)
        logits, codes = twin.roi_heads.box_predictor(x)
        n0 = len(p_tv[0])
        b, s, lab = twin.roi_heads.postprocess_detections(
            logits[:n0], codes[:n0], p_tv[:1], il.image_sizes[:1]
        )
        d = mine.roi_heads._detections(logits[:n0], codes[:n0], p_tv[0], il.image_sizes[0])
    out["postprocess_counts"] = [len(d["boxes"]), len(b[0])]
    out["postprocess_labels_equal"] = bool(torch.equal(d["labels"], lab[0]))
    out["postprocess"] = max(gap(d["boxes"], b[0]), gap(d["scores"], s[0]))
    # the paste: random masks, boxes at the image's edges (widened, they cross them)
    masks = torch.rand(40, 1, 28, 28, generator=g)
    xy = torch.rand(40, 2, generator=g) * torch.tensor([170.0, 120]) - 10
    wh = torch.rand(40, 2, generator=g) * 80 + 0.3
    pb = rcnn.clip(torch.cat([xy, xy + wh], 1), (100, 150))  # detections are clipped
    out["paste"] = gap(
        rcnn_parts.paste_masks(masks, pb, (100, 150)), paste_masks_in_image(masks, pb, (100, 150))
    )
    return out


def grads(model: nn.Module, images: Tensor) -> tuple[list[dict], dict, list]:
    """Outputs, the captured maps and, per image, each detection's mask logits of its class
    (torchvision: from a hook on ``mask_predictor``)."""
    held: list[Tensor] = []
    handle = None
    if model.roi_heads.mask_predictor is not None:
        handle = model.roi_heads.mask_predictor.register_forward_hook(
            lambda m, a, o: held.append(o)
        )
    outs, maps = rcnn.capture(model, images)
    if handle is not None:
        handle.remove()
    logits = []
    if held:
        start = 0
        for o in outs:
            n = len(o["labels"])
            logits.append(held[0][start : start + n][torch.arange(n), o["labels"]])
            start += n
    return outs, maps, logits


def grad(y: Tensor, maps: list[Tensor]) -> list[Tensor]:
    """``∂y/∂A`` per map, zeros where ``y`` does not read it."""
    gs = torch.autograd.grad(y, maps, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(m) if g is None else g for g, m in zip(gs, maps, strict=True)]


def check_model(mine: rcnn.TinyTwoStage, twin: nn.Module, images: Tensor) -> dict:
    out: dict = {}
    o1, m1, z1 = grads(mine, images)
    o2, m2, z2 = grads(twin, images)
    out["counts"] = [[len(a["labels"]), len(b["labels"])] for a, b in zip(o1, o2, strict=True)]
    out["labels_equal"] = all(
        torch.equal(a["labels"], b["labels"]) for a, b in zip(o1, o2, strict=True)
    )
    for key in ("boxes", "scores", "masks"):
        if key in o2[0]:
            out[key] = max(gap(a[key], b[key]) for a, b in zip(o1, o2, strict=True))
    names = mine.roi_heads.box_roi_pool.featmap_names
    worst = dict.fromkeys(
        ["score_grad_relative", "score_cam", "mask_grad_relative", "mask_cam"], 0.0
    )
    size = tuple(images.shape[-2:])
    for n, (a, b) in enumerate(zip(o1, o2, strict=True)):
        window = tuple(mine.transform(images[n]).shape[-2:])
        padded = tuple(8 * s for s in m1["0"].shape[-2:])  # map "0" is at stride 8
        for j in range(len(a["scores"])):
            targets = [("score", a["scores"][j], b["scores"][j])]
            if z1:
                y1 = (z1[n][j] * (z1[n][j].sigmoid() > 0.5)).sum()
                y2 = (z2[n][j] * (z2[n][j].sigmoid() > 0.5)).sum()
                targets.append(("mask", y1, y2))
            for name, y1, y2 in targets:
                g1, g2 = grad(y1, [m1[k] for k in names]), grad(y2, [m2[k] for k in names])
                worst[f"{name}_grad_relative"] = max(
                    worst[f"{name}_grad_relative"],
                    rel(
                        torch.cat([p[n].flatten() for p in g1]),
                        torch.cat([q[n].flatten() for q in g2]),
                    ),
                )
                cams = []
                for gg, mm in ((g1, m1), (g2, m2)):
                    per = [
                        torch.relu((g[n : n + 1].mean((2, 3), keepdim=True) * mm[k][n : n + 1])
                                   .sum(1, keepdim=True)).detach()
                        for g, k in zip(gg, names, strict=True)
                    ]  # fmt: skip
                    cams.append(rcnn.fuse(per, window, padded, size))
                worst[f"{name}_cam"] = max(worst[f"{name}_cam"], gap(*cams))
    out.update({k: v for k, v in worst.items() if v or k.startswith("score")})
    return out


def check_pytorch_grad_cam(mine: rcnn.TinyTwoStage, twin: nn.Module, image: Tensor) -> dict:
    """Per detection of ``image`` (120x200: resized to 96x160, no padding, so each map covers
    the input), pytorch-grad-cam's ``GradCAM`` on the torchvision twin with
    ``FasterRCNNBoxScoreTarget([label], [box])`` at the three FPN maps the RoIs read, against
    (a) our per-level ``ReLU(Σ α A)`` put through its own fusion (``scale_cam_image`` per level:
    min-max, then resize; the mean; min-max) and (b) our :func:`rcnn.gradcam` (per level: resize,
    then min-max: the project's order).

    Its target is ``score_j + IoU(box, box_j)``. The IoU's gradient vanishes only where the box
    given equals the predicted box bit for bit (PyTorch splits a ``maximum``/``minimum`` tie
    half and half); our boxes differ from the twin's by ~1e-5, which adds a gradient of the
    order of ``1/side`` through the box regression. So the targets are the twin's own boxes,
    as its tutorial takes them from the model's own eager run."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    outs, maps = rcnn.capture(mine, image[None])
    o = outs[0]
    names = mine.roi_heads.box_roi_pool.featmap_names
    layers = [twin.backbone.layer_blocks[i] for i in range(len(names))]
    worst = {"same_fusion": 0.0, "project_fusion": 0.0}
    size = tuple(image.shape[-2:])
    with torch.no_grad():
        own = twin(image[None])[0]  # its targets: the twin's own boxes, bit for bit
    assert torch.equal(own["labels"], o["labels"])
    with GradCAM(model=twin, target_layers=layers) as cam:
        for j in range(len(o["scores"])):
            target = FasterRCNNBoxScoreTarget(
                labels=[int(own["labels"][j])], bounding_boxes=[own["boxes"][j].numpy()]
            )
            theirs = torch.from_numpy(cam(image[None], targets=[target])[0])
            g = grad(o["scores"][j], [maps[k] for k in names])
            per = [
                torch.relu((gk.mean((2, 3), keepdim=True) * maps[k]).sum(1)).detach().numpy()
                for gk, k in zip(g, names, strict=True)
            ]
            scaled = [scale_cam_image(c, size[::-1])[:, None] for c in per]
            ours = scale_cam_image(np.maximum(np.concatenate(scaled, 1), 0).mean(1))[0]
            worst["same_fusion"] = max(worst["same_fusion"], gap(torch.from_numpy(ours), theirs))
            project = rcnn.gradcam(mine, image, j)
            worst["project_fusion"] = max(worst["project_fusion"], gap(project, theirs))
    worst["detections"] = len(o["scores"])
    return worst


def timing(model: nn.Module, images: Tensor, rounds: int = 5) -> float:
    with torch.no_grad():
        model(images)
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            model(images)
            best = min(best, time.perf_counter() - t)
    return best * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write OUT.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    two = rcnn.photos(("chelsea.png", "coffee.png"), (100, 150))
    report: dict = {}
    for kind in ("faster", "mask"):
        mine = rcnn.tiny_two_stage(kind)
        twin = torchvision_twin(mine)
        row = {"pieces": check_pieces(mine, twin, two), "photos": check_model(mine, twin, two)}
        mixed = [rcnn.photos(("rocket.jpg",), (120, 90))[0], two[1]]
        with torch.no_grad():
            a, b = mine(mixed), twin(mixed)
        row["two_sizes"] = {
            "counts": [[len(x["labels"]), len(y["labels"])] for x, y in zip(a, b, strict=True)],
            "labels_equal": all(
                torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b, strict=True)
            ),
            "boxes": max(gap(x["boxes"], y["boxes"]) for x, y in zip(a, b, strict=True)),
            "scores": max(gap(x["scores"], y["scores"]) for x, y in zip(a, b, strict=True)),
        }
        wide = rcnn.photos(("astronaut.png",), (120, 200))[0]
        row["pytorch_grad_cam"] = check_pytorch_grad_cam(mine, twin, wide)
        row["eager_ms_two_photos"] = {"tiny": timing(mine, two), "torchvision": timing(twin, two)}
        report[kind] = row
        print(kind, json.dumps(row, indent=1))
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
