"""explain-run end to end: outputs at the original resolution, bad files, exit codes, no torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from explain_export.artifact import images, overlay, runner, runtime, samples
from explain_export.cli.run import main
from explain_export.errors import UsageError

from commands import photo_folder

TESTS = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A small explainer (TinyResNet, 64x64) in both formats, with labels."""
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

    from models import tiny_resnet

    out = tmp_path_factory.mktemp("tiny")
    explainer = build_explainer(tiny_resnet(), input_size=(64, 64))
    export_explainer(explainer, str(out), labels=[f"class{i}" for i in range(10)])
    return out


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """Two real photos of different sizes and aspect ratios."""
    return photo_folder(tmp_path_factory.mktemp("photos"), ("chelsea.png", "rocket.jpg"))


def _run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_overlays_are_at_the_original_resolution_and_match_the_formula(
    tiny_export, photo_dir, tmp_path, capsys
):
    out = tmp_path / "o"
    code, stdout, _ = _run(
        [
            "--model",
            str(tiny_export / "explainer.onnx"),
            "--images",
            str(photo_dir),
            "--out",
            str(out),
            "--save-heatmaps",
            "--sheet",
            "--topk",
            "3",
        ],
        capsys,
    )
    assert code == 0 and "2 of 2 images done, 0 failed" in stdout
    for name in ("chelsea.png", "rocket.jpg"):
        stem = os.path.splitext(name)[0]
        original = cv2.imread(str(photo_dir / name))
        result = cv2.imread(str(out / f"{stem}.overlay.png"))
        heat = np.load(out / f"{stem}.heatmap.npy")
        assert result.shape == original.shape and heat.shape == original.shape[:2]
        assert (
            cv2.imread(str(out / f"{stem}.heatmap.png"), cv2.IMREAD_UNCHANGED).shape == heat.shape
        )
        np.testing.assert_array_equal(result, overlay.blend(original, overlay.colorize(heat), 0.4))
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(len(x["topk"]) == 3 for x in lines)
    assert lines[0]["topk"][0]["label"].startswith("class")
    assert abs(sum(t["score"] for t in lines[0]["topk"])) <= 1.0001
    assert (out / "sheet.png").exists()


def test_heatmap_maps_back_from_the_graph_output(tiny_export, photo_dir):
    """The saved heatmap is the graph's heatmap resized (stretch) or cropped + resized (pad)."""
    art = runtime.load(str(tiny_export / "explainer.onnx"))
    bgr = images.read_bgr(str(photo_dir / "rocket.jpg"))  # 427 x 640
    for mode in ("stretch", "pad"):
        x, geometry = images.to_input(bgr, (64, 64), mode)
        _, hm = art(x[None])
        back = images.map_back(hm[0, 0], geometry)
        top, left, ch, cw = geometry.content
        if mode == "pad":
            assert (top, left, ch, cw) == (10, 0, 43, 64) and x[:, :top].max() == 0
        ref = cv2.resize(
            hm[0, 0, top : top + ch, left : left + cw], (640, 427), interpolation=cv2.INTER_LINEAR
        )
        assert back.shape == (427, 640)
        np.testing.assert_allclose(back, ref, atol=1e-6)


def test_seed_blend_end_to_end(tiny_export, photo_dir, tmp_path, capsys):
    out = tmp_path / "o"
    args = [
        "--model",
        str(tiny_export / "explainer.onnx"),
        "--images",
        str(photo_dir / "chelsea.png"),
        "--out",
        str(out),
        "--save-heatmaps",
        "--seed-blend",
    ]
    assert _run(args, capsys)[0] == 0
    original = cv2.imread(str(photo_dir / "chelsea.png"))
    heat = np.load(out / "chelsea.heatmap.npy")
    expected = overlay.seed_blend(original, overlay.colorize(heat), 0.4)
    np.testing.assert_array_equal(cv2.imread(str(out / "chelsea.overlay.png")), expected)


def test_torchscript_model_works_too(tiny_export, photo_dir, tmp_path, capsys):
    code, _, err = _run(
        [
            "--model",
            str(tiny_export / "explainer.torchscript.pt"),
            "--images",
            str(photo_dir),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 0 and "backend: torchscript cpu" in err


@pytest.fixture
def messy_dir(tmp_path, photo_dir):
    """Good photos in odd formats, broken files, and a text file."""
    d = tmp_path / "messy"
    d.mkdir()
    shutil.copy(photo_dir / "chelsea.png", d / "good.png")
    rgb = cv2.imread(str(photo_dir / "chelsea.png"))
    cv2.imwrite(str(d / "gray.png"), cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(d / "rgba.png"), cv2.cvtColor(rgb, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(d / "deep16.png"), rgb.astype(np.uint16) * 257)
    Image.open(d / "good.png").convert("P", palette=Image.ADAPTIVE).save(d / "palette.png")
    (d / "empty.png").write_bytes(b"")
    (d / "corrupt.jpg").write_bytes(os.urandom(2000))
    data = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 3])
    (d / "notes.txt").write_text("not an image")
    return d


def test_broken_files_are_skipped_and_the_rest_processed(tiny_export, messy_dir, tmp_path, capsys):
    out = tmp_path / "o"
    code, stdout, err = _run(
        [
            "--model",
            str(tiny_export / "explainer.onnx"),
            "--images",
            str(messy_dir),
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 1
    assert "5 of 8 images done, 3 failed" in stdout
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == 3
    assert any("empty.png: empty file" in line for line in skipped)
    assert any("corrupt.jpg: not a readable image" in line for line in skipped)
    assert any("truncated.png: not a readable image" in line for line in skipped)
    assert "ignoring 1 non-image file" in err
    for stem in ("good", "gray", "rgba", "deep16", "palette"):
        assert cv2.imread(str(out / f"{stem}.overlay.png")).shape == (300, 451, 3)
    errors = [
        json.loads(x)
        for x in (out / "predictions.jsonl").read_text().splitlines()
        if '"error"' in x
    ]
    assert len(errors) == 3


def test_named_non_image_and_unreadable_files_fail_alone(
    tiny_export, photo_dir, messy_dir, tmp_path, capsys
):
    (tmp_path / "vanished.png").symlink_to(tmp_path / "deleted.png")  # listed, then gone
    code, _, err = _run(
        [
            "--model",
            str(tiny_export / "explainer.onnx"),
            "--out",
            str(tmp_path / "o"),
            "--images",
            str(messy_dir / "notes.txt"),
            str(tmp_path / "vanished.png"),
            str(photo_dir / "chelsea.png"),
        ],
        capsys,
    )
    assert code == 1
    assert "notes.txt: not a readable image" in err and "vanished.png: cannot read" in err
    assert (tmp_path / "o" / "chelsea.overlay.png").exists()


def test_images_patterns_are_expanded_and_missing_paths_refused(photo_dir, tmp_path):
    """A quoted pattern is expanded here (``**``: subfolders too); a path that does not exist
    is a usage error that names it, raised before anything is read or written."""
    (photo_dir / "sub").mkdir(exist_ok=True)
    shutil.copy(photo_dir / "chelsea.png", photo_dir / "sub" / "again.png")
    found, skipped, names = runner.collect([str(photo_dir / "**" / "*.png")])
    assert found == sorted([str(photo_dir / "chelsea.png"), str(photo_dir / "sub" / "again.png")])
    assert (skipped, names) == (0, ["chelsea", "again"])
    with pytest.raises(UsageError, match=r"images '.*nope' does not exist; check the path"):
        runner.collect([str(photo_dir), str(tmp_path / "nope")])
    with pytest.raises(UsageError, match=r"'a', 'b', 'c' and 1 more do not exist"):
        runner.collect(["a", "b", "c", "d"])


def test_images_over_the_pixel_limit_are_refused(tiny_export, photo_dir, tmp_path, capsys):
    huge = tmp_path / "huge.png"
    # a PNG header that claims 30000 x 30000: refused from the header, never decoded
    ihdr = (
        b"\x89PNG\r\n\x1a\n"
        + b"\x00\x00\x00\rIHDR"
        + (30000).to_bytes(4, "big") * 2
        + b"\x08\x02\x00\x00\x00"
    )
    huge.write_bytes(ihdr + b"\x00" * 64)
    code, _, err = _run(
        [
            "--model",
            str(tiny_export / "explainer.onnx"),
            "--out",
            str(tmp_path / "o"),
            "--images",
            str(huge),
            str(photo_dir / "chelsea.png"),
            "--max-pixels",
            "200000",
        ],
        capsys,
    )
    assert code == 1
    assert "huge.png: 30000x30000 is 900,000,000 pixels, over the limit of 200,000" in err
    code, _, err = _run(
        [
            "--model",
            str(tiny_export / "explainer.onnx"),
            "--out",
            str(tmp_path / "o2"),
            "--images",
            str(photo_dir / "chelsea.png"),
            "--max-pixels",
            "1000",
        ],
        capsys,
    )
    assert code == 1 and "451x300 is 135,300 pixels" in err


def test_existing_outputs_are_kept_unless_overwrite(tiny_export, photo_dir, tmp_path, capsys):
    out = tmp_path / "o"
    args = [
        "--model",
        str(tiny_export / "explainer.onnx"),
        "--images",
        str(photo_dir),
        "--out",
        str(out),
    ]
    assert _run(args, capsys)[0] == 0
    (out / "chelsea.overlay.png").write_bytes(b"mine")
    code, _, err = _run(args, capsys)
    assert code == 2 and "already exist" in err and "--overwrite" in err
    assert (out / "chelsea.overlay.png").read_bytes() == b"mine"
    assert _run([*args, "--overwrite"], capsys)[0] == 0
    assert cv2.imread(str(out / "chelsea.overlay.png")) is not None


def test_unwritable_output_is_an_error_before_any_work(tiny_export, photo_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        code, _, err = _run(
            [
                "--model",
                str(tiny_export / "explainer.onnx"),
                "--images",
                str(photo_dir),
                "--out",
                str(out),
            ],
            capsys,
        )
        assert code == 2 and "--out" in err


def test_onnx_path_does_not_import_torch(tiny_export, photo_dir, tmp_path):
    code = (
        "import sys\n"
        "from explain_export.cli.run import main\n"
        f"rc = main(['--model', {str(tiny_export / 'explainer.onnx')!r},"
        f" '--images', {str(photo_dir)!r}, '--out', {str(tmp_path / 'o')!r}, '--quiet'])\n"
        "assert rc == 0, rc\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.slow
def test_demo_exports_the_default_model_and_writes_the_sheet(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = _run([], capsys)
    assert code == 0
    assert "demo: exporting the default model" in err
    assert (tmp_path / "explainer" / "explainer.onnx").exists()
    assert (tmp_path / "overlays" / "sheet.png").exists()
    first = json.loads((tmp_path / "overlays" / "predictions.jsonl").read_text().splitlines()[0])
    assert first["file"].endswith("chelsea.png") and 281 <= first["topk"][0]["class"] <= 285
    assert "4 of 4 images done" in stdout
    assert _run([], capsys)[0] == 0  # a second demo replaces its own outputs
    assert _run(["--overwrite"], capsys)[0] == 0  # and reuses the exported model


def test_a_corrupt_png_is_one_line_of_ours_and_no_opencv_warning(tiny_export, messy_dir, tmp_path):
    """OpenCV logs ``[ WARN:0@…] global grfmt_png.cpp …`` for a truncated PNG from C++, past
    Python's stderr: the command silences its decoder warnings, and reports the file itself."""
    code = "from explain_export.cli.run import main; raise SystemExit(main())"
    args = ["--model", str(tiny_export / "explainer.onnx"), "--images", str(messy_dir)]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "--out", str(tmp_path / "o"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr  # some files failed, the rest were done
    assert "truncated.png" in proc.stderr and "not a readable image" in proc.stderr
    assert "WARN" not in proc.stderr and "grfmt" not in proc.stderr
    assert "libpng" not in proc.stderr  # libpng's own line for a PNG cut short


def test_folders_are_walked_and_outputs_keep_the_path_below_them(
    tiny_export, photo_dir, tmp_path, capsys
):
    """a/x.png and b/x.png are two images with two outputs, a/x.* and b/x.*; hidden entries and
    non-images are left out."""
    tree = tmp_path / "tree"
    for sub, photo in (("a", "chelsea.png"), ("b", "rocket.jpg"), ("b/deeper", "chelsea.png")):
        (tree / sub).mkdir(parents=True)
        shutil.copy(photo_dir / photo, tree / sub / ("x" + os.path.splitext(photo)[1]))
    shutil.copy(photo_dir / "chelsea.png", tree / "top.png")
    (tree / ".hidden").mkdir()
    shutil.copy(photo_dir / "chelsea.png", tree / ".hidden" / "no.png")
    (tree / "a" / "notes.txt").write_text("not an image")
    out = tmp_path / "o"
    args = [
        "--model",
        str(tiny_export / "explainer.onnx"),
        "--images",
        str(tree),
        "--out",
        str(out),
    ]
    code, stdout, _ = _run(args, capsys)
    assert code == 0 and "4 of 4 images done" in stdout
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.overlay.png"))
    assert written == [
        "a/x.overlay.png",
        "b/deeper/x.overlay.png",
        "b/x.overlay.png",
        "top.overlay.png",
    ]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {r["outputs"][0] for r in rows} == set(written)
    assert _run(args, capsys)[0] == 2  # a rerun would overwrite them: refused, as before


def test_image_threads_change_nothing_but_the_speed(tiny_export, messy_dir, tmp_path):
    """The per-image steps on a thread pool: the same files, byte for byte, as one thread."""
    from explain_export.artifact import runner

    artifact = runtime.load(str(tiny_export / "explainer.onnx"))
    paths, _, names = runner.collect([str(messy_dir)])
    written = {}
    for threads in (1, 3):
        out = tmp_path / f"t{threads}"
        opts = runner.RunOptions(out_dir=str(out), batch_size=3, save_heatmaps=True, sheet=True)
        report = runner.run(artifact, paths, opts, names=names, image_threads=threads)
        assert len(report.failed) == 3
        written[threads] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert written[1] == written[3] and len(written[1]) == 5 * 3 + 2


def test_the_summary_says_how_many_images_it_does_not_list(tiny_export, tmp_path):
    """13 images done: the summary lists 10 and says where the other 3 are (as printed)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    small = cv2.resize(cv2.imread(samples.photo_path("chelsea.png")), (48, 32))
    for i in range(13):
        cv2.imwrite(str(photos / f"cat{i:02d}.png"), small)
    out = tmp_path / "o"
    code = "from explain_export.cli.run import main; raise SystemExit(main())"
    args = ["--model", str(tiny_export / "explainer.onnx"), "--images", str(photos)]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("13 of 13 images done")
    listed = [line for line in lines if line.startswith("  cat")]
    assert [line.split(":")[0].strip() for line in listed] == [f"cat{i:02d}.png" for i in range(10)]
    assert f"  … and 3 more (see {out / 'predictions.jsonl'})" in lines
