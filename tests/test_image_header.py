"""An image's size from its header (artifact/image_header.py), and the pixel cap applied from it
before anything is decoded: real files encoded by OpenCV, crafted headers, every cut."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from explain_export.artifact import image_header, images, samples

PHOTO = cv2.imread(samples.photo_path("chelsea.png"))[:, :449]  # 300 x 449: odd, not square


def _encoded(ext: str, params: list[int] | None = None) -> bytes:
    image = cv2.cvtColor(PHOTO, cv2.COLOR_BGR2GRAY) if ext in (".pgm", ".pbm") else PHOTO
    ok, buf = cv2.imencode(ext, image, params or [])
    assert ok
    return buf.tobytes()


ENCODED = {
    "png": (".png", None),
    "jpeg": (".jpg", None),
    "webp-lossy": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
    "webp-lossless": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
    "bmp": (".bmp", None),
    "tiff": (".tif", None),
    "tiff-raw": (".tiff", [cv2.IMWRITE_TIFF_COMPRESSION, 1]),
    "ppm": (".ppm", None),
    "pgm": (".pgm", None),
    "pbm": (".pbm", None),
    "pam": (".pam", None),
    "jp2": (".jp2", None),
}


@pytest.mark.parametrize("name", list(ENCODED))
def test_the_header_gives_the_size_opencv_decodes(name):
    data = _encoded(*ENCODED[name])
    assert image_header.image_size(data) == PHOTO.shape[:2]
    assert images.decode_bgr(data).shape[:2] == PHOTO.shape[:2]


def test_every_cut_of_every_file_gives_a_size_or_none_and_never_raises():
    for name, spec in ENCODED.items():
        data = _encoded(*spec)
        for cut in range(0, min(len(data), 400)):
            size = image_header.image_size(data[:cut])
            assert size is None or size == PHOTO.shape[:2], (name, cut)


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def _jpeg_header(w: int, h: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, h, w, 3) + b"\x01\x22\x00" * 3
    return b"\xff\xd8\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9 + sof


def _webp_vp8x(w: int, h: int) -> bytes:
    body = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4
    return (
        b"RIFF\x00\x00\x00\x00WEBP"
        + body
        + (w - 1).to_bytes(3, "little")
        + (h - 1).to_bytes(3, "little")
    )


def _webp_vp8(w: int, h: int) -> bytes:
    frame = b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", w, h)
    return b"RIFF\x00\x00\x00\x00WEBPVP8 " + struct.pack("<I", 10) + frame


def _bigtiff(w: int, h: int) -> bytes:
    entries = [struct.pack("<HHQQ", 256, 16, 1, w), struct.pack("<HHQQ", 257, 4, 1, h)]
    return b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", 2) + b"".join(entries)


def _tiff_be(w: int, h: int) -> bytes:
    entries = [struct.pack(">HHIHH", 256, 3, 1, w, 0), struct.pack(">HHII", 257, 4, 1, h)]
    return b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 2) + b"".join(entries)


def _j2k(w: int, h: int) -> bytes:
    return (
        b"\xff\x4f\xff\x51" + struct.pack(">HH", 41, 0) + struct.pack(">IIII", w + 5, h + 7, 5, 7)
    )


def _netpbm_commented(w: int, h: int) -> bytes:
    return b"P6\n# made by hand\n%d\n# more\n%d 255\n" % (w, h)


def _os2_bmp(w: int, h: int) -> bytes:
    return b"BM" + b"\x00" * 12 + struct.pack("<IHH", 12, w, h)


CRAFTED = {
    "png": _png_header,
    "jpeg": _jpeg_header,
    "webp-vp8x": _webp_vp8x,
    "webp-vp8": _webp_vp8,
    "bigtiff": _bigtiff,
    "tiff-big-endian": _tiff_be,
    "j2k-codestream": _j2k,
    "netpbm-comments": _netpbm_commented,
    "bmp-os2": _os2_bmp,
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_headers_are_read(name):
    w, h = (
        (15000, 15000) if name not in ("webp-vp8", "bmp-os2", "tiff-big-endian") else (9000, 7000)
    )
    assert image_header.image_size(CRAFTED[name](w, h)) == (h, w)


@pytest.mark.parametrize("name", list(CRAFTED))
def test_a_bomb_is_refused_from_its_header_before_any_decoding(name, monkeypatch):
    """The 658 KB PNG that decodes to 675 MB, and its kin in every format: refused with the
    413 error while no decoder has run (cv2.imdecode would fail the test)."""
    w, h = (
        (15000, 15000) if name not in ("webp-vp8", "bmp-os2", "tiff-big-endian") else (9000, 7000)
    )

    def no_decoding(*_args):
        raise AssertionError("decoded before the size was checked")

    monkeypatch.setattr(images.cv2, "imdecode", no_decoding)
    with pytest.raises(images.PixelLimitError, match=f"{w}x{h} is {w * h:,} pixels"):
        images.decode_bgr(CRAFTED[name](w, h) + b"\x00" * 64, max_pixels=50_000_000)


def test_data_whose_size_cannot_be_read_is_refused_undecoded(monkeypatch):
    monkeypatch.setattr(images.cv2, "imdecode", lambda *_: np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(images.ImageError, match="not an image format"):
        images.decode_bgr(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 10 +X 10\n")
    with pytest.raises(images.ImageError, match="a JPEG file with a cut-short or corrupt header"):
        images.decode_bgr(b"\xff\xd8\xff\xe0\x00\x10JFIF")


def _photo_of(h: int, w: int) -> np.ndarray:
    tile = cv2.imread(samples.photo_path("coffee.png"))
    return np.tile(tile, (-(-h // tile.shape[0]), -(-w // tile.shape[1]), 1))[:h, :w]


@pytest.mark.parametrize(
    "ext, flag", [(".jpg", cv2.IMREAD_REDUCED_COLOR_8), (".png", cv2.IMREAD_COLOR)]
)
def test_decode_capped_never_holds_a_large_jpeg_whole(ext, flag, monkeypatch):
    """A JPEG eight times too large decodes at 1/8 (libjpeg's scaling); a PNG cannot, so it is
    decoded whole and then shrunk. Both come back at the cap with the file's own size, and
    close to the whole image shrunk by area averaging."""
    image = _photo_of(600, 800)
    data = cv2.imencode(ext, image)[1].tobytes()
    flags = []
    real = cv2.imdecode
    monkeypatch.setattr(images.cv2, "imdecode", lambda buf, f: flags.append(f) or real(buf, f))
    got = images.decode_capped(data, max_side=100)
    assert flags == [flag]
    assert got.bgr.shape == (75, 100, 3) and got.original == (600, 800)
    whole = cv2.resize(
        real(np.frombuffer(data, np.uint8), 1), (100, 75), interpolation=cv2.INTER_AREA
    )
    assert np.abs(got.bgr.astype(int) - whole).mean() < 4
    assert images.decode_capped(data, max_side=None).bgr.shape == (600, 800, 3)
    assert images.decode_capped(data, max_side=800).bgr.shape == (600, 800, 3)
