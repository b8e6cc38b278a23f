"""The class at run time: the runtime's ``class_index`` and ``explain-run --class-index`` give
what an export with that class fixed gives; a class out of range, or asked of a graph that
takes none, is one line of ours (it would otherwise be ignored, or fail inside ONNX Runtime)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from explain_export.artifact import runtime, samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export import export_explainer
from explain_export.cli.run import main as run_main
from explain_export.errors import OptionError, UsageError

from models import tiny_resnet

SIZE = (64, 64)
CLASS = 7


@pytest.fixture(
    scope="module",
    params=[("cam", None), pytest.param(("gradcam", "layer2"), marks=pytest.mark.slow)],
)
def exports(request, tmp_path_factory):
    """The same model and method three ways: a class input, the class fixed, neither."""
    method, layer = request.param
    folders = {}
    for kind, kwargs, export in (
        ("input", {}, {"class_input": True}),
        ("fixed", {"target": CLASS}, {}),
        ("plain", {}, {}),
    ):
        out = tmp_path_factory.mktemp(f"{method}-{kind}")
        explainer = build_explainer(tiny_resnet(seed=4), layer, method, SIZE, **kwargs)
        export_explainer(explainer, str(out), ("onnx",), **export)
        folders[kind] = out / "explainer.onnx"
    return folders


def photos() -> np.ndarray:
    names = ("chelsea.png", "coffee.png", "rocket.jpg")
    return np.stack([samples.load_rgb(samples.photo_path(n), SIZE) for n in names])


def test_the_run_time_class_equals_the_class_fixed_at_export(exports):
    x = photos()
    with_input = runtime.load(str(exports["input"]))
    fixed = runtime.load(str(exports["fixed"])).outputs(x)["heatmap"]
    np.testing.assert_allclose(
        with_input.outputs(x, np.full(3, CLASS))["heatmap"], fixed, atol=1e-5
    )
    np.testing.assert_allclose(
        with_input.outputs(x, CLASS)["heatmap"], fixed, atol=1e-5
    )  # one for all
    top1 = runtime.load(str(exports["plain"])).outputs(x)["heatmap"]
    np.testing.assert_allclose(with_input.outputs(x)["heatmap"], top1, atol=1e-5)
    mixed = with_input.outputs(x, np.array([CLASS, -1, CLASS]))["heatmap"]
    np.testing.assert_allclose(mixed[[0, 2]], fixed[[0, 2]], atol=1e-5)
    np.testing.assert_allclose(mixed[1], top1[1], atol=1e-5)
    assert np.abs(fixed - top1).max() > 0.05  # the class changes the map


def test_a_class_out_of_range_is_one_line_of_ours(exports):
    artifact = runtime.load(str(exports["input"]))
    with pytest.raises(OptionError, match=r"class_index 10 is out of range: the model has 10 "):
        artifact.outputs(photos()[:1], np.array([10]))
    with pytest.raises(OptionError, match="class_index -2 is out of range"):
        artifact.outputs(photos()[:1], np.array([-2]))
    with pytest.raises(OptionError, match="class_index has 2 values for 3 images"):
        artifact.outputs(photos(), np.array([1, 2]))


def test_a_class_asked_of_a_graph_without_the_input_is_refused(exports):
    artifact = runtime.load(str(exports["plain"]))
    with pytest.raises(UsageError, match="takes no class at run time.*--class-input"):
        artifact.outputs(photos(), np.full(3, CLASS))
    artifact.outputs(photos(), np.full(3, -1))  # the top-1: what it does anyway


def _run_heatmaps(images, out) -> dict[str, np.ndarray]:
    names = sorted(os.listdir(images))
    return {n: np.load(out / f"{os.path.splitext(n)[0]}.heatmap.npy") for n in names}


def test_explain_run_class_index_equals_the_fixed_export(exports, tmp_path, capsys):
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("chelsea.png", "rocket.jpg"):
        shutil.copy(samples.photo_path(name), images / name)
    chosen, fixed = tmp_path / "chosen", tmp_path / "fixed"
    common = ["--images", str(images), "--save-heatmaps", "--quiet"]
    assert run_main(["--model", str(exports["input"]), "--out", str(chosen), *common,
                     "--class-index", str(CLASS)]) == 0  # fmt: skip
    assert run_main(["--model", str(exports["fixed"]), "--out", str(fixed), *common]) == 0
    got, want = _run_heatmaps(images, chosen), _run_heatmaps(images, fixed)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5)


@pytest.mark.parametrize(
    "kind, value, message",
    [
        ("input", "10", "--class-index 10 is out of range: the model has 10 classes (0..9)"),
        ("plain", "3", "takes no class at run time"),
    ],
)
def test_explain_run_class_index_errors_write_nothing(
    exports, tmp_path, capsys, kind, value, message
):
    out = tmp_path / "o"
    args = ["--model", str(exports[kind]), "--images", samples.photo_path("chelsea.png")]
    assert run_main([*args, "--out", str(out), "--class-index", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("explain-run: error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def _serve(path, body: bytes, params: dict[str, str]):
    """One request through the server's own handling (app.Handler), without Ray."""
    from explain_export.artifact.serve import app

    model = app.open_model(str(path))
    handler = app.Handler(model, app.ServeOptions(), None)

    async def infer(item):
        return (await handler.run_batch([item]))[0]

    handler.infer = infer
    takes = "class_index" in model.artifact.input_names
    query = app.parse_query(params, model.num_classes, takes)
    return asyncio.run(handler.explain(body, query))


def test_the_server_explains_the_class_in_its_query(exports):
    body = Path(samples.photo_path("coffee.png")).read_bytes()
    chosen = _serve(exports["input"], body, {"class": str(CLASS), "heatmap": "1"})
    fixed = _serve(exports["fixed"], body, {"heatmap": "1"})
    assert chosen.status == 200 and fixed.status == 200
    assert chosen.body["heatmap_png"] == fixed.body["heatmap_png"]
    top1 = _serve(exports["input"], body, {"class": "-1", "heatmap": "1"})
    assert top1.body["heatmap_png"] != chosen.body["heatmap_png"]


def test_the_server_refuses_a_bad_class_with_400():
    from explain_export.artifact.serve import app

    for params, takes, message in [
        ({"class": "10"}, True, "class='10' must be an integer -1 to 9"),
        ({"class": "x"}, True, "must be an integer -1 to 9"),
        ({"class": "3"}, False, "this model takes no class; export it with --class-input"),
    ]:
        with pytest.raises(app.RequestError, match=message) as err:
            app.parse_query(params, 10, takes)
        assert err.value.status == 400
    assert app.parse_query({"class": "-1"}, 10, False).class_index == -1


def test_predictions_name_the_class_and_resume_keeps_only_the_same_class(exports, tmp_path, capsys):
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("chelsea.png", "rocket.jpg"):
        shutil.copy(samples.photo_path(name), images / name)
    out = tmp_path / "o"
    args = ["--model", str(exports["input"]), "--images", str(images), "--out", str(out)]
    assert run_main([*args, "--quiet", "--class-index", str(CLASS)]) == 0
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["class_index"] for r in rows] == [CLASS, CLASS]
    heat = {p: p.read_bytes() for p in out.glob("*.overlay.png")}
    capsys.readouterr()
    assert run_main([*args, "--resume", "--class-index", str(CLASS)]) == 0
    assert "2 of 2 images done (2 kept from an earlier run)" in capsys.readouterr().out
    assert run_main([*args, "--resume"]) == 0  # the top-1 now: both redone
    assert "2 of 2 images done, 0 failed" in capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert all("class_index" not in r for r in rows)
    assert {p: p.read_bytes() for p in out.glob("*.overlay.png")} != heat
