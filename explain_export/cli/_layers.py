"""What ``explain-export`` says about layers: ``--list-layers`` (the tap candidates, the
default marked, what is left out and why), the report's lines on a map's layout and on fused
layers, and the ``--fuse`` flag."""

from __future__ import annotations

import argparse
from typing import Any

from ..words import count
from ._export_checks import Checked

__all__ = ["add_fuse_flag", "fused_line", "layout_line", "list_layers"]


def add_fuse_flag(group: Any) -> None:
    """``--fuse``: how repeated ``--layer`` maps are fused (:mod:`..builder.maths.fusion`)."""
    from ..builder.maths.fusion import FUSIONS

    group.add_argument(
        "--fuse",
        choices=tuple(FUSIONS),
        default=None,
        help="how repeated --layer maps are fused: each is made, ReLU'd and min-maxed at full "
        "size, then averaged (mean, the default) or multiplied (product: pytorch-grad-cam's "
        "RefineCAM; only what every layer shows stays, which denoises early layers), and "
        "min-maxed again",
    )


def fused_line(layers: int, fuse: str) -> str:
    """What the report says of ``layers`` fused maps."""
    how = "multiplied (RefineCAM)" if fuse == "product" else "averaged"
    return f"the {layers} maps are fused: {how}, then min-maxed again"


def layout_line(layout: str) -> str | None:
    """What the report says of a map's layout: a channels-last map permuted, a token sequence's
    prefix dropped and the rest laid on its grid; None for an NCHW map."""
    if layout == "NHWC":
        return "the map is channels-last [N,h,w,C]; it is permuted to [N,C,h,w]"
    if layout.startswith("tokens:"):
        prefix, grid = layout.removeprefix("tokens:").split("+")
        dropped = count(int(prefix), "prefix token")
        return f"a token sequence: {dropped} dropped, the rest laid on {grid}"
    return None


def list_layers(args: argparse.Namespace, model: Any, flags: Checked, layer: str | None) -> int:
    """``--list-layers [PATTERN]``: the tap candidates, the default marked, and why it is."""
    from ..builder.inspect.layers import (
        choose_layer,
        format_layers,
        layer_rows,
        left_out,
        pick_layers,
    )
    from ..builder.inspect.probe import probe_at_size

    result = probe_at_size(model, flags.size, flags.mean, flags.std, args.output)
    default, why = choose_layer(result, layer, model)
    if not args.layer and layer:
        why = "the embedded model's default: the map its global average pooling reads"
    rows = layer_rows(result, default)
    pattern = {"": None, "all": "*"}.get(args.list_layers, args.list_layers)
    shown = pick_layers(rows, pattern)
    print(format_layers(shown))
    if len(shown) < len(rows):
        which = "the model's own modules and its blocks"
        if pattern is not None:
            which = f"those matching '{pattern}', and the default"
        print(
            f"{len(shown)} of {len(rows)} layers shown: {which}; --list-layers all shows every "
            "one, --list-layers PATTERN those whose name matches"
        )
    hidden = left_out(result)
    if hidden:
        name, reason = hidden[0]
        print(
            f"not listed: {count(len(hidden), 'tensor')} that {'is' if len(hidden) == 1 else 'are'}"
            f" not a map on the image, e.g. '{name}': {reason}"
        )
    print(f"default: {default} ({why})")
    return 0
