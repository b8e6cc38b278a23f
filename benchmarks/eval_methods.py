"""Every method that explains a class, on the embedded model, scored by ``explain-eval`` on the
28 photos scikit-image ships (issue 30, section 3), and the time ``explain-eval`` takes for one
method (its goal: 20 steps over the 28 photos in under a minute on the 2-core CPU).

Exports the embedded EfficientNet-Lite0 once per method with ``--class-input`` (so the masked
image's map is always the class's own: every image gets a coherency and an ADCC), reusing the
exports already in ``--models``, then runs ``explain-eval`` on all of them in one table, and
once more on ``cam`` alone, timed.

    python benchmarks/eval_methods.py --models /tmp/eval-models \\
        --out benchmarks/results/eval-methods-cpu2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from methods import export_all

from explain_export.builder.maths.methods import METHODS
from explain_export.cli.eval import main as explain_eval


def photos_folder() -> str:
    import skimage

    return os.path.join(os.path.dirname(skimage.__file__), "data")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", required=True, help="where the exports are kept (reused)")
    p.add_argument("--out", required=True, help="explain-eval's output folder")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", help="comma-separated (default: every method with a class)")
    args = p.parse_args(argv)
    wanted = (
        args.methods.split(",")
        if args.methods
        else [m for m, spec in METHODS.items() if spec.has_class and m != "segeigencam"]
    )
    paths = export_all(args.models, wanted, class_input=True)
    common = ["--images", photos_folder(), "--steps", str(args.steps)]
    common += ["--threads", str(args.threads), "--overwrite"]
    t0 = time.perf_counter()
    code = explain_eval(["--model", paths["cam"], *common, "--out", args.out + "-cam", "--quiet"])
    one = time.perf_counter() - t0
    print(f"explain-eval, cam alone, {args.steps} steps, 28 photos: {one:.1f} s (exit {code})")
    models = [a for m in paths.values() for a in ("--model", m)]
    t0 = time.perf_counter()
    code = explain_eval([*models, *common, "--out", args.out])
    every = time.perf_counter() - t0
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "timing.json"), "w") as f:
        json.dump(
            {
                "cam_alone_s": round(one, 1),
                "all_methods_s": round(every, 1),
                "methods": list(paths),
                "steps": args.steps,
                "threads": args.threads,
                "loadavg": os.getloadavg(),
            },
            f,
            indent=1,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
