"""Issue 26, item 8: the smaller things a first hour meets. A misspelt method gets the one
meant; ``load(..., device="cuda")`` without a GPU says so in our one warning, not ONNX
Runtime's lines; ``--model DIR`` takes the export folder; flags that conflict, and a label
count the flags or the checkpoint tell, are refused before the model loads, in a line that
says how to fix it; a segmentation export's printout says it is one."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from explain_export.builder.maths import methods
from explain_export.cli import bench, export
from explain_export.errors import UsageError

from commands import ROOT


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("gradcampp", "gradcam++"), ("GradCAM_plusplus", "gradcam++"), ("layer-cam", "layercam")],
)
def test_a_near_miss_method_gets_the_one_meant(typed, meant, capsys, tmp_path):
    with pytest.raises(SystemExit, match="2"):
        export.main(["--method", typed, "--out", str(tmp_path)])
    assert capsys.readouterr().err == (
        f"explain-export: error: argument --method: unknown method '{typed}'; did you mean "
        f"{meant}? (see explain-export --help)\n"
    )
    said = f"unknown method '{typed}'; did you mean {meant}?"
    with pytest.raises(UsageError, match=f"^{re.escape(said)}$"):
        methods.get(typed)


def test_a_method_near_none_lists_the_choices(capsys, tmp_path):
    with pytest.raises(SystemExit, match="2"):
        export.main(["--method", "scorecam", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "invalid choice: 'scorecam'" in err and "did you mean" not in err
    with pytest.raises(UsageError, match="choose one of auto, sum, cam, gradcam, "):
        methods.get("scorecam")


def test_the_bench_methods_list_suggests_too(capsys, tmp_path):
    assert bench.main(["--methods", "cam,gradcampp", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "explain-bench: error: --methods: unknown method 'gradcampp'; did you mean gradcam++?\n"
    )


def test_cuda_without_a_gpu_shows_our_warning_not_onnxruntimes_lines(default_export):
    """A child process, as a user's script: ONNX Runtime writes its ``[E:onnxruntime ...]
    Failed to load library`` to the C stderr, which only a child's stderr shows."""
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (onnxruntime-gpu shows the lines)")
    script = (
        "import sys, warnings\n"
        "from explain_export.artifact import runtime\n"
        "warnings.simplefilter('always')\n"
        "artifact = runtime.load(sys.argv[1], device='cuda')\n"
        "print(artifact.device)\n"
        "print('--- ours above; ONNX Runtime alone below', file=sys.stderr, flush=True)\n"
        "import onnxruntime as ort\n"
        "ort.InferenceSession(sys.argv[1], providers=['CUDAExecutionProvider'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONWARNINGS", None)
    path = str(default_export / "explainer.onnx")
    proc = subprocess.run(
        [sys.executable, "-c", script, path], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.strip() == "cuda":
        pytest.skip("a GPU works here: nothing falls back")
    ours, theirs = proc.stderr.split("--- ours above; ONNX Runtime alone below")
    assert "onnxruntime:" not in ours, ours
    assert f"DeviceFallbackWarning: {path}: cuda asked for, but " in ours
    # the library set ONNX Runtime's logger back: a session of the user's own still logs
    assert "onnxruntime:" in theirs


def test_run_takes_the_export_folder_as_the_model(default_export, tmp_path, capsys):
    """Issue 26, item 8: ``--model DIR``, the folder explain-export wrote: its explainer.onnx."""
    from explain_export.artifact import samples
    from explain_export.cli import run

    photo = samples.photo_path("chelsea.png")
    args = ["--model", str(default_export), "--images", photo, "--out", str(tmp_path / "o")]
    assert run.main(args) == 0
    err = capsys.readouterr().err
    assert f"model: {default_export / 'explainer.onnx'}\n" in err
    assert "backend: onnxruntime" in err
    assert (tmp_path / "o" / "chelsea.overlay.png").is_file()


def test_a_folder_opens_onnx_first_then_torchscript(default_export, tmp_path):
    import shutil

    from explain_export.artifact import runtime

    assert runtime.load(str(default_export)).path == str(default_export / "explainer.onnx")
    shutil.copy(default_export / "explainer.torchscript.pt", tmp_path)
    shutil.copy(default_export / "explainer.json", tmp_path)
    assert runtime.load(str(tmp_path)).path == str(tmp_path / "explainer.torchscript.pt")


def test_a_folder_without_an_artifact_is_one_line(tmp_path, capsys):
    from explain_export.artifact import samples
    from explain_export.cli import run, serve

    (tmp_path / "notes.txt").write_text("not a model\n")
    folder, photo = str(tmp_path), samples.photo_path("chelsea.png")
    assert run.main(["--model", folder, "--images", photo, "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (
        f"explain-run: error: --model '{folder}' is a folder with no explainer.onnx, "
        "explainer.torchscript.pt or explainer.pt2; export one with explain-export --out "
        f"{folder}, or give the model file\n"
    )
    assert serve.main(["--model", folder]) == 2
    assert capsys.readouterr().err == (
        f"explain-serve: error: --model '{folder}' is a folder with no explainer.onnx; this "
        "command runs ONNX explainers: export with explain-export --formats onnx, or give the "
        "model file\n"
    )


def test_serve_opens_the_export_folders_onnx(default_export):
    from explain_export.artifact.serve.model import open_model

    model = open_model(str(default_export))
    assert model.path == str(default_export / "explainer.onnx") and model.size == (224, 224)


TINY = ["--arch", "models:TinyResNet", "--input-size", "32", "32"]


@pytest.fixture
def no_load(monkeypatch):
    """ModelSource.load refused: a check that passes it would fail the test."""
    from explain_export.builder.model.source import ModelSource

    def load(*_args):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(ModelSource, "load", load)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (
            ["--top-k", "3", "--class-input"],
            "--class-input picks one class per image; a top-3 export explains the 3 best, so "
            "drop --top-k or --class-input",
        ),
        (["--top-k", "2", "--class-index", "1"], "--top-k explains the best classes; drop "),
        (["--top-k", "0"], "--top-k must be at least 1, got 0"),
        (["--top-k", "2", "--overlay-output"], "--top-k gives several maps per image"),
        (["--method", "sum", "--class-input"], "--class-input needs a method that explains a "),
        (["--method", "eigencam", "--class-index", "3"], "--class-index needs a method that "),
        (["--method", "sum", "--top-k", "2"], "--top-k needs a method that explains a class"),
        (["--method", "gradcam", "--head", "fc"], "--head names cam's linear layer; gradcam "),
        (["--layer", "layer2", "--layer", "layer3", "--method", "cam"], "cam reads the one map"),
        (["--layer", "layer3", "--layer", "layer3"], "--layer lists a layer twice: layer3, "),
        (["--class-index", "-2"], "--class-index -2 is out of range: a class index is 0 or more"),
    ],
)
def test_flags_that_conflict_are_refused_before_the_model_loads(
    flags, said, no_load, tmp_path, capsys
):
    assert export.main([*TINY, *flags, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"explain-export: error: {said}") and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (
            ["--labels", "imagenet"],
            "the model has 10 classes (the default num_classes of models:TinyResNet) but "
            "--labels imagenet names 1000; pass a file with one label per class, in class "
            "order, or leave --labels out",
        ),
        (
            ["--arch-kwargs", '{"num_classes": 3}', "--labels", "LABELS"],
            "the model has 3 classes (num_classes in --arch-kwargs) but --labels 'LABELS' has 2 "
            "lines; pass a file with one label per class, in class order, or leave --labels out",
        ),
    ],
)
def test_a_label_count_the_flags_can_tell_is_refused_before_the_model_loads(
    flags, said, no_load, tmp_path, capsys
):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    flags = [str(labels) if f == "LABELS" else f for f in flags]
    assert export.main([*TINY, *flags, "--out", str(tmp_path / "o")]) == 2
    assert (
        capsys.readouterr().err == f"explain-export: error: {said.replace('LABELS', str(labels))}\n"
    )


def test_the_embedded_models_label_count_is_known_before_it_loads(no_load, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    assert export.main(["--labels", str(labels), "--out", str(tmp_path / "o")]) == 2
    assert (
        "the model has 1000 classes (the embedded EfficientNet-Lite0's ImageNet-1k classes) "
        in (capsys.readouterr().err)
    )


def test_a_label_count_known_only_from_the_model_says_how_to_fix_it(tmp_path, capsys):
    """A trusted checkpoint holds its own model: its class count is known once it is built, and
    the line then says how to fix it, before any export."""
    import torch

    from models import tiny_resnet

    torch.save(tiny_resnet(), tmp_path / "whole.pt")
    args = ["--ckpt", str(tmp_path / "whole.pt"), "--trust-checkpoint", "--input-size", "32", "32"]
    assert export.main([*args, "--labels", "imagenet", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "explain-export: error: the model has 10 classes but --labels imagenet names 1000; pass "
        "a file with one label per class, in class order, or leave --labels out"
    )
    assert not (tmp_path / "o").exists()


class _Stop(Exception):
    """Raised in place of the export: the printout before it is what is tested."""


@pytest.mark.parametrize(
    ("flags", "which"),
    [
        ([], "the class that covers most pixels, class 0 left out"),
        (["--class-index", "1"], "the pixels of class 1"),
        (["--background", "none"], "the class that covers most pixels"),
    ],
)
def test_a_segmentation_exports_printout_says_it_is_one(flags, which, monkeypatch, capsys):
    from explain_export.builder.export import export as builder_export

    def stop(*_args, **_kwargs):
        raise _Stop

    monkeypatch.setattr(builder_export, "export_explainer", stop)
    args = ["--arch", "models:tiny_seg", "--arch-kwargs", '{"seed": 6}', "--input-size", "64", "64"]
    assert export.main([*args, *flags]) == 1
    out = capsys.readouterr().out.splitlines()
    assert (
        "task:   segmentation, per-pixel scores 5x64x64: the heatmap explains a class over the "
        f"pixels predicted as it: {which}"
    ) in out


def test_a_checkpoints_last_layer_tells_the_class_count_before_the_model_is_built(
    no_load, tmp_path, capsys
):
    """``tiny_resnet`` declares no num_classes (it takes **kwargs): the state dict's last
    layer, ``fc`` [10, 32], read without building the model, tells it."""
    import torch

    from explain_export.builder.model.source import ModelSource

    from models import tiny_resnet

    torch.save({"model_state_dict": tiny_resnet().state_dict()}, tmp_path / "m.pt")
    source = ModelSource(str(tmp_path / "m.pt"), "models:tiny_resnet")
    assert source.known_classes() is None
    assert source.checkpoint_classes(1000) == (10, "fc")
    assert source.checkpoint_classes(8) is None  # a side of a conv: judged after building
    args = ["--ckpt", str(tmp_path / "m.pt"), "--arch", "models:tiny_resnet"]
    assert export.main([*args, "--labels", "imagenet", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (
        "explain-export: error: the model has 10 classes (the checkpoint's last layer 'fc') but "
        "--labels imagenet names 1000; pass a file with one label per class, in class order, "
        "or leave --labels out\n"
    )
