"""Detection artifacts (issue 27) behind the public runtime and explain-serve: ``load(path)(x)``
returns a detector's outputs, the server answers the ``detections`` explain-run writes for the
same photo (boxes in the file's pixels) with the overlay it draws, ``?detections=K`` keeps the K
best, bad queries are one-line 400s, an image with no detections answers ``[]``, and the Ray
deployment hands a detector's request and batch to the same handler. The artifacts are made in
the tests (:mod:`detector_artifacts`), to the contract, without the exporter."""

from __future__ import annotations

import asyncio
import json
import os
from types import SimpleNamespace

import cv2
import detector_artifacts as det
import numpy as np
import pytest
from test_serve import ALL, _png, explain_batch

import explain_export
from explain_export.artifact import samples
from explain_export.artifact.contract import DETECTION_OUTPUTS, Detections
from explain_export.artifact.serve import app
from explain_export.cli.run import main as run_main
from explain_export.errors import UsageError

NAMES = ("chelsea.png", "rocket.jpg")


@pytest.fixture(scope="module")
def det_onnx(tmp_path_factory) -> str:
    return det.export(str(tmp_path_factory.mktemp("det_onnx")), "onnx")


@pytest.fixture(scope="module")
def model(det_onnx) -> app.Model:
    return app.open_model(det_onnx, threads=1)


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    out = {}
    for name in NAMES:
        with open(samples.photo_path(name), "rb") as f:
            out[name] = f.read()
    _, black = cv2.imencode(".png", np.zeros((90, 120, 3), np.uint8))  # no detections
    out["black.png"] = black.tobytes()
    return out


@pytest.fixture(scope="module")
def expected(det_onnx, photos, tmp_path_factory) -> dict[str, dict]:
    """explain-run's rows and overlays for the photos: its ``detections`` per file."""
    folder, out = tmp_path_factory.mktemp("images"), tmp_path_factory.mktemp("run")
    for name, data in photos.items():
        (folder / name).write_bytes(data)
    args = ["--model", det_onnx, "--images", str(folder), "--out", str(out), "--quiet"]
    assert run_main([*args, "--save-heatmaps"]) == 0
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    result = {}
    for row in rows:
        stem = os.path.splitext(os.path.basename(row["file"]))[0]
        result[os.path.basename(row["file"])] = {
            "detections": row["detections"],
            "overlay": cv2.imread(str(out / f"{stem}.overlay.png"), cv2.IMREAD_UNCHANGED),
            "heatmap": cv2.imread(str(out / f"{stem}.heatmap.png"), cv2.IMREAD_UNCHANGED),
        }
    return result


def _post(handler: app.Handler, body: bytes, params: dict[str, str]) -> app.Reply:
    async def chunks():
        yield body

    return asyncio.run(handler.handle("POST", "/explain", params, str(len(body)), chunks()))


def _handler(model: app.Model) -> app.Handler:
    async def infer(item):
        (out,) = await handler.run_batch([item])
        return out

    handler = app.Handler(model, app.ServeOptions(), infer)
    return handler


# ---- the public runtime ------------------------------------------------------------------------


def test_load_calls_a_detector_and_returns_its_detections(det_onnx, tmp_path):
    """``load(path)(images)`` on a detection export: its five outputs by name (the heatmap in
    [0, 1]), for the export folder (ONNX) and for TorchScript; a class is one line."""
    script = det.export(str(tmp_path / "ts"), "torchscript")
    batch = np.concatenate(
        [samples.photo_batch(["chelsea.png"], det.SIZE), np.zeros((1, 3, *det.SIZE), np.float32)]
    )
    for path in (os.path.dirname(det_onnx), script):
        artifact = explain_export.load(path)
        found = artifact(batch)
        assert isinstance(found, Detections) and found._fields == tuple(DETECTION_OUTPUTS)
        out = artifact.outputs(batch)
        for name in DETECTION_OUTPUTS:
            np.testing.assert_array_equal(getattr(found, name), out[name])
        assert found.count.tolist() == [det.COUNT, 0]  # the black image has none
        assert found.classes[0].tolist() == det.CLASSES and (found.classes[1] == -1).all()
        np.testing.assert_allclose(found.boxes[0], det.BOXES)
        assert found.heatmap.shape == (2, det.D, *det.SIZE) and found.heatmap.max() <= 1
        assert found.heatmap[1].max() == 0
        with pytest.raises(UsageError, match="is a detector and takes no class") as err:
            artifact(batch, np.array([1, 1]))
        assert "\n" not in str(err.value)
        artifact(batch, np.array([-1, -1]))  # -1: nothing asked


# ---- explain-serve's handling, no Ray ----------------------------------------------------------


def test_served_detections_equal_explain_runs_rows_and_overlays(model, photos, expected):
    requests = [(photos[n], ALL) for n in NAMES]
    replies = explain_batch(model, requests, app.ServeOptions())
    for name, reply in zip(NAMES, replies, strict=True):
        body, want = reply.body, expected[name]
        assert reply.status == 200 and body["batch_size"] == len(NAMES)
        assert body["detections"] == want["detections"]
        assert [d["label"] for d in body["detections"]] == ["person", "car"]
        assert "topk" not in body and "explained" not in body
        np.testing.assert_array_equal(_png(body["overlay_png"]), want["overlay"])
        np.testing.assert_array_equal(_png(body["heatmap_png"]), want["heatmap"])
        assert (body["height"], body["width"]) == want["heatmap"].shape


def test_detections_k_keeps_the_k_best_and_draws_only_them(model, photos, expected):
    handler = _handler(model)
    one = _post(handler, photos["chelsea.png"], {"detections": "1"})
    every = _post(handler, photos["chelsea.png"], {"detections": " 10 "})
    assert one.status == every.status == 200
    want = expected["chelsea.png"]["detections"]
    assert one.body["detections"] == want[:1] and every.body["detections"] == want
    assert not np.array_equal(_png(one.body["overlay_png"]), _png(every.body["overlay_png"]))
    bare = _post(handler, photos["chelsea.png"], {"overlay": "0", "detections": "2"})
    assert set(bare.body) == {"detections", "height", "width", "batch_size"}


def test_an_image_with_no_detections_answers_an_empty_list(model, photos, expected):
    (reply,) = explain_batch(model, [(photos["black.png"], ALL)], app.ServeOptions())
    assert reply.status == 200 and reply.body["detections"] == []
    assert expected["black.png"]["detections"] == []
    np.testing.assert_array_equal(_png(reply.body["overlay_png"]), np.zeros((90, 120, 3)))
    assert _png(reply.body["heatmap_png"]).max() == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"detections": "0"}, "detections='0' must be a positive integer"),
        ({"detections": "-1"}, "detections='-1' must be a positive integer"),
        ({"detections": "two"}, "detections='two' must be a positive integer"),
        ({"detections": "1.5"}, "must be a positive integer"),
        ({"detections": ""}, "must be a positive integer"),
        ({"detections": "9" * 5000}, "must be a positive integer"),
        ({"topk": "3"}, "is a detector: it answers its detections, not a topk; use detections"),
        ({"class": "1"}, "is a detector: its map j explains its detection j; drop class"),
    ],
)
def test_bad_detection_queries_are_one_line_400s(model, photos, params, message):
    reply = _post(_handler(model), photos["chelsea.png"], params)
    assert reply.status == 400 and set(reply.body) == {"error"}
    assert message in reply.body["error"] and "\n" not in reply.body["error"]


def test_detections_is_refused_for_a_model_that_is_no_detector():
    with pytest.raises(app.RequestError, match="detections is for a detection model") as err:
        app.parse_query({"detections": "1"}, 1000)
    assert err.value.status == 400
    assert app.parse_query({"detections": "3"}, None, task="detection").detections == 3


def test_health_of_a_detector_takes_its_class_count_from_the_metadata(det_onnx, tmp_path):
    """A detector has no ``logits`` to read the class count from: ``num_classes`` it is, with or
    without labels."""
    folder = tmp_path / "nolabels"
    folder.mkdir()
    os.link(det_onnx, folder / "explainer.onnx")
    (folder / "explainer.json").write_text(json.dumps(det.metadata(labels=None)))
    model = app.open_model(str(folder))
    health = app.health(model)
    assert (model.num_classes, model.labels) == (len(det.LABELS), None)
    assert health["task"] == "detection" and health["classes"] == len(det.LABELS)
    assert health["max_detections"] == det.D and health["top_k"] is None


# ---- the Ray deployment: a thin adapter over the same handler -----------------------------------


def test_the_deployment_answers_a_detector_like_the_handler(det_onnx, model, photos, expected):
    """The deployment's ``__call__`` and its ``@serve.batch`` method (undecorated, no Ray
    instance) on a detection export: the detections explain-run writes."""
    pytest.importorskip("ray.serve", reason="needs the serve extra: pip install -e '.[serve]'")
    from explain_export.artifact.serve import ray_app

    cls = ray_app.make_deployment(ray_app.ServerConfig(det_onnx)).func_or_class
    replica = cls.__new__(cls)  # not __init__: that opens the model inside a Ray replica

    async def infer(item):
        (out,) = await cls.infer.__wrapped__(replica, [item])
        return out

    replica.handler = app.Handler(model, app.ServeOptions(), infer)
    data = photos["rocket.jpg"]

    async def stream():
        yield data

    request = SimpleNamespace(
        method="POST",
        url=SimpleNamespace(path="/explain"),
        query_params={"detections": "1", "heatmap": "1"},
        headers={"content-length": str(len(data))},
        stream=stream,
    )
    response = asyncio.run(replica(request))
    body = json.loads(response.body)
    assert response.status_code == 200
    assert body["detections"] == expected["rocket.jpg"]["detections"][:1]
    np.testing.assert_array_equal(_png(body["heatmap_png"]), expected["rocket.jpg"]["heatmap"])


# ---- a real detection export (the tiny YOLO-like detector) -------------------------------------


@pytest.mark.slow
def test_a_real_detection_export_runs_serves_and_fits_triton(tmp_path):
    """:func:`export_detector` of the tests' tiny YOLO-like detector: ``load(path)(x)`` gives its
    outputs, the server answers the detections explain-run writes for real photos, and its
    Triton repository matches both files."""
    import detectors
    from test_triton import _parse, check_onnx, check_torchscript

    from explain_export.artifact import triton
    from explain_export.builder.detect_build import build_detector
    from explain_export.builder.export.detection import export_detector

    size = (128, 160)
    explainer = build_detector(detectors.tiny_yolo(), size)
    result = export_detector(explainer, str(tmp_path / "out"), ("onnx", "torchscript"))
    batch = samples.photo_batch(list(NAMES), size)
    found = explain_export.load(result.paths["onnx"])(batch)
    assert isinstance(found, Detections) and found.boxes.shape == (2, explainer.max_detections, 4)
    assert (found.count > 0).any()  # the detector finds something in the photos

    folder, out = tmp_path / "photos", tmp_path / "run"
    folder.mkdir()
    for name in NAMES:
        os.symlink(samples.photo_path(name), folder / name)
    args = ["--model", result.paths["onnx"], "--images", str(folder), "--out", str(out)]
    assert run_main([*args, "--quiet"]) == 0
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    model = app.open_model(result.paths["onnx"])
    bodies = []
    for name in NAMES:
        with open(samples.photo_path(name), "rb") as f:
            bodies.append((f.read(), ALL))
    replies = explain_batch(model, bodies, app.ServeOptions())
    by_name = {os.path.basename(r["file"]): r["detections"] for r in rows}
    for name, reply in zip(NAMES, replies, strict=True):
        assert reply.status == 200 and reply.body["detections"] == by_name[name]

    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    repo = tmp_path / "repo"
    triton.write_triton_repo(result.paths, result.metadata, str(repo), name="yolo")
    check_onnx(pb2, _parse(pb2, repo / "yolo_onnx" / "config.pbtxt"), result.paths["onnx"])
    ts_cfg = _parse(pb2, repo / "yolo_torchscript" / "config.pbtxt")
    check_torchscript(pb2, ts_cfg, result.paths["torchscript"], size)


@pytest.mark.serve
def test_live_a_detector_answers_like_the_handler(det_onnx, photos, expected, tmp_path):
    """explain-serve (Ray Serve) on a detection export: /healthz says detection, each photo
    gets explain-run's detections, ``detections=1`` one, a bad K a 400, a black image []."""
    pytest.importorskip("ray.serve", reason="needs the serve extra: pip install -e '.[serve]'")
    from test_serve import Server, _request

    srv = Server(det_onnx, str(tmp_path / "server.log"), replicas=1)
    try:
        srv.wait_ready()
        health = _request(srv.port, "GET", "/healthz")[1]
        assert (health["task"], health["max_detections"]) == ("detection", det.D)
        for name in (*NAMES, "black.png"):
            status, body, _ = _request(srv.port, "POST", "/explain?heatmap=1", photos[name])
            assert status == 200 and body["detections"] == expected[name]["detections"]
            np.testing.assert_array_equal(_png(body["overlay_png"]), expected[name]["overlay"])
        status, body, _ = _request(srv.port, "POST", "/explain?detections=1", photos[NAMES[0]])
        assert status == 200 and body["detections"] == expected[NAMES[0]]["detections"][:1]
        status, body, _ = _request(srv.port, "POST", "/explain?detections=0", photos[NAMES[0]])
        assert status == 400 and "must be a positive integer" in body["error"]
    finally:
        code = srv.stop()
    assert code == 0, srv.log()[-3000:]
