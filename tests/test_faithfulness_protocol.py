"""The pinned deletion/insertion protocol and the masked-image scores (issue 30), against the
protocol written out directly (``eval_reference``: a loop over pixels and steps) and scipy's
Pearson r."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from explain_export.artifact import faithfulness as fa
from explain_export.artifact import samples

from eval_reference import reference_steps


def _photo(size: tuple[int, int] = (24, 32)) -> np.ndarray:
    """chelsea.png at ``size``, float32 RGB in [0, 1], ``[H, W, 3]``."""
    return samples.load_rgb(samples.photo_path("chelsea.png"), size).transpose(1, 2, 0)


@pytest.mark.parametrize("insertion", [False, True])
def test_the_step_images_follow_the_protocol(insertion):
    image = _photo()
    rng = np.random.default_rng(0)
    heatmap = np.round(rng.random(image.shape[:2]), 1).astype(np.float32)  # many ties
    got = (fa.insertion_steps if insertion else fa.deletion_steps)(image, heatmap, 7)
    want = reference_steps(image, heatmap, 7, insertion)
    assert got.shape == (8, *image.shape) and got.dtype == image.dtype
    np.testing.assert_array_equal(got, want)
    assert not (got[0] == got[-1]).all()


def test_the_step_counts_round_half_to_even():
    assert fa.step_counts(10, 4).tolist() == [0, 2, 5, 8, 10]  # 2.5 -> 2, 7.5 -> 8
    with pytest.raises(ValueError):
        fa.step_counts(10, 0)


def test_the_auc_is_the_trapezoid_rule_on_the_unit_interval():
    rng = np.random.default_rng(1)
    s = rng.random((3, 21))
    x = np.linspace(0, 1, 21)
    want = [np.sum((s[j, 1:] + s[j, :-1]) / 2 * np.diff(x)) for j in range(3)]
    np.testing.assert_allclose(fa.auc(s), want, rtol=1e-12)


def test_the_masked_image_scores():
    score = np.array([0.8, 0.5, 0.0, 0.4])
    masked = np.array([0.2, 0.7, 0.1, 0.4])
    drop = fa.average_drop(score, masked)
    np.testing.assert_allclose(drop, [0.75, 0.0, 0.0, 0.0])
    assert fa.increase_in_confidence(score, masked).tolist() == [0, 1, 1, 0]
    rng = np.random.default_rng(2)
    m, m2 = rng.random((2, 4, 6, 5))
    coh = fa.coherency(m, m2)
    want = [(stats.pearsonr(m[j].ravel(), m2[j].ravel())[0] + 1) / 2 for j in range(4)]
    np.testing.assert_allclose(coh, want, rtol=1e-10)
    assert fa.coherency(np.ones((3, 3)), m[0, :3, :3]) == 0.5  # a flat map: r = 0
    complexity = m.mean((1, 2))
    got = fa.adcc(coh, complexity, drop)
    want = [
        3 / (1 / c + 1 / (1 - x) + 1 / (1 - d))
        for c, x, d in zip(coh, complexity, drop, strict=True)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert fa.adcc(0.5, 1.0, 0.1) == 0.0  # a map of all ones explains nothing
