"""Issue 26, item 8: the smaller things a first hour meets. A misspelt method gets the one
meant; ``load(..., device="cuda")`` without a GPU says so in our one warning, not ONNX
Runtime's lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from explain_export.builder import methods
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
