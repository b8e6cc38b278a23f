"""Read images safely, and map between an image's geometry and the graph's input size.

Colour order: :func:`read_bgr` returns OpenCV's BGR; :func:`to_input` returns the graph's RGB.

Two ways to fit an image to the export size ``(H, W)``:

- ``stretch`` (default): resize to ``(H, W)``, ignoring the aspect ratio. Classifiers are
  usually trained on such resized crops, and every input pixel is used.
- ``pad``: scale by ``s = min(H/h, W/w)`` to keep the aspect ratio, centre, pad with black.

Either way :func:`map_back` returns the heatmap at the original ``h × w``, so overlays are drawn
on the original pixels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from . import image_header, tiff

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_SIDE",
    "IMAGE_EXTENSIONS",
    "RESIZE_MODES",
    "Decoded",
    "Geometry",
    "ImageError",
    "PixelLimitError",
    "decode_bgr",
    "decode_capped",
    "fit",
    "header_size",
    "list_images",
    "map_back",
    "quiet_decoder_warnings",
    "read_bgr",
    "read_capped",
    "to_input",
]

# 50 megapixels hold any phone photo (a 50 MP sensor saves 8160 x 6120 = 49.9 MP) and cost
# 150 MB decoded as 8-bit BGR (up to 400 MB while a 16-bit RGBA PNG converts): what one
# request may cost a server. Larger scans need --max-pixels.
DEFAULT_MAX_PIXELS = 50_000_000
# Overlays and heatmaps are drawn at most this long on their longer side (4096 x 3072 holds a
# 4K screen's worth): an 8160 x 6120 photo's overlay costs 38 MB instead of 150 MB per copy.
DEFAULT_MAX_SIDE = 4096
RESIZE_MODES = ("stretch", "pad")
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pnm",
    ".jp2",
)


class ImageError(Exception):
    """This file cannot be used as an image; the message says why, in one line."""


class PixelLimitError(ImageError):
    """The image has more pixels than allowed (a server answers 413)."""


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: the last bytes of a whole PNG
_NOT_AN_IMAGE = "not a readable image (corrupt, truncated, or not an image format)"


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from the file's header, without decoding (:mod:`.image_header`: PNG,
    JPEG, WebP, BMP, GIF, TIFF, Netpbm, JPEG 2000); else None."""
    return image_header.image_size(data)


def read_bgr(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode the file at ``path`` (see :func:`decode_bgr`); :class:`ImageError` also
    for a file that cannot be read."""
    return decode_bgr(_read(path), max_pixels)


def read_capped(
    path: str, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = DEFAULT_MAX_SIDE
) -> Decoded:
    """Read and decode the file at ``path`` no larger than ``max_side`` (see
    :func:`decode_capped`); :class:`ImageError` also for a file that cannot be read."""
    return decode_capped(_read(path), max_pixels, max_side)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from exc


def quiet_decoder_warnings() -> None:
    """Keep the decoders' own lines off stderr, for this process: OpenCV's (``[ WARN:0@…]
    global grfmt_png.cpp …`` for a truncated file, ``[ERROR:0@…] … TIFF_Error`` for a damaged
    TIFF) and tifffile's log. The commands report a bad file in their own one line. A command
    calls this once at start; the library itself leaves these settings alone."""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def decode_bgr(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file's bytes to uint8 BGR ``[h, w, 3]``.

    Grayscale, RGBA (alpha dropped), 16-bit (scaled to 8-bit) and palette images all come back
    as 8-bit BGR; so do TIFFs of float samples in [0, 1] (:mod:`.tiff`, which says why where a
    TIFF cannot be read). Raises :class:`ImageError` for empty, corrupt or non-image data, and
    :class:`PixelLimitError` for an image of more than ``max_pixels`` pixels (checked from the
    header before anything is decoded, so a small file that decodes to gigabytes costs nothing;
    data whose size its header does not give is refused undecoded).
    """
    return _decode(data, _checked_size(data, max_pixels), 1)


class Decoded(NamedTuple):
    """An image decoded no larger than asked, and the size of the file's own pixels."""

    bgr: np.ndarray  # uint8 [h', w', 3], the longer side at most the cap
    original: tuple[int, int]  # (h, w) of the file (after its EXIF orientation)


def decode_capped(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = DEFAULT_MAX_SIDE
) -> Decoded:
    """:func:`decode_bgr`, shrunk (area averaging) so its longer side is at most ``max_side``
    (None or 0: as decoded). A JPEG at least twice too large is decoded at 1/2, 1/4 or 1/8 of
    its size by libjpeg's DCT scaling, so its full size is never held in memory."""
    h, w = size = _checked_size(data, max_pixels)
    factor = 1
    if max_side and image_header.image_format(data) == "JPEG":
        while factor < 8 and max(h, w) // (2 * factor) >= max_side:
            factor *= 2
    image = _decode(data, size, factor)
    dh, dw = image.shape[:2]
    original = (w, h) if (dh > dw) != (h > w) and h != w else (h, w)  # EXIF turned it
    if max_side and max(dh, dw) > max_side:
        s = max_side / max(dh, dw)
        target = (max(1, round(dw * s)), max(1, round(dh * s)))
        image = cv2.resize(image, target, interpolation=cv2.INTER_AREA)
    return Decoded(image, original)


def _checked_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """The header's ``(h, w)``, within ``max_pixels`` (:class:`ImageError` otherwise)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    size = header_size(data)
    if size is None:
        kind = image_header.image_format(data)
        if kind is None:
            raise ImageError(_NOT_AN_IMAGE)
        raise ImageError(f"not a readable image (a {kind} file with a cut-short or corrupt header)")
    _check_pixels(size, max_pixels)
    return size


_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
_REDUCED[8] = cv2.IMREAD_REDUCED_COLOR_8


def _decode(data: bytes, size: tuple[int, int], factor: int) -> np.ndarray:
    """OpenCV's decode at ``1/factor`` of the size (JPEG only for ``factor > 1``); the result is
    checked against the header's ``size`` (a decoder must not give more)."""
    if data.startswith(_PNG_SIGNATURE) and _PNG_END not in data:
        # cut short: libpng would print "libpng error: ..." on stderr from C, before failing
        raise ImageError(_NOT_AN_IMAGE)
    is_tiff = image_header.image_format(data) == "TIFF"
    if is_tiff and tiff.signed_samples(data):  # OpenCV reads them, but as unsigned: darker
        try:
            image = tiff.decode_tiff(data)
        except ValueError as exc:
            raise ImageError(str(exc)) from exc
    else:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[factor])
    if (image is None or image.size == 0) and is_tiff:
        try:  # float samples, say: OpenCV reads 8- and 16-bit integer ones only
            image = tiff.decode_tiff(data)
        except ValueError as exc:
            raise ImageError(str(exc)) from exc
    if image is None or image.size == 0:
        raise ImageError(_NOT_AN_IMAGE)
    if image.shape[0] * image.shape[1] > size[0] * size[1]:
        raise ImageError(f"{_NOT_AN_IMAGE[:-1]}: it decodes larger than its header says)")
    return image


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    h, w = size
    if h * w > max_pixels:
        raise PixelLimitError(
            f"{w}x{h} is {h * w:,} pixels, over the limit of {max_pixels:,}; "
            "raise --max-pixels to allow it"
        )


@dataclass(frozen=True)
class Geometry:
    """Where the original image sits inside the graph input."""

    original: tuple[int, int]  # (h, w) of the file
    size: tuple[int, int]  # (H, W) of the graph input
    content: tuple[int, int, int, int]  # (top, left, height, width) of the image inside it


def fit(original: tuple[int, int], size: tuple[int, int], mode: str = "stretch") -> Geometry:
    """The placement of an ``original`` (h, w) image in a ``size`` (H, W) input."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode '{mode}'; choose one of {', '.join(RESIZE_MODES)}")
    (h, w), (hh, ww) = original, size
    if mode == "stretch":
        return Geometry(original, size, (0, 0, hh, ww))
    s = min(hh / h, ww / w)
    ch, cw = max(1, min(hh, round(h * s))), max(1, min(ww, round(w * s)))
    return Geometry(original, size, ((hh - ch) // 2, (ww - cw) // 2, ch, cw))


def _resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Area averaging when shrinking (no aliasing), bilinear when enlarging."""
    h, w = hw
    shrink = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def to_input(
    bgr: np.ndarray, size: tuple[int, int], mode: str = "stretch"
) -> tuple[np.ndarray, Geometry]:
    """BGR uint8 image -> graph input: float32 ``[3, H, W]``, RGB, in [0, 1]; and its geometry."""
    geometry = fit(bgr.shape[:2], size, mode)
    top, left, ch, cw = geometry.content
    canvas = np.zeros((*size, 3), np.uint8)
    canvas[top : top + ch, left : left + cw] = _resize(bgr, (ch, cw))
    rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0, geometry


def map_back(heatmap: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A ``[H, W]`` heatmap of the graph input -> ``[h, w]`` over the original image (bilinear)."""
    top, left, ch, cw = geometry.content
    crop = np.ascontiguousarray(heatmap[top : top + ch, left : left + cw], dtype=np.float32)
    h, w = geometry.original
    return np.clip(cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def list_images(folder: str) -> tuple[list[str], int]:
    """Files under ``folder`` and its subfolders with an image extension, in sorted order (hidden
    files and folders left out); and how many other files there were."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return images, len(files) - len(images)
