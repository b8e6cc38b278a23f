"""Export options for servers: uint8 NHWC input, the in-graph overlay, fp16, torch.export."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from explain_export.artifact import contract, images, overlay, runtime, samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export import verify
from explain_export.builder.export.export import export_explainer
from explain_export.builder.plan import GraphOptions
from explain_export.cli.run import main as run_main

from models import tiny_resnet

SIZE = (48, 64)
ALL = ("onnx", "torchscript", "pt2")


def _export(tmp, graph: GraphOptions, formats=ALL, **kwargs):
    explainer = build_explainer(tiny_resnet(seed=2), input_size=SIZE, graph=graph)
    result = export_explainer(explainer, str(tmp), formats, **kwargs)
    return explainer, result


def _photos(size) -> np.ndarray:
    names = ("chelsea.png", "coffee.png", "rocket.jpg")
    return np.stack([samples.load_rgb(samples.photo_path(n), size) for n in names])


@pytest.fixture(scope="module")
def float_export(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("float"), GraphOptions())


@pytest.fixture(scope="module")
def uint8_overlay_export(tmp_path_factory):
    graph = GraphOptions(input_format="uint8-nhwc", overlay=True)
    return _export(tmp_path_factory.mktemp("u8"), graph, dynamic_size=True)


def test_every_format_passes_parity(uint8_overlay_export):
    _, result = uint8_overlay_export
    assert {r.format for r in result.parity} == set(ALL)
    assert all(r.ok and r.overlay_err is not None and r.overlay_err <= 3 for r in result.parity)
    assert meta_overlay_tol(result) == 3  # JET at alpha 0.4: ceil(0.4 * 5) + 1
    meta = result.metadata
    assert meta["input_format"] == "uint8-nhwc" and meta["overlay"]["color"] == "RGB"
    assert meta["inputs"][0] == {
        "name": "image",
        "dtype": "uint8",
        "shape": ["N", "H", "W", 3],
        "layout": "NHWC",
        "range": [0, 255],
        "color": "RGB",
    }
    assert [o["name"] for o in meta["outputs"]] == ["logits", "heatmap", "overlay"]


def meta_overlay_tol(result) -> float:
    return result.metadata["parity"]["overlay_tol"]


@pytest.mark.parametrize("fmt", ALL)
def test_uint8_input_gives_the_float_paths_heatmap(uint8_overlay_export, float_export, fmt):
    u8 = runtime.load(str(uint8_overlay_export[1].paths[fmt]))
    f32 = runtime.load(str(float_export[1].paths["onnx"]))
    assert u8.input_format == "uint8-nhwc"
    x = _photos(SIZE)  # decoded 8-bit photos, so the uint8 graph sees the same pixels
    raw = np.round(x * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    out = u8.outputs(x)
    assert out["overlay"].dtype == np.uint8 and out["overlay"].shape == (3, *SIZE, 3)
    logits, heat = f32(x)
    np.testing.assert_allclose(out["heatmap"], heat, atol=verify.HEATMAP_TOL)
    np.testing.assert_allclose(out["logits"], logits, atol=verify.LOGITS_TOL)
    # and the graph really takes uint8 NHWC: feeding it directly gives the same
    if fmt == "onnx":
        direct = u8.session.run(["heatmap"], {"image": raw})[0]
        np.testing.assert_array_equal(direct, out["heatmap"])


def test_in_graph_overlay_equals_the_runners_opencv_overlay(uint8_overlay_export):
    art = runtime.load(str(uint8_overlay_export[1].paths["onnx"]))
    x = _photos(SIZE)
    out = art.outputs(x)
    for i in range(len(x)):
        bgr = cv2.cvtColor(
            np.round(x[i] * 255).astype(np.uint8).transpose(1, 2, 0), cv2.COLOR_RGB2BGR
        )
        _, expected_bgr = overlay.overlay(bgr, out["heatmap"][i, 0], alpha=0.4, colormap="JET")
        graph_bgr = cv2.cvtColor(out["overlay"][i], cv2.COLOR_RGB2BGR)
        diff = np.abs(graph_bgr.astype(int) - expected_bgr.astype(int))
        assert diff.max() <= 1, diff.max()


def test_overlay_of_a_hot_spot_is_red_in_rgb():
    from explain_export.builder.maths import graph_io

    lut = graph_io.colormap_lut("JET")
    hot = graph_io.overlay_rgb(torch.zeros(1, 2, 2, 3), torch.ones(1, 1, 2, 2), lut, 1.0)
    r, _, b = hot[0, 0, 0].tolist()
    assert r > 100 and b == 0


def test_dynamic_size_uint8_graph_runs_at_other_sizes(uint8_overlay_export):
    explainer, result = uint8_overlay_export
    art = runtime.load(str(result.paths["onnx"]))
    x = _photos((40, 90))
    out = art.outputs(x)
    with torch.no_grad():
        ref = explainer(torch.from_numpy(contract.graph_image(x, "uint8-nhwc")))
    np.testing.assert_allclose(out["heatmap"], ref[1].numpy(), atol=verify.HEATMAP_TOL)
    assert np.abs(out["overlay"].astype(int) - ref[2].numpy().astype(int)).max() <= 3


@pytest.mark.slow
def test_half_exports_pass_the_fp16_limits_without_nan(tmp_path):
    explainer, result = _export(tmp_path, GraphOptions(half=True))
    assert all(r.ok for r in result.parity), [r for r in result.parity if not r.ok]
    assert result.metadata["half"] is True
    assert result.metadata["parity"]["heatmap_tol"] == verify.HALF_HEATMAP_TOL
    assert next(explainer.model.parameters()).dtype == torch.float16
    for fmt in ALL:
        art = runtime.load(str(result.paths[fmt]))
        for x in (
            np.zeros((2, 3, *SIZE), np.float32),
            np.ones((2, 3, *SIZE), np.float32),
            _photos(SIZE),
        ):
            logits, heat = art(x)
            assert logits.dtype == np.float32 and heat.dtype == np.float32
            assert np.isfinite(logits).all() and np.isfinite(heat).all()
            assert heat.min() >= 0 and heat.max() <= 1


def test_half_heatmap_is_close_to_float(tmp_path, float_export):
    _, half = _export(tmp_path, GraphOptions(half=True), formats=("onnx",))
    x = _photos(SIZE)
    _, h16 = runtime.load(str(half.paths["onnx"]))(x)
    _, h32 = runtime.load(str(float_export[1].paths["onnx"]))(x)
    assert np.abs(h16 - h32).max() < 0.05


def test_pt2_artifact_carries_metadata_and_runs_in_explain_run(float_export, tmp_path, capsys):
    explainer, result = float_export
    art = runtime.load(str(result.paths["pt2"]))
    assert art.metadata == result.metadata and art.input_names == ["image"]
    x = np.random.default_rng(0).random((7, 3, *SIZE), dtype=np.float32)
    _, heat = art(x)
    with torch.no_grad():
        _, ref_heat = explainer(torch.from_numpy(x))
    np.testing.assert_allclose(heat, ref_heat.numpy(), atol=verify.HEATMAP_TOL)
    photo = samples.photo_path("coffee.png")
    code = run_main(
        ["--model", str(result.paths["pt2"]), "--images", photo, "--out", str(tmp_path / "o")]
    )
    assert code == 0 and "backend: torch.export cpu" in capsys.readouterr().err
    assert (
        cv2.imread(str(tmp_path / "o" / "coffee.overlay.png")).shape == images.read_bgr(photo).shape
    )


def test_runner_feeds_uint8_graphs(uint8_overlay_export, tmp_path):
    photo = samples.photo_path("chelsea.png")
    code = run_main(
        [
            "--model",
            str(uint8_overlay_export[1].paths["onnx"]),
            "--images",
            photo,
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert code == 0
    line = json.loads((tmp_path / "o" / "predictions.jsonl").read_text())
    assert line["topk"][0]["label"]


@pytest.mark.slow
def test_default_model_uint8_with_overlay(tmp_path, default_export):
    """The embedded model, exported for servers, agrees with its float export on photos."""
    from explain_export.builder.model.zoo import load_default

    zoo = load_default()
    graph = GraphOptions(input_format="uint8-nhwc", overlay=True)
    explainer = build_explainer(zoo.model, zoo.layer, "cam", graph=graph)
    result = export_explainer(explainer, str(tmp_path), ("onnx",), labels=zoo.labels)
    x = _photos((224, 224))
    out = runtime.load(result.paths["onnx"]).outputs(x)
    _, heat = runtime.load(str(default_export / "explainer.onnx"))(x)
    np.testing.assert_allclose(out["heatmap"], heat, atol=verify.HEATMAP_TOL)
    assert 281 <= int(out["logits"][0].argmax()) <= 285


def test_overlay_limit_grows_with_the_fp16_heatmap_limit():
    """fp16's heatmap limit (1e-2) lets round(255·m) move 3 colormap entries, not 1."""
    from explain_export.builder.export.verify import overlay_limit

    def limit(half: bool) -> float:
        graph = GraphOptions(overlay=True, half=half)
        explainer = build_explainer(tiny_resnet(), method="cam", input_size=(32, 32), graph=graph)
        return overlay_limit(explainer)

    assert limit(False) == 3  # JET at alpha 0.4: one step of at most 4.something levels
    assert limit(True) == 7
