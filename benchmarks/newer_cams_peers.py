"""Our exported newer CAMs (fem, kpcacam, segeigencam, ``--fuse product``) against
pytorch-grad-cam 1.5.7's own classes (FEM, KPCA_CAM, SegEigenCAM, RefineCAM), at the same tensor.

Not part of the test suite: it needs ``grad-cam`` (and scikit-learn, which its KPCA_CAM calls),
so it runs in the peers venv (``make peers``; see :mod:`vs_pytorch_grad_cam`, whose helpers it
uses)::

    .peers/bin/python benchmarks/newer_cams_peers.py --out /tmp/newer_out

The embedded model (EfficientNet-Lite0, ImageNet weights) on the bundled photos at 224x224. Ours:
``build_explainer`` + ``export_explainer`` to ONNX, run by ``artifact.runtime``. Theirs: the
class on a second copy of the model, the same target module, the same normalized input,
``ClassifierOutputTarget`` of our logits' argmax (for the methods with a class). The default
layer ``_avg_pooling:input`` is the second call of ``_swish``, so pytorch-grad-cam gets the
Identity of :func:`vs_pytorch_grad_cam.pgc_target` there. RefineCAM runs over ``_blocks.10`` and
``_blocks.15`` with its default base method (GradCAMPlusPlus) and with GradCAM, against ours with
``--method gradcam++`` / ``gradcam``, ``--layer _blocks.10 --layer _blocks.15 --fuse product``.
Prints a markdown table (per row: the per-photo Pearson correlations' min and median, the
largest absolute difference of the 224x224 maps); writes
``results.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vs_pytorch_grad_cam import load_photos, pearson, pgc_target, run_onnx

SIZE = (224, 224)
DEFAULT = "_avg_pooling:input"
PRE = "<pre:_avg_pooling>"
REFINE_LAYERS = ["_blocks.10", "_blocks.15"]
TARGET = 0.99
# (our method, our layers, fuse, their class, their layers, their base method for RefineCAM)
CASES: list[tuple[str, list[str], str | None, str, list[str], str | None]] = [
    ("fem", [DEFAULT], None, "FEM", [PRE], None),
    ("fem", ["_blocks.15"], None, "FEM", ["_blocks.15"], None),
    ("kpcacam", [DEFAULT], None, "KPCA_CAM", [PRE], None),
    ("kpcacam", ["_blocks.15"], None, "KPCA_CAM", ["_blocks.15"], None),
    ("kpcacam", ["_blocks.10"], None, "KPCA_CAM", ["_blocks.10"], None),
    ("segeigencam", [DEFAULT], None, "SegEigenCAM", [PRE], None),
    ("segeigencam", ["_blocks.15"], None, "SegEigenCAM", ["_blocks.15"], None),
    ("gradcam++", REFINE_LAYERS, "product", "RefineCAM", REFINE_LAYERS, "GradCAMPlusPlus"),
    ("gradcam", REFINE_LAYERS, "product", "RefineCAM", REFINE_LAYERS, "GradCAM"),
]


def ours(model: torch.nn.Module, case: tuple, out_dir: str) -> str:
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

    method, layers, fuse = case[:3]
    layer = layers[0] if len(layers) == 1 else layers
    explainer = build_explainer(model, layer, method, input_size=SIZE, fuse=fuse)
    try:
        return export_explainer(explainer, out_dir, ("onnx",)).paths["onnx"]
    finally:
        explainer.remove()


def theirs(model: torch.nn.Module, case: tuple, x: torch.Tensor, classes: np.ndarray) -> np.ndarray:
    import pytorch_grad_cam
    from pytorch_grad_cam.refine_cam import RefineCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    name, where, base = case[3:]
    targets_and_handles = [pgc_target(model, w) for w in where]
    layers = [t for t, _ in targets_and_handles]
    try:
        targets = [ClassifierOutputTarget(int(c)) for c in classes]
        if name == "RefineCAM":
            cam = RefineCAM(model, layers, base_method=getattr(pytorch_grad_cam, base))
            return np.asarray(cam(x, targets), dtype=np.float32)
        with getattr(pytorch_grad_cam, name)(model=model, target_layers=layers) as cam:
            return np.asarray(cam(input_tensor=x, targets=targets), dtype=np.float32)
    finally:
        for _, handle in targets_and_handles:
            if handle is not None:
                handle.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/newer_out", help="folder for ONNX files + JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    from explain_export.builder.model.zoo import load_default
    from explain_export.builder.plan import IMAGENET_MEAN, IMAGENET_STD

    pristine = load_default(SIZE).model.eval()
    images, names = load_photos()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    x = (torch.from_numpy(images) - mean) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rows: list[dict[str, Any]] = []
    for i, case in enumerate(CASES):
        t0 = time.perf_counter()
        path = ours(copy.deepcopy(pristine), case, os.path.join(args.out, str(i)))
        logits, heat = run_onnx(path, images, args.threads)
        classes = logits.argmax(axis=1)
        gray = theirs(copy.deepcopy(pristine), case, x, classes)
        corr = [pearson(o[0], t) for o, t in zip(heat, gray, strict=True)]
        rows.append(
            {
                "ours": f"{case[0]} @ {' + '.join(case[1])}"
                + (f" --fuse {case[2]}" if case[2] else ""),
                "theirs": case[3] + (f"({case[5]})" if case[5] else ""),
                "photos": names,
                "corr": corr,
                "min": float(min(corr)),
                "median": float(np.median(corr)),
                "max_abs_diff": float(np.abs(heat[:, 0].astype(np.float64) - gray).max()),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(f"{rows[-1]['ours']}: {[round(c, 5) for c in corr]}", file=sys.stderr)
    lines = [
        "| ours | pytorch-grad-cam 1.5.7 | min corr | median corr | max abs diff | ≥ 0.99 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ok = "yes" if r["min"] >= TARGET else "**no**"
        lines.append(
            f"| {r['ours']} | {r['theirs']} | {r['min']:.7f} | {r['median']:.7f} | "
            f"{r['max_abs_diff']:.1e} | {ok} |"
        )
    print("\n".join(lines))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return 0 if all(r["min"] >= TARGET for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
