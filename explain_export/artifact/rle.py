"""COCO run-length encoding of a binary mask, as pycocotools' ``mask.encode`` writes it, and its
decoding; numpy only.

A mask ``[H, W]`` is read in column-major (Fortran) order, ``m[0,0], m[1,0], ..., m[H-1,0],
m[0,1], ...``, and written as the lengths of its runs, alternately 0s and 1s, starting with the
0s: ``[2, 3, 1]`` is ``0 0 1 1 1 0``, and a mask that starts with a 1 starts with a run of 0
zeros. The runs sum to ``H·W``.

The compressed ``counts`` string (pycocotools' ``rleToString``) writes count ``i`` as
``x_i = c_i − c_{i−2}`` for ``i ≥ 3`` (the same colour's previous run; ``x_i = c_i`` for the
first three), each ``x_i`` in little-endian groups of 5 bits, two's complement: a group is the
character ``48 + g + 32·more``, where ``more`` says that another group follows, and the last
group's bit 4 is the sign. ``[2, 3, 1]`` is ``"231"``; a count of 100 is ``"T3"`` (100 = 4 +
3·32: ``48 + 4 + 32``, then ``48 + 3``), and a delta of −1 is ``"O"`` (``48 + 31``).

Runs are found with one comparison of the flattened mask with itself shifted by one; the
groups of all counts are written and read as ``[counts, 7]`` arrays (a count below ``2**32``
takes at most 7 groups).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["counts", "decode", "encode", "from_counts", "from_string", "to_string"]

GROUPS = 7  # 5-bit groups for a delta of a 32-bit count, sign included


def counts(mask: np.ndarray) -> np.ndarray:
    """The run lengths (int64) of a 2-D mask (nonzero is 1), column-major, 0s first."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask is 2-D [H, W]; got shape {mask.shape}")
    flat = mask.ravel(order="F") != 0
    if flat.size == 0:
        return np.zeros(1, dtype=np.int64)
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    return np.concatenate([[0], runs]) if flat[0] else runs


def to_string(runs: np.ndarray) -> str:
    """pycocotools' compressed ``counts`` string of run lengths (see the module's format)."""
    runs = np.asarray(runs, dtype=np.int64)
    delta = runs.copy()
    delta[3:] -= runs[1:-2]
    shifts = 5 * np.arange(GROUPS)
    groups = (delta[:, None] >> shifts) & 0x1F
    rest = delta[:, None] >> (shifts + 5)
    more = np.where(groups & 0x10, rest != -1, rest != 0)
    # a count writes its groups up to and including the first without ``more``
    length = np.argmin(more, axis=1) + 1
    keep = np.arange(GROUPS) < length[:, None]
    chars = (48 + groups + 32 * more)[keep]
    return chars.astype(np.uint8).tobytes().decode("ascii")


def from_string(text: str | bytes) -> np.ndarray:
    """Run lengths (int64) from pycocotools' compressed ``counts`` string."""
    raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
    chars = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return np.zeros(0, dtype=np.int64)
    if np.any((chars < 0) | (chars > 63)) or chars[-1] & 0x20:
        raise ValueError("not a COCO RLE counts string: characters outside '0'..'o' or cut short")
    last = (chars & 0x20) == 0
    starts = np.concatenate([[0], np.flatnonzero(last)[:-1] + 1])
    place = np.arange(chars.size) - np.repeat(starts, np.diff(np.append(starts, chars.size)))
    values = np.add.reduceat((chars & 0x1F) << (5 * place), starts)
    width = 5 * (place[last] + 1)
    values -= np.where(chars[last] & 0x10, np.left_shift(1, width), 0)
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def from_counts(runs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The bool mask ``[H, W]`` of run lengths (column-major, 0s first)."""
    height, width = (int(s) for s in size)
    runs = np.asarray(runs, dtype=np.int64)
    if np.any(runs < 0) or runs.sum() != height * width:
        raise ValueError(
            f"RLE counts sum to {int(runs.sum())}, not {height}x{width} = {height * width}, "
            "or hold a negative run: not this mask's encoding"
        )
    values = np.arange(runs.size) % 2 == 1
    return np.repeat(values, runs).reshape((height, width), order="F")


def encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a 2-D mask (nonzero is 1): ``{"size": [H, W], "counts": "<str>"}``, as
    ``pycocotools.mask.encode`` gives it (its ``counts`` are bytes; here ``str``, for JSON).

    Example:
        >>> encode(np.array([[0, 1, 0], [0, 1, 1]], dtype=bool))
        {'size': [2, 3], 'counts': '221O'}
    """
    mask = np.asarray(mask)
    runs = counts(mask)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": to_string(runs)}


def decode(rle: dict[str, Any]) -> np.ndarray:
    """The bool mask ``[H, W]`` of a COCO RLE: ``counts`` compressed (``str`` or ``bytes``) or
    uncompressed (a list of run lengths).

    Example:
        >>> decode({"size": [2, 3], "counts": [2, 2, 1, 1]}).astype(int).tolist()
        [[0, 1, 0], [0, 1, 1]]
    """
    text = rle["counts"]
    runs = from_string(text) if isinstance(text, (str, bytes)) else np.asarray(text, np.int64)
    return from_counts(runs, rle["size"])
