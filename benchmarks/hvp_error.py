"""ShapleyCAM's Hessian-vector product as traced forward ops, against autograd's double backward.

Not part of the test suite. Runs in the project's venv from the repository root::

    PYTHONPATH=$PWD:tests python benchmarks/hvp_error.py

On the tests' LayerNorm-head model (``tests/models.py``: a NextBlock with a depthwise conv,
LayerNorm and GELU, then a LayerNorm head) at three layers and the bundled photos, it prints
``max |H·A − reference| / max |H·A|`` for: the traced graph (:func:`.lowering.trace` with
``second_order``, float32) against autograd's double backward in float32 and in float64; and
a central difference of the gradient, ``(g(A(1+ε)) − g(A(1−ε))) / 2ε`` (float32), the other
way to forward ops, against float64 autograd, for several ``ε``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from explain_export.artifact import samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.lower import lowering
from explain_export.builder.maths.hessian import hessian_times_map

from models import head_kind

SIZE = (64, 64)
LAYERS = ("features.1", "features.2", "avgpool:input")


def g_and_hvp(explainer, scale: float = 1.0):
    """``image -> (g, H·A)`` at the explainer's tap for the top-1 class; ``scale`` multiplies
    ``A`` where the network continues from it (for the central difference)."""
    spec = explainer.tap.spec
    module = explainer.model.get_submodule(spec.module)

    def fn(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if spec.port == "input":
            hook = module.register_forward_pre_hook(
                lambda m, a: (a[0] * scale, *a[1:]), prepend=True
            )
        else:
            hook = module.register_forward_hook(lambda m, a, out: out * scale, prepend=True)
        try:
            for tap in explainer.taps:
                tap.clear()
            with torch.enable_grad():
                logits = explainer.model(explainer.normalize(image))
                a = explainer.tap.take()
                y = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
                (g,) = torch.autograd.grad(y, a, create_graph=True)
                return g.detach(), hessian_times_map(g, a).detach()
        finally:
            hook.remove()

    return fn


def main() -> None:
    images = np.stack([samples.load_rgb(samples.photo_path(p), SIZE) for p in samples.PHOTOS])
    x = torch.from_numpy(images)
    for layer in LAYERS:
        model = head_kind("layernorm-head", seed=1)
        explainer = build_explainer(model, layer, "shapleycam", SIZE)
        fn = g_and_hvp(explainer)
        graph = lowering.trace(fn, (x[:2],), {0: [0]}, explainer, True)
        _, h32 = fn(x)
        _, traced = graph(x)
        wide = build_explainer(copy.deepcopy(model), layer, "shapleycam", SIZE).double()
        _, h64 = g_and_hvp(wide)(x.double())
        peak = float(h64.abs().max())

        def off(h: torch.Tensor, ref: torch.Tensor, peak: float = peak) -> str:
            return f"{float((h.double() - ref.double()).abs().max()) / peak:.2e}"

        print(f"{layer}: max |H·A| {peak:.3g}")
        print(f"  traced vs autograd float32 {off(traced, h32)}, vs float64 {off(traced, h64)}")
        print(f"  autograd float32 vs float64 {off(h32, h64)}")
        for eps in (1e-1, 1e-2, 1e-3, 1e-4):
            plus, _ = g_and_hvp(explainer, 1 + eps)(x)
            minus, _ = g_and_hvp(explainer, 1 - eps)(x)
            central = (plus - minus) / (2 * eps)
            print(f"  central difference eps={eps:g} vs float64 {off(central, h64)}")
        explainer.remove()
        wide.remove()


if __name__ == "__main__":
    main()
