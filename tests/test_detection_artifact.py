"""Detection artifacts on the artifact side (issue 27): the contract accepts them, the shipped
COCO label sets, and ``explain-run`` on real photos: detections with their boxes in the
original image's pixels (stretch and pad), overlays with the boxes drawn, ``--per-detection``
files, the sheet, count 0, and ``--per-detection`` refused for a classifier. The artifacts
are made here (:mod:`detector_artifacts`), to the contract, without the exporter."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import cv2
import detector_artifacts as det
import numpy as np
import pytest

from explain_export.artifact import detections, images, runtime, samples
from explain_export.artifact.contract import (
    DETECTION_OUTPUTS,
    ArtifactMetadata,
    MetadataError,
    check_metadata,
    output_names,
)
from explain_export.artifact.labels import LABEL_SETS, label_set
from explain_export.cli.run import main
from explain_export.errors import UsageError

from commands import photo_folder

CHELSEA = (300, 451)  # (h, w) of scikit-image's chelsea.png
ROCKET = (427, 640)


@pytest.fixture(scope="module")
def onnx_det(tmp_path_factory):
    return det.export(str(tmp_path_factory.mktemp("det_onnx")), "onnx")


@pytest.fixture(scope="module")
def script_det(tmp_path_factory):
    return det.export(str(tmp_path_factory.mktemp("det_ts")), "torchscript")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return photo_folder(tmp_path_factory.mktemp("photos"), ("chelsea.png", "rocket.jpg"))


def _rows(out):
    with open(os.path.join(out, "predictions.jsonl")) as f:
        return {os.path.basename(r["file"]): r for r in map(json.loads, f)}


def _run(*args):
    return main([*map(str, args), "--quiet"])


# the contract and the label sets


def test_coco_label_sets_are_shipped_as_data():
    coco80, coco91 = label_set("coco80"), label_set("coco91")
    assert (len(coco80), len(coco91), len(label_set("imagenet"))) == (80, 91, 1000)
    assert coco80[0] == "person" and coco80[2] == "car" and coco80[79] == "toothbrush"
    assert coco91[0] == "__background__" and coco91[1] == "person" and coco91[12] == "N/A"
    assert coco91.count("N/A") == 10 and [n for n in coco91 if n != "N/A"][1:] == coco80
    assert set(LABEL_SETS) == {"imagenet", "coco80", "coco91"}
    with pytest.raises(ValueError, match="coco80"):
        label_set("coco")


def test_the_contract_names_a_detectors_outputs_and_checks_its_metadata():
    assert output_names(task="detection") == DETECTION_OUTPUTS
    assert DETECTION_OUTPUTS == ["boxes", "scores", "classes", "count", "heatmap"]
    assert output_names(False, True) == ["logits", "heatmap", "classes"]  # as before
    meta = ArtifactMetadata.from_json(det.metadata())
    assert meta.task == "detection" and meta.detection["max_detections"] == det.D
    assert meta.output_names == DETECTION_OUTPUTS
    assert meta.to_json()["detection"] == det.metadata()["detection"]
    with pytest.raises(MetadataError, match="detection must be a JSON object"):
        ArtifactMetadata.from_json({**det.metadata(), "detection": [3]})


def test_runtime_loads_a_detection_artifact_and_check_metadata_accepts_it(onnx_det, script_det):
    batch = samples.photo_batch(["chelsea.png"], det.SIZE)
    for path in (onnx_det, script_det):
        artifact = runtime.load(path)
        meta = check_metadata(artifact)
        assert meta.task == "detection" and meta.labels == tuple(det.LABELS)
        out = artifact.outputs(batch)
        assert list(out) == DETECTION_OUTPUTS
        assert out["classes"].dtype == out["count"].dtype == np.int64
        assert out["count"].tolist() == [det.COUNT]


def test_check_metadata_refuses_a_detector_whose_labels_or_outputs_do_not_fit(tmp_path):
    opened = SimpleNamespace(
        path="d.onnx",
        shapes={},
        output_names=list(DETECTION_OUTPUTS),
        metadata={**det.metadata(), "labels": ["a", "b"]},
    )
    with pytest.raises(UsageError, match="2 labels for 3 classes"):
        check_metadata(opened)
    opened.metadata, opened.output_names = det.metadata(), ["boxes", "scores", "heatmap"]
    with pytest.raises(UsageError, match="not an explainer.*expected boxes, scores, classes"):
        check_metadata(opened)


# boxes back in the original image's pixels


def test_boxes_map_back_to_the_original_pixels_for_stretch_and_pad():
    h, w = CHELSEA
    box = np.array([[8.0, 4.0, 40.0, 36.0]])
    stretch = detections.boxes_back(box, images.fit(CHELSEA, det.SIZE, "stretch"))
    np.testing.assert_allclose(stretch[0], [8 * w / 64, 4 * h / 48, 40 * w / 64, 36 * h / 48])
    # pad: s = min(48/300, 64/451) = 64/451, the image 64 x round(300·s) = 43 rows, 2 rows above
    pad = detections.boxes_back(box, images.fit(CHELSEA, det.SIZE, "pad"))
    np.testing.assert_allclose(pad[0], [8 * w / 64, 2 * h / 43, 40 * w / 64, 34 * h / 43])
    # in the padding: clipped to the image
    outside = detections.boxes_back(
        np.array([[0.0, 0.0, 64.0, 48.0]]), images.fit(CHELSEA, det.SIZE, "pad")
    )
    np.testing.assert_allclose(outside[0], [0, 0, w, h])


def _expected(box, original, mode):
    """Box ``box`` (input pixels of det.SIZE) in the pixels of an ``original`` image, by hand."""
    (h, w), (hh, ww) = original, det.SIZE
    if mode == "stretch":
        sx, sy, top, left = w / ww, h / hh, 0, 0
    else:
        s = min(hh / h, ww / w)
        ch, cw = round(h * s), round(w * s)
        sx, sy, top, left = w / cw, h / ch, (hh - ch) // 2, (ww - cw) // 2
    x1, y1, x2, y2 = box
    xs = [min(max((x - left) * sx, 0), w) for x in (x1, x2)]
    ys = [min(max((y - top) * sy, 0), h) for y in (y1, y2)]
    return [xs[0], ys[0], xs[1], ys[1]]


# explain-run


@pytest.mark.parametrize("mode", ["stretch", "pad"])
def test_explain_run_lists_detections_in_original_pixels_and_draws_their_boxes(
    onnx_det, photos, tmp_path, mode
):
    out = tmp_path / "o"
    assert _run("--model", onnx_det, "--images", photos, "--out", out, "--resize", mode) == 0
    rows = _rows(out)
    for name, original in (("chelsea.png", CHELSEA), ("rocket.jpg", ROCKET)):
        row = rows[name]
        assert "topk" not in row and len(row["detections"]) == det.COUNT
        for j, found in enumerate(row["detections"]):
            assert found["class"] == det.CLASSES[j]
            assert found["label"] == det.LABELS[det.CLASSES[j]]
            assert found["score"] == pytest.approx(det.SCORES[j], abs=1e-6)
            expected = _expected(det.BOXES[j], original, mode)
            np.testing.assert_allclose(found["box"], expected, atol=0.01)
        stem = os.path.splitext(name)[0]
        assert row["outputs"] == [f"{stem}.overlay.png"]
        drawn = cv2.imread(str(out / f"{stem}.overlay.png"))
        assert drawn.shape[:2] == original
        # box 0's bottom edge is drawn in its class's colour
        x1, _, x2, y2 = (round(v) for v in row["detections"][0]["box"])
        edge = drawn[y2, x1 + 5 : x2 - 5].astype(int)
        colour = np.array(detections.class_colour(det.CLASSES[0]))
        assert (np.abs(edge - colour).max(axis=1) < 40).mean() > 0.9


def test_per_detection_files_and_the_sheet(script_det, photos, tmp_path):
    out = tmp_path / "o"
    args = ("--model", script_det, "--images", photos / "chelsea.png", "--out", out)
    assert _run(*args, "--per-detection", "--save-heatmaps", "--sheet") == 0
    row = _rows(out)["chelsea.png"]
    files = ["chelsea.overlay.png", "chelsea.heatmap.png", "chelsea.heatmap.npy"]
    for j, found in enumerate(row["detections"]):
        stem = f"chelsea.det{j}"
        assert found["outputs"] == [
            f"{stem}.overlay.png",
            f"{stem}.heatmap.png",
            f"{stem}.heatmap.npy",
        ]
        files += found["outputs"]
        # map j explains detection j: its peak is at box j's centre, in the original pixels
        heat = np.load(out / f"{stem}.heatmap.npy")
        assert heat.shape == CHELSEA
        y, x = np.unravel_index(heat.argmax(), heat.shape)
        x1, y1, x2, y2 = found["box"]
        assert abs(x - (x1 + x2) / 2) < 8 and abs(y - (y1 + y2) / 2) < 8
    assert row["outputs"] == files
    assert not (out / "chelsea.det2.overlay.png").exists()
    # the best detection's map is the overlay's: NAME.heatmap.npy is map 0's
    np.testing.assert_array_equal(
        np.load(out / "chelsea.heatmap.npy"), np.load(out / "chelsea.det0.heatmap.npy")
    )
    # the sheet: the image, then one overlay per detection, each 200 high
    sheet = cv2.imread(str(out / "sheet.png"))
    panel = round(CHELSEA[1] * 200 / CHELSEA[0])
    assert sheet.shape[1] == 3 * panel + 2 * 6 + 2 * 10


def test_an_image_with_no_detections_is_no_error(onnx_det, tmp_path):
    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((90, 120, 3), np.uint8))
    out = tmp_path / "o"
    assert _run("--model", onnx_det, "--images", black, "--out", out, "--per-detection") == 0
    row = _rows(out)["black.png"]
    assert row["detections"] == [] and row["outputs"] == ["black.overlay.png"]
    assert not cv2.imread(str(out / "black.overlay.png")).any()  # no heat, no box


def test_a_class_agnostic_map_is_the_overlay_of_every_detection(tmp_path, photos):
    path = det.export(str(tmp_path / "m"), "torchscript", per_image=True)
    out = tmp_path / "o"
    args = ("--model", path, "--images", photos / "rocket.jpg", "--out", out)
    assert _run(*args, "--per-detection", "--save-heatmaps") == 0
    row = _rows(out)["rocket.jpg"]
    assert len(row["detections"]) == det.COUNT
    one = np.load(out / "rocket.heatmap.npy")
    np.testing.assert_array_equal(np.load(out / "rocket.det1.heatmap.npy"), one)


def test_resume_keeps_a_finished_detection_row(script_det, photos, tmp_path, capsys):
    out = tmp_path / "o"
    args = ("--model", script_det, "--images", photos, "--out", out, "--per-detection")
    assert _run(*args) == 0
    first = _rows(out)
    assert main([*map(str, args), "--resume"]) == 0
    assert "2 kept from an earlier run" in capsys.readouterr().out
    assert _rows(out) == first


def test_per_detection_is_refused_for_a_classifier(tmp_path, photos, capsys):
    path = det.export_classifier(str(tmp_path / "c"))
    out = tmp_path / "o"
    args = ("--model", path, "--images", photos / "chelsea.png", "--out", out)
    assert main([*map(str, args), "--per-detection"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--per-detection needs a detection export" in err
    assert not out.exists() or not os.listdir(out)


def test_a_class_index_is_refused_for_a_detector(script_det, photos, tmp_path, capsys):
    args = ("--model", script_det, "--images", photos / "chelsea.png", "--out", tmp_path / "o")
    assert main([*map(str, args), "--class-index", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--class-index 1 cannot apply" in err and "detection j" in err
