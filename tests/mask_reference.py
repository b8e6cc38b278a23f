"""A plain reference of torchvision's ``paste_masks_in_image`` (``padding=1``), written from its
rule, one detection at a time: pad the mask by one zero, widen the box about its centre by
``(S+2)/S``, cast the corners to integers, resize the padded mask with ``F.interpolate`` to the
box's size and assign it to the image slice, clipped to the image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def paste_one(mask: Tensor, box: Tensor, height: int, width: int) -> Tensor:
    """``mask`` ``[S, S]`` over ``box`` ``(x1, y1, x2, y2)`` in an ``height x width`` image."""
    side = mask.shape[-1]
    padded = F.pad(mask[None, None], (1, 1, 1, 1))
    ratio = (side + 2) / side
    cx, cy = (box[2] + box[0]) * 0.5, (box[3] + box[1]) * 0.5
    hw, hh = (box[2] - box[0]) * 0.5 * ratio, (box[3] - box[1]) * 0.5 * ratio
    x0, x1 = int((cx - hw).to(torch.int64)), int((cx + hw).to(torch.int64))
    y0, y1 = int((cy - hh).to(torch.int64)), int((cy + hh).to(torch.int64))
    image = torch.zeros(height, width, dtype=mask.dtype)
    w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    resized = F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    left, right = max(x0, 0), min(x1 + 1, width)
    top, bottom = max(y0, 0), min(y1 + 1, height)
    if right > left and bottom > top:  # else an empty slice: nothing is pasted
        image[top:bottom, left:right] = resized[top - y0 : bottom - y0, left - x0 : right - x0]
    return image


def paste_reference(masks: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """``masks`` ``[M, S, S]``, ``boxes`` ``[M, 4]`` -> ``[M, H, W]``."""
    rows = [paste_one(m, b, *size) for m, b in zip(masks, boxes, strict=True)]
    return torch.stack(rows) if rows else masks.new_zeros(0, *size)
