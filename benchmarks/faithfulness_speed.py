"""What ``--faithfulness`` costs at batch 1 (issue 30, section 5: at most 2.3x the plain export).

Exports the embedded EfficientNet-Lite0 with and without ``--faithfulness`` for each method
asked (ONNX), then times one call of each file on scikit-image's photos, batch 1, ONNX Runtime
on the CPU, the two files interleaved call by call (so load drifts hit both alike); prints and
writes the median milliseconds and their ratio.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/faithfulness_speed.py --work /tmp/fspeed \\
        --out benchmarks/results/faithfulness-speed.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from explain_export.artifact import runtime, samples
from explain_export.artifact.pipeline import OverlayOptions, read
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.model.zoo import load_default

from md_out import emit

CASES = {"cam": None, "gradcam": "_blocks.15"}  # method -> layer (None: the default)


def export(work: str, method: str, layer: str | None, faithfulness: bool) -> str:
    out = os.path.join(work, f"{method}{'-faithful' if faithfulness else ''}")
    if not os.path.exists(os.path.join(out, "explainer.onnx")):
        explainer = build_explainer(load_default().model, layer, method)
        try:
            export_explainer(explainer, out, ("onnx",), faithfulness=faithfulness)
        finally:
            explainer.remove()
    return os.path.join(out, "explainer.onnx")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for the exports (kept and reused)")
    p.add_argument("--out", help="write a Markdown table here")
    p.add_argument("--rounds", type=int, default=5, help="passes over the photos")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    images = [
        read(samples.photo_path(n), (224, 224), OverlayOptions()).input for n in samples.PHOTOS
    ]
    lines = [
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, ORT CPU, "
        f"{args.threads} threads, batch 1, {len(images)} photos x {args.rounds} rounds, "
        f"{time.strftime('%Y-%m-%d')}, load {os.getloadavg()[0]:.1f} at start",
        "",
        "| method | layer | plain ms | --faithfulness ms | ratio |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for method, layer in CASES.items():
        files = [export(args.work, method, layer, f) for f in (False, True)]
        arts = [runtime.load(f, "cpu", args.threads) for f in files]
        for art in arts:  # warm-up
            art.outputs(images[0][None])
        times: list[list[float]] = [[], []]
        for _ in range(args.rounds):
            for image in images:
                for k, art in enumerate(arts):
                    t0 = time.perf_counter()
                    art.outputs(image[None])
                    times[k].append(1000 * (time.perf_counter() - t0))
        plain, faithful = (statistics.median(t) for t in times)
        lines.append(
            f"| {method} | {layer or 'default'} | {plain:.1f} | {faithful:.1f} |"
            f" {faithful / plain:.2f} |"
        )
        print(lines[-1], flush=True)
    lines.append(f"\nload at the end {os.getloadavg()[0]:.1f}; numpy {np.__version__}")
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
