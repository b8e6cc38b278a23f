"""``explain-eval --engine ray``: the same job as the local engine, on a Ray Data actor pool, for
image folders one process is too slow for.

Each actor opens every model (ONNX Runtime, no torch) and warms it up; a dataset of
``(index, model, path)`` rows goes through ``map_batches``, each row one image scored by one
model with :func:`.evaluate.evaluate_image`, the function the local engine calls, so the scores
are the same (``ms`` is timed in the actor). Rows stream back to the driver as they finish.
Ray is started here and stopped after, unless ``RayOptions.address`` names a cluster (the
images must then be at the same path on every node).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ExplainExportError, first_line
from .evaluate import evaluate_image
from .ray_run import NEEDS, RayOptions, _map, _root_cause, _start_ray, _workers, check_model_path

__all__ = ["run"]


class _Evaluate:
    """One actor: a session per model, and one image's row per dataset row."""

    def __init__(self, model_paths: list[str], steps: int, batch: int, threads: int) -> None:
        from .pipeline import OverlayOptions
        from .runtime import OnnxExplainer

        self.artifacts = [OnnxExplainer(p, "cpu", threads) for p in model_paths]
        self.steps, self.batch, self.opts = steps, batch, OverlayOptions()
        for art in self.artifacts:  # warm-up: ms is a steady call
            h, w = art.metadata["input_size"]
            art.outputs(np.zeros((1, 3, h, w), np.float32))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .pipeline import read

        rows = []
        for model, path in zip(batch["model"], batch["path"], strict=True):
            art = self.artifacts[int(model)]
            try:
                image = read(str(path), tuple(art.metadata["input_size"]), self.opts).input
                rows.append(json.dumps(evaluate_image(art, image, self.steps, self.batch)))
            except Exception as exc:
                rows.append(json.dumps({"error": first_line(exc)}))
        return {"index": batch["index"], "row": np.array(rows, dtype=object)}


def run(
    model_paths: list[str],
    image_paths: list[str],
    steps: int,
    batch: int,
    ray_opts: RayOptions | None = None,
    progress: Callable[[int], None] = lambda _n: None,
    log: Callable[[str], None] = lambda _msg: None,
) -> list[list[dict[str, Any]]]:
    """Per model (in order), per image (in order): its row, or ``{"error": ...}``."""
    ray_opts = ray_opts or RayOptions()
    for path in model_paths:
        check_model_path(path)
    try:
        import pyarrow  # noqa: F401  (Ray Data's)
        import ray
        import ray.data
    except ImportError as exc:
        raise ExplainExportError(NEEDS) from exc
    items = [
        {"index": m * len(image_paths) + i, "model": m, "path": p}
        for m in range(len(model_paths))
        for i, p in enumerate(image_paths)
    ]
    rows: list[dict[str, Any] | None] = [None] * len(items)
    started = _start_ray(ray, ray_opts, log)
    try:
        workers = _workers(ray.cluster_resources(), ray_opts)
        dataset = _map(
            ray.data.from_items(items, override_num_blocks=min(len(items), 4 * workers)),
            local=not ray_opts.address,
            fn=_Evaluate,
            fn_constructor_kwargs={
                "model_paths": model_paths,
                "steps": steps,
                "batch": batch,
                "threads": ray_opts.threads,
            },
            batch_size=1,  # one image and model: a few seconds of work
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=ray_opts.threads,
        )
        try:
            for out in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for index, text in zip(out["index"], out["row"], strict=True):
                    rows[int(index)] = json.loads(text)
                progress(len(out["index"]))
        except ray.exceptions.RayError as exc:
            raise ExplainExportError(f"a Ray worker failed ({_root_cause(exc)})") from exc
    finally:
        if started:
            ray.shutdown()
    n = len(image_paths)
    done = [r if r is not None else {"error": "not run"} for r in rows]
    return [done[m * n : (m + 1) * n] for m in range(len(model_paths))]
