"""Our exported FinerCAM and ShapleyCAM against pytorch-grad-cam 1.5.7's own ``FinerCAM`` and
``ShapleyCAM``, at the same tensor, on the bundled photos.

Not part of the test suite, and nothing imports it: it needs ``grad-cam`` (pytorch-grad-cam),
so it runs in the venv that ``make peers`` builds (``.peers/``)::

    .peers/bin/python benchmarks/vs_pgc_finer_shapley.py --out /tmp/finer_shapley

For each model x method our explainer is exported to ONNX (``build_explainer`` +
``export_explainer``) and run with ``artifact.runtime`` on the photos (float32
``[N,3,224,224]`` RGB in [0,1]); pytorch-grad-cam's class runs on the same model (a second
copy, same weights), same module output, same input after ImageNet normalization.
``ShapleyCAM`` gets ``ClassifierOutputTarget`` of our logits' argmax. ``FinerCAM`` gets
``targets=None``: it then builds its own ``FinerWeightedTarget`` (the top-1 against the 2nd to
4th entries of ``argsort(|z - z_c|)``); given a ``ClassifierOutputTarget`` it would be plain
Grad-CAM. Reported: per photo, the Pearson correlation of the two ``224x224`` maps and their
largest absolute difference, and how far their map is from their ``GradCAM``'s (so that a
method equal to Grad-CAM there is seen); markdown on stdout, JSON in ``--out``.

Models:

- ``efficientnet-lite0 _blocks.15``: the embedded model (``zoo.load_default``) at its last block.
  The head after it (1x1 conv, BN, ReLU6, average pooling, linear) is piecewise linear, so
  ``H·A = 0`` exactly there and ShapleyCAM equals Grad-CAM on both sides (the script prints
  ``max |H·A|`` from autograd to show it);
- ``efficientnet-lite0-silu _blocks.15``: the same trained weights with the top-level ReLU6
  (``_swish``, which runs at the stem and after the head's conv + BN) replaced by SiLU: a
  curved head on a trained trunk, so ``H·A`` is neither 0 nor ``−g`` and the Hessian-vector
  product is compared too (the logits change; both sides explain the same changed model).

Not random-weight torchvision models: a head that ignores the map's scale (``y(sA) = y(A)``,
as where the map feeds a LayerNorm) has ``H·A = −g`` (differentiate ``g(sA) = g(A)/s`` at
``s = 1``), so ShapleyCAM's weights are ``1.5 g`` and its map is Grad-CAM's: a random ConvNeXt-
Tiny's last stage is nearly such a map (its blocks start as near-identities, layer scale 1e-6;
their ShapleyCAM and GradCAM correlate to 1.0000 at ``features.7`` and ``features.7.1``). A
random EfficientNet-B0's activations at ``features.7`` are so small that SiLU is linear there
(``max |H·A|`` 2.5e-16) and pytorch-grad-cam's ``1e-7`` in its min-max dominates its maps.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn

SIZE = (224, 224)
MODELS = ("efficientnet-lite0", "efficientnet-lite0-silu")
METHODS = ("finercam", "shapleycam")
TARGET = 0.99


def build_model(name: str, seed: int = 0) -> tuple[nn.Module, str]:
    torch.manual_seed(seed)
    from explain_export.builder.model.zoo import load_default

    model = load_default(SIZE).model.eval()
    if name == "efficientnet-lite0-silu":
        model._swish = nn.SiLU()  # the stem's and the head's activation (it runs twice)
    return model, "_blocks.15"


def photos() -> tuple[np.ndarray, list[str]]:
    from explain_export.artifact import samples

    names = list(samples.PHOTOS)
    return np.stack([samples.load_rgb(samples.photo_path(p), SIZE) for p in names]), names


def normalize(images: np.ndarray) -> torch.Tensor:
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    return (torch.from_numpy(images) - mean) / std


def ours(model: nn.Module, layer: str, method: str, images: np.ndarray, out: str) -> dict:
    from explain_export.artifact import runtime
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

    t0 = time.perf_counter()
    explainer = build_explainer(model, layer, method, input_size=SIZE)
    try:
        result = export_explainer(explainer, out, ("onnx",))
    finally:
        explainer.remove()
    got = runtime.load(result.paths["onnx"]).outputs(images)
    return {**got, "export_s": round(time.perf_counter() - t0, 1)}


def theirs(model: nn.Module, layer: str, method: str, x: torch.Tensor, top1: np.ndarray):
    from pytorch_grad_cam import FinerCAM, GradCAM, ShapleyCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = model.get_submodule(layer)
    if method == "gradcam":
        with GradCAM(model, [module]) as cam:
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in top1])
    if method == "finercam":
        with FinerCAM(model, [module]) as cam:
            return np.stack([cam(x[i : i + 1])[0] for i in range(len(x))])
    with ShapleyCAM(model, [module]) as cam:
        targets = [ClassifierOutputTarget(int(c)) for c in top1]
        return cam(input_tensor=x, targets=targets)


def max_hvp(model: nn.Module, layer: str, x: torch.Tensor) -> float:
    """``max |H·A|`` at ``layer`` for the top-1 class, by autograd's double backward."""
    store: dict[str, torch.Tensor] = {}
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _a, out: store.__setitem__("a", out)
    )
    try:
        with torch.enable_grad():
            logits = model(x.clone().requires_grad_(True))
            y = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
            (g,) = torch.autograd.grad(y, store["a"], create_graph=True)
            if not g.requires_grad:
                return 0.0
            (h,) = torch.autograd.grad(g, store["a"], grad_outputs=store["a"].detach())
    finally:
        handle.remove()
    return float(h.abs().max())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="finer_shapley_out")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    os.makedirs(args.out, exist_ok=True)
    images, names = photos()
    x = normalize(images)
    rows: list[dict[str, Any]] = []
    for name in args.models:
        model, layer = build_model(name)
        hvp = max_hvp(model, layer, x)
        for method in METHODS:
            pristine = copy.deepcopy(model)  # ours freezes the weights of the model it explains
            got = ours(pristine, layer, method, images, os.path.join(args.out, f"{name}-{method}"))
            top1 = got["logits"].argmax(1)
            with torch.no_grad():
                reference = model(x).argmax(1).numpy()
            ref = theirs(model, layer, method, x, top1)
            plain = theirs(model, layer, "gradcam", x, top1)
            corr = [pearson(o[0], t) for o, t in zip(got["heatmap"], ref, strict=True)]
            vs_gradcam = [pearson(o, t) for o, t in zip(ref, plain, strict=True)]
            diff = [float(np.abs(o[0] - t).max()) for o, t in zip(got["heatmap"], ref, strict=True)]
            rows.append(
                {
                    "model": name,
                    "layer": layer,
                    "method": method,
                    "photos": names,
                    "corr": corr,
                    "max_abs_diff": diff,
                    "their_corr_with_their_gradcam": vs_gradcam,
                    "same_top1": bool((top1 == reference).all()),
                    "max_abs_hvp": hvp,
                    "export_s": got["export_s"],
                }
            )
    print(
        f"| model | layer | method | max abs H·A | min corr | median corr | max abs diff "
        f"| ≥ {TARGET} | theirs vs their GradCAM, min corr |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ok = "yes" if min(r["corr"]) >= TARGET else "NO"
        print(
            f"| {r['model']} | `{r['layer']}` | {r['method']} | {r['max_abs_hvp']:.3g} "
            f"| {min(r['corr']):.6f} | {float(np.median(r['corr'])):.6f} "
            f"| {max(r['max_abs_diff']):.2e} | {ok} "
            f"| {min(r['their_corr_with_their_gradcam']):.4f} |"
        )
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return 0 if all(min(r["corr"]) >= TARGET for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
