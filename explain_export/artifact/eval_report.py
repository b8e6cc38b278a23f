"""What ``explain-eval`` writes: ``eval.csv`` (a row per model), the per-image rows
(``per_image.parquet``, or ``per_image.csv`` without pyarrow), ``curves.png`` (the mean deletion
and insertion curves per model, drawn with OpenCV) and the console table, the best model per
column marked. No torch."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .evaluate import SCORES
from .files import write_atomic

__all__ = [
    "BETTER",
    "COLUMNS",
    "console_table",
    "curves_png",
    "summarize",
    "write_eval",
]

COLUMNS = ("model", "method", "layer", "images", *SCORES, "ms_per_image")
# which way is better, per score: deletion AUC and average drop low, the others high
BETTER = {
    "deletion_auc": min,
    "insertion_auc": max,
    "average_drop": min,
    "increase_in_confidence": max,
    "adcc": max,
    "ms_per_image": min,
}
_PER_IMAGE = (
    "model",
    "image",
    "class",
    "label",
    "score",
    "masked_score",
    "complexity",
    "coherency",
    *SCORES,
    "ms",
)


def summarize(model: str, meta: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One model's ``eval.csv`` row: each score's mean over its images (NaN ones left out:
    ``adcc`` where no map of the class was had on the masked image), the median ms."""
    out: dict[str, Any] = {
        "model": model,
        "method": meta.get("method"),
        "layer": meta.get("layer"),
        "images": len(rows),
    }
    for key in SCORES:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        values = values[~np.isnan(values)]
        out[key] = float(values.mean()) if values.size else float("nan")
    out["ms_per_image"] = float(np.median([r["ms"] for r in rows])) if rows else float("nan")
    return out


def _best(summary: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in summary if not math.isnan(s[key])]
    return BETTER[key](values) if values else None


def console_table(summary: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table, a row per model; ``*`` marks the best value of each column."""
    keys = [*SCORES, "ms_per_image"]
    heads = ["model", "method", *[k.replace("_", " ") for k in keys]]
    best = {k: _best(summary, k) for k in keys}
    rows = []
    for s in summary:
        cells = [s["model"], str(s["method"])]
        for k in keys:
            v = s[k]
            text = "nan" if math.isnan(v) else f"{v:.1f}" if k == "ms_per_image" else f"{v:.3f}"
            cells.append(text + ("*" if best[k] is not None and v == best[k] else " "))
        rows.append(cells)
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(
        "* the best of the column (deletion AUC, average drop, ms: lowest; others: highest)"
    )
    return "\n".join(lines)


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _per_image(rows: Sequence[dict[str, Any]]) -> tuple[str, bytes]:
    """``per_image.parquet`` (with the curves as lists) where pyarrow is installed, else
    ``per_image.csv`` (the curves as JSON lists)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        flat = [
            {**r, **{k: json.dumps(r[k]) for k in ("deletion_curve", "insertion_curve")}}
            for r in rows
        ]
        return "per_image.csv", _csv(flat, [*_PER_IMAGE, "deletion_curve", "insertion_curve"])
    columns = [*_PER_IMAGE, "deletion_curve", "insertion_curve"]
    table = pa.table({c: [r.get(c) for r in rows] for c in columns})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return "per_image.parquet", sink.getvalue()


_COLORS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148)]


def _colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` BGR colours: the five above, or ``n`` spread over OpenCV's turbo map."""
    if n <= len(_COLORS):
        return _COLORS[:n]
    import cv2

    ramp = np.linspace(0, 255, n).astype(np.uint8)[:, None]
    return [tuple(int(v) for v in c[0]) for c in cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO)]


def curves_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], steps: int) -> bytes:
    """The mean deletion (left) and insertion (right) curves, one colour per model: the class
    probability against the fraction of pixels changed."""
    import cv2

    w, h, pad, legend = 420, 300, 40, 22 * len(curves) + 10
    colors = _colors(len(curves))
    img = np.full((h + legend, 2 * w, 3), 255, np.uint8)
    x = np.linspace(0, 1, steps + 1)
    for panel, title in enumerate(("deletion", "insertion")):
        x0 = panel * w
        cv2.rectangle(img, (x0 + pad, pad), (x0 + w - 10, h - pad), (0, 0, 0), 1)
        cv2.putText(img, title, (x0 + pad, pad - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0, 1)
        for tick in (0.0, 0.5, 1.0):
            y = int(h - pad - tick * (h - 2 * pad))
            cv2.putText(img, f"{tick:.1f}", (x0 + 5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, 0)
            xt = int(x0 + pad + tick * (w - 10 - pad))
            cv2.putText(
                img, f"{tick:.1f}", (xt - 8, h - pad + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.35, 0
            )
        for i, pair in enumerate(curves.values()):
            s = np.clip(pair[panel], 0, 1)
            pts = np.stack([x0 + pad + x * (w - 10 - pad), h - pad - s * (h - 2 * pad)], 1).astype(
                np.int32
            )
            cv2.polylines(img, [pts], False, colors[i], 2, cv2.LINE_AA)
    for i, name in enumerate(curves):
        y = h + 16 + 22 * i
        cv2.line(img, (pad, y - 4), (pad + 30, y - 4), colors[i], 3)
        cv2.putText(img, name, (pad + 40, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 0, 1)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def write_eval(
    out_dir: str,
    summary: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    steps: int,
) -> list[str]:
    """Write the three files into ``out_dir`` (each atomically); their paths."""
    curves = {}
    methods = [s["method"] for s in summary]
    for s in summary:
        mine = [r for r in rows if r["model"] == s["model"]]
        if mine:
            unique = methods.count(s["method"]) == 1
            curves[str(s["method"]) if unique else f"{s['model']} ({s['method']})"] = (
                np.mean([r["deletion_curve"] for r in mine], 0),
                np.mean([r["insertion_curve"] for r in mine], 0),
            )
    name, per_image = _per_image(rows)
    files = {
        "eval.csv": _csv(summary, COLUMNS),
        name: per_image,
        "curves.png": curves_png(curves, steps),
    }
    paths = []
    for file, data in files.items():
        path = os.path.join(out_dir, file)
        write_atomic(path, data)
        paths.append(path)
    return paths
