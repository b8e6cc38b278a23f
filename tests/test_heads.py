"""The heads and the normalization against their formulas and against OpenCV."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from explain_export.builder.maths import heads

import reference


def test_channel_sum_is_the_sum_over_channels():
    a = torch.randn(2, 5, 4, 3)
    out = reference.map_sum(a)
    assert out.shape == (2, 1, 4, 3)
    torch.testing.assert_close(out[:, 0], a.sum(1))


def test_cam_is_relu_of_class_weighted_sum():
    a = torch.randn(3, 6, 5, 4)
    w = torch.randn(10, 6)
    c = torch.tensor([0, 7, 3])
    out = reference.map_cam(a, w, c)
    expected = torch.stack(
        [torch.relu(torch.einsum("k,khw->hw", w[ci], ai)) for ai, ci in zip(a, c, strict=True)]
    )
    torch.testing.assert_close(out[:, 0], expected)


def test_heads_refuse_maps_that_are_not_4d():
    with pytest.raises(ValueError, match="N,C,h,w"):
        heads.channel_terms(torch.randn(2, 3), None)
    with pytest.raises(ValueError, match="N,C,h,w"):
        heads.channel_terms(torch.randn(2, 3, 4), torch.randn(2, 3))


def test_minmax_spans_zero_to_one_per_image():
    m = torch.randn(4, 1, 9, 7) * torch.tensor([1e-3, 1.0, 50.0, 1e4]).view(4, 1, 1, 1)
    out = heads.minmax_normalize(m)
    assert torch.all(out.amin((1, 2, 3)) == 0)
    torch.testing.assert_close(out.amax((1, 2, 3)), torch.ones(4))


def test_constant_map_gives_zeros_not_nan():
    for value in (0.0, 3.5, -2.0):
        out = heads.minmax_normalize(torch.full((2, 1, 5, 5), value))
        assert not torch.isnan(out).any()
        assert torch.all(out == 0)


@pytest.mark.parametrize(
    ("src", "dst"), [((7, 7), (224, 224)), ((5, 7), (33, 50)), ((14, 9), (7, 5))]
)
def test_resize_samples_like_cv2_inter_linear(src, dst):
    m = torch.rand(1, 1, *src)
    ours = heads.resize_bilinear(m, dst)[0, 0].numpy()
    ref = cv2.resize(m[0, 0].numpy(), (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_finish_resizes_then_normalizes():
    m = torch.rand(2, 1, 7, 7)
    out = heads.finish(m, (50, 60))
    assert out.shape == (2, 1, 50, 60)
    torch.testing.assert_close(out, heads.minmax_normalize(heads.resize_bilinear(m, (50, 60))))
    torch.testing.assert_close(out.amax((1, 2, 3)), torch.ones(2))


def test_a_sum_that_cancels_to_rounding_noise_is_flat():
    """Channels that cancel leave float32 noise far below the terms' magnitude: flat, 0."""
    a = torch.rand(2, 6, 7, 7) * 100
    features = torch.cat([a, -a * (1 + 1e-7)], dim=1)
    assert reference.map_sum(features).abs().max() > 0  # noise, not exactly zero
    assert torch.all(heads.render(features, None, (20, 20)) == 0)
    weights = torch.ones(2, 12)
    assert torch.all(heads.render(features, weights, (20, 20)) == 0)
    # A real signal of 1e-3 of the terms' magnitude is kept.
    features[:, 0, 3, 3] += 0.3
    assert heads.render(features, None, (20, 20)).amax() == 1


def test_gradcam_weights_are_the_spatial_mean_of_the_gradient():
    a, g = torch.rand(2, 5, 4, 3), torch.randn(2, 5, 4, 3)
    torch.testing.assert_close(heads.gradcam_weights(g), g.mean((2, 3)))
    expected = torch.relu((g.mean((2, 3))[:, :, None, None] * a).sum(1, keepdim=True))
    torch.testing.assert_close(reference.map_gradcam(a, g), expected)


@pytest.mark.parametrize(
    ("src", "dst"), [((7, 7), (224, 224)), ((5, 7), (33, 50)), ((14, 9), (7, 5))]
)
def test_resize_by_matrices_equals_bilinear_resize(src, dst):
    m = torch.rand(3, 1, *src)
    rows, cols = heads.resize_matrix(src[0], dst[0]), heads.resize_matrix(src[1], dst[1]).T
    torch.testing.assert_close(rows @ m @ cols, heads.resize_bilinear(m, dst), atol=2e-6, rtol=0)


@pytest.mark.parametrize("method", ["sum", "cam"])
def test_render_equals_finish_of_the_head_with_its_magnitude(method):
    """The one-pass head equals the plain formula: head, resize, min-max relative to the
    terms' magnitude; with constant resize matrices and with a known weight bound too."""
    a = torch.randn(3, 16, 7, 5)
    w, c = torch.randn(10, 16), torch.tensor([1, 4, 9])
    weights = None if method == "sum" else heads.cam_weights(w, c)
    plain = reference.map_sum(a) if weights is None else reference.map_weighted(a, weights)
    expected = heads.finish(plain, (40, 30), scale=heads.magnitude(a, weights))
    torch.testing.assert_close(heads.render(a, weights, (40, 30)), expected, atol=1e-5, rtol=0)
    matrices = (heads.resize_matrix(7, 40), heads.resize_matrix(5, 30).T)
    fast = heads.render(a, weights, (40, 30), matrices=matrices, bound=float(w.abs().max()))
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=0)


def test_guard_keeps_the_channel_sum_finite_at_the_float32_limit():
    big = torch.finfo(torch.float32).max
    for c in (1, 2, 3, 4, 5, 1000, 1024):
        g = heads.guard(c)
        assert g * c <= 0.5 and math.log2(g).is_integer()
        a = torch.full((1, c, 2, 2), big)
        a[0, :, 0, 0] = 0.0
        out = heads.render(a, None, (4, 4))
        assert torch.isfinite(out).all() and out.max() == 1


@pytest.mark.parametrize("value", [1e-40, 1e-44, 3e38])
def test_a_constant_map_of_extreme_values_is_flat(value):
    """Subnormal maps resize with rounding noise of their own size unless the head first brings
    them to [-1, 1] (found by the property tests: 1e-40 gave a map of 1s and a 0)."""
    a = torch.full((1, 1, 1, 1), value)
    assert torch.all(heads.render(a, None, (2, 3)) == 0)
    assert torch.all(heads.render(torch.full((2, 3, 2, 2), value), None, (5, 7)) == 0)
