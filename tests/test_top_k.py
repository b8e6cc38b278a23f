"""Several classes in one call: ``--top-k K`` gives ``heatmap [N,K,H,W]`` and ``classes [N,K]``,
and map j equals the independent reference (tests/reference.py, autograd and a cloning hook)
for the j-th best class, on real photos, in every format; what cannot be combined with it is
one line of ours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from explain_export.artifact import runtime, samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.inspect.tap import TapSpec
from explain_export.builder.plan import GraphOptions
from explain_export.cli.export import main as export_main
from explain_export.errors import OptionError, UsageError

import reference
from models import head_kind, tiny_resnet

SIZE = (64, 64)
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
K = 3


def photos() -> np.ndarray:
    return np.stack([samples.load_rgb(samples.photo_path(n), SIZE) for n in PHOTOS])


def expected_maps(model, images: np.ndarray, layer: str, method: str) -> tuple[np.ndarray, ...]:
    """``(classes [N,K], maps [N,K,H,W])`` from the reference, one class at a time."""
    spec = TapSpec.parse(layer)
    x = reference.normalize(torch.from_numpy(images))
    with torch.no_grad():
        classes = model(x).topk(K, dim=1).indices
    module = model.get_submodule(spec.module)
    maps = [
        reference.family(model, x, module, method, spec.port, spec.call or 0, classes[:, j])
        for j in range(K)
    ]
    return classes.numpy(), np.concatenate(maps, axis=1)


CASES = [
    ("gap-linear", "cam", "avgpool:input", ("onnx",)),
    pytest.param("layernorm-head", "gradcam", "avgpool:input", ("onnx",), marks=pytest.mark.slow),
    pytest.param(
        "conv-after-pool",
        "gradcam++",
        "features",
        ("torchscript", "onnx", "pt2"),
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "gap-linear", "layercam", "layer2.bn2", ("torchscript", "pt2"), marks=pytest.mark.slow
    ),
]


@pytest.mark.parametrize("kind, method, layer, formats", CASES)
def test_map_j_is_the_reference_for_the_jth_best_class(tmp_path, kind, method, layer, formats):
    model = tiny_resnet(seed=3) if kind == "gap-linear" else head_kind(kind, seed=1)
    explainer = build_explainer(model, layer, method, SIZE, top_k=K)
    assert explainer.plan.top_k == K and explainer.plan.method == method
    result = export_explainer(explainer, str(tmp_path), formats)
    assert all(r.ok for r in result.parity)
    assert result.metadata["top_k"] == K
    assert [o["name"] for o in result.metadata["outputs"]] == ["logits", "heatmap", "classes"]
    images = photos()
    # "cam" at a GAP + Linear head equals Grad-CAM, which the reference computes
    same = "gradcam" if method == "cam" else method
    classes, expected = expected_maps(model, images, layer, same)
    with torch.no_grad():
        _, eager, eager_classes = explainer(torch.from_numpy(images))
    np.testing.assert_array_equal(eager_classes.numpy(), classes)
    np.testing.assert_allclose(eager.numpy(), expected, atol=1e-4)
    for fmt in formats:
        artifact = runtime.load(result.paths[fmt])
        for batch in (3, 1):
            out = artifact.outputs(images[:batch])
            assert out["heatmap"].shape == (batch, K, *SIZE)
            np.testing.assert_array_equal(out["classes"], classes[:batch])
            np.testing.assert_allclose(out["heatmap"], expected[:batch], atol=1e-4, err_msg=fmt)
    explainer.remove()


def test_top_1_is_the_plain_export_with_its_class_named(tmp_path):
    model = tiny_resnet(seed=3)
    images = photos()
    plain = build_explainer(model, "layer2", "gradcam", SIZE)
    with torch.no_grad():
        logits, heat = plain(torch.from_numpy(images))
    plain.remove()
    one = build_explainer(model, "layer2", "gradcam", SIZE, top_k=1)
    with torch.no_grad():
        _, heat1, classes = one(torch.from_numpy(images))
    np.testing.assert_allclose(heat1.numpy(), heat.numpy(), atol=1e-6)
    np.testing.assert_array_equal(classes.numpy()[:, 0], logits.argmax(1).numpy())
    one.remove()


@pytest.mark.parametrize(
    "kwargs, export, words",
    [
        ({"method": "eigencam", "top_k": 2}, {}, "top_k needs a method that explains a class"),
        ({"method": "sum", "top_k": 2}, {}, "sum has none"),
        ({"method": "cam", "top_k": 0}, {}, "must be at least 1, got 0"),  # before the probe
        ({"method": "cam", "top_k": 11}, {}, "got 11"),
        ({"method": "cam", "top_k": 2, "target": 1}, {}, "drop target or top_k"),
        (
            {"method": "cam", "top_k": 2, "graph": GraphOptions(overlay=True)},
            {},
            "drop overlay",
        ),
        ({"method": "cam", "top_k": 2}, {"class_input": True}, "a top-2 export explains"),
    ],
)
def test_what_top_k_cannot_take_is_refused_in_one_line(tmp_path, kwargs, export, words):
    with pytest.raises(OptionError) as info:
        explainer = build_explainer(tiny_resnet(), "avgpool:input", input_size=SIZE, **kwargs)
        export_explainer(explainer, str(tmp_path / "out"), ("onnx",), **export)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_the_command_exports_top_k_and_names_its_flags(capsys, tmp_path):
    torch.save({"model_state_dict": tiny_resnet().state_dict()}, tmp_path / "m.pt")
    base = ["--ckpt", str(tmp_path / "m.pt"), "--arch", "models:TinyResNet", "--layer", "layer2"]
    base += ["--input-size", "64", "64", "--formats", "onnx", "--top-k", "2"]
    assert export_main([*base, "--overlay-output", "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert "drop --overlay-output" in err and "--top-k" in err
    assert export_main([*base, "--out", str(tmp_path / "o")]) == 0
    assert "the top-2 classes, one map each" in capsys.readouterr().out
    meta = json.loads((tmp_path / "o" / "explainer.json").read_text())
    assert meta["top_k"] == 2 and meta["outputs"][2]["name"] == "classes"


@pytest.fixture(scope="module")
def top2(tmp_path_factory):
    """A top-2 cam export of the tiny ResNet: its folder."""
    out = tmp_path_factory.mktemp("top2")
    explainer = build_explainer(tiny_resnet(), None, "cam", SIZE, top_k=2)
    export_explainer(explainer, str(out), ("onnx",))
    explainer.remove()
    return out


def test_the_metadata_says_k_and_names_the_classes(top2):
    meta = json.loads((top2 / "explainer.json").read_text())
    heat, classes = meta["outputs"][1], meta["outputs"][2]
    assert heat["shape"] == ["N", 2, *SIZE] and classes["shape"] == ["N", 2]
    assert classes["dtype"] == "int64" and meta["top_k"] == 2


def test_the_runtime_refuses_a_class_for_a_top_k_file(top2):
    artifact = runtime.load(str(top2 / "explainer.onnx"))
    with pytest.raises(UsageError) as info:
        artifact.outputs(photos(), class_index=3)
    assert "top-2 classes" in str(info.value) and "--class-input" in str(info.value)
    assert artifact.outputs(photos(), class_index=-1)["heatmap"].shape == (3, 2, *SIZE)
