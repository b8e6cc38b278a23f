#!/usr/bin/env python
"""torchvision's two-stage detectors (Faster / Mask R-CNN) through the two-stage explainer,
against the eager model and pytorch-grad-cam (issue 29).

For each model with random init (weights=None, weights_backbone=None, torch.manual_seed(0);
nothing is downloaded), made to detect something (:func:`prepare`):

- the RPN head's 3x3 convs re-drawn (kaiming), its objectness logits scaled to std 1 and its
  deltas to std 0.2 (torchvision draws them at std 0.01: every anchor's objectness ties at ~0);
  BatchNorm statistics (backbone, FPN and v2's heads) from three scikit-image photos and two noise
  images (the export's check runs noise too); the box predictor's class logits scaled to std 1.5
  and a class bias drawn N(0, 1), the background's -1, so that detections pass the 0.05 threshold;
- our explainer at a small export size (``min_size``/``max_size`` small: the graph resizes and
  pads), D detections per image, Grad-CAM at the maps the RoI heads read;
- detections against the eager ``model(list_of_images)`` (its first D): the same classes, box
  IoU >= 0.99, scores within 1e-3, Mask R-CNN's masks binarized at 0.5 with IoU >= 0.99;
- each map against an autograd Grad-CAM of that detection's eager score at the RoI maps (a
  forward hook makes the backbone's maps leaves), fused by ``tests/rcnn.fuse`` (per level: cut
  to the resized image, resize, min-max; mean; min-max): max |diff|;
- each map against pytorch-grad-cam's ``GradCAM`` + ``FasterRCNNBoxScoreTarget`` (the model's own
  eager boxes and labels; target layers: the FPN ``layer_blocks`` whose outputs the RoI pooler
  reads): Pearson r with our map, and max |diff| of the autograd per-level maps fused by
  pytorch-grad-cam's own rule (per level: min-max, resize the whole padded map; mean; min-max);
- the export, ``export_detector(..., ("onnx", "torchscript"))``, which verifies every file.

Usage, in the venv that ``make peers`` builds, with this checkout on the path::

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD .peers/bin/python benchmarks/torchvision_rcnn.py \\
        --out benchmarks/results/torchvision-rcnn-peers [--only NAME,...] [--no-export]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import rcnn

from explain_export.artifact import samples
from explain_export.builder.detect_build import build_detector
from explain_export.builder.export.detection import export_detector
from explain_export.builder.maths.boxes import box_iou
from explain_export.errors import ParityError

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
SMALL = {"min_size": 240, "max_size": 480}  # 200x300 -> 240x360, padded to 256x384
MODELS = {
    "fasterrcnn_resnet50_fpn": ((200, 300), SMALL),
    "fasterrcnn_resnet50_fpn_v2": ((200, 300), SMALL),
    "fasterrcnn_mobilenet_v3_large_fpn": ((200, 300), SMALL),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ((240, 320), {}),  # its own 320: -> 320x427
    "maskrcnn_resnet50_fpn": ((200, 300), SMALL),
    "maskrcnn_resnet50_fpn_v2": ((200, 300), SMALL),
}


def photos(size: tuple[int, int]) -> Tensor:
    return torch.from_numpy(
        np.stack([samples.load_rgb(samples.photo_path(n), size) for n in PHOTOS])
    )


def _calibrate(model: nn.Module, images: list[Tensor]) -> None:
    """Every BatchNorm's running statistics from one eval pass over ``images`` (the BatchNorms
    alone in train mode, momentum None: the plain mean over the pass)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        model(images)
    model.eval()


def _hooked(module: nn.Module, model: nn.Module, images: list[Tensor]) -> tuple:
    """``module``'s (inputs, output) on one eval pass of ``model``."""
    seen: list = []
    h = module.register_forward_hook(lambda m, a, o: seen.append((a, o)))
    with torch.no_grad():
        model(images)
    h.remove()
    return seen[0]


def prepare(name: str, size: tuple[int, int], kwargs: dict) -> nn.Module:
    """The model with random init, made to detect something (the module's docstring)."""
    from torchvision.models import detection

    torch.manual_seed(0)
    model = getattr(detection, name)(weights=None, weights_backbone=None, **kwargs).eval()
    noise = torch.from_numpy(np.random.default_rng(0).random((2, 3, *size), dtype=np.float32))
    batch = list(torch.cat([photos(size), noise]))
    head = model.rpn.head
    for m in head.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    _calibrate(model, batch)
    _, (obj, deltas) = _hooked(head, model, batch)
    with torch.no_grad():
        head.cls_logits.weight.mul_(1.0 / float(torch.cat([o.flatten() for o in obj]).std()))
        head.cls_logits.bias.zero_()
        head.bbox_pred.weight.mul_(0.2 / float(torch.cat([d.flatten() for d in deltas]).std()))
        head.bbox_pred.bias.zero_()
    _calibrate(model, batch)  # v2's box head reads the new proposals
    pred = model.roi_heads.box_predictor
    (x,), _ = _hooked(pred, model, batch)
    with torch.no_grad():
        z = pred.cls_score(x.flatten(1)) - pred.cls_score.bias
        pred.cls_score.weight.mul_(1.5 / float(z.std()))
        bias = torch.randn(pred.cls_score.out_features)
        bias[0] = -1.0
        pred.cls_score.bias.copy_(bias)
    return model


def _read(model: nn.Module, maps: dict[str, Tensor]) -> list[str]:
    """The maps the box pooler reads, in the backbone's order (``_filter_input``)."""
    return [k for k in maps if k in model.roi_heads.box_roi_pool.featmap_names]


def _layers(model: nn.Module, names: list[str]) -> list[nn.Module]:
    """The FPN modules whose outputs are the maps ``names`` (``"0"``, ``"1"``...: layer_blocks)."""
    return [model.backbone.fpn.layer_blocks[int(k)] for k in names]


def _per_level(grads: list[Tensor], maps: list[Tensor]) -> list[Tensor]:
    return [
        torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach()
        for g, a in zip(grads, maps, strict=True)
    ]


def _pgc_fuse(cams: list[Tensor], size: tuple[int, int]) -> Tensor:
    """pytorch-grad-cam's rule on per-level maps ``[1, 1, h, w]``: ``scale_cam_image`` each
    (min-max, then resize the whole map), the mean of the levels' ReLU, ``scale_cam_image``."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    scaled = [scale_cam_image(c[0].numpy(), size[::-1])[:, None] for c in cams]
    return torch.from_numpy(scale_cam_image(np.maximum(np.concatenate(scaled, 1), 0).mean(1))[0])


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def references(model: nn.Module, image: Tensor, d: int, det, pgc: bool = True) -> dict:
    """The eager model's first ``d`` detections of ``image``, and per detection the autograd
    Grad-CAM fused by the project's rule and by pytorch-grad-cam's, and pytorch-grad-cam's own."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    outs, maps = rcnn.capture(model, image[None])
    out = outs[0]
    names = _read(model, maps)
    leaves = [maps[k] for k in names]
    size = tuple(image.shape[-2:])
    k = min(d, len(out["scores"]))
    ref: dict = {key: v[:k].detach() for key, v in out.items()}
    ref["heatmap"], ref["pgc_rule"], ref["pgc"] = [], [], []
    with torch.no_grad():
        own = model(image[None])[0]  # pytorch-grad-cam's targets: the model's own boxes
    with GradCAM(model=model, target_layers=_layers(model, names)) as cam:
        for j in range(k):
            if not pgc:
                ref["pgc"].append(None)
                ref["pgc_rule"].append(None)
            grads = torch.autograd.grad(out["scores"][j], leaves, retain_graph=True)
            cams = _per_level(list(grads), leaves)
            ref["heatmap"].append(rcnn.fuse(cams, det.resized, det.padded, size))
            ref["pgc_rule"].append(_pgc_fuse(cams, size))
            if not pgc:
                continue
            target = FasterRCNNBoxScoreTarget([int(own["labels"][j])], [own["boxes"][j].numpy()])
            x = image[None].clone().requires_grad_(True)  # the explainer froze the weights
            ref["pgc"].append(torch.from_numpy(cam(x, targets=[target])[0]))
    return ref


def _mask_iou(a: Tensor, b: Tensor) -> float:
    inter, union = float((a & b).sum()), float((a | b).sum())
    return 1.0 if union == 0 else inter / union


def compare(out: tuple, refs: list[dict], row: dict) -> None:
    """Fills ``row`` with the worst of each comparison over the images."""
    boxes, scores, classes, count, heat = out[:5]
    for n, r in enumerate(refs):
        c = int(count[n])
        if c != len(r["labels"]) or not torch.equal(classes[n, :c], r["labels"]):
            row["same"] = False
            continue
        if c == 0:
            continue
        iou = box_iou(boxes[n, :c].reshape(-1, 1, 4), r["boxes"].reshape(-1, 1, 4)).flatten()
        row["iou"] = min(row["iou"], float(iou.min()))
        row["box"] = max(row["box"], float((boxes[n, :c] - r["boxes"]).abs().max()))
        row["score"] = max(row["score"], float((scores[n, :c] - r["scores"]).abs().max()))
        for j in range(c):
            h = heat[n, j]
            row["map"] = max(row["map"], float((h - r["heatmap"][j]).abs().max()))
            if r["pgc"][j] is not None:
                row["pgc_r"] = min(row["pgc_r"], _pearson(h, r["pgc"][j]))
                pgc_rule = float((r["pgc_rule"][j] - r["pgc"][j]).abs().max())
                row["pgc_rule"] = max(row["pgc_rule"], pgc_rule)
            if len(out) > 5:
                mine, theirs = out[5][n, j] > 0.5, r["masks"][j, 0] > 0.5
                row["mask_iou"] = min(row.get("mask_iou", 1.0), _mask_iou(mine, theirs))


def run_one(name: str, d: int, export: bool, pgc_images: int) -> dict:
    size, kwargs = MODELS[name]
    t0 = time.perf_counter()
    model = prepare(name, size, kwargs)
    images = photos(size)
    explainer = build_detector(model, size, max_detections=d)
    det = explainer.detector
    t1 = time.perf_counter()
    with torch.no_grad():
        out = explainer(images)
    t_ours = time.perf_counter() - t1
    refs = [references(model, im, d, det, n < pgc_images) for n, im in enumerate(images)]
    row = {
        "model": name,
        "size": f"{size[0]}x{size[1]}->{det.resized[0]}x{det.resized[1]}"
        f" pad {det.padded[0]}x{det.padded[1]}",
        "levels": len(det.roi_levels),
        "d": d,
        "pgc_images": min(pgc_images, len(images)),
        "proposals": det.rpn_post,
        "dets": [int(c) for c in out[3]],
        "same": True, "iou": 1.0, "box": 0.0, "score": 0.0, "map": 0.0,
        "pgc_r": 1.0, "pgc_rule": 0.0,
    }  # fmt: skip
    compare(out, refs, row)
    row["ours_eager_s"] = round(t_ours, 2)
    row["prepare_and_refs_s"] = round(time.perf_counter() - t0 - t_ours, 1)
    row["export"] = "-"
    if export:
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                result = export_detector(explainer, tmp, ("onnx", "torchscript"), log=print)
                row["parity"] = result.metadata["parity"]["rows"]
                worst = max(r["heatmap_err"] for r in row["parity"])
                row["export"] = f"ok, {len(row['parity'])} rows, map {worst:.1e}"
            except ParityError as exc:
                row["export"] = "ParityError: " + str(exc)[:300]
            except Exception as exc:
                traceback.print_exc()
                row["export"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        row["export_s"] = round(time.perf_counter() - t1, 1)
    explainer.remove()
    row["ok"] = (
        row["same"] and row["iou"] >= 0.99 and row["score"] <= 1e-3 and sum(row["dets"]) > 0
        and row.get("mask_iou", 1.0) >= 0.99 and row["export"].startswith(("-", "ok"))
    )  # fmt: skip
    return row


LEGEND = (
    "D detections per image on chelsea, coffee, rocket (pgc on the first photo only: it runs "
    "the whole model per detection). Limits: the same classes, box IoU >= 0.99, score within "
    "1e-3, mask IoU >= 0.99 (binarized at 0.5). box px: max |box - eager|; map vs autograd: "
    "max |our map - autograd Grad-CAM fused by the project's rule|; r vs pgc: the smallest "
    "Pearson r of our map with pytorch-grad-cam's GradCAM + FasterRCNNBoxScoreTarget; pgc rule "
    "vs pgc: max |autograd per-level maps fused by pgc's rule - pgc's map|. export: "
    "export_detector(onnx, torchscript), each file verified against eager (ParityError if not)."
)


def table(rows: list[dict]) -> str:
    lines = [
        "| model | input -> resized | RoI levels | dets/image | same | box IoU | box px "
        "| score | map vs autograd | r vs pgc | pgc rule vs pgc | mask IoU | export (onnx+ts) "
        "| export s | ok |",
        "|" + "---|" * 15,
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | FAILED: {r['error']} |" + " |" * 13)
            continue
        mask = f"{r['mask_iou']:.4f}" if "mask_iou" in r else "-"
        lines.append(
            f"| {r['model']} | {r['size']} | {r['levels']} | {r['dets']} | "
            f"{'yes' if r['same'] else 'NO'} | {r['iou']:.4f} | {r['box']:.1e} | {r['score']:.1e} "
            f"| {r['map']:.1e} | {r['pgc_r']:.4f} | {r['pgc_rule']:.1e} | {mask} | {r['export']} "
            f"| {r.get('export_s', '-')} | {'ok' if r['ok'] else 'FAIL'} |"
        )
    return "\n".join(lines)


def parity(rows: list[dict]) -> str:
    """Each export's parity rows (``export_detector``'s check), a table per model."""
    out = []
    for r in rows:
        if not r.get("parity"):
            continue
        out += [
            f"### {r['model']}: export {r.get('export_s')} s",
            "",
            "| format | input | batch | dets | same | box IoU | score | heatmap | mask IoU "
            "| float64 rule (file, eager f32 / limit) | ok |",
            "|" + "---|" * 11,
        ]
        for p in r["parity"]:
            f64 = p.get("float64")
            rule = (
                f"{f64['heatmap_err']:.1e}, {f64['eager_heatmap_err']:.1e} / "
                f"{f64['heatmap_limit']:.1e}"
                if f64
                else "-"
            )
            mask = "-" if p.get("mask_iou_min") is None else f"{p['mask_iou_min']:.4f}"
            out.append(
                f"| {p['format']} | {p['input']} | {p['batch']} | {p['count']} | "
                f"{'yes' if p['same_detections'] else 'NO'} | {p['box_iou_min']:.4f} | "
                f"{p['score_err']:.1e} | {p['heatmap_err']:.1e} | {mask} | {rule} | "
                f"{'ok' if p['ok'] else 'FAIL'} |"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--max-detections", type=int, default=10)
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--pgc-images", type=int, default=1, help="photos pgc runs on (slow)")
    parser.add_argument("--out", help="write OUT.json (rows) and OUT.md (tables)")
    parser.add_argument("--tables", nargs="*", help="only write the tables of these OUT.json")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(MODELS)
    rows: list[dict] = []
    if args.tables:  # the rows of earlier runs, one table
        names = []
        for path in args.tables:
            rows += json.loads(Path(path).read_text())
    for name in names:
        try:
            row = run_one(name, args.max_detections, not args.no_export, args.pgc_images)
        except Exception as exc:  # a row per model, the table goes on
            traceback.print_exc()
            row = {"model": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        print(json.dumps({k: v for k, v in row.items() if k != "parity"}), flush=True)
        rows.append(row)
        if args.out:
            Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    if args.out and args.tables:
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    text = table(rows) + "\n\n" + LEGEND + "\n\n" + parity(rows)
    print(text)
    if args.out:
        Path(args.out).with_suffix(".md").write_text(text + "\n")
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
