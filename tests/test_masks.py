"""Pasting instance masks at input size (``maths.masks.paste``) against a per-detection
reference of torchvision's ``paste_masks_in_image`` (``mask_reference``), eager, traced and in
ONNX with a free number of images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mask_reference import paste_reference
from torch import Tensor, nn

from explain_export.artifact import samples
from explain_export.builder.maths.masks import expand, paste

SIZE = (96, 128)  # H, W
SIDE = 14


def photo_masks(side: int = SIDE, dtype: torch.dtype = torch.float32) -> Tensor:
    """Smooth, real masks: each colour channel of the bundled photos at ``side x side``."""
    rgb = [samples.load_rgb(samples.photo_path(n), (side, side)) for n in samples.PHOTOS]
    return torch.from_numpy(np.concatenate(rgb)).to(dtype)


def box_kinds(dtype: torch.dtype = torch.float32) -> Tensor:
    """Boxes of every kind in a 96 x 128 image (x1, y1, x2, y2)."""
    height, width = SIZE
    rows = [
        [30.2, 20.7, 70.9, 60.1],  # inside, resized to more than 128 pixels in all
        [5.5, 7.25, 30.75, 28.5],  # inside, small (the kernel's other path)
        [0.0, 0.0, 40.0, 30.0],  # touching the top-left corner
        [90.0, 60.0, width, height],  # touching the bottom-right corner
        [-3.7, -12.4, 20.3, 14.9],  # partly outside: the cast truncates towards zero
        [100.5, 80.2, 150.8, 111.6],  # partly outside, bottom right
        [64.2, 40.3, 64.7, 40.9],  # under one pixel
        [-50.0, -40.0, width + 60.0, height + 30.0],  # larger than the image
        [50.0, 50.0, 50.0, 50.0],  # a point
        [10.3, 70.1, 126.9, 75.4],  # wide and flat
        [3.0, 2.0, 9.5, 93.0],  # narrow and tall
        [40.0, 30.0, 39.0, 50.0],  # x2 < x1: pastes nothing
    ]
    return torch.tensor(rows, dtype=dtype)


def random_case(count: int, dtype: torch.dtype, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(count, SIDE, SIDE, generator=g, dtype=dtype)
    scale = torch.tensor([SIZE[1], SIZE[0]], dtype=dtype)
    centre = torch.rand(count, 2, generator=g, dtype=dtype) * scale * 1.4 - 0.2 * scale
    sides = torch.rand(count, 2, generator=g, dtype=dtype) ** 2 * scale * 1.3
    return masks, torch.cat([centre - sides / 2, centre + sides / 2], 1)


CASES = ("photos", "random")


def case(name: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    if name == "photos":
        return photo_masks(dtype=dtype), box_kinds(dtype)
    return random_case(60, dtype, seed=3)


@pytest.mark.parametrize("name", CASES)
def test_exact_paste_is_torchvision_bit_for_bit_in_float32(name):
    masks, where = case(name, torch.float32)
    expected = paste_reference(masks, where, SIZE)
    assert expected.abs().sum() > 0
    assert torch.equal(paste(masks, where, SIZE, exact=True), expected)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_paste_equals_torchvision_within_ulps(name, dtype):
    masks, where = case(name, dtype)
    expected = paste_reference(masks, where, SIZE)
    ulp = torch.finfo(dtype).eps
    for exact in (False, True):
        ours = paste(masks, where, SIZE, exact=exact)
        assert ours.dtype == dtype
        assert (ours - expected).abs().max() <= 4 * ulp
        assert torch.equal(ours != 0, expected != 0)  # the same pixels, and only those


def test_the_sampling_reads_the_kernels_source_pixels():
    """A one-hot mask shows where each pixel reads: a shifted or flipped sampling moves the
    peak, a row-major/column-major mix-up transposes it."""
    masks = torch.zeros(2, 7, 7)
    masks[0, 1, 5] = 1.0
    masks[1, 6, 0] = 1.0
    where = torch.tensor([[10.0, 20.0, 60.0, 44.0], [70.0, 5.0, 81.0, 90.0]])
    for exact in (False, True):
        ours = paste(masks, where, SIZE, exact=exact)
        torch.testing.assert_close(ours, paste_reference(masks, where, SIZE), atol=1e-6, rtol=0)


def test_expand_truncates_towards_zero():
    """``(S+2)/S`` about the centre, then the cast: −4.2 → −4 (not −5), 4.8 → 4."""
    lo, hi = expand(torch.tensor([[-3.0, 1.0, 3.0, 4.0]]), 5)
    # x: centre 0, half 3·7/5 = 4.2 -> (-4, 4); y: centre 2.5, half 1.5·7/5 = 2.1 -> (0, 4)
    assert lo.tolist() == [[-4, 0]] and hi.tolist() == [[4, 4]]


def test_leading_dimensions_and_no_detection():
    masks, where = random_case(6, torch.float32, seed=5)
    flat = paste(masks, where, SIZE)
    batched = paste(masks.reshape(2, 3, SIDE, SIDE), where.reshape(2, 3, 4), SIZE)
    assert batched.shape == (2, 3, *SIZE)
    assert torch.equal(batched.reshape(6, *SIZE), flat)
    for exact in (False, True):
        none = paste(torch.zeros(2, 0, SIDE, SIDE), torch.zeros(2, 0, 4), SIZE, exact=exact)
        assert none.shape == (2, 0, *SIZE)


class Paste(nn.Module):
    def __init__(self, exact: bool) -> None:
        super().__init__()
        self.exact = exact

    def forward(self, masks: Tensor, boxes: Tensor) -> Tensor:
        return paste(masks, boxes, SIZE, exact=self.exact)


def images(count: int, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` images of 4 detections each: ``[N, 4, S, S]``, ``[N, 4, 4]``."""
    masks, where = random_case(4 * count, torch.float32, seed)
    return masks.reshape(count, 4, SIDE, SIDE), where.reshape(count, 4, 4)


@pytest.mark.parametrize("exact", [False, True])
def test_traced_paste_takes_any_batch(exact):
    from explain_export.builder.export.writers import quiet

    with torch.no_grad(), quiet():  # the mask side S is a constant on purpose
        traced = torch.jit.trace(Paste(exact), images(2, seed=7), check_trace=False)
        for count in (1, 3):
            args = images(count, seed=count)
            assert torch.equal(traced(*args), Paste(exact)(*args))


@pytest.mark.slow
@pytest.mark.parametrize("exact", [False, True])
def test_onnx_paste_equals_eager_at_batch_1_and_3(tmp_path, exact):
    import onnxruntime as ort

    from explain_export.builder.export.export import DEFAULT_OPSET
    from explain_export.builder.export.writers import to_onnx

    batch = torch.export.Dim("batch")
    path = str(tmp_path / "paste.onnx")
    dims = {"masks": {0: batch}, "boxes": {0: batch}}
    to_onnx(Paste(exact), images(2, seed=7), path, DEFAULT_OPSET, dims, ["pasted"])
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for count in (1, 3):
        masks, where = images(count, seed=count)
        (got,) = session.run(None, {"masks": masks.numpy(), "boxes": where.numpy()})
        eager = Paste(exact)(masks, where).numpy()
        assert got.shape == (count, 4, *SIZE)
        if exact:
            np.testing.assert_array_equal(got, eager)
        else:
            np.testing.assert_allclose(got, eager, atol=1e-6, rtol=0)
        reference = paste_reference(masks.reshape(-1, SIDE, SIDE), where.reshape(-1, 4), SIZE)
        np.testing.assert_allclose(got.reshape(-1, *SIZE), reference.numpy(), atol=1e-6, rtol=0)


def test_docstring_examples_run():
    import doctest

    from explain_export.builder.maths import masks

    result = doctest.testmod(masks)
    assert result.attempted > 0 and result.failed == 0
