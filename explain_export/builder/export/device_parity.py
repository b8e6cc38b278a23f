"""An artifact on another device (a GPU), judged as a user judges it against eager on the CPU:
the same top-1 class, and a heatmap whose Pearson correlation with eager's reaches
``CORR_MIN`` on every photo; the max |diff| is reported (:mod:`.verify` holds the strict
CPU parity)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...artifact.contract import heatmap_unit

__all__ = ["CORR_MIN", "DeviceRow", "correlation", "format_device_rows", "on_device"]


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


CORR_MIN = 0.99  # heatmap correlation a device's rows must reach, per image


@dataclass(frozen=True)
class DeviceRow:
    """An artifact run on another device, judged as a user judges it: the same top-1 class
    and a heatmap that correlates with eager's on the photos; the max |diff| is reported."""

    format: str
    device: str
    backend: str
    images: int
    top1_agree: int
    min_corr: float
    logits_err: float
    heatmap_err: float
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps (1 where both are constant and equal)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def on_device(
    fmt: str, artifact: Any, all_cases: list[Any], refs: list[dict[str, np.ndarray]]
) -> DeviceRow:
    """``artifact`` (loaded on a device) against the eager outputs ``refs`` on the photo cases
    (every case if there is no photo): top-1 agreement, the lowest heatmap correlation, the
    max |diff|. OK if every top-1 agrees and every correlation is at least ``CORR_MIN``."""
    chosen = [i for i, c in enumerate(all_cases) if c.label.startswith("photo")] or list(
        range(len(all_cases))
    )
    agree = images = 0
    corr, le, he = 1.0, 0.0, 0.0
    for i in chosen:
        case, ref = all_cases[i], refs[i]
        logits, heat = artifact(case.image, case.class_index)
        agree += int((logits.argmax(1) == ref["logits"].argmax(1)).sum())
        images += logits.shape[0]
        ref_heat = heatmap_unit(ref["heatmap"])
        corr = min([corr] + [correlation(h, r) for h, r in zip(heat, ref_heat, strict=True)])
        le = max(le, _max_diff(logits, ref["logits"]))
        he = max(he, _max_diff(heat, ref_heat))
    ok = bool(agree == images and corr >= CORR_MIN)
    return DeviceRow(fmt, artifact.device, artifact.backend, images, agree, corr, le, he, ok)


def format_device_rows(rows: list[DeviceRow]) -> str:
    """The table of :func:`on_device` rows."""
    lines = [
        f"on the GPU vs eager on the CPU (photos; limits: same top-1, heatmap corr >= {CORR_MIN})",
        f"  {'format':<12} {'backend':<34} {'top-1':>7} {'corr':>9} {'logits':>9} {'heatmap':>9}",
    ]
    for r in rows:
        lines.append(
            f"  {r.format:<12} {r.backend:<34} {r.top1_agree:>3}/{r.images:<3} {r.min_corr:>9.6f} "
            f"{r.logits_err:>9.2e} {r.heatmap_err:>9.2e}  {'ok' if r.ok else 'FAIL'}"
        )
    return "\n".join(lines)
