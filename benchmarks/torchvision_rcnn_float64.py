#!/usr/bin/env python
"""Why ``fasterrcnn_resnet50_fpn_v2``'s maps are 1e-3 from the autograd Grad-CAM in float32
(issue 29): the explainer and the reference of :mod:`torchvision_rcnn`, each in float32 and in
float64, and the detections' rows through the box head.

``--part maps``: the model of :func:`torchvision_rcnn.prepare`, our explainer's maps (eager; in
float64 by :func:`.parity64.float64_mode`) and the autograd Grad-CAM of each detection's eager
score fused by the project's rule (the model in float64 for the float64 side), D per photo:
max |ours - reference| in float32 and in float64, and each side's float32 map against its
float64 map; ``alpha rel``: max |α32 - α64| / max |α64| of the reference's channel weights
``α = mean_uv ∂y/∂A`` at the level the detections read.

``--part flips``: one photo's detections; their pooled rows ``R_j`` as our graph pools them
and as the eager model's ``box_roi_pool`` does, each through the box head: where a ReLU's input
has a different sign (the layer, the two values, the float64 value of that unit: the same RoI
pooled from the float64 model's maps, and the layer's largest float32 error on that row) and
max |∂y/∂R (ours) - ∂y/∂R (eager)| / max |∂y/∂R (eager)|.

Usage, peers venv, this checkout on the path::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD .peers/bin/python benchmarks/torchvision_rcnn_float64.py \\
        --part maps|flips [--image 2] [--cache /tmp/v2.pt] --out benchmarks/results/NAME.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import rcnn
import torchvision_rcnn as tr

from explain_export.builder.detect_build import build_detector
from explain_export.builder.detect_explainer import kept
from explain_export.builder.export.parity64 import float64_mode

NAME = "fasterrcnn_resnet50_fpn_v2"


def model_of(name: str, cache: str | None) -> nn.Module:
    """:func:`torchvision_rcnn.prepare`'s model; its state kept in ``cache`` (a .pt file)."""
    size, kwargs = tr.MODELS[name]
    if cache and Path(cache).exists():
        from torchvision.models import detection

        model = getattr(detection, name)(weights=None, weights_backbone=None, **kwargs).eval()
        model.load_state_dict(torch.load(cache))
        return model
    model = tr.prepare(name, size, kwargs)
    if cache:
        torch.save(model.state_dict(), cache)
    return model


def reference(model: nn.Module, image: Tensor, d: int, det) -> tuple:
    """Labels, the fused autograd Grad-CAM and the channel weights ``α`` per detection."""
    outs, maps = rcnn.capture(model, image[None])
    out = outs[0]
    leaves = [maps[k] for k in tr._read(model, maps)]
    heat, alphas = [], []
    for j in range(min(d, len(out["scores"]))):
        grads = torch.autograd.grad(out["scores"][j], leaves, retain_graph=True)
        cams = tr._per_level(list(grads), leaves)
        alphas.append([g.mean((2, 3)).detach().double() for g in grads])
        heat.append(rcnn.fuse(cams, det.resized, det.padded, tuple(image.shape[-2:])).double())
    return out["labels"][: len(heat)], heat, alphas


def maps_part(name: str, d: int, cache: str | None) -> dict:
    size, _ = tr.MODELS[name]
    t0 = time.perf_counter()
    model = model_of(name, cache)
    images = tr.photos(size)
    ex = build_detector(model, size, max_detections=d)
    det = ex.detector
    with torch.no_grad():
        o32 = ex(images)
    with float64_mode(ex), torch.no_grad():
        o64 = ex(images.double())
    r32 = [reference(model, im, d, det) for im in images]
    model.double()
    r64 = [reference(model, im.double(), d, det) for im in images]
    model.float()
    rows = []
    for n in range(len(images)):
        labels = r32[n][0]
        same = torch.equal(labels, r64[n][0]) and torch.equal(labels, o32[2][n, : len(labels)])
        same = same and torch.equal(o32[2][n], o64[2][n])
        for j in range(len(labels)):
            h32, h64 = o32[4][n, j].double(), o64[4][n, j].double()
            a32, a64 = r32[n][1][j], r64[n][1][j]
            alpha = max(
                float((x - y).abs().max() / y.abs().max())
                for x, y in zip(r32[n][2][j], r64[n][2][j], strict=True)
                if y.abs().max() > 0  # a level no detection reads has no gradient
            )
            rows.append({
                "image": tr.PHOTOS[n], "det": j, "class": int(labels[j]), "same": same,
                "ours32_ref32": float((h32 - a32).abs().max()),
                "ours64_ref64": float((h64 - a64).abs().max()),
                "ours32_ours64": float((h32 - h64).abs().max()),
                "ref32_ref64": float((a32 - a64).abs().max()),
                "alpha_rel_32_64": alpha,
            })  # fmt: skip
    keys = ("ours32_ref32", "ours64_ref64", "ours32_ours64", "ref32_ref64", "alpha_rel_32_64")
    worst = {k: max(r[k] for r in rows) for k in keys}
    return {
        "model": name,
        "d": d,
        "s": round(time.perf_counter() - t0),
        "worst": worst,
        "rows": rows,
    }


def _relu_inputs(head: nn.Module, x: Tensor) -> list[Tensor]:
    """The input of every ReLU of a box head: v2's ``Conv2dNormActivation`` blocks (conv, BN,
    ReLU), then the FC's ReLU (``TwoMLPHead``'s two FCs: the input of each ``F.relu``)."""
    out, z = [], x
    if not isinstance(head, nn.Sequential):  # TwoMLPHead: fc6, fc7
        z = head.fc6(z.flatten(1))
        out.append(z)
        out.append(head.fc7(torch.relu(z)))
        return out
    for m in head:
        if isinstance(m, nn.Sequential):
            z = m[1](m[0](z))
            out.append(z)
            z = torch.relu(z)
        elif isinstance(m, nn.ReLU):
            out.append(z)
            z = torch.relu(z)
        else:
            z = m(z)
    return out


def _grad(model: nn.Module, rows: Tensor, classes: Tensor) -> Tensor:
    leaf = rows.detach().clone().requires_grad_(True)
    logits, _ = model.roi_heads.box_predictor(model.roi_heads.box_head(leaf))
    (g,) = torch.autograd.grad(logits.softmax(-1).gather(1, classes[:, None]).sum(), leaf)
    return g


def flips_part(name: str, d: int, image: int, cache: str | None) -> dict:
    size, _ = tr.MODELS[name]
    model = model_of(name, cache)
    ex = build_detector(model, size, max_detections=d)
    det = ex.detector
    x = tr.photos(size)[image : image + 1]

    def ours(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Step 1 of the explainer's forward: the proposals, every pooled row, the kept ones."""
        feats = det.features(model, x)
        maps = det.roi_maps(feats)
        props, pvalid = det.proposals(model, feats)
        pooled, logits, reg = det.classify(model, maps, props)
        cand = det.candidates(logits, reg, props, pvalid)
        _, _, classes, index, valid = kept(cand, d, ex.iou_threshold, ex.score_threshold)
        rows = index[0][valid[0]] // (det.num_classes - 1)
        return props[0], pooled, rows, classes[0][valid[0]]

    with torch.no_grad():
        props, pooled, rows, classes = ours(x)
        seen: dict = {}
        hook = model.roi_heads.box_roi_pool.register_forward_hook(
            lambda m, a, o: seen.update(pooled=o, props=a[1][0])
        )
        model([x[0]])
        hook.remove()
        with float64_mode(ex):  # the same RoIs (float32 boxes) pooled from float64 maps
            maps64 = det.roi_maps(det.features(model, x.double()))
            rois = props[rows].double()
            pooled64 = det.pooler.pool(maps64, rois, torch.zeros_like(rows))
            pre64 = _relu_inputs(model.roi_heads.box_head, pooled64)
        same_props = torch.equal(props[: len(seen["props"])], seen["props"])
        mine = _relu_inputs(model.roi_heads.box_head, pooled[rows])
        eager = _relu_inputs(model.roi_heads.box_head, seen["pooled"][rows])
    g_ours, g_eager = (
        _grad(model, pooled[rows], classes),
        _grad(model, seen["pooled"][rows], classes),
    )
    dets = []
    for j in range(len(rows)):
        flips = []
        for layer, (u, v, w) in enumerate(zip(mine, eager, pre64, strict=True)):
            f = (u[j] > 0) != (v[j] > 0)
            if f.any():
                flips.append({
                    "layer": layer, "count": int(f.sum()), "ours": u[j][f].tolist()[:4],
                    "eager": v[j][f].tolist()[:4],
                    "float64": w[j][f].tolist()[:4],
                    "layer_f32_err": float((u[j].double() - w[j]).abs().max()),
                })  # fmt: skip
        ref = seen["pooled"][rows[j]]
        dets.append({
            "det": j, "row": int(rows[j]), "class": int(classes[j]),
            "pooled_rel": float((pooled[rows[j]] - ref).abs().max() / ref.abs().max()),
            "grad_rel": float((g_ours[j] - g_eager[j]).abs().max() / g_eager[j].abs().max()),
            "relu_flips": flips,
        })  # fmt: skip
    units = sum(int(t[0].numel()) for t in mine)
    return {
        "model": name, "image": tr.PHOTOS[image], "same_proposals": same_props,
        "relu_units_per_row": units, "dets": dets,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("maps", "flips"), required=True)
    parser.add_argument("--model", default=NAME, choices=sorted(tr.MODELS))
    parser.add_argument("--max-detections", type=int, default=5)
    parser.add_argument("--image", type=int, default=2, help="flips: index into the photos")
    parser.add_argument("--cache", help="a .pt file keeping the prepared model's state")
    parser.add_argument("--out", help="write the result as JSON")
    args = parser.parse_args(argv)
    if args.part == "maps":
        result = maps_part(args.model, args.max_detections, args.cache)
    else:
        result = flips_part(args.model, args.max_detections, args.image, args.cache)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
