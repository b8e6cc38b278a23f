"""A detector exported: every format computes what eager computes, the metadata says what the
files hold, and ``explain-export`` takes a detector from its checkpoint (issue 27)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectors import tiny_yolo

from explain_export.artifact.contract import DETECTION_OUTPUTS
from explain_export.artifact.runtime import load
from explain_export.builder.detect_build import build_detector
from explain_export.builder.export.detection import detection_cases, export_detector
from explain_export.cli.export import main

SIZE = (128, 160)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny_yolo.pt"
    torch.save(tiny_yolo().state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "eigencam"])
def test_every_format_equals_eager(tmp_path: Path, method: str) -> None:
    explainer = build_detector(tiny_yolo(), SIZE, method, max_detections=4)
    formats = ("torchscript", "onnx", "pt2") if method == "gradcam" else ("onnx", "torchscript")
    result = export_detector(explainer, str(tmp_path), formats, labels=["a", "b", "c"])
    rows = result.metadata["parity"]["rows"]
    assert {r["format"] for r in rows} == set(formats) and all(r["ok"] for r in rows)
    assert sum(r["count"] for r in rows if r["format"] == "onnx") > 0
    meta = json.loads((tmp_path / "explainer.json").read_text())
    assert meta["task"] == "detection" and meta["labels"] == ["a", "b", "c"]
    assert meta["detection"]["max_detections"] == 4
    assert meta["detection"]["maps"] == ("per-detection" if method == "gradcam" else "per-image")
    assert [o["name"] for o in meta["outputs"]] == DETECTION_OUTPUTS
    images = np.concatenate([c.image for c in detection_cases(SIZE) if c.image.shape[0] == 1])
    with torch.no_grad():
        want = [t.numpy() for t in explainer(torch.from_numpy(images))]
    for fmt, name in (("onnx", "explainer.onnx"), ("torchscript", "explainer.torchscript.pt")):
        got = load(str(tmp_path / name)).outputs(images)
        assert list(got) == DETECTION_OUTPUTS, fmt
        np.testing.assert_array_equal(got["classes"], want[2])
        np.testing.assert_array_equal(got["count"], want[3])
        np.testing.assert_allclose(got["boxes"], want[0], atol=1e-3)
        np.testing.assert_allclose(got["heatmap"], want[4], atol=1e-4)
    explainer.remove()


@pytest.mark.slow
def test_the_command_exports_a_detector(tmp_path: Path, checkpoint: Path, capsys) -> None:
    args = ["--ckpt", str(checkpoint), "--arch", "detectors:TinyYolo", "--input-size", "128", "160"]
    out = tmp_path / "o"
    code = main([*args, "--max-detections", "3", "--formats", "onnx", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "task:   detection (generic), 3 classes, anchors on strides 8, 16, 32" in printed
    assert "layer:  detect:input" in printed
    meta = json.loads((out / "explainer.json").read_text())
    assert meta["labels"] == ["thing0", "thing1", "thing2"]  # the model's own names
    assert meta["detection"]["score_threshold"] == 0.25 and meta["mean"] == [0, 0, 0]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--max-detections", "0"], "--max-detections must be at least 1"),
        (["--top-k", "2"], "--top-k does not apply to a detector"),
        (["--input-size", "100", "100"], "not a multiple of the detector's largest stride 32; try"),
        (["--labels", "coco"], "--labels coco names COCO's 80 classes"),
        (["--iou-threshold", "1.5"], "--iou-threshold must be in [0, 1]"),
    ],
)
def test_bad_detector_flags_are_one_line(
    tmp_path: Path, checkpoint: Path, capsys, extra: list[str], says: str
) -> None:
    args = ["--ckpt", str(checkpoint), "--arch", "detectors:TinyYolo", "--out", str(tmp_path)]
    if "--input-size" not in extra:
        extra = [*extra, "--input-size", "128", "160"]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("explain-export: error:")]
    assert len(errors) == 1 and says in errors[0] and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())


def test_detector_flags_on_a_classifier_are_refused(tmp_path: Path, capsys) -> None:
    code = main(["--arch", "models:TinyResNet", "--max-detections", "3", "--out", str(tmp_path)])
    assert code == 2
    assert "--max-detections applies to detectors" in capsys.readouterr().err


def test_an_ultralytics_style_checkpoint_loads_with_trust(tmp_path: Path) -> None:
    """Ultralytics writes a pickled dict whose ``model`` is the whole detector in fp16 (and,
    mid-training, ``model`` None beside an ``ema`` copy): with trust it loads, in float32, and
    is recognised as a detector."""
    from explain_export.builder.model.checkpoint import load_model

    model = tiny_yolo().half()
    for name, ckpt in (
        ("final.pt", {"epoch": -1, "model": model, "train_args": {"imgsz": 640}}),
        ("last.pt", {"epoch": 3, "model": None, "ema": model, "optimizer": None}),
    ):
        torch.save(ckpt, tmp_path / name)
        loaded, info = load_model(str(tmp_path / name), None, trust=True)
        assert "pickled module" in info.format
        assert next(loaded.parameters()).dtype == torch.float32
        found = build_detector(loaded, SIZE)
        assert found.detector.num_classes == 3 and found.layers == ["detect:input"]


def _outputs(classes: list[int], scores: list[float], boxes: list[list[float]]) -> dict:
    n = len(classes)
    return {
        "classes": np.array([classes], dtype=np.int64),
        "scores": np.array([scores], dtype=np.float32),
        "boxes": np.array([boxes], dtype=np.float32).reshape(1, n, 4),
        "count": np.array([sum(c >= 0 for c in classes)]),
    }


def test_detections_parting_at_a_tie_are_compared_up_to_it() -> None:
    from explain_export.builder.export.detection_parity import compared_rows

    a, b, c = [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]
    ref = _outputs([1, 2, 0, -1], [0.9, 0.5000001, 0.5, 0.0], [a, b, c, [0, 0, 0, 0]])
    rows, agree, ties = compared_rows(ref, ref, 0.25)
    assert rows.all() and agree and ties == 0
    swapped = _outputs([1, 0, 2, -1], [0.9, 0.5000002, 0.5000001, 0.0], [a, c, b, [0, 0, 0, 0]])
    rows, agree, ties = compared_rows(swapped, ref, 0.25)  # two candidates within 1e-5
    assert rows.tolist() == [[True, False, False, False]] and agree and ties == 1
    wrong = _outputs([1, 0, 2, -1], [0.9, 0.7, 0.5, 0.0], [a, c, b, [0, 0, 0, 0]])
    rows, agree, _ = compared_rows(wrong, ref, 0.25)  # a real difference: not a tie
    assert rows.tolist() == [[True, False, False, False]] and not agree
    moved = _outputs([1, 2, 0, -1], [0.9, 0.5000001, 0.5, 0.0], [a, b, [41, 40, 51, 50], [0] * 4])
    assert not compared_rows(moved, ref, 0.25)[1]  # the box moved: IoU 0.82
    edge = _outputs([1, 2, 0, 3], [0.9, 0.5000001, 0.5, 0.250001], [a, b, c, a])
    rows, agree, ties = compared_rows(edge, ref, 0.25)  # one more, on the threshold
    assert rows.tolist() == [[True, True, True, False]] and agree and ties == 1
