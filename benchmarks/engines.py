"""Throughput of ``explain-run --engine local`` against ``--engine ray`` on one machine.

Builds a folder tree of N images (links to scikit-image's photos, repeated, 500 per subfolder)
and runs each engine as a user would, one after the other, each into a fresh output folder:
images/s from the command's wall time. A second, small run of each engine (``--small`` images)
gives its fixed cost (start-up: Python, the model, for Ray its local instance and actors), so
the steady rate is ``(N - small) / (t_N - t_small)``. Other processes' CPU use during each run
just before each run is recorded from /proc/stat (``cpu_busy_before``).

    python benchmarks/engines.py --model explainer/explainer.onnx --images 2000 \
        --out benchmarks/results/engines-cpu2.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from explain_export.artifact import samples

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "astronaut.png")


def busy_before(seconds: float = 1.0) -> float:
    """Share of all CPUs busy during ``seconds`` of idle waiting (other processes' load)."""

    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values) - values[3] - values[4], sum(values)

    b0, t0 = ticks()
    time.sleep(seconds)
    b1, t1 = ticks()
    return round((b1 - b0) / max(1, t1 - t0), 3)


def make_tree(root: str, n: int) -> None:
    for i in range(n):
        sub = os.path.join(root, f"part{i // 500:03d}")
        os.makedirs(sub, exist_ok=True)
        name = PHOTOS[i % len(PHOTOS)]
        os.symlink(samples.photo_path(name), os.path.join(sub, f"{i:06d}_{name}"))


def timed(args: list[str]) -> dict[str, float]:
    others = busy_before()
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-2000:]}")
    return {"wall_s": round(wall, 3), "cpu_busy_before": others}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in (
        "explain-export",
        "onnxruntime-gpu",
        "onnxruntime",
        "ray",
        "opencv-python-headless",
    ):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="explainer/explainer.onnx")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--small", type=int, default=40)
    p.add_argument("--workers", default="1,2", help="comma list of --workers for --engine ray")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True, help="JSON file for the results")
    a = p.parse_args()

    base = [sys.executable, "-m", "explain_export.cli.run", "--model", os.path.abspath(a.model)]
    base += ["--batch-size", str(a.batch_size), "--quiet"]
    engines = [("local", [])] + [
        (f"ray-{w}", ["--engine", "ray", "--workers", w]) for w in a.workers.split(",")
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        big, small = os.path.join(tmp, "big"), os.path.join(tmp, "small")
        make_tree(big, a.images)
        make_tree(small, a.small)
        for name, extra in engines:
            for label, folder, n in (("small", small, a.small), ("big", big, a.images)):
                out = os.path.join(tmp, f"out-{name}-{label}")
                run = timed([*base, *extra, "--images", folder, "--out", out])
                run.update(engine=name, images=n)
                print(json.dumps(run), flush=True)
                rows.append(run)
    summary = []
    for name, _ in engines:
        s, b = (
            next(r for r in rows if r["engine"] == name and r["images"] == n)
            for n in (a.small, a.images)
        )
        summary.append(
            {
                "engine": name,
                "images": a.images,
                "wall_s": b["wall_s"],
                "images_per_s": round(a.images / b["wall_s"], 1),
                "fixed_s": round(
                    s["wall_s"] - a.small * (b["wall_s"] - s["wall_s"]) / (a.images - a.small), 2
                ),
                "steady_images_per_s": round((a.images - a.small) / (b["wall_s"] - s["wall_s"]), 1),
            }
        )
    result = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "python": platform.python_version(),
        "versions": _versions(),
        "command": " ".join(sys.argv),
        "photos": PHOTOS,
        "runs": rows,
        "summary": summary,
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    for row in summary:
        print(row)


if __name__ == "__main__":
    main()
