"""Tensor ops at the graph's edges: the input format, and the overlay drawn inside the graph.

- ``float-nchw`` (default): ``image`` float32 ``[N,3,H,W]``, RGB, in [0,1].
- ``uint8-nhwc``: ``image`` uint8 ``[N,H,W,3]``, RGB, as decoded images arrive (4x less data
  into a server); ``x = permute(image) / 255`` happens inside the graph.

The in-graph overlay is the runner's default blend, in RGB: with ``lut`` the colormap's 256
colours (taken from ``cv2.applyColorMap`` at export time, a constant in the graph),
``overlay = saturate(round(alpha · lut[round(255·m)] + image255))``, uint8 ``[N,H,W,3]``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "colormap_lut",
    "heatmap_output",
    "image_size",
    "overlay_rgb",
    "pixels_nhwc",
    "to_float_nchw",
]


def to_float_nchw(image: Tensor, input_format: str) -> Tensor:
    """The graph input as float32 ``[N,3,H,W]`` in [0,1]."""
    if input_format == "uint8-nhwc":
        return image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return image


def image_size(image: Tensor, input_format: str) -> torch.Size:
    """``(H, W)`` of the graph input."""
    return image.shape[1:3] if input_format == "uint8-nhwc" else image.shape[-2:]


def pixels_nhwc(image: Tensor, input_format: str) -> Tensor:
    """The input image as float ``[N,H,W,3]`` on the 0..255 scale, for blending."""
    if input_format == "uint8-nhwc":
        return image.to(torch.float32)
    return (image.permute(0, 2, 3, 1) * 255.0).round()


def colormap_lut(colormap: str = "JET") -> Tensor:
    """OpenCV's colormap as a ``[256, 3]`` float table in **RGB** order (OpenCV gives BGR)."""
    import cv2

    from ...artifact.overlay import colormap_id

    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), colormap_id(colormap))
    return torch.from_numpy(np.ascontiguousarray(bgr[:, 0, ::-1])).to(torch.float32)


def overlay_rgb(pixels: Tensor, heatmap: Tensor, lut: Tensor, alpha: float) -> Tensor:
    """``saturate(round(alpha·lut[round(255·m)] + pixels))`` as uint8 ``[N,H,W,3]`` (RGB).

    ``pixels`` float ``[N,H,W,3]`` on 0..255, ``heatmap`` ``[N,1,H,W]`` in [0,1].
    """
    heat = lut[levels(heatmap[:, 0]).to(torch.int64)]  # [N, H, W, 3]
    return (alpha * heat + pixels).round().clamp(0, 255).to(torch.uint8)


def levels(heatmap: Tensor) -> Tensor:
    """``round(255·m)`` on 0..255 (float): the colormap index, and the uint8 heatmap output."""
    return (heatmap * 255.0).round().clamp(0, 255)


def heatmap_output(heatmap: Tensor, dtype: str) -> Tensor:
    """The heatmap as the graph returns it: float32 in [0, 1], or uint8 ``round(255·m)``."""
    return levels(heatmap).to(torch.uint8) if dtype == "uint8" else heatmap
