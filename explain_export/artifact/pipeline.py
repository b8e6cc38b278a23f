"""One image pipeline for the runner and the server: fit → run → map back → blend.

``explain-run`` (:func:`.runner.run`) and ``explain-serve`` (:mod:`.serve.app`) take the same
steps, and it matters that they agree, so both call these: :func:`read` (a file) or
:func:`decode` (a request body) and :func:`fit` per image (the decoded BGR pixels to the graph's
float input), :func:`infer` per batch (one model call), and :func:`render` per image (top-k,
each heatmap at the drawn resolution, its blend). The callers word their own errors. No torch.

Memory per image is bounded: the pixel cap is checked from the header before decoding, and the
image is decoded (JPEG) or shrunk right after decoding to at most ``max_overlay_side`` on its
longer side (:func:`.images.decode_capped`); the graph input is fitted from that, and heatmaps
and overlays are drawn at that size. :attr:`Fitted.original` keeps the file's own size.

A ``--top-k K`` export returns K maps per image (``heatmap [N,K,H,W]``) and the classes they
explain (``classes [N,K]``, best first): :func:`render` draws each map, and names its class with
:func:`explained` (label and softmax score, as in the top-k list). Any other export has one map,
and the class it explains is the graph's own rule, worked out from its outputs by
:func:`chosen_classes` (the run-time class, else the class fixed at export, else the top-1), so
that one map is named the same way; a map of no class (``eigencam``, ``sum``) is named by none.

A detection export (metadata ``task`` ``detection``) is run by :func:`infer_detections` and
drawn by :func:`render_detections`: its detections with their boxes in the original image's
pixels (:mod:`.detections`), the overlay the best detection's map with every box drawn, and
with ``each`` one overlay per detection (its map, its box).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..errors import OptionError
from . import detections, images, masks, overlay, regions
from .contract import FAITHFULNESS_OUTPUTS, heatmap_unit
from .faithfulness import annotate
from .summary import summary

__all__ = [
    "CLASS_FREE_METHODS",
    "Detected",
    "Drawn",
    "Fitted",
    "Inferred",
    "OptionError",
    "OverlayOptions",
    "Rendered",
    "chosen_classes",
    "decode",
    "explained",
    "fit",
    "infer",
    "infer_detections",
    "names_class",
    "read",
    "render",
    "render_detections",
    "softmax_topk",
    "summary",
]

# the registry's methods whose map explains no class (builder.maths.methods' has_class False); what
# an export made before metadata recorded its ``target`` is judged by
CLASS_FREE_METHODS = ("eigencam", "sum", "fem", "kpcacam")


class Fitted(NamedTuple):
    """A decoded image and its graph input. ``bgr`` is the image as it is drawn on: the file's
    pixels, or fewer where its longer side was over ``--max-overlay-side``
    (:func:`.images.decode_capped`); ``original`` is the file's own ``(h, w)`` either way."""

    bgr: np.ndarray  # uint8 [h, w, 3], the pixels drawn on (at most max_overlay_side)
    input: np.ndarray  # float32 [3, H, W], RGB in [0, 1]
    geometry: images.Geometry  # .original: bgr's (h, w), where heatmaps are mapped back to
    original: tuple[int, int]  # (h, w) of the file

    @property
    def drawn(self) -> tuple[int, int]:
        """``(h, w)`` of the overlay and heatmap: ``bgr``'s."""
        return (int(self.bgr.shape[0]), int(self.bgr.shape[1]))


@dataclass(frozen=True)
class OverlayOptions:
    """How images are fitted to the graph and the heatmap drawn over them, for the runner and
    the server alike (see :mod:`.images`, :mod:`.overlay`). Checked when made."""

    alpha: float = overlay.DEFAULT_ALPHA  # heat weight in the blend
    colormap: str = overlay.DEFAULT_COLORMAP  # an OpenCV colormap name
    seed_blend: bool = False  # rescale alpha·heat + image by its max, instead of saturating
    resize: str = "stretch"  # or "pad" (scale, keep the aspect, pad)
    max_pixels: int = images.DEFAULT_MAX_PIXELS  # larger images are refused
    # overlays and heatmaps are drawn at most this long on the longer side; 0: the file's size
    max_overlay_side: int = images.DEFAULT_MAX_SIDE

    def __post_init__(self) -> None:
        if not self.alpha >= 0:  # NaN too
            raise OptionError("alpha", "{name} must not be negative")
        if self.colormap.upper() not in overlay.COLORMAPS:
            names = ", ".join(sorted(overlay.COLORMAPS))
            raise OptionError(
                "colormap",
                "unknown {name} '{given}'; choose one of {names}",
                given=self.colormap,
                names=names,
            )
        if self.resize not in images.RESIZE_MODES:
            modes = ", ".join(images.RESIZE_MODES)
            raise OptionError(
                "resize",
                "{name} must be one of {modes}, not '{given}'",
                modes=modes,
                given=self.resize,
            )
        if self.max_pixels < 1:
            raise OptionError("max_pixels", "{name} must be at least 1")
        if self.max_overlay_side < 0:
            raise OptionError("max_overlay_side", "{name} must not be negative (0: no cap)")


class Inferred(NamedTuple):
    """One image's graph outputs."""

    logits: np.ndarray  # float32 [C]; a segmentation export's per-pixel scores [C, H', W']
    heatmaps: np.ndarray  # float32 [K, H, W] in [0, 1]; K = 1 unless the export is top-k
    classes: np.ndarray | None  # int64 [K], the class each map explains; None: no class
    faithful: dict[str, np.ndarray] | None = None  # --faithfulness: each of the four, [K]


class Drawn(NamedTuple):
    """One heatmap at the original resolution, and its drawing."""

    heatmap: np.ndarray  # float32 [h, w] in [0, 1]
    heat: np.ndarray | None  # uint8 BGR [h, w, 3], the colour-mapped heatmap (if drawn)
    blended: np.ndarray | None  # uint8 BGR [h, w, 3] (if drawn)


class Rendered(NamedTuple):
    """One image explained: top-k, each heatmap at the original resolution and its drawing,
    in the graph's order, and the class each map explains (:func:`explained`); a segmentation
    export's has no top-k but its ``region`` (:func:`.regions.fields`)."""

    topk: list[dict[str, Any]]
    maps: list[Drawn]
    explained: list[dict[str, Any]] | None = None  # per map: class, label, score (None: no class)
    region: dict[str, Any] | None = None  # segmentation: class, label, pixel_share, ...
    detections: list[dict[str, Any]] | None = None  # detection: box, class, label, score
    each: list[Drawn] | None = None  # detection: one drawing per detection (render's ``each``)

    @property
    def heatmap(self) -> np.ndarray:
        """The first (the best class's) heatmap."""
        return self.maps[0].heatmap

    @property
    def heat(self) -> np.ndarray | None:
        return self.maps[0].heat

    @property
    def blended(self) -> np.ndarray | None:
        return self.maps[0].blended


def fit(
    bgr: np.ndarray, size: tuple[int, int], resize: str, original: tuple[int, int] | None = None
) -> Fitted:
    """The graph input for decoded pixels: fitted to ``size`` by ``resize`` (stretch or pad);
    ``original``: the file's ``(h, w)`` where ``bgr`` was decoded smaller (default: bgr's)."""
    return Fitted(bgr, *images.to_input(bgr, size, resize), original or bgr.shape[:2])


def decode(data: bytes, size: tuple[int, int], opts: OverlayOptions) -> Fitted:
    """An image file's bytes decoded within ``opts.max_pixels`` (refused from the header),
    no larger than ``opts.max_overlay_side`` (:func:`.images.decode_capped`), and fitted."""
    decoded = images.decode_capped(data, opts.max_pixels, opts.max_overlay_side)
    return fit(decoded.bgr, size, opts.resize, decoded.original)


def read(path: str, size: tuple[int, int], opts: OverlayOptions) -> Fitted:
    """:func:`decode` for the file at ``path``."""
    decoded = images.read_capped(path, opts.max_pixels, opts.max_overlay_side)
    return fit(decoded.bgr, size, opts.resize, decoded.original)


def infer(artifact: Any, inputs: Sequence[np.ndarray], class_index: Any = None) -> list[Inferred]:
    """One model call for a batch of graph inputs: :class:`Inferred` per image (heatmaps as
    float in [0, 1], a uint8 one / 255, and the class each map explains: the graph's
    ``classes``, or :func:`chosen_classes`); ``class_index`` the class each heatmap explains,
    one int for all or one per image (None: the graph's default)."""
    out = artifact.outputs(np.stack(inputs), class_index)
    heatmaps, classes = heatmap_unit(out["heatmap"]), out.get("classes")
    if classes is None:
        classes = chosen_classes(artifact.metadata, out["logits"], class_index)
    scores = {k: out[k] for k in FAITHFULNESS_OUTPUTS if k in out}  # --faithfulness
    return [
        Inferred(lg, hm, None if classes is None else classes[i], _image(scores, i))
        for i, (lg, hm) in enumerate(zip(out["logits"], heatmaps, strict=True))
    ]


def _image(scores: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray] | None:
    """Image ``i``'s faithfulness scores, each ``[K]``; None without them."""
    return {k: v[i].reshape(-1) for k, v in scores.items()} or None


class Detected(NamedTuple):
    """One image's detection outputs (:data:`.contract.DETECTION_OUTPUTS`)."""

    boxes: np.ndarray  # float32 [D, 4], x1, y1, x2, y2 in the graph input's pixels, best first
    scores: np.ndarray  # float32 [D]
    classes: np.ndarray  # int64 [D], -1 on padding rows
    count: int  # rows < count are detections
    heatmaps: np.ndarray  # float32 [D, H, W] in [0, 1] (map j: detection j), or [1, H, W]
    masks: np.ndarray | None = None  # a Mask R-CNN export's: float32 [D, H, W] probabilities
    faithful: dict[str, np.ndarray] | None = None  # --faithfulness: each of the four, [D]


def infer_detections(artifact: Any, inputs: Sequence[np.ndarray]) -> list[Detected]:
    """One model call of a detection export for a batch of graph inputs: :class:`Detected`
    per image (heatmaps as float in [0, 1]; the masks where the export has them)."""
    out = artifact.outputs(np.stack(inputs))
    heatmaps = heatmap_unit(out["heatmap"])
    parts = zip(out["boxes"], out["scores"], out["classes"], out["count"], heatmaps, strict=True)
    probabilities = out.get(masks.MASKS, [None] * len(heatmaps))  # a Mask R-CNN's
    scores = {k: out[k] for k in FAITHFULNESS_OUTPUTS if k in out}  # --faithfulness
    return [
        Detected(b, s, c, int(n), h, probabilities[i], _image(scores, i))
        for i, (b, s, c, n, h) in enumerate(parts)
    ]


def render_detections(
    image: Fitted,
    found: Detected,
    labels: Sequence[str] | None,
    blend: OverlayOptions,
    each: bool = False,
) -> Rendered:
    """A detection export's image: its detections (:func:`.detections.listed`, boxes in the
    original pixels); one map, the best detection's (a class-agnostic export's one map) at the
    drawn resolution, blended, with every box drawn; with ``each``, per detection j its map
    (map j, or the one map) blended with its box. No detection: the image as it is, no heat,
    no box, and an all-zero map. A Mask R-CNN export's detections each have a ``mask`` (COCO
    RLE in the file's pixels), and each box drawn has its mask outlined (:mod:`.masks`); with
    the graph's faithfulness scores, each detection has its ``faithfulness``."""
    rows = (found.boxes, found.scores, found.classes, found.count)
    file = dataclasses.replace(image.geometry, original=image.original)
    listed = detections.listed(*rows, file, labels)  # in the file's pixels
    annotate(listed, found.faithful)
    shown = detections.listed(*rows, image.geometry, labels)  # in bgr's, to draw
    outlines = (
        None if found.masks is None else masks.list_masks(listed, found.masks, file, image.geometry)
    )

    def draw(j: int, boxes: list[dict[str, Any]]) -> Drawn:
        full = images.map_back(found.heatmaps[min(j, len(found.heatmaps) - 1)], image.geometry)
        heat, blended = overlay.overlay(
            image.bgr, full, blend.alpha, blend.colormap, blend.seed_blend
        )
        if outlines is not None:  # detection j alone, or all of them
            which = outlines[j : j + 1] if len(boxes) == 1 else outlines
            blended = masks.draw_masks(blended, which, [d["class"] for d in boxes])
        return Drawn(full, heat, detections.draw_boxes(blended, boxes))

    zero = np.zeros(image.drawn, np.float32)
    none = Drawn(zero, overlay.colorize(zero, blend.colormap), image.bgr.copy())
    main = draw(0, shown) if shown else none
    per = [draw(j, [d]) for j, d in enumerate(shown)] if each else None
    return Rendered([], [main], detections=listed, each=per)


def names_class(metadata: dict[str, Any] | None) -> bool:
    """Whether the artifact side can name the class of a one-map graph's map: its target is
    ``class`` (metadata ``target``; an older export's method explains a class)."""
    meta = metadata or {}
    target = meta.get("target")
    if target is None:  # an export made before metadata named its target
        return meta.get("method") not in CLASS_FREE_METHODS
    return target == "class"


def chosen_classes(
    metadata: dict[str, Any] | None, logits: np.ndarray, class_index: Any = None
) -> np.ndarray | None:
    """The class a one-map graph explained for each image, int64 ``[N, 1]``, by its own rule
    (the ``class`` target, :func:`~explain_export.builder.maths.targets.target_class`):
    ``c_n = class_index[n]`` where it is >= 0, else the ``target_class`` fixed at export, else
    ``argmax logits[n]``. None where the map explains no class (a class-free method, metadata
    ``target`` ``none``), where the graph's rule is another (a plug-in target), or for
    per-pixel ``logits``. ``class_index``: None, one int for all, or one per image."""
    if not names_class(metadata) or logits.ndim != 2:
        return None
    fixed = (metadata or {}).get("target_class")
    best = logits.argmax(axis=1) if fixed is None else np.full(len(logits), fixed)
    if class_index is not None:
        index = np.asarray(class_index, np.int64).reshape(-1)
        best = np.where(np.broadcast_to(index, best.shape) >= 0, index, best)
    return best.astype(np.int64)[:, None]


def render(
    image: Fitted,
    logits: np.ndarray,
    heatmaps: np.ndarray,
    topk: int,
    labels: Sequence[str] | None,
    blend: OverlayOptions,
    draw: bool = True,
    classes: np.ndarray | None = None,
    faithful: dict[str, np.ndarray] | None = None,
) -> Rendered:
    """Top-k of ``logits``; each of ``heatmaps`` (``[H, W]``, or ``[K, H, W]``: the graph's, at
    the input size) mapped back to the original resolution and, with ``draw``, blended over the
    original pixels; with ``classes`` (``[K]``) the class each map explains
    (:func:`explained`). Per-pixel ``logits`` (``[K, H', W']``, a segmentation export's, with
    its class in ``classes``) give the region of that class instead of a top-k, outlined on the
    blend; ``topk`` is then how many of the classes predicted most it lists. With the graph's
    ``faithful`` scores (each ``[K]``), each map's entry (or the region) has its
    ``faithfulness`` (:func:`.faithfulness.annotate`)."""
    if logits.ndim == 3:
        done = _render_region(image, logits, heatmaps, topk, labels, blend, draw, classes)
        annotate(done.region, faithful)
        return done
    drawn = []
    for heatmap in heatmaps.reshape(-1, *heatmaps.shape[-2:]):
        full = images.map_back(heatmap, image.geometry)
        heat = blended = None
        if draw:
            heat, blended = overlay.overlay(
                image.bgr, full, blend.alpha, blend.colormap, blend.seed_blend
            )
        drawn.append(Drawn(full, heat, blended))
    named = None if classes is None else explained(logits, classes, labels)
    annotate(named, faithful)
    return Rendered(softmax_topk(logits, topk, labels), drawn, named)


def _render_region(
    image: Fitted,
    scores: np.ndarray,
    heatmaps: np.ndarray,
    topk: int,
    labels: Sequence[str] | None,
    blend: OverlayOptions,
    draw: bool,
    classes: np.ndarray | None,
) -> Rendered:
    """:func:`render` for a segmentation export: one map, its class's region named and
    outlined."""
    if classes is None:
        raise ValueError("a segmentation graph returns the class it explains (classes)")
    heatmap = heatmaps.reshape(-1, *heatmaps.shape[-2:])[0]
    found = regions.region(scores, int(np.asarray(classes).reshape(-1)[0]), image.geometry)
    full = images.map_back(heatmap, image.geometry)
    heat = blended = None
    if draw:
        heat, blended = overlay.overlay(
            image.bgr, full, blend.alpha, blend.colormap, blend.seed_blend
        )
        blended = regions.draw_outline(blended, found.mask)
    named = regions.fields(found, labels, bool(heatmap.max() <= heatmap.min()), topk)
    return Rendered([], [Drawn(full, heat, blended)], region=named)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """``p = exp(z - max z) / Σ exp(z - max z)`` in float64."""
    z = np.exp(logits.astype(np.float64) - logits.max())
    return z / z.sum()


def _entry(p: np.ndarray, i: int, labels: Sequence[str] | None) -> dict[str, Any]:
    return {
        "class": int(i),
        "label": labels[i] if labels else str(int(i)),
        "score": round(float(p[i]), 6),
    }


def softmax_topk(logits: np.ndarray, k: int, labels: Sequence[str] | None) -> list[dict[str, Any]]:
    """Top-``k`` classes of one logit vector, with softmax scores (at least one)."""
    p = _softmax(logits)
    return [_entry(p, i, labels) for i in np.argsort(-p)[: max(1, k)]]


def explained(
    logits: np.ndarray, classes: np.ndarray, labels: Sequence[str] | None
) -> list[dict[str, Any]]:
    """``{class, label, score}`` for each of ``classes`` (a top-k graph's, in its order), the
    score the softmax of ``logits`` at that class, as in :func:`softmax_topk`."""
    p = _softmax(logits)
    return [_entry(p, int(c), labels) for c in np.asarray(classes).reshape(-1)]
