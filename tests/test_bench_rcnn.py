"""explain-bench on a two-stage detector (issue 29, section 5): the no-map baseline is the R-CNN's
own detections (and a Mask R-CNN's masks), the eigencam variant stays two-stage, and the run's
goal is the two-stage one (D = 10 maps <= 2.5x the no-map export), not the one-stage detectors'.

No test asserts a timing value: those depend on the machine and are reported, not checked.
"""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest
import torch
from rcnn import photos, tiny_two_stage

from explain_export.bench.detection import NmsOnly, _eigencam, baseline_outputs
from explain_export.builder.detect_build import build_detector
from explain_export.builder.rcnn_explainer import TwoStageExplainer
from explain_export.cli.bench import main

SIZE = (100, 150)
D = 3


@pytest.mark.parametrize("kind", ["faster", "mask"])
def test_the_no_map_baseline_gives_the_explainers_detections_and_masks(kind: str) -> None:
    explainer = build_detector(tiny_two_stage(kind), SIZE, "gradcam", max_detections=D)
    images = photos(("chelsea.png", "coffee.png"), SIZE)
    with torch.inference_mode():
        ref = explainer(images)
        got = NmsOnly(explainer).eval()(images)
    want = [t for name, t in zip(explainer.output_names, ref, strict=True) if name != "heatmap"]
    assert baseline_outputs(explainer) == [n for n in explainer.output_names if n != "heatmap"]
    assert len(got) == (5 if kind == "mask" else 4) == len(want)
    assert int(ref[3].sum()) > 0
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("target", ["box", "mask"])
def test_under_inference_mode_the_explainer_gives_what_it_gives_under_no_grad(target: str) -> None:
    """The bench's eager variant runs under ``inference_mode``; the maps' backward must still
    run there (autograd cannot save inference tensors) and give the same outputs."""
    explainer = build_detector(
        tiny_two_stage("mask"), SIZE, "gradcam", max_detections=D, target=target
    )
    images = photos(("chelsea.png", "coffee.png"), SIZE)
    with torch.no_grad():
        want = explainer(images)
    with torch.inference_mode():
        got = explainer(images)
    assert float(want[4].amax()) > 0
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_the_eigencam_variant_of_a_two_stage_explainer_is_two_stage() -> None:
    explainer = build_detector(tiny_two_stage("mask"), SIZE, "gradcam", max_detections=D)
    other = _eigencam(explainer)
    assert isinstance(other, TwoStageExplainer) and other.method.name == "eigencam"
    assert other.max_detections == D and other.target == explainer.target
    images = photos(("chelsea.png",), SIZE)
    with torch.inference_mode():
        a, b = explainer(images), other(images)
    for i in (0, 1, 2, 3, 5):  # the same detections and masks; another map
        assert torch.equal(a[i], b[i])


@pytest.mark.slow
def test_the_bench_times_a_mask_rcnn_against_its_own_outputs(tmp_path) -> None:
    """The command on the tiny Mask R-CNN: four variants, every ORT one with eager's
    detections and masks; the baseline file outputs the masks; the goal checked is the
    two-stage one."""
    ckpt = tmp_path / "mask.pt"
    torch.save(tiny_two_stage("mask").state_dict(), ckpt)
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpt), "--arch", "rcnn:TinyTwoStage", "--arch-kwargs", '{"kind": "mask"}']
    args += ["--input-size", "100", "150", "--max-detections", str(D), "--quiet"]
    args += ["--batch-sizes", "1", "--warmup", "1", "--iters", "2", "--settle", "0"]
    args += ["--threads", "1", "--targets", "--save-models", "--out", str(out)]
    assert main(args) == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["config"]["family"] == "mask-rcnn"
    for name, v in result["variants"].items():
        assert v["status"] == "ok", (name, v["status"])
        if name == "eager":
            continue
        p = v["batches"]["1"]["vs_eager"]
        assert p["detections"] > 0 and p["same_detections"], (name, p)
        assert p["masks_max_abs_diff"] < 1e-3, (name, p)
    assert (
        result["variants"]["ort_gradcam"]["batches"]["1"]["vs_eager"]["heatmap_max_abs_diff"] < 1e-4
    )
    assert [t["kind"] for t in result["targets"]] == ["two_stage_time_vs_nms"]
    session = ort.InferenceSession(str(out / "models" / "ort_nms.onnx"))
    assert [o.name for o in session.get_outputs()][-1] == "masks"
    assert "mask " in (out / "bench.md").read_text()  # the masks' difference is reported
