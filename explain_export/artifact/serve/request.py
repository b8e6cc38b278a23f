"""What an HTTP request asks of explain-serve, checked before its body is read: the route, the
query string (:func:`parse_query` -> :class:`Query`) and the declared length; the image in a
body sent as a form (:func:`image_bytes`); and the replies that refuse it (:class:`RequestError`
-> :class:`Reply`). Plain code: no Ray, no model.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "QUERY_PARAMS",
    "ROUTES",
    "SEND",
    "Query",
    "Reply",
    "RequestError",
    "check_length",
    "image_bytes",
    "parse_query",
    "route",
    "too_long",
]

ROUTES = {"/explain": "POST", "/healthz": "GET"}
QUERY_PARAMS = ("overlay", "heatmap", "topk", "class", "detections")
_TRUE = ("1", "true", "yes", "on", "")
_FALSE = ("0", "false", "no", "off")
_COUNT = re.compile(r"\s*[0-9]{1,9}\s*")  # ASCII digits, few enough for int()


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}

    def reply(self) -> Reply:
        return Reply(self.status, {"error": str(self)}, self.headers or None)


class Reply(NamedTuple):
    """An HTTP answer: status, JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Query:
    """What one ``/explain`` request asks for."""

    overlay: bool = True
    heatmap: bool = False
    topk: int = 5
    class_index: int = -1  # the class the heatmap explains; -1: the top-1
    detections: int | None = None  # a detector's: at most this many detections; None: all


def route(method: str, path: str) -> str:
    """The route for a request (``/explain`` or ``/healthz``); RequestError 404/405 otherwise."""
    path = path.rstrip("/") or "/"
    if path not in ROUTES:
        raise RequestError(404, f"no route {path[:100]!r}; use POST /explain or GET /healthz")
    allowed = ROUTES[path]
    if method.upper() != allowed:
        raise RequestError(
            405, f"{method} {path} is not allowed; use {allowed} {path}", {"Allow": allowed}
        )
    return path


def _flag(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise RequestError(400, f"query parameter {name}={value!r} is not a boolean; use 1 or 0")


def parse_query(
    params: Mapping[str, str],
    num_classes: int | None = None,
    takes_class: bool = True,
    top_k: int | None = None,
    task: str | None = None,
) -> Query:
    """``overlay``, ``heatmap``, ``topk``, ``class`` and a detector's ``detections`` from the
    query string; RequestError 400 if bad (``class`` where the graph has no class input, or is
    a ``top_k`` graph, too; ``topk`` or ``class`` of a ``detection`` task, ``detections`` of
    any other)."""
    unknown = sorted(set(params) - set(QUERY_PARAMS))
    if unknown:
        raise RequestError(
            400, f"unknown query parameter {unknown[0]!r}; use {', '.join(QUERY_PARAMS)}"
        )
    if task == "detection":
        return _detection_query(params)
    if "detections" in params:
        raise RequestError(
            400, "query parameter detections is for a detection model; this one answers topk"
        )
    default = Query()
    topk = min(default.topk, num_classes or default.topk)
    if "topk" in params:
        raw, top = params["topk"], num_classes or 1_000_000
        if not _COUNT.fullmatch(raw) or not 1 <= int(raw) <= top:
            raise RequestError(400, f"query parameter topk={raw!r} must be an integer 1 to {top}")
        topk = int(raw)
    chosen, top = params.get("class", "-1").strip(), (num_classes or 1_000_000) - 1
    if not re.fullmatch(r"-1|[0-9]{1,9}", chosen) or int(chosen) > top:
        raise RequestError(400, f"query parameter class={chosen!r} must be an integer -1 to {top}")
    if int(chosen) != -1 and top_k is not None:
        raise RequestError(
            400,
            f"this model explains the {top_k} best classes of each image, which its graph "
            "picks; drop class",
        )
    if int(chosen) != -1 and not takes_class:
        raise RequestError(400, "this model takes no class; export it with --class-input")
    return Query(
        overlay=_flag("overlay", params["overlay"]) if "overlay" in params else default.overlay,
        heatmap=_flag("heatmap", params["heatmap"]) if "heatmap" in params else default.heatmap,
        topk=topk,
        class_index=int(chosen),
    )


def _detection_query(params: Mapping[str, str]) -> Query:
    """A detector's query: ``overlay``, ``heatmap`` and ``detections`` (K >= 1: the K best)."""
    if "topk" in params:
        raise RequestError(
            400, "this model is a detector: it answers its detections, not a topk; use detections"
        )
    if "class" in params:
        raise RequestError(
            400, "this model is a detector: its map j explains its detection j; drop class"
        )
    default, limit = Query(), None
    if "detections" in params:
        raw = params["detections"]
        if not _COUNT.fullmatch(raw) or int(raw) < 1:
            raise RequestError(
                400, f"query parameter detections={raw!r} must be a positive integer"
            )
        limit = int(raw)
    return Query(
        overlay=_flag("overlay", params["overlay"]) if "overlay" in params else default.overlay,
        heatmap=_flag("heatmap", params["heatmap"]) if "heatmap" in params else default.heatmap,
        detections=limit,
    )


def check_length(content_length: str | None, limit: int) -> None:
    """Refuse a declared body length over ``limit`` before reading it (RequestError 413/400)."""
    if content_length is None:
        return
    if not re.fullmatch(r"\s*[0-9]+\s*", content_length):
        raise RequestError(400, f"bad Content-Length {content_length[:40]!r}")
    declared = content_length.strip().lstrip("0") or "0"
    if len(declared) > 15:  # more than any limit, and int() of it would be slow
        raise RequestError(413, too_long(f"{declared[:15]}...", limit))
    if int(declared) > limit:
        raise RequestError(413, too_long(int(declared), limit))


def too_long(size: int | str, limit: int) -> str:
    size = f"{size:,}" if isinstance(size, int) else size
    return f"body of {size} bytes is over the limit of {limit:,}; raise --max-body-mb to allow it"


SEND = (  # how to send an image, for the replies that refuse a body
    "send the image as the body (curl --data-binary @cat.png) or as one file field "
    "(curl -F file=@cat.png)"
)


def image_bytes(content_type: str | None, body: bytes) -> bytes:
    """The image in a request body: the body itself, or, for ``multipart/form-data`` (an HTML
    form, ``curl -F file=@cat.png``), its one file part (a part with a file name; else its one
    part). The body is already within the byte limit; RequestError 400 for a form without
    exactly one such part."""
    if not content_type or content_type.split(";")[0].strip().lower() != "multipart/form-data":
        return body
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not form.is_multipart() or not form.get_boundary():
        raise RequestError(400, f"a multipart/form-data body without its parts; {SEND}")
    parts = [p for p in form.iter_parts() if not p.is_multipart()]
    files = [p for p in parts if p.get_filename()] or parts
    if len(files) != 1:
        raise RequestError(
            400, f"a form with {len(files)} file fields; {SEND}, one image per request"
        )
    data = files[0].get_payload(decode=True)
    return data if isinstance(data, bytes) else b""
