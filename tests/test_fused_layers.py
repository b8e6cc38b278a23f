"""Several layers, fused (``--layer`` repeated): each layer's map is made, ReLU'd and min-maxed
at full size; the maps are averaged (or with ``--fuse product`` multiplied, pytorch-grad-cam's
RefineCAM) and min-maxed again. Checked against the reference fusion (tests/reference.py:
autograd and a cloning hook per layer), on real photos, in every format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from explain_export.artifact import samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.cli.export import main as export_main
from explain_export.errors import OptionError

import reference
from checks import eager_and_files_match
from models import head_kind, tiny_resnet

SIZE = (64, 64)
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
LAYERS = ["layer1", "layer2", "layer3"]


def photos() -> np.ndarray:
    return np.stack([samples.load_rgb(samples.photo_path(n), SIZE) for n in PHOTOS])


def check(model, layers, method, out, formats, top_k=None, fuse=None) -> None:
    explainer = build_explainer(model, layers, method, SIZE, top_k=top_k, fuse=fuse)
    assert [p.layer for p in explainer.plan.layers] == layers
    result = export_explainer(explainer, str(out), formats)
    assert all(r.ok for r in result.parity)
    assert result.metadata["layers"] == layers
    assert result.metadata["fuse"] == (fuse or "mean")
    images = photos()
    x = reference.normalize(torch.from_numpy(images))
    modules = [model.get_submodule(name) for name in layers]
    fused = reference.refined if fuse == "product" else reference.fused
    if top_k is None:
        expected = fused(model, x, modules, method)
    else:
        with torch.no_grad():
            classes = model(x).topk(top_k, dim=1).indices
        expected = np.concatenate(
            [fused(model, x, modules, method, classes[:, j]) for j in range(top_k)], 1
        )
    single = reference.family(model, x, modules[-1], method)
    assert np.abs(expected - single).max() > 0.05  # the fusion is not the last layer's map
    if fuse == "product":  # nor the mean
        assert np.abs(expected - reference.fused(model, x, modules, method)).max() > 0.05
    eager_and_files_match(explainer, images, expected, result.paths, formats)
    explainer.remove()


@pytest.mark.parametrize(
    "method, formats",
    [
        ("gradcam", ("onnx",)),
        pytest.param("layercam", ("torchscript", "onnx", "pt2"), marks=pytest.mark.slow),
        pytest.param("eigencam", ("torchscript", "onnx", "pt2"), marks=pytest.mark.slow),
    ],
)
def test_fused_layers_equal_the_reference_fusion(tmp_path, method, formats):
    check(tiny_resnet(seed=3), LAYERS, method, tmp_path, formats)


@pytest.mark.parametrize(
    "method, formats",
    [
        pytest.param("gradcam++", ("onnx",), marks=pytest.mark.slow),  # fast: mean fusion above
        pytest.param("gradcam", ("torchscript", "onnx", "pt2"), marks=pytest.mark.slow),
        pytest.param("eigencam", ("torchscript", "onnx", "pt2"), marks=pytest.mark.slow),
    ],
)
def test_product_fusion_equals_refinecam(tmp_path, method, formats):
    """``fuse="product"``: the layers' maps multiplied, then min-maxed (RefineCAM; its default
    base method is Grad-CAM++)."""
    check(tiny_resnet(seed=3), LAYERS, method, tmp_path, formats, fuse="product")


@pytest.mark.slow
def test_product_fusion_with_top_k(tmp_path):
    check(tiny_resnet(seed=3), LAYERS[1:], "gradcam", tmp_path, ("onnx",), top_k=2, fuse="product")


@pytest.mark.parametrize(
    "layers, fuse, words",
    [
        ("layer2", "product", "fuse fuses several maps; give layer twice or more, or drop fuse"),
        (["layer2"], "mean", "fuse fuses several maps"),
        (None, "product", "fuse fuses several maps"),
        (["layer2", "layer3"], "max", "fuse takes mean or product, not 'max'"),
    ],
)
def test_fuse_without_several_layers_is_refused_in_one_line(layers, fuse, words):
    with pytest.raises(OptionError) as info:
        build_explainer(tiny_resnet(), layers, "gradcam", SIZE, fuse=fuse)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_command_refuses_fuse_with_one_layer_before_loading(tmp_path, capsys):
    args = ["--ckpt", str(tmp_path / "missing.pt"), "--arch", "models:TinyResNet"]
    code = export_main([*args, "--layer", "layer2", "--fuse", "product", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.endswith("--fuse fuses several maps; give --layer twice or more, or drop --fuse")
    assert "\n" not in err


@pytest.mark.slow
def test_fused_layers_of_a_layernorm_head_in_every_format(tmp_path):
    model = head_kind("layernorm-head", seed=1)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][-2:]
    check(model, names, "gradcam++", tmp_path, ("torchscript", "onnx", "pt2"))


@pytest.mark.slow
def test_fused_layers_with_top_k(tmp_path):
    check(tiny_resnet(seed=3), LAYERS[1:], "gradcam", tmp_path, ("onnx",), top_k=2)


def test_auto_fuses_with_the_gradient_and_says_why():
    explainer = build_explainer(tiny_resnet(), LAYERS[:2], input_size=SIZE)
    plan = explainer.plan
    assert plan.method == "gradcam" and plan.requested == "auto" and "fused" in plan.reason
    explainer.remove()


@pytest.mark.parametrize(
    "layers, method, words",
    [
        (["layer2", "layer2"], "gradcam", "lists a layer twice"),
        (["layer2", "avgpool:input"], "cam", "to fuse several layers pick method gradcam"),
        (["layer2", "nope"], "gradcam", "nope"),
    ],
)
def test_what_cannot_be_fused_is_refused_in_one_line(layers, method, words):
    with pytest.raises(OptionError) as info:
        build_explainer(tiny_resnet(), layers, method, SIZE)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_the_command_fuses_repeated_layers(tmp_path, capsys):
    torch.save({"model_state_dict": tiny_resnet().state_dict()}, tmp_path / "m.pt")
    args = ["--ckpt", str(tmp_path / "m.pt"), "--arch", "models:TinyResNet"]
    args += ["--input-size", "64", "64", "--layer", "layer2", "--layer", "layer3"]
    code = export_main([*args, "--formats", "onnx", "--out", str(tmp_path / "o")])
    assert code == 0
    out = capsys.readouterr().out
    assert "layer:  layer2" in out and "layer:  layer3" in out and "fused" in out
    meta = json.loads((tmp_path / "o" / "explainer.json").read_text())
    assert meta["layers"] == ["layer2", "layer3"] and meta["method"] == "gradcam"
    assert meta["fuse"] == "mean"
    product = [*args, "--fuse", "product", "--formats", "onnx", "--out", str(tmp_path / "p")]
    assert export_main(product) == 0
    assert "multiplied (RefineCAM), then min-maxed again" in capsys.readouterr().out
    assert json.loads((tmp_path / "p" / "explainer.json").read_text())["fuse"] == "product"
