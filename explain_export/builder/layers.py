"""Which layer to explain: the default choice and the ``--list-layers`` table, read off one
recorded forward pass (:class:`.probe.Probe`).

The default is the map the classifier pools, where it can be found (there ``cam`` is exact),
else the last spatial map; a model whose last map becomes a token sequence before its
classifier (a vision transformer) is refused with one line.
"""

from __future__ import annotations

from ..errors import OptionError, UsageError
from .gap_head import gap_input
from .probe import CallRecord, Probe, is_spatial, layout, spatial, spec_for
from .tap import TapSpec

__all__ = ["choose_layer", "default_layer", "format_layers", "pool_input"]


def pool_input(result: Probe) -> TapSpec | None:
    """The input of the last global pooling module: a spatial ``[N,C,h,w]`` map in, ``[N,C,1,1]``
    or ``[N,C]`` out (``AdaptiveAvgPool2d(1)``, timm's ``SelectAdaptivePool2d``, ...)."""
    for rec in reversed(result.records):
        shape_in, shape_out = rec.input_shape, rec.output_shape
        if (
            is_spatial(shape_in, result.input_size)
            and layout(shape_in, result.input_size) == "NCHW"
            and shape_out is not None
            and tuple(shape_out) in {(shape_in[0], shape_in[1], 1, 1), (shape_in[0], shape_in[1])}
        ):
            return spec_for(result, rec, "input")
    return None


def default_layer(result: Probe) -> TapSpec:
    """The map the classifier pools, where it can be found, else the last spatial map.

    In order: the map whose global average is the classifier's input (:func:`gap_input`, where
    ``cam`` is exact); the input of the last global pooling module (:func:`pool_input`); the last
    4-D map with more than one pixel, in either layout. A model whose last map becomes a token
    sequence before the classifier (a vision transformer) is refused.
    """
    return choose_layer(result)[0]


def choose_layer(result: Probe, layer: str | TapSpec | None = None) -> tuple[TapSpec, str]:
    """The layer to explain and why: ``layer`` as given, else :func:`default_layer`'s choice."""
    if layer:
        return (TapSpec.parse(layer) if isinstance(layer, str) else layer), "as given"
    spec = gap_input(result)
    if spec is not None:
        return spec, "the map whose global average the classifier reads"
    spec = pool_input(result)
    if spec is not None:
        return spec, "the input of the last global pooling"
    for i in range(len(result.records) - 1, -1, -1):
        rec = result.records[i]
        if is_spatial(rec.output_shape, result.input_size):
            _refuse_tokens(result, rec, result.records[i + 1 :])
            return spec_for(result, rec, "output"), "the last spatial map"
    raise UsageError(
        "the model has no layer with a spatial [N,C,h,w] output (larger than 1x1) to explain"
    )


def _refuse_tokens(result: Probe, rec: CallRecord, later: list[CallRecord]) -> None:
    """A UsageError if a token sequence ``[N, L, D]`` with at least ``h·w`` tokens comes later."""
    _, h, w = spatial(rec.output_shape, result.input_size)
    for r in later:
        shape = r.output_shape
        if shape is not None and len(shape) == 3 and shape[1] >= h * w:
            raise OptionError(
                "layer",
                "the model turns its last map '{last}' ({size}) into a token sequence {tokens} "
                "that its classifier reads, as a vision transformer does; a heatmap needs the "
                "spatial map a CNN classifier pools, so explain-export explains CNNs (pass "
                "{name} to explain that early map anyway)",
                last=rec.name,
                size="x".join(map(str, rec.output_shape[1:])),
                tokens=list(shape[1:]),
            )


def format_layers(result: Probe, default: TapSpec | None) -> str:
    """A table of the tap candidates (spatial maps larger than 1x1), the default marked.

    Channels-last maps are listed with ``(NHWC)``; the explainer permutes them.
    """
    counts: dict[str, int] = {}
    for r in result.records:
        counts[r.name] = counts.get(r.name, 0) + 1
    rows = [("layer", "type", "shape [C,h,w]", "")]
    for r in result.records:
        specs = []
        if default is not None and default.port == "input" and _matches(default, r, counts):
            specs.append((spec_for(result, r, "input"), r.input_shape))
        if is_spatial(r.output_shape, result.input_size):
            specs.append((spec_for(result, r, "output"), r.output_shape))
        for spec, shape in specs:
            is_default = default is not None and str(spec) == str(default)
            text = "x".join(map(str, spatial(shape, result.input_size)))
            if layout(shape, result.input_size) == "NHWC":
                text += " (NHWC)"
            rows.append((str(spec), r.kind, text, "<- default" if is_default else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def _matches(spec: TapSpec, r: CallRecord, counts: dict[str, int]) -> bool:
    return r.name == spec.module and (spec.call is None or spec.call == r.call)
