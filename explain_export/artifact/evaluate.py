"""``explain-eval``'s job on one exported explainer: each image's faithfulness scores by the
pinned protocol of :mod:`.faithfulness`, through the file itself (NumPy; no torch with ONNX).

Per image (float ``[3, H, W]`` RGB in [0, 1], the graph input as :func:`.pipeline.fit` makes
it), one call of the file gives the logits and the map ``m`` of the top-1 class ``c`` (a top-k
file's first map). Then, batched through the file (``batch`` images a call, their logits
alone read):

- the ``n + 1`` deletion and ``n + 1`` insertion images: their softmax probabilities of ``c``
  give the two curves and their AUCs;
- the masked image ``x ⊙ m``: ``masked_score`` and the map ``m'`` of ``c`` on it, whence
  ``average_drop``, ``increase_in_confidence``, ``complexity = mean(m)``, ``coherency`` and
  ``adcc``. ``m'`` is the map of ``c``: asked of a file that takes ``class_index``, else the
  file's own map where it explains ``c`` anyway (``c`` is still the top-1 of ``x ⊙ m``, or
  among a top-k file's classes); else ``coherency`` and ``adcc`` are NaN for that image.

``ms`` is one call of the file on the image alone (batch 1), as it is deployed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..errors import UsageError
from . import faithfulness as fa
from .contract import heatmap_unit
from .pipeline import CLASS_FREE_METHODS

__all__ = ["SCORES", "check_evaluable", "evaluate_image", "softmax"]

SCORES = (  # per image, in the order of the rows and the table
    "deletion_auc",
    "insertion_auc",
    "average_drop",
    "increase_in_confidence",
    "adcc",
)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def check_evaluable(artifact: Any) -> None:
    """A :class:`~.errors.UsageError` in one line where the file cannot be evaluated by the
    protocol: not a classifier, a map of no class, or a class fixed at export."""
    meta = artifact.metadata or {}
    path = artifact.path
    task = meta.get("task")
    if task in ("detection", "segmentation"):
        raise UsageError(
            f"'{path}' is a {task} export; explain-eval scores a classifier's map of its top-1 "
            "class"
        )
    if meta.get("target") == "none" or meta.get("method") in CLASS_FREE_METHODS:
        raise UsageError(
            f"'{path}' ({meta.get('method')}) explains no class, so no class score can be "
            "deleted or inserted; evaluate a method that explains a class"
        )
    fixed = meta.get("target_class")
    if fixed is not None and "class_index" not in artifact.input_names:
        raise UsageError(
            f"'{path}' explains class {fixed} for every image; explain-eval needs the map of "
            "each image's top-1: export again without --class-index (or with --class-input)"
        )


def _class_probs(artifact: Any, inputs: np.ndarray, c: int, batch: int) -> np.ndarray:
    """``[len(inputs)]``: the softmax probability of class ``c`` on each input."""
    out = []
    for i in range(0, len(inputs), batch):
        logits = artifact.outputs(inputs[i : i + batch])["logits"]
        out.append(softmax(logits)[:, c])
    return np.concatenate(out)


def _map_of(artifact: Any, out: dict[str, np.ndarray], c: int) -> np.ndarray | None:
    """The map of class ``c`` among one image's outputs, or None where none explains it."""
    heat = heatmap_unit(out["heatmap"])[0]
    classes = out.get("classes")
    if classes is not None:
        hit = np.flatnonzero(classes[0] == c)
        return heat[hit[0]] if hit.size else None
    if "class_index" in artifact.input_names or int(np.argmax(out["logits"][0])) == c:
        return heat[0]
    return None


def evaluate_image(artifact: Any, image: np.ndarray, steps: int, batch: int) -> dict[str, Any]:
    """One image's row: class, the scores (:data:`SCORES`), ``score``, ``masked_score``,
    ``complexity``, ``coherency``, ``ms`` and the two curves (lists of ``steps + 1``)."""
    takes_class = "class_index" in artifact.input_names
    t0 = time.perf_counter()
    out = artifact.outputs(image[None])
    ms = (time.perf_counter() - t0) * 1000
    probs = softmax(out["logits"][0])
    c = int(np.argmax(probs))
    m = heatmap_unit(out["heatmap"])[0, 0].astype(np.float32)
    masked = (image * m[None]).astype(np.float32)
    out2 = artifact.outputs(masked[None], np.array([c]) if takes_class else None)
    masked_score = float(softmax(out2["logits"][0])[c])
    m2 = _map_of(artifact, out2, c)
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    mask = fa.changed(m, steps)  # the pixels ranked once, for both curves
    curves = np.concatenate(
        [fa.deletion_steps(hwc, m, steps, mask), fa.insertion_steps(hwc, m, steps, mask)]
    ).transpose(0, 3, 1, 2)
    s = _class_probs(artifact, np.ascontiguousarray(curves), c, batch)
    deletion, insertion = s[: steps + 1], s[steps + 1 :]
    score = float(probs[c])
    drop = float(fa.average_drop(score, masked_score))
    complexity = float(m.mean())
    coherency = float(fa.coherency(m, m2)) if m2 is not None else float("nan")
    adcc = float(fa.adcc(coherency, complexity, drop)) if m2 is not None else float("nan")
    return {
        "class": c,
        "score": score,
        "masked_score": masked_score,
        "complexity": complexity,
        "coherency": coherency,
        "deletion_auc": float(fa.auc(deletion)),
        "insertion_auc": float(fa.auc(insertion)),
        "average_drop": drop,
        "increase_in_confidence": float(fa.increase_in_confidence(score, masked_score)),
        "adcc": adcc,
        "ms": ms,
        "deletion_curve": [float(v) for v in deletion],
        "insertion_curve": [float(v) for v in insertion],
    }
