"""A Ray Serve app for an exported ``explainer.onnx``: ``POST /explain`` and ``GET /healthz``.

The request handling is plain functions that need neither Ray nor torch: :func:`route`,
:func:`parse_query` (from :mod:`.request`), then :func:`prepare` (decode, fit) per request,
:func:`run_model` per batch, :func:`answer` (map back, blend, encode) per request, the steps of
:mod:`..pipeline` that ``explain-run`` takes too. :class:`Handler` is a replica's whole request
handling on them (the per-request steps in threads, the model call through a batcher);
:mod:`.ray_app`'s deployment only hands it each request and each ``@serve.batch`` batch.

HTTP API (every body is JSON; every error is ``{"error": "one line"}`` with a 4xx status, or 500
if the model itself fails):

- ``POST /explain?overlay=1&heatmap=0&topk=5&class=-1``: the body is the image file's bytes
  (PNG, JPEG, anything OpenCV decodes), or a ``multipart/form-data`` form with the file in one
  field (``curl -F file=@cat.png``). All optional: ``overlay`` (1) and ``heatmap`` (0) pick
  the base64 PNGs in the answer (``1/0``, ``true/false``, ``yes/no``, the bare name for 1);
  ``topk`` (5) the number of labels; ``class`` the class the heatmap explains (-1: the top-1;
  other classes need a graph exported with ``--class-input``). Answer::

      {"topk": [{"class": 285, "label": "Egyptian cat", "score": 0.777125}, ...],
       "height": 300, "width": 451, "batch_size": 3,
       "explained": [{"class": 285, "label": "Egyptian cat", "score": 0.777125}],
       "overlay_png": "<base64 PNG, BGR blend as explain-run's NAME.overlay.png>",
       "heatmap_png": "<base64 8-bit gray PNG, as explain-run's NAME.heatmap.png>"}

  ``explained`` names the class the heatmap explains, with its softmax score (as in
  ``topk``): the top-1, or the ``class`` asked for (``class=967``: espresso, whatever the
  top-1 is), or the class fixed at export; it is left out where the map explains no class
  (``eigencam``, ``sum``).

  Both images are at the original resolution, computed exactly as ``explain-run`` computes
  them (decode, fit, run, map back, blend), or at most ``--max-overlay-side`` on the longer
  side: ``height``/``width`` are the file's, and ``drawn_height``/``drawn_width`` (only where
  it was drawn smaller) the PNGs'. ``batch_size`` is how many requests shared the model call.
  Statuses: 400 empty body, not an image, bad query; 413 body over the byte limit or image
  over the pixel limit (from its header, before decoding); 404 unknown path; 405 wrong method;
  500 the model failed; 503 (with ``Retry-After``) the replica holds its most requests
  already; 504 the request ran past ``--request-timeout`` (:mod:`.admission`).

  A ``--top-k K`` export explains the K best classes of each image, picked by its graph, so
  its answer carries K maps, best first, in ``explained`` instead of the two top-level PNGs
  (``class`` other than -1 is a 400)::

      {"topk": [...], "height": 300, "width": 451, "batch_size": 1,
       "explained": [{"class": 285, "label": "Egyptian cat", "score": 0.777125,
                      "overlay_png": "<as explain-run's NAME.overlay.png>",
                      "heatmap_png": "<as NAME.heatmap.png>"},
                     {"class": 281, "label": "tabby", "score": 0.1,
                      "overlay_png": "<as NAME.top2.overlay.png>", ...}, ...]}

  ``score`` is the softmax score, as in ``topk``; ``overlay`` and ``heatmap`` pick the PNGs of
  every map.

  A segmentation export (per-pixel scores) names the region of the class its heatmap explains
  instead of a ``topk`` (:mod:`..regions`; ``topk`` is how many classes ``predicted`` lists,
  ``class`` the class to explain, as above), and its overlay outlines that region::

      {"class": 3, "label": "cat", "pixel_share": 0.256, "predicted": [{"class": 0,
       "label": "background", "pixel_share": 0.744}, {"class": 3, ...}],
       "height": 300, "width": 451, "batch_size": 1, "overlay_png": "...", "heatmap_png": "..."}

  ``pixel_share`` is the fraction of the image's pixels predicted as the class; where it is 0
  a ``note`` says so (the heatmap is then flat).

  A detection export answers its ``detections`` as ``explain-run`` lists them in
  ``predictions.jsonl`` (:func:`answer_detections`): the box in the file's pixels, class,
  label, score, best first; ``detections=K`` keeps the K best (``topk`` and ``class`` are a
  400). A Mask R-CNN export's detections each have their ``mask`` too, COCO RLE in the file's
  pixels (``{"size": [h, w], "counts": "..."}``, :mod:`..masks`), outlined on the overlay. The
  overlay is the best detection's map with the boxes answered drawn on it; the heatmap that
  map. No detection: ``[]``, the image as it is, and a flat heatmap::

      {"detections": [{"box": [12.5, 8.0, 211.4, 290.1], "class": 15, "label": "cat",
                       "score": 0.91}, ...],
       "height": 300, "width": 451, "batch_size": 1, "overlay_png": "...", ...}
- ``GET /healthz``: model path, backend, providers, input size, task (``classification``,
  ``segmentation`` or ``detection``), classes, method, layer, top_k (null unless a top-k
  export), max_detections (null unless a detector), threads, replica, and whether torch is
  loaded (never, for ONNX).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import OptionError, first_line
from .. import images, overlay, pipeline
from .admission import DEFAULT_MAX_QUEUED, DEFAULT_TIMEOUT_S, Admission
from .model import Model, health, open_model
from .request import (
    QUERY_PARAMS,
    ROUTES,
    SEND,
    Query,
    Reply,
    RequestError,
    check_length,
    image_bytes,
    parse_query,
    route,
    too_long,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_DECODING",
    "QUERY_PARAMS",
    "ROUTES",
    "Handler",
    "Model",
    "Outputs",
    "Prepared",
    "Query",
    "Reply",
    "RequestError",
    "ServeOptions",
    "answer",
    "answer_detections",
    "check_length",
    "health",
    "image_bytes",
    "internal_error",
    "model_failure",
    "open_model",
    "parse_query",
    "png_base64",
    "prepare",
    "route",
    "run_model",
    "too_long",
]

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_DECODING = 2  # explain-serve's default: the replica's CPUs, at least 1


@dataclass(frozen=True)
class ServeOptions(pipeline.OverlayOptions):
    """How every image is answered: :class:`~..pipeline.OverlayOptions` (the same meanings as
    explain-run's flags), the largest request body, and what bounds a replica in all
    (:mod:`.admission`)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_decoding: int = DEFAULT_MAX_DECODING  # images decoded or drawn at once per replica
    max_queued: int = DEFAULT_MAX_QUEUED  # requests held beyond those: more get 503
    request_timeout_s: float | None = DEFAULT_TIMEOUT_S  # longer gets 504; None: no deadline

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_decoding < 1:
            raise OptionError("max_decoding", "{name} must be at least 1")
        if self.max_queued < 0:
            raise OptionError("max_queued", "{name} must not be negative")
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise OptionError("request_timeout_s", "{name} must be positive")


def png_base64(image: np.ndarray) -> str:
    """A uint8 image (gray, or BGR as OpenCV writes it) as a base64 PNG."""
    return base64.b64encode(overlay.encode_png(image)).decode("ascii")


Prepared = pipeline.Fitted  # a decoded image and its graph input


def prepare(body: bytes, model: Model, opts: ServeOptions) -> Prepared:
    """Decode a request body and fit it to the graph (RequestError 400/413 if it cannot be)."""
    if not body:
        raise RequestError(400, "empty body; send the image file's bytes (PNG, JPEG, ...)")
    if len(body) > opts.max_body_bytes:
        raise RequestError(413, too_long(len(body), opts.max_body_bytes))
    try:
        return pipeline.decode(body, model.size, opts)
    except images.PixelLimitError as exc:
        raise RequestError(413, str(exc)) from exc
    except images.ImageError as exc:
        how = f"; {SEND}" if str(exc).startswith("not a readable image") else ""
        raise RequestError(400, f"{exc}{how}") from exc


def run_model(
    model: Model, inputs: Sequence[np.ndarray], classes: Sequence[int] = ()
) -> list[pipeline.Inferred] | list[pipeline.Detected]:
    """One model call for a batch of graph inputs: logits, heatmaps (and a top-k graph's
    classes) per image (:func:`.pipeline.infer`), each explaining its class in ``classes`` (-1,
    or none: top-1); a detector's detections and maps (:func:`.pipeline.infer_detections`)."""
    if model.meta.task == "detection":
        return pipeline.infer_detections(model.artifact, inputs)
    chosen = None if all(c == -1 for c in classes) else np.asarray(classes, np.int64)
    return pipeline.infer(model.artifact, inputs, chosen)


def answer(
    model: Model,
    image: Prepared,
    logits: np.ndarray,
    heatmap: np.ndarray,
    query: Query,
    opts: ServeOptions,
    batch_size: int = 1,
    classes: np.ndarray | None = None,
    faithful: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The JSON for one image, from the graph's outputs: each heatmap (``[H, W]``, or a top-k
    graph's ``[K, H, W]``) mapped back to the original resolution, and blended over the
    original pixels, as explain-run does, and the class it explains (``classes``, as
    :func:`.pipeline.infer` gives them) in ``explained``; a segmentation graph's region
    (per-pixel ``logits``, its class in ``classes``) named and outlined."""
    done = pipeline.render(
        image, logits, heatmap, query.topk, model.labels, opts, query.overlay, classes, faithful
    )
    (h, w), drawn = image.original, image.drawn
    body: dict[str, Any] = {
        **({"topk": done.topk} if done.region is None else done.region),
        "height": int(h),
        "width": int(w),
        **({} if drawn == (h, w) else {"drawn_height": drawn[0], "drawn_width": drawn[1]}),
        "batch_size": batch_size,
    }
    if model.meta.top_k is None or done.explained is None:
        named = {} if done.explained is None else {"explained": done.explained}
        return {**body, **named, **_pngs(done.maps[0], query)}
    maps = [{**e, **_pngs(d, query)} for e, d in zip(done.explained, done.maps, strict=True)]
    return {**body, "explained": maps}


def answer_detections(
    model: Model,
    image: Prepared,
    found: pipeline.Detected,
    query: Query,
    opts: ServeOptions,
    batch_size: int = 1,
) -> dict[str, Any]:
    """The JSON for one image of a detection export: its ``detections`` as explain-run lists
    them (:func:`.pipeline.render_detections`; the ``query.detections`` best, or all), and the
    best detection's map, blended with those boxes drawn."""
    if query.detections is not None:
        found = found._replace(count=min(found.count, query.detections))
    done = pipeline.render_detections(image, found, model.labels, opts)
    (h, w), drawn = image.original, image.drawn
    best = done.maps[0] if query.overlay else done.maps[0]._replace(blended=None)
    return {
        "detections": done.detections,
        "height": int(h),
        "width": int(w),
        **({} if drawn == (h, w) else {"drawn_height": drawn[0], "drawn_width": drawn[1]}),
        "batch_size": batch_size,
        **_pngs(best, query),
    }


def _pngs(drawn: pipeline.Drawn, query: Query) -> dict[str, str]:
    """``overlay_png`` (where drawn) and ``heatmap_png`` (where asked) of one map."""
    out = {}
    if drawn.blended is not None:
        out["overlay_png"] = png_base64(drawn.blended)
    if query.heatmap:
        out["heatmap_png"] = png_base64(overlay.levels(drawn.heatmap))
    return out


def model_failure(exc: Exception) -> Reply:
    """The 500 reply for a model call that raised."""
    return Reply(500, {"error": f"the model failed: {first_line(exc)}"})


def internal_error(exc: Exception) -> Reply:
    """The 500 reply for any other failure; the traceback goes to the server's log."""
    logging.getLogger("ray.serve").error("explain-serve: request failed", exc_info=exc)
    return Reply(500, {"error": f"internal error: {first_line(exc)}"})


# one image's graph outputs (a detector's: its detections), and the batch's size
Outputs = tuple[pipeline.Inferred | pipeline.Detected, int]


class Handler:
    """A replica's request handling, no Ray: :meth:`handle` answers one HTTP request (route,
    query, admission, body, then the image); :meth:`explain` one image (:func:`prepare` and
    :func:`answer` in threads, at most ``opts.max_decoding`` at once, concurrently with other
    requests; the model call through ``infer``); :meth:`run_batch` is one model call for a batch
    of graph inputs. ``infer`` takes one graph input and returns its :data:`Outputs`: in
    :mod:`.ray_app`, the deployment's ``@serve.batch`` method, which calls :meth:`run_batch`.
    ``info``: more ``/healthz`` fields. Requests beyond the replica's most get 503, those past
    the deadline 504 (:class:`.admission.Admission`)."""

    def __init__(
        self,
        model: Model,
        opts: ServeOptions,
        infer: Callable[[tuple[np.ndarray, int]], Awaitable[Outputs]],
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.model, self.opts, self.infer = model, opts, infer
        self.info = dict(info or {})
        self.admission = Admission(opts.max_decoding, opts.max_queued, opts.request_timeout_s)

    async def handle(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        content_length: str | None,
        chunks: AsyncIterable[bytes],
        content_type: str | None = None,
    ) -> Reply:
        """The reply to one request; ``chunks`` is its body, read up to the byte limit: the
        image's bytes, or a form that holds them (``content_type`` ``multipart/form-data``)."""
        try:
            if route(method, path) == "/healthz":
                return Reply(200, {**health(self.model), **self.info})
            takes = "class_index" in self.model.artifact.input_names
            meta = self.model.meta
            query = parse_query(params, self.model.num_classes, takes, meta.top_k, meta.task)
            check_length(content_length, self.opts.max_body_bytes)
            with self.admission.admit():  # 503 at once where the replica is full
                work = self._read_and_explain(chunks, content_type, query)
                return await self.admission.within(work)  # 504 past the deadline
        except RequestError as exc:
            return exc.reply()
        except Exception as exc:
            return internal_error(exc)

    async def _read_and_explain(
        self, chunks: AsyncIterable[bytes], content_type: str | None, query: Query
    ) -> Reply:
        limit = self.opts.max_body_bytes
        body = bytearray()
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                raise RequestError(413, too_long(len(body), limit))
        data = [await asyncio.to_thread(image_bytes, content_type, bytes(body))]
        del body
        return await self._explain(data, query)

    async def explain(self, body: bytes, query: Query) -> Reply:
        """The reply to one ``/explain`` body: 200, a 4xx for a bad image, 500 if it fails."""
        return await self._explain([body], query)

    async def _explain(self, data: list[bytes], query: Query) -> Reply:
        """:meth:`explain` of ``data[0]``, which it lets go once decoded."""
        slots = self.admission
        try:
            image = await slots.run(prepare, data.pop(), self.model, self.opts)
        except RequestError as exc:
            return exc.reply()
        except Exception as exc:
            return internal_error(exc)
        try:
            out, n = await self.infer((image.input, query.class_index))
        except Exception as exc:
            return model_failure(exc)
        try:
            if isinstance(out, pipeline.Detected):
                found = await slots.run(
                    answer_detections, self.model, image, out, query, self.opts, n
                )
                return Reply(200, found)
            result = await slots.run(
                answer,
                self.model,
                image,
                out.logits,
                out.heatmaps,
                query,
                self.opts,
                n,
                out.classes,
                out.faithful,
            )
        except Exception as exc:
            return internal_error(exc)
        return Reply(200, result)

    async def run_batch(self, inputs: Sequence[tuple[np.ndarray, int]]) -> list[Outputs]:
        """One model call (in a thread) for a batch of (graph input, class): each image's
        outputs and the batch's size."""
        outputs = await asyncio.to_thread(run_model, self.model, *zip(*inputs, strict=True))
        return [(out, len(inputs)) for out in outputs]
