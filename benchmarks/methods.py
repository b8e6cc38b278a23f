"""Every method on the embedded model: its ONNX latency, and one picture of them side by side.

Exports the embedded EfficientNet-Lite0 once per method (ONNX, verified as every export is),
then times ``OnnxExplainer.outputs`` at each batch size: rounds of all methods in turn, so a
busy moment hits them alike, and the median per method; ratios are against ``cam``. With
``--picture`` it draws one photo under every method, as ``explain-run`` draws its overlays
(JET, alpha 0.4), each with the method's name.

    python benchmarks/methods.py --out benchmarks/results/methods-cpu2.json \
        --picture docs/methods.jpg
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import cv2
import numpy as np

from explain_export.artifact import overlay, runtime, samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.maths.methods import METHODS
from explain_export.builder.model.zoo import load_default
from explain_export.errors import UsageError

PICTURE_PHOTO = "chelsea.png"


def export_all(
    folder: str, methods: list[str], layer: str | None = None, class_input: bool = False
) -> dict[str, str]:
    """One verified ONNX export of the embedded model per method, at ``layer`` (default: the
    model's own; none for a method at the image); ``{method: path}``. A method the layer does
    not allow is left out, said. ``class_input``: with the ``class_index`` input (methods that
    explain a class); an export already in ``folder`` is reused."""
    paths = {}
    zoo = load_default()  # one model: each explainer takes its hook off again (remove)
    for method in methods:
        t0 = time.perf_counter()
        spec = METHODS[method]
        at = None if spec.at_image and not spec.layer_map else layer or zoo.layer
        try:
            explainer = build_explainer(zoo.model, at, method)
        except UsageError as exc:
            print(f"left out {method} at {layer}: {exc}", flush=True)
            continue
        out = os.path.join(folder, f"{method}@{layer or 'default'}")
        done = os.path.join(out, "explainer.onnx")
        if os.path.exists(done):
            paths[method] = done
            explainer.remove()
            continue
        takes = class_input and spec.has_class
        paths[method] = export_explainer(explainer, out, ("onnx",), class_input=takes).paths["onnx"]
        explainer.remove()
        print(f"exported {method:<20} in {time.perf_counter() - t0:5.1f}s", flush=True)
    return paths


def time_all(paths: dict[str, str], batches: list[int], rounds: int, threads: int | None):
    """Median ms per call for each method and batch size, over ``rounds`` interleaved rounds."""
    sessions = {m: runtime.load(p, threads=threads) for m, p in paths.items()}
    rng = np.random.default_rng(0)
    result: dict[str, dict[str, float]] = {m: {} for m in paths}
    for batch in batches:
        x = rng.random((batch, 3, 224, 224), dtype=np.float32)
        times: dict[str, list[float]] = {m: [] for m in paths}
        for s in sessions.values():  # warm-up
            for _ in range(3):
                s.outputs(x)
        for _ in range(rounds):
            for m, s in sessions.items():
                t0 = time.perf_counter()
                s.outputs(x)
                times[m].append(1000 * (time.perf_counter() - t0))
        for m in paths:
            result[m][str(batch)] = statistics.median(times[m])
    return result


def picture(groups: list[tuple[str, dict[str, str]]], out: str, per_row: int = 5) -> None:
    """``PICTURE_PHOTO`` under every method, one titled group of rows per layer: overlays at
    the photo's size, each captioned with the method."""
    bgr = cv2.imread(samples.photo_path(PICTURE_PHOTO))
    rgb = samples.load_rgb(samples.photo_path(PICTURE_PHOTO), (224, 224))[None]
    rows = []
    for title, paths in groups:
        panels = []
        for method, path in paths.items():
            heat = runtime.load(path).outputs(rgb)["heatmap"][0, 0]
            heat = cv2.resize(heat, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
            panels.append((method, overlay.overlay(bgr, heat)[1]))
        group = [_captions(panels[i : i + per_row]) for i in range(0, len(panels), per_row)]
        rows += [_title(title, max(r.shape[1] for r in group)), *group]
    jpeg = out.lower().endswith((".jpg", ".jpeg"))
    params = [cv2.IMWRITE_JPEG_QUALITY, 88] if jpeg else [cv2.IMWRITE_PNG_COMPRESSION, 9]
    cv2.imwrite(out, overlay.stack_rows(rows), params)


def _only(paths: dict[str, str], methods: list[str]) -> dict[str, str]:
    return {m: p for m, p in paths.items() if m in methods}


def _title(text: str, width: int) -> np.ndarray:
    """A white strip with ``text`` in bold, ``width`` wide."""
    strip = np.full((28, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.65, (0, 0, 0), 2, cv2.LINE_AA)
    return strip


def _captions(chunk: list[tuple[str, np.ndarray]], height: int = 130, gap: int = 6) -> np.ndarray:
    """Panels side by side, each with its method's name above it."""
    cells = [overlay.sheet_row([image], method, height=height) for method, image in chunk]
    width = sum(c.shape[1] for c in cells) + gap * (len(cells) - 1)
    row = np.full((cells[0].shape[0], width, 3), 255, np.uint8)
    x = 0
    for c in cells:
        row[:, x : x + c.shape[1]] = c
        x += c.shape[1] + gap
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma list (default: all)")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", help="JSON results")
    p.add_argument("--picture", help="write the side-by-side picture here (.png, or .jpg: smaller)")
    p.add_argument(
        "--picture-layer",
        default="_blocks.10",
        help="a second, earlier layer for the picture (default: _blocks.10, 14x14)",
    )
    a = p.parse_args()
    methods = [m for m in a.methods.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="methods-") as folder:
        paths = export_all(folder, methods)
        if a.picture:
            layered = [m for m in methods if not METHODS[m].at_image]
            early = export_all(folder, layered, a.picture_layer)
            groups = [
                ("the default layer (_avg_pooling:input, 7x7)", _only(paths, layered)),
                (f"an earlier layer ({a.picture_layer}, 14x14)", early),
                (
                    "pixel-level: the gradient at the image (guided-gradcam: x Grad-CAM at 7x7)",
                    _only(paths, [m for m in methods if METHODS[m].at_image]),
                ),
            ]
            picture(groups, a.picture)
            print(f"wrote {a.picture}")
        batches = [int(b) for b in a.batch_sizes.split(",")]
        ms = time_all(paths, batches, a.rounds, a.threads)
    import onnxruntime
    import torch

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "model": "EfficientNet-Lite0 (embedded), 224x224, ONNX Runtime CPU, OnnxExplainer",
        "rounds": a.rounds,
        "median_ms": ms,
    }
    print("| method | " + " | ".join(f"batch {b} (ms)" for b in batches) + " | vs cam at 1 |")
    print("|---|" + "---|" * (len(batches) + 1))
    base = ms.get("cam", {}).get(str(batches[0]))
    for m, row in ms.items():
        ratio = f"{row[str(batches[0])] / base:.2f}x" if base else ""
        print(f"| `{m}` | " + " | ".join(f"{row[str(b)]:.1f}" for b in batches) + f" | {ratio} |")
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
