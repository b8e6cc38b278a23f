"""explain-bench ``--methods`` with the pixel-level methods (issue 28, "Speed"): each gets its
``ort_<method>`` variant, timed in the same rounds, and its ONNX file computes what that
method's eager explainer computes on the photos.

No timing value is asserted: those depend on the machine and are reported, not checked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from explain_export.artifact import runtime
from explain_export.artifact.samples import photo_batch
from explain_export.builder.explainer import build_explainer
from explain_export.cli.bench import main

from models import tiny_resnet

SKIP = (
    "compile,torchscript,autograd,gradcam_numpy,ort_numpy,ort_logits,eager_gradcam,ort,ort_gradcam"
)
ARGS = ["--arch", "models:TinyResNet", "--input-size", "64", "64", "--quiet", "--iters", "2"]
ARGS += ["--warmup", "0", "--prime", "0", "--settle", "0", "--threads", "1"]
ARGS += ["--batch-sizes", "1", "--profile-runs", "0", "--skip", SKIP]
PIXEL = ("saliency", "integrated-gradients")


@pytest.mark.slow
def test_pixel_methods_get_timed_ort_variants_that_match_eager(tmp_path):
    """``--methods saliency,integrated-gradients``: ``ort_saliency`` and
    ``ort_integrated-gradients`` are exported, timed (2 calls each) and compared with eager; the
    saved files give each method's own eager heatmap on two photos."""
    torch.save(tiny_resnet().state_dict(), tmp_path / "m.pt")
    args = [*ARGS, "--methods", ",".join(PIXEL), "--save-models", "--ckpt", str(tmp_path / "m.pt")]
    assert main([*args, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["config"]["methods"] == list(PIXEL)
    images = photo_batch(size=(64, 64))
    for method in PIXEL:
        v = result["variants"][f"ort_{method}"]
        assert v["status"] == "ok", (method, v["status"])
        assert v["label"] == f"ORT explainer, {method}"
        assert v["batches"]["1"]["n"] == 2 and v["batches"]["1"]["median_ms"] > 0
        assert f"ort_{method}" in result["ratios"]["speedup_vs_eager"]
        got = runtime.load(str(tmp_path / "models" / f"method-{method}.onnx")).outputs(images)
        with build_explainer(tiny_resnet(), None, method, (64, 64)) as eager:
            want = eager(torch.from_numpy(images))[1].detach().numpy()
        assert got["heatmap"].shape == want.shape == (2, 1, 64, 64)
        assert np.abs(got["heatmap"] - want).max() < 1e-3, method
    assert (
        f"| ORT explainer, {PIXEL[1]} | onnxruntime CPU | 1 |"
        in (tmp_path / "bench.md").read_text()
    )
