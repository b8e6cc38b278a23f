"""The README's detection picture: a DEMO detector built from the embedded ImageNet classifier.

No trained detector weights can be had from a package (and a randomly initialised YOLO draws
meaningless boxes), so the picture uses EfficientNet-Lite0's real ImageNet weights as a
one-stage detector: its linear classifier applied to every cell of its last map (a 1x1
convolution, as a fully convolutional network does), each stride-32 cell one candidate box
(:class:`CellDetector`). Its raw output is YOLO-style ``[N, 4+1000, h·w]``, so the
detection export takes it as it takes a YOLO: class-aware NMS in the graph, and each detection's
Grad-CAM map from one backward pass through the head. This is not a trained detector: its boxes
are where a class wins, not learned box regression.

The picture: chelsea.png at 448x448, ``D = 4``, score > 0.25 (Ultralytics' default
confidence): an Egyptian cat (0.93), a lynx (0.63), a second Egyptian cat region (0.54) and a
tiger cat (0.50), three cat classes whose maps differ. ``D`` is what cuts it there: the next
candidates are another Egyptian cat region (0.45), a space heater (0.43, a border cell), a tabby
(0.41) and a bow tie (0.40). coffee.png (printed, not drawn) gives espresso (0.97), then ladle
(0.78, the spoon), spotlight (0.68) and dial telephone (0.54); "cup" only comes 6th (0.42).

    PYTHONPATH=$PWD python benchmarks/detection_demo.py --out docs/detections.jpg
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

from explain_export.artifact import samples
from explain_export.builder.detect_build import build_detector
from explain_export.builder.export.detection import export_detector
from explain_export.builder.export.detection_parity import format_rows
from explain_export.builder.model.zoo import imagenet_labels, load_default

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDE = 32


class CellHead(nn.Module):
    r"""``head([F]) -> [N, 4+K, h·w]``, YOLO-style raw predictions from one map ``F [N, C, h, w]``.

    Per cell ``a``: the class probabilities :math:`p_a = \mathrm{softmax}(W F_a + b)` (``W, b``
    the classifier's linear layer as a 1x1 convolution), and a box: the smallest box of whole
    cells around the 4-connected region of cells whose best class is ``a``'s best class
    (grown from ``a`` by ``max(h, w)`` steps of a 3x3 cross dilation inside that class's mask;
    static tensor ops), as ``cx, cy, w, h`` in input pixels.

    The classifier and softmax run in float64: a detection's map is the gradient of its
    probability, and where that saturates (``p ≈ 0.99``, e.g. "crane" on rocket.jpg) float32's
    ``p·(δ - p)·W`` cancels badly: its map is off by ~4e-4 from float64's, above the export's
    1e-4 parity limit. In float64 the float32 pipeline around it stays within ~5e-6."""

    def __init__(self, fc: nn.Linear, stride: int = STRIDE) -> None:
        super().__init__()
        self.stride = stride
        # float64: see the class docstring.
        self.register_buffer("weight", fc.weight.detach().double().clone())  # [K, C]
        self.register_buffer("bias", fc.bias.detach().double().clone()[:, None])  # [K, 1]
        cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("cross", cross.view(1, 1, 3, 3))

    def boxes(self, best: Tensor) -> Tensor:
        """``[N, 4, h·w]`` boxes (cx, cy, w, h) from the best class per cell ``best [N, h, w]``."""
        n, h, w = best.shape
        a = h * w
        flat = best.reshape(n, a)
        same = (flat[:, :, None] == flat[:, None, :]).to(self.cross.dtype)  # [N, A(seed), A(cell)]
        region = torch.eye(a, device=best.device, dtype=self.cross.dtype).expand(n, a, a)
        for _ in range(max(h, w)):
            grown = nn.functional.conv2d(
                region.reshape(n * a, 1, h, w), self.cross, padding=1
            ).reshape(n, a, a)
            region = (grown > 0).to(same.dtype) * same
        s = float(self.stride)
        ys = torch.arange(h, device=best.device, dtype=torch.float32)
        xs = torch.arange(w, device=best.device, dtype=torch.float32)
        y0 = (ys[:, None] * s).expand(h, w).reshape(1, 1, a)
        x0 = (xs[None, :] * s).expand(h, w).reshape(1, 1, a)
        big = float(max(h, w) * self.stride * 2)
        inside = region > 0
        x1 = torch.where(inside, x0, big).amin(dim=2)
        y1 = torch.where(inside, y0, big).amin(dim=2)
        x2 = torch.where(inside, x0 + s, -big).amax(dim=2)
        y2 = torch.where(inside, y0 + s, -big).amax(dim=2)
        return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=1)

    def forward(self, maps: list[Tensor]) -> Tensor:
        (f,) = maps
        n, _, h, w = f.shape
        logits = self.weight @ f.double().flatten(2) + self.bias  # [N, K, h·w]
        probs = torch.softmax(logits, dim=1)
        best = probs.detach().argmax(dim=1).reshape(n, h, w)
        return torch.cat((self.boxes(best), probs.float()), dim=1)


class CellDetector(nn.Module):
    """EfficientNet-Lite0's layers up to the map its average pooling reads (``[N, 1280, h, w]``,
    stride 32), then :class:`CellHead`. Takes the ImageNet-normalized image (the explainer
    normalizes with the mean and std it is given)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = CellHead(backbone._fc)

    def forward(self, x: Tensor) -> Tensor:
        return self.head([self.backbone.extract_features(x)])


def export(out_dir: str, size: int, max_detections: int, threshold: float) -> str:
    """Build the demo detector at ``size x size``, export it to ONNX (verified), return the path."""
    model = CellDetector(load_default((size, size)).model).eval()
    explainer = build_detector(
        model,
        (size, size),
        "gradcam",
        max_detections=max_detections,
        score_threshold=threshold,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    d = explainer.detector
    print(f"detector: family {d.family}, K {d.num_classes}, head {d.head}, strides {d.strides}")
    print(
        f"taps {explainer.layers}, D {max_detections}, score > {threshold}, IoU {d.iou_threshold}"
    )
    result = export_detector(
        explainer,
        out_dir,
        ("onnx",),
        model="DEMO: EfficientNet-Lite0 classifier per stride-32 cell",
        labels=imagenet_labels(),
        label_set="imagenet",
    )
    explainer.remove()
    print(format_rows(result.metadata["parity"]["rows"]))
    return result.paths["onnx"]


def run(model_path: str, photos: list[str], out_dir: str, height: int) -> None:
    """``explain-run --per-detection --sheet`` on ``photos``; prints the detections."""
    exe = os.path.join(os.path.dirname(sys.executable), "explain-run")
    paths = [samples.photo_path(p) for p in photos]
    cmd = [exe, "--model", model_path, "--images", *paths, "--out", out_dir]
    cmd += ["--per-detection", "--sheet", "--sheet-height", str(height), "--overwrite"]
    print("$", " ".join(cmd))
    subprocess.run(cmd, check=True)
    with open(os.path.join(out_dir, "predictions.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            dets = rec.get("detections", rec)
            print(os.path.basename(rec.get("file", "?")), json.dumps(dets))


def correlations(model_path: str, photo: str, size: int) -> None:
    """The pairwise Pearson correlation of the per-detection maps on ``photo`` (ONNX Runtime)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    image = samples.load_rgb(samples.photo_path(photo), (size, size))[None]
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {session.get_inputs()[0].name: image}), strict=True))
    count = int(out["count"][0])
    labels = imagenet_labels()
    heat = out["heatmap"][0, :count].reshape(count, -1)
    print(f"{photo}: {count} detections")
    for j in range(count):
        c, s = int(out["classes"][0, j]), float(out["scores"][0, j])
        box = [round(float(v)) for v in out["boxes"][0, j]]
        print(f"  det{j}: {labels[c]} ({c}) score {s:.3f} box {box}")
    if count > 1:
        corr = np.corrcoef(heat)
        print("  map correlation:\n" + np.array2string(corr, precision=3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/detections.jpg", help="the picture (JPEG)")
    parser.add_argument("--photo", default="chelsea.png", help="the photo the picture shows")
    parser.add_argument("--also", nargs="*", default=["coffee.png"], help="photos only printed")
    parser.add_argument("--size", type=int, default=448, help="export size (a multiple of 32)")
    parser.add_argument("--max-detections", type=int, default=4)
    parser.add_argument("--score-threshold", type=float, default=0.25)
    parser.add_argument("--sheet-height", type=int, default=300)
    parser.add_argument("--keep", metavar="DIR", help="keep the export and run here")
    args = parser.parse_args()
    folder = args.keep or tempfile.mkdtemp(prefix="detection-demo-")
    model_path = export(
        os.path.join(folder, "export"), args.size, args.max_detections, args.score_threshold
    )
    for photo in [args.photo, *args.also]:
        correlations(model_path, photo, args.size)
    run_dir = os.path.join(folder, "run")
    run(model_path, [args.photo], run_dir, args.sheet_height)
    image = cv2.imread(os.path.join(run_dir, "sheet.png"))
    if image.shape[1] > 1600:
        scale = 1600 / image.shape[1]
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    cv2.imwrite(args.out, image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    kb = os.path.getsize(args.out) / 1024
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]}, {kb:.0f} KB)")


if __name__ == "__main__":
    main()
