"""Write a Triton Inference Server model repository: one model folder per exported format.

    REPO/NAME_onnx/config.pbtxt          backend "onnxruntime"
    REPO/NAME_onnx/1/model.onnx
    REPO/NAME_torchscript/config.pbtxt   platform "pytorch_libtorch", backend "pytorch"
    REPO/NAME_torchscript/1/model.pt

``config.pbtxt`` is Triton's own ``ModelConfig`` protobuf message (from ``tritonclient``),
printed with ``google.protobuf.text_format``. Every tensor in it comes from the export
metadata's ``inputs`` and ``outputs`` (name, dtype, shape with the batch first): the batch
dimension becomes ``max_batch_size``, named dimensions become ``-1``. A tensor that is only the
batch (the ``class_index`` input, a detector's ``count`` output, ``[N]``) gets ``dims: [1]`` with
``reshape: { shape: [] }``, Triton's documented form ("Reshape" in its model_configuration.md),
because ``dims`` may not be empty. A detector's other outputs are static: ``boxes [D, 4]``,
``scores [D]``, ``classes [D]`` (int64) and ``heatmap [D, H, W]`` (``[1, H, W]`` for one
class-agnostic map), and a Mask R-CNN export's ``masks [D, H, W]``, D its ``--max-detections``.
Requests are batched by ``dynamic_batching {}``; ``instance_group`` sets the count and CPU/GPU.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

from google.protobuf import text_format

from ..errors import ExplainExportError, OptionError, UsageError
from .contract import ArtifactMetadata, MetadataError, TensorSpec
from .files import commit_set

__all__ = [
    "BACKENDS",
    "DTYPES",
    "KINDS",
    "MODEL_FILES",
    "PIP_EXTRA",
    "VERSION",
    "check_repo",
    "model_config",
    "write_triton_repo",
]

BACKENDS = {"onnx": ("", "onnxruntime"), "torchscript": ("pytorch_libtorch", "pytorch")}
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}  # each backend's default name
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
DTYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "uint8": "TYPE_UINT8"}
VERSION = "1"
PIP_EXTRA = "pip install 'explain-export[triton]'"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _model_config_pb2() -> Any:
    """``tritonclient.grpc.model_config_pb2``; its package imports ``grpc``, so it needs
    ``tritonclient[grpc]``, not the bare ``tritonclient``."""
    try:
        return importlib.import_module("tritonclient.grpc.model_config_pb2")
    except (ImportError, RuntimeError) as exc:  # tritonclient raises RuntimeError without grpc
        raise ExplainExportError(
            f"writing a Triton repository needs tritonclient with grpc; {PIP_EXTRA}"
        ) from exc


def _check_options(name: str, max_batch_size: int, instances: int, kind: str) -> None:
    if not _NAME.fullmatch(name):
        raise OptionError("name", "{name} '{v}' must be letters, digits, '_', '.' or '-'", v=name)
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int):
        raise OptionError(
            "max_batch_size", "{name} must be an integer >= 1; got {v!r}", v=max_batch_size
        )
    if max_batch_size < 1:
        raise OptionError("max_batch_size", "{name} must be >= 1; got {v}", v=max_batch_size)
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
        raise OptionError("instances", "{name} must be an integer >= 1; got {v!r}", v=instances)
    if kind not in KINDS:
        raise OptionError(
            "kind", "{name} must be one of {kinds}; got '{v}'", kinds=", ".join(KINDS), v=kind
        )


def _tensor_dims(tensor: TensorSpec) -> tuple[list[int], list[int] | None]:
    """``(dims, reshape)`` for Triton from a metadata shape whose first entry is the batch."""
    shape = tensor.shape
    if not shape or not isinstance(shape[0], str):
        raise UsageError(
            f"metadata tensor '{tensor.name}' needs a shape with a named batch "
            f"dimension first, like ['N', 3, 224, 224]; got {list(shape or [])!r}"
        )
    dims = [-1 if isinstance(d, str) else int(d) for d in shape[1:]]
    return ([1], []) if not dims else (dims, None)


def _tensors(metadata: ArtifactMetadata | Mapping[str, Any], key: str) -> list[TensorSpec]:
    """The ``inputs`` or ``outputs`` of typed metadata, or of a metadata JSON object (which
    may hold only those two lists)."""
    if isinstance(metadata, ArtifactMetadata):
        return list(getattr(metadata, key))
    specs = []
    for tensor in metadata.get(key) or []:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise UsageError(f"metadata tensor {tensor!r} has no name; pass an export's metadata")
        try:
            specs.append(TensorSpec.from_json(tensor))
        except MetadataError as exc:
            raise UsageError(f"metadata is not usable: {exc}; pass an export's metadata") from exc
    return specs


def _fill(io: Any, pb2: Any, tensor: TensorSpec, suffix: str = "") -> None:
    """One ``ModelInput``/``ModelOutput`` from a metadata tensor; ``suffix`` ends its name."""
    if not tensor.name:
        raise UsageError(f"metadata tensor {tensor!r} has no name; pass an export's metadata")
    if tensor.dtype not in DTYPES:
        raise UsageError(
            f"metadata tensor '{tensor.name}' has dtype {tensor.dtype!r}; the Triton writer maps "
            f"{', '.join(DTYPES)}"
        )
    dims, reshape = _tensor_dims(tensor)
    io.name = tensor.name + suffix
    io.data_type = pb2.DataType.Value(DTYPES[tensor.dtype])
    io.dims.extend(dims)
    if reshape is not None:
        io.reshape.shape.extend(reshape)


def model_config(
    metadata: ArtifactMetadata | Mapping[str, Any],
    fmt: str,
    name: str,
    max_batch_size: int = 8,
    instances: int = 1,
    kind: str = "cpu",
) -> Any:
    """The ``ModelConfig`` message for the ``fmt`` ("onnx" or "torchscript") model ``name``.

    ONNX tensors keep the graph's names. A TorchScript file carries no tensor names, so
    Triton's PyTorch backend binds them by convention (Triton's model_configuration.md,
    "Special Conventions for PyTorch Backend"): inputs named like the ``forward`` arguments
    (``image``, ``class_index``), and outputs named ``<name>__<index>`` with the index the
    position in the returned tuple (``logits__0``, ``heatmap__1``, then ``overlay__2`` or a
    top-k export's ``classes__2``: int64, dims ``[K]``, beside a heatmap of ``[K, H, W]``; a
    segmentation export's ``logits`` are its per-pixel scores, dims ``[K, H', W']``, and its
    ``classes`` the one class its heatmap explains, dims ``[1]``; a detector's ``boxes__0``,
    ``scores__1``, ``classes__2``, ``count__3``, ``heatmap__4``, a Mask R-CNN's ``masks__5``). A
    backend older than the forward-argument rule takes inputs in the configuration's order,
    which is the forward order too. The metadata lists inputs and outputs in graph order.
    """
    if fmt not in BACKENDS:
        raise UsageError(f"no Triton backend for format '{fmt}'; choose {', '.join(BACKENDS)}")
    _check_options(name, max_batch_size, instances, kind)
    pb2 = _model_config_pb2()
    platform, backend = BACKENDS[fmt]
    config = pb2.ModelConfig(name=name, backend=backend, max_batch_size=max_batch_size)
    if platform:
        config.platform = platform
    for tensor in _tensors(metadata, "inputs"):
        _fill(config.input.add(), pb2, tensor)
    for index, tensor in enumerate(_tensors(metadata, "outputs")):
        _fill(config.output.add(), pb2, tensor, f"__{index}" if fmt == "torchscript" else "")
    if not config.input or not config.output:
        raise UsageError("metadata lists no inputs or no outputs; pass an export's metadata")
    config.dynamic_batching.SetInParent()
    config.instance_group.add(count=instances, kind=pb2.ModelInstanceGroup.Kind.Value(KINDS[kind]))
    return config


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link (export replaces its files by rename, so the link never sees a rewrite)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _staging_dir(repo_dir: str) -> str:
    """A temp folder beside ``repo_dir`` on the same filesystem, else a hidden one inside."""
    parent = os.path.dirname(os.path.abspath(repo_dir))
    try:
        if os.stat(parent).st_dev == os.stat(repo_dir).st_dev:
            return tempfile.mkdtemp(prefix=".triton-tmp-", dir=parent)
    except OSError:
        pass  # parent not writable: stage inside the repository
    return tempfile.mkdtemp(prefix=".triton-tmp-", dir=repo_dir)


def check_repo(
    repo_dir: str,
    formats: list[str],
    name: str = "explainer",
    max_batch_size: int = 8,
    instances: int = 1,
    kind: str = "cpu",
    overwrite: bool = False,
) -> list[str]:
    """What :func:`write_triton_repo` checks before it writes; the formats it will write.

    Cheap, so a command can call it before a long export. Raises :class:`~.errors.UsageError`,
    or :class:`~.errors.ExplainExportError` where ``tritonclient[grpc]`` is missing.
    """
    _check_options(name, max_batch_size, instances, kind)
    chosen = [fmt for fmt in BACKENDS if fmt in formats]
    if not chosen:
        raise OptionError(
            "repo_dir", "{name} needs an onnx or torchscript export; got {v}", v=formats
        )
    if os.path.exists(repo_dir) and not os.path.isdir(repo_dir):
        raise OptionError("repo_dir", "{name} '{v}' is a file; give a folder", v=repo_dir)
    if not overwrite:
        for fmt in chosen:
            path = os.path.join(repo_dir, f"{name}_{fmt}")
            if os.path.lexists(path):
                raise OptionError(
                    "name", "'{path}' already exists; remove it or choose another {name}", path=path
                )
    _model_config_pb2()
    return chosen


def write_triton_repo(
    artifacts: dict[str, str],
    metadata: ArtifactMetadata | Mapping[str, Any],
    repo_dir: str,
    name: str = "explainer",
    max_batch_size: int = 8,
    instances: int = 1,
    kind: str = "cpu",
    overwrite: bool = False,
) -> list[str]:
    """Write ``repo_dir/NAME_<format>/{config.pbtxt, 1/model.*}``; return the folders written.

    ``artifacts`` maps formats to exported files, as ``ExportResult.paths`` does; the "onnx"
    and "torchscript" entries are used and the others (metadata, pt2) ignored. The folders are
    built in a temp folder beside ``repo_dir`` and renamed into place; an existing
    ``NAME_<format>`` is refused unless ``overwrite``. Raises :class:`~.errors.UsageError`.
    """
    formats = check_repo(
        repo_dir, list(artifacts), name, max_batch_size, instances, kind, overwrite
    )
    for fmt in formats:
        if not os.path.isfile(artifacts[fmt]):
            raise UsageError(f"no {fmt} file at '{artifacts[fmt]}' for the Triton repository")
    folders = {fmt: f"{name}_{fmt}" for fmt in formats}
    texts = {
        fmt: text_format.MessageToString(
            model_config(metadata, fmt, folders[fmt], max_batch_size, instances, kind)
        )
        for fmt in formats
    }
    try:
        os.makedirs(repo_dir, exist_ok=True)
    except OSError as exc:
        raise OptionError(
            "repo_dir", "cannot create {name} '{v}': {why}", v=repo_dir, why=exc.strerror
        ) from exc
    tmp = _staging_dir(repo_dir)
    try:
        staged = {}
        for fmt in formats:
            model_dir = os.path.join(tmp, folders[fmt])
            os.makedirs(os.path.join(model_dir, VERSION))
            _link_or_copy(artifacts[fmt], os.path.join(model_dir, VERSION, MODEL_FILES[fmt]))
            with open(os.path.join(model_dir, "config.pbtxt"), "w") as f:
                f.write(texts[fmt])
            staged[os.path.join(repo_dir, folders[fmt])] = model_dir
        commit_set(staged, os.path.dirname(tmp))  # all, or on a failure the repo as it was
        return list(staged)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
