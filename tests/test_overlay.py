"""Colour maps and blends against plain numpy versions of their formulas; colour order."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from explain_export.artifact import overlay


@pytest.fixture
def image_and_heat():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    heatmap = rng.random((37, 53), dtype=np.float32)
    return image, heatmap


def test_colorize_is_applycolormap_of_255_m(image_and_heat):
    _, m = image_and_heat
    ref = cv2.applyColorMap(np.round(m * 255).astype(np.uint8), cv2.COLORMAP_JET)
    np.testing.assert_array_equal(overlay.colorize(m, "JET"), ref)
    ref_v = cv2.applyColorMap(np.round(m * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    np.testing.assert_array_equal(overlay.colorize(m, "viridis"), ref_v)


@pytest.mark.parametrize("alpha", [0.4, 0.0, 1.0, 0.73])
def test_default_blend_is_saturated_alpha_heat_plus_image(image_and_heat, alpha):
    image, m = image_and_heat
    heat = overlay.colorize(m)
    ref = np.clip(np.round(alpha * heat.astype(np.float64) + image), 0, 255).astype(np.uint8)
    out = overlay.blend(image, heat, alpha)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.abs(out.astype(int) - ref).max() <= 1  # rounding of exact .5 ties may differ
    assert (out == ref).mean() > 0.99


def test_seed_blend_is_the_articles_formula(image_and_heat):
    image, m = image_and_heat
    heat = overlay.colorize(m)
    s = 0.4 * heat.astype(np.float64) + image.astype(np.float64)
    ref = np.uint8(255 * (s / s.max()))
    out = overlay.seed_blend(image, heat, 0.4)
    assert np.abs(out.astype(int) - ref).max() <= 1  # float32 vs float64
    assert out.max() >= 254


def test_hot_is_red_and_cold_is_blue_in_bgr():
    hot = overlay.colorize(np.ones((4, 4), np.float32))
    cold = overlay.colorize(np.zeros((4, 4), np.float32))
    b, g, r = hot[0, 0]
    assert r > 100 and b == 0 and g == 0  # BGR: red in channel 2
    b, g, r = cold[0, 0]
    assert b > 100 and r == 0 and g == 0
    gray = np.full((4, 4, 3), 60, np.uint8)
    _, out = overlay.overlay(gray, np.ones((4, 4), np.float32))
    assert out[0, 0, 2] > out[0, 0, 0]  # the blended hot spot is red, not blue


def test_unknown_colormap():
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        overlay.colorize(np.zeros((2, 2)), "nope")


def test_sheet_rows_and_stack():
    a = np.zeros((100, 150, 3), np.uint8)
    row = overlay.sheet_row([a, a, a], "cat (0.9)", height=50, gap=4)
    assert row.shape == (30 + 50, 3 * 75 + 2 * 4, 3)
    sheet = overlay.stack_rows([row, row[:, :100]], gap=10)
    assert sheet.shape == (2 * 80 + 3 * 10, row.shape[1] + 20, 3)
