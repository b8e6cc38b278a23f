"""explain-run --engine ray: a local Ray instance on this machine, real photos mixed with broken
files; its outputs against the local engine's, resume after a stop, no torch anywhere, and the
usage errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from explain_export.artifact import runner, samples
from explain_export.cli.run import main

from commands import ray_child

pytestmark = pytest.mark.slow  # each test starts a local Ray instance, or runs beside them

pytest.importorskip("ray.data")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Five real photos in a folder tree (one name twice, in two subfolders), three broken
    files and a text file."""
    d = tmp_path_factory.mktemp("tree")
    (d / "a").mkdir()
    (d / "b" / "c").mkdir(parents=True)
    for sub, name in (
        ("", "chelsea.png"),
        ("a", "coffee.png"),
        ("a", "rocket.jpg"),
        ("b", "motorcycle_left.png"),
        ("b/c", "chelsea.png"),
    ):
        shutil.copy(samples.photo_path(name), d / sub / name)
    data = (d / "chelsea.png").read_bytes()
    (d / "a" / "truncated.png").write_bytes(data[: len(data) // 3])
    (d / "b" / "empty.jpg").write_bytes(b"")
    (d / "b" / "c" / "corrupt.png").write_bytes(os.urandom(3000))
    (d / "notes.txt").write_text("not an image")
    return d


def _run(args, capsys):
    """explain-run with ``args``: (exit code, stdout, stderr); a Ray run in a child process."""
    if "ray" not in args:
        code = main(args)
        out, err = capsys.readouterr()
        return code, out, err
    proc = ray_child("explain_export.cli.run", *args)
    return proc.returncode, proc.stdout, proc.stderr


def _rows(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def local_run(default_export, tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    args = ["--model", str(default_export / "explainer.onnx"), "--images", str(tree)]
    args += ["--out", str(out), "--save-heatmaps", "--sheet", "--quiet"]
    assert main([*args, "--batch-size", "4"]) == 1
    return out, args


def test_ray_engine_writes_what_the_local_engine_writes(local_run, tmp_path, capsys):
    local, args = local_run
    out = tmp_path / "ray"
    args = [*args[: args.index("--out")], "--out", str(out), "--save-heatmaps", "--sheet"]
    code, stdout, err = _run(
        [*args, "--engine", "ray", "--workers", "2", "--batch-size", "3"], capsys
    )
    assert code == 1, err
    assert "5 of 8 images done, 3 failed" in stdout
    skipped = [line.split(": ", 2)[1] for line in err.splitlines() if "skipped" in line]
    assert sorted(map(os.path.basename, skipped)) == ["corrupt.png", "empty.jpg", "truncated.png"]

    ours, theirs = _rows(out), _rows(local)
    assert [r["file"] for r in ours] == [r["file"] for r in theirs]  # input order, both
    for a, b in zip(ours, theirs, strict=True):
        assert ("error" in a) == ("error" in b)
        if "error" in a:
            continue
        assert a["outputs"] == b["outputs"]
        assert [t["class"] for t in a["topk"]] == [t["class"] for t in b["topk"]]
        assert [t["label"] for t in a["topk"]] == [t["label"] for t in b["topk"]]
        assert np.allclose(
            [t["score"] for t in a["topk"]], [t["score"] for t in b["topk"]], atol=1e-5
        )
        heat = a["outputs"][2]
        assert np.abs(np.load(out / heat) - np.load(local / heat)).max() <= 1 / 255
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.overlay.png"))
    assert written == [
        "a/coffee.overlay.png",
        "a/rocket.overlay.png",
        "b/c/chelsea.overlay.png",
        "b/motorcycle_left.overlay.png",
        "chelsea.overlay.png",
    ]
    cat = next(r for r in ours if r["file"].endswith(os.path.join("b", "c", "chelsea.png")))
    assert 281 <= cat["topk"][0]["class"] <= 285  # a cat, on the real model
    assert (out / "sheet.png").is_file() and not (out / runner.JOURNAL).exists()

    table = pq.read_table(out / "predictions.parquet").to_pylist()
    assert [t["file"] for t in table] == [r["file"] for r in ours]
    for t, r in zip(table, ours, strict=True):
        assert t["error"] == r.get("error") and t["outputs"] == r.get("outputs", [])
        assert t["topk"] == r.get("topk", [])
        assert t["class_index"] is None and t["explained"] == r.get("explained")
        if "topk" in r:  # one map, of the top-1
            assert [m["class"] for m in t["explained"]] == [r["topk"][0]["class"]]


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_resume_keeps_what_a_stopped_run_finished(local_run, tmp_path, capsys, engine):
    """A run stopped after some batches leaves their files and the journal; --resume keeps those
    images, explains the rest and ends with the same predictions as one whole run."""
    local, args = local_run
    out = tmp_path / "o"
    shutil.copytree(local, out)
    rows = _rows(local)
    good = [r for r in rows if "error" not in r]
    # stopped: no predictions.jsonl yet; the journal has all but the last good row, and its
    # last line was cut short; one journaled image lost its heatmap file since
    (out / "predictions.jsonl").unlink()
    (out / "sheet.png").unlink()
    lines = [json.dumps(r) for r in rows if r is not good[-1]]
    (out / runner.JOURNAL).write_text("\n".join(lines) + "\n" + lines[0][:25])
    (out / good[0]["outputs"][2]).unlink()
    args = [*args[: args.index("--out")], "--out", str(out), "--save-heatmaps", "--sheet"]
    code, stdout, _ = _run([*args, "--engine", engine, "--resume"], capsys)
    assert code == 1
    assert "5 of 8 images done (3 kept from an earlier run), 3 failed" in stdout
    assert [r["file"] for r in _rows(out)] == [r["file"] for r in rows]
    for a, b in zip(_rows(out), rows, strict=True):
        assert a.get("outputs") == b.get("outputs")
        assert [t["class"] for t in a.get("topk", [])] == [t["class"] for t in b.get("topk", [])]
    assert (out / good[0]["outputs"][2]).is_file() and not (out / runner.JOURNAL).exists()
    assert (out / "sheet.png").is_file()


def test_ray_engine_usage_errors_write_nothing(default_export, tree, tmp_path, capsys):
    out = tmp_path / "o"
    model = ["--model", str(default_export / "explainer.onnx"), "--images", str(tree)]
    cases = [
        ([*model, "--workers", "2"], "--workers and --address need --engine ray"),
        ([*model, "--resume", "--overwrite"], "pick one"),
        ([*model, "--engine", "ray", "--workers", "0"], "--workers must be at least 1"),
        (
            [
                "--model",
                str(default_export / "explainer.torchscript.pt"),
                "--images",
                str(tree),
                "--engine",
                "ray",
            ],
            "is not .onnx; the Ray engine runs ONNX explainers",
        ),
    ]
    for args, message in cases:
        code, _, err = _run([*args, "--out", str(out)], capsys)
        assert code == 2 and message in err and len(err.splitlines()) == 1, err
        assert not out.exists() or not any(out.iterdir())


def test_ray_engine_refuses_to_overwrite(local_run, capsys):
    _, args = local_run
    code, _, err = _run([*args[: args.index("--quiet")], "--engine", "ray"], capsys)
    assert code == 2 and "already exist" in err and "--resume" in err


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    """A small model exported top-2, and with a class input (ONNX, labelled): pixel-level
    methods, the gradient at the image (the default export on these engines is cam)."""
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

    from models import tiny_resnet

    paths = {}
    for kind, method, kwargs, export in (
        ("top", "saliency", {"top_k": 2}, {}),
        ("input", "fullgrad", {}, {"class_input": True}),
    ):
        out = tmp_path_factory.mktemp(kind)
        explainer = build_explainer(tiny_resnet(seed=3), None, method, (64, 64), **kwargs)
        labels = [f"class{i}" for i in range(10)]
        export_explainer(explainer, str(out), ("onnx",), labels=labels, **export)
        explainer.remove()
        paths[kind] = str(out / "explainer.onnx")
    return paths


def test_top_k_and_a_chosen_class_on_the_ray_engine(tiny_exports, tree, tmp_path, capsys):
    """A top-2 artifact: the local engine's files and rows (two maps per image, ``explained``),
    and ``predictions.parquet`` holds them; a class chosen with --class-index is its
    ``class_index`` column."""
    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        args = ["--model", tiny_exports["top"], "--images", str(tree), "--out", str(out)]
        code, _, err = _run([*args, "--save-heatmaps", "--engine", engine, "--quiet"], capsys)
        assert code == 1, err  # the three broken files
        runs[engine] = out
    ours, theirs = _rows(runs["ray"]), _rows(runs["local"])
    assert [r["file"] for r in ours] == [r["file"] for r in theirs]
    for a, b in zip(ours, theirs, strict=True):
        if "error" in b:
            continue
        assert a["outputs"] == b["outputs"] and len(a["outputs"]) == 6
        assert [(m["class"], m["label"], m["outputs"]) for m in a["explained"]] == [
            (m["class"], m["label"], m["outputs"]) for m in b["explained"]
        ]
        for heat in a["outputs"][2::3]:  # NAME.heatmap.npy, NAME.top2.heatmap.npy
            diff = np.load(runs["ray"] / heat) - np.load(runs["local"] / heat)
            assert np.abs(diff).max() <= 1 / 255
    table = pq.read_table(runs["ray"] / "predictions.parquet").to_pylist()
    for t, r in zip(table, ours, strict=True):
        assert t["explained"] == r.get("explained") and t["class_index"] is None

    out = tmp_path / "chosen"
    args = ["--model", tiny_exports["input"], "--images", str(tree), "--out", str(out)]
    assert _run([*args, "--engine", "ray", "--class-index", "7", "--quiet"], capsys)[0] == 1
    table = pq.read_table(out / "predictions.parquet").to_pylist()
    assert [t["class_index"] for t in table] == [
        None if "error" in r else 7 for r in _rows(out)
    ]  # as predictions.jsonl records it
    assert [t["explained"] and [m["class"] for m in t["explained"]] for t in table] == [
        None if "error" in r else [7] for r in _rows(out)
    ]  # one map, of the chosen class

    code, _, err = _run([*args[:-2], "--out", str(tmp_path / "no"), "--engine", "ray",
                         "--model", tiny_exports["top"], "--class-index", "7"], capsys)  # fmt: skip
    assert code == 2 and "--class-index 7 cannot apply" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def seg_export(tmp_path_factory):
    """A small segmentation model (TinySeg, class 4 left out), ONNX with a class input."""
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

    from models import tiny_seg

    out = tmp_path_factory.mktemp("seg")
    explainer = build_explainer(tiny_seg(seed=5), None, "gradcam", (64, 64), background=4)
    labels = ["sky", "road", "cat", "grass", "wall"]
    export_explainer(explainer, str(out), ("onnx",), labels=labels, class_input=True)
    explainer.remove()
    return str(out / "explainer.onnx")


def test_segmentation_regions_on_the_ray_engine(seg_export, tree, tmp_path, capsys):
    """A segmentation artifact: the local engine's rows (class, label, pixel_share, predicted,
    no top-k) and outlined overlays, and ``predictions.parquet`` holds the region's fields; a
    class that no pixel is (--class-index 0) is share 0 with its note."""
    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        args = ["--model", seg_export, "--images", str(tree), "--out", str(out)]
        code, stdout, err = _run([*args, "--save-heatmaps", "--engine", engine], capsys)
        assert code == 1, err  # the three broken files
        assert "  chelsea.png: road, " in stdout and "of the pixels" in stdout
        runs[engine] = out
    ours, theirs = _rows(runs["ray"]), _rows(runs["local"])
    assert ours == theirs
    for row in ours:
        if "error" in row:
            continue
        assert "topk" not in row and row["class"] == 1 and 0 < row["pixel_share"] < 1
        a, b = (cv2.imread(str(runs[e] / row["outputs"][0])).astype(int) for e in runs)
        assert np.abs(a - b).max() <= 3
    table = pq.read_table(runs["ray"] / "predictions.parquet").to_pylist()
    # the JSON lines' fields; a failed file's row has no outputs there, and [] here
    assert [{k: v for k, v in t.items() if v not in (None, [])} for t in table] == ours

    out = tmp_path / "none"
    args = ["--model", seg_export, "--images", str(tree), "--out", str(out), "--quiet"]
    assert _run([*args, "--engine", "ray", "--class-index", "0"], capsys)[0] == 1
    table = pq.read_table(out / "predictions.parquet").to_pylist()
    done = [t for t in table if t["error"] is None]
    assert len(done) == 5 and all(t["pixel_share"] == 0 and t["class_index"] == 0 for t in done)
    assert all(t["note"].startswith("no pixel of the image is predicted as sky") for t in done)


def test_mask_rcnn_masks_on_the_ray_engine(tree, tmp_path, capsys):
    """A Mask R-CNN artifact (issue 29; :mod:`detector_artifacts` with masks): the Ray engine's
    rows equal the local engine's, each detection with its ``mask`` (COCO RLE at the photo's
    size), and ``predictions.parquet`` holds the same masks."""
    import detector_artifacts as det

    from explain_export.artifact import rle

    model = det.export(str(tmp_path / "export"), "onnx", masks=True)
    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        args = ["--model", model, "--images", str(tree), "--out", str(out), "--quiet"]
        code, _, err = _run([*args, "--per-detection", "--engine", engine], capsys)
        assert code == 1, err  # the three broken files
        runs[engine] = out
    ours, theirs = _rows(runs["ray"]), _rows(runs["local"])
    assert ours == theirs
    done = [row for row in ours if "error" not in row]
    assert len(done) == 5
    for row in done:
        image = cv2.imread(row["file"])
        for d in row["detections"]:
            assert rle.decode(d["mask"]).shape == image.shape[:2] and rle.decode(d["mask"]).any()
    table = pq.read_table(runs["ray"] / "predictions.parquet").to_pylist()
    by_file = {t["file"]: t for t in table}
    for row in done:
        found = by_file[row["file"]]["detections"]
        assert [t["mask"] for t in found] == [d["mask"] for d in row["detections"]]


def test_pool_size_by_device():
    from explain_export.artifact.ray_run import RayOptions, _workers
    from explain_export.errors import OptionError

    assert _workers({"CPU": 8.0}, RayOptions()) == 8
    assert _workers({"CPU": 8.0}, RayOptions(threads=3)) == 2
    assert _workers({"CPU": 2.0}, RayOptions(workers=5)) == 5  # Ray Data runs what fits
    assert _workers({"CPU": 8.0, "GPU": 2.0}, RayOptions(device="cuda")) == 2
    with pytest.raises(OptionError, match="device cuda, but the Ray cluster has no GPU"):
        _workers({"CPU": 8.0}, RayOptions(device="cuda"))
    with pytest.raises(OptionError, match="workers 3 with device cuda takes 3 GPUs"):
        _workers({"CPU": 8.0, "GPU": 2.0}, RayOptions(workers=3, device="cuda"))


NO_TORCH = """
import sys


class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")


sys.meta_path.insert(0, _NoTorch())
"""


def test_no_process_of_a_ray_run_imports_torch(default_export, tree, tmp_path):
    """torch made unimportable for the command and, through the environment, for every Ray
    process it starts (a ``sitecustomize`` on PYTHONPATH): the run still explains every image."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_TORCH)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    args = ["--model", str(default_export / "explainer.onnx"), "--images", str(tree)]
    code = "import sys\nfrom explain_export.cli.run import main\nsys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "--out", str(tmp_path / "o"), "--engine", "ray"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr  # the three broken files
    assert "5 of 8 images done, 3 failed" in proc.stdout, proc.stderr
    check = subprocess.run(
        [sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env
    )
    assert check.returncode != 0 and "blocked" in check.stderr  # the block works


def test_a_worker_failure_is_named_by_its_own_exception():
    from explain_export.artifact.ray_run import _root_cause

    text = "ActorDiedError: died\n  File 'x.py', line 3\n    raise\nRuntimeError: disk gone\n"
    assert _root_cause(RuntimeError(text)) == "RuntimeError: disk gone"
    assert _root_cause(ValueError("")) == "ValueError"


def test_detections_on_the_ray_engine(tree, tmp_path, capsys):
    """A detection artifact (issue 27): the Ray engine's rows are the local engine's (boxes in
    the original pixels, --per-detection files), and ``predictions.parquet`` holds them."""
    import detector_artifacts as det

    model = det.export(str(tmp_path / "det"), "onnx")
    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        args = ["--model", model, "--images", str(tree), "--out", str(out), "--per-detection"]
        code, stdout, err = _run([*args, "--engine", engine], capsys)
        assert code == 1, err  # the three broken files
        assert "  chelsea.png: 2 detections: person (0.90), car (0.60)" in stdout
        runs[engine] = out
    ours, theirs = _rows(runs["ray"]), _rows(runs["local"])
    assert ours == theirs
    done = [row for row in ours if "error" not in row]
    assert len(done) == 5 and all(len(row["detections"]) == det.COUNT for row in done)
    for row in done:
        for name in row["outputs"]:
            a, b = (cv2.imread(str(runs[e] / name)).astype(int) for e in runs)
            assert np.abs(a - b).max() <= 3
    table = pq.read_table(runs["ray"] / "predictions.parquet").to_pylist()
    assert [{k: v for k, v in t.items() if v not in (None, [])} for t in table] == ours
