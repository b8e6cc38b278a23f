"""Overlays from an exported explainer, run the way a server runs it.

For each image: decode (:mod:`.images`), fit to the export size, run the artifact in batches
(:mod:`.runtime`), map the heatmap back to the original resolution, blend (:mod:`.overlay`),
and write ``NAME.overlay.png`` (plus ``NAME.heatmap.png``/``.npy`` on request). One
``predictions.jsonl`` lists every file with its top-k labels and scores, or its error, and
``sheet.png`` shows original | heatmap | overlay per image. Nothing here imports torch for an
ONNX artifact.

A ``--top-k K`` export explains K classes per image, best first: map 1's files keep the plain
names (``NAME.overlay.png`` is the best class's, as for any export) and map j > 1 writes
``NAME.topJ.overlay.png`` (``NAME.topJ.heatmap.png``/``.npy``): named by rank, not by class,
so the files are known before the model runs (``--resume``, the overwrite check). The row's
``explained`` lists the K classes (class, label, score, outputs) in map order, and the sheet
row is original | K overlays, each captioned with its class.

A segmentation export (per-pixel scores) names the region of the class its map explains
instead of a softmax top-k: the row has ``class``, ``label``, ``pixel_share`` (the fraction of
the image's pixels predicted as it), ``predicted`` (the classes with most pixels) and, where no
pixel is the class, a ``note`` (:mod:`.regions`); the overlay carries the region's outline, and
the sheet's caption names the class and its share.

A detection export's row lists its ``detections`` (box in the original image's pixels, class,
label, score; a Mask R-CNN export's also its ``mask``, COCO RLE at the original size, outlined
on the overlays: :mod:`.masks`) instead of a top-k; its files are :mod:`.run_outputs`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import OptionError, UsageError
from . import detections, images, overlay, pipeline, regions
from .contract import ArtifactMetadata, check_metadata, class_feed
from .files import ensure_out_dir, write_atomic
from .run_files import (
    JOURNAL,
    PREDICTIONS,
    SHEET,
    Journal,
    collect,
    earlier_rows,
    map_stem,
    output_stems,
    row_maps,
)
from .run_outputs import planned_files, with_files, write_detections, write_maps
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
    "check_names",
    "collect",
    "explain_batch",
    "finish",
    "map_stem",
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
    per_detection: bool = False  # a detection export: also one overlay per detection


@dataclass
class ImageResult:
    path: str
    name: str
    topk: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    outputs: list[str] = field(default_factory=list)
    resumed: bool = False  # kept from an earlier run (--resume), not explained again
    class_index: int | None = None  # the class the heatmap explains, where one was chosen
    # per map, in map order, {class, label, score, outputs}: the class it explains and its
    # files (one map, or a top-k export's K, best first); None for a map of no class
    explained: list[dict[str, Any]] | None = None
    # segmentation exports, instead of topk: class, label, pixel_share, [note], predicted
    region: dict[str, Any] | None = None
    # detection exports, instead of topk: box (original pixels), class, label, score[, outputs]
    detections: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.path, "error": self.error}
        chosen = {} if self.class_index is None else {"class_index": self.class_index}
        maps = {} if self.explained is None else {"explained": self.explained}
        named = {"topk": self.topk} if self.region is None else self.region
        named = named if self.detections is None else {"detections": self.detections}
        return {"file": self.path, **named, **chosen, **maps, "outputs": self.outputs}

    def fill(self, row: dict[str, Any]) -> None:
        """Take a finished row's findings (:meth:`to_json`'s, without its outputs)."""
        self.error, self.class_index = row.get("error"), row.get("class_index")
        self.explained, self.detections = row.get("explained"), row.get("detections")
        if "topk" in row or self.error is not None or self.detections is not None:
            self.topk, self.region = row.get("topk", []), None
        else:
            self.region = {k: row[k] for k in (*regions.FIELDS, "faithfulness") if k in row}

    @property
    def summary(self) -> str:
        """What was found, in words: the class each map explains and the top-1, with their
        scores (:func:`.pipeline.summary`), or the region's class and its pixel share."""
        if self.detections is not None:
            return detections.describe(self.detections)
        if self.region is not None:
            return regions.describe(self.region)
        return pipeline.summary(self.topk, self.explained)

    @property
    def caption(self) -> str:
        """``NAME.png: summary``: the console's line for the image, and its sheet caption."""
        return f"{os.path.basename(self.path)}: {self.summary}"


@dataclass
class RunReport:
    results: list[ImageResult]
    predictions: str
    sheet: str | None

    @property
    def failed(self) -> list[ImageResult]:
        return [r for r in self.results if r.error is not None]


def check_names(
    paths: list[str], names: list[str] | None, opts: RunOptions, top_k: int | None = None
) -> None:
    """A usage error where two images would write one file (``x.png`` and ``x.top2.png`` with
    a top-2 export); ``names`` as :func:`plan` takes them."""
    maps = top_k or 1
    if maps == 1:
        return  # output_stems keeps the names apart
    names = output_stems(paths) if names is None else names
    owner: dict[str, str] = {}
    for path, name in zip(paths, names, strict=True):
        for f in planned_files(name, opts, maps):
            if owner.setdefault(f, path) != path:
                raise OptionError(
                    "images",
                    "'{a}' and '{b}' would both write '{f}' (map j > 1 of a top-{k} export is "
                    "NAME.topJ); rename one, or explain them in two runs",
                    a=owner[f],
                    b=path,
                    f=f,
                    k=maps,
                )


def prepare_out_dir(names: list[str], opts: RunOptions, maps: int = 1) -> None:
    """Create the output folder, check that it takes files and that nothing would be overwritten."""
    ensure_out_dir(opts.out_dir)
    if opts.overwrite:
        return
    planned = [f for n in names for f in planned_files(n, opts, maps)] + [PREDICTIONS]
    planned += [SHEET] if opts.sheet else []
    existing = [f for f in planned if os.path.exists(os.path.join(opts.out_dir, f))]
    if existing:
        more = f" and {len(existing) - 1} more already exist" if len(existing) > 1 else ""
        raise OptionError(
            "overwrite",
            "'{path}'{more}; pass {name} to replace, {resume} to keep what an "
            "earlier run finished and explain the rest, or choose another {out_dir}",
            path=os.path.join(opts.out_dir, existing[0]),
            more=more or " already exists",
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
    named = pipeline.names_class(artifact.metadata)
    results, todo = plan(paths, names, opts, meta.top_k, meta.task, named)
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
    """A one-line error, before any work, where ``opts.class_index`` is out of range, the graph
    takes no class (:func:`.contract.class_feed`), or it is a top-k graph (it picks its
    classes) or a detector (each map explains its detection); and where ``opts.per_detection``
    is asked of an export that is no detector."""
    if opts.per_detection and meta.task != "detection":
        raise OptionError(
            "per_detection",
            "{name} needs a detection export; '{path}' is not a detector (no boxes to explain)",
            path=artifact.path,
        )
    if opts.class_index is None:
        return
    if meta.task == "detection":
        raise OptionError(
            "class_index",
            "{name} {v} cannot apply to '{path}': a detector's map j explains detection j, "
            "of the class the model found; drop {name}",
            v=opts.class_index,
            path=artifact.path,
        )
    if meta.top_k is not None:
        raise OptionError(
            "class_index",
            "{name} {v} cannot apply to '{path}': a top-{k} export explains the {k} best "
            "classes of each image, and its graph picks them; drop {name}",
            v=opts.class_index,
            path=artifact.path,
            k=meta.top_k,
        )
    class_feed(artifact.path, artifact.input_names, meta.num_classes, 1, opts.class_index)


def plan(
    paths: list[str],
    names: list[str] | None,
    opts: RunOptions,
    top_k: int | None = None,
    task: str | None = None,
    named: bool = True,
) -> tuple[list[ImageResult], list[int]]:
    """One :class:`ImageResult` per path, and the indices of those to explain; ``top_k``: the
    export's (K maps per image), None for one map; ``task``: the export's (``segmentation``
    rows name a region, others a top-k); ``named``: :func:`.pipeline.names_class`.

    Without ``opts.resume``: all of them, once :func:`prepare_out_dir` found nothing to
    overwrite. With it: all but the images whose row an earlier run left (in its
    ``predictions.jsonl``, or the :data:`JOURNAL` of a run that was stopped) with no error, the
    same output names, the same chosen class, as many maps named, of the same task, and every
    output file on disk;
    those results are filled in from it."""
    names = output_stems(paths) if names is None else names
    check_names(paths, names, opts, top_k)
    results = [ImageResult(p, n) for p, n in zip(paths, names, strict=True)]
    if not opts.resume:
        prepare_out_dir(names, opts, top_k or 1)
        return results, list(range(len(results)))
    ensure_out_dir(opts.out_dir)
    earlier = earlier_rows(opts.out_dir)
    own = task in ("segmentation", "detection")  # rows without a top-k, or its maps named
    maps = top_k if top_k is not None else 1 if named and not own else None
    todo = []
    for i, result in enumerate(results):
        files = planned_files(result.name, opts, top_k or 1)
        row = earlier.get((result.path, files[0]))
        same = row and row.get("class_index") == opts.class_index and row_maps(row) == maps
        same = (
            same and ("topk" not in row) == own and ("detections" in row) == (task == "detection")
        )
        if same and task == "detection":  # and each detection's files where they are asked for
            per = [d.get("outputs") for d in row["detections"]]
            same = all(bool(f) == opts.per_detection for f in per)
            files += [name for f in per for name in f or []] if same else []
        if same and all(os.path.isfile(os.path.join(opts.out_dir, f)) for f in files):
            result.fill(row)
            result.outputs, result.resumed = files, True
            if maps is not None:
                result.explained = with_files(row["explained"], result.name, opts)
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
    if meta.task == "detection":
        found = pipeline.infer_detections(artifact, [image.input for _, image in ready])

        def draw_found(job: tuple[tuple[int, pipeline.Fitted], pipeline.Detected]) -> None:
            (i, image), out = job
            wanted = opts.per_detection or opts.sheet
            done = pipeline.render_detections(image, out, labels, opts, each=wanted)
            rows[i] = write_detections(batch[i], image.bgr, done, opts)

        list(each(draw_found, zip(ready, found, strict=True)))
        return rows
    outputs = pipeline.infer(artifact, [image.input for _, image in ready], opts.class_index)
    maps = meta.top_k or 1
    if outputs[0].heatmaps.shape[0] != maps:
        raise UsageError(
            f"'{artifact.path}' returns {outputs[0].heatmaps.shape[0]} heatmaps per image, its "
            f"metadata says {maps}; the metadata belongs to another export, re-export it"
        )

    def draw(job: tuple[tuple[int, pipeline.Fitted], pipeline.Inferred]) -> None:
        (i, image), out = job
        done = pipeline.render(
            image,
            out.logits,
            out.heatmaps,
            opts.topk,
            labels,
            opts,
            True,
            out.classes,
            out.faithful,
        )
        batch[i].topk, batch[i].class_index = done.topk, opts.class_index
        batch[i].region = done.region
        rows[i] = write_maps(batch[i], image.bgr, done, opts)

    list(each(draw, zip(ready, outputs, strict=True)))
    return rows


def _read(result: ImageResult, size: tuple[int, int], opts: RunOptions) -> pipeline.Fitted | None:
    """The image fitted to the graph, or None with ``result.error`` set."""
    try:
        return pipeline.read(result.path, size, opts)
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
