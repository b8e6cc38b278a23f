"""Export to TorchScript and ONNX: parity with eager, metadata, atomic writes."""

from __future__ import annotations

import json
import os
import weakref

import numpy as np
import onnx
import pytest
import torch

from explain_export.artifact import runtime
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export import export as export_mod
from explain_export.builder.export import parity64, verify
from explain_export.builder.export.export import (
    DEFAULT_FORMATS,
    FILES,
    METADATA_FILE,
    export_explainer,
)
from explain_export.errors import ParityError, UsageError

from models import tiny_resnet

SIZE = (64, 48)


def _export(tmp_path, method="cam", **kwargs):
    explainer = build_explainer(tiny_resnet(), method=method, input_size=SIZE)
    result = export_explainer(explainer, str(tmp_path), model="tiny", **kwargs)
    return explainer, result


@pytest.fixture(scope="module", params=["cam", "sum"])
def exported(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"export_{request.param}")
    explainer, result = _export(out, request.param, labels=[f"class {i}" for i in range(10)])
    return explainer, result, out


def test_export_writes_three_files_and_parity_rows(exported):
    _, result, out = exported
    assert sorted(os.listdir(out)) == sorted([*(FILES[f] for f in DEFAULT_FORMATS), METADATA_FILE])
    formats = {r.format for r in result.parity}
    assert formats == {"onnx", "torchscript"}
    assert {r.batch for r in result.parity} >= {1, 3}
    assert any(r.input.startswith("photo") for r in result.parity)
    assert all(r.ok for r in result.parity)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("batch", [1, 2, 5, 8])
def test_artifacts_match_eager_at_several_batch_sizes(exported, fmt, batch):
    explainer, _, out = exported
    run = runtime.load(str(out / FILES[fmt]))
    x = np.random.default_rng(batch).random((batch, 3, *SIZE), dtype=np.float32)
    logits, heat = run(x)
    with torch.no_grad():
        ref_logits, ref_heat = explainer(torch.from_numpy(x))
    assert heat.shape == (batch, 1, *SIZE)
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=verify.LOGITS_TOL)
    np.testing.assert_allclose(heat, ref_heat.numpy(), atol=verify.HEATMAP_TOL)


def test_onnx_graph_contract(exported):
    _, _, out = exported
    model = onnx.load(str(out / FILES["onnx"]))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits", "heatmap"]
    image = model.graph.input[0].type.tensor_type
    assert image.elem_type == onnx.TensorProto.FLOAT
    dims = image.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # N is dynamic
    assert [d.dim_value for d in dims[1:]] == [3, *SIZE]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_metadata_is_the_same_in_json_onnx_and_torchscript(exported):
    _, result, out = exported
    with open(out / METADATA_FILE) as f:
        meta = json.load(f)
    assert meta == result.metadata
    assert runtime.OnnxExplainer(str(out / FILES["onnx"])).metadata == meta
    assert runtime.TorchScriptExplainer(str(out / FILES["torchscript"])).metadata == meta
    assert meta["input_size"] == list(SIZE)
    assert meta["inputs"][0]["name"] == "image" and meta["inputs"][0]["color"] == "RGB"
    assert [o["name"] for o in meta["outputs"]] == ["logits", "heatmap"]
    assert meta["labels"][3] == "class 3"
    assert meta["layer"] == "avgpool:input"
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["parity"]["rows"] and all(r["ok"] for r in meta["parity"]["rows"])


def test_dynamic_size_onnx_runs_at_other_sizes(tmp_path):
    explainer, result = _export(tmp_path, formats=("onnx",), dynamic_size=True)
    assert {tuple(r.size) for r in result.parity} == {SIZE, (96, 80), (64, 112)}
    run = runtime.load(str(tmp_path / FILES["onnx"]))
    x = np.random.default_rng(0).random((2, 3, 50, 90), dtype=np.float32)
    logits, heat = run(x)
    with torch.no_grad():
        ref_logits, ref_heat = explainer(torch.from_numpy(x))
    assert heat.shape == (2, 1, 50, 90)
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=verify.LOGITS_TOL)
    np.testing.assert_allclose(heat, ref_heat.numpy(), atol=verify.HEATMAP_TOL)


@pytest.mark.slow
def test_class_input_is_a_graph_input(tmp_path):
    explainer, result = _export(tmp_path, class_input=True)
    assert any("class_index" in r.input for r in result.parity)
    for fmt in ("onnx", "torchscript"):
        run = runtime.load(str(tmp_path / FILES[fmt]))
        assert run.input_names == ["image", "class_index"]
        x = np.random.default_rng(1).random((3, 3, *SIZE), dtype=np.float32)
        ci = np.array([2, -1, 7], dtype=np.int64)
        _, heat = run(x, ci)
        with torch.no_grad():
            _, ref = explainer(torch.from_numpy(x), torch.from_numpy(ci))
        np.testing.assert_allclose(heat, ref.numpy(), atol=verify.HEATMAP_TOL)


def test_class_input_needs_cam(tmp_path):
    with pytest.raises(UsageError, match="class_input needs a method that explains a class"):
        _export(tmp_path, method="sum", class_input=True)


def test_failed_parity_writes_nothing_and_keeps_previous_files(tmp_path, monkeypatch):
    previous = tmp_path / FILES["onnx"]
    previous.write_bytes(b"previous")
    monkeypatch.setattr(verify, "HEATMAP_TOL", -1.0)  # every comparison fails,
    monkeypatch.setattr(parity64, "TIMES", -1.0)  # against float64 too
    with pytest.raises(ParityError, match="differs from eager"):
        _export(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [FILES["onnx"]]
    assert previous.read_bytes() == b"previous"


def test_crash_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_stamp(path, fmt, metadata):
        with open(path, "ab") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_mod, "stamp", broken_stamp)
    with pytest.raises(OSError):
        _export(tmp_path)
    assert os.listdir(tmp_path) == []


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        _export(target)


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(UsageError, match="formats takes a comma list"):
        _export(tmp_path, formats=("tflite",))
    assert os.listdir(tmp_path) == []


def test_logits_limit_is_relative_to_their_magnitude(tmp_path):
    """Logits near 1e11 (Inception-v3 at init has such) differ by float32 steps of ~1e4."""
    model = tiny_resnet()
    with torch.no_grad():
        model.fc.weight.mul_(1e11)
        model.fc.bias.mul_(1e11)
    explainer = build_explainer(model, input_size=SIZE)
    result = export_explainer(explainer, str(tmp_path), ("onnx",))
    assert all(r.ok for r in result.parity)
    assert max(r.logits_limit for r in result.parity) > 1e7
    assert verify.logits_limit(np.array([[0.5, -0.2]]), 1e-3) == 1e-3


def test_exporter_errors_name_the_innermost_cause_without_colour_codes():
    from explain_export.builder.export.writers import root_cause

    try:
        try:
            raise KeyError("aten.mystery_op.default has no ONNX function")
        except KeyError as inner:
            raise RuntimeError("\x1b[96mFailed to convert\x1b[0m the program.\nStep 3/3") from inner
    except RuntimeError as exc:
        text = root_cause(exc)
    assert text == "KeyError: 'aten.mystery_op.default has no ONNX function'"
    assert "\x1b" not in root_cause(RuntimeError("\x1b[96mcolour\x1b[0m\nmore"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_pt2_exported_on_the_cpu_runs_on_cuda(tmp_path, method):
    explainer = build_explainer(tiny_resnet(), method=method, input_size=SIZE)
    result = export_explainer(explainer, str(tmp_path), ("pt2",))
    image = np.random.default_rng(0).random((2, 3, *SIZE), dtype=np.float32)
    on_cpu = runtime.load(result.paths["pt2"], device="cpu")(image)
    on_cuda = runtime.load(result.paths["pt2"], device="cuda")
    assert on_cuda.device == "cuda"
    for got, ref in zip(on_cuda(image), on_cpu, strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_the_parity_result_prints_as_the_cli_table(exported):
    _, result, _ = exported
    text = str(result.parity)
    assert text.startswith("parity vs eager") and "ParityRow(" not in text
    assert all(r.format in text for r in result.parity) and len(result.parity) >= 3


@pytest.mark.slow
def test_verification_lets_go_of_each_file_before_loading_the_next(tmp_path, monkeypatch):
    """Each loaded file holds a copy of the weights (ViT-B/16: 350 MB), so verification loads,
    checks and drops one format's file before it loads the next."""
    loaded: list[tuple[str, weakref.ref]] = []

    def counting(fmt, real):
        def load(*args, **kwargs):
            assert [f for f, ref in loaded if ref() is not None] == [], f"loading {fmt}"
            artifact = real(*args, **kwargs)
            loaded.append((fmt, weakref.ref(artifact)))
            return artifact

        return load

    for fmt, real in list(export_mod.RUNTIMES.items()):
        monkeypatch.setitem(export_mod.RUNTIMES, fmt, counting(fmt, real))
    _export(tmp_path, formats=("torchscript", "onnx", "pt2"))
    assert [f for f, _ in loaded] == ["torchscript", "onnx", "pt2"]
