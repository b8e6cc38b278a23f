"""A segmentation artifact in every consumer (issue 19, part 1): the region module against numpy
written here, explain-run (its printed lines in a subprocess, files, predictions, resume, a
class with no pixel), the server's handling (no Ray), the Parquet rows and the Triton config;
the Ray engine is tested beside the others of its kind (test_ray_run).

The model is TinySeg (random weights, seed 5) with class 4 as background: on these photos it
predicts classes 4 and 1, so the default class is 1 on a small part of chelsea and a quarter of
coffee, and no pixel is class 0."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from explain_export.artifact import images, overlay, pipeline, regions, runner, runtime
from explain_export.artifact.serve import app
from explain_export.cli.run import main as run_main

from commands import photo_folder

SIZE = (64, 64)
LABELS = ["sky", "road", "cat", "grass", "wall"]
PHOTOS = ("chelsea.png", "coffee.png")


@pytest.fixture(scope="module")
def seg_export(tmp_path_factory):
    """TinySeg exported to ONNX with a class input and labels."""
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

    from models import tiny_seg

    explainer = build_explainer(tiny_seg(seed=5), None, "gradcam", SIZE, background=4)
    out = tmp_path_factory.mktemp("seg")
    result = export_explainer(explainer, str(out), ("onnx",), labels=LABELS, class_input=True)
    explainer.remove()
    return result


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    return photo_folder(tmp_path_factory.mktemp("photos"), PHOTOS)


def _graph(path: str, photo: str, class_index=None) -> dict[str, np.ndarray]:
    """The artifact's own outputs for one photo, fitted as the runner fits it (stretch)."""
    fitted = pipeline.fit(images.read_bgr(photo), SIZE, "stretch")
    return runtime.load(path).outputs(fitted.input[None], class_index)


def _rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / runner.PREDICTIONS).read_text().splitlines()]


def _boundary_distance(mask: np.ndarray) -> np.ndarray:
    """Per pixel, the distance to the nearest pixel of ``mask`` with a 4-neighbour outside it
    (or at the image's edge)."""
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), borderValue=0)
    edge = mask & ~inner.astype(bool)
    return cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 5)


# ---- the region module --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["stretch", "pad"])
def test_the_region_and_its_share_are_the_argmax_over_the_image(mode):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 32, 48)).astype(np.float32)
    scores[2, 8:20, 10:30] += 3.0  # a block of class 2
    original = (32, 48) if mode == "stretch" else (16, 48)  # pad: rows 8..23 are the image
    geometry = images.fit(original, (32, 48), mode)
    rows = slice(0, 32) if mode == "stretch" else slice(8, 24)
    predicted = scores[:, rows].argmax(0)
    for c in range(4):
        found = regions.region(scores, c, geometry)
        assert found.share == pytest.approx((predicted == c).mean(), abs=1e-12)
        np.testing.assert_array_equal(found.mask, predicted == c)  # the same size: exact
        np.testing.assert_allclose(
            found.shares, [(predicted == k).mean() for k in range(4)], atol=1e-12
        )
    # twice the grid's size: each score pixel becomes a 2x2 block (bilinear at 1/2 is nearest)
    doubled = regions.region(scores[:, :16, :24], 2, images.fit((32, 48), (32, 48)))
    small = scores[:, :16, :24].argmax(0) == 2
    np.testing.assert_array_equal(doubled.mask, np.kron(small, np.ones((2, 2))).astype(bool))


def test_the_fields_name_the_class_its_share_and_the_classes_predicted_most():
    found = regions.Region(2, 0.25, np.zeros((2, 2), bool), np.array([0.5, 0.0, 0.25, 0.25]))
    assert regions.fields(found, LABELS, flat=False, top=2) == {
        "class": 2,
        "label": "cat",
        "pixel_share": 0.25,
        "predicted": [
            {"class": 0, "label": "sky", "pixel_share": 0.5},
            {"class": 2, "label": "cat", "pixel_share": 0.25},
        ],
    }
    none = regions.fields(found._replace(cls=1, share=0.0), None, flat=True)
    assert none["label"] == "1" and none["pixel_share"] == 0.0
    assert none["note"] == "no pixel of the image is predicted as 1; the heatmap is flat: " + (
        "nothing to explain"
    )
    assert [p["class"] for p in none["predicted"]] == [0, 2, 3]  # no class without pixels
    assert regions.describe(regions.fields(found, LABELS, False)) == "cat, 25.0% of the pixels"
    assert regions.describe(none) == "1, no pixel predicted"


def test_the_outline_lies_on_the_mask_boundary():
    h, w = 120, 160
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - 60) ** 2 + (xx - 50) ** 2 < 30**2) | ((yy > 80) & (xx > 120))  # at an edge too
    image = np.full((h, w, 3), 128, np.uint8)
    drawn = regions.draw_outline(image, mask, thickness=2)
    changed = (drawn != image).any(axis=2)
    distance = _boundary_distance(mask)
    # half the halo's width (2 wider than the line), one pixel of antialiasing, one of diagonals
    assert distance[changed].max() <= (2 + 2) / 2 + 2
    assert changed[distance == 0].all()  # every boundary pixel is drawn over
    assert (drawn == regions.OUTLINE_BGR).all(axis=2).sum() > 100
    np.testing.assert_array_equal(regions.draw_outline(image, np.zeros_like(mask)), image)


# ---- explain-run --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seg_run(seg_export, photo_dir, tmp_path_factory):
    """explain-run as a user runs it: a subprocess, its printed lines."""
    out = tmp_path_factory.mktemp("run")
    code = "from explain_export.cli.run import main; raise SystemExit(main())"
    args = ["--model", seg_export.paths["onnx"], "--images", str(photo_dir), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "--save-heatmaps", "--sheet", "--topk", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return out, args, proc.stdout


def test_explain_run_names_each_region_and_outlines_it(seg_export, seg_run):
    out, _, stdout = seg_run
    lines = []
    for row, name in zip(_rows(out), PHOTOS, strict=True):
        graph = _graph(seg_export.paths["onnx"], row["file"])
        c = int(graph["classes"][0, 0])
        predicted = graph["logits"][0].argmax(0)
        share = (predicted == c).mean()
        assert c == 1 and 0.001 < share < 0.5
        assert set(row) == {"file", "class", "label", "pixel_share", "predicted", "outputs"}
        assert (row["class"], row["label"]) == (c, LABELS[c])
        assert row["pixel_share"] == pytest.approx(share, abs=1e-6)
        assert [(p["class"], p["pixel_share"]) for p in row["predicted"]] == [
            (k, pytest.approx((predicted == k).mean(), abs=1e-6))
            for k in sorted(range(5), key=lambda k: -(predicted == k).sum())
            if (predicted == k).any()
        ]
        stem = name.split(".")[0]
        assert row["outputs"] == [
            f"{stem}.overlay.png",
            f"{stem}.heatmap.png",
            f"{stem}.heatmap.npy",
        ]
        original = cv2.imread(row["file"])
        heat = np.load(out / row["outputs"][2])
        h, w = original.shape[:2]
        want = cv2.resize(graph["heatmap"][0, 0], (w, h), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(heat, np.clip(want, 0, 1), atol=1e-6)
        # the overlay is the plain blend, but for the outline of the region
        plain = overlay.blend(original, overlay.colorize(heat), 0.4)
        drawn = cv2.imread(str(out / row["outputs"][0]))
        changed = (drawn != plain).any(axis=2)
        region = cv2.resize((predicted == c).astype(np.uint8), (w, h), cv2.INTER_NEAREST)
        thickness = max(2, round(max(h, w) / 250))
        assert changed.any()
        assert _boundary_distance(region.astype(bool))[changed].max() <= thickness + 2 * w / 64
        lines.append(f"  {name}: {LABELS[c]}, {share:.1%} of the pixels")
    assert stdout.splitlines()[1:3] == lines
    assert (out / runner.SHEET).is_file()


def test_a_class_with_no_pixel_is_share_0_a_note_and_no_outline(seg_export, photo_dir, tmp_path):
    artifact = runtime.load(seg_export.paths["onnx"])
    paths = [str(photo_dir / n) for n in PHOTOS]
    opts = runner.RunOptions(out_dir=str(tmp_path), save_heatmaps=True, class_index=0)
    report = runner.run(artifact, paths, opts)
    for result, row in zip(report.results, _rows(tmp_path), strict=True):
        assert result.error is None and result.summary == "sky, no pixel predicted"
        assert (row["class"], row["pixel_share"], row["class_index"]) == (0, 0.0, 0)
        assert row["note"].startswith("no pixel of the image is predicted as sky")
        heat = np.load(tmp_path / row["outputs"][2])
        assert heat.max() == 0 and "the heatmap is flat" in row["note"]
        plain = overlay.blend(cv2.imread(row["file"]), overlay.colorize(heat), 0.4)
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / row["outputs"][0])), plain)


def test_resume_keeps_the_regions(seg_run, tmp_path, capsys):
    done, args, _ = seg_run
    out = tmp_path / "o"
    shutil.copytree(done, out)
    (out / "coffee.overlay.png").unlink()
    args = [*args[: args.index("--out")], "--out", str(out), "--save-heatmaps", "--topk", "3"]
    assert run_main([*args, "--resume"]) == 0
    assert "2 of 2 images done (1 kept from an earlier run)" in capsys.readouterr().out
    assert _rows(out) == _rows(done)


def test_the_parquet_rows_carry_the_region(seg_export, seg_run):
    pq = pytest.importorskip("pyarrow.parquet")
    import io

    from explain_export.artifact.ray_run import parquet_bytes

    out, _, _ = seg_run
    results = []
    for row in _rows(out):
        result = runner.ImageResult(row["file"], "x")
        result.fill(row)
        result.outputs = row["outputs"]
        results.append(result)
    results.append(runner.ImageResult("bad.png", "bad", error="not a readable image"))
    table = pq.read_table(io.BytesIO(parquet_bytes(results, segmentation=True))).to_pylist()
    for t, r in zip(table[:-1], _rows(out), strict=True):
        assert t == {**r, "error": None, "note": None, "class_index": None}
    assert table[-1]["error"] == "not a readable image" and table[-1]["class"] is None


# ---- the server's handling, no Ray --------------------------------------------------------------


def _serve(model: app.Model, body: bytes, params: dict[str, str]) -> app.Reply:
    """One request through the deployment's own handling (app.Handler), without Ray."""
    handler = app.Handler(model, app.ServeOptions(), None)

    async def infer(item):
        return (await handler.run_batch([item]))[0]

    async def chunks():
        yield body

    handler.infer = infer
    return asyncio.run(handler.handle("POST", "/explain", params, None, chunks()))


def _png(b64: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), flags)


def test_the_server_answers_the_region_as_explain_run_draws_it(seg_export, seg_run):
    out, _, _ = seg_run
    model = app.open_model(seg_export.paths["onnx"])
    health = app.health(model)
    assert (health["task"], health["classes"]) == ("segmentation", 5)
    for row in _rows(out):
        body = open(row["file"], "rb").read()  # noqa: SIM115
        reply = _serve(model, body, {"heatmap": "1", "topk": "3"})
        assert reply.status == 200
        got = reply.body
        assert {k: got[k] for k in ("class", "label", "pixel_share", "predicted")} == {
            k: row[k] for k in ("class", "label", "pixel_share", "predicted")
        }
        assert "topk" not in got and "note" not in got
        heat = cv2.imread(str(out / row["outputs"][1]), cv2.IMREAD_UNCHANGED)
        drawn = cv2.imread(str(out / row["outputs"][0]))
        np.testing.assert_array_equal(_png(got["heatmap_png"]), heat)
        np.testing.assert_array_equal(_png(got["overlay_png"]), drawn)
    none = _serve(model, body, {"class": "0", "overlay": "0"}).body
    assert none["pixel_share"] == 0.0 and "no pixel" in none["note"]
    assert "overlay_png" not in none
    # the classes are the scores' dim 1 (5), not their width (64)
    bad = _serve(model, body, {"class": "5"})
    assert bad.status == 400 and bad.body == {
        "error": "query parameter class='5' must be an integer -1 to 4"
    }


# ---- Triton -------------------------------------------------------------------------------------


def test_the_triton_config_lists_the_scores_and_the_class(seg_export, tmp_path):
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from explain_export.artifact import triton

    config = triton.model_config(seg_export.metadata, "onnx", "seg_onnx")
    dtype = pb2.DataType.Name
    assert [(o.name, dtype(o.data_type), list(o.dims)) for o in config.output] == [
        ("logits", "TYPE_FP32", [5, *SIZE]),
        ("heatmap", "TYPE_FP32", [1, *SIZE]),
        ("classes", "TYPE_INT64", [1]),
    ]
    shapes = runtime.load(seg_export.paths["onnx"]).shapes
    assert [shapes[o.name][1:] for o in config.output] == [list(o.dims) for o in config.output]
    assert [i.name for i in config.input] == ["image", "class_index"]
