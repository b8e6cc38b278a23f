"""TIFFs that OpenCV cannot decode, read with tifffile: floating-point samples above all.

OpenCV decodes TIFFs of 8- and 16-bit integer samples, and :func:`.images.decode_bgr` tries it
first. A TIFF it refuses (float32 or float64 samples, as scientific and imaging tools write
them; 32-bit integers), or would read too dark (signed integers), is read here with
``tifffile`` where it is installed (scikit-image, which the package depends on, brings it; a
server that installs only the artifact side's needs may lack it, and is then told so). The
first image of the file is taken, as OpenCV takes it.

Samples ``x`` become 8-bit levels as follows; anything else is refused with the reason:

- unsigned integers of ``b`` bits: ``round(255 · x / (2^b − 1))``;
- signed 8- and 16-bit integers where no value is negative: ``round(255 · x / (2^(b−1) − 1))``,
  the same scale over the non-negative half; negative values have no defined 8-bit scale and
  are refused, as are wider signed integers. OpenCV would decode a signed 16-bit TIFF, but
  darker (as unsigned, halved), so :func:`signed_samples` routes such files here first;
- floats where every value lies in [0, 1]: ``round(255 · x)``; floats outside [0, 1], NaN or
  infinite have no defined scale (an exposure or a physical unit) and are refused;
- gray (``MINISBLACK``; ``MINISWHITE`` inverted), gray + alpha, RGB and RGBA (alpha dropped).
"""

from __future__ import annotations

import io
import struct

import numpy as np

__all__ = ["decode_tiff", "signed_samples"]

_MINISWHITE, _MINISBLACK, _RGB = 0, 1, 2  # TIFF's Photometric tag


def decode_tiff(data: bytes) -> np.ndarray:
    """The first image of a TIFF as uint8 BGR ``[h, w, 3]`` (see the module's mapping); its
    size was checked from the header before (:mod:`.image_header`). Raises ``ValueError`` with
    a one-line reason where the file cannot be used."""
    try:
        import tifffile
    except ImportError:
        raise ValueError(
            "a TIFF that OpenCV cannot decode (it reads 8- and 16-bit integer samples); "
            "pip install tifffile to read others"
        ) from None
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            samples, axes, photometric = page.asarray(), page.axes, int(page.photometric)
    except (tifffile.TiffFileError, IndexError, EOFError, OSError, struct.error) as exc:
        raise ValueError("a TIFF that cannot be read: damaged or cut short") from exc
    except ValueError as exc:  # tifffile's own words: a codec it lacks, a layout it refuses
        lines = str(exc).strip().splitlines()
        why = lines[0][:200] if lines else type(exc).__name__
        raise ValueError(f"a TIFF that cannot be decoded here ({why})") from exc
    if "S" in axes:
        samples = np.moveaxis(samples, axes.index("S"), -1)
    if samples.ndim == 2:
        samples = samples[..., None]
    if samples.ndim != 3:
        raise ValueError(f"a TIFF whose first image has axes {axes}, not a 2-D picture")
    levels = _levels(samples)
    channels = levels.shape[-1]
    if photometric == _RGB and channels >= 3:
        return np.ascontiguousarray(levels[..., 2::-1])  # RGB(A) -> BGR
    if photometric in (_MINISBLACK, _MINISWHITE) and channels in (1, 2):
        gray = levels[..., 0] if photometric == _MINISBLACK else 255 - levels[..., 0]
        return np.repeat(gray[..., None], 3, axis=2)
    raise ValueError(
        f"a TIFF of {channels} samples per pixel with photometric {photometric}; "
        "gray, RGB and RGBA are read"
    )


def signed_samples(data: bytes) -> bool:
    """Whether a TIFF's first image has signed integer samples (its SampleFormat tag, read
    without decoding); False where tifffile is missing or the header cannot be read."""
    try:
        import tifffile
    except ImportError:
        return False
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            return tif.pages[0].dtype.kind == "i"
    except Exception:  # a damaged header: the decoders say what is wrong
        return False


def _levels(samples: np.ndarray) -> np.ndarray:
    """Samples as uint8 levels, by the module's mapping; ``ValueError`` where there is none."""
    kind = samples.dtype.kind
    if samples.dtype == np.uint8:
        return samples
    if kind == "b":
        return samples.astype(np.uint8) * 255
    if kind == "u":
        top = float(np.iinfo(samples.dtype).max)
        return np.round(samples.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    if kind == "i" and samples.dtype.itemsize <= 2:
        lo = int(samples.min()) if samples.size else 0
        if lo < 0:
            raise ValueError(
                f"a TIFF of {samples.dtype} samples from {lo} to {int(samples.max())}, below 0, "
                "which has no defined 8-bit scale; convert it to 8-bit (or non-negative integers)"
            )
        top = float(np.iinfo(samples.dtype).max)
        return np.round(samples.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    if kind == "f":
        if not np.isfinite(samples).all():
            raise ValueError("a TIFF with NaN or infinite float samples; no 8-bit image is defined")
        lo, hi = float(samples.min()), float(samples.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"a TIFF of {samples.dtype} samples from {lo:.4g} to {hi:.4g}, outside [0, 1], "
                "which has no defined 8-bit scale; convert it to 8-bit (or floats in [0, 1])"
            )
        return np.round(samples.astype(np.float64) * 255.0).astype(np.uint8)
    raise ValueError(
        f"a TIFF of {samples.dtype} samples, which have no defined 8-bit scale; convert it to "
        "8-bit (or floats in [0, 1])"
    )
