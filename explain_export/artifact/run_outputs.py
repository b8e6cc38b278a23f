"""explain-run's files for one image: each map's overlay (and heatmap, on request), named by
:mod:`.run_files`, and the image's row of the sheet. :mod:`.runner` (and through it the Ray
engine) calls these once an image is drawn (:mod:`.pipeline`).

- one map, or a top-k export's K: ``NAME.overlay.png``, then ``NAME.topJ.overlay.png``;
- a detection export: ``NAME.overlay.png`` (the best detection's map, every box drawn), and
  with ``--per-detection`` ``NAME.detJ.overlay.png`` per detection ``J`` (from 0, the index
  in the row's ``detections``: its own map and box, and its mask's outline where the export
  has masks), each listed in its detection's ``outputs``. The sheet row is the image, then
  one overlay per detection (the one overlay where there is none).

``result`` is a :class:`.runner.ImageResult` and ``opts`` its :class:`.runner.RunOptions`.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from . import detections, overlay, pipeline
from .files import write_atomic
from .run_files import detection_stem, map_stem

__all__ = ["map_files", "planned_files", "with_files", "write_detections", "write_maps"]


def map_files(name: str, opts: Any, rank: int, stem: str | None = None) -> list[str]:
    """The files of map ``rank`` of image ``NAME`` (``stem``: another map's stem)."""
    stem = stem or map_stem(name, rank)
    files = [f"{stem}.overlay.png"]
    if opts.save_heatmaps:
        files += [f"{stem}.heatmap.png", f"{stem}.heatmap.npy"]
    return files


def planned_files(name: str, opts: Any, maps: int = 1) -> list[str]:
    """The files of image ``NAME``, map by map (``maps``: a top-k export's K, else 1); the
    first is always ``NAME.overlay.png``."""
    return [f for rank in range(1, maps + 1) for f in map_files(name, opts, rank)]


def with_files(maps: list[dict[str, Any]], name: str, opts: Any) -> list[dict[str, Any]]:
    """``{class, label, score}`` per map, best first, each with its files' names, and its
    ``faithfulness`` where it has it (:func:`.faithfulness.annotate`)."""
    return [
        {
            **{k: m[k] for k in ("class", "label", "score")},
            "outputs": map_files(name, opts, j),
            **{k: m[k] for k in ("faithfulness",) if k in m},
        }
        for j, m in enumerate(maps, 1)
    ]


def _write(drawn: pipeline.Drawn, files: list[str], opts: Any) -> None:
    """One map's overlay, and its heatmap as PNG and ``.npy`` where ``files`` has them."""
    assert drawn.heat is not None and drawn.blended is not None  # the runner always draws
    path = os.path.join(opts.out_dir, files[0])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, overlay.encode_png(drawn.blended))
    if len(files) > 1:
        heatmap = drawn.heatmap
        write_atomic(
            os.path.join(opts.out_dir, files[1]), overlay.encode_png(overlay.levels(heatmap))
        )
        buf = io.BytesIO()
        np.save(buf, heatmap.astype(np.float32))
        write_atomic(os.path.join(opts.out_dir, files[2]), buf.getvalue())


def write_maps(
    result: Any, bgr: np.ndarray, done: pipeline.Rendered, opts: Any
) -> np.ndarray | None:
    """Write one image's files, map by map; return its sheet row when a sheet is wanted."""
    result.outputs = []
    for rank, drawn in enumerate(done.maps, 1):
        files = map_files(result.name, opts, rank)
        _write(drawn, files, opts)
        result.outputs += files
    if done.explained is not None:
        result.explained = with_files(done.explained, result.name, opts)
    if not opts.sheet:
        return None
    if len(done.maps) == 1:
        return overlay.sheet_row([bgr, done.heat, done.blended], result.caption, opts.sheet_height)
    panels = [bgr] + [d.blended for d in done.maps]
    captions = ["original"] + [f"{m['label']} ({m['score']:.2f})" for m in result.explained or []]
    base = os.path.basename(result.path)
    return overlay.sheet_row(panels, base, opts.sheet_height, captions=captions)


def write_detections(
    result: Any, bgr: np.ndarray, done: pipeline.Rendered, opts: Any
) -> np.ndarray | None:
    """Write a detection export's image: ``NAME.overlay.png`` and, with ``opts.per_detection``,
    each detection's files (named in its ``outputs``); fills in ``result.detections``;
    return its sheet row when a sheet is wanted."""
    found = [dict(d) for d in done.detections or []]
    result.outputs = map_files(result.name, opts, 1)
    _write(done.maps[0], result.outputs, opts)
    each = done.each or []
    if opts.per_detection:
        for j, (d, drawn) in enumerate(zip(found, each, strict=True)):
            d["outputs"] = map_files(result.name, opts, 1, detection_stem(result.name, j))
            _write(drawn, d["outputs"], opts)
            result.outputs += d["outputs"]
    result.detections = found
    if not opts.sheet:
        return None
    panels = [bgr] + ([e.blended for e in each] if each else [done.blended])
    captions = ["original"] + ([detections.tag(d) for d in found] or ["no detections"])
    return overlay.sheet_row(panels, result.caption, opts.sheet_height, captions=captions)
