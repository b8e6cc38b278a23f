"""Token tensors as maps: a vision transformer's ``[N, T, C]`` laid on its patch grid.

A token tensor whose tokens come from a patch grid ``h × w`` holds ``P`` prefix tokens (class,
distillation, register tokens) and then the ``h·w`` patch tokens in row-major order. Dropping
the prefix and reshaping gives the map the methods read:

    ``A = x[:, P:].reshape(N, h, w, C).permute(0, 3, 1, 2)``  ``[N, C, h, w]``

and ``∂y/∂A`` is the gradient of the token tensor reshaped the same way (the prefix tokens'
gradient is dropped with them). The grid and ``P`` are found once, at plan time
(:func:`token_grid`), and written into the layer's layout string, ``tokens:P+hxw``
(:func:`token_layout`), which the metadata records.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from torch import Tensor, nn

from ...errors import OptionError
from ...words import count
from .maps import on_image, stride_fits
from .probe import CallRecord, Probe, spatial

__all__ = ["model_prefix", "parse_layout", "to_map", "token_grid", "token_layout"]

_LAYOUT = re.compile(r"^tokens:(\d+)\+(\d+)x(\d+)$")
PREFIX_PARAMS = ("cls_token", "class_token", "dist_token", "reg_token")


def token_layout(prefix: int, h: int, w: int) -> str:
    """``tokens:P+hxw``: ``P`` prefix tokens, then an ``h × w`` grid of patch tokens."""
    return f"tokens:{prefix}+{h}x{w}"


def parse_layout(layout: str) -> tuple[int, int, int] | None:
    """``(P, h, w)`` of a :func:`token_layout` string; None for a map layout (NCHW, NHWC)."""
    m = _LAYOUT.match(layout)
    return None if m is None else (int(m.group(1)), int(m.group(2)), int(m.group(3)))


def to_map(x: Tensor, layout: str) -> Tensor:
    """``x[:, P:]`` laid on the grid, ``[N, C, h, w]``, for a token layout; else ``x`` as is."""
    parsed = parse_layout(layout)
    if parsed is None or x.dim() != 3:
        return x
    prefix, h, w = parsed
    return x[:, prefix:].reshape(-1, h, w, x.shape[2]).permute(0, 3, 1, 2)


def model_prefix(model: nn.Module) -> tuple[int, str] | None:
    """``(P, where)``: the prefix tokens the model says it has, or None.

    timm's ``num_prefix_tokens`` (on the model or a submodule); else one token per class,
    distillation or register token parameter (``cls_token``/``class_token`` ``[1,1,C]``,
    ``dist_token``, ``reg_token`` ``[1,R,C]``).
    """
    for name, module in model.named_modules():
        n = getattr(module, "num_prefix_tokens", None)
        if isinstance(n, int):
            return n, f"{name + '.' if name else ''}num_prefix_tokens"
    total, found = 0, []
    for attr in PREFIX_PARAMS:
        p = getattr(model, attr, None)
        if isinstance(p, Tensor):
            total += int(p.shape[1]) if p.dim() == 3 else 1
            found.append(attr)
    return (total, " + ".join(found)) if found else None


def _grid_records(result: Probe, record: CallRecord, port: str) -> list[CallRecord]:
    """The records before the tapped value, nearest first (an ``:input`` tap's value comes
    before the module's own children ran)."""
    index = next(i for i, r in enumerate(result.records) if r is record)
    before = result.records[:index] if port == "input" else result.records[: index + 1]
    inner = record.name + "."
    if port == "input":
        before = [r for r in before if not r.name.startswith(inner)]
    return before[::-1]


def token_grid(
    model: nn.Module,
    result: Probe,
    record: CallRecord,
    port: str,
    shape: Sequence[int],
    tokens: int | None = None,
) -> tuple[int, int, int, str]:
    """``(P, h, w, why)`` for a tapped token tensor ``[N, T, C]``; an OptionError if no grid.

    The grid: the nearest map on the image (:func:`.maps.on_image`) recorded before the tensor
    with ``h·w = T − P`` (the patch embedding's output in a ViT); else timm's
    ``patch_embed.grid_size``; else, for a square input, the square grid ``√(T − P)`` (a token
    model that downsamples its tokens, LeViT), whose sides must fit one stride of the input.

    ``P`` is counted for this tensor, ``T − h·w``: with ``tokens`` (``--tokens``) it must be
    that; else it may be at most what the model says (:func:`model_prefix`: a CaiT adds its
    class token only in its last blocks, so the earlier ones hold none); with nothing said, fewer
    than the patch tokens (``0 ≤ T − h·w < h·w``).
    """
    t = int(shape[1])
    batch = int(result.logits.shape[0])
    if int(shape[0]) != batch:
        raise OptionError(
            "layer",
            "'{layer}' holds {n} token sequences for the {b} images of the batch (windows?), "
            "not one per image; pick a map or a block's input (see {list_layers})",
            layer=record.name,
            n=int(shape[0]),
            b=batch,
        )
    said = None if tokens is not None else model_prefix(model)
    if tokens is not None and not 0 <= tokens < t:
        raise OptionError(
            "tokens",
            "{name} {p} leaves no patch tokens of the {t} in '{layer}'",
            p=tokens,
            t=t,
            layer=record.name,
        )

    def fits(p: int, hw: int) -> bool:
        if tokens is not None:
            return p == tokens
        if said is not None:
            return 0 <= p <= said[0] and p < hw
        return 0 <= p < hw

    def because(p: int) -> str:
        if tokens is not None:
            source = "--tokens"
        elif said is None:
            source = "T - h·w"
        elif p == said[0]:
            source = said[1]
        else:
            source = f"T - h·w; the model's {said[1]} says {said[0]}, not all in this tensor"
        return f"{count(p, 'prefix token')} ({source})"

    for r in _grid_records(result, record, port):
        if not on_image(result, r, "output"):
            continue
        _, h, w = spatial(r.output_shape, result.input_size)
        if fits(t - h * w, h * w):
            return t - h * w, h, w, f"{because(t - h * w)}, grid {h}x{w} of '{r.name}'"
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if isinstance(grid, Sequence) and len(grid) == 2:
        h, w = int(grid[0]), int(grid[1])
        if fits(t - h * w, h * w):
            return t - h * w, h, w, f"{because(t - h * w)}, grid {h}x{w} of patch_embed.grid_size"
    size = result.input_size
    for p in sorted({tokens if tokens is not None else said[0] if said else 0, 0}):
        side = math.isqrt(max(t - p, 0))
        square = size is not None and size[0] == size[1]
        if side > 1 and side * side == t - p and square and stride_fits(side, side, size):
            why = f"{because(p)}, a square {side}x{side} grid assumed"
            return p, side, side, why
    prefix = tokens if tokens is not None else (said[0] if said else None)
    raise OptionError(
        "layer",
        "the {t} tokens of '{layer}' ({shape}) fit no patch grid: no map on the image recorded "
        "before them has {want} pixels and the rest are not a square; pick a spatial map (see "
        "{list_layers}) or set the prefix token count with {tokens}",
        t=t,
        layer=record.name,
        shape=list(shape[1:]),
        want=f"{t - prefix}" if prefix is not None else "T - prefix",
    )
