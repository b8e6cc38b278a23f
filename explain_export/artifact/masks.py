"""A Mask R-CNN export's instance masks on the artifact side: mapped back, encoded, outlined.
numpy and OpenCV, no torch; the runtime, the runner, the server and the Ray engine all read
masks with these (as :mod:`.detections` does boxes).

Such an export has a sixth output after :data:`.contract.DETECTION_OUTPUTS`, ``masks`` float32
``[N, D, H, W]``: detection j's mask probability ``P_j`` at the graph input's size (0 on
padding rows). An image placed by a :class:`.images.Geometry` (content ``top, left, ch, cw``
inside the ``H × W`` input, original ``h × w``) gets

    M_j = [ resize(P_j[top : top + ch, left : left + cw], (h, w)) > 1/2 ],

bilinear (:func:`.images.map_back`, as its heatmap): with ``stretch`` the whole input resized,
with ``pad`` the padding cut off first. ``M_j`` is answered as COCO RLE (:func:`.rle.encode`)
and drawn as its contours in detection j's class colour (:func:`.detections.class_colour`)
over a dark halo, as :func:`.regions.draw_outline` draws a segmentation region.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import detections, images, regions, rle
from .contract import DETECTION_OUTPUTS, Detections

__all__ = ["MASKS", "MaskDetections", "detections_of", "draw_masks", "list_masks", "masks_back"]

MASKS = "masks"  # the output's name, after DETECTION_OUTPUTS


class MaskDetections(NamedTuple):
    """A Mask R-CNN export's outputs for a batch, as an artifact's call returns them:
    :class:`~.contract.Detections` and ``masks``."""

    boxes: np.ndarray  # float32 [N, D, 4], x1, y1, x2, y2 in input pixels, best first
    scores: np.ndarray  # float32 [N, D]
    classes: np.ndarray  # int64 [N, D], -1 on padding rows
    count: np.ndarray  # int64 [N]: rows j < count[n] are detections
    heatmap: np.ndarray  # float32 [N, D, H, W] in [0, 1] (map j: detection j) or [N, 1, H, W]
    masks: np.ndarray  # float32 [N, D, H, W]: detection j's mask probability; 0 on padding


def detections_of(
    out: Mapping[str, np.ndarray], heatmap: np.ndarray
) -> Detections | MaskDetections:
    """A detector's outputs by name as the call's tuple: :class:`MaskDetections` where there
    are ``masks``, else :class:`~.contract.Detections` (``heatmap`` already in [0, 1])."""
    rows = [out[n] for n in DETECTION_OUTPUTS[:4]]
    if MASKS in out:
        return MaskDetections(*rows, heatmap, out[MASKS])
    return Detections(*rows, heatmap)


def masks_back(masks: np.ndarray, geometry: images.Geometry) -> np.ndarray:
    """``[n, H, W]`` mask probabilities over the graph input -> bool ``[n, h, w]`` over the
    original image (``M_j`` of the module's formula)."""
    h, w = geometry.original
    out = np.zeros((len(masks), h, w), bool)
    for j, mask in enumerate(masks):
        out[j] = images.map_back(np.asarray(mask, np.float32), geometry) > 0.5
    return out


def list_masks(
    found: list[dict[str, Any]],
    probabilities: np.ndarray,
    file: images.Geometry,
    drawn: images.Geometry,
) -> np.ndarray:
    """Give each listed detection j (``found``, as :func:`.detections.listed` lists them) its
    ``mask``: ``M_j`` at ``file``'s original size as COCO RLE (``{"size", "counts"}``). Returns
    the masks at ``drawn``'s original size, bool ``[n, h, w]``, to outline."""
    n = len(found)
    at_file = masks_back(probabilities[:n], file)
    for d, mask in zip(found, at_file, strict=True):
        d["mask"] = rle.encode(mask)
    return at_file if drawn == file else masks_back(probabilities[:n], drawn)


def draw_masks(image: np.ndarray, masks: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """A copy of ``image`` (BGR uint8 ``[h, w, 3]``) with the outline of each bool ``[h, w]``
    mask in ``masks`` in its class's colour (``classes[j]``), over a dark halo."""
    out = image
    for mask, c in zip(masks, classes, strict=True):
        out = regions.draw_outline(out, mask, colour=detections.class_colour(int(c)))
    return out.copy() if out is image else out
