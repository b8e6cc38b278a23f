"""torchvision's two-stage detectors (Faster and Mask R-CNN): the graph's detections and masks
equal the model's own eager ones, and each detection's map equals an autograd Grad-CAM of its
score (or its mask) at the maps the RoI heads read, against the torchvision-shaped detector
written plainly in ``tests/rcnn.py`` (torchvision is not installed here; issue 29)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rcnn import gradcam, hirescam, mask_target_gradcam, photos, tiny_two_stage

from explain_export.builder.detect_build import build_detector
from explain_export.builder.export.detection import export_detector
from explain_export.errors import OptionError

SIZE = (100, 150)  # resized to 96x144, padded to 96x160: the maps are cut to the window
D = 5
PHOTOS = ("chelsea.png", "coffee.png")


def _run(kind: str, method: str = "gradcam", target: str | None = None):
    model = tiny_two_stage(kind)
    images = photos(PHOTOS, SIZE)
    explainer = build_detector(model, SIZE, method, max_detections=D, target=target)
    with torch.no_grad():
        out = explainer(images)
        ref = model(list(images))
    return model, images, out, ref


def _detections_equal(out: tuple, ref: list[dict]) -> list[int]:
    """The first D eager detections of each image, row for row; their counts."""
    boxes, scores, classes, count = out[:4]
    counts = []
    for n, r in enumerate(ref):
        k = min(D, len(r["scores"]))
        assert int(count[n]) == k > 0
        assert classes[n, :k].tolist() == r["labels"][:k].tolist()
        assert (classes[n, k:] == -1).all() and (scores[n, k:] == 0).all()
        torch.testing.assert_close(boxes[n, :k], r["boxes"][:k].detach(), atol=1e-4, rtol=0)
        torch.testing.assert_close(scores[n, :k], r["scores"][:k].detach(), atol=1e-6, rtol=0)
        counts.append(k)
    return counts


@pytest.mark.parametrize("kind", ["faster", "mask"])
def test_detections_and_maps_equal_eager_and_autograd(kind: str) -> None:
    model, images, out, ref = _run(kind)
    counts = _detections_equal(out, ref)
    heat = out[4]
    assert heat.shape == (2, D, *SIZE)
    for n, k in enumerate(counts):
        for j in range(k):
            want = gradcam(model, images[n], j)
            assert float((heat[n, j] - want).abs().max()) < 1e-5, (n, j)
        assert (heat[n, k:] == 0).all()
    assert float((heat[0, 0] - heat[0, 1]).abs().max()) > 0.05  # maps of their own


def test_masks_are_the_models_own_pasted_at_input_size() -> None:
    _, _, out, ref = _run("mask")
    assert len(out) == 6
    masks = out[5]
    assert masks.shape == (2, D, *SIZE)
    for n, r in enumerate(ref):
        k = min(D, len(r["scores"]))
        torch.testing.assert_close(masks[n, :k], r["masks"][:k, 0].detach(), atol=1e-5, rtol=0)
        assert (masks[n, k:] == 0).all()


def test_the_mask_target_explains_each_detections_mask() -> None:
    model, images, out, ref = _run("mask", target="mask")
    counts = _detections_equal(out, ref)
    for n, k in enumerate(counts):
        for j in range(k):
            want = mask_target_gradcam(model, images[n], j)
            assert float((out[4][n, j] - want).abs().max()) < 1e-5, (n, j)
    box = _run("mask")[2][4]
    assert float((box[0, 0] - out[4][0, 0]).abs().max()) > 0.05  # another score, another map


def test_a_method_needing_the_whole_gradient_writes_out_the_rois() -> None:
    """HiResCAM multiplies the gradient map itself, not its channel means: the RoI adjoint's
    scatter, not the Grad-CAM shortcut."""
    model, images, out, ref = _run("faster", "hirescam")
    counts = _detections_equal(out, ref)
    for n, k in enumerate(counts):
        for j in range(k):
            want = hirescam(model, images[n], j)
            assert float((out[4][n, j] - want).abs().max()) < 1e-5, (n, j)


def test_the_pooler_reads_the_maps_the_backbone_has() -> None:
    """torchvision's pooler reads those of its ``featmap_names`` the backbone gives (a mobilenet
    FPN gives ``"0"``, ``"1"``, ``"pool"`` to a pooler naming ``"0"`` to ``"3"``)."""
    model = tiny_two_stage("faster")
    model.roi_heads.box_roi_pool.featmap_names = ["1", "2", "3"]  # no "3": reads "1", "2"
    images = photos(PHOTOS, SIZE)
    explainer = build_detector(model, SIZE, max_detections=D)
    with torch.no_grad():
        out = explainer(images)
        ref = model(list(images))
    counts = _detections_equal(out, ref)
    for j in range(counts[0]):
        want = gradcam(model, images[0], j, ["1", "2"])
        assert float((out[4][0, j] - want).abs().max()) < 1e-5, j


def test_a_class_free_method_gives_one_map_per_image() -> None:
    _, _, out, ref = _run("faster", "eigencam")
    _detections_equal(out, ref)
    assert out[4].shape == (2, 1, *SIZE) and float(out[4].amax()) == pytest.approx(1.0)


def test_what_a_two_stage_export_refuses() -> None:
    with pytest.raises(OptionError, match="RoI heads read"):
        build_detector(tiny_two_stage(), SIZE, layers=["backbone.body"])
    with pytest.raises(OptionError, match="needs a Mask R-CNN"):
        build_detector(tiny_two_stage("faster"), SIZE, target="mask")
    with pytest.raises(OptionError, match="detections_per_img 10"):
        build_detector(tiny_two_stage(), SIZE, max_detections=11)
    with pytest.raises(OptionError, match="box or mask"):
        build_detector(tiny_two_stage("mask"), SIZE, target="masks")
    with pytest.raises(OptionError, match="pixel-level"):
        build_detector(tiny_two_stage(), SIZE, "saliency")


@pytest.mark.slow
def test_every_format_equals_eager_with_masks(tmp_path: Path) -> None:
    from explain_export.artifact import runtime

    explainer = build_detector(tiny_two_stage("mask"), SIZE, max_detections=3)
    formats = ("torchscript", "onnx", "pt2")
    result = export_detector(explainer, str(tmp_path), formats)
    rows = result.metadata["parity"]["rows"]
    assert {r["format"] for r in rows} == set(formats) and all(r["ok"] for r in rows)
    assert all(r["mask_iou_min"] is not None and r["mask_iou_min"] >= 0.99 for r in rows)
    meta = json.loads((tmp_path / "explainer.json").read_text())
    assert meta["detection"]["family"] == "mask-rcnn" and meta["detection"]["masks"] is True
    assert [o["name"] for o in meta["outputs"]][-1] == "masks"
    image = photos(PHOTOS[:1], SIZE).numpy()
    with torch.no_grad():
        want = explainer(torch.from_numpy(image))
    for fmt in formats:
        got = runtime.load(str(tmp_path / result.paths[fmt].split("/")[-1])).outputs(image)
        assert got["masks"].shape == (1, 3, *SIZE)
        np.testing.assert_allclose(got["masks"], want[5].numpy(), atol=1e-4)


def test_the_command_refuses_a_layer_and_a_target_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--layer`` for an R-CNN and ``--target mask`` for a Faster R-CNN: one line, exit 2,
    nothing written."""
    from explain_export.cli.export import main

    base = ["--arch", "rcnn:TinyTwoStage", "--input-size", "100", "150", "--out", str(tmp_path)]
    for extra, words in (
        (["--layer", "backbone.body"], "RoI heads read"),
        (["--target", "mask"], "needs a Mask R-CNN"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("explain-export: error:")]
        assert len(errors) == 1 and words in errors[0], err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_the_command_exports_a_mask_rcnn_with_the_mask_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from explain_export.cli.export import main

    ckpt = tmp_path / "mask.pt"
    torch.save(tiny_two_stage("mask").state_dict(), ckpt)
    args = ["--ckpt", str(ckpt), "--arch", "rcnn:TinyTwoStage", "--arch-kwargs", '{"kind": "mask"}']
    args += ["--input-size", "100", "150", "--max-detections", "3", "--target", "mask"]
    code = main([*args, "--formats", "onnx", "--out", str(tmp_path / "o")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "task:   detection (mask-rcnn), 4 classes" in printed, printed
    assert "layer:  roi_heads.box_roi_pool:input" in printed
    meta = json.loads((tmp_path / "o" / "explainer.json").read_text())
    assert meta["detection"]["target"] == "mask" and meta["detection"]["masks"] is True
