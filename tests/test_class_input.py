"""The class at run time: the runtime's ``class_index`` and ``explain-run --class-index`` give
what an export with that class fixed gives; a class out of range, or asked of a graph that
takes none, is one line of ours (it would otherwise be ignored, or fail inside ONNX Runtime).

The class explained is the class named: where a heatmap is shown or returned (explain-run's
console line and sheet caption, ``predictions.jsonl``, the Ray engine's Parquet, the server's
JSON), it names the class it explains with its label and softmax score, beside the top-k;
tested with the class the model finds least likely on a photo (so not the top-1, as
``--class-index 967`` on chelsea)."""

from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from explain_export.artifact import overlay, pipeline, runner, runtime, samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.maths import methods
from explain_export.cli.run import main as run_main
from explain_export.errors import OptionError, UsageError

from commands import photo_folder
from models import tiny_resnet

SIZE = (64, 64)
CLASS = 7
LABELS = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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
        export_explainer(explainer, str(out), ("onnx",), labels=LABELS, **export)
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
    images = photo_folder(tmp_path / "photos", ("chelsea.png", "rocket.jpg"))
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
    images = photo_folder(tmp_path / "photos", ("chelsea.png", "rocket.jpg"))
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


PHOTO = "chelsea.png"


@pytest.fixture(scope="module")
def export(exports) -> Path:
    return exports["input"]


@pytest.fixture(scope="module")
def scores(export) -> np.ndarray:
    """Softmax of the artifact's logits for the photo, fitted as explain-run fits it."""
    fitted = pipeline.read(samples.photo_path(PHOTO), SIZE, pipeline.OverlayOptions())
    z = runtime.load(str(export)).outputs(fitted.input[None])["logits"][0].astype(np.float64)
    p = np.exp(z - z.max())
    return p / p.sum()


def _shown(p: float) -> str:
    return f"{p:.2f}" if p >= 0.005 else f"{p:.1e}"


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]


def test_a_new_export_says_its_map_explains_a_class(export):
    assert runtime.load(str(export)).metadata["target"] == "class"


def test_explain_run_names_the_chosen_class_not_the_top1(
    export, scores, tmp_path, capsys, monkeypatch
):
    top, chosen = int(scores.argmax()), int(scores.argmin())
    assert top != chosen
    drawn: list[str] = []
    sheet_row = overlay.sheet_row
    monkeypatch.setattr(
        overlay,
        "sheet_row",
        lambda panels, cap, *a, **k: drawn.append(cap) or sheet_row(panels, cap, *a, **k),
    )
    out = tmp_path / "o"
    args = ["--model", str(export), "--images", samples.photo_path(PHOTO), "--out", str(out)]
    assert run_main([*args, "--sheet", "--class-index", str(chosen)]) == 0
    line = (
        f"{PHOTO}: map: {LABELS[chosen]} ({_shown(scores[chosen])}); "
        f"top-1 {LABELS[top]} ({_shown(scores[top])})"
    )
    assert f"  {line}" in capsys.readouterr().out.splitlines()
    assert drawn == [line]  # the sheet's caption
    (row,) = _rows(out)
    assert row["class_index"] == chosen and row["topk"][0]["class"] == top
    (named,) = row["explained"]
    assert (named["class"], named["label"]) == (chosen, LABELS[chosen])
    assert named["score"] == pytest.approx(scores[chosen], abs=2e-6)
    assert named["outputs"] == row["outputs"] == ["chelsea.overlay.png"]
    assert run_main([*args, "--resume", "--quiet", "--class-index", str(chosen)]) == 0
    assert _rows(out) == [row]  # kept, and still named


def test_the_top1_explained_is_said_once(export, scores, tmp_path, capsys):
    top = int(scores.argmax())
    out = tmp_path / "o"
    args = ["--model", str(export), "--images", samples.photo_path(PHOTO), "--out", str(out)]
    assert run_main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"  {PHOTO}: map: {LABELS[top]} ({_shown(scores[top])}), the top-1" in lines
    (row,) = _rows(out)
    assert [(m["class"], m["label"]) for m in row["explained"]] == [(top, LABELS[top])]
    assert "class_index" not in row


def test_the_parquet_rows_name_the_class(export, scores, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from explain_export.artifact.ray_run import parquet_bytes

    chosen = int(scores.argmin())
    opts = runner.RunOptions(out_dir=str(tmp_path / "o"), class_index=chosen)
    report = runner.run(runtime.load(str(export)), [samples.photo_path(PHOTO)], opts)
    (row,) = pq.read_table(io.BytesIO(parquet_bytes(report.results))).to_pylist()
    (named,) = row["explained"]
    assert (named["class"], named["label"], row["class_index"]) == (chosen, LABELS[chosen], chosen)
    assert named["score"] == pytest.approx(scores[chosen], abs=2e-6)
    assert row["topk"][0]["class"] == int(scores.argmax())


def test_the_server_answer_names_the_class_it_explains(export, scores):
    top, chosen = int(scores.argmax()), int(scores.argmin())
    photo = Path(samples.photo_path(PHOTO)).read_bytes()
    reply = _serve(export, photo, {"class": str(chosen)})
    assert reply.status == 200, reply.body
    (named,) = reply.body["explained"]
    assert set(named) == {"class", "label", "score"}  # the PNGs stay at the top level
    assert (named["class"], named["label"]) == (chosen, LABELS[chosen])
    assert named["score"] == pytest.approx(scores[chosen], abs=2e-6)
    assert reply.body["topk"][0]["class"] == top and "overlay_png" in reply.body
    top1 = _serve(export, photo, {"class": "-1"}).body["explained"]
    assert [m["class"] for m in top1] == [top]


def test_the_class_follows_the_graphs_own_rule():
    logits = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]], np.float32)
    chosen = pipeline.chosen_classes
    assert chosen({"target": "class"}, logits).tolist() == [[1], [0]]
    assert chosen({"target": "class"}, logits, np.array([2, -1])).tolist() == [[2], [0]]
    assert chosen({"target": "class"}, logits, 2).tolist() == [[2], [2]]
    assert chosen({"target": "class", "target_class": 2}, logits, [-1, 0]).tolist() == [[2], [0]]
    assert chosen({"method": "gradcam"}, logits).tolist() == [[1], [0]]  # an older export
    for meta in ({"target": "none"}, {"method": "eigencam"}, {"target": "runner-up"}):
        assert chosen(meta, logits) is None  # no class, or a rule not known here
    free = {name for name, m in methods.METHODS.items() if not m.has_class}
    assert set(pipeline.CLASS_FREE_METHODS) == free


def test_a_map_of_no_class_names_none():
    top = [{"class": 3, "label": "cat", "score": 0.5}]
    assert pipeline.summary(top, None) == "top-1 cat (0.50); the map explains no class"
    maps = [{"class": 3, "label": "cat", "score": 0.5}, {"class": 5, "label": "dog", "score": 0.25}]
    assert pipeline.summary(top, maps) == "maps: cat (0.50), dog (0.25)"
