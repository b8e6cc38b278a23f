"""``explain-eval`` (issue 30, part 2): each file's scores against the protocol computed here
directly (the test's own step images, through the eager model, not the file), the outputs, and
bad input refused in one line with nothing written."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from explain_export.artifact import faithfulness as fa
from explain_export.artifact import runtime, samples
from explain_export.artifact.evaluate import evaluate_image
from explain_export.artifact.pipeline import OverlayOptions, read
from explain_export.cli.eval import main

from commands import photo_folder, ray_child
from eval_reference import reference_steps
from models import tiny_resnet

SIZE = (64, 64)
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")


def _export(folder, method: str, seed: int = 0, size: tuple[int, int] = SIZE) -> str:
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

    explainer = build_explainer(tiny_resnet(seed), method=method, input_size=size)
    labels = [f"class{i}" for i in range(10)]
    export_explainer(explainer, str(folder), ("onnx",), labels=labels)
    return str(folder / "explainer.onnx")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """``exports[method]``: the tiny model exported with ``method`` (ONNX), on first use."""
    root = tmp_path_factory.mktemp("eval_exports")

    class Exports(dict):
        def __missing__(self, method: str) -> str:
            self[method] = _export(root / method.replace("+", "p"), method)
            return self[method]

    return Exports()


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    return photo_folder(tmp_path_factory.mktemp("photos"), PHOTOS)


def _probs(model, meta: dict, images: np.ndarray, c: int) -> np.ndarray:
    """The eager model's softmax probability of ``c`` on each image (the file's normalization)."""
    mean = torch.tensor(meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"]).view(1, 3, 1, 1)
    x = (torch.from_numpy(np.ascontiguousarray(images)) - mean) / std
    with torch.no_grad():
        return torch.softmax(model(x).double(), 1)[:, c].numpy()


def test_each_score_follows_the_protocol(default_export, default_model):
    """The embedded model's export on chelsea: the AUCs and the masked-image scores computed
    here from the file's map, with the eager model and the test's own step images."""
    art = runtime.load(str(default_export / "explainer.onnx"), "cpu", 1)
    meta = art.metadata
    size = tuple(meta["input_size"])
    image = read(samples.photo_path("chelsea.png"), size, OverlayOptions()).input
    row = evaluate_image(art, image, 5, 4)
    logits, heat = art(image[None])
    c = int(np.argmax(logits[0]))
    m = heat[0, 0]
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    for kind, insertion in (("deletion", False), ("insertion", True)):
        steps = reference_steps(hwc, m, 5, insertion).transpose(0, 3, 1, 2)
        s = _probs(default_model.model, meta, steps, c)
        want = (s.sum() - (s[0] + s[-1]) / 2) / 5
        assert row[f"{kind}_auc"] == pytest.approx(want, abs=1e-4), kind
        np.testing.assert_allclose(row[f"{kind}_curve"], s, atol=1e-4)
    assert row["deletion_curve"][-1] < row["deletion_curve"][0]  # all pixels 0: the cat is gone
    score = _probs(default_model.model, meta, image[None], c)[0]
    masked = _probs(default_model.model, meta, (image * m[None])[None], c)[0]
    assert row["class"] == c and row["score"] == pytest.approx(score, abs=1e-4)
    assert row["masked_score"] == pytest.approx(masked, abs=1e-4)
    drop = max(0.0, score - masked) / score
    assert row["average_drop"] == pytest.approx(drop, abs=1e-3)
    assert row["increase_in_confidence"] == float(masked > score)
    assert row["complexity"] == pytest.approx(float(m.mean()), abs=1e-6)
    _, heat2 = art((image * m[None])[None].astype(np.float32))
    if "class_index" in art.input_names or int(np.argmax(_[0])) == c:
        coh = (np.corrcoef(m.ravel(), heat2[0, 0].ravel())[0, 1] + 1) / 2
        assert row["coherency"] == pytest.approx(coh, abs=1e-5)
        assert row["adcc"] == pytest.approx(float(fa.adcc(coh, m.mean(), drop)), abs=1e-3)
    else:  # no map of c on the masked image: no coherency, no ADCC
        assert np.isnan(row["coherency"]) and np.isnan(row["adcc"])


@pytest.mark.slow
def test_the_command_compares_methods(exports, photo_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["--model", exports["cam"], "--model", exports["gradcam++"], "--images", str(photo_dir)]
    assert main([*args, "--out", str(out), "--steps", "6", "--quiet"]) == 0
    with open(out / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["cam", "gradcam++"]
    assert all(int(r["images"]) == 3 for r in rows)
    for r in rows:
        for key in ("deletion_auc", "insertion_auc", "average_drop", "ms_per_image"):
            assert float(r[key]) >= 0 and np.isfinite(float(r[key]))
    import pyarrow.parquet as pq

    table = pq.read_table(out / "per_image.parquet").to_pylist()
    assert len(table) == 6 and all(len(t["deletion_curve"]) == 7 for t in table)
    assert (out / "curves.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "wrote" in printed
    # an earlier evaluation is kept unless --overwrite
    assert main([*args, "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case",
    [
        "no images",
        "bad steps",
        pytest.param("two models", marks=pytest.mark.slow),
        pytest.param("no class", marks=pytest.mark.slow),
        pytest.param("two sizes", marks=pytest.mark.slow),
    ],
)
def test_bad_input_is_refused_in_one_line(case, exports, photo_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    images = str(empty) if case == "no images" else str(photo_dir)
    models = [
        exports["cam"] if case not in ("no images", "bad steps") else str(empty / "notes.txt")
    ]
    if case == "two models":
        models.append(_export(tmp_path / "other", "cam", seed=3))
    if case == "no class":
        models.append(exports["eigencam"])
    if case == "two sizes":
        models.append(_export(tmp_path / "bigger", "cam", size=(96, 96)))
    args = [a for m in models for a in ("--model", m)]
    args += ["--images", images, "--out", str(tmp_path / "out")]
    if case == "bad steps":
        args += ["--steps", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("explain-eval: error:"), err
    words = {
        "no images": "no image files",
        "two models": "not exports of one model",
        "no class": "explains no class",
        "bad steps": "--steps",
        "two sizes": "different input sizes (64x64 and 96x96)",
    }
    assert words[case] in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_deletion_falls_below_insertion_for_the_embedded_cam(default_export, tmp_path):
    """A sanity check that the protocol runs the right way round: on scikit-image's 28 photos,
    deleting the pixels the embedded model's ``cam`` ranks first loses its class faster than
    revealing them gains it back."""
    import os

    import skimage

    photos = os.path.join(os.path.dirname(skimage.__file__), "data")
    out = tmp_path / "eval"
    args = ["--model", str(default_export / "explainer.onnx"), "--images", photos]
    assert main([*args, "--out", str(out), "--steps", "10", "--quiet"]) == 0
    with open(out / "eval.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["method"] == "cam" and int(row["images"]) == 28
    assert float(row["deletion_auc"]) < float(row["insertion_auc"])


@pytest.mark.slow
def test_the_ray_engine_gives_the_local_engines_scores(exports, photo_dir, tmp_path, capsys):
    """``--engine ray`` (in a child process: Ray never starts in pytest's) scores every image
    as the local engine does; only the timing differs."""
    import pyarrow.parquet as pq

    models = ["--model", exports["cam"], "--model", exports["gradcam++"]]
    args = [*models, "--images", str(photo_dir), "--steps", "4", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    ray_args = [*args, "--engine", "ray", "--workers", "2", "--out", str(tmp_path / "ray")]
    proc = ray_child("explain_export.cli.eval", *ray_args)
    assert proc.returncode == 0, proc.stderr
    local = pq.read_table(tmp_path / "local" / "per_image.parquet").to_pylist()
    ray = pq.read_table(tmp_path / "ray" / "per_image.parquet").to_pylist()
    assert len(local) == len(ray) == 6
    for a, b in zip(local, ray, strict=True):
        assert (a["model"], a["image"], a["class"]) == (b["model"], b["image"], b["class"])
        for key in ("deletion_auc", "insertion_auc", "average_drop", "masked_score"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
        assert a["deletion_curve"] == pytest.approx(b["deletion_curve"], abs=1e-6)


def test_ray_flags_need_the_ray_engine(tmp_path, capsys):
    model = tmp_path / "a.onnx"
    model.write_bytes(b"")
    assert (
        main(
            [
                "--model",
                str(model),
                "--images",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--workers",
                "2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--engine ray" in err[0]
    assert not (tmp_path / "o").exists()
