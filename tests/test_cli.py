"""The explain-export command as a user runs it: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch

from explain_export.artifact import runtime, samples
from explain_export.builder.export import parity64, verify
from explain_export.cli.export import main
from explain_export.errors import UsageError

from commands import run_module
from models import tiny_resnet


def test_default_export_writes_verified_files(default_export):
    names = sorted(os.listdir(default_export))
    assert names == ["explainer.json", "explainer.onnx", "explainer.torchscript.pt"]
    meta = json.loads((default_export / "explainer.json").read_text())
    assert meta["layer"] == "_avg_pooling:input" and meta["method"] == "cam"
    assert len(meta["labels"]) == 1000 and meta["labels"][281] == "tabby"
    assert all(r["ok"] for r in meta["parity"]["rows"])
    assert {r["format"] for r in meta["parity"]["rows"]} == {"onnx", "torchscript"}


@pytest.mark.parametrize("fmt", ["explainer.onnx", "explainer.torchscript.pt"])
def test_default_export_sees_the_cat(default_export, fmt):
    run = runtime.load(str(default_export / fmt))
    photo = samples.load_rgb(samples.photo_path("chelsea.png"), (224, 224))[None]
    logits, heat = run(photo)
    label = run.metadata["labels"][int(logits.argmax())]
    assert 281 <= int(logits.argmax()) <= 285, label
    assert heat.shape == (1, 1, 224, 224) and heat.min() == 0 and heat.max() == pytest.approx(1)


def test_default_export_prints_model_layer_method_and_parity(default_export):
    out = (default_export.parent / "console.stdout").read_text()
    err = (default_export.parent / "console.stderr").read_text()
    assert "exported onnx" in err and "exported torchscript" in err  # progress on stderr
    assert "exported" not in out  # results on stdout
    assert "EfficientNet-Lite0" in out and "nothing downloaded" in out
    assert "layer:  _avg_pooling:input" in out and "method: cam, head _fc" in out
    assert "parity vs eager" in out and "photo chelsea.png" in out
    assert "FAIL" not in out


def test_user_state_dict_with_arch(tmp_path, capsys):
    torch.save({"model_state_dict": tiny_resnet().state_dict()}, tmp_path / "m.pt")
    out_dir = tmp_path / "out"
    code = main(
        [
            "--ckpt",
            str(tmp_path / "m.pt"),
            "--arch",
            "models:TinyResNet",
            "--layer",
            "layer3",
            "--method",
            "sum",
            "--input-size",
            "64",
            "96",
            "--out",
            str(out_dir),
        ]
    )
    assert code == 0
    out, err = capsys.readouterr()
    assert "training dict['model_state_dict']" in err
    assert "layer:  layer3" in out
    meta = json.loads((out_dir / "explainer.json").read_text())
    assert meta["input_size"] == [64, 96] and meta["labels"] is None


def test_list_layers_marks_the_default(capsys):
    assert main(["--list-layers"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines["_avg_pooling:input"].endswith("<- default")
    assert "1280x7x7" in lines["_avg_pooling:input"]
    assert "_swish@0" in lines and "_swish@1" in lines and "_avg_pooling" not in lines


def test_pickled_checkpoint_is_refused_with_the_flag_named(tmp_path, capsys):
    torch.save(tiny_resnet(), tmp_path / "whole.pt")
    assert main(["--ckpt", str(tmp_path / "whole.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err
    code = main(
        [
            "--ckpt",
            str(tmp_path / "whole.pt"),
            "--trust-checkpoint",
            "--input-size",
            "32",
            "32",
            "--formats",
            "onnx",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 0


def test_parity_failure_exits_1_and_writes_nothing(tmp_path, capsys, monkeypatch):
    torch.save(tiny_resnet().state_dict(), tmp_path / "m.pt")
    monkeypatch.setattr(verify, "LOGITS_TOL", -1.0)
    monkeypatch.setattr(parity64, "TIMES", -1.0)  # fails against float64 too
    out_dir = tmp_path / "out"
    code = main(
        [
            "--ckpt",
            str(tmp_path / "m.pt"),
            "--arch",
            "models:TinyResNet",
            "--input-size",
            "32",
            "32",
            "--out",
            str(out_dir),
        ]
    )
    assert code == 1
    assert "differs from eager" in capsys.readouterr().err
    assert os.listdir(out_dir) == []


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(UsageError):
        main(["--layer", "nope", "--debug", "--out", str(tmp_path)])


def _run(*args: str) -> subprocess.CompletedProcess:
    return run_module("explain_export", *args)


def test_python_m_is_the_export_command():
    proc = _run("--help")
    assert proc.returncode == 0
    assert "usage: explain-export" in proc.stdout and "--trust-checkpoint" in proc.stdout


def test_subprocess_usage_error_has_no_traceback(tmp_path):
    proc = _run("--ckpt", str(tmp_path / "missing.pt"), "--arch", "models:TinyResNet")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"explain-export: error: checkpoint '{tmp_path / 'missing.pt'}' does not exist"
    ]


def test_argparse_errors_exit_2():
    proc = _run("--method", "scorecam")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_onnx_export_matches_eager_on_real_photos(default_export, default_model):
    from explain_export.builder.explainer import build_explainer

    explainer = build_explainer(default_model.model, default_model.layer, "cam")
    names = ("coffee.png", "rocket.jpg", "motorcycle_left.png")
    x = np.stack([samples.load_rgb(samples.photo_path(n), (224, 224)) for n in names])
    logits, heat = runtime.load(str(default_export / "explainer.onnx"))(x)
    with torch.no_grad():
        ref_logits, ref_heat = explainer(torch.from_numpy(x))
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=verify.LOGITS_TOL)
    np.testing.assert_allclose(heat, ref_heat.numpy(), atol=verify.HEATMAP_TOL)


def test_labels_imagenet_takes_the_shipped_names(tmp_path, capsys):
    from models import TinyResNet

    torch.save(TinyResNet(num_classes=1000).state_dict(), tmp_path / "m.pt")
    args = ["--ckpt", str(tmp_path / "m.pt"), "--arch", "models:TinyResNet"]
    args += ["--arch-kwargs", '{"num_classes": 1000}', "--input-size", "32", "32"]
    assert (
        main([*args, "--labels", "imagenet", "--formats", "onnx", "--out", str(tmp_path / "o")])
        == 0
    )
    assert "labels: none" not in capsys.readouterr().out  # they were given
    meta = json.loads((tmp_path / "o" / "explainer.json").read_text())
    assert len(meta["labels"]) == 1000 and meta["labels"][281] == "tabby"
    # a 10-class model cannot take them: one line, exit 2
    torch.save(tiny_resnet().state_dict(), tmp_path / "ten.pt")
    ten = [
        "--ckpt",
        str(tmp_path / "ten.pt"),
        "--arch",
        "models:TinyResNet",
        "--input-size",
        "32",
        "32",
    ]
    assert main([*ten, "--labels", "imagenet", "--out", str(tmp_path / "t")]) == 2
    assert "the model has 10 classes (the default num_classes of models:TinyResNet) but " in (
        capsys.readouterr().err
    )


def test_list_layers_of_a_long_list_shows_the_blocks_and_says_how_to_see_the_rest():
    """EfficientNet-Lite0 has about 200 maps: the list shows its own modules and its blocks,
    the default marked, and says how many are left out (as printed)."""
    proc = run_module("explain_export", "--list-layers")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    names = [line.split()[0] for line in lines[1:-2]]
    assert names[:4] == ["_conv_stem", "_bn0", "_swish@0", "_blocks.0"]
    assert names[3:19] == [f"_blocks.{i}" for i in range(16)]
    assert lines[-3].split()[0] == "_avg_pooling:input" and lines[-3].endswith("<- default")
    assert lines[-1].startswith("default: _avg_pooling:input (")
    shown, total = len(names), int(lines[-2].split()[2])
    assert total > 150 and lines[-2] == (
        f"{shown} of {total} layers shown: the model's own modules and its blocks; "
        "--list-layers all shows every one, --list-layers PATTERN those whose name matches"
    )


def test_list_layers_pattern(capsys):
    assert main(["--list-layers", "_blocks.15.*"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in out[1:-2]]
    assert names[-1] == "_avg_pooling:input" and out[-3].endswith("<- default")  # always shown
    assert len(names) > 5 and all(n.startswith("_blocks.15.") for n in names[:-1])
    assert "those matching '_blocks.15.*', and the default" in out[-2]


def test_pick_layers_by_glob_part_of_the_name_or_blocks():
    from explain_export.builder.inspect.layers import BRIEF, LayerRow, pick_layers

    def row(name: str, block: bool = False, default: bool = False) -> LayerRow:
        return LayerRow(name, "Conv2d", "8x4x4", default, block)

    rows = [
        row("stem", True),
        row("layer4.0.conv1"),
        row("layer4.0", True),
        row("fc_in", default=True),
    ]
    assert pick_layers(rows) == rows  # a short list: every row
    assert [r.name for r in pick_layers(rows, "layer4.*")] == [
        "layer4.0.conv1",
        "layer4.0",
        "fc_in",
    ]
    assert [r.name for r in pick_layers(rows, "conv")] == ["layer4.0.conv1", "fc_in"]
    assert pick_layers(rows, "*") == rows
    long = rows[:3] * BRIEF + rows[3:]
    assert [r.name for r in pick_layers(long)] == ["stem", "layer4.0"] * BRIEF + ["fc_in"]


def test_list_layers_of_a_short_list_shows_every_map(capsys):
    assert main(["--arch", "models:TinyResNet", "--list-layers"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "layer3.conv1" in [line.split()[0] for line in out[1:]]
    assert out[-1].startswith("default: ")


@pytest.mark.slow
def test_a_1000_class_model_without_labels_is_told_of_labels_imagenet(tmp_path):
    """As printed by the export report; with --labels (test above) the line is not there."""
    from models import TinyResNet

    torch.save(TinyResNet(num_classes=1000).state_dict(), tmp_path / "m.pt")
    args = ["--ckpt", str(tmp_path / "m.pt"), "--arch", "models:TinyResNet"]
    args += ["--arch-kwargs", '{"num_classes": 1000}', "--input-size", "32", "32"]
    proc = run_module("explain_export", *args, "--formats", "onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (
        "labels: none; if the 1000 classes are ImageNet-1k's, --labels imagenet stores their "
        "names (explain-run and explain-serve then show names, not class numbers)"
    ) in proc.stdout.splitlines()
    model = str(tmp_path / "explainer" / "explainer.onnx")
    photo = samples.photo_path("chelsea.png")
    proc = run_module("explain_export.cli.run", "--model", model, "--images", photo, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert (
        lines[1].startswith("  chelsea.png: map: ") and lines[1].split(": ")[2].split()[0].isdigit()
    )
    assert lines[2] == (
        "  (class numbers: the model has no labels; if they are ImageNet-1k's, explain-export "
        "--labels imagenet stores the names)"
    )
