"""A ``--top-k K`` artifact in every consumer: explain-run (files, predictions, sheet, resume,
refusals) and the server's handling (no Ray); the Ray engine, the live server and Triton are
tested beside the others of their kind (test_ray_run, test_serve, test_triton).

The independent check: map j of an image equals what the ordinary runner draws with a
single-class export asked for that image's j-th class (``--class-index``), file for file."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from explain_export.artifact import images, overlay, pipeline, runner, runtime, samples
from explain_export.artifact.serve import app
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.cli.run import main as run_main

from models import tiny_resnet

SIZE = (64, 64)
K = 2
LABELS = [f"class{i}" for i in range(10)]
PHOTOS = ("chelsea.png", "rocket.jpg")


def _export(out, fmt: str = "onnx", **kwargs) -> str:
    top_k = kwargs.pop("top_k", None)
    explainer = build_explainer(tiny_resnet(seed=3), None, "cam", SIZE, top_k=top_k)
    result = export_explainer(explainer, str(out), (fmt,), labels=LABELS, **kwargs)
    explainer.remove()
    return result.paths[fmt]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, str]:
    """One model two ways: top-K (ONNX, for the server too), and one class per call (a class
    input; TorchScript, the quicker export)."""
    return {
        "top": _export(tmp_path_factory.mktemp("top"), top_k=K),
        "single": _export(tmp_path_factory.mktemp("single"), "torchscript", class_input=True),
    }


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        shutil.copy(samples.photo_path(name), d / name)
    return d


def _rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / runner.PREDICTIONS).read_text().splitlines()]


def _graph(path: str, photo: str) -> dict[str, np.ndarray]:
    """The artifact's own outputs for one photo, fitted as the runner fits it."""
    fitted = pipeline.fit(images.read_bgr(photo), SIZE, "stretch")
    return runtime.load(path).outputs(fitted.input[None])


@pytest.fixture(scope="module")
def top_run(exports, photo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("top_run")
    args = ["--model", exports["top"], "--images", str(photo_dir), "--out", str(out)]
    assert run_main([*args, "--save-heatmaps", "--sheet", "--topk", "3", "--quiet"]) == 0
    return out, args


def test_explain_run_writes_a_map_per_class_named_by_rank(exports, photo_dir, top_run):
    out, _ = top_run
    for row in _rows(out):
        stem = os.path.splitext(os.path.basename(row["file"]))[0]
        graph = _graph(exports["top"], row["file"])
        classes, logits = graph["classes"][0], graph["logits"][0]
        p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert [m["class"] for m in row["explained"]] == classes.tolist()
        assert [m["label"] for m in row["explained"]] == [LABELS[c] for c in classes]
        np.testing.assert_allclose([m["score"] for m in row["explained"]], p[classes], atol=1e-6)
        assert [m["class"] for m in row["topk"][:K]] == classes.tolist()  # best first
        files = [
            [f"{stem}.overlay.png", f"{stem}.heatmap.png", f"{stem}.heatmap.npy"],
            [f"{stem}.top2.overlay.png", f"{stem}.top2.heatmap.png", f"{stem}.top2.heatmap.npy"],
        ]
        assert [m["outputs"] for m in row["explained"]] == files
        assert row["outputs"] == files[0] + files[1] and "class_index" not in row
        original = cv2.imread(row["file"])
        for overlay_png, png, npy in files:
            heat = np.load(out / npy)
            assert heat.shape == original.shape[:2]
            np.testing.assert_array_equal(cv2.imread(str(out / png), 0), overlay.levels(heat))
            blend = overlay.blend(original, overlay.colorize(heat), 0.4)
            np.testing.assert_array_equal(cv2.imread(str(out / overlay_png)), blend)


def test_map_j_is_the_single_class_runner_for_the_jth_class(exports, top_run, tmp_path):
    out, _ = top_run
    single = runtime.load(exports["single"])
    for row in _rows(out):
        for j, m in enumerate(row["explained"]):
            d = tmp_path / f"{j}-{os.path.basename(row['file'])}"
            opts = runner.RunOptions(out_dir=str(d), save_heatmaps=True, class_index=m["class"])
            (result,) = runner.run(single, [row["file"]], opts, names=["x"]).results
            assert result.error is None and result.class_index == m["class"]
            got, want = m["outputs"], result.outputs
            np.testing.assert_allclose(np.load(out / got[2]), np.load(d / want[2]), atol=1e-5)
            a, b = (cv2.imread(str(p)).astype(int) for p in (out / got[0], d / want[0]))
            assert np.abs(a - b).max() <= 3  # a level apart at most, where floats round apart
            assert (a == b).mean() > 0.999


def test_the_sheet_row_is_the_original_and_k_captioned_overlays(top_run):
    out, _ = top_run
    sheet = cv2.imread(str(out / runner.SHEET))
    widths = []
    for name in PHOTOS:
        h, w = cv2.imread(samples.photo_path(name)).shape[:2]
        widths.append((1 + K) * max(1, round(w * 200 / h)) + 6 * K)
    rows = len(PHOTOS) * (30 + 22 + 200)  # caption, the line of class captions, the panels
    assert sheet.shape == (rows + 10 * (len(PHOTOS) + 1), max(widths) + 20, 3)


def test_sheet_captions_stay_over_their_panels():
    panels = [np.full((50, 80, 3), c, np.uint8) for c in (0, 128)]
    row = overlay.sheet_row(panels, "file.png", 50, captions=["W" * 40, ""])
    assert row.shape == (30 + 22 + 50, 80 + 6 + 80, 3)
    line = row[30:52]
    assert line[:, :80].min() < 128  # the first caption is drawn ...
    assert line[:, 80:].min() == 255  # ... and cut at its panel: the gap and the next stay white
    plain = overlay.sheet_row(panels, "file.png", 50)
    assert plain.shape == (30 + 50, 166, 3)  # no captions: the row as before


@pytest.mark.slow
def test_torchscript_top_k_runs_the_same(photo_dir, top_run, tmp_path):
    out, _ = top_run
    model = _export(tmp_path / "export", "torchscript", top_k=K)
    ts = tmp_path / "ts"
    args = ["--model", model, "--images", str(photo_dir), "--out", str(ts)]
    assert run_main([*args, "--save-heatmaps", "--topk", "3", "--quiet"]) == 0
    for a, b in zip(_rows(ts), _rows(out), strict=True):
        assert [m["class"] for m in a["explained"]] == [m["class"] for m in b["explained"]]
        assert a["outputs"] == b["outputs"]
        for f in a["outputs"][2::3]:
            np.testing.assert_allclose(np.load(ts / f), np.load(out / f), atol=1e-5)


def test_resume_keeps_finished_images_and_redoes_a_missing_map(exports, top_run, tmp_path, capsys):
    done, args = top_run
    out = tmp_path / "o"
    shutil.copytree(done, out)
    (out / "rocket.top2.overlay.png").unlink()
    args = [*args[: args.index("--out")], "--out", str(out), "--save-heatmaps", "--topk", "3"]
    capsys.readouterr()
    assert run_main([*args, "--resume"]) == 0
    assert "2 of 2 images done (1 kept from an earlier run)" in capsys.readouterr().out
    assert _rows(out) == _rows(done) and (out / "rocket.top2.overlay.png").is_file()
    # an ordinary export's rows name one map: a top-k run with --resume redoes them all
    plain = tmp_path / "plain"
    single = ["--model", exports["single"], *args[2 : args.index("--out")], "--out", str(plain)]
    assert run_main([*single, "--save-heatmaps"]) == 0
    capsys.readouterr()
    assert run_main([*args[: args.index("--out")], "--out", str(plain), "--resume"]) == 0
    assert "2 of 2 images done, 0 failed" in capsys.readouterr().out
    assert all(len(r["explained"]) == K for r in _rows(plain))


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--class-index", "3"],
            "--class-index 3 cannot apply to '{model}': a top-2 export explains the 2 best "
            "classes of each image, and its graph picks them; drop --class-index",
        ),
        (["--images", "x.top2.png"], "would both write 'x.top2.overlay.png'"),
    ],
)
def test_what_a_top_k_run_cannot_do_is_one_line(exports, tmp_path, capsys, extra, message):
    for name in ("x.png", "x.top2.png"):
        shutil.copy(samples.photo_path("coffee.png"), tmp_path / name)
    out = tmp_path / "o"
    args = ["--model", exports["top"], "--out", str(out), "--images", str(tmp_path / "x.png")]
    if extra[0] == "--images":
        args.append(str(tmp_path / extra[1]))
        extra = []
    assert run_main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert message.format(model=exports["top"]) in err and len(err.splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())


# ---- the server's handling, no Ray --------------------------------------------------------------


def _serve(model: app.Model, body: bytes, params: dict[str, str]) -> app.Reply:
    """One request through the deployment's own handling (app.Handler), without Ray."""
    handler = app.Handler(model, app.ServeOptions(), None)

    async def infer(item):
        return (await handler.run_batch([item]))[0]

    handler.infer = infer

    async def chunks():
        yield body

    return asyncio.run(handler.handle("POST", "/explain", params, None, chunks()))


def _png(b64: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)


def test_the_server_answers_k_maps_with_their_labels_as_explain_run_draws_them(exports, top_run):
    out, _ = top_run
    model = app.open_model(exports["top"])
    assert app.health(model)["top_k"] == K
    for row in _rows(out):
        with open(row["file"], "rb") as f:
            body = f.read()
        reply = _serve(model, body, {"heatmap": "1", "topk": "3"})
        assert reply.status == 200
        assert set(reply.body) == {"topk", "height", "width", "batch_size", "explained"}
        assert reply.body["topk"] == row["topk"]
        maps = reply.body["explained"]
        assert [{k: m[k] for k in ("class", "label", "score")} for m in maps] == [
            {k: m[k] for k in ("class", "label", "score")} for m in row["explained"]
        ]
        for m, files in zip(maps, row["explained"], strict=True):
            heat = cv2.imread(str(out / files["outputs"][1]), cv2.IMREAD_UNCHANGED)
            drawn = cv2.imread(str(out / files["outputs"][0]), cv2.IMREAD_UNCHANGED)
            assert np.abs(_png(m["heatmap_png"]).astype(int) - heat).max() <= 1
            assert np.abs(_png(m["overlay_png"]).astype(int) - drawn).max() <= 3
        bare = _serve(model, body, {"overlay": "0"})
        assert [set(m) for m in bare.body["explained"]] == [{"class", "label", "score"}] * K


def test_the_server_refuses_a_class_for_a_top_k_model(exports):
    model = app.open_model(exports["top"])
    body = open(samples.photo_path("coffee.png"), "rb").read()  # noqa: SIM115
    reply = _serve(model, body, {"class": "1"})
    assert reply.status == 400
    assert reply.body == {
        "error": "this model explains the 2 best classes of each image, which its graph picks; "
        "drop class"
    }
    assert _serve(model, body, {"class": "-1"}).status == 200  # the default: nothing asked
