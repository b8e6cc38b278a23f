"""The pictures of a segmentation model and a vision transformer, explained (docs/models.md).

- ``--segmentation PATH``: the embedded EfficientNet-Lite0 made fully convolutional, with its
  real ImageNet weights: its classifier applied at every position of its last map (a 1x1
  convolution with the same weights) and upsampled bilinearly to the input, so it returns
  per-pixel ImageNet scores ``{"out": [N, 1000, H, W]}``, as torchvision's FCN does. No
  segmentation weights can be had from a package; these are real, and the regions mean
  something. Exported with default flags and ``--background none`` (ImageNet has no background
  class), then drawn by ``explain-run --sheet``: each overlay outlines the explained class's
  region, and the caption names the class and its pixel share.
- ``--vit PATH``: the tests' tiny ViT (a class token, two register tokens), random weights: no
  ViT weights can be had from a package, so this shows how the token map is laid out and
  drawn, not what a trained ViT looks at.

    python benchmarks/pictures.py --segmentation docs/segmentation.jpg --vit docs/vit.jpg
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import cv2
import torch
import torch.nn.functional as F
from torch import nn

from explain_export.artifact import samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.model.zoo import imagenet_labels, load_default

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


class Lite0Segmenter(nn.Module):
    """EfficientNet-Lite0 as a fully convolutional net: ``S = up(W * F(x) + b)``, ``F`` its
    last map ``[N, 1280, h, w]``, ``W, b`` its classifier as a 1x1 convolution, ``up`` bilinear
    to the input size; returns ``{"out": S}``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model
        fc = model._fc
        self.classifier = nn.Conv2d(fc.in_features, fc.out_features, 1)
        with torch.no_grad():
            self.classifier.weight.copy_(fc.weight[:, :, None, None])
            self.classifier.bias.copy_(fc.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = self.classifier(self.backbone.extract_features(x))
        return {"out": F.interpolate(scores, size=x.shape[-2:], mode="bilinear")}


def sheet(model_path: str, out: str, names: tuple[str, ...] = PHOTOS, height: int = 170) -> None:
    """``explain-run --sheet`` on the photos ``names``, saved as a JPEG at ``out``."""
    with tempfile.TemporaryDirectory() as folder:
        exe = os.path.join(os.path.dirname(sys.executable), "explain-run")
        photos = [samples.photo_path(p) for p in names]
        cmd = [exe, "--model", model_path, "--images", *photos, "--out", folder, "--sheet"]
        subprocess.run([*cmd, "--sheet-height", str(height)], check=True)
        image = cv2.imread(os.path.join(folder, "sheet.png"))
        cv2.imwrite(out, image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        print(f"wrote {out} ({image.shape[1]}x{image.shape[0]})")


def segmentation_picture(out: str) -> None:
    model = Lite0Segmenter(load_default().model).eval()
    explainer = build_explainer(model, None, "auto", (224, 224), background=None)
    print(f"layer {explainer.plan.layer}, method {explainer.plan.method}")
    with tempfile.TemporaryDirectory() as folder:
        result = export_explainer(
            explainer,
            folder,
            ("onnx",),
            model="EfficientNet-Lite0, fully convolutional",
            labels=imagenet_labels(),
        )
        sheet(result.paths["onnx"], out)
    explainer.remove()


def vit_picture(out: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from models import tiny_vit

    model = tiny_vit(seed=0)
    explainer = build_explainer(model, None, "auto", (64, 64))
    print(f"layer {explainer.plan.layer}, method {explainer.plan.method}")
    with tempfile.TemporaryDirectory() as folder:
        result = export_explainer(explainer, folder, ("onnx",), model="tests' tiny ViT")
        sheet(result.paths["onnx"], out, PHOTOS[:2])
    explainer.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segmentation", metavar="PATH", help="write the segmentation picture")
    parser.add_argument("--vit", metavar="PATH", help="write the ViT picture")
    args = parser.parse_args()
    if args.segmentation:
        segmentation_picture(args.segmentation)
    if args.vit:
        vit_picture(args.vit)


if __name__ == "__main__":
    main()
