"""COCO run-length encoding (``artifact.rle``) against the format's definition: examples worked
out by hand, a per-pixel reference of the runs, and round trips."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from explain_export.artifact import rle


def reference_runs(mask: np.ndarray) -> list[int]:
    """The runs by the definition, one pixel at a time: column-major, 0s first."""
    runs, value, length = [], 0, 0
    for column in range(mask.shape[1]):
        for row in range(mask.shape[0]):
            pixel = int(bool(mask[row, column]))
            if pixel != value:
                runs.append(length)
                value, length = pixel, 0
            length += 1
    return [*runs, length]


def column(runs: list[int]) -> np.ndarray:
    """An ``[H, 1]`` mask with these runs (0s first)."""
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs)[:, None]


# (mask, runs, string), each worked out by hand from the format (see the module docstring)
HAND = [
    (np.array([[0, 1, 0], [0, 1, 1]]), [2, 2, 1, 1], "221O"),  # 4th: 1 - 2 = -1 -> 48 + 31
    (np.array([[0, 1], [0, 0]]), [2, 1, 1], "211"),  # row-major would be 1, 1, 2
    (np.array([[1, 0], [0, 0]]), [0, 1, 3], "013"),  # starts with a 1: a run of 0 zeros
    (np.ones((2, 2)), [0, 4], "04"),
    (np.zeros((3, 3)), [9], "9"),
    (np.zeros((1, 100)), [100], "T3"),  # 100 = 4 + 3*32: 48+4+32, 48+3
    (column([40, 1, 59]), [40, 1, 59], "X11k1"),  # 59 = 27 + 32: bit 4 of 27 needs a 2nd group
    (column([1, 30, 2, 10]), [1, 30, 2, 10], "1n02\\O"),  # 10 - 30 = -20: 48+12+32, 48+31
]


@pytest.mark.parametrize(("mask", "runs", "text"), HAND)
def test_hand_worked_examples(mask, runs, text):
    assert rle.counts(mask).tolist() == runs
    assert rle.encode(mask) == {"size": list(mask.shape), "counts": text}
    assert rle.from_string(text).tolist() == runs
    decoded = rle.decode({"size": list(mask.shape), "counts": text})
    assert decoded.dtype == bool and np.array_equal(decoded, mask != 0)


def masks() -> list[np.ndarray]:
    g = np.random.default_rng(0)
    found = [g.random((h, w)) < p for h, w, p in [(7, 9, 0.5), (40, 33, 0.1), (64, 48, 0.95)]]
    found += [g.random((1, 57)) < 0.5, g.random((61, 1)) < 0.5]  # 1 x W, H x 1
    blob = np.zeros((300, 400), dtype=bool)  # long runs: counts of several groups
    blob[50:260, 120:390] = True
    blob[100:120, 200:210] = False
    found += [blob, np.zeros((5, 6), bool), np.ones((5, 6), bool)]
    for spot in [(0, 0), (4, 5), (2, 3)]:  # a single pixel: first, last, inside
        one = np.zeros((5, 6), dtype=bool)
        one[spot] = True
        found.append(one)
    return found


@pytest.mark.parametrize("index", range(len(masks())))
def test_runs_follow_the_definition_and_round_trip(index):
    mask = masks()[index]
    runs = rle.counts(mask)
    assert runs.tolist() == reference_runs(mask)
    encoded = rle.encode(mask)
    assert isinstance(encoded["counts"], str)
    assert rle.from_string(encoded["counts"]).tolist() == runs.tolist()
    assert np.array_equal(rle.decode(encoded), mask)
    bytes_form = {"size": encoded["size"], "counts": encoded["counts"].encode()}
    assert np.array_equal(rle.decode(bytes_form), mask)  # pycocotools gives bytes
    uncompressed = {"size": encoded["size"], "counts": runs.tolist()}
    assert np.array_equal(rle.decode(uncompressed), mask)


def test_nonzero_is_foreground():
    mask = np.array([[0.0, 0.3], [2.0, 0.0]])
    assert rle.encode(mask) == rle.encode(mask != 0)


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="sum to 5, not 2x3"):
        rle.decode({"size": [2, 3], "counts": [2, 3]})
    with pytest.raises(ValueError, match="not a COCO RLE counts string"):
        rle.decode({"size": [2, 3], "counts": "2 3"})


def test_docstring_examples_run():
    result = doctest.testmod(rle)
    assert result.attempted > 0 and result.failed == 0
