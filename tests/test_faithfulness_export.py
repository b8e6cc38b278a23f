"""``--faithfulness`` (issue 30, part 1): the four scores of each map in the graph, against a
reference written here (an autograd Grad-CAM by hooks, :func:`reference.gradcam`, on the image
and on the image times its map), in every format; what explain-run and the server report from
them; bad requests refused in one line."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from explain_export.artifact import faithfulness as fa
from explain_export.artifact import runtime, samples
from explain_export.artifact.contract import FAITHFULNESS_OUTPUTS, graph_image, heatmap_unit
from explain_export.artifact.pipeline import OverlayOptions, read
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.graph_options import GraphOptions
from explain_export.errors import OptionError

from commands import photo_folder
from models import tiny_resnet, tiny_seg
from reference import gradcam, normalize, region_gradcam

SIZE = (64, 64)
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
LAYER = "layer2"


def photos(size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.stack([read(samples.photo_path(p), size, OverlayOptions()).input for p in PHOTOS])


def softmax_at(logits: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    return logits.softmax(1).gather(1, classes[:, None])[:, 0].numpy()


def pearson01(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(pearson + 1) / 2`` per image, written out: 0.5 where a map is flat."""
    out = []
    for x, y in zip(a.reshape(len(a), -1), b.reshape(len(b), -1), strict=True):
        x, y = x.astype(np.float64) - x.mean(), y.astype(np.float64) - y.mean()
        den = np.sqrt((x * x).sum() * (y * y).sum())
        out.append(((x * y).sum() / den if den > 0 else 0.0) + 1)
    return np.array(out) / 2


def reference_scores(model, images: np.ndarray, classes: torch.Tensor) -> dict[str, np.ndarray]:
    """The four scores of Grad-CAM at ``LAYER`` for ``classes``, by hooks and autograd."""
    x = torch.from_numpy(images)
    layer = model.get_submodule(LAYER)
    m, logits = gradcam(model, normalize(x), layer, class_index=classes)
    masked = x * torch.from_numpy(m)
    m2, logits2 = gradcam(model, normalize(masked), layer, class_index=classes)
    return {
        "heatmap": m,
        "score": softmax_at(logits, classes),
        "masked_score": softmax_at(logits2, classes),
        "complexity": m.mean((1, 2, 3)),
        "coherency": pearson01(m, m2),
    }


def export(folder, formats=("onnx",), graph=GraphOptions(), top_k=None, **kwargs):
    model = tiny_resnet(seed=3).eval()
    explainer = build_explainer(model, LAYER, "gradcam", input_size=SIZE, graph=graph, top_k=top_k)
    labels = [f"class{i}" for i in range(10)]
    try:
        result = export_explainer(
            explainer, str(folder), formats, labels=labels, faithfulness=True, **kwargs
        )
    finally:
        explainer.remove()
    return model, result


def check_against_reference(model, path: str, images: np.ndarray, input_format: str) -> None:
    art = runtime.load(path)
    out = art.outputs(images)
    classes = torch.from_numpy(out["logits"]).argmax(1)
    x = graph_image(images, input_format)  # what the graph takes, as float RGB in [0, 1]
    if input_format == "uint8-nhwc":
        x = x.transpose(0, 3, 1, 2).astype(np.float32) / 255
    want = reference_scores(model, x, classes)
    np.testing.assert_allclose(heatmap_unit(out["heatmap"]), want["heatmap"], atol=5e-3)
    for name in FAITHFULNESS_OUTPUTS:
        assert out[name].shape == (len(images),) and out[name].dtype == np.float32
        np.testing.assert_allclose(out[name], want[name], atol=2e-3, err_msg=f"{path}: {name}")


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    return export(tmp_path_factory.mktemp("faithful"))


def test_the_four_scores_equal_the_reference_on_photos(onnx_export):
    model, result = onnx_export
    check_against_reference(model, result.paths["onnx"], photos(), "float-nchw")
    assert all(r.ok and r.scores_err is not None for r in result.parity)
    meta = result.metadata
    names = [t["name"] for t in meta["outputs"]]
    assert names == ["logits", "heatmap", *FAITHFULNESS_OUTPUTS]
    assert meta["outputs"][-1]["shape"] == ["N"] and meta["parity"]["scores_tol"] == 1e-3


def test_a_score_that_is_wrong_in_the_file_fails_the_reference(onnx_export):
    """The check above can fail: another class's scores are not the reference's."""
    model, result = onnx_export
    images = photos()
    out = runtime.load(result.paths["onnx"]).outputs(images)
    other = (torch.from_numpy(out["logits"]).argmax(1) + 1) % 10
    want = reference_scores(model, images, other)
    assert np.abs(out["masked_score"] - want["masked_score"]).max() > 1e-2


@pytest.mark.slow
def test_every_format_with_uint8_input_and_heatmap_and_a_free_size(tmp_path):
    graph = GraphOptions(input_format="uint8-nhwc", heatmap_dtype="uint8")
    model, result = export(tmp_path, ("torchscript", "onnx", "pt2"), graph, dynamic_size=True)
    for fmt in ("torchscript", "onnx", "pt2"):
        check_against_reference(model, result.paths[fmt], photos(), "uint8-nhwc")
        check_against_reference(model, result.paths[fmt], photos((96, 80)), "uint8-nhwc")


@pytest.mark.slow
def test_top_k_scores_each_map(tmp_path):
    model, result = export(tmp_path, top_k=2)
    images = photos()
    out = runtime.load(result.paths["onnx"]).outputs(images)
    for j in range(2):
        want = reference_scores(model, images, torch.from_numpy(out["classes"][:, j]))
        for name in FAITHFULNESS_OUTPUTS:
            assert out[name].shape == (3, 2)
            np.testing.assert_allclose(out[name][:, j], want[name], atol=2e-3, err_msg=name)


def test_explain_run_and_the_server_report_the_scores_and_what_they_give(onnx_export, tmp_path):
    from explain_export.artifact.serve import app
    from explain_export.cli.run import main as run_main

    _, result = onnx_export
    folder = photo_folder(tmp_path / "photos", PHOTOS)
    out = tmp_path / "run"
    assert (
        run_main(["--model", result.paths["onnx"], "--images", str(folder), "--out", str(out)]) == 0
    )
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    art = runtime.load(result.paths["onnx"])
    for row in rows:
        image = read(row["file"], SIZE, OverlayOptions()).input[None]
        graph = art.outputs(image)
        got = row["explained"][0]["faithfulness"]
        assert got == fa.map_scores(*(float(graph[k][0]) for k in FAITHFULNESS_OUTPUTS))
        drop = max(0.0, got["score"] - got["masked_score"]) / got["score"]
        assert got["average_drop"] == pytest.approx(drop, abs=2e-6)
        terms = (got["coherency"], 1 - got["complexity"], 1 - drop)
        assert got["adcc"] == pytest.approx(3 / sum(1 / t for t in terms), abs=2e-6)

    model = app.open_model(result.paths["onnx"])
    handler = app.Handler(model, app.ServeOptions(), None)

    async def infer(item):
        return (await handler.run_batch([item]))[0]

    handler.infer = infer
    body = (folder / PHOTOS[0]).read_bytes()
    reply = asyncio.run(handler.explain(body, app.parse_query({}, model.num_classes, False)))
    assert reply.status == 200
    assert reply.body["explained"][0]["faithfulness"] == rows[0]["explained"][0]["faithfulness"]


def test_a_method_of_no_class_is_refused_before_the_model_loads(tmp_path, capsys):
    from explain_export.cli.export import main

    code = main(["--method", "eigencam", "--faithfulness", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--faithfulness scores the map of a class, and eigencam explains none" in err
    assert not (tmp_path / "x").exists()


def region_probability(scores: torch.Tensor, c: int, pixels: np.ndarray) -> float:
    """The mean over ``pixels`` of class ``c``'s softmax probability, by numpy."""
    p = scores.softmax(0)[c].numpy()
    return float(p[pixels].mean()) if pixels.any() else 0.0


@pytest.mark.slow
def test_a_segmentation_region_is_scored_over_its_pixels(tmp_path):
    """``score`` and ``masked_score``: class c's mean probability over the pixels predicted as
    c on the image, on the image and on the image times its map; ``m'`` the region map of c on
    the masked image (its own pixels of c)."""
    model = tiny_seg(seed=6).eval()  # its maps of class 1 are not flat on the photos
    explainer = build_explainer(model, None, "gradcam", SIZE, background=4)
    result = export_explainer(explainer, str(tmp_path), ("onnx",), faithfulness=True)
    explainer.remove()
    meta = result.metadata
    assert [o["name"] for o in meta["outputs"]] == [
        "logits",
        "heatmap",
        "classes",
        *FAITHFULNESS_OUTPUTS,
    ]
    assert "mean over R" in meta["outputs"][3]["meaning"]
    images = photos()
    out = runtime.load(result.paths["onnx"]).outputs(images)
    x = torch.from_numpy(images)
    layer = model.backbone[2]
    m, classes = region_gradcam(model, normalize(x), layer, background=4)
    assert out["classes"][:, 0].tolist() == classes
    assert (m.max((1, 2, 3)) > 0.99).all() and (m.mean((1, 2, 3)) < 0.9).all()  # not flat
    masked = x * torch.from_numpy(m)
    m2, _ = region_gradcam(model, normalize(masked), layer, classes)
    with torch.no_grad():
        scores, scores2 = model(normalize(x))["out"], model(normalize(masked))["out"]
    for n, c in enumerate(classes):
        pixels = scores[n].argmax(0).numpy() == c
        assert 0 < pixels.mean() < 1  # a region, not the whole image
        want = {
            "score": region_probability(scores[n], c, pixels),
            "masked_score": region_probability(scores2[n], c, pixels),
            "complexity": m[n].mean(),
            "coherency": pearson01(m[n : n + 1], m2[n : n + 1])[0],
        }
        for name, value in want.items():
            assert out[name][n] == pytest.approx(value, abs=2e-3), name


def test_the_triton_config_lists_the_four_scores(onnx_export):
    from explain_export.artifact.triton import model_config

    config = model_config(onnx_export[1].metadata, "onnx", "faithful")
    outputs = {o.name: o for o in config.output}
    assert list(outputs) == ["logits", "heatmap", *FAITHFULNESS_OUTPUTS]
    for name in FAITHFULNESS_OUTPUTS:  # [N]: the batch alone, Triton's dims [1] reshaped to []
        assert list(outputs[name].dims) == [1] and list(outputs[name].reshape.shape) == []


def test_the_parquet_rows_keep_each_maps_scores():
    """``--engine ray`` writes ``predictions.parquet``: a map's and a region's ``faithfulness``
    come back as written, and rows without them stay as they were."""
    import io

    import pyarrow.parquet as pq

    from explain_export.artifact.ray_run import parquet_bytes
    from explain_export.artifact.runner import ImageResult

    scores = fa.map_scores(0.8, 0.6, 0.3, 0.9)
    entry = {"class": 1, "label": "a", "score": 0.8, "outputs": ["a.png"]}
    row = ImageResult("a.png", "a", [{"class": 1, "label": "a", "score": 0.8}], outputs=["a.png"])
    row.explained = [{**entry, "faithfulness": scores}]
    table = pq.read_table(io.BytesIO(parquet_bytes([row])))
    assert table.to_pylist()[0]["explained"][0]["faithfulness"] == scores
    row.explained = [entry]
    assert (
        "faithfulness"
        not in pq.read_table(io.BytesIO(parquet_bytes([row]))).to_pylist()[0]["explained"][0]
    )

    region = {"class": 1, "label": "a", "pixel_share": 0.5, "note": None, "predicted": []}
    row = ImageResult("a.png", "a", outputs=["a.png"], region={**region, "faithfulness": scores})
    table = pq.read_table(io.BytesIO(parquet_bytes([row], segmentation=True)))
    assert table.to_pylist()[0]["faithfulness"] == scores

    found = {"box": [1.0, 2.0, 3.0, 4.0], "class": 1, "label": "a", "score": 0.8, "outputs": None}
    row = ImageResult("a.png", "a", outputs=["a.png"])
    row.detections = [{**found, "faithfulness": scores}]
    table = pq.read_table(io.BytesIO(parquet_bytes([row], detection=True)))
    assert table.to_pylist()[0]["detections"][0]["faithfulness"] == scores


def detection_reference(model, image: torch.Tensor) -> dict[str, list]:
    """Per detection of ``image`` ``[3,H,W]`` (by the autograd reference): its four scores, the
    masked image's detections found by the same reference and matched here (same class, the
    box that overlaps most, IoU >= 0.5)."""
    from explain_export.builder.maths.boxes import box_iou

    from detection_reference import reference_gradcam

    ref = reference_gradcam(model, image[None])
    boxes, classes, scores, maps = (ref[k][0] for k in ("boxes", "classes", "scores", "heatmap"))
    out: dict[str, list] = {name: [] for name in FAITHFULNESS_OUTPUTS}
    for j in range(len(classes)):
        masked = reference_gradcam(model, (image * maps[j])[None])
        if len(masked["classes"]) and masked["classes"][0].numel():
            b2, c2, s2, m2 = (masked[k][0] for k in ("boxes", "classes", "scores", "heatmap"))
            iou = box_iou(boxes[j][None, None], b2[None])[0] * (c2 == classes[j])
            k = int(iou.argmax())
            hit = bool(iou[k] >= 0.5)
        else:
            hit = False
        out["score"].append(float(scores[j]))
        out["masked_score"].append(float(s2[k]) if hit else 0.0)
        out["complexity"].append(float(maps[j].mean()))
        other = m2[k].numpy() if hit else np.zeros_like(maps[j].numpy())
        out["coherency"].append(float(pearson01(maps[j][None].numpy(), other[None])[0]))
    return out


@pytest.mark.slow
def test_each_detection_is_scored_on_the_image_times_its_map(tmp_path):
    """A one-stage detector's ``--faithfulness``: each detection's four scores in the ONNX file
    against the autograd reference, detection by detection (the masked image's detection that
    is detection j: the same class, the box that overlaps b_j most, IoU >= 0.5)."""
    from detectors import tiny_yolo

    from explain_export.builder.detect_build import build_detector
    from explain_export.builder.export.detection import export_detector

    size = (128, 160)
    model = tiny_yolo()
    with build_detector(model, size) as explainer:
        result = export_detector(explainer, str(tmp_path), ("onnx",), faithfulness=True)
    assert all(r["ok"] and r["scores_err"] is not None for r in result.metadata["parity"]["rows"])
    names = [o["name"] for o in result.metadata["outputs"]]
    assert names[5:] == list(FAITHFULNESS_OUTPUTS)
    images = np.stack([samples.load_rgb(samples.photo_path(n), size) for n in PHOTOS[:2]])
    out = runtime.load(result.paths["onnx"]).outputs(images)
    matched = 0
    for n in range(len(images)):
        want = detection_reference(model, torch.from_numpy(images[n]))
        count = int(out["count"][n])
        assert count == len(want["score"]) > 0
        for name in FAITHFULNESS_OUTPUTS:
            np.testing.assert_allclose(out[name][n, :count], want[name], atol=1e-4, err_msg=name)
            assert (out[name][n, count:] == 0).all()  # padding rows
        matched += sum(s > 0 for s in want["masked_score"])
    assert matched > 0  # some detection is found again on its masked image


def test_a_detector_with_one_map_per_image_is_refused_in_one_line(tmp_path):
    from detectors import tiny_yolo

    from explain_export.builder.detect_build import build_detector
    from explain_export.builder.export.detection import export_detector

    with build_detector(tiny_yolo(), (128, 160), "eigencam") as explainer:
        with pytest.raises(OptionError, match="eigencam gives one map per image; pick gradcam"):
            export_detector(explainer, str(tmp_path / "x"), ("onnx",), faithfulness=True)
        assert explainer.scorer is None
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_two_stage_detections_are_scored_against_autograd(tmp_path):
    """Faster R-CNN: each detection's four scores in the ONNX file against the model's own
    eager detections and an autograd Grad-CAM of each score (``tests/rcnn.py``), on the image
    and on the image times the map, matched here (same class, most overlap, IoU >= 0.5)."""
    from rcnn import gradcam as rcnn_gradcam
    from rcnn import photos as rcnn_photos
    from rcnn import tiny_two_stage

    from explain_export.builder.detect_build import build_detector
    from explain_export.builder.export.detection import export_detector
    from explain_export.builder.maths.boxes import box_iou

    size, d = (100, 150), 5
    model = tiny_two_stage("faster")
    with build_detector(model, size, "gradcam", max_detections=d) as explainer:
        result = export_detector(explainer, str(tmp_path), ("onnx",), faithfulness=True)
    images = rcnn_photos(("chelsea.png", "rocket.jpg"), size)  # rocket's 3rd is found again
    out = runtime.load(result.paths["onnx"]).outputs(images.numpy())
    matched = 0
    for n, image in enumerate(images):
        with torch.no_grad():
            found = model([image])[0]
        k = min(d, len(found["scores"]))
        assert int(out["count"][n]) == k > 0
        for j in range(k):
            m = rcnn_gradcam(model, image, j)
            masked = image * m
            with torch.no_grad():
                again = model([masked])[0]
            boxes2, labels2 = again["boxes"][:d], again["labels"][:d]
            iou = box_iou(found["boxes"][j][None, None], boxes2[None])[0]
            iou = iou * (labels2 == found["labels"][j])
            hit = len(iou) > 0 and bool(iou.max() >= 0.5)
            best = int(iou.argmax()) if hit else 0
            other = rcnn_gradcam(model, masked, best).numpy() if hit else np.zeros(size)
            want = {
                "score": float(found["scores"][j]),
                "masked_score": float(again["scores"][best]) if hit else 0.0,
                "complexity": float(m.mean()),
                "coherency": float(pearson01(m[None].numpy(), other[None])[0]),
            }
            for name, value in want.items():
                assert out[name][n, j] == pytest.approx(value, abs=1e-4), (n, j, name)
            matched += hit
    assert matched > 0
