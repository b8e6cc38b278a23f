"""Which layer to explain: the default choice and the ``--list-layers`` table, read off one
recorded forward pass (:class:`.probe.Probe`).

The default is the map the classifier pools, where it can be found (there ``cam`` is exact),
else the last spatial map; where that map becomes a token sequence before the classifier (a
vision transformer), the input of the last transformer block (what its first norm reads),
laid on the patch grid (:mod:`.tokens`).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import torch
from torch import nn

from ...errors import OptionError, UsageError
from ...words import a_or_an
from .gap_head import gap_input
from .maps import map_records, off_image, on_image, stride_fits
from .probe import CallRecord, Probe, device_of, is_spatial, layout, probe, spatial, spec_for
from .tap import TapSpec

__all__ = [
    "BRIEF",
    "LayerRow",
    "choose_layer",
    "default_layer",
    "format_layers",
    "layer_rows",
    "left_out",
    "one_pixel_pool",
    "pick_layers",
    "pool_input",
]


def pool_input(result: Probe) -> TapSpec | None:
    """The input of the last global pooling module (its type or name says pool): a map on the
    image ``[N,C,h,w]`` in, ``[N,C,1,1]`` or ``[N,C]`` out (``AdaptiveAvgPool2d(1)``, timm's
    ``SelectAdaptivePool2d``, ...); a strided convolution that happens to give 1x1 is none."""
    for rec in reversed(result.records):
        shape_in, shape_out = rec.input_shape, rec.output_shape
        if _is_pool(rec) and (
            on_image(result, rec, "input")
            and layout(shape_in, result.input_size) == "NCHW"
            and shape_out is not None
            and tuple(shape_out) in {(shape_in[0], shape_in[1], 1, 1), (shape_in[0], shape_in[1])}
        ):
            return spec_for(result, rec, "input")
    return None


def backbone_output(result: Probe) -> TapSpec | None:
    """For a segmentation model (per-pixel scores), the last map of its backbone, which the
    decoder reads: the last spatial output of a direct child of ``backbone`` (torchvision's
    FCN, DeepLabV3 and LRASPP: ``backbone.layer4``, ``backbone.16``), else the last map at the
    smallest size whose channels are not the classes (the decoder's input). None for a
    classifier."""
    if result.logits.dim() != 4:
        return None
    maps = [r for r in map_records(result) if layout(r.output_shape, result.input_size) == "NCHW"]
    children = [r for r in maps if r.name.startswith("backbone.") and r.name.count(".") == 1]
    if children:
        return spec_for(result, children[-1], "output")
    classes = int(result.logits.shape[1])
    features = [r for r in maps if r.output_shape is not None and r.output_shape[1] != classes]
    if not features:
        return None
    smallest = min(r.output_shape[2] * r.output_shape[3] for r in features)  # type: ignore[index]
    deepest = [r for r in features if r.output_shape[2] * r.output_shape[3] == smallest]  # type: ignore[index]
    return spec_for(result, deepest[-1], "output")


def default_layer(result: Probe) -> TapSpec:
    """The map the classifier pools, where it can be found, else the last spatial map.

    In order: the map whose global average is the classifier's input (:func:`gap_input`, where
    ``cam`` is exact); the input of the last global pooling module (:func:`pool_input`); the last
    4-D map with more than one pixel, in either layout; where that map becomes a token sequence
    before the classifier (a vision transformer), :func:`token_default`.
    """
    return choose_layer(result)[0]


def choose_layer(
    result: Probe, layer: str | TapSpec | None = None, model: nn.Module | None = None
) -> tuple[TapSpec, str]:
    """The layer to explain and why: ``layer`` as given, else :func:`default_layer`'s choice,
    always a map on the image (:mod:`.maps`): never an attention matrix, queries or keys.

    Where the classifier pools a 1x1 map (the input is too small for the network's stride), no
    smaller map is taken in its place: an OptionError names the input size from which the
    pooled map has 2x2 pixels or more (found by probing ``model`` at larger sizes, if given).
    """
    if layer:
        return (TapSpec.parse(layer) if isinstance(layer, str) else layer), "as given"
    spec = backbone_output(result)
    if spec is not None:
        return spec, "the last map of the backbone, which the segmentation decoder reads"
    spec = gap_input(result)
    if spec is not None and _spec_on_image(result, spec):
        return spec, "the map whose global average the classifier reads"
    pooled = one_pixel_pool(result)
    if pooled is not None:
        _refuse_one_pixel(result, pooled, model)
    spec = pool_input(result)
    if spec is not None:
        return spec, "the input of the last global pooling"
    records = result.records
    maps = map_records(result)
    if maps:
        index = next(i for i, r in enumerate(records) if r is maps[-1])
        found = token_default(result, maps[-1], records[_call_start(records, index) :])
        if found is not None:
            return found
        return spec_for(result, maps[-1], "output"), "the last spatial map"
    found = token_default(result, None, records)
    if found is not None:
        return found
    raise UsageError(
        "the model has no layer whose output is a map on the image (a [N,C,h,w] map larger "
        "than 1x1, its sides the input's divided by one stride) to explain"
    )


def _is_pool(rec: CallRecord) -> bool:
    return "pool" in rec.kind.lower() or "pool" in rec.name.rpartition(".")[2].lower()


def one_pixel_pool(result: Probe) -> CallRecord | None:
    """The last global pooling (a module named ``*Pool*`` whose input is a 4-D ``[N,C,h,w]`` and
    whose output is ``[N,C,1,1]`` or ``[N,C]``), where its input is a single pixel."""
    for rec in reversed(result.records):
        shape_in, shape_out = rec.input_shape, rec.output_shape
        if not _is_pool(rec) or shape_in is None or len(shape_in) != 4 or shape_out is None:
            continue
        if tuple(shape_out) in {(*shape_in[:2], 1, 1), tuple(shape_in[:2])}:
            return rec if tuple(shape_in[2:]) == (1, 1) else None
    return None


def _refuse_one_pixel(result: Probe, pooled: CallRecord, model: nn.Module | None) -> NoReturn:
    h, w = result.input_size or (0, 0)
    fix = "a larger {input_size}"
    if model is not None:
        size = _first_size_pooling_2x2(model, (h, w))
        if size is not None:
            fix = f"{{input_size}} {size[0]} {size[1]} or larger (the pooled map is then 2x2)"
    raise OptionError(
        "input_size",
        "the map the classifier pools, '{layer}', is 1x1 at {size}: the network shrinks the "
        "image to one pixel, so a heatmap has no detail to show; pass " + fix,
        layer=spec_for(result, pooled, "input"),
        size=a_or_an(f"{h}x{w} input"),
    )


def _first_size_pooling_2x2(model: nn.Module, size: tuple[int, int]) -> tuple[int, int] | None:
    """The smallest of ``size`` grown by steps of a quarter (to 4096) at which the pooled map of
    :func:`one_pixel_pool` is 2x2 or more, by probing ``model``; None if none is."""
    h, w = size
    while max(h, w) < 4096:
        h, w = max(h + 1, round(h * 1.25)), max(w + 1, round(w * 1.25))
        try:
            pooled = one_pixel_pool(probe(model, torch.rand(1, 3, h, w, device=device_of(model))))
        except Exception:
            continue  # a size the model refuses (an odd size for its strides)
        if pooled is None:
            return h, w
    return None


def _call_start(records: Sequence[CallRecord], index: int) -> int:
    """Where the blocks that may follow ``records[index]`` begin: after it, or, where it ran
    inside a module call (a convolution over the patch tokens inside a transformer block: CoaT's
    position encoding, PVT's MLP), at the first record of the outermost such call, so that the
    block it is in counts as one that follows it. Records are in post-order: a call's own
    record comes after those of the calls it made."""
    outer = records[index].outer
    if not outer:
        return index + 1
    start = index
    while start > 0 and records[start - 1].outer[:1] == outer[:1]:
        start -= 1
    return start


def _spec_on_image(result: Probe, spec: TapSpec) -> bool:
    calls = result.calls(spec.module)
    return bool(calls) and on_image(result, calls[spec.call or 0], spec.port)


MAX_PREFIX = 8  # with no map to take the grid from: the most prefix tokens a square grid leaves


def _on_grid(
    shape: Sequence[int] | None, hw: int | None, size: tuple[int, int] | None, batch: int
) -> bool:
    """A token sequence ``[N, T, C]``, one per image (``N`` is the ``batch``), that can be a few
    prefix tokens and an ``hw`` grid, or, for a square image, a square grid of its own (tokens
    pooled without a map; with no grid known, ``hw`` None, after up to :data:`MAX_PREFIX`
    prefix tokens) whose side fits one stride of the image."""
    if shape is None or len(shape) != 3 or shape[0] != batch:
        return False
    t = int(shape[1])
    if hw is not None and 0 <= t - hw < hw:
        return True
    if size is None or size[0] != size[1]:
        return False
    for p in range(MAX_PREFIX + 1 if hw is None else 1):
        side = math.isqrt(max(t - p, 0))
        if side > 1 and side * side == t - p and stride_fits(side, side, size):
            return True
    return False


def token_default(
    result: Probe, rec: CallRecord | None, later: Sequence[CallRecord]
) -> tuple[TapSpec, str] | None:
    """Where the last map ``rec`` (None: a model with no map on the image, whose tokens come
    from patches cut without a convolution over the image, TNT) becomes a token sequence: the
    input of the last block, the
    tensor its first norm reads (``blocks.11:input`` in timm, ``encoder.layers.encoder_layer_11
    :input`` in torchvision); else the last token sequence on the grid (LeViT's: the tokens its
    head pools); None if none follows. Tokens that a model pools without a map (LeViT: 14x14,
    7x7, 4x4) count where T is a square.

    A block is a module with a norm (a module named so that keeps its input's shape) whose input
    is a token sequence on the grid, and either another such norm or a number for its name (an
    element of a list of blocks). Its input is the residual stream before the last attention:
    there every patch token still reaches the class token, so the gradient is not zero, as it
    is for the patch tokens after the last block of a class-token classifier. It is tapped at
    the block, not at the norm, so that ``∂y/∂A`` is the whole gradient at the tensor, the
    residual path's included (an ``:input`` tap hands its leaf to that module alone).
    """
    hw = None if rec is None else math.prod(spatial(rec.output_shape, result.input_size)[1:])
    size = result.input_size
    batch = int(result.logits.shape[0])
    norms: dict[str, list[CallRecord]] = {}
    for r in later:
        # a norm keeps its input's shape; LeViT's LinearNorm (a linear layer, then BatchNorm)
        # does not, and no residual stream runs through it
        keeps = r.output_shape == r.input_shape
        if "Norm" in r.kind and keeps and _on_grid(r.input_shape, hw, size, batch):
            norms.setdefault(r.name.rpartition(".")[0], []).append(r)
    blocks = [
        (parent, group)
        for parent, group in norms.items()
        if parent and (len(group) >= 2 or parent[-1].isdigit())
    ]
    if blocks:
        parent, group = blocks[-1]
        first = group[0]
        for r in later:
            if r.name == parent and r.input_shape == first.input_shape:
                return spec_for(result, r, "input"), "the input of the last transformer block"
        return spec_for(result, first, "input"), "the input of the last block's first norm"
    for r in reversed(later):
        if _on_grid(r.output_shape, hw, size, batch):
            return spec_for(result, r, "output"), "the last token sequence on the patch grid"
    return None


BRIEF = 40  # a longer list is cut to the model's own modules and its blocks (pick_layers)


@dataclass(frozen=True)
class LayerRow:
    """One tap candidate of :func:`layer_rows`: the name ``--layer`` takes, the module's type,
    the map's shape as text, whether it is the default, and whether it is a block: one of the
    model's own modules, or a module of modules whose name ends in a number (``layer4.2``,
    ``_blocks.15``, ``encoder_layer_11``)."""

    name: str
    kind: str
    shape: str
    default: bool
    block: bool


def layer_rows(result: Probe, default: TapSpec | None) -> list[LayerRow]:
    """The tap candidates (maps on the image larger than 1x1, :mod:`.maps`) in the order they
    ran; tensors that are not on the image (attention, queries, keys) are left out
    (:func:`left_out`).

    Channels-last maps are listed with ``(NHWC)``; the explainer permutes them. Token sequences
    ``[N,T,C]`` as wide as a norm's input (a transformer's residual stream) are listed as
    ``tokens TxC``; the explainer lays them on their patch grid.
    """
    counts: dict[str, int] = {}
    for r in result.records:
        counts[r.name] = counts.get(r.name, 0) + 1
    parents = {r.name.rpartition(".")[0] for r in result.records}
    batch = int(result.logits.shape[0])
    streams = {
        tuple(r.input_shape)
        for r in result.records
        if "Norm" in r.kind
        and r.input_shape is not None
        and len(r.input_shape) == 3
        and r.input_shape[0] == batch
    }
    rows = []
    for r in result.records:
        specs = []
        if default is not None and default.port == "input" and _matches(default, r, counts):
            specs.append((spec_for(result, r, "input"), r.input_shape))
        is_default_output = (
            default is not None and default.port == "output" and _matches(default, r, counts)
        )
        if (
            is_default_output
            or on_image(result, r, "output")
            or (r.output_shape is not None and tuple(r.output_shape) in streams)
        ):
            specs.append((spec_for(result, r, "output"), r.output_shape))
        block = "." not in r.name or (r.name in parents and r.name[-1].isdigit())
        for spec, shape in specs:
            is_default = default is not None and str(spec) == str(default)
            if shape is not None and len(shape) == 3:
                text = f"tokens {shape[1]}x{shape[2]}"
            else:
                text = "x".join(map(str, spatial(shape, result.input_size)))
            if layout(shape, result.input_size) == "NHWC":
                text += " (NHWC)"
            rows.append(LayerRow(str(spec), r.kind, text, is_default, block))
    return rows


def left_out(result: Probe) -> list[tuple[str, str]]:
    """``(layer, why)`` for each 4-D output larger than 1x1 that is not a map on the image
    (:func:`.maps.off_image`): what :func:`layer_rows` leaves out and ``--layer`` refuses."""
    found = []
    for r in result.records:
        if is_spatial(r.output_shape, result.input_size):
            why = off_image(result, r, "output")
            if why is not None:
                found.append((str(spec_for(result, r, "output")), why))
    return found


def pick_layers(rows: Sequence[LayerRow], pattern: str | None = None) -> list[LayerRow]:
    """The rows to show, the default always among them. ``pattern``: the names it matches, a
    glob where it has ``*``, ``?`` or ``[`` (``layer4*``), else a part of the name
    (``layer4``); None: every row of a list of at most :data:`BRIEF`, else the blocks."""
    if pattern is None:
        return list(rows) if len(rows) <= BRIEF else [r for r in rows if r.block or r.default]
    glob = any(c in pattern for c in "*?[")
    return [
        r
        for r in rows
        if r.default or (fnmatch.fnmatchcase(r.name, pattern) if glob else pattern in r.name)
    ]


def format_layers(rows: Sequence[LayerRow]) -> str:
    """``rows`` as a table: layer, type, shape [C,h,w], the default marked ``<- default``."""
    cells = [("layer", "type", "shape [C,h,w]", "")]
    cells += [(r.name, r.kind, r.shape, "<- default" if r.default else "") for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


def _matches(spec: TapSpec, r: CallRecord, counts: dict[str, int]) -> bool:
    return r.name == spec.module and (spec.call is None or spec.call == r.call)
