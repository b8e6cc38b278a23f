"""Triton model repository writer: configs parse strictly and match the model files beside them.

No Triton server runs here. Each generated ``config.pbtxt`` is parsed back into Triton's own
``ModelConfig`` (unknown fields fail), and its names, data types and dims are compared with the
file in ``1/``: the ONNX graph's declared inputs and outputs, and a TorchScript run on a batch of
2 (inputs from the ``forward`` schema, outputs from what it returns).
"""

from __future__ import annotations

import filecmp
import os
import sys

import onnx
import pytest
import torch

from explain_export.artifact import triton
from explain_export.artifact.contract import DETECTION_OUTPUTS
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.errors import ExplainExportError, UsageError

from models import tiny_resnet

SIZE = (32, 32)
OTHER_SIZE = (40, 48)  # a size the export never saw, for dims of -1
TYPES = {  # Triton data type -> (ONNX element type, torch dtype)
    "TYPE_FP32": (onnx.TensorProto.FLOAT, torch.float32),
    "TYPE_INT64": (onnx.TensorProto.INT64, torch.int64),
    "TYPE_UINT8": (onnx.TensorProto.UINT8, torch.uint8),
}


@pytest.fixture(scope="module")
def pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):
        pytest.skip("tritonclient[grpc] is not installed (pip install -e '.[triton]')")
    return model_config_pb2


def _export(out, **kwargs):
    explainer = build_explainer(tiny_resnet(), input_size=SIZE)
    return export_explainer(explainer, str(out), model="tiny", **kwargs)


@pytest.fixture(scope="module")
def static_export(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("static"))


@pytest.fixture(scope="module")
def dynamic_class_export(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("dynamic"), dynamic_size=True, class_input=True)


def _parse(pb2, path):
    """Strict: ``text_format.Parse`` fails on any field ``ModelConfig`` does not have."""
    from google.protobuf import text_format

    with open(path) as f:
        return text_format.Parse(f.read(), pb2.ModelConfig())


def _type(pb2, io) -> str:
    return pb2.DataType.Name(io.data_type)


def _groups(pb2, config) -> list[tuple[int, str]]:
    return [(g.count, pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group]


def _model_dims(io) -> list[int]:
    """The dims the model sees (per item): ``reshape`` where given, else ``dims``."""
    return list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)


def _onnx_tensors(values) -> list[tuple[str, int, list[int]]]:
    """``(name, element type, dims without the batch; -1 where symbolic)`` per graph value."""
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        out.append((v.name, t.elem_type, dims[1:]))
    return out


def check_onnx(pb2, config, path):
    graph = onnx.load(path).graph
    for ios, values in ((config.input, graph.input), (config.output, graph.output)):
        assert [
            (io.name, TYPES[_type(pb2, io)][0], _model_dims(io)) for io in ios
        ] == _onnx_tensors(values)


def check_torchscript(pb2, config, path, hw):
    """Feed a batch of 2 built from the config (``-1`` dims at ``hw``); check what comes back."""
    module = torch.jit.load(path)
    assert [a.name for a in module.forward.schema.arguments[1:]] == [i.name for i in config.input]

    def concrete(dims):
        free = iter(hw)
        return [next(free) if d == -1 else d for d in dims]

    args = []
    for io in config.input:
        dtype, shape = TYPES[_type(pb2, io)][1], [2, *concrete(_model_dims(io))]
        if dtype == torch.int64:
            args.append(torch.tensor([-1, 3]).reshape(shape))
        else:
            args.append(torch.rand(shape).to(dtype))
    with torch.inference_mode():
        outputs = module(*args)
    assert len(outputs) == len(config.output)
    for index, (io, tensor) in enumerate(zip(config.output, outputs, strict=True)):
        assert io.name.endswith(f"__{index}")
        assert tensor.dtype == TYPES[_type(pb2, io)][1]
        assert list(tensor.shape) == [2, *concrete(_model_dims(io))]


def _write(result, repo, **kwargs):
    return triton.write_triton_repo(result.paths, result.metadata, str(repo), **kwargs)


def test_static_export_repo_matches_the_model_files(pb2, static_export, tmp_path):
    repo = tmp_path / "repo"
    written = _write(static_export, repo)
    assert written == [str(repo / "explainer_onnx"), str(repo / "explainer_torchscript")]
    assert sorted(os.listdir(repo)) == ["explainer_onnx", "explainer_torchscript"]
    assert sorted(os.listdir(tmp_path)) == ["repo"]  # no staging folder left beside it
    for fmt, model_file in triton.MODEL_FILES.items():
        folder = repo / f"explainer_{fmt}"
        assert sorted(os.listdir(folder)) == ["1", "config.pbtxt"]
        assert os.listdir(folder / "1") == [model_file]
        assert os.path.samefile(folder / "1" / model_file, static_export.paths[fmt])  # linked

    onnx_cfg = _parse(pb2, repo / "explainer_onnx" / "config.pbtxt")
    assert (onnx_cfg.name, onnx_cfg.backend, onnx_cfg.platform) == (
        "explainer_onnx",
        "onnxruntime",
        "",
    )
    assert [(i.name, list(i.dims)) for i in onnx_cfg.input] == [("image", [3, *SIZE])]
    assert [(o.name, list(o.dims)) for o in onnx_cfg.output] == [
        ("logits", [10]),
        ("heatmap", [1, *SIZE]),
    ]
    check_onnx(pb2, onnx_cfg, str(repo / "explainer_onnx" / "1" / "model.onnx"))

    ts_cfg = _parse(pb2, repo / "explainer_torchscript" / "config.pbtxt")
    assert (ts_cfg.name, ts_cfg.backend, ts_cfg.platform) == (
        "explainer_torchscript",
        "pytorch",
        "pytorch_libtorch",
    )
    assert [o.name for o in ts_cfg.output] == ["logits__0", "heatmap__1"]
    check_torchscript(pb2, ts_cfg, str(repo / "explainer_torchscript" / "1" / "model.pt"), SIZE)

    for cfg in (onnx_cfg, ts_cfg):
        assert cfg.max_batch_size == 8
        assert cfg.HasField("dynamic_batching")
        assert _groups(pb2, cfg) == [(1, "KIND_CPU")]
        assert all(_type(pb2, t) == "TYPE_FP32" for t in [*cfg.input, *cfg.output])


def test_dynamic_size_and_class_input(pb2, dynamic_class_export, tmp_path):
    repo = tmp_path / "repo"
    _write(dynamic_class_export, repo, name="cam")
    onnx_cfg = _parse(pb2, repo / "cam_onnx" / "config.pbtxt")
    ts_cfg = _parse(pb2, repo / "cam_torchscript" / "config.pbtxt")
    for cfg in (onnx_cfg, ts_cfg):
        image, class_index = cfg.input
        assert (image.name, list(image.dims)) == ("image", [3, -1, -1])
        # [N] alone: Triton wants non-empty dims, so [1] reshaped to [] for the model
        assert (class_index.name, _type(pb2, class_index)) == ("class_index", "TYPE_INT64")
        assert list(class_index.dims) == [1]
        assert class_index.HasField("reshape") and list(class_index.reshape.shape) == []
        assert list(cfg.output[1].dims) == [1, -1, -1]
    check_onnx(pb2, onnx_cfg, str(repo / "cam_onnx" / "1" / "model.onnx"))
    check_torchscript(pb2, ts_cfg, str(repo / "cam_torchscript" / "1" / "model.pt"), OTHER_SIZE)


@pytest.mark.slow
def test_top_k_lists_k_maps_and_the_classes_output(pb2, tmp_path):
    """A top-3 export: ``heatmap`` has dims [3, H, W] and ``classes`` (int64, [3]) is listed
    third, checked against both model files (TorchScript at a size the export never saw)."""
    explainer = build_explainer(tiny_resnet(), input_size=SIZE, top_k=3)
    result = export_explainer(explainer, str(tmp_path / "out"), dynamic_size=True)
    explainer.remove()
    repo = tmp_path / "repo"
    _write(result, repo, name="top")
    for fmt, names in (("onnx", ["logits", "heatmap", "classes"]),
                       ("torchscript", ["logits__0", "heatmap__1", "classes__2"])):  # fmt: skip
        cfg = _parse(pb2, repo / f"top_{fmt}" / "config.pbtxt")
        assert [(o.name, _type(pb2, o), list(o.dims)) for o in cfg.output] == [
            (names[0], "TYPE_FP32", [10]),
            (names[1], "TYPE_FP32", [3, -1, -1]),
            (names[2], "TYPE_INT64", [3]),
        ]
        assert [i.name for i in cfg.input] == ["image"]  # a top-k graph picks its classes
    check_onnx(pb2, _parse(pb2, repo / "top_onnx" / "config.pbtxt"), result.paths["onnx"])
    ts_cfg = _parse(pb2, repo / "top_torchscript" / "config.pbtxt")
    check_torchscript(pb2, ts_cfg, result.paths["torchscript"], OTHER_SIZE)


def test_batch_size_instances_and_kind(pb2, static_export, tmp_path):
    repo = tmp_path / "repo"
    _write(static_export, repo, max_batch_size=32, instances=3, kind="gpu")
    for fmt in ("onnx", "torchscript"):
        cfg = _parse(pb2, repo / f"explainer_{fmt}" / "config.pbtxt")
        assert cfg.max_batch_size == 32
        assert _groups(pb2, cfg) == [(3, "KIND_GPU")]


def test_only_the_formats_given_are_written_copied_where_links_fail(
    pb2, static_export, tmp_path, monkeypatch
):
    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(triton.os, "link", no_link)
    paths = {k: v for k, v in static_export.paths.items() if k != "torchscript"}
    written = triton.write_triton_repo(paths, static_export.metadata, str(tmp_path / "r"))
    assert written == [str(tmp_path / "r" / "explainer_onnx")]
    copied = tmp_path / "r" / "explainer_onnx" / "1" / "model.onnx"
    assert filecmp.cmp(copied, paths["onnx"], shallow=False)
    assert not os.path.samefile(copied, paths["onnx"])


def test_config_parsing_is_strict(pb2):
    from google.protobuf import text_format

    with pytest.raises(text_format.ParseError, match="no_such_field"):
        text_format.Parse('name: "x"\nno_such_field: 1\n', pb2.ModelConfig())


def test_refuses_to_overwrite_unless_asked(pb2, static_export, tmp_path):
    repo = tmp_path / "repo"
    _write(static_export, repo, max_batch_size=4)
    with pytest.raises(UsageError, match="explainer_onnx' already exists") as err:
        _write(static_export, repo, max_batch_size=16)
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="explainer_torchscript' already exists"):
        triton.check_repo(str(repo), ["torchscript"])  # the same check, before an export
    assert triton.check_repo(str(repo), ["pt2", "torchscript", "onnx"], name="other") == [
        "onnx",
        "torchscript",
    ]
    assert _parse(pb2, repo / "explainer_onnx" / "config.pbtxt").max_batch_size == 4
    _write(static_export, repo, max_batch_size=16, overwrite=True)
    for fmt in ("onnx", "torchscript"):
        assert _parse(pb2, repo / f"explainer_{fmt}" / "config.pbtxt").max_batch_size == 16
    assert sorted(os.listdir(tmp_path)) == ["repo"]


def test_a_failed_write_leaves_the_repo_as_it_was(pb2, static_export, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    _write(static_export, repo, max_batch_size=4)
    real_rename, failed = os.rename, []

    def rename(src, dst):  # fail once, on the second model folder, after the first was replaced
        if str(dst).endswith("explainer_torchscript") and not failed:
            failed.append(dst)
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(triton.os, "rename", rename)
    with pytest.raises(OSError):
        _write(static_export, repo, max_batch_size=16, overwrite=True)
    monkeypatch.undo()
    assert failed
    for fmt in ("onnx", "torchscript"):
        assert _parse(pb2, repo / f"explainer_{fmt}" / "config.pbtxt").max_batch_size == 4
    assert sorted(os.listdir(tmp_path)) == ["repo"]
    assert sorted(os.listdir(repo)) == ["explainer_onnx", "explainer_torchscript"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"max_batch_size": -4}, "max_batch_size must be >= 1"),
        ({"max_batch_size": 2.5}, "max_batch_size must be an integer"),
        ({"instances": 0}, "instances must be an integer >= 1"),
        ({"kind": "tpu"}, "kind must be one of cpu, gpu; got 'tpu'"),
        ({"name": "a/b"}, "name 'a/b' must be"),
        ({"name": ""}, "name '' must be"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(static_export, tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=message) as err:
        _write(static_export, tmp_path / "repo", **kwargs)
    assert "\n" not in str(err.value)
    assert not os.path.exists(tmp_path / "repo")


def test_bad_artifacts_are_one_line_usage_errors(pb2, static_export, tmp_path):
    meta = static_export.metadata
    with pytest.raises(UsageError, match="needs an onnx or torchscript export"):
        triton.write_triton_repo({"pt2": "x.pt2"}, meta, str(tmp_path / "repo"))
    with pytest.raises(UsageError, match="no onnx file at"):
        triton.write_triton_repo({"onnx": str(tmp_path / "none.onnx")}, meta, str(tmp_path))
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is a file; give a folder"):
        triton.write_triton_repo(static_export.paths, meta, str(tmp_path / "file"))


def test_missing_tritonclient_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc.model_config_pb2", None)
    meta = {"inputs": [], "outputs": []}
    with pytest.raises(ExplainExportError, match=r"pip install 'explain-export\[triton\]'"):
        triton.model_config(meta, "onnx", "explainer_onnx")


def _synthetic(hw):
    """Metadata of a uint8 NHWC image input and a uint8 overlay output (no model file)."""
    return {
        "inputs": [{"name": "image", "dtype": "uint8", "shape": ["N", *hw, 3]}],
        "outputs": [
            {"name": "logits", "dtype": "float32", "shape": ["N", 1000]},
            {"name": "heatmap", "dtype": "float32", "shape": ["N", 1, *hw]},
            {"name": "overlay", "dtype": "uint8", "shape": ["N", *hw, 3]},
        ],
    }


@pytest.mark.parametrize(("hw", "dims"), [([224, 160], [224, 160]), (["H", "W"], [-1, -1])])
def test_uint8_nhwc_input_and_overlay_output(pb2, hw, dims):
    from google.protobuf import text_format

    meta = _synthetic(hw)
    for fmt, names in (
        ("onnx", ["logits", "heatmap", "overlay"]),
        ("torchscript", ["logits__0", "heatmap__1", "overlay__2"]),
    ):
        config = triton.model_config(meta, fmt, f"x_{fmt}", max_batch_size=4)
        parsed = text_format.Parse(text_format.MessageToString(config), pb2.ModelConfig())
        assert parsed == config
        assert [(i.name, _type(pb2, i), list(i.dims)) for i in parsed.input] == [
            ("image", "TYPE_UINT8", [*dims, 3])
        ]
        assert [(o.name, _type(pb2, o), list(o.dims)) for o in parsed.output] == [
            (names[0], "TYPE_FP32", [1000]),
            (names[1], "TYPE_FP32", [1, *dims]),
            (names[2], "TYPE_UINT8", [*dims, 3]),
        ]


def test_top_k_metadata_gives_k_maps_and_int64_classes(pb2):
    """The metadata of a top-4 export as explain-export writes it; the model files are checked
    against the config in the slow test above."""
    meta = {
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["N", 3, 32, 32]}],
        "outputs": [
            {"name": "logits", "dtype": "float32", "shape": ["N", 10]},
            {"name": "heatmap", "dtype": "float32", "shape": ["N", 4, 32, 32]},
            {"name": "classes", "dtype": "int64", "shape": ["N", 4]},
        ],
        "top_k": 4,
    }
    config = triton.model_config(meta, "torchscript", "x_torchscript")
    assert [(o.name, _type(pb2, o), list(o.dims)) for o in config.output] == [
        ("logits__0", "TYPE_FP32", [10]),
        ("heatmap__1", "TYPE_FP32", [4, 32, 32]),
        ("classes__2", "TYPE_INT64", [4]),
    ]


@pytest.mark.parametrize("per_image", [False, True])
def test_a_detectors_outputs_get_static_dims_and_count_a_reshape(pb2, per_image):
    """The detection contract (issue 27): boxes [D, 4], scores [D], classes [D] int64, heatmap
    [D, H, W] (one class-agnostic map: [1, H, W]), and count, one value per image, as Triton's
    model_configuration.md ("Reshape") has a batch-only output: dims [1], reshape to []."""
    import detector_artifacts as det
    from google.protobuf import text_format

    d, maps = det.D, 1 if per_image else det.D
    for fmt, suffixes in (("onnx", [""] * 5), ("torchscript", [f"__{i}" for i in range(5)])):
        config = triton.model_config(det.metadata(per_image), fmt, f"det_{fmt}", max_batch_size=4)
        parsed = text_format.Parse(text_format.MessageToString(config), pb2.ModelConfig())
        got = [(o.name, _type(pb2, o), list(o.dims), _model_dims(o)) for o in parsed.output]
        names = [n + s for n, s in zip(DETECTION_OUTPUTS, suffixes, strict=True)]
        assert got == [
            (names[0], "TYPE_FP32", [d, 4], [d, 4]),
            (names[1], "TYPE_FP32", [d], [d]),
            (names[2], "TYPE_INT64", [d], [d]),
            (names[3], "TYPE_INT64", [1], []),
            (names[4], "TYPE_FP32", [maps, *det.SIZE], [maps, *det.SIZE]),
        ]
        assert parsed.output[3].HasField("reshape") and parsed.max_batch_size == 4
        assert not any(o.HasField("reshape") for i, o in enumerate(parsed.output) if i != 3)
        assert [(i.name, list(i.dims)) for i in parsed.input] == [("image", [3, *det.SIZE])]


def test_a_mask_rcnn_config_lists_its_masks_output(pb2):
    """A Mask R-CNN export (issue 29) has a sixth output, ``masks [D, H, W]`` float32, after
    the detection contract's five: ``masks`` in ONNX, ``masks__5`` in TorchScript."""
    import detector_artifacts as det
    from google.protobuf import text_format

    for fmt, name in (("onnx", "masks"), ("torchscript", "masks__5")):
        config = triton.model_config(det.metadata(masks=True), fmt, f"mask_{fmt}")
        parsed = text_format.Parse(text_format.MessageToString(config), pb2.ModelConfig())
        assert len(parsed.output) == len(DETECTION_OUTPUTS) + 1
        masks = parsed.output[-1]
        assert (masks.name, _type(pb2, masks)) == (name, "TYPE_FP32")
        assert list(masks.dims) == [det.D, *det.SIZE] and not masks.HasField("reshape")


@pytest.mark.slow
@pytest.mark.parametrize("masks", [False, True])
def test_a_detection_repo_matches_its_model_files(pb2, tmp_path, masks):
    """A detection export's ONNX and TorchScript files (made in the tests to the contract;
    with ``masks``, a Mask R-CNN's six outputs) against the repository's configs: names, types,
    and the dims each model returns."""
    import detector_artifacts as det

    formats = ("onnx", "torchscript")
    paths = {fmt: det.export(str(tmp_path / fmt), fmt, masks=masks) for fmt in formats}
    repo = tmp_path / "repo"
    triton.write_triton_repo(paths, det.metadata(masks=masks), str(repo), name="det")
    check_onnx(pb2, _parse(pb2, repo / "det_onnx" / "config.pbtxt"), paths["onnx"])
    ts_cfg = _parse(pb2, repo / "det_torchscript" / "config.pbtxt")
    check_torchscript(pb2, ts_cfg, paths["torchscript"], det.SIZE)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "image", "dtype": "bfloat16", "shape": ["N", 3]}, "dtype 'bfloat16'"),
        ({"name": "image", "dtype": "float32", "shape": [1, 3]}, "named batch dimension first"),
        ({"dtype": "float32", "shape": ["N", 3]}, "has no name"),
    ],
)
def test_bad_metadata_is_a_one_line_usage_error(pb2, tensor, message):
    meta = {"inputs": [tensor], "outputs": _synthetic([8, 8])["outputs"]}
    with pytest.raises(UsageError, match=message) as err:
        triton.model_config(meta, "onnx", "x_onnx")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_cli_writes_the_repo_next_to_the_export(pb2, tmp_path, capsys):
    from explain_export.cli.export import main

    torch.save(tiny_resnet().state_dict(), tmp_path / "m.pt")
    repo = tmp_path / "repo"
    args = [
        "--ckpt",
        str(tmp_path / "m.pt"),
        "--arch",
        "models:TinyResNet",
        "--input-size",
        "32",
        "32",
        "--out",
        str(tmp_path / "out"),
        "--triton-repo",
        str(repo),
        "--triton-name",
        "tiny",
        "--max-batch-size",
        "16",
        "--instances",
        "2",
    ]
    assert main(args) == 0
    assert f"wrote {repo / 'tiny_onnx'}" in capsys.readouterr().out
    config = _parse(pb2, repo / "tiny_onnx" / "config.pbtxt")
    assert config.max_batch_size == 16 and config.instance_group[0].count == 2
    assert filecmp.cmp(repo / "tiny_onnx" / "1" / "model.onnx", tmp_path / "out" / "explainer.onnx")
    assert main(args) == 0  # a re-export replaces the repo's folders
    assert main([*args[:-6], "--max-batch-size", "0"]) == 2
    assert "--max-batch-size must be >= 1" in capsys.readouterr().err
