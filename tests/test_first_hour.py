"""What a new user sees (issue 20, items 1-6 and 14), run as a user runs it: each command in its
own process, so every line it prints is seen, ONNX Runtime's and OpenCV's from C++ included.

Each test checks the exact line the issue asked for, the exit code, and that nothing is left
where nothing should be.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from explain_export.artifact import runtime, samples
from explain_export.artifact.serve import app
from explain_export.cli import bench as bench_cli
from explain_export.cli import export as export_cli
from explain_export.cli import run as run_cli
from explain_export.cli import serve as serve_cli
from explain_export.errors import DeviceFallbackWarning

from commands import run_module

ROOT = Path(__file__).resolve().parents[1]
SAVE = "save the weights with torch.save(model.state_dict(), path) and pass that file"


_run = run_module  # python -m explain_export.cli.<command> args: as installed, run


def _lines(text: str) -> list[str]:
    return [line for line in text.replace("\r", "\n").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A small explainer, ONNX and TorchScript (pt2 loads through TorchScript's code), labelled."""
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

    from models import tiny_resnet

    out = tmp_path_factory.mktemp("tiny")
    explainer = build_explainer(tiny_resnet(), input_size=(64, 64))
    labels = [f"class{i}" for i in range(10)]
    export_explainer(explainer, str(out), ("onnx", "torchscript"), labels=labels)
    explainer.remove()
    return out


# ---- 1. a file that is not a checkpoint -------------------------------------------------------


def test_a_text_file_as_ckpt_says_what_it_is(tmp_path):
    notckpt = tmp_path / "notckpt.txt"
    notckpt.write_text("these are my notes, not a model\n")
    proc = _run(
        "explain_export.cli.export",
        *("--ckpt", str(notckpt), "--arch", "models:TinyResNet", "--out", str(tmp_path / "out")),
    )
    assert proc.returncode == 2
    assert _lines(proc.stderr) == [
        f"explain-export: error: checkpoint '{notckpt}' is not a PyTorch file: it is a text "
        f"file; {SAVE}"
    ]
    assert not (tmp_path / "out").exists()


def test_a_damaged_model_file_is_named_so_and_no_library_internals(tiny, tmp_path):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes((tiny / "explainer.onnx").read_bytes()[:2000])
    proc = _run("explain_export.cli.run", "--model", str(cut), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert _lines(proc.stderr) == [
        f"explain-run: error: --model '{cut}' is not a readable ONNX file (damaged, cut short, "
        "or another kind of file); export it again"
    ]
    renamed = tmp_path / "explainer.pt2"
    shutil.copy(tiny / "explainer.torchscript.pt", renamed)
    proc = _run("explain_export.cli.run", "--model", str(renamed), "--out", str(tmp_path / "o"))
    assert _lines(proc.stderr) == [
        f"explain-run: error: --model '{renamed}' is a TorchScript file; name it .torchscript.pt"
    ]
    assert not (tmp_path / "o").exists()


# ---- 2. a mistyped --images path --------------------------------------------------------------


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_mistyped_images_path_is_a_usage_error_and_writes_nothing(tiny, tmp_path, engine):
    out = tmp_path / "out"
    missing = tmp_path / "noimgs"
    model = str(tiny / "explainer.onnx")
    args = ("--model", model, "--images", str(missing), "--out", str(out), "--engine", engine)
    proc = _run("explain_export.cli.run", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert _lines(proc.stderr) == [
        f"explain-run: error: --images '{missing}' does not exist; check the path"
    ]
    assert not out.exists()
    pattern = str(tmp_path / "*.jpg")  # quoted, as a shell leaves a pattern that matches nothing
    proc = _run("explain_export.cli.run", *args[:3], pattern, *args[4:])
    assert proc.returncode == 2 and not out.exists()
    assert _lines(proc.stderr) == [
        f"explain-run: error: --images '{pattern}' matches no file; check the path"
    ]


# ---- 3. a valid TIFF of float samples ---------------------------------------------------------


def test_a_float_tiff_from_scikit_image_is_read(tiny, tmp_path):
    """``multipage_rgb.tif``: two pages of float64 RGB in [0, 1], which OpenCV cannot decode.
    Its first page is read as round(255 x); a float TIFF outside [0, 1] is refused with why."""
    tifffile = pytest.importorskip("tifffile")
    tif = samples.photo_path("multipage_rgb.tif")
    out = tmp_path / "out"
    wide = tmp_path / "wide.tif"
    tifffile.imwrite(wide, np.linspace(0, 300, 64, dtype=np.float32).reshape(8, 8))
    proc = _run(
        "explain_export.cli.run",
        *("--model", str(tiny / "explainer.onnx"), "--images", tif, str(wide), "--out", str(out)),
    )
    assert proc.returncode == 1  # the wide one failed, alone
    assert _lines(proc.stdout)[0] == f"1 of 2 images done, 1 failed; outputs in {out}{os.sep}"
    skipped = [line for line in _lines(proc.stderr) if "skipped" in line]
    assert skipped == [
        f"explain-run: skipped {wide}: a TIFF of float32 samples from 0 to 300, outside [0, 1], "
        "which has no defined 8-bit scale; convert it to 8-bit (or floats in [0, 1])"
    ]
    assert not [line for line in _lines(proc.stderr) if "WARN" in line or "ERROR" in line]
    import cv2

    from explain_export.artifact import images

    assert cv2.imread(str(out / "multipage_rgb.overlay.png")).shape == (10, 10, 3)
    first = tifffile.imread(tif)[0]  # [3, 10, 10], RGB
    want = np.round(first * 255).astype(np.uint8).transpose(1, 2, 0)[..., ::-1]
    np.testing.assert_array_equal(images.read_bgr(tif), want)


def test_a_signed_16_bit_tiff_is_read_at_its_scale_not_darker():
    """int16 samples in [0, 32767] are 255 x / 32767, as uint16 are 255 x / 65535 (OpenCV read
    them as unsigned and gave half the brightness); negative samples are refused with why."""
    tifffile = pytest.importorskip("tifffile")
    import cv2

    from explain_export.artifact import images

    rgb = cv2.imread(samples.photo_path("chelsea.png"))[..., ::-1].astype(np.int64)
    signed = rgb * 128  # 0..32640
    buf = io.BytesIO()
    tifffile.imwrite(buf, signed.astype(np.int16), photometric="rgb")
    got = images.decode_bgr(buf.getvalue())
    want = np.round(signed * (255 / 32767)).astype(np.uint8)[..., ::-1]
    np.testing.assert_array_equal(got, want)
    assert abs(float(got.mean()) - float(rgb.mean())) < 1  # the photo's own brightness

    buf = io.BytesIO()
    tifffile.imwrite(buf, (rgb - 5).astype(np.int16), photometric="rgb")
    with pytest.raises(images.ImageError) as err:
        images.decode_bgr(buf.getvalue())
    assert str(err.value) == (
        f"a TIFF of int16 samples from -5 to {rgb.max() - 5}, below 0, which has no defined "
        "8-bit scale; convert it to 8-bit (or non-negative integers)"
    )


# ---- 4. and 5. --device cuda where CUDA does not work -----------------------------------------


def _ort_cuda_works(path: str) -> bool:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    options = ort.SessionOptions()
    options.log_severity_level = 4
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ort.InferenceSession(path, options, providers=providers).get_providers()[0] == (
        "CUDAExecutionProvider"
    )


def test_device_cuda_without_cuda_prints_our_line_alone(tiny, tmp_path):
    """ONNX Runtime's own red lines (``[E:onnxruntime:...] Failed to load library
    libonnxruntime_providers_cuda.so``) come only with --debug; ours says what runs and why."""
    model = str(tiny / "explainer.onnx")
    if _ort_cuda_works(model):
        pytest.skip("ONNX Runtime's CUDA provider works here: nothing falls back")
    photo = samples.photo_path("chelsea.png")
    args = ("--model", model, "--images", photo, "--device", "cuda", "--threads", "1")
    proc = _run("explain_export.cli.run", *args, "--out", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "backend: onnxruntime CPUExecutionProvider (cuda asked for, but "
    ) and lines[0].endswith("; running on the CPU); threads: 1")
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():  # onnxruntime-gpu, no CUDA
        assert "ONNX Runtime's CUDA provider did not start: " in lines[0]
        debug = _run("explain_export.cli.run", *args, "--out", str(tmp_path / "b"), "--debug")
        assert re.search(r"\[[EW]:onnxruntime", debug.stderr)  # theirs, with --debug
    else:
        assert "this onnxruntime has no CUDA provider (install onnxruntime-gpu)" in lines[0]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript.pt"])
def test_loading_on_cuda_without_cuda_warns_and_tells_the_truth(tiny, fmt):
    path = str(tiny / f"explainer.{fmt}")
    if fmt == "onnx" and _ort_cuda_works(path):
        pytest.skip("ONNX Runtime's CUDA provider works here")
    if fmt != "onnx":
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is here")
    with pytest.warns(DeviceFallbackWarning, match=r"cuda asked for, but .*; running on the CPU"):
        artifact = runtime.load(path, device="cuda")
    assert artifact.device == "cpu" and "CUDA" not in artifact.backend.upper()
    assert artifact.note.startswith("cuda asked for, but ")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeviceFallbackWarning)
        plain = runtime.load(path)  # the CPU, as asked: no warning, no note
    assert plain.device == "cpu" and plain.note is None


# ---- 6. a form upload -------------------------------------------------------------------------


def _form(files: dict[str, bytes], boundary: str = "------------------------a1b2c3") -> bytes:
    """A multipart/form-data body as ``curl -F name=@file`` sends it."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"'
        f"\r\nContent-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files.items()
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def test_a_form_upload_is_answered_as_the_bytes_are(tiny):
    model = app.open_model(str(tiny / "explainer.onnx"))
    photo = Path(samples.photo_path("chelsea.png")).read_bytes()

    async def infer(item):
        return (await handler.run_batch([item]))[0]

    handler = app.Handler(model, app.ServeOptions(), infer)

    async def chunks(body: bytes):
        yield body

    def post(body: bytes, content_type: str | None):
        reply = handler.handle("POST", "/explain", {}, str(len(body)), chunks(body), content_type)
        return asyncio.run(reply)

    plain = post(photo, "application/x-www-form-urlencoded")  # curl --data-binary's header
    multipart = "multipart/form-data; boundary=------------------------a1b2c3"
    form = post(_form({"file": photo}), multipart)
    assert plain.status == form.status == 200
    assert form.body == plain.body
    two = post(_form({"a": photo, "b": photo}), multipart)
    assert two.status == 400 and two.body["error"] == (
        "a form with 2 file fields; send the image as the body (curl --data-binary @cat.png) or "
        "as one file field (curl -F file=@cat.png), one image per request"
    )
    junk = post(b"cat.png", None)  # curl -d cat.png: the name, not the file
    assert junk.status == 400 and junk.body["error"].endswith(
        "; send the image as the body (curl --data-binary @cat.png) or as one file field "
        "(curl -F file=@cat.png)"
    )


# ---- 14. help and words ----------------------------------------------------------------------


def test_every_option_that_takes_a_value_states_its_default():
    import argparse

    flags = (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction)
    for command in (export_cli, run_cli, serve_cli, bench_cli):
        for action in command.build_parser()._actions:
            if action.option_strings and not isinstance(action, flags):
                assert "default" in (action.help or "").lower(), (command.PROG, action.dest)
    run_help = " ".join(_run("explain_export.cli.run", "--help").stdout.split())
    bench_help = " ".join(_run("explain_export.cli.bench", "--help").stdout.split())
    assert "drawn at the original size either way (default: stretch)" in run_help
    assert "--layer NAME the map to explain, NAME[:input][@CALL] (default: as explain-export" in (
        bench_help
    )


def test_a_type_name_gets_its_article_and_a_count_its_plural(tmp_path):
    from collections import OrderedDict

    from explain_export.artifact.runner import RunOptions, prepare_out_dir
    from explain_export.builder.model.outputs import describe
    from explain_export.errors import OptionError

    assert describe(OrderedDict(a=1)) == "an OrderedDict with keys a"
    assert describe(7) == "an int" and describe("x") == "a str"
    (tmp_path / "a.overlay.png").write_bytes(b"x")
    opts = RunOptions(out_dir=str(tmp_path))
    with pytest.raises(OptionError, match=r"a\.overlay\.png' already exists; pass overwrite"):
        prepare_out_dir(["a", "b"], opts)
    (tmp_path / "b.overlay.png").write_bytes(b"x")
    with pytest.raises(OptionError, match=r"a\.overlay\.png' and 1 more already exist; pass"):
        prepare_out_dir(["a", "b"], opts)


def test_the_package_description_names_what_it_explains():
    found = re.search(r'^description = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    text = found.group(1) if found else ""
    assert "(CAM / feature-map sum)" not in text
    for words in ("Grad-CAM", "EigenCAM", "segmentation", "vision transformers", "torch.export"):
        assert words in text
