#!/usr/bin/env python
"""What D per-detection maps cost on torchvision's ``fasterrcnn_mobilenet_v3_large_320_fpn``
(random init, prepared as in :mod:`torchvision_rcnn`), batch 1, on ONNX Runtime's CPU provider,
against pytorch-grad-cam in eager mode (issue 29, section 5):

- (a) ``ort_nms``: the same explainer's detections alone (``bench.detection.NmsOnly``, i.e.
  ``TwoStageExplainer.detections``: transform, backbone, RPN, RoI heads, class-aware NMS; no
  explanation branch, no maps), exported with ``bench.ort.export_onnx`` as explain-bench
  exports its baseline (the 2026-12-07 runs used this script's own copy of the same steps);
- (b) ``ort_gradcam``: the explainer with D Grad-CAM maps, written as ``export_detector`` writes
  it (``stage_files``; ``torchvision_rcnn.py`` verifies the same export);
- (c) ``pgc_eager``: pytorch-grad-cam's ``GradCAM`` + ``FasterRCNNBoxScoreTarget`` on the eager
  model, once per detection for the first D of the model's own eager detections (the model's
  weights require grad, as a user's do), the eager detection run that gives the targets
  included (it alone: ``eager_detect``).

One process, ``torch.set_num_threads(T)`` and ORT sessions of T threads; after a warm-up, R
rounds of (a, b, the eager detection run) in turn, so load drifts hit them alike, then (c) in
its own fewer rounds (10 forward and backward passes of the whole model a round): the median per
variant; b/a as the median of the round-by-round ratios, c/b as the ratio of the medians.

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD .peers/bin/python benchmarks/torchvision_rcnn_speed.py \\
        --out benchmarks/results/torchvision-rcnn-speed
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from torchvision_rcnn import MODELS, _layers, _read, photos, prepare

from explain_export.artifact.runtime import ort_session
from explain_export.bench.detection import NmsOnly
from explain_export.bench.ort import export_onnx
from explain_export.builder.detect_build import build_detector
from explain_export.builder.export.detection import stage_files

NAME = "fasterrcnn_mobilenet_v3_large_320_fpn"


def _ort(path: str, threads: int, image: Tensor):
    session = ort_session(path, "cpu", threads)
    feed = {"image": image.numpy()}
    return lambda: session.run(None, feed)


def _pgc(model: nn.Module, image: Tensor, d: int):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    with torch.no_grad():
        maps = model.backbone(model.transform([image[0]])[0].tensors)
    cam = GradCAM(model=model, target_layers=_layers(model, _read(model, maps)))

    def detect() -> dict:
        with torch.no_grad():
            return model(image)[0]

    def maps10() -> list:
        own = detect()
        k = min(d, len(own["labels"]))
        targets = [
            FasterRCNNBoxScoreTarget([int(own["labels"][j])], [own["boxes"][j].numpy()])
            for j in range(k)
        ]
        return [cam(image, targets=[t]) for t in targets]

    return detect, maps10


def _rounds(calls: dict, warmup: int, rounds: int) -> dict[str, list[float]]:
    """Each call once per round, in turn; the seconds of the rounds after ``warmup``."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(warmup + rounds):
        for name, call in calls.items():
            t = time.perf_counter()
            call()
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
            print(r, name, round((time.perf_counter() - t) * 1e3, 1), flush=True)
    return times


def _paired(x: list[float], y: list[float]) -> float:
    """The median of the round-by-round ratios ``y / x``."""
    return statistics.median(b / a for a, b in zip(x, y, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pgc-rounds", type=int, default=3, help="pgc: ~a minute a round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-detections", type=int, default=10)
    parser.add_argument("--out", help="write OUT.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size, kwargs = MODELS[NAME]
    d = args.max_detections
    image = photos(size)[:1]
    explainer = build_detector(prepare(NAME, size, kwargs), size, max_detections=d)
    report: dict = {"model": NAME, "input": list(size), "d": d, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        example = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
        t0 = time.perf_counter()
        a_path = os.path.join(tmp, "ort_nms.onnx")
        with torch.no_grad():
            export_onnx(
                NmsOnly(explainer).eval(),
                example,
                a_path,
                18,
                ["boxes", "scores", "classes", "count"],
            )
        report["export_nms_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        b_path = stage_files(explainer, tmp, ("onnx",), 18, print)["onnx"]
        report["export_gradcam_s"] = round(time.perf_counter() - t0, 1)
        report["onnx_mb"] = {
            "ort_nms": round(os.path.getsize(a_path) / 2**20, 1),
            "ort_gradcam": round(os.path.getsize(b_path) / 2**20, 1),
        }
        a, b = _ort(a_path, args.threads, image), _ort(b_path, args.threads, image)
        ra, rb = a(), b()
        report["same_detections"] = bool((ra[2] == rb[2]).all() and abs(ra[1] - rb[1]).max() < 1e-4)
        report["count"] = int(ra[3][0])
        detect, maps10 = _pgc(prepare(NAME, size, kwargs), image, d)
        calls = {"ort_nms": a, "ort_gradcam": b, "eager_detect": detect}
        times = _rounds(calls, args.warmup, args.rounds)
        times.update(_rounds({"pgc_eager": maps10}, 1, args.pgc_rounds))
    report["rounds"] = {k: len(v) for k, v in times.items()}
    report["median_ms"] = {k: round(statistics.median(v) * 1e3, 1) for k, v in times.items()}
    med = report["median_ms"]
    report["b_over_a"] = round(_paired(times["ort_nms"], times["ort_gradcam"]), 2)
    report["c_over_b"] = round(med["pgc_eager"] / med["ort_gradcam"], 1)
    report["load_avg"] = os.getloadavg()
    report["times_ms"] = {k: [round(t * 1e3, 1) for t in v] for k, v in times.items()}
    print(json.dumps({k: v for k, v in report.items() if k != "times_ms"}, indent=1))
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
