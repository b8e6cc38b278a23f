"""``explain-run --engine ray``: the runner's steps on Ray Data, for image sets one machine is
too slow for.

The driver lists the images (:func:`.runner.collect`) and plans the run (:func:`.runner.plan`:
what ``--resume`` keeps, what must not be overwritten). A dataset of ``(index, path, name)``
rows goes through ``map_batches`` on a fixed actor pool, one ONNX Runtime session per actor (no
torch), where each batch is read, explained and written by :func:`.runner.explain_batch`, the
function the local engine runs. The rows stream back to the driver as batches finish: the
journal, the progress bar and the error lines; at the end ``predictions.jsonl`` (input order),
``predictions.parquet`` and the sheet. A top-k export's K maps per image, and a segmentation
export's regions and a detection export's boxes, are drawn and named as the local engine does
(:mod:`.runner`). On a cluster
the images and ``out_dir`` must be at the same path on every node (shared storage).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..errors import ExplainExportError, OptionError
from ..words import count
from . import faithfulness as fa
from . import overlay, pipeline
from .contract import FAITHFULNESS_OUTPUTS, check_metadata
from .files import write_atomic
from .masks import MASKS
from .runner import (
    ImageResult,
    Journal,
    RunOptions,
    RunReport,
    check_class,
    explain_batch,
    finish,
    plan,
)
from .runtime import Artifact

__all__ = ["PARQUET", "RayOptions", "check_model_path", "parquet_bytes", "run"]

PARQUET = "predictions.parquet"
NEEDS = "--engine ray needs Ray Data: pip install 'explain-export[batch]'"


@dataclass(frozen=True)
class RayOptions:
    """Where the actors run and how many there are."""

    workers: int | None = None  # actors; None: the CPUs Ray sees / threads
    threads: int = 1  # ONNX Runtime threads per actor, and the CPUs each one asks Ray for
    address: str | None = None  # join this Ray cluster; None: start Ray on this machine
    device: str = "cpu"  # "cuda": each actor takes one GPU (ONNX Runtime's CUDA provider)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise OptionError("workers", "{name} must be at least 1")
        if self.threads < 1:
            raise OptionError("threads", "{name} must be at least 1")


class _Explain:
    """One actor of the pool: an ONNX Runtime session, and the runner's batch step."""

    def __init__(self, model_path: str, opts: RunOptions, threads: int, device: str) -> None:
        from .runtime import OnnxExplainer

        self.artifact = OnnxExplainer(model_path, device, threads)
        self.meta = check_metadata(self.artifact)
        self.opts = opts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [
            ImageResult(str(p), str(n)) for p, n in zip(batch["path"], batch["name"], strict=True)
        ]
        rows = explain_batch(self.artifact, self.meta, results, self.opts)
        return {
            "index": batch["index"],
            "result": np.array([json.dumps(r.to_json()) for r in results], dtype=object),
            "sheet_png": np.array(
                [b"" if row is None else overlay.encode_png(row) for row in rows], dtype=object
            ),
        }


def check_model_path(path: str) -> None:
    """An :class:`.OptionError` unless ``path`` is an ``.onnx`` file: the actors run ONNX
    Runtime, no torch. Cheap, so a command can call it before loading anything."""
    if not path.endswith(".onnx"):
        raise OptionError(
            "model", "{name} '{path}' is not .onnx; the Ray engine runs ONNX explainers", path=path
        )


def run(
    artifact: Artifact,
    paths: list[str],
    opts: RunOptions,
    ray_opts: RayOptions = RayOptions(),
    progress: Callable[[int], None] = lambda _n: None,
    report_error: Callable[[str, str], None] = lambda _path, _msg: None,
    names: list[str] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> RunReport:
    """:func:`.runner.run`'s result and files for an ``.onnx`` explainer (``artifact``, loaded
    by :func:`.runtime.load`: its metadata is checked here, and the actors open its file),
    computed by a Ray Data actor pool; also writes :data:`PARQUET`. Starts Ray on this machine
    and stops it after, unless ``ray_opts.address`` names a running cluster."""
    check_model_path(artifact.path)
    try:
        import pyarrow  # noqa: F401  (Ray Data's, and the Parquet writer's)
        import ray
        import ray.data
    except ImportError as exc:
        raise ExplainExportError(NEEDS) from exc
    meta = check_metadata(artifact)
    check_class(artifact, meta, opts)  # fails here, not in the actors
    model_path = os.path.abspath(artifact.path)
    named = pipeline.names_class(artifact.metadata)
    results, todo = plan(paths, names, opts, meta.top_k, meta.task, named)
    progress(len(results) - len(todo))
    started = _start_ray(ray, ray_opts, log) if todo else False
    try:
        try:
            rows = _explain(ray, model_path, results, todo, opts, ray_opts, progress, report_error)
        except ray.exceptions.RayError as exc:
            raise ExplainExportError(
                f"a Ray worker failed ({_root_cause(exc)}); the images finished so far are kept, "
                "and a resumed run goes on from them"
            ) from exc
        detection, masks = meta.task == "detection", MASKS in artifact.output_names
        parquet = parquet_bytes(results, meta.task == "segmentation", detection, masks)
        write_atomic(os.path.join(opts.out_dir, PARQUET), parquet)
        return finish(results, rows, opts)
    finally:
        if started:
            ray.shutdown()


def _start_ray(ray: Any, ray_opts: RayOptions, log: Callable[[str], None]) -> bool:
    """Join ``ray_opts.address``, or start Ray here; True where this call started it."""
    if ray.is_initialized():
        return False
    ray.init(
        address=ray_opts.address or "local",  # "local": a new instance, whatever RAY_ADDRESS says
        include_dashboard=False,
        logging_level=logging.ERROR,  # not its notes on local instances and tokens
        log_to_driver=False,
        configure_logging=True,
    )
    import ray.data

    # not Ray Data's own stack traces: a failure is one line from run(), --debug shows it all
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the command draws its own
    for name in ("print_on_execution_start", "enable_operator_progress_bars"):
        if hasattr(ctx, name):
            setattr(ctx, name, False)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    where = f"cluster at {ray_opts.address}" if ray_opts.address else "this machine"
    log(f"ray: {count(cpus, 'CPU')} on {where}")
    return True


def _explain(
    ray: Any,
    model_path: str,
    results: list[ImageResult],
    todo: list[int],
    opts: RunOptions,
    ray_opts: RayOptions,
    progress: Callable[[int], None],
    report_error: Callable[[str, str], None],
) -> list[np.ndarray]:
    """Run the pool over ``todo``; fill in ``results``; the sheet rows in input order."""
    if not todo:
        return []
    workers = _workers(ray.cluster_resources(), ray_opts)
    items = [{"index": i, "path": results[i].path, "name": results[i].name} for i in todo]
    blocks = min(len(items), max(4 * workers, math.ceil(len(items) / (16 * opts.batch_size))))
    dataset = _map(
        ray.data.from_items(items, override_num_blocks=blocks),
        local=not ray_opts.address,
        fn=_Explain,
        fn_constructor_kwargs={
            "model_path": model_path,
            "opts": opts,
            "threads": ray_opts.threads,
            "device": ray_opts.device,
        },
        batch_size=opts.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=ray_opts.threads,
        num_gpus=1 if ray_opts.device == "cuda" else 0,
    )
    sheet: dict[int, np.ndarray] = {}
    with Journal(opts) as journal:
        for out in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            done = []
            for index, text, png in zip(out["index"], out["result"], out["sheet_png"], strict=True):
                result = results[int(index)]
                row = json.loads(text)
                result.fill(row)
                result.outputs = row.get("outputs", [])
                done.append(result)
                if png:
                    sheet[int(index)] = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
                if result.error is not None:
                    report_error(result.path, result.error)
            journal.add(done)
            progress(len(done))
    return [sheet[i] for i in sorted(sheet)]


def _root_cause(exc: BaseException) -> str:
    """The last line of a Ray error's text: the worker's own exception (``Type: message``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(exc).__name__


def _workers(resources: dict[str, float], ray_opts: RayOptions) -> int:
    """The pool's size: ``ray_opts.workers``, by default one per GPU for ``cuda``, else the
    CPUs / threads. A GPU pool larger than the cluster's GPUs would wait for ever: refused."""
    if ray_opts.device != "cuda":
        return ray_opts.workers or max(1, int(resources.get("CPU", 1)) // ray_opts.threads)
    gpus = int(resources.get("GPU", 0))
    if gpus < 1:
        raise OptionError("device", "{name} cuda, but the Ray cluster has no GPU; use {name} cpu")
    if ray_opts.workers is not None and ray_opts.workers > gpus:
        raise OptionError(
            "workers",
            "{name} {n} with {device} cuda takes {n} GPUs, and the Ray cluster has {gpus}",
            n=ray_opts.workers,
            gpus=gpus,
        )
    return ray_opts.workers or gpus


def _map(dataset: Any, local: bool, **kwargs: Any) -> Any:
    """``dataset.map_batches(**kwargs)``. On this machine without actor restarts: a crash ends
    the run (``--resume`` goes on from it), and Ray's core worker does not print its error-level
    note on restarting actors whose arguments sit in the object store. Ray marks extra remote
    arguments (``max_restarts``) deprecated; where a Ray no longer takes them, restarts stay."""
    if local:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                return dataset.map_batches(**kwargs, max_restarts=0)
            except TypeError:
                pass
    return dataset.map_batches(**kwargs)


def parquet_bytes(
    results: list[ImageResult],
    segmentation: bool = False,
    detection: bool = False,
    masks: bool = False,
) -> bytes:
    """The predictions as a Parquet file, one row per image in input order, with the JSON
    lines' fields: ``file``, ``error`` (null where none), ``outputs``, ``topk`` (a list of
    ``{class, label, score}``), ``class_index`` (the class the heatmap explains where one was
    chosen, ``--class-index``; null: the graph's default) and ``explained`` (the class each
    map explains, in map order, as ``{class, label, score, outputs}``: one entry for a one-map
    export, a top-k export's K, best first; null for a map of no class; with ``faithfulness``,
    :func:`.faithfulness.map_scores`', where the export has them). A
    ``segmentation`` export's rows have its region's fields instead of ``topk`` and
    ``explained``: ``class``, ``label``, ``pixel_share``, ``note`` (null unless no pixel is the
    class) and ``predicted`` (``{class, label, pixel_share}``, most pixels first). A
    ``detection`` export's rows have ``detections`` instead (``{box, class, label, score,
    outputs}``, the box ``[x1, y1, x2, y2]`` in the original image's pixels, ``outputs`` null
    without ``--per-detection``); with ``masks`` (a Mask R-CNN export) each also has its
    ``mask``, COCO RLE ``{size: [h, w], counts}`` in the original image's pixels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    head = [("file", pa.string()), ("error", pa.string()), ("outputs", pa.list_(pa.string()))]
    faithful = pa.struct([(k, pa.float64()) for k in (*FAITHFULNESS_OUTPUTS, *fa.DERIVED)])
    if detection:
        box = [("box", pa.list_(pa.float64())), ("class", pa.int64()), ("label", pa.string())]
        rle = [("size", pa.list_(pa.int64())), ("counts", pa.string())]
        mask = [("mask", pa.struct(rle))] if masks else []
        outputs = ("outputs", pa.list_(pa.string()))
        scored = any("faithfulness" in d for r in results for d in r.detections or [])
        more = [("faithfulness", faithful)] if scored else []  # --faithfulness exports
        found = pa.struct([*box, ("score", pa.float64()), *mask, outputs, *more])
        schema = pa.schema([*head, ("detections", pa.list_(found))])
    elif segmentation:
        share = [("class", pa.int64()), ("label", pa.string()), ("pixel_share", pa.float64())]
        found = [*share, ("note", pa.string()), ("predicted", pa.list_(pa.struct(share)))]
        scored = any("faithfulness" in (r.region or {}) for r in results)
        found += [("faithfulness", faithful)] if scored else []  # --faithfulness exports
        schema = pa.schema([*head, *found, ("class_index", pa.int64())])
    else:
        entry = [("class", pa.int64()), ("label", pa.string()), ("score", pa.float64())]
        scored = any("faithfulness" in e for r in results for e in r.explained or [])
        more = [("faithfulness", faithful)] if scored else []  # --faithfulness exports
        maps = pa.list_(pa.struct([*entry, ("outputs", pa.list_(pa.string())), *more]))
        topk = ("topk", pa.list_(pa.struct(entry)))
        schema = pa.schema([*head, topk, ("class_index", pa.int64()), ("explained", maps)])
    rows = [
        {
            "file": r.path,
            "error": r.error,
            "outputs": r.outputs,
            "topk": r.topk,
            "class_index": r.class_index,
            "explained": r.explained,
            "detections": r.detections,
            **(r.region or {}),
        }
        for r in results
    ]
    table = pa.Table.from_pylist(rows, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()
