"""The catalogue of bad inputs, each run through the real commands.

Every case checks: the exit code; a one-line message (the last line on stderr) that names the
problem and what to do; no traceback without --debug; and nothing at the output path.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from explain_export.artifact import samples
from explain_export.cli import export as export_cli
from explain_export.cli import run as run_cli

from models import FlattenHead, TinyResNet, WithUnusedBranch, tiny_resnet


class Payload:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _sd(tmp: pathlib.Path, obj=None, name: str = "m.pt") -> str:
    path = tmp / name
    torch.save(tiny_resnet().state_dict() if obj is None else obj, path)
    return str(path)


def _truncated(tmp: pathlib.Path) -> str:
    path = pathlib.Path(_sd(tmp))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def _write(tmp: pathlib.Path, name: str, data: bytes) -> str:
    (tmp / name).write_bytes(data)
    return str(tmp / name)


def _missing_key(tmp):
    sd = tiny_resnet().state_dict()
    del sd["layer2.conv2.weight"]
    return _sd(tmp, sd)


def _extra_key(tmp):
    return _sd(tmp, {**tiny_resnet().state_dict(), "head.extra": torch.zeros(1)})


TINY = ["--arch", "models:TinyResNet", "--input-size", "32", "32"]


@dataclass
class Case:
    id: str
    args: Callable[[pathlib.Path], list[str]]
    code: int
    message: str


EXPORT_CASES = [
    # checkpoint
    Case("ckpt-missing", lambda t: ["--ckpt", str(t / "nope.pt"), *TINY], 2, "does not exist"),
    Case(
        "ckpt-directory",
        lambda t: ["--ckpt", str(t), *TINY],
        2,
        "is a directory; pass the .pt/.pth file",
    ),
    Case(
        "ckpt-empty", lambda t: ["--ckpt", _write(t, "e.pt", b""), *TINY], 2, "is empty (0 bytes)"
    ),
    Case(
        "ckpt-truncated",
        lambda t: ["--ckpt", _truncated(t), *TINY],
        2,
        "is a zip archive that cannot be read: damaged or cut short",
    ),
    Case(
        "ckpt-not-torch",
        lambda t: ["--ckpt", _write(t, "x.pt", b"hello" * 50), *TINY],
        2,
        "is not a PyTorch file: it is a text file",
    ),
    Case(
        "ckpt-code-in-pickle",
        lambda t: ["--ckpt", _sd(t, {"state_dict": {}, "x": Payload(str(t / "pwned"))}), *TINY],
        2,
        "loading them would run code from the file; "
        "if you trust its source, rerun with --trust-checkpoint",
    ),
    Case(
        "ckpt-whole-module",
        lambda t: ["--ckpt", _sd(t, tiny_resnet()), *TINY],
        2,
        "--trust-checkpoint",
    ),
    Case(
        "ckpt-unknown-layout",
        lambda t: ["--ckpt", _sd(t, {"weights": tiny_resnet().state_dict()}), *TINY],
        2,
        "none of state_dict, model_state_dict, model, ema holds a state_dict",
    ),
    Case(
        "ckpt-without-arch",
        lambda t: ["--ckpt", _sd(t)],
        2,
        "name the model that it fits with --arch",
    ),
    # arch
    Case(
        "arch-unknown-module",
        lambda t: ["--ckpt", _sd(t), "--arch", "nopkg.nets:Net"],
        2,
        "cannot import 'nopkg.nets'",
    ),
    Case(
        "arch-unknown-callable",
        lambda t: ["--ckpt", _sd(t), "--arch", "models:ResNet999"],
        2,
        "has no attribute 'ResNet999'",
    ),
    Case(
        "arch-not-callable",
        lambda t: ["--ckpt", _sd(t), "--arch", "models:torch"],
        2,
        "is not callable",
    ),
    Case(
        "arch-no-colon",
        lambda t: ["--ckpt", _sd(t), "--arch", "models.TinyResNet"],
        2,
        "package.module:callable",
    ),
    Case(
        "arch-kwargs-not-json",
        lambda t: ["--ckpt", _sd(t), *TINY, "--arch-kwargs", "{width: 3}"],
        2,
        "not valid JSON",
    ),
    Case(
        "arch-kwargs-not-object",
        lambda t: ["--ckpt", _sd(t), *TINY, "--arch-kwargs", "[1]"],
        2,
        "a JSON object",
    ),
    Case(
        "arch-kwargs-rejected",
        lambda t: ["--ckpt", _sd(t), *TINY, "--arch-kwargs", '{"depth": 5}'],
        2,
        "rejected --arch-kwargs",
    ),
    # state_dict
    Case(
        "sd-missing-keys",
        lambda t: ["--ckpt", _missing_key(t), *TINY],
        2,
        "missing keys: layer2.conv2.weight",
    ),
    Case(
        "sd-unexpected-keys",
        lambda t: ["--ckpt", _extra_key(t), *TINY],
        2,
        "unexpected keys: head.extra",
    ),
    Case(
        "sd-shape-mismatch",
        lambda t: ["--ckpt", _sd(t, TinyResNet(num_classes=4).state_dict()), *TINY],
        2,
        "shape mismatches: fc.weight [4, 32] vs model [10, 32], fc.bias [4] vs model [10]",
    ),
    # layer
    Case(
        "layer-unknown",
        lambda t: ["--ckpt", _sd(t), *TINY, "--layer", "layer33"],
        2,
        "no layer 'layer33' in the model; did you mean layer3",
    ),
    Case(
        "layer-not-4d",
        lambda t: ["--ckpt", _sd(t), *TINY, "--layer", "fc", "--method", "sum"],
        2,
        "not a 4-D [N,C,h,w] feature map",
    ),
    Case(
        "layer-called-twice",
        lambda t: ["--layer", "_swish"],
        2,
        "runs 2 times in one forward pass; pick one call with '_swish@0'",
    ),
    Case(
        "layer-never-called",
        lambda t: [
            "--ckpt",
            _sd(t, WithUnusedBranch().state_dict()),
            "--arch",
            "models:WithUnusedBranch",
            "--input-size",
            "32",
            "32",
            "--layer",
            "unused",
        ],
        2,
        "never runs in the model's forward pass",
    ),
    Case(
        "layer-bad-syntax",
        lambda t: ["--layer", "_blocks.1:middle"],
        2,
        "write it as NAME[:input|:output][@CALL]",
    ),
    # method / head
    Case(
        "cam-non-gap-head",
        lambda t: [
            "--ckpt",
            _sd(t, FlattenHead().state_dict()),
            "--arch",
            "models:FlattenHead",
            "--input-size",
            "32",
            "32",
            "--method",
            "cam",
        ],
        2,
        "cam needs 'features' to feed global average pooling + 'fc'",
    ),
    Case(
        "cam-head-not-linear",
        lambda t: ["--ckpt", _sd(t), *TINY, "--head", "layer3"],
        2,
        "not an nn.Linear",
    ),
    Case(
        "class-index-out-of-range",
        lambda t: ["--class-index", "1000"],
        2,
        "--class-index 1000 is out of range",
    ),
    Case(
        "class-input-with-sum",
        lambda t: ["--method", "sum", "--class-input"],
        2,
        "--class-input needs a method that explains a class",
    ),
    Case("method-unknown", lambda t: ["--method", "scorecam"], 2, "invalid choice: 'scorecam'"),
    # sizes and normalization
    Case("size-too-small", lambda t: ["--input-size", "16", "16"], 2, "gives a 1x1 map"),
    Case(
        "size-breaks-model",
        lambda t: [
            "--ckpt",
            _sd(t, FlattenHead().state_dict()),
            "--arch",
            "models:FlattenHead",
            "--method",
            "sum",
            "--input-size",
            "40",
            "40",
        ],
        2,
        "the model fails on a 40x40 input",
    ),
    Case("size-zero", lambda t: ["--input-size", "0", "224"], 2, "--input-size must be positive"),
    Case(
        "size-negative", lambda t: ["--input-size", "224", "-5"], 2, "--input-size must be positive"
    ),
    Case("mean-too-short", lambda t: ["--mean", "0.5", "0.5"], 2, "expected 3 arguments"),
    Case("std-zero", lambda t: ["--std", "0.2", "0", "0.2"], 2, "--std values must be positive"),
    # output
    Case(
        "formats-unknown", lambda t: ["--formats", "onnx,tflite"], 2, "--formats takes a comma list"
    ),
    Case(
        "labels-wrong-count",
        lambda t: ["--labels", _write(t, "l.txt", b"a\nb\n")],
        2,
        "the model has 1000 classes (the embedded EfficientNet-Lite0's ImageNet-1k classes) but "
        "--labels",
    ),
    Case("labels-missing", lambda t: ["--labels", str(t / "nope.txt")], 2, "cannot read --labels"),
]


def _out_is_empty(out: pathlib.Path) -> bool:
    return not out.exists() or (out.is_dir() and os.listdir(out) == [])


def _check(code: int, err: str, case: Case, prog: str) -> None:
    lines = err.strip().splitlines()
    assert code == case.code, err
    assert lines and lines[-1].startswith(f"{prog}: error: "), err
    assert case.message in lines[-1], lines[-1]
    assert "Traceback" not in err


@pytest.mark.parametrize("case", EXPORT_CASES, ids=[c.id for c in EXPORT_CASES])
def test_export_bad_input(case, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    out = tmp_path / "out"
    try:
        code = export_cli.main([*case.args(inputs), "--out", str(out)])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    _check(code, capsys.readouterr().err, case, "explain-export")
    assert _out_is_empty(out)
    assert not (inputs / "pwned").exists()  # no code from a checkpoint ran


def test_export_bad_input_with_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        export_cli.main(["--ckpt", str(tmp_path / "nope.pt"), *TINY, "--debug"])


def test_out_that_is_a_file_or_below_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    for out in (blocker, blocker / "sub"):
        code = export_cli.main(["--ckpt", _sd(tmp_path), *TINY, "--out", str(out)])
        _check(code, capsys.readouterr().err, Case("", lambda t: [], 2, "--out"), "explain-export")
    assert blocker.read_text() == "keep me"


def test_disk_full_while_writing_keeps_the_previous_files(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "explainer.onnx").write_bytes(b"previous onnx")
    real_save = onnx.save

    def full_disk(proto, path, *args, **kwargs):
        with open(path, "ab") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(onnx, "save", full_disk)
    code = export_cli.main(["--ckpt", _sd(tmp_path), *TINY, "--out", str(out)])
    monkeypatch.setattr(onnx, "save", real_save)
    _check(
        code,
        capsys.readouterr().err,
        Case("", lambda t: [], 1, "No space left on device"),
        "explain-export",
    )
    assert sorted(os.listdir(out)) == ["explainer.onnx"]
    assert (out / "explainer.onnx").read_bytes() == b"previous onnx"


# --- explain-run -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> pathlib.Path:
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

    out = tmp_path_factory.mktemp("tiny_run")
    explainer = build_explainer(tiny_resnet(), input_size=(32, 32))
    export_explainer(explainer, str(out), ("onnx",))
    return out / "explainer.onnx"


def _plain_onnx(tmp: pathlib.Path) -> str:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, tmp / "plain.onnx")
    return str(tmp / "plain.onnx")


def _other_metadata(tmp: pathlib.Path, model: pathlib.Path, change: dict) -> str:
    """A copy of the model with its embedded metadata replaced."""
    proto = onnx.load(str(model))
    meta = json.loads(proto.metadata_props[0].value)
    proto.metadata_props[0].value = json.dumps({**meta, **change})
    onnx.save(proto, tmp / "changed.onnx")
    return str(tmp / "changed.onnx")


def _no_metadata(tmp: pathlib.Path, model: pathlib.Path) -> str:
    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    onnx.save(proto, tmp / "bare.onnx")
    return str(tmp / "bare.onnx")


def _photos(tmp: pathlib.Path) -> str:
    d = tmp / "photos"
    d.mkdir(exist_ok=True)
    shutil.copy(samples.photo_path("chelsea.png"), d / "chelsea.png")
    return str(d)


RUN_CASES = [
    Case("model-missing", lambda t, m: ["--model", str(t / "nope.onnx")], 2, "no model at"),
    Case(
        "model-wrong-suffix",
        lambda t, m: ["--model", _write(t, "m.bin", b"x")],
        2,
        "is not .onnx, .pt or .pt2",
    ),
    Case(
        "model-garbage",
        lambda t, m: ["--model", _write(t, "g.onnx", b"garbage" * 10)],
        2,
        "--model '",  # ... g.onnx' is not a readable ONNX file (damaged, cut short, or ...
    ),
    Case(
        "model-cut-short",
        lambda t, m: ["--model", _write(t, "c.onnx", pathlib.Path(m).read_bytes()[:300])],
        2,
        "c.onnx' is not a readable ONNX file (damaged, cut short, or another kind of file)",
    ),
    Case(
        "model-torchscript-cut-short",
        lambda t, m: ["--model", _write(t, "c.pt", b"PK\x03\x04" + b"\x00" * 64)],
        2,
        "c.pt' is not a whole TorchScript file: not a zip archive",
    ),
    Case(
        "model-checkpoint-as-torchscript",
        lambda t, m: ["--model", _sd(t, name="weights.pt")],
        2,
        "weights.pt' is a zip archive, but not an exported TorchScript file (a checkpoint?",
    ),
    Case(
        "model-not-explainer",
        lambda t, m: ["--model", _plain_onnx(t)],
        2,
        "no explain-export metadata",
    ),
    Case(
        "metadata-missing",
        lambda t, m: ["--model", _no_metadata(t, m)],
        2,
        "no explain-export metadata",
    ),
    Case(
        "metadata-mismatch-size",
        lambda t, m: ["--model", _other_metadata(t, m, {"input_size": [224, 224]})],
        2,
        "says input 224x224, but the graph takes 32x32",
    ),
    Case(
        "metadata-mismatch-labels",
        lambda t, m: ["--model", _other_metadata(t, m, {"labels": ["a", "b"]})],
        2,
        "has 2 labels for 10 classes",
    ),
    Case(
        "metadata-incomplete",
        lambda t, m: ["--model", _other_metadata(t, m, {"input_size": None})],
        2,
        "input_size must be [H, W] with positive integers",
    ),
    Case(
        "metadata-bad-labels",
        lambda t, m: ["--model", _other_metadata(t, m, {"labels": "cat"})],
        2,
        "labels must be a list of strings",
    ),
    Case(
        "images-empty-folder",
        lambda t, m: ["--model", str(m), "--images", str(t)],
        2,
        "no image files in",
    ),
    Case(
        "images-missing",
        lambda t, m: ["--model", str(m), "--images", str(t / "noimgs")],
        2,
        "noimgs' does not exist; check the path",
    ),
    Case(
        "images-one-missing-beside-a-photo",
        lambda t, m: ["--model", str(m), "--images", _photos(t), str(t / "gone.png")],
        2,
        "gone.png' does not exist; check the path",
    ),
    Case(
        "images-pattern-matches-nothing",
        lambda t, m: ["--model", str(m), "--images", str(t / "*.jpg")],
        2,
        "*.jpg' matches no file; check the path",
    ),
    Case(
        "batch-size-zero",
        lambda t, m: ["--model", str(m), "--batch-size", "0"],
        2,
        "--batch-size must be at least 1",
    ),
    Case(
        "alpha-negative",
        lambda t, m: ["--model", str(m), "--alpha", "-0.5"],
        2,
        "--alpha must not be negative",
    ),
    Case(
        "topk-zero", lambda t, m: ["--model", str(m), "--topk", "0"], 2, "--topk must be at least 1"
    ),
    Case(
        "threads-zero",
        lambda t, m: ["--model", str(m), "--threads", "0"],
        2,
        "--threads must be at least 1",
    ),
    Case(
        "colormap-unknown",
        lambda t, m: ["--model", str(m), "--colormap", "plasmaa"],
        2,
        "unknown --colormap 'plasmaa'",
    ),
    Case(
        "device-unknown",
        lambda t, m: ["--model", str(m), "--device", "tpu"],
        2,
        "invalid choice: 'tpu'",
    ),
]


@pytest.mark.parametrize("case", RUN_CASES, ids=[c.id for c in RUN_CASES])
def test_run_bad_input(case, tmp_path, capsys, tiny_model):
    inputs = tmp_path / "in"
    inputs.mkdir()
    out = tmp_path / "out"
    args = case.args(inputs, tiny_model)
    if "--images" not in args:
        args += ["--images", _photos(tmp_path)]
    try:
        code = run_cli.main([*args, "--out", str(out)])
    except SystemExit as exc:
        code = exc.code
    _check(code, capsys.readouterr().err, case, "explain-run")
    assert _out_is_empty(out)


def _huge_png(tmp: pathlib.Path) -> str:
    header = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (25000).to_bytes(4, "big") * 2
    return _write(tmp, "huge.png", header + b"\x08\x02\x00\x00\x00" + b"\x00" * 32)


def _dangling_link(tmp: pathlib.Path) -> str:
    """A file that is listed but cannot be read (as one deleted during the run)."""
    os.symlink(tmp / "gone.png", tmp / "link.png")
    return str(tmp / "link.png")


def _half_png(tmp: pathlib.Path) -> str:
    data = pathlib.Path(samples.photo_path("coffee.png")).read_bytes()
    return _write(tmp, "half.png", data[: len(data) // 4])


FILE_CASES = [
    Case(
        "image-zero-bytes",
        lambda t: _write(t, "zero.png", b""),
        1,
        "zero.png: empty file (0 bytes)",
    ),
    Case(
        "image-corrupt",
        lambda t: _write(t, "bad.jpg", b"\xff\xd8\xff" + b"\x13" * 500),
        1,
        "bad.jpg: not a readable image",
    ),
    Case("image-truncated", _half_png, 1, "half.png: not a readable image"),
    Case(
        "image-not-an-image",
        lambda t: _write(t, "notes.png", b"just text"),
        1,
        "notes.png: not a readable image",
    ),
    Case("image-unreadable", _dangling_link, 1, "link.png: cannot read"),
    Case(
        "image-too-large",
        _huge_png,
        1,
        "huge.png: 25000x25000 is 625,000,000 pixels, over the limit",
    ),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c.id for c in FILE_CASES])
def test_run_bad_image_is_skipped_and_the_rest_done(case, tmp_path, capsys, tiny_model):
    """A bad file is reported on one line and skipped; the good photo beside it is processed."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = case.args(inputs)
    good = samples.photo_path("chelsea.png")
    out = tmp_path / "out"
    code = run_cli.main(["--model", str(tiny_model), "--images", bad, good, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == case.code
    lines = [line for line in err.splitlines() if line.startswith("explain-run: skipped")]
    assert len(lines) == 1 and case.message in lines[0], err
    assert "Traceback" not in err
    assert sorted(os.listdir(out)) == ["chelsea.overlay.png", "predictions.jsonl"]
