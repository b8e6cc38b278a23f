"""The CAM family (Grad-CAM++, XGrad-CAM, HiResCAM, element-wise Grad-CAM, LayerCAM, EigenCAM,
Eigen-Grad-CAM): eager and exported heatmaps against an independent reference written from the
formulas with autograd and a cloning hook (tests/reference.py), on real photos, at batch 1 and 3,
for a GAP + Linear head and two other head kinds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explain_export.artifact import samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.inspect.tap import TapSpec
from explain_export.builder.maths import cams, methods

import reference
from checks import eager_and_files_match
from models import head_kind, tiny_resnet

SIZE = (64, 64)
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
FAMILY = (
    "gradcam++",
    "xgradcam",
    "hirescam",
    "gradcam-elementwise",
    "layercam",
    "eigencam",
    "eigengradcam",
)


def photos() -> np.ndarray:
    return np.stack([samples.load_rgb(samples.photo_path(n), SIZE) for n in PHOTOS])


def ref(model, images: np.ndarray, layer: str, method: str, class_index=None) -> np.ndarray:
    spec = TapSpec.parse(layer)
    x = reference.normalize(torch.from_numpy(images))
    module = model.get_submodule(spec.module)
    return reference.family(model, x, module, method, spec.port, spec.call or 0, class_index)


def check(model, layer: str, method: str, out, formats) -> None:
    """Eager, then each exported file, against the reference, at batch 3 and 1."""
    explainer = build_explainer(model, layer, method, input_size=SIZE)
    assert explainer.plan.method == method
    result = export_explainer(explainer, str(out), formats)
    assert all(r.ok for r in result.parity)
    images = photos()
    expected = ref(model, images, layer, method)
    eager_and_files_match(explainer, images, expected, result.paths, formats)
    explainer.remove()


# `make test` keeps a pixel-wise method (the channel-weighted ones are cam and gradcam's kin,
# tested fast elsewhere; the principal component's power iteration is checked against the SVD
# fast below); the rest run with the slow tests.
FAST = ("layercam",)


@pytest.mark.parametrize(
    "method", [m if m in FAST else pytest.param(m, marks=pytest.mark.slow) for m in FAMILY]
)
def test_every_method_equals_its_reference_on_a_gap_linear_model(tmp_path, method):
    check(tiny_resnet(seed=2), "layer2.bn2", method, tmp_path, ("onnx",))


@pytest.mark.slow
@pytest.mark.parametrize("method", FAMILY)
@pytest.mark.parametrize(
    "kind, layer",
    [
        ("gap-linear", "layer2"),
        ("layernorm-head", "avgpool:input"),
        ("conv-after-pool", "features"),
    ],
)
def test_every_method_in_every_format_for_three_head_kinds(tmp_path, kind, layer, method):
    model = tiny_resnet(seed=3) if kind == "gap-linear" else head_kind(kind, seed=1)
    check(model, layer, method, tmp_path, ("torchscript", "onnx", "pt2"))


def test_the_methods_give_different_maps():
    """Each method's map is its own (not another method's under a new name) on a signed map
    whose gradient varies over the pixels. (Where the gradient is constant, at the map a GAP +
    Linear head reads, XGrad-CAM and HiResCAM equal Grad-CAM; on a map of ReLU outputs,
    element-wise Grad-CAM equals LayerCAM.)"""
    model = tiny_resnet(seed=2)
    maps = {m: ref(model, photos(), "layer2.bn2", m) for m in ("gradcam", *FAMILY)}
    for i, a in enumerate(maps):
        for b in list(maps)[i + 1 :]:
            assert np.abs(maps[a] - maps[b]).max() > 1e-2, (a, b)


def test_eigencam_power_iteration_matches_svd_on_the_default_model(default_model):
    """The embedded model's map on photos: power iteration against numpy's SVD (the photos'
    σ₂/σ₁ lies between 0.6 and 0.81 at this layer)."""
    explainer = build_explainer(default_model.model, default_model.layer, "sum")
    images = np.stack([samples.load_rgb(samples.photo_path(p), (224, 224)) for p in samples.PHOTOS])
    with torch.no_grad():
        _, a, _ = explainer.capture(torch.from_numpy(images))
    explainer.remove()
    m, _ = cams.eigen_terms(a)
    svd = np.maximum(reference.projection(a.double().numpy()), 0)[:, None]
    ours = reference.numpy_finish(m[:, 0].numpy(), (7, 7))
    np.testing.assert_allclose(ours, reference.numpy_finish(svd[:, 0], (7, 7)), atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 64, 3, 3), (2, 8, 6, 6)], ids=["hw<C", "hw>C"])
def test_gram_squaring_gives_the_power_steps_vector(shape):
    """Both ways to ``(XᵀX)^65 1`` (Gram matrix of either side squared six times, 65 plain
    steps) agree, even where the top two directions are too close for either to have converged
    (random maps): an export that takes the other way (a free size, a trace) stays at parity."""
    a = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    x = cams.unit_peak(a.flatten(2).transpose(1, 2))
    x = x - x.mean(dim=1, keepdim=True)
    gram, power = cams.gram_direction(x), cams.power_direction(x, 2**cams.EIGEN_SQUARINGS + 1)
    torch.testing.assert_close(gram, power, atol=1e-5, rtol=0)
    assert cams._gram_is_cheaper(49, 1280, cams.EIGEN_SQUARINGS)
    assert not cams._gram_is_cheaper(196, 512, cams.EIGEN_SQUARINGS)


def test_eigencam_sign_is_fixed_and_needs_no_class():
    a = torch.randn(2, 8, 5, 5)
    m, _ = cams.eigen_terms(a)
    flipped, _ = cams.eigen_terms(-a)  # the same principal axis, the same chosen sign
    torch.testing.assert_close(m, flipped)
    assert not methods.EIGENCAM.has_class and not methods.EIGENCAM.needs_gradient


def test_gradcampp_weights_are_zero_where_the_gradient_is():
    a = torch.rand(1, 3, 4, 4)
    g = torch.zeros(1, 3, 4, 4)
    g[0, 1] = 0.5
    w = cams.gradcampp_weights(a, g)
    assert w[0, 0] == 0 and w[0, 2] == 0 and w[0, 1] > 0
    assert torch.isfinite(cams.gradcampp_weights(a, torch.zeros_like(a))).all()
