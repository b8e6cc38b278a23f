"""Grad-CAM for every kind of head, in eager and in every exported format, against an
independent autograd Grad-CAM (tests/reference.py) on real photos; defaults; taps that copy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from explain_export.artifact import runtime, samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.inspect.tap import TapSpec
from explain_export.cli.export import main
from explain_export.errors import UsageError

import reference
from models import HEAD_KINDS, TokenModel, head_kind, tiny_resnet

SIZE = (64, 64)
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
FORMATS = ("torchscript", "onnx", "pt2")

# What a default build chooses for each head kind: (method, layer).
DEFAULTS = {
    "layernorm-head": ("gradcam", "avgpool:input"),
    "conv-after-pool": ("gradcam", "global_pool:input"),
    "mlp-head": ("gradcam", "avgpool"),
    "conv-classifier": ("gradcam", "classifier.3:input"),
    "functional-relu-pool": ("gradcam", "features"),
    "inplace-after-tap": ("cam", "avgpool:input"),
}


def photos(size=SIZE) -> np.ndarray:
    return np.stack([samples.load_rgb(samples.photo_path(n), size) for n in PHOTOS])


def ref_gradcam(model, images: np.ndarray, layer: str, layout="NCHW", class_index=None):
    spec = TapSpec.parse(layer)
    module = model.get_submodule(spec.module)
    x = reference.normalize(torch.from_numpy(images))
    heat, _ = reference.gradcam(
        model, x, module, spec.port, spec.call or 0, class_index, layout=layout
    )
    return heat


# `make test` keeps one head kind (a norm head, which the exact CAM cannot take); the rest run
# with the slow tests.
FAST_KINDS = ("layernorm-head",)


@pytest.fixture(
    scope="module",
    params=[
        k if k in FAST_KINDS else pytest.param(k, marks=pytest.mark.slow)
        for k in sorted(HEAD_KINDS)
    ],
)
def default_export(request, tmp_path_factory):
    """Each head kind exported with the defaults, in all three formats."""
    model = head_kind(request.param)
    explainer = build_explainer(model, input_size=SIZE)
    info = explainer.plan
    out = tmp_path_factory.mktemp(request.param)
    result = export_explainer(explainer, str(out), FORMATS)
    return request.param, model, info, result, out


def test_default_layer_and_method_for_every_head_kind(default_export):
    kind, _, info, result, _ = default_export
    assert (info.method, info.layer) == DEFAULTS[kind]
    assert info.requested == "auto" and info.reason
    assert all(r.ok for r in result.parity)
    meta = result.metadata
    assert meta["method"] == info.method and meta["method_requested"] == "auto"
    assert meta["method_reason"] == info.reason


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("batch", [3, 1])
def test_default_export_equals_autograd_gradcam_on_photos(default_export, fmt, batch):
    _, model, info, result, _ = default_export
    artifact = runtime.load(result.paths[fmt])
    images = photos()[:batch]
    _, heat = artifact(images)
    ref = ref_gradcam(model, images, info.layer, info.layout)
    np.testing.assert_allclose(heat, ref, atol=1e-4)
    assert heat.max() == pytest.approx(1.0, abs=1e-6)  # a real map, not a flat one


def test_functional_relu_tap_is_copied_before_the_in_place_relu():
    model = head_kind("functional-relu-pool")
    explainer = build_explainer(model, input_size=SIZE)
    info = explainer.plan
    assert info.cloned  # F.relu(..., inplace=True) changes 'features' afterwards
    with torch.no_grad():
        _, heat = explainer(torch.from_numpy(photos()))
    np.testing.assert_allclose(heat.numpy(), ref_gradcam(model, photos(), "features"), atol=1e-4)


@pytest.mark.parametrize("method", [pytest.param("sum", marks=pytest.mark.slow), "gradcam"])
def test_tap_holds_the_value_before_a_later_in_place_op(tmp_path, method):
    """``layer1.bn2``'s output is changed by ``out += x`` and an in-place ReLU afterwards."""
    model = head_kind("inplace-after-tap")
    explainer = build_explainer(model, layer="layer1.bn2", method=method, input_size=SIZE)
    info = explainer.plan
    assert info.cloned
    x = torch.from_numpy(photos())
    if method == "sum":
        ref = reference.channel_sum(model, reference.normalize(x), model.layer1.bn2)
    else:
        ref = ref_gradcam(model, photos(), "layer1.bn2")
    with torch.no_grad():
        _, heat = explainer(x)
    np.testing.assert_allclose(heat.numpy(), ref, atol=1e-4)
    # The aliased value (the block's output) gives another map: the copy matters here.
    aliased = reference.channel_sum(model, reference.normalize(x), model.layer1)
    if method == "sum":
        assert reference.correlation(heat.numpy(), aliased) < 0.9
    result = export_explainer(explainer, str(tmp_path), FORMATS)
    assert all(r.ok for r in result.parity)
    for fmt in FORMATS:
        _, got = runtime.load(result.paths[fmt])(photos())
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_gradcam_equals_cam_where_cam_is_exact():
    model = tiny_resnet()
    cam = build_explainer(model, layer="avgpool:input", method="cam", input_size=SIZE)
    grad = build_explainer(model, layer="avgpool:input", method="gradcam", input_size=SIZE)
    x = torch.from_numpy(photos())
    with torch.no_grad():
        torch.testing.assert_close(grad(x)[1], cam(x)[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer", ["layer2", "layer3.conv1", "layer1"])
def test_gradcam_through_convolutions_after_the_tap(layer):
    """A tap in the middle: the gradient runs back through later blocks (convs, BN, ReLU)."""
    model = tiny_resnet()
    explainer = build_explainer(model, layer=layer, method="gradcam", input_size=SIZE)
    with torch.no_grad():
        _, heat = explainer(torch.from_numpy(photos()))
    np.testing.assert_allclose(heat.numpy(), ref_gradcam(model, photos(), layer), atol=1e-4)


@pytest.mark.slow
def test_gradcam_explains_a_chosen_class_per_image(tmp_path):
    model = head_kind("mlp-head")
    explainer = build_explainer(model, method="gradcam", input_size=SIZE)
    info = explainer.plan
    chosen = np.array([3, -1, 7], np.int64)
    result = export_explainer(explainer, str(tmp_path), ("onnx",), class_input=True)
    assert all(r.ok for r in result.parity)
    logits, heat = runtime.load(result.paths["onnx"])(photos(), chosen)
    target = torch.tensor([3, int(logits[1].argmax()), 7])
    ref = ref_gradcam(model, photos(), info.layer, class_index=target)
    np.testing.assert_allclose(heat, ref, atol=1e-4)


@pytest.mark.slow
def test_gradcam_with_a_dynamic_size_uint8_input_and_overlay(tmp_path):
    from explain_export.builder.plan import GraphOptions

    model = tiny_resnet()
    graph = GraphOptions(input_format="uint8-nhwc", overlay=True)
    explainer = build_explainer(
        model, layer="layer2", method="gradcam", input_size=SIZE, graph=graph
    )
    result = export_explainer(explainer, str(tmp_path), FORMATS, dynamic_size=True)
    assert all(r.ok for r in result.parity)
    assert {r.size for r in result.parity} >= {SIZE, (SIZE[0] + 32, SIZE[1] + 32)}


@pytest.mark.slow
def test_channels_last_map_is_permuted(tmp_path):
    """ConvNeXt's block LayerNorm gives [N,h,w,C]; the tap permutes it to [N,C,h,w]."""
    model = head_kind("layernorm-head")
    layer = "features.3.block.2"
    explainer = build_explainer(model, layer=layer, method="gradcam", input_size=SIZE)
    info = explainer.plan
    assert info.layout == "NHWC" and info.feature_shape == (48, 16, 16)
    ref = ref_gradcam(model, photos(), layer, layout="NHWC")
    with torch.no_grad():
        np.testing.assert_allclose(explainer(torch.from_numpy(photos()))[1].numpy(), ref, atol=1e-4)
    result = export_explainer(explainer, str(tmp_path), FORMATS)
    assert result.metadata["layout"] == "NHWC"
    for fmt in FORMATS:
        for batch in (3, 1):
            got = runtime.load(result.paths[fmt])(photos()[:batch])[1]
            np.testing.assert_allclose(got, ref[:batch], atol=1e-4)


def test_a_token_model_whose_patch_tokens_never_reach_the_logits_is_refused_as_flat():
    """TokenModel reads its class token, which no layer mixes with the patch tokens: every token
    layer's gradient is zero on the grid (tests/test_tokens.py explains ViTs that mix them), and
    the logits are the same for every image: the error says that (issue 26, 2d)."""
    with pytest.raises(UsageError, match=r"the logits do not depend on the image"):
        build_explainer(TokenModel().eval(), input_size=SIZE)
    with pytest.raises(UsageError, match=r"the logits do not depend on the image"):
        build_explainer(TokenModel().eval(), layer="encoder.0", input_size=SIZE)


def test_cli_default_on_a_head_without_linear_says_why_it_chose_gradcam(tmp_path, capsys):
    code = main(["--arch", "models:ConvClassifier", "--out", str(tmp_path), "--formats", "onnx"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "method: gradcam" in out and "auto: cam is not exact here" in out
    meta = json.loads((tmp_path / "explainer.json").read_text())
    assert meta["method"] == "gradcam" and meta["layer"] == "classifier.3:input"


def test_list_layers_marks_the_default_for_a_pool_input(capsys):
    assert main(["--arch", "models:LayerNormHead", "--list-layers"]) == 0
    out = capsys.readouterr().out
    default = [line for line in out.splitlines() if line.endswith("<- default")]
    assert len(default) == 1 and default[0].startswith("avgpool:input")
    assert "(NHWC)" in out  # the blocks' channels-last maps are listed as such


def test_a_layernorm_output_sums_to_noise_and_is_refused_as_no_signal():
    """A LayerNorm over channels (weight 1, bias 0, as at init) sums to ~0 over them: rounding
    noise, judged against the terms' magnitude, so flat; the error says no signal."""
    model = head_kind("layernorm-head")
    with pytest.raises(UsageError, match=r"'features.1' is flat on every probe.*no signal"):
        build_explainer(model, layer="features.1", method="sum", input_size=SIZE)
    explainer = build_explainer(model, layer="features.1", method="gradcam", input_size=SIZE)
    with torch.no_grad():
        assert explainer(torch.from_numpy(photos()))[1].amax() == 1  # gradcam has a signal there


@pytest.mark.parametrize("method", ["sum", "gradcam"])
def test_an_input_tap_of_an_in_place_module_is_copied(method):
    """``stem.2`` is ``ReLU(inplace=True)``: it changes its own input, which the tap copies."""
    model = head_kind("inplace-after-tap")
    layer = "stem.2:input"
    explainer = build_explainer(model, layer=layer, method=method, input_size=SIZE)
    info = explainer.plan
    assert info.cloned
    x = torch.from_numpy(photos())
    if method == "sum":
        ref = reference.channel_sum(model, reference.normalize(x), model.stem[2], port="input")
    else:
        ref = ref_gradcam(model, photos(), layer)
    with torch.no_grad():
        np.testing.assert_allclose(explainer(x)[1].numpy(), ref, atol=1e-4)


def test_heatmap_limit_stays_strict_for_a_smooth_head():
    """LayerNorm, Linear after the pool: no ReLU mask can flip, so the limit is 1e-4."""
    from explain_export.builder.export import verify

    explainer = build_explainer(head_kind("layernorm-head"), input_size=SIZE)
    assert verify.heatmap_limits(explainer, verify.cases(SIZE)) == [1e-4] * 3


def test_a_wrong_gradient_in_the_exported_graph_fails_parity(tmp_path, monkeypatch):
    """A decomposition with a bug (the kernel flipped) must not pass as the eager's spread."""
    from explain_export.builder.lower import lowering
    from explain_export.errors import ParityError

    right = lowering.convolution_backward

    def flipped(grad, input, weight, *args):
        return right(grad, input, weight.flip(-1, -2), *args)

    monkeypatch.setattr(lowering, "convolution_backward", flipped)
    explainer = build_explainer(tiny_resnet(), layer="layer2", method="gradcam", input_size=SIZE)
    with pytest.raises(ParityError, match="differs from eager"):
        export_explainer(explainer, str(tmp_path / "out"), ("onnx",))
    assert not (tmp_path / "out" / "explainer.onnx").exists()


@pytest.mark.slow
def test_gradcam_in_fp16(tmp_path):
    """The class logit is picked by a masked sum (no scatter-add, which ORT lacks in fp16)."""
    from explain_export.builder.plan import GraphOptions

    graph = GraphOptions(half=True)
    explainer = build_explainer(
        tiny_resnet(), layer="layer2", method="gradcam", input_size=SIZE, graph=graph
    )
    result = export_explainer(explainer, str(tmp_path), FORMATS)
    assert all(r.ok for r in result.parity)
