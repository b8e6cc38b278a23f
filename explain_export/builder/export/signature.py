"""The exported graph's inputs: example values to trace with, and which of their dimensions
stay free (the batch; the image size with ``dynamic_size``)."""

from __future__ import annotations

from typing import Any

import torch

from ..plan import Plan

__all__ = ["dynamic_shapes", "example_args"]


def example_args(info: Plan, class_input: bool, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Example inputs to trace with: ``(image[, class_index])``. Batch 2, not 1: exporters
    specialize a dimension of size 1 to a constant."""
    g = torch.Generator().manual_seed(1)
    h, w = info.input_size
    if info.graph.input_format == "uint8-nhwc":
        image = torch.randint(0, 256, (batch, h, w, 3), generator=g, dtype=torch.uint8)
    else:
        image = torch.rand(batch, 3, h, w, generator=g)
    return (image, torch.tensor([-1, 0])) if class_input else (image,)


def dynamic_shapes(
    info: Plan, dynamic_size: bool, class_input: bool, auto_size: bool = False
) -> dict[str, Any]:
    """N dynamic; with ``dynamic_size`` H and W too (axes 2, 3 in NCHW, 1, 2 in NHWC).

    ``auto_size`` lets ``torch.export`` derive the range of H and W (a network needs some
    minimum size), where the torch version has ``Dim.AUTO``.
    """
    batch = torch.export.Dim("batch")
    image: dict[int, Any] = {0: batch}
    if dynamic_size:
        hw = (1, 2) if info.graph.input_format == "uint8-nhwc" else (2, 3)
        auto = getattr(torch.export.Dim, "AUTO", None) if auto_size else None
        h, w = (
            (auto, auto)
            if auto is not None
            else (torch.export.Dim("height"), torch.export.Dim("width"))
        )
        image.update({hw[0]: h, hw[1]: w})
    shapes: dict[str, Any] = {"image": image}
    if class_input:
        shapes["class_index"] = {0: batch}
    return shapes
