"""torchvision's one-stage detectors (RetinaNet, FCOS, SSD): the graph's detections equal the
model's own eager post-processing, and each detection's map is an autograd Grad-CAM of its score
at the maps the head reads, against a torchvision-shaped detector written plainly in
``tests/detectors.py`` (torchvision is not installed here; issue 27)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectors import TinyOneStage, tiny_one_stage
from torch import Tensor, nn

from explain_export.artifact import samples
from explain_export.builder.detect_build import build_detector
from explain_export.builder.export.detection import export_detector
from explain_export.errors import OptionError

SIZE = (100, 150)  # resized to 96x144 and padded to 96x160 (SSD: to 128x128)
KINDS = ("retinanet", "fcos", "ssd")


def _photos() -> Tensor:
    names = ("chelsea.png", "coffee.png")
    return torch.from_numpy(
        np.stack([samples.load_rgb(samples.photo_path(n), SIZE) for n in names])
    )


def _fuse(maps: list[Tensor], padded: bool) -> Tensor:
    """Per map: resize (bilinear), min-max; then the mean, min-maxed (the fused-layer rule).
    Where the model padded the resized image (96x144 to 96x160), a map covers the padded image:
    it is resized to 96x160 and cut to 96x144 first, the part that is the input."""

    def unit(m: Tensor) -> Tensor:
        m = F.interpolate(m, size=SIZE, mode="bilinear", align_corners=False)
        lo, hi = m.amin((2, 3), keepdim=True), m.amax((2, 3), keepdim=True)
        return (m - lo) / (hi - lo).clamp_min(1e-7)

    def cut(m: Tensor) -> Tensor:
        if not padded:
            return m
        m = F.interpolate(m, size=(96, 160), mode="bilinear", align_corners=False)
        return m[:, :, :96, :144]

    return unit(torch.stack([unit(cut(m)) for m in maps]).mean(0))


def _score(kind: str, head: dict[str, Tensor], a: int, c: int) -> Tensor:
    """The detection's score as the model rates it, from the head's raw output."""
    z = head["cls_logits"][0, a]
    if kind == "ssd":
        return z.softmax(0)[c]
    if kind == "fcos":
        return torch.sqrt(z[c].sigmoid() * head["bbox_ctrness"][0, a, 0].sigmoid())
    return z[c].sigmoid()


def reference(model: TinyOneStage, images: Tensor) -> list[dict[str, Tensor]]:
    """Per image: the model's own detections, and per detection ``ReLU(Σ_k α_k A_k)`` with
    ``α = mean_ij ∂y/∂A`` at each map the head reads (cloned by a pre-hook), fused."""
    held: list[Tensor] = []
    out: dict[str, Tensor] = {}

    def pre(module: nn.Module, args: tuple) -> tuple:
        held[:] = [a.detach().clone().requires_grad_(True) for a in args[0]]
        return (list(held),)

    def post(module: nn.Module, args: tuple, result: dict) -> None:
        out.update(result)

    results = []
    for image in images:
        handles = [
            model.head.register_forward_pre_hook(pre),
            model.head.register_forward_hook(post),
        ]
        with torch.enable_grad():
            dets = model([image])[0]
        for h in handles:
            h.remove()
        maps = []
        for a, c in zip(dets["anchors"].tolist(), dets["labels"].tolist(), strict=True):
            grads = torch.autograd.grad(_score(model.kind, out, a, c), held, retain_graph=True)
            cams = [
                torch.relu((g.mean((2, 3), keepdim=True) * m).sum(1, keepdim=True)).detach()
                for g, m in zip(grads, held, strict=True)
            ]
            maps.append(_fuse(cams, model.kind != "ssd")[0, 0])
        heat = torch.stack(maps) if maps else torch.zeros(0, *SIZE)
        results.append({k: v.detach() for k, v in dets.items()} | {"heatmap": heat})
    return results


@pytest.mark.parametrize("kind", KINDS)
def test_detections_and_maps_equal_eager_and_autograd(kind: str) -> None:
    model = tiny_one_stage(kind)
    images = _photos()
    ref = reference(model, images)
    d = model.detections_per_img
    with build_detector(model, SIZE, max_detections=d) as explainer:
        boxes, scores, classes, count, heat = explainer(images)
    det = explainer.detector
    assert (det.family, det.score_threshold, det.iou_threshold) == (kind, 0.3, 0.5)
    assert explainer.layers == ["head:input"] and det.mean == (0.0, 0.0, 0.0)
    assert count.tolist() == [len(r["labels"]) for r in ref] and count.min() > 0
    for n, r in enumerate(ref):
        c = int(count[n])
        torch.testing.assert_close(classes[n, :c], r["labels"])
        torch.testing.assert_close(boxes[n, :c], r["boxes"], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(scores[n, :c], r["scores"])
        torch.testing.assert_close(heat[n, :c], r["heatmap"], atol=1e-5, rtol=0)
        assert (heat[n, :c].amax((1, 2)) == 1).all()
    assert (heat[0, 0] - heat[0, 1]).abs().max() > 0.1  # the maps differ by detection


@pytest.mark.parametrize("kind", KINDS)
def test_the_models_own_threshold_leaves_padding_rows(kind: str) -> None:
    model = tiny_one_stage(kind)
    model.score_thresh = {"retinanet": 0.42, "fcos": 0.65, "ssd": 0.335}[kind]
    images = _photos()
    ref = reference(model, images)
    with build_detector(model, SIZE, max_detections=8) as explainer:
        _, scores, classes, count, heat = explainer(images)
    assert explainer.score_threshold == model.score_thresh
    assert count.tolist() == [min(8, len(r["labels"])) for r in ref]
    assert ((count > 0) & (count < 8)).any(), "some detections and some padding"
    for n, r in enumerate(ref):
        c = int(count[n])
        torch.testing.assert_close(classes[n, :c], r["labels"][:c])
        torch.testing.assert_close(scores[n, :c], r["scores"][:c])
        assert (classes[n, c:] == -1).all() and (scores[n, c:] == 0).all()
        assert (heat[n, c:] == 0).all()


def test_a_threshold_given_is_the_one_each_level_keeps_above() -> None:
    """``--score-threshold`` below the model's own lets in what the model at that threshold
    keeps: the per-level selection uses it, not only the NMS after it."""
    model = tiny_one_stage()
    images = _photos()
    ref = reference(model, images)  # score_thresh 0.3
    model.score_thresh = 0.42
    with build_detector(model, SIZE, max_detections=20, score_threshold=0.3) as explainer:
        _, scores, classes, count, _ = explainer(images)
    assert count.tolist() == [len(r["labels"]) for r in ref]
    for n, r in enumerate(ref):
        torch.testing.assert_close(classes[n, : int(count[n])], r["labels"])
        torch.testing.assert_close(scores[n, : int(count[n])], r["scores"])


def test_more_rows_than_the_model_keeps_is_refused() -> None:
    with pytest.raises(OptionError, match="detections_per_img 20"):
        build_detector(tiny_one_stage(), SIZE, max_detections=21)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["retinanet", "ssd"])
def test_every_format_equals_eager(tmp_path: Path, kind: str) -> None:
    explainer = build_detector(tiny_one_stage(kind), SIZE, max_detections=4)
    formats = ("torchscript", "onnx", "pt2")
    result = export_detector(explainer, str(tmp_path), formats)
    rows = result.metadata["parity"]["rows"]
    assert {r["format"] for r in rows} == set(formats) and all(r["ok"] for r in rows)
    assert sum(r["count"] for r in rows if r["format"] == "onnx") > 0
    meta = json.loads((tmp_path / "explainer.json").read_text())
    assert meta["detection"]["family"] == kind and meta["detection"]["score_threshold"] == 0.3
    assert meta["mean"] == [0.0, 0.0, 0.0] and meta["std"] == [1.0, 1.0, 1.0]
    explainer.remove()


def test_a_box_of_no_area_matches_by_its_corners() -> None:
    """FCOS can give a box of no area (its distances are ReLU'd); such a box has no IoU, so the
    export's check takes the same corners for the same box, and other corners for a miss."""
    from explain_export.builder.export.detection_parity import compare
    from explain_export.builder.export.verify import Case

    ref = {
        "boxes": np.array([[[5.0, 5, 5, 9], [0, 0, 10, 10]]], np.float32),
        "scores": np.array([[0.9, 0.8]], np.float32),
        "classes": np.array([[1, 2]]),
        "count": np.array([2]),
        "heatmap": np.zeros((1, 2, 4, 4), np.float32),
    }
    case = Case("photo", np.zeros((1, 3, 4, 4), np.float32))
    assert compare("onnx", case, ref | {"boxes": ref["boxes"] + 1e-4}, ref).ok
    moved = ref["boxes"].copy()
    moved[0, 0] += 2
    row = compare("onnx", case, ref | {"boxes": moved}, ref)
    assert not row.ok and row.box_iou_min == 0


def test_the_command_takes_any_size_and_keeps_d_within_the_models_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The transform resizes, so no size is refused for its strides; more rows than the
    model's ``detections_per_img`` are refused in one line, before anything is exported."""
    from explain_export.cli.export import main

    args = [
        "--arch",
        "detectors:TinyOneStage",
        "--input-size",
        "100",
        "150",
        "--out",
        str(tmp_path),
    ]
    assert main([*args, "--max-detections", "21"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("explain-export: error:")]
    assert len(errors) == 1 and "detections_per_img 20" in errors[0], err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_the_command_exports_a_torchvision_shaped_detector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from explain_export.cli.export import main

    ckpt = tmp_path / "fcos.pt"
    torch.save(tiny_one_stage("fcos").state_dict(), ckpt)
    args = ["--ckpt", str(ckpt), "--arch", "detectors:TinyOneStage", "--arch-kwargs"]
    args += ['{"kind": "fcos"}', "--input-size", "100", "150", "--max-detections", "3"]
    code = main([*args, "--formats", "onnx", "--out", str(tmp_path / "o")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "task:   detection (fcos), 4 classes" in printed and "layer:  head:input" in printed
    meta = json.loads((tmp_path / "o" / "explainer.json").read_text())
    assert meta["detection"]["score_threshold"] == 0.3 and meta["detection"]["iou_threshold"] == 0.5
