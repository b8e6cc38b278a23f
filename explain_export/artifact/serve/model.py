"""The model a replica serves: an ONNX explainer opened with its checked metadata
(:func:`open_model`), and what ``GET /healthz`` says of it (:func:`health`). No Ray, no torch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from ...errors import OptionError, first_line
from ..contract import ArtifactMetadata, check_metadata, class_count
from ..folder import artifact_in
from ..runtime import OnnxExplainer

__all__ = ["Model", "health", "open_model"]


@dataclass(frozen=True)
class Model:
    """An ONNX explainer with its checked metadata."""

    path: str
    artifact: OnnxExplainer
    size: tuple[int, int]
    labels: list[str] | None
    num_classes: int | None
    meta: ArtifactMetadata = field(repr=False)
    threads: int | None = None


def open_model(
    path: str, threads: int | None = None, device: str = "cpu", cuda_graph: bool | None = None
) -> Model:
    """Open ``path`` (an ``.onnx`` explainer) on ONNX Runtime, no torch: the CPU provider, or
    with ``device="cuda"`` the CUDA provider (IO binding, and CUDA graphs unless
    ``cuda_graph=False``; :class:`~..runtime.OnnxExplainer`). ``path`` may be the export
    folder: its ``explainer.onnx`` (:func:`~..folder.artifact_in`)."""
    path = artifact_in(path, ("onnx",))
    if not path.endswith(".onnx"):
        raise OptionError(
            "path",
            "{name} '{v}' is not .onnx; explain-serve runs ONNX explainers (no torch): export "
            "with explain-export --formats onnx",
            v=path,
        )
    if not os.path.isfile(path):
        raise OptionError(
            "path", "no model at '{v}'; give {name} an explainer.onnx from explain-export", v=path
        )
    try:
        artifact = OnnxExplainer(path, device, threads, cuda_graph=cuda_graph)
    except OptionError:
        raise
    except Exception as exc:
        raise OptionError(
            "path", "cannot load {name} '{v}': {why}", v=path, why=first_line(exc)
        ) from exc
    meta = check_metadata(artifact)
    labels = list(meta.labels) if meta.labels else None
    detector = meta.task == "detection"  # no logits: its metadata says the class count
    classes = meta.num_classes if detector else class_count(meta, artifact.shapes.get("logits"))
    return Model(
        path=os.path.abspath(path),
        artifact=artifact,
        size=meta.input_size,
        labels=labels,
        num_classes=classes if classes is not None else (len(labels) if labels else None),
        meta=meta,
        threads=threads,
    )


def health(model: Model) -> dict[str, Any]:
    """What ``GET /healthz`` reports about a loaded model."""
    return {
        "status": "ok",
        "model": model.path,
        "backend": model.artifact.backend,
        "providers": model.artifact.providers,
        "input_size": list(model.size),
        "task": model.meta.task or "classification",
        "classes": model.num_classes,
        "method": model.meta.method,
        "layer": model.meta.layer,
        "top_k": model.meta.top_k,
        "max_detections": (model.meta.detection or {}).get("max_detections"),
        "threads": model.threads,
        "torch_imported": "torch" in sys.modules,
    }
