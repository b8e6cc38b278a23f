#!/usr/bin/env python
"""torchvision's one-stage detectors through the detection explainer, against the eager model.

For each of RetinaNet (v1, v2), FCOS, SSDlite and SSD300 with random init (weights=None,
weights_backbone=None, torch.manual_seed(0); nothing is downloaded):

- the head's towers re-drawn (kaiming) where torchvision draws them at std 0.01 (its maps
  then vanish); BatchNorm statistics from three scikit-image photos and two noise images (the
  export's check runs noise too, where the logits would otherwise saturate at 1.0 and tie);
  the class-logit layers scaled so the logits have std 1 on them, their bias 0, so that
  detections pass the model's own thresholds (random init gives none); the box codes scaled to
  std 0.5 (FCOS's boxes are otherwise points);
- our explainer at a small export size (RetinaNet, FCOS: ``min_size``/``max_size`` made small,
  so the graph resizes and pads; SSD: its own fixed size), D detections per image;
- the detections against the eager model's own (``model(list_of_images)``, its first D): the
  same classes, box IoU >= 0.99, scores within 1e-3;
- each map against an autograd Grad-CAM of that detection's score at the head's inputs (a
  pre-hook clones them; the detection's anchor is the one where the eager head output gives
  its score for its class), fused as repeated ``--layer`` maps are: max |diff| and Pearson r;
- the maps' own float32 error: the eager explainer in float32 against float64;
- the ONNX export, verified by ``export_detector``.

Usage, in the venv that ``make peers`` builds (torch 2.14.1 + torchvision 0.29.1), with this
checkout on the path:

    OMP_NUM_THREADS=2 PYTHONPATH=. .peers/bin/python benchmarks/torchvision_detectors.py
    ... benchmarks/torchvision_detectors.py --only fcos_resnet50_fpn --no-export
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explain_export.artifact import samples
from explain_export.builder.detect_build import build_detector
from explain_export.builder.export.detection import export_detector
from explain_export.builder.maths.boxes import box_iou
from explain_export.errors import ParityError

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
SMALL = {"min_size": 224, "max_size": 288}  # 200x256 -> 224x286, padded to 224x288
MODELS = {
    "retinanet_resnet50_fpn": ((200, 256), SMALL),
    "retinanet_resnet50_fpn_v2": ((200, 256), SMALL),
    "fcos_resnet50_fpn": ((200, 256), SMALL),
    "ssdlite320_mobilenet_v3_large": ((240, 320), {}),
    "ssd300_vgg16": ((240, 320), {}),
}


def photos(size: tuple[int, int]) -> Tensor:
    return torch.from_numpy(
        np.stack([samples.load_rgb(samples.photo_path(n), size) for n in PHOTOS])
    )


def _finals(model: nn.Module) -> list[nn.Conv2d]:
    """The class-logit convolutions: those of the classification head whose outputs are a
    multiple of the class count."""
    k = 91
    head = model.head.classification_head
    return [m for m in head.modules() if isinstance(m, nn.Conv2d) and m.out_channels % k == 0]


def prepare(name: str, size: tuple[int, int], kwargs: dict) -> nn.Module:
    """The model with random init, made to detect something (the module's docstring)."""
    from torchvision.models import detection

    torch.manual_seed(0)
    model = getattr(detection, name)(weights=None, weights_backbone=None, **kwargs).eval()
    finals = _finals(model)
    if name.startswith(("retinanet", "fcos")):
        for m in model.head.modules():
            if isinstance(m, nn.Conv2d) and m.out_channels == m.in_channels:  # the towers
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    noise = torch.from_numpy(np.random.default_rng(0).random((2, 3, *size), dtype=np.float32))
    batch = model.transform(list(torch.cat([photos(size), noise])))[0].tensors
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model.head(list(model.backbone(batch).values()))
    model.eval()
    with torch.no_grad():
        logits = model.head(list(model.backbone(batch).values()))["cls_logits"]
        scale = 1.0 / float(logits.std())
        for m in finals:
            m.weight.mul_(scale)
            m.bias.zero_()
        reg = getattr(model.head.regression_head, "bbox_reg", None)
        if reg is not None:  # RetinaNet, FCOS: box codes of std 0.5, boxes that differ
            codes = model.head(list(model.backbone(batch).values()))["bbox_regression"]
            reg.weight.mul_(0.5 / float(codes.std()))
    return model


def _score(family: str, head: dict[str, Tensor], n: int) -> Tensor:
    """Every (anchor, class) score ``[A, K]`` of image ``n``, as the model rates it."""
    z = head["cls_logits"][n]
    if family == "ssd":
        return z.softmax(-1)
    if family == "fcos":
        return torch.sqrt(z.sigmoid() * head["bbox_ctrness"][n].sigmoid())
    return z.sigmoid()


def _fuse(maps: list[Tensor], size: tuple[int, int], images: object) -> Tensor:
    """Per map: ReLU, resize, min-max; the mean, min-maxed. A map covers the padded image
    (``images``: the model's ``ImageList``), so it is cut to the resized image first."""
    padded = tuple(images.tensors.shape[-2:])  # type: ignore[attr-defined]
    resized = tuple(images.image_sizes[0])  # type: ignore[attr-defined]

    def unit(m: Tensor) -> Tensor:
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        lo, hi = m.amin((2, 3), keepdim=True), m.amax((2, 3), keepdim=True)
        return (m - lo) / (hi - lo).clamp_min(1e-7)

    def cut(m: Tensor) -> Tensor:
        if padded == resized:
            return m
        m = F.interpolate(m, size=padded, mode="bilinear", align_corners=False)
        return m[:, :, : resized[0], : resized[1]]

    return unit(torch.stack([unit(cut(torch.relu(m))) for m in maps]).mean(0))


def eager(model: nn.Module, family: str, images: Tensor, d: int) -> list[dict[str, Tensor]]:
    """The eager model's first ``d`` detections per image and an autograd Grad-CAM of each."""
    held: list[Tensor] = []
    out: dict[str, Tensor] = {}

    def pre(module: nn.Module, args: tuple) -> tuple:
        held[:] = [a.detach().clone().requires_grad_(True) for a in args[0]]
        return (list(held),)

    handles = [
        model.head.register_forward_pre_hook(pre),
        model.head.register_forward_hook(lambda m, a, r: out.update(r)),
    ]
    results = []
    try:
        for image in images:
            with torch.enable_grad():
                dets = model([image])[0]
            dets = {k: v[:d].detach() for k, v in dets.items()}
            scores = _score(family, out, 0)
            maps = []
            for c, s in zip(dets["labels"].tolist(), dets["scores"], strict=True):
                a = int((scores[:, c].detach() - s).abs().argmin())
                grads = torch.autograd.grad(scores[a, c], held, retain_graph=True)
                cams = [
                    (g.mean((2, 3), keepdim=True) * m).sum(1, keepdim=True).detach()
                    for g, m in zip(grads, held, strict=True)
                ]
                size = tuple(image.shape[-2:])
                maps.append(_fuse(cams, size, model.transform([image])[0])[0, 0])
            dets["heatmap"] = torch.stack(maps) if maps else torch.zeros(0, *image.shape[-2:])
            results.append(dets)
    finally:
        for h in handles:
            h.remove()
    return results


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def run_one(name: str, d: int, export: bool) -> dict:
    size, kwargs = MODELS[name]
    t0 = time.perf_counter()
    model = prepare(name, size, kwargs)
    images = photos(size)
    explainer = build_detector(model, size, max_detections=d)
    det = explainer.detector
    with torch.no_grad():
        boxes, scores, classes, count, heat = explainer(images)
    t_ours = time.perf_counter() - t0
    ref = eager(model, det.family, images, d)
    row = {
        "model": name,
        "size": f"{size[0]}x{size[1]}->{det.resized[0]}x{det.resized[1]}",
        "dets": int(count.sum()),
        "same": True,
        "iou": 1.0,
        "box": 0.0,
        "score": 0.0,
        "map": 0.0,
        "r": 1.0,
    }
    for n, r in enumerate(ref):
        c = int(count[n])
        if c != len(r["labels"]) or not torch.equal(classes[n, :c], r["labels"]):
            row["same"] = False
            continue
        if c == 0:
            continue
        iou = box_iou(boxes[n, :c].reshape(-1, 1, 4), r["boxes"].reshape(-1, 1, 4)).flatten()
        iou = torch.where((boxes[n, :c] - r["boxes"]).abs().amax(-1) <= 0.05, 1.0, iou)  # no area
        row["iou"] = min(row["iou"], float(iou.min()))
        row["box"] = max(row["box"], float((boxes[n, :c] - r["boxes"]).abs().max()))
        row["score"] = max(row["score"], float((scores[n, :c] - r["scores"]).abs().max()))
        row["map"] = max(row["map"], float((heat[n, :c] - r["heatmap"]).abs().max()))
        row["r"] = min(row["r"], min(_pearson(heat[n, j], r["heatmap"][j]) for j in range(c)))
    row["eager_s"] = round(time.perf_counter() - t0 - t_ours, 1)
    row["ours_s"] = round(t_ours, 1)
    explainer.double()  # the maps' own float32 error: eager float32 against float64
    with torch.no_grad():
        heat64 = explainer(images.double())[4]
    explainer.float()
    row["f64"] = float((heat.double() - heat64).abs().max())
    row["onnx"] = "-"
    if export:
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            try:
                result = export_detector(explainer, out, ("onnx",))
                rows = result.metadata["parity"]["rows"]
                worst = max(r["heatmap_err"] for r in rows)
                row["onnx"] = f"ok {len(rows)} cases, map {worst:.1e}"
                judged = [r["float64"] for r in rows if r.get("float64")]
                if judged:  # passed by the float64 rule (.detection64): vs float64, its limit
                    err = max(c["heatmap_err"] for c in judged)
                    row["onnx"] += f" (f64 {err:.1e}/{judged[0]['heatmap_limit']:.1e})"
            except ParityError as exc:
                found = re.search(
                    r"same detections (\w+), box IoU ([\d.]+), .*heatmap ([\d.e+-]+)", str(exc)
                )
                row["onnx"] = "FAIL " + (
                    f"dets {found[1]}, IoU {found[2]}, map {float(found[3]):.1e}"
                    if found
                    else str(exc)[:60]
                )
        row["export_s"] = round(time.perf_counter() - t1, 1)
    explainer.remove()
    row["ok"] = row["same"] and row["iou"] >= 0.99 and row["score"] <= 1e-3 and row["dets"] > 0
    return row


def table(rows: list[dict]) -> str:
    head = (
        f"{'model':<31}{'input->resized':<19}{'dets':>5} {'same':<5}{'box IoU':>8}{'box':>9}"
        f"{'score':>9}"
        f"{'map':>9}{'r':>8}{'f32/f64':>9}  "
        f"{'onnx export (photos; f64: vs float64 / limit)':<60}{'dets ok':<7}"
    )
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<31}FAILED: {r['error']}")
            continue
        lines.append(
            f"{r['model']:<31}{r['size']:<19}{r['dets']:>5} {'yes' if r['same'] else 'NO':<5}"
            f"{r['iou']:>8.4f}{r['box']:>9.1e}{r['score']:>9.1e}{r['map']:>9.1e}{r['r']:>8.4f}  "
            f"{r['f64']:>9.1e}  {r['onnx']:<60}{'ok' if r['ok'] else 'FAIL':<7}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--max-detections", type=int, default=5)
    parser.add_argument("--no-export", action="store_true")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(MODELS)
    rows = []
    for name in names:
        try:
            row = run_one(name, args.max_detections, not args.no_export)
        except Exception as exc:  # a row per model, the table goes on
            traceback.print_exc()
            row = {"model": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        print(row, flush=True)
        rows.append(row)
    print(table(rows))
    print(
        f"D = {args.max_detections} per image, on {len(PHOTOS)} photos; limits: the same classes, "
        f"box IoU >= 0.99, score within 1e-3 (box: max |diff| in pixels; map: max |ours - autograd "
        f"Grad-CAM|, r: Pearson; f32/f64: max |our float32 map - float64|)"
    )
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
