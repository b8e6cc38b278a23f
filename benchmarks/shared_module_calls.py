#!/usr/bin/env python
"""coat_lite_tiny's default `crpe4@1` against autograd Grad-CAM at each call of `crpe4`.

`crpe4` (ConvRelPosEnc) is one module that serial_blocks4.0 and serial_blocks4.1 both call;
`@1` is the second call. This compares the ONNX heatmap of an export (benchmarks/token_defaults.py
--export coat_lite_tiny) with Grad-CAM computed by autograd at the first call, at the second,
their mean, and pytorch-grad-cam's GradCAM(model, [model.crpe4]), on chelsea, coffee and rocket
(Pearson per photo). In the venv that ``make peers`` builds:

    make peers && .peers/bin/python benchmarks/token_defaults.py --export coat_lite_tiny
    .peers/bin/python benchmarks/shared_module_calls.py
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import timm
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from explain_export.artifact.samples import photo_batch

ROOT = os.environ.get("OUT_ROOT", "/tmp/explain-export-token-defaults") + "/coat_lite_tiny"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def gradcam(a: torch.Tensor, g: torch.Tensor) -> np.ndarray:
    """Grad-CAM of a [N, C, h, w] tensor read as the export reads it, resized, min-maxed."""
    m = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    m = F.interpolate(m, (224, 224), mode="bilinear", align_corners=False)
    lo, hi = m.amin((2, 3), keepdim=True), m.amax((2, 3), keepdim=True)
    return ((m - lo) / (hi - lo).clamp_min(1e-7))[:, 0].detach().numpy()


def corr(p: np.ndarray, q: np.ndarray) -> list[float]:
    return [
        round(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]), 4) for a, b in zip(p, q, strict=True)
    ]


def main() -> None:
    model = timm.create_model("coat_lite_tiny").eval()
    model.load_state_dict(torch.load(f"{ROOT}/model.pt"))
    x = torch.from_numpy(photo_batch(("chelsea.png", "coffee.png", "rocket.jpg")))
    session = ort.InferenceSession(f"{ROOT}/explainer/explainer.onnx")
    logits, heat = session.run(["logits", "heatmap"], {"image": x.numpy()})
    ours = heat[:, 0]
    calls: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        output.retain_grad()
        calls.append(output)

    hook = model.crpe4.register_forward_hook(keep)
    y = model((x - MEAN) / STD)
    hook.remove()
    top1 = y.argmax(1)
    assert (top1.numpy() == logits.argmax(1)).all()
    y.gather(1, top1[:, None]).sum().backward()
    first, second = (gradcam(c.detach(), c.grad) for c in calls)
    print(f"crpe4 ran {len(calls)} times per forward")
    print(
        "autograd at the second call (crpe4@1):",
        corr(ours, second),
        f"max |diff| {np.abs(ours - second).max():.1e}",
    )
    print("autograd at the first call:", corr(ours, first))
    print("mean of both calls:", corr(ours, (first + second) / 2))
    with GradCAM(model, [model.crpe4]) as cam:
        ref = cam((x - MEAN) / STD, [ClassifierOutputTarget(int(c)) for c in top1])
    print("pytorch-grad-cam GradCAM(model, [model.crpe4]):", corr(ours, ref))


if __name__ == "__main__":
    main()
