"""An image's size from its file header, without decoding: what bounds a decode's memory.

A 658 KB PNG can hold 15000 x 15000 pixels (675 MB decoded): the size has to be read, and
refused, before any decoder allocates. :func:`image_size` reads it for every format
:data:`.images.IMAGE_EXTENSIONS` names: PNG, JPEG, WebP, BMP, GIF, TIFF (and BigTIFF), the
Netpbm family (PBM, PGM, PPM, PAM) and JPEG 2000 (JP2 and raw codestreams). It never raises on
malformed data; it returns None, and the caller refuses what it cannot size.
"""

from __future__ import annotations

import re
import struct

__all__ = ["FORMATS", "image_format", "image_size"]

FORMATS = ("PNG", "JPEG", "WebP", "BMP", "GIF", "TIFF", "Netpbm", "JPEG 2000")

_PNG = b"\x89PNG\r\n\x1a\n"
_JP2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K = b"\xff\x4f\xff\x51"


def image_format(data: bytes) -> str | None:
    """The format's name (one of :data:`FORMATS`) from the file's first bytes, or None."""
    if data.startswith(_PNG):
        return "PNG"
    if data[:2] == b"\xff\xd8":
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM":
        return "BMP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if len(data) >= 3 and data[0:1] == b"P" and data[1:2] in b"1234567" and data[2:3].isspace():
        return "Netpbm"
    if data.startswith(_JP2) or data.startswith(_J2K):
        return "JPEG 2000"
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from the header of ``data`` (any of :data:`FORMATS`), or None where
    the format is another or the header is cut short or malformed."""
    reader = _READERS.get(image_format(data) or "")
    try:
        size = reader(data) if reader else None
    except (struct.error, IndexError, KeyError, ValueError):
        return None
    if size is None or size[0] < 0 or size[1] < 0:
        return None
    return size


def _png(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    return h, w


def _jpeg(data: bytes) -> tuple[int, int] | None:
    """Walk the markers to the first start-of-frame (SOF0–SOF15 but DHT, JPG and DAC)."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        if data[i + 1] == 0xFF:  # fill bytes may pad a marker
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return h, w
        i += 2 + length
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: 14-bit sizes
        w, h = struct.unpack("<HH", data[26:30])
        return h & 0x3FFF, w & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14 bits each, minus one
        bits = struct.unpack("<I", data[21:25])[0]
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: the canvas, 24 bits each, minus one
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return h, w
    return None


def _bmp(data: bytes) -> tuple[int, int] | None:
    if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        w, h = struct.unpack("<HH", data[18:22])
        return h, w
    w, h = struct.unpack("<ii", data[18:26])
    return abs(h), abs(w)


def _gif(data: bytes) -> tuple[int, int] | None:
    w, h = struct.unpack("<HH", data[6:10])
    return h, w


def _tiff(data: bytes) -> tuple[int, int] | None:
    """The first image's ImageWidth (256) and ImageLength (257) tags, in TIFF or BigTIFF."""
    end = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(end + "H", data[2:4])[0] == 43
    if big:
        offset = struct.unpack(end + "Q", data[8:16])[0]
        count = struct.unpack(end + "Q", data[offset : offset + 8])[0]
        start, step, head = offset + 8, 20, end + "HHQ"
    else:
        offset = struct.unpack(end + "I", data[4:8])[0]
        count = struct.unpack(end + "H", data[offset : offset + 2])[0]
        start, step, head = offset + 2, 12, end + "HHI"
    found: dict[int, int] = {}
    value_at = 12 if big else 8
    for k in range(min(count, 4096)):
        entry = data[start + k * step : start + (k + 1) * step]
        tag, kind, _ = struct.unpack(head, entry[:value_at])
        if tag in (256, 257):
            code = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if code is None:
                return None
            found[tag] = struct.unpack(
                end + code, entry[value_at : value_at + struct.calcsize(code)]
            )[0]
        if len(found) == 2:
            return found[257], found[256]
    return None


_PNM = re.compile(rb"P[1-6](?:\s+|#[^\n]*\n)+(\d+)(?:\s+|#[^\n]*\n)+(\d+)\s")


def _netpbm(data: bytes) -> tuple[int, int] | None:
    """PBM/PGM/PPM (P1–P6): width and height after the magic, comments skipped, each ended by
    whitespace (so a cut number is not read); PAM (P7): its whole WIDTH and HEIGHT lines."""
    head = data[:4096]
    if head[1:2] == b"7":
        lines = head.split(b"\n")[1:-1]  # the last one may be cut
        fields = dict(line.split(None, 1) for line in lines if len(line.split(None, 1)) == 2)
        return int(fields[b"HEIGHT"]), int(fields[b"WIDTH"])
    match = _PNM.match(head)
    return (int(match[2]), int(match[1])) if match else None


def _jpeg2000(data: bytes) -> tuple[int, int] | None:
    """JP2: the ``ihdr`` box inside ``jp2h`` (height, width); a raw codestream: its SIZ marker
    (the reference grid less its offsets)."""
    if data.startswith(_J2K):
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[8:24])
        return ysiz - yo, xsiz - xo
    i = 0
    while i + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[i : i + 8])
        if kind == b"jp2h":
            i += 8  # into the super box
            continue
        if kind == b"ihdr":
            h, w = struct.unpack(">II", data[i + 8 : i + 16])
            return h, w
        if length < 8:  # 0 (to the end) or 1 (64-bit length): no ihdr before them in practice
            return None
        i += length
    return None


_READERS = {
    "PNG": _png,
    "JPEG": _jpeg,
    "WebP": _webp,
    "BMP": _bmp,
    "GIF": _gif,
    "TIFF": _tiff,
    "Netpbm": _netpbm,
    "JPEG 2000": _jpeg2000,
}
