"""The artifact contract: what ``explain-export`` writes into and beside every file, as types.

:class:`ArtifactMetadata` is the metadata stamped into each artifact (ONNX
``metadata_props[METADATA_KEY]``, the extra file ``explainer.json`` of TorchScript and pt2
archives) and written beside them. :meth:`ArtifactMetadata.from_json` checks a parsed JSON object
once (it is data: parsed, never run) and says in one line what is wrong; the readers (the
runner, the server, the Triton writer) then read typed fields. Beside it: the graph's input
formats and heatmap dtypes, its output names, how an image batch is fed to it
(:func:`graph_image`) and a heatmap read back (:func:`heatmap_unit`), and
:func:`check_metadata`, which checks an opened artifact against its metadata (a classifier's
``logits, heatmap``, or a detector's :data:`DETECTION_OUTPUTS`), and :func:`check_file`
(:mod:`.archive`), which checks that a TorchScript or pt2 file is one before torch reads it.
Both sides read these from here; no torch here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from ..errors import OptionError, UsageError
from .archive import check_file

__all__ = [
    "DETECTION_OUTPUTS",
    "FAITHFULNESS_OUTPUTS",
    "FILES",
    "FORMAT",
    "HEATMAP_DTYPES",
    "INPUT_FORMATS",
    "METADATA_FILE",
    "METADATA_KEY",
    "ArtifactMetadata",
    "Detections",
    "MetadataError",
    "TensorSpec",
    "check_file",
    "check_metadata",
    "class_count",
    "class_feed",
    "graph_image",
    "heatmap_unit",
    "output_names",
]

METADATA_KEY = "explain_export"  # ONNX metadata_props key
METADATA_FILE = "explainer.json"  # beside the artifacts, and TorchScript / pt2's extra file
FORMAT = "explain-export/1"
FILES = {
    "torchscript": "explainer.torchscript.pt",
    "onnx": "explainer.onnx",
    "pt2": "explainer.pt2",
}


INPUT_FORMATS = ("float-nchw", "uint8-nhwc")  # the image input: float [N,3,H,W] in [0,1], or uint8
HEATMAP_DTYPES = ("float32", "uint8")  # the heatmap output: [0, 1], or round(255·m)


# a detector's outputs: boxes [N,D,4] (x1,y1,x2,y2 in input pixels, best first), scores [N,D],
# classes [N,D] int64 (-1 on padding rows), count [N] int64 (rows >= count are padding), and
# heatmap [N,D,H,W] (map j explains detection j) or [N,1,H,W] (one class-agnostic map per image)
DETECTION_OUTPUTS = ["boxes", "scores", "classes", "count", "heatmap"]

# --faithfulness, per map m of class c on image x ([N], [N,k] with top-k): softmax(logits(x))[c],
# softmax(logits(x ⊙ m))[c], mean(m), (pearson(m, m') + 1) / 2 with m' c's map of x ⊙ m
FAITHFULNESS_OUTPUTS = ("score", "masked_score", "complexity", "coherency")


class Detections(NamedTuple):
    """A detector's outputs for a batch, as an artifact's call returns them
    (:data:`DETECTION_OUTPUTS`, the heatmap as float in [0, 1])."""

    boxes: np.ndarray  # float32 [N, D, 4], x1, y1, x2, y2 in input pixels, best first
    scores: np.ndarray  # float32 [N, D]
    classes: np.ndarray  # int64 [N, D], -1 on padding rows
    count: np.ndarray  # int64 [N]: rows j < count[n] are detections
    heatmap: np.ndarray  # float32 [N, D, H, W] (map j: detection j) or [N, 1, H, W]


def output_names(
    overlay: bool = False,
    classes: bool = False,
    task: str | None = None,
    faithfulness: bool = False,
) -> list[str]:
    """The graph's outputs, in order: ``logits``, ``heatmap``, and the in-graph ``overlay`` or a
    top-k graph's ``classes``, then with ``faithfulness`` the :data:`FAITHFULNESS_OUTPUTS`; a
    ``detection`` task's :data:`DETECTION_OUTPUTS`."""
    if task == "detection":
        return list(DETECTION_OUTPUTS)
    names = ["logits", "heatmap"] + ["overlay"] * overlay + ["classes"] * classes
    return names + list(FAITHFULNESS_OUTPUTS) * faithfulness


def graph_image(image: np.ndarray, input_format: str) -> np.ndarray:
    """float32 ``[N,3,H,W]`` in [0,1] -> what a graph of ``input_format`` takes."""
    if input_format == "uint8-nhwc":
        pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
    return np.ascontiguousarray(image, dtype=np.float32)


def heatmap_unit(heatmap: np.ndarray) -> np.ndarray:
    """A heatmap as float32 in [0, 1]: a ``uint8`` one (``--heatmap-dtype uint8``) is / 255."""
    if heatmap.dtype == np.uint8:
        return heatmap.astype(np.float32) / np.float32(255.0)
    return heatmap


def class_feed(
    path: str,
    input_names: list[str],
    num_classes: int | None,
    n: int,
    class_index: Any = None,
    top_k: int | None = None,
    task: str | None = None,
) -> np.ndarray | None:
    """The ``class_index`` input for a batch of ``n``: int64 ``[n]``, -1 for the top-1 where
    ``class_index`` is None; one value is given to every image. None where the graph has no
    such input and none is asked for (-1 asks for nothing: the graph explains its default).

    Raises an OptionError for a class out of range, and a UsageError where a class is asked of
    a graph without the input (it would be ignored: the heatmap would show another class; a
    top-k graph, ``top_k``, picks its own classes; a ``detection`` ``task``'s map j explains
    its detection j).
    """
    takes = "class_index" in input_names
    if class_index is None:
        return np.full(n, -1, np.int64) if takes else None
    index = np.asarray(class_index).astype(np.int64).reshape(-1)
    if index.size == 1:
        index = np.full(n, index[0], np.int64)
    if index.shape != (n,):
        raise OptionError("class_index", "{name} has {k} values for {n} images", k=index.size, n=n)
    if not takes:
        if (index == -1).all():
            return None
        if task == "detection":
            raise UsageError(
                f"'{path}' is a detector and takes no class: its map j explains its detection "
                "j, of the class the model found; drop the class"
            )
        if top_k is not None:
            raise UsageError(
                f"'{path}' explains the top-{top_k} classes of every image and takes no class; "
                "for a chosen class export without --top-k and with --class-input"
            )
        raise UsageError(
            f"'{path}' takes no class at run time (it explains the top-1 class, or the one "
            "fixed at export); re-export it with explain-export --class-input"
        )
    top = num_classes if isinstance(num_classes, int) else None
    bad = index[(index < -1) | (index >= top if top is not None else False)]
    if bad.size:
        last = f"0..{top - 1}" if top is not None else "0 or more"
        raise OptionError(
            "class_index",
            "{name} {v} is out of range: the model has {k} classes ({last}); -1 takes the default "
            "(the top-1; for a segmentation model, the class with most pixels)",
            v=int(bad[0]),
            k=top if top is not None else "its",
            last=last,
        )
    return index


class MetadataError(ValueError):
    """Metadata that cannot be used: the message says what is wrong, in one line."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype, and shape with the batch first (named, like
    ``["N", 3, 224, 224]``; other named dims are free); ``attrs`` keeps the rest (layout, range,
    colour order, meaning)."""

    name: str
    dtype: str | None = None
    shape: tuple[int | str, ...] | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.dtype is not None:
            out["dtype"] = self.dtype
        if self.shape is not None:
            out["shape"] = list(self.shape)
        return {**out, **self.attrs}

    @classmethod
    def from_json(cls, data: Any) -> TensorSpec:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise MetadataError("inputs and outputs must be lists of tensors with names")
        shape = data.get("shape")
        if shape is not None and not (
            isinstance(shape, list) and all(isinstance(d, int | str) for d in shape)
        ):
            raise MetadataError(f"tensor '{data['name']}' has shape {shape!r}, not a list")
        dtype = data.get("dtype")
        attrs = {k: v for k, v in data.items() if k not in ("name", "dtype", "shape")}
        return cls(
            data["name"],
            dtype if isinstance(dtype, str) else None,
            None if shape is None else tuple(shape),
            attrs,
        )


@dataclass(frozen=True)
class ArtifactMetadata:
    """Everything a runner needs to feed the graph and read its outputs, and what made it.

    Only ``input_size``, ``inputs`` and ``outputs`` are required to read an artifact; the rest
    describes the export (method, layer, parity report, versions). The field order is the JSON
    key order. Unknown keys are kept in ``extra`` and written back.
    """

    input_size: tuple[int, int]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    format: str = FORMAT
    model: str | None = None
    output: str | None = None  # which of the model's outputs the logits are ("['out']", "[0]")
    method: str | None = None
    method_requested: str | None = None
    method_reason: str | None = None
    layer: str | None = None
    layers: tuple[str, ...] | None = None  # every tapped map; several: their maps are fused
    fuse: str | None = None  # several layers: how their maps are fused, mean or product
    layout: str | None = None
    tap_copied: bool | None = None
    head: str | None = None
    target_class: int | None = None
    target: str | None = None  # what a map explains: class, top-k, region, none, a plug-in's
    task: str | None = None  # "segmentation": logits are per-pixel scores [N, K, H', W']
    background: int | None = None  # segmentation: the class the default target leaves out
    top_k: int | None = None  # heatmap [N, top_k, H, W] and classes [N, top_k]; None: [N, 1, H, W]
    # a sampling method's points: {"kind": "path" | "noise", "steps", "noise", "seed"}
    sampling: Mapping[str, Any] | None = None
    # task "detection": max_detections (D), score_threshold, iou_threshold, score, family, maps
    # ("per-detection" or "per-image"), label_set ("coco80", "coco91" or None)
    detection: Mapping[str, Any] | None = None
    feature_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    dynamic_size: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_format: str = "float-nchw"
    half: bool = False
    heatmap_dtype: str = "float32"
    overlay: Mapping[str, Any] | None = None
    labels: tuple[str, ...] | None = None
    opset: int | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    created: str | None = None
    export_id: str | None = None  # one per export, in every file of its set and explainer.json
    parity: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def tensor(self, name: str) -> TensorSpec | None:
        """The input or output called ``name``, if the metadata lists it."""
        return next((t for t in (*self.inputs, *self.outputs) if t.name == name), None)

    def to_json(self) -> dict[str, Any]:
        """The JSON object (lists for tuples), in field order, ``extra`` last."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in ("inputs", "outputs"):
                value = [t.to_json() for t in value]
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Any) -> ArtifactMetadata:
        """Check ``data`` (a parsed JSON object) once; :class:`MetadataError` says what is
        wrong."""
        if not isinstance(data, dict):
            raise MetadataError("not a JSON object")
        missing = [k for k in ("input_size", "inputs", "outputs") if k not in data]
        if missing:
            raise MetadataError(f"it lacks {', '.join(missing)}")
        size = data["input_size"]
        if not (
            isinstance(size, list)
            and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise MetadataError(f"input_size must be [H, W] with positive integers, not {size!r}")
        for key in ("inputs", "outputs"):
            if not isinstance(data[key], list):
                raise MetadataError(f"{key} must be a list of tensors with names")
        labels = data.get("labels")
        if labels is not None and not (
            isinstance(labels, list) and all(isinstance(x, str) for x in labels)
        ):
            raise MetadataError("labels must be a list of strings")
        if not isinstance(data.get("sampling", {}), dict | type(None)):
            raise MetadataError("sampling must be a JSON object (kind, steps, noise, seed)")
        if not isinstance(data.get("detection", {}), dict | type(None)):
            raise MetadataError("detection must be a JSON object (max_detections, thresholds, ...)")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        for key in known & set(data):
            value = data[key]
            if key in ("inputs", "outputs"):
                value = tuple(TensorSpec.from_json(t) for t in value)
            elif isinstance(value, list):
                value = tuple(value)
            values[key] = value
        values["input_size"] = (int(size[0]), int(size[1]))
        for key, default in (("input_format", "float-nchw"), ("heatmap_dtype", "float32")):
            if not isinstance(values.get(key, default), str):
                raise MetadataError(f"{key} must be a string")
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra)

    @classmethod
    def coerce(cls, metadata: ArtifactMetadata | Mapping[str, Any]) -> ArtifactMetadata:
        """``metadata`` typed: as it is, or checked from its JSON object."""
        if isinstance(metadata, ArtifactMetadata):
            return metadata
        return cls.from_json(dict(metadata))


class Opened(Protocol):
    """An opened artifact, as :func:`check_metadata` reads it (a :mod:`.runtime` session)."""

    path: str
    metadata: dict[str, Any] | None
    output_names: list[str]
    shapes: dict[str, list[Any]]


def check_metadata(artifact: Opened) -> ArtifactMetadata:
    """The artifact's metadata (:class:`ArtifactMetadata`), checked against the
    graph it describes."""
    raw = artifact.metadata
    if raw is None:
        raise UsageError(
            f"'{artifact.path}' has no explain-export metadata, in the file or as explainer.json "
            "beside it; export it with explain-export"
        )
    try:
        meta = ArtifactMetadata.from_json(raw)
    except MetadataError as exc:
        raise UsageError(
            f"metadata of '{artifact.path}' is not usable: {exc}; re-export it"
        ) from exc
    detector = meta.task == "detection"
    expected = DETECTION_OUTPUTS if detector else ["logits", "heatmap"]
    if detector and "masks" in artifact.output_names:  # Mask R-CNN
        expected = [*DETECTION_OUTPUTS, "masks"]
    kept = [n for n in artifact.output_names if n not in FAITHFULNESS_OUTPUTS]  # --faithfulness
    names = kept if detector else meta.output_names[:2]
    if "heatmap" not in artifact.output_names or names != expected:
        raise UsageError(
            f"'{artifact.path}' is not an explainer: its outputs are "
            f"{', '.join(artifact.output_names)}; expected {', '.join(expected)}"
        )
    image = artifact.shapes.get("image")
    size = list(meta.input_size)
    if image and all(isinstance(d, int) for d in image[2:]) and image[2:] != size:
        raise UsageError(
            f"metadata of '{artifact.path}' says input {size[0]}x{size[1]}, but the graph takes "
            f"{image[2]}x{image[3]}; the metadata belongs to another export, re-export it"
        )
    classes = meta.num_classes if detector else class_count(meta, artifact.shapes.get("logits"))
    if meta.labels and classes is not None and len(meta.labels) != classes:
        raise UsageError(
            f"metadata of '{artifact.path}' has {len(meta.labels)} labels for {classes} "
            "classes; re-export it"
        )
    return meta


def class_count(meta: ArtifactMetadata, logits: list[Any] | None) -> int | None:
    """The class count K from the graph's ``logits`` shape: its last dim (``[N, K]``), or for
    a segmentation model (per-pixel scores ``[N, K, H', W']``) dim 1; None where the graph does
    not fix it."""
    if not logits:
        return None
    k = logits[1] if meta.task == "segmentation" and len(logits) > 1 else logits[-1]
    return k if isinstance(k, int) else None
