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
import struct
from dataclasses import dataclass

import cv2
import numpy as np

from . import tiff

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "RESIZE_MODES",
    "Geometry",
    "ImageError",
    "PixelLimitError",
    "decode_bgr",
    "fit",
    "header_size",
    "list_images",
    "map_back",
    "quiet_decoder_warnings",
    "read_bgr",
    "to_input",
]

DEFAULT_MAX_PIXELS = 20_000 * 20_000
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


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from a PNG, JPEG, BMP or GIF header, without decoding; else None."""
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return h, w
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(h), abs(w)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return h, w
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            if data[i + 1] == 0xFF:  # fill bytes may pad a marker
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack(">H", data[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return h, w
            i += 2 + length
    return None


def read_bgr(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode the file at ``path`` (see :func:`decode_bgr`); :class:`ImageError` also
    for a file that cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from exc
    return decode_bgr(data, max_pixels)


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
    header before decoding where the format allows: PNG, JPEG, BMP, GIF; else after).
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    size = header_size(data)
    if size is not None:
        _check_pixels(size, max_pixels)
    if data.startswith(_PNG_SIGNATURE) and _PNG_END not in data:
        # cut short: libpng would print "libpng error: ..." on stderr from C, before failing
        raise ImageError("not a readable image (corrupt, truncated, or not an image format)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if (image is None or image.size == 0) and tiff.is_tiff(data):
        try:  # float samples, say: OpenCV reads 8- and 16-bit integer ones only
            image = tiff.decode_tiff(data, lambda size: _check_pixels(size, max_pixels))
        except ValueError as exc:
            raise ImageError(str(exc)) from exc
    if image is None or image.size == 0:
        raise ImageError("not a readable image (corrupt, truncated, or not an image format)")
    _check_pixels(image.shape[:2], max_pixels)
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
