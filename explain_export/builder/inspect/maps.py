"""Which recorded tensors are maps on the image: the only tensors a heatmap may be drawn from.

A tensor is **on the image** when its positions are the image's positions:

- a 4-D map ``[N,C,h,w]`` (or channels-last) whose sides are the input's divided by one stride,
  ``h·s ≈ H`` and ``w·s ≈ W`` for one ``s ≥ 2`` (each side at most a few pixels from ``H/s``,
  ``W/s``: padding and valid convolutions round it), or at the input's own size (a stride-1
  map, padded or cut by a few pixels); its batch is the image batch; and it is not inside an
  attention:
  neither of its sides is the token count ``T`` of a token sequence ``[N,T,C]`` that a module
  around it takes (queries, keys and values ``[N,heads,T,d]``, attention ``[N,heads,T,T]``),
  and its rows are not probabilities (every value ≥ 0 and each row summing to 1: a softmax);
- or a token sequence ``[N,T,C]`` laid on a patch grid whose sides meet the same test
  (:func:`.tokens.token_grid`).

A ``T × T`` attention matrix has the right rank and may even have square sides, yet no pixel
positions: drawn over the image it means nothing. :func:`off_image` says why a tensor is not on
the image; the default layer, ``--list-layers`` and ``--layer`` all ask it.
"""

from __future__ import annotations

import math

from ...errors import OptionError
from .probe import CallRecord, Probe, spatial

__all__ = [
    "check_on_image",
    "map_records",
    "off_image",
    "on_image",
    "stride_fits",
    "token_lengths",
]

SLACK = 2  # a side may be this many pixels under H/s (valid convolutions, rounding)
PADDED = 4  # or this many over (an explicit padding module's output: 112 + 2 for a 3x3)
FULL_SIZE_SLACK = 4  # a stride-1 map: at most this many pixels more (padding) or fewer


def stride_fits(h: int, w: int, size: tuple[int, int]) -> bool:
    """``(h, w)`` are the ``(H, W)`` input's sides divided by one stride ``s ≥ 2``, or the input's
    own sides (``s = 1``, padded or cut by at most :data:`FULL_SIZE_SLACK` pixels, the same on
    both).

    Side ``h`` admits the strides ``H/(h+2) < s < H/(h−4)`` (``h`` at most :data:`SLACK` pixels
    under ``H/s`` or :data:`PADDED` over it); the two sides must admit a common ``s ≥ 2``.

    >>> stride_fits(7, 7, (224, 224)), stride_fits(113, 113, (224, 224))
    (True, True)
    >>> stride_fits(197, 197, (224, 224)), stride_fits(50, 64, (224, 224))
    (False, False)
    """
    big_h, big_w = size
    if h < 1 or w < 1:
        return False
    shrink_h, shrink_w = big_h - h, big_w - w
    if abs(shrink_h) <= FULL_SIZE_SLACK and shrink_h == shrink_w:
        return True
    lo = max(big_h / (h + SLACK), big_w / (w + SLACK), 2.0)
    hi = min(
        big_h / (h - PADDED) if h > PADDED else math.inf,
        big_w / (w - PADDED) if w > PADDED else math.inf,
    )
    return lo < hi


def token_lengths(result: Probe, rec: CallRecord) -> dict[int, str]:
    """The token counts ``T`` of the ``[N,T,C]`` sequences that the module calls ``rec`` ran
    inside (an attention module, a transformer block; a module shared by several blocks
    counts the block that called it) take as input, each with the innermost such module."""
    batch = int(result.logits.shape[0])
    return {
        int(shape[1]): name
        for name, shape in rec.outer
        if shape is not None and len(shape) == 3 and shape[0] == batch
    }


def off_image(result: Probe, rec: CallRecord, port: str) -> str | None:
    """Why the 4-D tensor at ``rec``'s ``port`` is not a map on the image, or None if it is one
    (see the module). A 3-D token sequence is judged by its grid (:func:`.tokens.token_grid`);
    other ranks are not maps."""
    shape = rec.shape(port)
    size = result.input_size
    if shape is None or len(shape) != 4 or size is None:
        return "it is not a 4-D map"
    batch = int(result.logits.shape[0])
    if shape[0] != batch:
        return f"its first dim is {shape[0]}, not the {batch} images of the batch (windows?)"
    if rec.probabilities(port):
        return "its rows are probabilities (each sums to 1): an attention matrix"
    _, h, w = spatial(shape, size)
    tokens = token_lengths(result, rec)
    counted = sorted({h, w} & set(tokens))
    if counted:
        t = counted[0]
        return (
            f"its side {t} is the number of tokens '{tokens[t]}' takes: attention, queries, keys "
            "or values (a row per token, no pixel positions)"
        )
    if not stride_fits(h, w, size):
        return f"its sides {h}x{w} are not the {size[0]}x{size[1]} input's divided by one stride"
    return None


def check_on_image(result: Probe, rec: CallRecord, port: str, layer: str) -> None:
    """An OptionError naming ``layer`` and why, where its 4-D value is not a map on the image."""
    shape = rec.shape(port)
    why = off_image(result, rec, port) if shape is not None and len(shape) == 4 else None
    if why is not None:
        raise OptionError(
            "layer",
            "layer '{layer}' ({shape}) is not a map on the image: {why}; pick a map or a "
            "block's token sequence (see {list_layers})",
            layer=layer,
            shape="x".join(map(str, shape[1:])),
            why=why,
        )


def on_image(result: Probe, rec: CallRecord, port: str) -> bool:
    """A 4-D map on the image with more than one pixel (:func:`off_image` finds nothing)."""
    shape = rec.shape(port)
    if shape is None or len(shape) != 4:
        return False
    _, h, w = spatial(shape, result.input_size)
    return h * w > 1 and off_image(result, rec, port) is None


def map_records(result: Probe, port: str = "output") -> list[CallRecord]:
    """The records whose ``port`` is a map on the image (:func:`on_image`), in the order run."""
    return [r for r in result.records if on_image(result, r, port)]
