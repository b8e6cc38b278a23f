"""The runtime on every device: IO binding, CUDA graphs, uint8 heatmaps, device-free files.

The CPU tests run the same code paths as CUDA where ONNX Runtime allows it (IO binding works on
the CPU provider); the CUDA tests skip without a GPU.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from explain_export.artifact import runtime, samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.inspect.probe import device_of
from explain_export.builder.plan import GraphOptions
from explain_export.cli.run import main as run_main

from models import tiny_resnet

SIZE = (64, 48)
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def _photo_folder(tmp_path, name: str):
    """A folder holding one of scikit-image's photos (skips the test without them)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    try:
        os.symlink(samples.photo_path(name), photos / name)
    except FileNotFoundError:
        pytest.skip("scikit-image photos not installed")
    return photos


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, *SIZE), dtype=np.float32)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """cam with a class input (float heatmap), and cam with a uint8 heatmap, all formats."""
    out = {}
    for name, graph, class_input in (
        ("float", GraphOptions(), True),
        ("uint8", GraphOptions(heatmap_dtype="uint8"), False),
    ):
        folder = tmp_path_factory.mktemp(f"runtime_{name}")
        explainer = build_explainer(tiny_resnet(), method="cam", input_size=SIZE, graph=graph)
        formats = ("onnx", "torchscript", "pt2")
        result = export_explainer(explainer, str(folder), formats, class_input=class_input)
        out[name] = result.paths
    return out


@pytest.mark.slow
def test_io_binding_gives_what_a_plain_run_gives_for_every_batch_shape(exports):
    path = exports["float"]["onnx"]
    plain = runtime.OnnxExplainer(path)
    bound = runtime.OnnxExplainer(path, io_binding=True)
    assert bound.io_binding and not plain.io_binding
    assert "io_binding" in bound.backend
    for n, seed in ((2, 0), (1, 1), (2, 2), (3, 3), (2, 4)):  # shapes come back, data changes
        image, chosen = _batch(n, seed), np.arange(n, dtype=np.int64) - 1
        for got, ref in zip(bound(image, chosen), plain(image, chosen), strict=True):
            np.testing.assert_array_equal(got, ref)
    assert len(bound._bindings) == 3
    kept = bound.outputs(_batch(2), to_host=False)
    assert {type(v).__name__ for v in kept.values()} == {"OrtValue"}
    np.testing.assert_array_equal(kept["heatmap"].numpy(), plain(_batch(2))[1])


def test_cuda_graphs_asked_for_without_cuda_run_plainly_and_say_so(exports):
    onnx = runtime.OnnxExplainer(exports["float"]["onnx"], cuda_graph=True)
    assert not onnx.cuda_graph and "CUDA" in (onnx.note or "")
    script = runtime.load(exports["float"]["torchscript"], cuda_graph=True)
    assert not script.cuda_graph and "CUDA" in (script.note or "")
    default = runtime.load(exports["float"]["onnx"], device="cpu")
    assert not default.cuda_graph and default.note is None


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_a_uint8_heatmap_is_the_float_one_rounded_to_levels(exports, fmt):
    image = _batch(3)
    _, float_heat = runtime.load(exports["float"][fmt])(image)
    artifact = runtime.load(exports["uint8"][fmt])
    raw = artifact.outputs(image)["heatmap"]
    assert raw.dtype == np.uint8 and raw.shape == (3, 1, *SIZE)
    _, heat = artifact(image)  # __call__ gives [0, 1] floats
    assert heat.dtype == np.float32
    assert np.abs(heat - float_heat).max() <= 0.5 / 255 + 1e-4
    spec = next(o for o in artifact.metadata["outputs"] if o["name"] == "heatmap")
    assert spec["dtype"] == "uint8" and spec["range"] == [0, 255]
    assert artifact.metadata["heatmap_dtype"] == "uint8"


def test_the_runner_draws_from_a_uint8_heatmap(exports, tmp_path, capsys):
    photos = _photo_folder(tmp_path, "chelsea.png")
    outs = {}
    for name in ("float", "uint8"):
        out = tmp_path / name
        args = ["--model", exports[name]["onnx"], "--out", str(out), "--save-heatmaps"]
        assert run_main(["--images", str(photos), *args]) == 0
        outs[name] = np.load(out / "chelsea.heatmap.npy")
    assert np.abs(outs["uint8"] - outs["float"]).max() <= 0.5 / 255 + 1e-4
    capsys.readouterr()


@pytest.mark.parametrize("method", ["cam", "sum", "gradcam"])
def test_torchscript_files_name_no_device(tmp_path, method):
    """Tensors the graph makes follow its input, so a file exported on the CPU runs on a GPU
    (the lowered gradcam graph's ``empty``/``arange`` included)."""
    explainer = build_explainer(tiny_resnet(), method=method, input_size=SIZE)
    result = export_explainer(explainer, str(tmp_path), ("torchscript",))
    module = torch.jit.load(result.paths["torchscript"])
    graph = str(module.inlined_graph)
    assert 'value="cpu"' not in graph and "Device = prim::Constant" not in graph


def test_device_of_a_model_is_where_its_weights_are():
    assert device_of(tiny_resnet()) == torch.device("cpu")
    assert device_of(torch.nn.ReLU()) == torch.device("cpu")


def test_export_metadata_records_no_gpu_rows_without_a_gpu(exports):
    with open(os.path.join(os.path.dirname(exports["float"]["onnx"]), "explainer.json")) as f:
        meta = json.load(f)
    assert meta["parity"]["gpu"] == ([] if not CUDA else meta["parity"]["gpu"])
    assert "top-1" in meta["parity"]["gpu_rule"]


# --- on a GPU -------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_files_exported_on_the_cpu_run_on_cuda_with_and_without_graphs(exports, fmt):
    image, chosen = _batch(3), np.array([-1, 2, 5], dtype=np.int64)
    ref = runtime.load(exports["float"][fmt])(image, chosen)
    for graphs in (None, False):
        artifact = runtime.load(exports["float"][fmt], device="cuda", cuda_graph=graphs)
        if fmt == "onnx" and artifact.providers[0] != "CUDAExecutionProvider":
            pytest.skip("ONNX Runtime here has no CUDA provider")
        for n in (3, 1, 3):  # a new shape captures its own graph; a known one replays
            got = artifact(image[:n], chosen[:n])
            np.testing.assert_allclose(got[0], ref[0][:n], atol=1e-2)
            np.testing.assert_allclose(got[1], ref[1][:n], atol=1e-2)
        if graphs is None:
            assert artifact.cuda_graph, artifact.note


@needs_cuda
@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_build_and_export_take_a_model_on_cuda(tmp_path, method):
    model = tiny_resnet().cuda()
    explainer = build_explainer(model, method=method, input_size=SIZE)
    assert explainer.mean.device.type == "cuda"
    image = torch.from_numpy(_batch(2)).cuda()
    with torch.no_grad():
        _, heat = explainer(image)
    assert heat.device.type == "cuda"
    result = export_explainer(explainer, str(tmp_path), ("onnx", "torchscript", "pt2"))
    assert device_of(model).type == "cuda"  # moved back after the export on the CPU
    assert all(r.ok for r in result.parity)
    assert {r.format for r in result.gpu} >= {"torchscript", "pt2"}
    assert all(r.ok and r.top1_agree == r.images for r in result.gpu)


@needs_cuda
def test_explain_run_on_cuda_with_every_format(exports, tmp_path, capsys):
    photos = _photo_folder(tmp_path, "coffee.png")
    for fmt in ("onnx", "torchscript", "pt2"):
        out = tmp_path / fmt
        args = ["--model", exports["uint8"][fmt], "--out", str(out), "--device", "cuda"]
        assert run_main(["--images", str(photos), *args]) == 0
        assert (out / "coffee.overlay.png").exists()
    capsys.readouterr()
