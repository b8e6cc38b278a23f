"""Overlays from an exported explainer, run the way a server runs it.

For each image: decode (:mod:`.images`), fit to the export size, run the artifact in batches
(:mod:`.runtime`), map the heatmap back to the original resolution, blend (:mod:`.overlay`),
and write ``NAME.overlay.png`` (plus ``NAME.heatmap.png``/``.npy`` on request). One
``predictions.jsonl`` lists every file with its top-k labels and scores, or its error, and
``sheet.png`` shows original | heatmap | overlay per image. Nothing here imports torch for an
ONNX artifact.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import OptionError
from . import images, overlay, pipeline
from .contract import ArtifactMetadata, check_metadata, class_feed
from .files import ensure_out_dir, write_atomic
from .run_files import JOURNAL, PREDICTIONS, SHEET, Journal, collect, earlier_rows, output_stems
from .runtime import Artifact

__all__ = [
    "JOURNAL",
    "PREDICTIONS",
    "SHEET",
    "ImageResult",
    "Journal",
    "RunOptions",
    "RunReport",
    "check_class",
    "collect",
    "explain_batch",
    "finish",
    "output_stems",
    "plan",
    "planned_files",
    "prepare_out_dir",
    "run",
]


@dataclass(frozen=True)
class RunOptions(pipeline.OverlayOptions):
    """Where and what ``explain-run`` writes, and :class:`~.pipeline.OverlayOptions`."""

    out_dir: str = "overlays"
    batch_size: int = 8
    topk: int = 5
    sheet: bool = False
    save_heatmaps: bool = False
    overwrite: bool = False
    sheet_height: int = 200
    resume: bool = False  # keep the images an earlier run in out_dir finished (see plan)
    class_index: int | None = None  # the class every heatmap explains; None: the graph's default


@dataclass
class ImageResult:
    path: str
    name: str
    topk: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    outputs: list[str] = field(default_factory=list)
    resumed: bool = False  # kept from an earlier run (--resume), not explained again
    class_index: int | None = None  # the class the heatmap explains, where one was chosen

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.path, "error": self.error}
        chosen = {} if self.class_index is None else {"class_index": self.class_index}
        return {"file": self.path, "topk": self.topk, **chosen, "outputs": self.outputs}


@dataclass
class RunReport:
    results: list[ImageResult]
    predictions: str
    sheet: str | None

    @property
    def failed(self) -> list[ImageResult]:
        return [r for r in self.results if r.error is not None]


def planned_files(name: str, opts: RunOptions) -> list[str]:
    files = [f"{name}.overlay.png"]
    if opts.save_heatmaps:
        files += [f"{name}.heatmap.png", f"{name}.heatmap.npy"]
    return files


def prepare_out_dir(names: list[str], opts: RunOptions) -> None:
    """Create the output folder, check that it takes files and that nothing would be overwritten."""
    ensure_out_dir(opts.out_dir)
    if opts.overwrite:
        return
    planned = [f for n in names for f in planned_files(n, opts)] + [PREDICTIONS]
    planned += [SHEET] if opts.sheet else []
    existing = [f for f in planned if os.path.exists(os.path.join(opts.out_dir, f))]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise OptionError(
            "overwrite",
            "'{path}'{more} already exist(s); pass {name} to replace, {resume} to keep what an "
            "earlier run finished and explain the rest, or choose another {out_dir}",
            path=os.path.join(opts.out_dir, existing[0]),
            more=more,
        )


def run(
    artifact: Artifact,
    paths: list[str],
    opts: RunOptions,
    progress: Callable[[int], None] = lambda _n: None,
    report_error: Callable[[str, str], None] = lambda _path, _msg: None,
    names: list[str] | None = None,
    image_threads: int | None = None,
) -> RunReport:
    """Explain every image in ``paths``; bad files are reported and skipped, the rest go on.
    ``names``: each image's output ``NAME`` (:func:`collect` gives them; default
    :func:`output_stems`); a name with subfolders writes into them. With ``opts.resume`` the
    images an earlier run finished (see :func:`plan`) are kept, not redone. The per-image steps
    run on ``image_threads`` threads (default: one per CPU; see :func:`explain_batch`)."""
    meta = check_metadata(artifact)
    check_class(artifact, meta, opts)
    results, todo = plan(paths, names, opts)
    progress(len(results) - len(todo))
    rows: list[np.ndarray] = []
    workers = image_threads or os.cpu_count() or 1
    with Journal(opts) as journal, ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(todo), opts.batch_size):
            batch = [results[i] for i in todo[start : start + opts.batch_size]]
            drawn = explain_batch(artifact, meta, batch, opts, pool if workers > 1 else None)
            rows += [r for r in drawn if r is not None]
            journal.add(batch)
            for result in batch:
                if result.error is not None:
                    report_error(result.path, result.error)
            progress(len(batch))
        return finish(results, rows, opts)


def check_class(artifact: Artifact, meta: ArtifactMetadata, opts: RunOptions) -> None:
    """A one-line error, before any work, where ``opts.class_index`` is out of range or the
    graph takes no class (:func:`.contract.class_feed`)."""
    if opts.class_index is not None:
        class_feed(artifact.path, artifact.input_names, meta.num_classes, 1, opts.class_index)


def plan(
    paths: list[str], names: list[str] | None, opts: RunOptions
) -> tuple[list[ImageResult], list[int]]:
    """One :class:`ImageResult` per path, and the indices of those to explain.

    Without ``opts.resume``: all of them, once :func:`prepare_out_dir` found nothing to
    overwrite. With it: all but the images whose row an earlier run left (in its
    ``predictions.jsonl``, or the :data:`JOURNAL` of a run that was stopped) with no error, the
    same output names, the same chosen class, and every output file on disk; those results are
    filled in from it."""
    names = output_stems(paths) if names is None else names
    results = [ImageResult(p, n) for p, n in zip(paths, names, strict=True)]
    if not opts.resume:
        prepare_out_dir(names, opts)
        return results, list(range(len(results)))
    ensure_out_dir(opts.out_dir)
    earlier = earlier_rows(opts.out_dir)
    todo = []
    for i, result in enumerate(results):
        files = planned_files(result.name, opts)
        row = earlier.get((result.path, files[0]))
        same = row and row.get("class_index") == opts.class_index
        if same and all(os.path.isfile(os.path.join(opts.out_dir, f)) for f in files):
            result.topk, result.outputs, result.resumed = row["topk"], files, True
            result.class_index = opts.class_index
        else:
            todo.append(i)
    return results, todo


def explain_batch(
    artifact: Artifact,
    meta: ArtifactMetadata,
    batch: list[ImageResult],
    opts: RunOptions,
    pool: Executor | None = None,
) -> list[np.ndarray | None]:
    """Read, fit, run as one batch, map back, draw and write the outputs of ``batch``; fills in
    each result (its top-k and outputs, or its error). Returns each image's sheet row (None
    where no sheet is wanted or the image failed). With ``pool`` the per-image steps (reading
    and fitting; mapping back, drawing and writing) run on its threads (OpenCV and numpy
    release the GIL); the model call is one call either way."""
    each = pool.map if pool is not None else map
    fitted = list(each(lambda r: _read(r, meta.input_size, opts), batch))
    ready = [(i, image) for i, image in enumerate(fitted) if image is not None]
    rows: list[np.ndarray | None] = [None] * len(batch)
    if not ready:
        return rows
    labels = list(meta.labels) if meta.labels else None
    outputs = pipeline.infer(artifact, [image.input for _, image in ready], opts.class_index)

    def draw(job: tuple[tuple[int, pipeline.Fitted], tuple[np.ndarray, np.ndarray]]) -> None:
        (i, image), (lg, hm) = job
        done = pipeline.render(image, lg, hm, opts.topk, labels, opts)
        batch[i].topk, batch[i].class_index = done.topk, opts.class_index
        rows[i] = _write_outputs(batch[i], image.bgr, done, opts)

    list(each(draw, zip(ready, outputs, strict=True)))
    return rows


def _read(result: ImageResult, size: tuple[int, int], opts: RunOptions) -> pipeline.Fitted | None:
    """The image fitted to the graph, or None with ``result.error`` set."""
    try:
        return pipeline.fit(images.read_bgr(result.path, opts.max_pixels), size, opts.resize)
    except images.ImageError as exc:
        result.error = str(exc)
        return None


def finish(results: list[ImageResult], rows: list[np.ndarray], opts: RunOptions) -> RunReport:
    """Write ``predictions.jsonl`` (every file in input order), the sheet of ``rows`` where
    asked, and remove the journal."""
    predictions = os.path.join(opts.out_dir, PREDICTIONS)
    write_atomic(predictions, "".join(json.dumps(r.to_json()) + "\n" for r in results).encode())
    sheet = None
    if opts.sheet and rows:
        sheet = os.path.join(opts.out_dir, SHEET)
        write_atomic(sheet, overlay.encode_png(overlay.stack_rows(rows), compression=9))
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(opts.out_dir, JOURNAL))
    return RunReport(results, predictions, sheet)


def _write_outputs(
    result: ImageResult, bgr: np.ndarray, done: pipeline.Rendered, opts: RunOptions
) -> np.ndarray | None:
    """Write one image's files; return its sheet row when a sheet is wanted."""
    heatmap, heat, blended = done.heatmap, done.heat, done.blended
    assert heat is not None and blended is not None  # the runner always draws
    files = planned_files(result.name, opts)
    os.makedirs(os.path.dirname(os.path.join(opts.out_dir, files[0])), exist_ok=True)
    write_atomic(os.path.join(opts.out_dir, files[0]), overlay.encode_png(blended))
    if opts.save_heatmaps:
        write_atomic(
            os.path.join(opts.out_dir, files[1]), overlay.encode_png(overlay.levels(heatmap))
        )
        buf = io.BytesIO()
        np.save(buf, heatmap.astype(np.float32))
        write_atomic(os.path.join(opts.out_dir, files[2]), buf.getvalue())
    result.outputs = files
    if not opts.sheet:
        return None
    top = result.topk[0]
    caption = f"{os.path.basename(result.path)}: {top['label']} ({top['score']:.2f})"
    return overlay.sheet_row([bgr, heat, blended], caption, opts.sheet_height)
