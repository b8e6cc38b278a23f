"""How the graph meets a server: input format, in-graph overlay, fp16, heatmap dtype."""

from __future__ import annotations

from dataclasses import dataclass

from ..artifact.contract import HEATMAP_DTYPES, INPUT_FORMATS
from ..errors import UsageError

__all__ = ["GraphOptions"]


@dataclass(frozen=True)
class GraphOptions:
    """How the graph meets a server (see :mod:`.graph_io`).

    ``input_format``: ``float-nchw`` or ``uint8-nhwc``. ``overlay``: add a third output, the
    overlay as uint8 ``[N,H,W,3]`` RGB, blended with ``overlay_alpha`` and the ``colormap``.
    ``half``: fp16 weights and compute in the backbone (the head and min-max stay float32).
    ``heatmap_dtype``: ``float32`` in [0, 1], or ``uint8`` ``round(255·m)`` (4x fewer bytes out,
    for servers that only draw).
    """

    input_format: str = "float-nchw"
    overlay: bool = False
    overlay_alpha: float = 0.4
    colormap: str = "JET"
    half: bool = False
    heatmap_dtype: str = "float32"

    def check(self) -> None:
        """A UsageError naming the choices for an unknown input format or heatmap dtype."""
        if self.heatmap_dtype not in HEATMAP_DTYPES:
            raise UsageError(
                f"unknown heatmap dtype '{self.heatmap_dtype}'; "
                f"choose one of {', '.join(HEATMAP_DTYPES)}"
            )
        if self.input_format not in INPUT_FORMATS:
            raise UsageError(
                f"unknown input format '{self.input_format}'; "
                f"choose one of {', '.join(INPUT_FORMATS)}"
            )
