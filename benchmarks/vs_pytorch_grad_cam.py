"""Our exported CAM-family heatmaps against pytorch-grad-cam's own classes, at the same tensor.

Not part of the test suite, and nothing imports it: it needs ``grad-cam`` and ``torchvision``,
which the project must not depend on, so it runs in the venv that ``make peers`` builds
(``.peers/``: torch 2.14.1, torchvision 0.29.1, grad-cam 1.5.7, onnxruntime, this package
installed ``--no-deps -e .``; the Makefile has the pins)::

    make peers && .peers/bin/python benchmarks/vs_pytorch_grad_cam.py --out /tmp/pgc_out

For each model x method it exports our explainer to ONNX with the library API
(``build_explainer`` + ``export_explainer``), runs it with ``artifact.runtime`` on the four
bundled photos (float32 ``[4,3,224,224]`` RGB in [0,1]), runs pytorch-grad-cam's class for the
method on a second copy of the same model (same weights), same target module, same input after
ImageNet normalization (which our graph does inside), with ``ClassifierOutputTarget`` of our
logits' argmax, and reports the smallest per-image Pearson correlation and the largest absolute
difference between the two ``224x224`` heatmaps. Markdown on stdout, JSON in ``--out``.

Models (random weights where torchvision; nothing is downloaded):

- ``efficientnet-lite0``: the embedded model (``zoo.load_default``), ours at its default layer
  ``_avg_pooling:input``;
- ``resnet50``: ``torchvision.models.resnet50(weights=None)``, ``layer4`` (feeds ``avgpool``);
- ``convnext_tiny``: ``torchvision.models.convnext_tiny(weights=None)``, ``features.7`` (feeds
  ``avgpool``; the head is LayerNorm2d + Linear, so ``cam`` is refused there and ``auto`` would
  take ``gradcam``).

The tapped tensor. pytorch-grad-cam hooks a module's *output* and, for target layer ``i``, uses
``activations[i]`` and ``gradients[i]`` (gradients are prepended in backward order), so a module
that runs more than once is silently explained at its *first* call: the module must run exactly once
per forward. ResNet's ``layer4`` and ConvNeXt's ``features.7`` run once, and their outputs are
exactly what our taps ``layer4`` and ``features.7`` take. EfficientNet-Lite0's
``_avg_pooling:input`` is the output of ``_swish`` (ReLU6), which runs twice (stem, 32x112x112, and
head, 1280x7x7): hooked as it is, pytorch-grad-cam returns the stem's Grad-CAM (checked: it records
both calls and uses index 0). So on the pytorch-grad-cam side a forward *pre*-hook on
``_avg_pooling`` passes the pooling's input through a stand-alone ``nn.Identity`` (not registered as
a submodule, so the model's module tree is unchanged) and hands pytorch-grad-cam that Identity as
the target layer. Its output is the same tensor object, called once, and the gradient that reaches
it is exactly the one through the pooling, i.e. ``∂y_c/∂A`` at our tap. Ours keeps its default
``_avg_pooling:input`` (equivalently ``_swish@1``), so ``cam`` stays exact.

Pipelines. pytorch-grad-cam: map -> ReLU -> per-image min-max (``/ (max + 1e-7)``) -> cv2
``INTER_LINEAR`` resize -> min-max again (its ``aggregate_multi_layers``). Ours: map (ReLU'd)
-> bilinear resize (``align_corners=False``, the same sampling) -> min-max. Min-max is affine and
the resize's weights sum to 1, so the two orders agree up to rounding.

``cam`` is compared with ``GradCAM``: at a map that feeds GAP + Linear, ``α_k = W[c,k]/hw``, the
same map up to a positive factor. EigenCAM's sign is the SVD's and arbitrary; ours flips the
projection where ``|min| > |max|``. For ``eigencam`` and ``eigengradcam`` the table also gives
``corr (aligned)``: pytorch-grad-cam's raw projection (recorded from its ``get_cam_image``) with
that same flip, then its own ReLU / ``scale_cam_image`` pipeline.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
import traceback
from typing import Any

import numpy as np
import torch
from torch import nn

MODELS = ("efficientnet-lite0", "resnet50", "convnext_tiny")
# our method -> pytorch-grad-cam class name (cam: GradCAM, equal at GAP + Linear)
PGC_CLASS = {
    "cam": "GradCAM",
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "gradcam-elementwise": "GradCAMElementWise",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
}
METHODS = tuple(PGC_CLASS)
EIGEN = ("eigencam", "eigengradcam")
SIZE = (224, 224)
TARGET = 0.999


def build_model(name: str, seed: int) -> tuple[nn.Module, str, str]:
    """``(model in eval mode, our layer spec, the module pytorch-grad-cam hooks, by name)``;
    the name ``"<pre:_avg_pooling>"`` means the Identity trick (see the docstring)."""
    torch.manual_seed(seed)
    if name == "efficientnet-lite0":
        from explain_export.builder.model.zoo import load_default

        return load_default(SIZE).model.eval(), "_avg_pooling:input", "<pre:_avg_pooling>"
    import torchvision

    if name == "resnet50":
        return torchvision.models.resnet50(weights=None).eval(), "layer4", "layer4"
    if name == "convnext_tiny":
        return torchvision.models.convnext_tiny(weights=None).eval(), "features.7", "features.7"
    raise SystemExit(f"unknown model {name}; choose from {', '.join(MODELS)}")


def pgc_target(model: nn.Module, where: str) -> tuple[nn.Module, Any]:
    """The module pytorch-grad-cam hooks, and a hook handle to remove afterwards (or None)."""
    if where.startswith("<pre:"):
        pool = model.get_submodule(where[len("<pre:") : -1])
        probe = nn.Identity()  # called once, on exactly the tensor the pooling reads

        def pass_through(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (probe(args[0]), *args[1:])

        return probe, pool.register_forward_pre_hook(pass_through)
    return model.get_submodule(where), None


def load_photos() -> tuple[np.ndarray, list[str]]:
    from explain_export.artifact import samples

    names = list(samples.PHOTOS)
    images = np.stack([samples.load_rgb(samples.photo_path(p), SIZE) for p in names])
    return images.astype(np.float32), names


def ours(model: nn.Module, layer: str, method: str, out_dir: str, threads: int) -> dict[str, Any]:
    """Export our explainer to ONNX and return its plan and the ONNX file path."""
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

    t0 = time.perf_counter()
    explainer = build_explainer(model, layer, method, input_size=SIZE)
    try:
        result = export_explainer(explainer, out_dir, ("onnx",))
    finally:
        explainer.remove()
    return {
        "path": result.paths["onnx"],
        "plan_layer": explainer.plan.layer,
        "plan_method": explainer.plan.method,
        "feature_shape": list(explainer.plan.feature_shape),
        "export_s": round(time.perf_counter() - t0, 1),
    }


def run_onnx(path: str, images: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
    from explain_export.artifact import runtime

    out = runtime.load(path, threads=threads).outputs(images)
    return out["logits"], out["heatmap"]


def recording(cls: type) -> type:
    """``cls`` that keeps each ``get_cam_image`` result (the raw map, before its ReLU)."""

    class Recording(cls):  # type: ignore[misc, valid-type]
        raw: np.ndarray | None = None
        features: np.ndarray | None = None
        grads: np.ndarray | None = None

        def get_cam_image(
            self,
            input_tensor: Any,
            target_layer: Any,
            targets: Any,
            activations: Any,
            grads: Any,
            eigen_smooth: bool = False,
        ) -> np.ndarray:
            cam = super().get_cam_image(
                input_tensor, target_layer, targets, activations, grads, eigen_smooth
            )
            self.raw = np.array(cam, dtype=np.float32, copy=True)
            self.features = np.array(activations, dtype=np.float32, copy=True)
            if grads is not None:
                self.grads = np.array(grads, dtype=np.float32, copy=True)
            return cam

    Recording.__name__ = f"Recording{cls.__name__}"
    return Recording


def theirs(
    model: nn.Module, where: str, method: str, x: torch.Tensor, classes: np.ndarray
) -> dict[str, Any]:
    """pytorch-grad-cam's grayscale maps ``[N,H,W]``, its raw map ``[N,h,w]``, its logits."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = recording(getattr(pytorch_grad_cam, PGC_CLASS[method]))
    target, handle = pgc_target(model, where)
    try:
        cam = cls(model=model, target_layers=[target])
        with cam:
            targets = [ClassifierOutputTarget(int(c)) for c in classes]
            gray = cam(input_tensor=x, targets=targets)
            logits = cam.outputs.detach().cpu().numpy()
    finally:
        if handle is not None:
            handle.remove()
    return {
        "gray": np.asarray(gray, dtype=np.float32),
        "raw": cam.raw,
        "features": cam.features,
        "grads": cam.grads,
        "logits": logits,
    }


def _projection64(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-grad-cam's ``get_2d_projection`` in float64, with our sign rule; and each image's
    ``σ₂/σ₁`` (how fast a power iteration converges: its error shrinks like that ratio^(2K))."""
    maps, ratios = [], []
    for a in x.astype(np.float64):
        flat = a.reshape(a.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        _, sv, vt = np.linalg.svd(flat, full_matrices=False)
        proj = (flat @ vt[0]).reshape(a.shape[1:])
        if abs(proj.min()) > abs(proj.max()):
            proj = -proj
        maps.append(proj)
        ratios.append(float(sv[1] / sv[0]) if sv[0] > 0 else float("nan"))
    return np.stack(maps), np.array(ratios)


def reference64(method: str, a: np.ndarray, g: np.ndarray | None) -> dict[str, Any]:
    """The method's map in float64 from pytorch-grad-cam's own ``A`` and ``g`` (its formulas and
    eps, the eigen methods with our sign rule), through pytorch-grad-cam's tail. It tells which
    side a shortfall comes from: rounding (both near it) or a formula (one far from it)."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    a = a.astype(np.float64)
    g = None if g is None else g.astype(np.float64)
    extra: dict[str, Any] = {}
    s = a.sum(axis=(2, 3), keepdims=True)
    if method in ("cam", "gradcam"):
        raw = (g.mean(axis=(2, 3), keepdims=True) * a).sum(axis=1)
    elif method == "gradcam++":
        g2 = g * g
        aij = np.where(g != 0, g2 / (2 * g2 + s * g2 * g + 1e-6), 0.0)
        raw = ((np.maximum(g, 0) * aij).sum(axis=(2, 3), keepdims=True) * a).sum(axis=1)
        extra["eps_share"] = float(np.median(1e-6 / (np.abs(2 * g2 + s * g2 * g) + 1e-6)[g != 0]))
    elif method == "xgradcam":
        raw = ((g * a / (s + 1e-7)).sum(axis=(2, 3), keepdims=True) * a).sum(axis=1)
        extra["min_abs_channel_sum"] = float(np.abs(s).min())
    elif method == "hirescam":
        raw = (g * a).sum(axis=1)
    elif method == "gradcam-elementwise":
        raw = np.maximum(g * a, 0).sum(axis=1)
    elif method == "layercam":
        raw = (np.maximum(g, 0) * a).sum(axis=1)
    elif method in EIGEN:
        raw, ratios = _projection64(a if method == "eigencam" else g * a)
        extra["sigma2_over_sigma1"] = ratios.tolist()
    else:
        raise ValueError(method)
    scaled = scale_cam_image(np.maximum(raw, 0), (SIZE[1], SIZE[0]))
    return {"gray": scale_cam_image(np.maximum(scaled, 0)), **extra}


def sign_aligned(raw: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's pipeline on its raw map with our sign rule (flip if |min| > |max|)."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    flip = np.abs(raw.min(axis=(1, 2))) > np.abs(raw.max(axis=(1, 2)))
    aligned = np.where(flip[:, None, None], -raw, raw)
    scaled = scale_cam_image(np.maximum(aligned, 0), (SIZE[1], SIZE[0]))  # cv2: (W, H)
    return scale_cam_image(np.maximum(scaled, 0))  # aggregate_multi_layers, one layer


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    if den == 0:
        return float("nan")
    return float((a * b).sum() / den)


def compare(ours_maps: np.ndarray, their_maps: np.ndarray) -> dict[str, Any]:
    ours2 = ours_maps[:, 0]
    corr = [pearson(o, t) for o, t in zip(ours2, their_maps, strict=True)]
    return {
        "corr": corr,
        "min_corr": min(corr, key=lambda c: -2.0 if np.isnan(c) else c),
        "max_abs_diff": float(np.abs(ours2.astype(np.float64) - their_maps).max()),
    }


def one(
    name: str,
    method: str,
    pristine: nn.Module,
    layer: str,
    where: str,
    images: np.ndarray,
    x: torch.Tensor,
    out: str,
    threads: int,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model": name,
        "method": method,
        "layer": layer,
        "pgc_layer": where,
        "pgc_class": PGC_CLASS[method],
    }
    try:
        info = ours(
            copy.deepcopy(pristine), layer, method, os.path.join(out, "onnx", name, method), threads
        )
    except Exception as exc:  # record the one-line error and go on
        row["error"] = (
            f"export: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
        return row
    row.update(info)
    logits, heat = run_onnx(info["path"], images, threads)
    classes = logits.argmax(axis=1)
    got = theirs(copy.deepcopy(pristine), where, method, x, classes)
    row["classes"] = classes.tolist()
    row["logits_max_abs_diff"] = float(np.abs(logits - got["logits"]).max())
    row["top1_agree"] = bool((got["logits"].argmax(axis=1) == classes).all())
    row.update(compare(heat, got["gray"]))
    ref = reference64(method, got["features"], got["grads"])
    ref_gray = ref.pop("gray")
    row["min_corr_ours_vs_ref64"] = compare(heat, ref_gray)["min_corr"]
    their = sign_aligned(got["raw"]) if method in EIGEN else got["gray"]
    row["min_corr_pgc_vs_ref64"] = compare(their[:, None], ref_gray)["min_corr"]
    row.update(ref)
    if method in EIGEN and got["raw"] is not None:
        aligned = compare(heat, sign_aligned(got["raw"]))
        row["corr_aligned"] = aligned["corr"]
        row["min_corr_aligned"] = aligned["min_corr"]
        row["max_abs_diff_aligned"] = aligned["max_abs_diff"]
        raw = got["raw"]
        row["pgc_flipped"] = (np.abs(raw.min(axis=(1, 2))) > np.abs(raw.max(axis=(1, 2)))).tolist()
    return row


def fmt(v: Any, spec: str) -> str:
    return "" if v is None else format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per model x method, ours against pytorch-grad-cam, and both against the float64
    reference (:func:`reference64`); "aligned": pytorch-grad-cam's eigen map with our sign."""
    lines = [
        "| model | method | pytorch-grad-cam | min corr | max abs diff | min corr (aligned) "
        "| max abs diff (aligned) | ours vs f64 | theirs vs f64 | ≥ 0.999 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['method']} | {r['pgc_class']} | — | — | — | — | — | — | "
                f"{r['error']} |"
            )
            continue
        best = r.get("min_corr_aligned", r["min_corr"])
        ok = "yes" if best >= TARGET else "**no**"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['pgc_class']} | {r['min_corr']:.6f} | "
            f"{r['max_abs_diff']:.2e} | {fmt(r.get('min_corr_aligned'), '.6f')} | "
            f"{fmt(r.get('max_abs_diff_aligned'), '.2e')} | "
            f"{fmt(r.get('min_corr_ours_vs_ref64'), '.6f')} | "
            f"{fmt(r.get('min_corr_pgc_vs_ref64'), '.6f')} | {ok} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma list of " + ", ".join(MODELS)
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS)
    )
    parser.add_argument(
        "--out", default="/tmp/pgc_out", help="folder for the ONNX files and results.json"
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the random weights")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in PGC_CLASS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    os.makedirs(args.out, exist_ok=True)

    from importlib.metadata import version

    import pytorch_grad_cam  # noqa: F401  (fail early without it)

    from explain_export.builder.plan import IMAGENET_MEAN, IMAGENET_STD

    images, photos = load_photos()
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    x = (torch.from_numpy(images) - mean) / std

    versions = {
        p: version(p)
        for p in (
            "torch",
            "torchvision",
            "grad-cam",
            "onnxruntime",
            "onnx",
            "numpy",
            "opencv-python-headless",
            "explain-export",
        )
    }
    rows: list[dict[str, Any]] = []
    for name in models:
        pristine, layer, where = build_model(name, args.seed)
        for method in methods:
            t0 = time.perf_counter()
            try:
                row = one(name, method, pristine, layer, where, images, x, args.out, args.threads)
            except Exception as exc:
                traceback.print_exc()
                row = {
                    "model": name,
                    "method": method,
                    "pgc_class": PGC_CLASS[method],
                    "error": f"compare: {type(exc).__name__}: {exc}".splitlines()[0],
                }
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            brief = {
                k: row.get(k)
                for k in ("min_corr", "max_abs_diff", "min_corr_aligned", "error", "seconds")
            }
            print(f"{name} {method}: {brief}", file=sys.stderr, flush=True)
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump(
                    {
                        "versions": versions,
                        "photos": photos,
                        "seed": args.seed,
                        "target": TARGET,
                        "rows": rows,
                    },
                    f,
                    indent=1,
                )
        del pristine

    print(table(rows))
    print(f"\nresults: {os.path.join(args.out, 'results.json')}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
