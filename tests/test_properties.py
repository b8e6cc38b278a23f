"""Property tests (hypothesis) on the heads and the normalization."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from explain_export.builder.maths import heads

import reference

SETTINGS = settings(max_examples=150, deadline=None)

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def feature_maps(draw, elements=finite32, kinds=("any", "constant", "scaled")):
    """[N, C, h, w] float32 maps, N in 1..8, with any finite values (huge, tiny, subnormal)."""
    shape = (
        draw(st.integers(1, 8)),
        draw(st.integers(1, 6)),
        draw(st.integers(1, 7)),
        draw(st.integers(1, 7)),
    )
    kind = draw(st.sampled_from(kinds))
    if kind == "constant":
        return np.full(shape, draw(finite32), np.float32)
    a = draw(arrays(np.float32, shape, elements=elements))
    if kind == "scaled":  # one magnitude for the whole map, from tiny to huge
        a = (a / max(np.abs(a).max(), 1.0) * np.float32(10.0 ** draw(st.integers(-40, 38)))).astype(
            np.float32
        )
    return a


sizes = st.tuples(st.integers(1, 33), st.integers(1, 33))


def _check_range(out: torch.Tensor, n: int, size: tuple[int, int]) -> None:
    assert out.shape == (n, 1, *size)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


@SETTINGS
@given(feature_maps(), sizes)
def test_sum_heatmap_is_finite_in_unit_range_with_the_right_shape(a, size):
    out = reference.head_by_name(torch.from_numpy(a), size, "sum")
    _check_range(out, a.shape[0], size)


@SETTINGS
@given(feature_maps(), sizes, st.data())
def test_cam_heatmap_is_finite_in_unit_range_with_the_right_shape(a, size, data):
    n, c = a.shape[:2]
    k = data.draw(st.integers(1, 5))
    w = data.draw(arrays(np.float32, (k, c), elements=st.floats(-100, 100, width=32)))
    cls = data.draw(arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
    out = reference.head_by_name(
        torch.from_numpy(a), size, "cam", torch.from_numpy(w), torch.from_numpy(cls)
    )
    _check_range(out, n, size)


@SETTINGS
@given(feature_maps(), sizes)
def test_constant_maps_give_zeros(a, size):
    a = np.broadcast_to(a[:, :, :1, :1], a.shape).copy()  # constant over space, per channel
    out = reference.head_by_name(torch.from_numpy(a), size, "sum")
    assert torch.all(out == 0)


moderate = st.one_of(st.just(0.0), st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3)).map(np.float32)
bounded = st.one_of(st.just(0.0), st.floats(1e-20, 1e20), st.floats(-1e20, -1e-20)).map(np.float32)


@SETTINGS
@given(feature_maps(elements=bounded, kinds=("any",)), sizes, st.integers(-30, 30))
def test_sum_is_invariant_to_power_of_two_scaling_exactly(a, size, k):
    """Scaling by 2^k is exact in floating point, so the heatmap must not change at all."""
    a = torch.from_numpy(a)
    scaled = a * torch.tensor(2.0**k, dtype=torch.float32)
    assume(torch.isfinite(scaled).all() and ((scaled == 0) == (a == 0)).all())
    torch.testing.assert_close(
        reference.head_by_name(scaled, size, "sum"),
        reference.head_by_name(a, size, "sum"),
        rtol=0,
        atol=0,
    )


@SETTINGS
@given(
    feature_maps(elements=moderate, kinds=("any",)),
    sizes,
    st.floats(1e-3, 1e3),
)
def test_sum_is_invariant_to_positive_scaling(a, size, s):
    """Any positive factor: equal up to rounding, on maps whose range is not rounding noise."""
    a = torch.from_numpy(a)
    m = heads.resize_bilinear(reference.map_sum(a), size).flatten(1)
    spread = (m.amax(1) - m.amin(1)) / m.abs().amax(1).clamp_min(1e-30)
    assume(bool((spread > 1e-2).all()))
    out = reference.head_by_name(a * np.float32(s), size, "sum")
    torch.testing.assert_close(out, reference.head_by_name(a, size, "sum"), rtol=0, atol=2e-3)
