"""What one explain-serve request costs in memory, for the largest images a default server takes.

Each case runs in a fresh process: open the model (ONNX Runtime, 1 thread), answer a small photo
once (warm-up: the session's arenas, OpenCV's buffers), reset the process's peak resident size
(``/proc/self/clear_refs``), then answer the case's body as a replica does: :func:`app.prepare`
(header check, decode no larger than ``--max-overlay-side``, fit), one model call,
:func:`app.answer` (map back, blend, encode both PNGs, base64). The figure is the peak resident
size (``VmHWM``) over the warm baseline (``VmRSS`` before): everything the request held at its
worst moment, OpenCV's and libpng's buffers included (which tracemalloc does not see).

    python benchmarks/request_memory.py --model explainer/explainer.onnx \\
        --out benchmarks/results/request-memory.json

Cases: 8160 x 6120 (49.9 MP, a 50 MP phone's photo, just under the default --max-pixels) as an
8-bit RGB PNG, a 16-bit RGBA PNG (OpenCV decodes it at 16 bits, then it is converted), and a
JPEG; an 8000 x 6000 JPEG; each with the default cap (4096) and with none
(``--max-overlay-side 0``). Linux only (``/proc``); outside the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import cv2
import numpy as np

CACHE = os.path.join(os.environ.get("TMPDIR", "/tmp"), "explain-export-soak")
CASES = {  # name: (h, w, extension, 16-bit RGBA)
    "png-50mp": (6120, 8160, ".png", False),
    "png16-rgba-50mp": (6120, 8160, ".png", True),
    "jpeg-50mp": (6120, 8160, ".jpg", False),
    "jpeg-48mp": (6000, 8000, ".jpg", False),
}


def make(name: str) -> str:
    """The case's file, made once from a photo enlarged to its size (smooth, so a PNG of it
    stays near the default 64 MB --max-body-mb; the limit is raised here for the larger)."""
    from explain_export.artifact import samples

    h, w, ext, deep = CASES[name]
    path = os.path.join(CACHE, f"{name}{ext}")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        tile = cv2.imread(samples.photo_path("coffee.png"))
        image = cv2.resize(tile, (w, h), interpolation=cv2.INTER_CUBIC)
        if deep:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA).astype(np.uint16) * 257
        ok, buf = cv2.imencode(ext, image)
        assert ok
        with open(path + ".part", "wb") as f:
            f.write(buf.tobytes())
        os.replace(path + ".part", path)
    return path


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith(field + ":")) * 1024


def measure(model_path: str, path: str, max_side: int) -> dict:
    """One case, in this process (run it in a fresh one)."""
    from explain_export.artifact import samples
    from explain_export.artifact.serve import app

    model = app.open_model(model_path, threads=1)
    opts = app.ServeOptions(max_overlay_side=max_side, max_body_bytes=2**30)
    query = app.Query(overlay=True, heatmap=True)

    def one(body: bytes) -> dict:
        image = app.prepare(body, model, opts)
        (out,) = app.run_model(model, [image.input])
        return app.answer(model, image, out.logits, out.heatmaps, query, opts, 1, out.classes)

    with open(samples.photo_path("chelsea.png"), "rb") as f:
        one(f.read())
    with open(path, "rb") as f:
        body = f.read()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    base = _status("VmRSS")
    t0 = time.perf_counter()
    answer = one(body)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    return {
        "file": os.path.basename(path),
        "body_mb": round(len(body) / 2**20, 1),
        "max_overlay_side": max_side,
        "size": [answer["height"], answer["width"]],
        "drawn": [
            answer.get("drawn_height", answer["height"]),
            answer.get("drawn_width", answer["width"]),
        ],
        "json_mb": round(len(json.dumps(answer)) / 2**20, 1),
        "peak_over_baseline_mb": round((peak - base) / 2**20),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an explainer.onnx")
    parser.add_argument("--out", help="write the JSON rows here")
    parser.add_argument("--one", nargs=2, metavar=("FILE", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.one[0], int(args.one[1]))))
        return
    rows = []
    for name in CASES:
        path = make(name)
        for side in (4096, 0):
            cmd = [sys.executable, __file__, "--model", args.model, "--one", path, str(side)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
