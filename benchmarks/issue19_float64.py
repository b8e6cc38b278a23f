#!/usr/bin/env python
"""visformer_tiny (timm, random init, seeds 0-2): eager float32 and each exported file against
float64 eager (:mod:`explain_export.builder.export.parity64`) on the verification cases. Prints, per
case, eager's error against float64, each file's error against eager and against float64, and
that as a multiple of the yardstick Y (eager's largest error over the cases). In the venv that
``make peers`` builds:

    make peers
    .peers/bin/python benchmarks/issue19_float64.py > benchmarks/results/issue19-crashes/float64.txt
"""

from __future__ import annotations

import tempfile

import numpy as np
import timm
import torch

from explain_export import build_explainer
from explain_export.artifact.contract import heatmap_unit
from explain_export.builder.export import export, parity64, verify
from explain_export.builder.lower.trace_state import kept_attributes


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def main() -> None:
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        model = timm.create_model("visformer_tiny", pretrained=False).eval()
        explainer = build_explainer(model, input_size=(224, 224))
        plan = explainer.plan
        tmp = tempfile.mkdtemp()
        with kept_attributes(explainer):
            staged = export._stage(
                explainer, plan, tmp, ("torchscript", "onnx"), 18, False, False, lambda _: None
            )
        cases = verify.cases(plan.input_size)
        refs = verify.references(explainer, cases)
        exact = parity64.Float64Reference(explainer, cases, refs)
        exact._compute()
        y_logits, y_heat = exact.yardstick
        peak = max(np.abs(r["logits"]).max() for r in refs)
        print(f"seed {seed}: Y logits {y_logits:.2e} heatmap {y_heat:.2e}; max|logits| {peak:.0f}")
        for case, ref, ref64 in zip(cases, refs, exact.outputs, strict=True):
            heat, heat64 = heatmap_unit(ref["heatmap"]), heatmap_unit(ref64["heatmap"])
            line = f"  {case.label[:5]} b{case.image.shape[0]} eager vs64 "
            line += f"{max_diff(ref['logits'], ref64['logits']):.1e} {max_diff(heat, heat64):.1e}"
            for fmt, path in staged.items():
                got = export.RUNTIMES[fmt](path).outputs(case.image, None)
                gh = heatmap_unit(got["heatmap"])
                fl, fh = max_diff(got["logits"], ref64["logits"]), max_diff(gh, heat64)
                line += (
                    f" | {fmt[:4]} vs32 {max_diff(got['logits'], ref['logits']):.1e} "
                    f"{max_diff(gh, heat):.1e} vs64 {fl:.1e} {fh:.1e} "
                    f"({fl / y_logits:.2f}Y, {fh / y_heat:.2f}Y)"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
