"""The eager explainer: its maps equal the references, on test models and the default model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explain_export.artifact import samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.maths import heads
from explain_export.builder.maths.targets import target_class
from explain_export.errors import UsageError

import reference
from models import FlattenHead, TwiceCalled, tiny_resnet


def photos(size=(224, 224), names=("chelsea.png", "coffee.png", "rocket.jpg")) -> torch.Tensor:
    return torch.from_numpy(
        np.stack([samples.load_rgb(samples.photo_path(n), size) for n in names])
    )


def test_outputs_have_the_contract_shapes_and_range():
    explainer = build_explainer(tiny_resnet(), input_size=(64, 48))
    info = explainer.plan
    logits, heat = explainer(torch.rand(3, 3, 64, 48))
    assert logits.shape == (3, 10) and logits.dtype == torch.float32
    assert heat.shape == (3, 1, 64, 48) and heat.dtype == torch.float32
    assert heat.min() >= 0 and heat.max() <= 1
    assert info.layer == "avgpool:input" and info.head == "fc"


def test_logits_are_the_models_logits():
    model = tiny_resnet()
    explainer = build_explainer(model, input_size=(32, 32))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(explainer(x)[0], model(reference.normalize(x)))


@pytest.mark.parametrize("layer", ["layer3", "avgpool:input"])
def test_cam_equals_autograd_gradcam_on_gap_linear_model(layer):
    model = tiny_resnet()
    explainer = build_explainer(model, layer=layer, method="cam", input_size=(64, 64))
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        _, heat = explainer(x)
    module = model.layer3 if layer == "layer3" else model.avgpool
    ref, _ = reference.gradcam(
        model, reference.normalize(x), module, port=layer.partition(":")[2] or "output"
    )
    assert reference.correlation(heat.numpy(), ref) >= 0.999
    np.testing.assert_allclose(heat.numpy(), ref, atol=1e-4)


def test_class_index_selects_the_target_class():
    model = tiny_resnet()
    explainer = build_explainer(model, method="cam", input_size=(64, 64))
    x = torch.rand(3, 3, 64, 64)
    chosen = torch.tensor([4, -1, 9])
    with torch.no_grad():
        logits, heat = explainer(x, chosen)
        _, heat_argmax = explainer(x)
    target = target_class(logits, chosen)
    assert target[1] == logits[1].argmax() and target[0] == 4 and target[2] == 9
    ref, _ = reference.gradcam(
        model, reference.normalize(x), model.avgpool, "input", class_index=target
    )
    np.testing.assert_allclose(heat.numpy(), ref, atol=1e-4)
    torch.testing.assert_close(heat[1], heat_argmax[1])


@pytest.mark.parametrize("layer", ["layer2", "layer3.conv1", "avgpool:input"])
def test_sum_equals_numpy_channel_sum_then_cv2_resize(layer):
    model = tiny_resnet()
    explainer = build_explainer(model, layer=layer, method="sum", input_size=(70, 50))
    x = torch.rand(3, 3, 70, 50)
    with torch.no_grad():
        _, heat = explainer(x)
    name, _, port = layer.partition(":")
    ref = reference.channel_sum(
        model, reference.normalize(x), model.get_submodule(name), port or "output"
    )
    np.testing.assert_allclose(heat.numpy(), ref, atol=1e-4)


def _make_constant(model) -> None:
    with torch.no_grad():
        model.layer3.bn2.weight.zero_()
        model.layer3.bn2.bias.fill_(0.5)
        model.layer3.skip[1].weight.zero_()
        model.layer3.skip[1].bias.zero_()


def test_constant_feature_map_gives_zero_heatmap_not_nan():
    model = tiny_resnet()
    explainer = build_explainer(model, method="sum", input_size=(32, 32))
    _make_constant(model)
    _, heat = explainer(torch.rand(2, 3, 32, 32))
    assert not torch.isnan(heat).any()
    assert torch.all(heat == 0)


def test_a_map_without_signal_is_refused_at_build_time():
    """The last stage is constant, so are the logits: no layer can help, and the error says
    why (a flat map of a classifier whose logits vary: test_gradcam's layernorm-head)."""
    model = tiny_resnet()
    _make_constant(model)
    with pytest.raises(UsageError, match=r"the logits do not depend on the image"):
        build_explainer(model, method="sum", input_size=(32, 32))


def test_twice_called_module_is_refused_without_a_call_index():
    with pytest.raises(UsageError, match=r"runs 2 times.*'act@0' \.\.\. 'act@1'"):
        build_explainer(TwiceCalled(), layer="act", method="sum", input_size=(32, 32))


def test_twice_called_module_at_a_chosen_call():
    model = TwiceCalled().eval()
    explainer = build_explainer(model, layer="act@1", method="cam", input_size=(32, 32))
    info = explainer.plan
    assert info.feature_shape == (12, 8, 8)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        _, heat = explainer(x)
    ref, _ = reference.gradcam(model, reference.normalize(x), model.act, "output", call=1)
    np.testing.assert_allclose(heat.numpy(), ref, atol=1e-4)
    # the first call is a different map (the stem's), at half the resolution of the input
    info0 = build_explainer(model, layer="act@0", method="sum", input_size=(32, 32)).plan
    assert info0.feature_shape == (6, 16, 16)


def test_default_layer_of_twice_called_model_is_the_pool_input():
    info = build_explainer(TwiceCalled(), input_size=(32, 32)).plan
    assert info.layer == "pool:input"


def test_cam_refuses_a_flatten_linear_head():
    with pytest.raises(
        UsageError,
        match=r"global average pooling.*'fc' takes \[1024\] features and 'features' has 4 "
        r"channels; use method gradcam \(any head\)$",
    ):
        build_explainer(FlattenHead(), layer="features", method="cam", input_size=(32, 32))


def test_sum_works_on_a_flatten_linear_head():
    explainer = build_explainer(FlattenHead(), method="sum", input_size=(32, 32))
    info = explainer.plan
    assert info.layer == "features"
    assert explainer(torch.rand(1, 3, 32, 32))[1].shape == (1, 1, 32, 32)


def test_cam_refuses_a_layer_that_does_not_feed_the_pool():
    # same channel count as the pooled map, but before the residual sum and the ReLU
    with pytest.raises(UsageError, match="global average of 'layer3.bn2'.*use layer avgpool:input"):
        build_explainer(tiny_resnet(), layer="layer3.bn2", method="cam", input_size=(32, 32))
    with pytest.raises(
        UsageError,
        match=r"'fc' takes \[32\] features and 'layer2' has 16 channels; use layer avgpool:input",
    ):
        build_explainer(tiny_resnet(), layer="layer2", method="cam", input_size=(32, 32))


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("layr3", "no layer 'layr3' in the model; did you mean layer3"),
        ("fc", "not a 4-D"),
        ("avgpool", r"1x1 map.*earlier layer \(e.g. 'avgpool:input'\) or a larger input_size"),
        ("layer3@2", "call @2 does not exist"),
        ("layer3:middle", "cannot read layer"),
    ],
)
def test_bad_layers_get_clear_errors(layer, message):
    with pytest.raises(UsageError, match=message):
        build_explainer(tiny_resnet(), layer=layer, method="sum", input_size=(32, 32))


def test_layer_never_called_is_refused():
    model = tiny_resnet()
    model.unused = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(UsageError, match="never runs"):
        build_explainer(model, layer="unused", method="sum", input_size=(32, 32))


def test_named_head_must_be_the_linear_that_gives_logits():
    with pytest.raises(UsageError, match="not an nn.Linear"):
        build_explainer(tiny_resnet(), method="cam", head="layer3", input_size=(32, 32))
    info = build_explainer(tiny_resnet(), method="cam", head="fc", input_size=(32, 32)).plan
    assert info.head == "fc"


def test_bad_normalization_and_sizes():
    with pytest.raises(UsageError, match="3 values"):
        build_explainer(tiny_resnet(), mean=(0.5, 0.5), input_size=(32, 32))
    with pytest.raises(UsageError, match="positive"):
        build_explainer(tiny_resnet(), std=(0.2, 0.0, 0.2), input_size=(32, 32))
    with pytest.raises(UsageError, match="input_size must be positive"):
        build_explainer(tiny_resnet(), input_size=(0, 32))


def test_explainer_rejects_unknown_method():
    with pytest.raises(UsageError, match="unknown method"):
        build_explainer(tiny_resnet(), "layer3", method="scorecam")


def test_default_model_sees_a_cat_and_cam_equals_gradcam(default_model):
    explainer = build_explainer(default_model.model, default_model.layer, "cam")
    info = explainer.plan
    assert info.layer == "_avg_pooling:input" and info.head == "_fc"
    x = photos()
    with torch.no_grad():
        logits, heat = explainer(x)
    top = logits.argmax(1)
    assert 281 <= int(top[0]) <= 285, default_model.labels[int(top[0])]  # chelsea.png: a cat
    ref, ref_logits = reference.gradcam(
        default_model.model, reference.normalize(x), default_model.model._avg_pooling, "input"
    )
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    assert reference.correlation(heat.numpy(), ref) >= 0.999


def test_default_model_sum_equals_numpy_reference(default_model):
    explainer = build_explainer(default_model.model, "_swish@1", "sum")
    x = photos(names=("coffee.png",))
    with torch.no_grad():
        _, heat = explainer(x)
    ref = reference.channel_sum(
        default_model.model, reference.normalize(x), default_model.model._swish, call=1
    )
    np.testing.assert_allclose(heat.numpy(), ref, atol=1e-4)


def test_fixed_target_class_is_explained_for_every_image():
    model = tiny_resnet()
    explainer = build_explainer(model, method="cam", input_size=(48, 48), target=6)
    info = explainer.plan
    assert info.target == 6
    x = torch.rand(3, 3, 48, 48)
    with torch.no_grad():
        _, heat = explainer(x)
        _, heat_chosen = explainer(x, torch.tensor([-1, 2, -1]))  # -1 falls back to class 6
    six = torch.full((3,), 6)
    ref, _ = reference.gradcam(
        model, reference.normalize(x), model.avgpool, "input", class_index=six
    )
    np.testing.assert_allclose(heat.numpy(), ref, atol=1e-4)
    torch.testing.assert_close(heat_chosen[0], heat[0])
    assert not torch.allclose(heat_chosen[1], heat[1])


def test_fixed_target_class_is_checked():
    with pytest.raises(UsageError, match=r"target 10 is out of range.*10 classes \(0\.\.9\)"):
        build_explainer(tiny_resnet(), method="cam", input_size=(32, 32), target=10)
    with pytest.raises(UsageError, match="needs a method that explains a class"):
        build_explainer(tiny_resnet(), method="sum", input_size=(32, 32), target=1)


def test_target_class_keepdim_gathers_rows_per_image():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    chosen = torch.tensor([-1, 2])
    target = target_class(logits, chosen, keepdim=True)
    assert target.tolist() == [[1], [2]]
    assert target_class(logits, chosen).tolist() == [1, 2]
    w = torch.randn(3, 4)
    torch.testing.assert_close(heads.cam_weights(w, target)[:, 0], w[[1, 2]])


def test_the_head_resizes_by_matrices_at_the_export_size_only():
    """At the built size the head uses its constant matrices; at another size, and inside
    free_size (a graph whose size is free), bilinear resizing; all agree with the reference."""
    model = tiny_resnet()
    explainer = build_explainer(model, method="cam", input_size=(64, 64))
    info = explainer.plan
    head = explainer.heatmap_head
    assert head.sizes == ((info.feature_shape[1], info.feature_shape[2]), (64, 64))
    features = torch.rand(2, *info.feature_shape)
    assert head._matrices(features, (64, 64)) is not None
    assert head._matrices(features, (64, 80)) is None
    with head.free_size():
        assert head._matrices(features, (64, 64)) is None
    assert head.fixed_size
    for size in ((64, 64), (64, 80)):
        x = torch.rand(2, 3, *size)
        with torch.no_grad():
            _, heat = explainer(x)
        ref, _ = reference.gradcam(model, reference.normalize(x), model.avgpool, "input")
        np.testing.assert_allclose(heat.numpy(), ref, atol=1e-4)
