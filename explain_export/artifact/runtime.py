"""Load an exported explainer and run it on numpy batches.

ONNX models run on ONNX Runtime and never import torch; TorchScript (``.pt``) and
``torch.export`` programs (``.pt2``) import torch lazily. Every artifact takes the runner's
canonical batch, float32 ``[N,3,H,W]`` RGB in [0,1] (converted here to uint8 ``[N,H,W,3]`` for
graphs exported with ``--input-format uint8-nhwc``), returns ``(logits, heatmap)`` as float32
numpy arrays from ``__call__`` (a ``--heatmap-dtype uint8`` heatmap / 255; a detector's
:class:`~.contract.Detections`, a Mask R-CNN's :class:`~.masks.MaskDetections`) and every
output as the graph returns it from ``outputs()``, and carries the metadata that
``explain-export`` wrote: from the file itself, or else from ``explainer.json`` beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import Any

import numpy as np

from ..errors import OptionError, UsageError, first_line
from .contract import (
    DETECTION_OUTPUTS,
    METADATA_FILE,
    METADATA_KEY,
    ArtifactMetadata,
    Detections,
    MetadataError,
    check_file,
    class_feed,
    graph_image,
    heatmap_unit,
)
from .device_io import MAX_GRAPHS, Binding, GraphReplay
from .masks import MaskDetections, detections_of
from .providers import CUDA_PROVIDER, cuda_missing, fall_back, ort_session, torch_device

__all__ = [
    "SUFFIXES",
    "Artifact",
    "ExportedProgramExplainer",
    "OnnxExplainer",
    "TorchScriptExplainer",
    "load",
    "sidecar_metadata",
]


def sidecar_metadata(path: str) -> dict[str, Any] | None:
    """The ``explainer.json`` in the artifact's folder, if there is one."""
    sidecar = os.path.join(os.path.dirname(os.path.abspath(path)), METADATA_FILE)
    if not os.path.isfile(sidecar):
        return None
    with open(sidecar) as f:
        return json.load(f)


def _own_metadata(path: str, embedded: str | None) -> dict[str, Any] | None:
    """The metadata stamped in the file, else ``explainer.json`` beside it; a file whose
    ``export_id`` differs from the one beside it is refused (a commit was interrupted)."""
    if not embedded:
        return sidecar_metadata(path)
    meta, beside = json.loads(embedded), None
    with contextlib.suppress(OSError, ValueError):  # an unreadable one says nothing
        beside = sidecar_metadata(path)
    ids = [m.get("export_id") if isinstance(m, dict) else None for m in (meta, beside)]
    if all(ids) and ids[0] != ids[1]:
        raise UsageError(
            f"'{path}' and {METADATA_FILE} beside it come from different exports "
            "(a commit was interrupted); re-export"
        )
    return meta


def typed_metadata(metadata: Any) -> ArtifactMetadata | None:
    """``metadata`` as :class:`~.contract.ArtifactMetadata`, or None where there is none or it
    is not usable (:func:`.contract.check_metadata` says why, for the commands)."""
    if metadata is None:
        return None
    try:
        return ArtifactMetadata.from_json(metadata)
    except MetadataError:
        return None


class _Artifact:
    """What every artifact has: metadata, names, and the (logits, heatmap) call."""

    path: str
    metadata: dict[str, Any] | None
    input_names: list[str]
    output_names: list[str]
    input_format: str
    providers: list[str]

    def outputs(
        self, image: np.ndarray, class_index: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _class_input(self, n: int, class_index: Any) -> np.ndarray | None:
        """The checked ``class_index`` feed (:func:`.contract.class_feed`)."""
        meta = self.metadata or {}
        classes, top_k, task = meta.get("num_classes"), meta.get("top_k"), meta.get("task")
        return class_feed(self.path, self.input_names, classes, n, class_index, top_k, task)

    def __call__(
        self, image: np.ndarray, class_index: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray] | Detections | MaskDetections:
        """``(logits, heatmap)`` as float32 numpy (the heatmap in [0, 1]); a detector's
        :class:`~.contract.Detections`, or with ``masks`` :class:`~.masks.MaskDetections`."""
        out = self.outputs(image, class_index)
        heatmap = heatmap_unit(out["heatmap"])
        if "logits" not in out and "boxes" in out:
            return detections_of(out, heatmap)
        return out["logits"], heatmap


class OnnxExplainer(_Artifact):
    """An ``explainer.onnx`` on ONNX Runtime.

    ``device="cuda"`` asks for the CUDA provider when ONNX Runtime lists it; ``providers`` then
    says what the session really uses. Where the CUDA provider does not start, the session runs
    on the CPU: ``device`` is then ``"cpu"``, ``note`` says why, and a
    :class:`~..errors.DeviceFallbackWarning` is issued.

    ``io_binding`` (default: on with the CUDA provider) keeps one set of input and output
    buffers per batch shape on the device: a call copies the batch in and, with
    ``outputs(..., to_host=False)``, leaves the outputs there. ``cuda_graph`` (default: on with
    the CUDA provider) replays each batch shape from a CUDA graph captured on its first call,
    which saves the per-kernel launch cost; ONNX Runtime refuses it when some nodes run on the
    CPU, and then the session runs without (``note`` says why). At most ``max_graphs`` shapes
    get a graph; further shapes run without one.
    """

    max_graphs = MAX_GRAPHS

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        threads: int | None = None,
        input_format: str | None = None,
        io_binding: bool | None = None,
        cuda_graph: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = path
        self.note: str | None = None
        cuda = device == "cuda" and CUDA_PROVIDER in ort.get_available_providers()
        want_graph = cuda and cuda_graph is not False
        try:
            self.session = self._session(ort, path, threads, cuda, want_graph)
        except Exception as exc:
            if type(exc).__name__ != "InvalidProtobuf":
                raise
            raise OptionError(
                "path",
                "{name} '{v}' is not a readable ONNX file (damaged, cut short, or another kind "
                "of file); export it again",
                v=path,
            ) from exc
        self.providers = self.session.get_providers()
        on_cuda = self.providers[0] == CUDA_PROVIDER
        self.device = "cuda" if on_cuda else "cpu"
        self.cuda_graph = want_graph and on_cuda and self.note is None
        why = cuda_missing(self.session) if device == "cuda" else None
        if why:
            self.note = fall_back(path, why)
        elif cuda_graph and not self.cuda_graph and self.note is None:
            self.note = "CUDA graphs need ONNX Runtime's CUDA provider; running without"
        self.io_binding = bool(io_binding if io_binding is not None else on_cuda) or self.cuda_graph
        self._kind = "cuda" if on_cuda else "cpu"
        self._bindings: dict[tuple[tuple[int, ...], ...], Binding] = {}
        self._run_options: dict[tuple[tuple[int, ...], ...], Any] = {}
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_names = [i.name for i in inputs]
        self.output_names = [o.name for o in outputs]
        # per tensor, dims as ints, or names where dynamic (e.g. ["batch", 3, 224, 224])
        self.shapes = {t.name: list(t.shape) for t in inputs + outputs}
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata = _own_metadata(path, raw)
        uint8 = inputs and inputs[0].type == "tensor(uint8)"
        self.input_format = input_format or ("uint8-nhwc" if uint8 else "float-nchw")

    def _session(self, ort: Any, path: str, threads: int | None, cuda: bool, graph: bool) -> Any:
        device = "cuda" if cuda else "cpu"
        try:
            return ort_session(path, device, threads, cuda_graph=graph)
        except Exception as exc:
            if not graph:
                raise
            self.note = f"CUDA graphs refused ({first_line(exc)}); running without"
            return ort_session(path, device, threads)

    @property
    def backend(self) -> str:
        extra = " + CUDA graphs" if self.cuda_graph else " io_binding" if self.io_binding else ""
        return f"onnxruntime {self.providers[0]}{extra}"

    def _feeds(self, image: np.ndarray, class_index: np.ndarray | None) -> dict[str, np.ndarray]:
        feeds = {"image": graph_image(image, self.input_format)}
        index = self._class_input(image.shape[0], class_index)
        return feeds if index is None else {**feeds, "class_index": index}

    def outputs(
        self, image: np.ndarray, class_index: np.ndarray | None = None, to_host: bool = True
    ) -> dict[str, Any]:
        """Every output by name, as numpy arrays; with ``to_host=False`` and IO binding, as
        ``onnxruntime.OrtValue`` on the session's device, valid until the next call with the
        same batch shape."""
        feeds = self._feeds(image, class_index)
        if not self.io_binding:
            results = self.session.run(self.output_names, feeds)
            return dict(zip(self.output_names, results, strict=True))
        key = tuple(a.shape for a in feeds.values())
        bound = self._bindings.get(key)
        if bound is None:
            # the allocating run captures nothing (graph id -1); the shape's graph comes after
            first = self._graph_options(-1)
            bound = Binding(self.session, self._kind, feeds, self.output_names, first)
            self._bindings[key] = bound
            self._run_options[key] = self._graph_options(len(self._bindings))
        else:
            bound.feed(feeds)
        self.session.run_with_iobinding(bound.binding, self._run_options[key])
        if not to_host:
            return dict(bound.outputs)
        return {n: v.numpy() for n, v in bound.outputs.items()}

    def _graph_options(self, index: int) -> Any:
        """Run options that give batch shape number ``index`` (from 1; ONNX Runtime keeps 0 for
        runs that name no graph) its own CUDA graph, or none (-1, or past ``max_graphs``)."""
        import onnxruntime as ort

        options = ort.RunOptions()
        if self.cuda_graph:
            graph_id = index if 0 < index <= self.max_graphs else -1  # -1: run without a graph
            options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return options


class _TorchArtifact(_Artifact):
    """Shared by the TorchScript and torch.export artifacts; subclasses say how to load.

    ``device="cuda"`` without a CUDA device runs on the CPU, with a
    :class:`~..errors.DeviceFallbackWarning` and a ``note`` that says why. On CUDA,
    ``cuda_graph`` (default on) replays each batch shape from a
    ``torch.cuda.CUDAGraph`` (:class:`~.device_io.GraphReplay`); a graph that cannot be captured
    turns it off, and ``note`` says why. Torch tensors stay on the device with
    ``outputs(..., to_host=False)``: no IO binding is needed."""

    kind = ""

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        threads: int | None = None,
        input_format: str | None = None,
        cuda_graph: bool | None = None,
    ) -> None:
        import torch

        self._torch = torch
        self.threads = threads  # applied around each call, not to the process at load
        self.path = path
        self.device, why = torch_device(torch, device)
        self.providers = [self.device]
        self.cuda_graph = self.device == "cuda" and cuda_graph is not False
        self.note: str | None = fall_back(path, why) if why else None
        if cuda_graph and self.device != "cuda" and self.note is None:
            self.note = "CUDA graphs need a CUDA device; running without"
        self.shapes: dict[str, list] = {}  # neither format declares shapes
        extra = {METADATA_FILE: ""}
        check_file(path)
        self.module, self.input_names = self._load(extra)
        text = extra[METADATA_FILE]
        self.metadata = _own_metadata(path, text)
        typed = typed_metadata(self.metadata)  # neither format says its own I/O: ask the contract
        self.input_format = input_format or (typed.input_format if typed else "float-nchw")
        self.output_names = (typed and typed.output_names) or ["logits", "heatmap"]
        self._replay = GraphReplay(self.module) if self.cuda_graph else None

    def _load(self, extra: dict[str, str]) -> tuple[Any, list[str]]:
        """The callable module and its input names; fills ``extra`` with the metadata file."""
        raise NotImplementedError

    @property
    def backend(self) -> str:
        return f"{self.kind} {self.device}" + (" + CUDA graphs" if self.cuda_graph else "")

    def outputs(
        self, image: np.ndarray, class_index: np.ndarray | None = None, to_host: bool = True
    ) -> dict[str, Any]:
        """Every output by name, as numpy arrays; with ``to_host=False`` as torch tensors on
        the device (with CUDA graphs: valid until the next call with the same batch shape)."""
        torch = self._torch
        args = [torch.from_numpy(graph_image(image, self.input_format)).to(self.device)]
        index = self._class_input(image.shape[0], class_index)
        if index is not None:
            args.append(torch.from_numpy(index).to(self.device))
        with torch.inference_mode():
            result = self._run(args)
        names = self.output_names if len(self.output_names) == len(result) else None
        third = "overlay" if len(result) < 3 or result[2].dim() == 4 else "classes"  # no metadata
        if len(result) == len(DETECTION_OUTPUTS):  # a detector's graph: five outputs, no metadata
            names = names or DETECTION_OUTPUTS
        elif len(result) == len(DETECTION_OUTPUTS) + 1 and result[0].dim() == 3:  # and masks
            names = names or [*DETECTION_OUTPUTS, "masks"]
        names = names or ["logits", "heatmap", third][: len(result)]
        if not to_host:
            return dict(zip(names, result, strict=True))
        return {n: t.cpu().numpy() for n, t in zip(names, result, strict=True)}

    def _run(self, args: list[Any]) -> Any:
        torch = self._torch
        before = torch.get_num_threads()
        if self.threads and self.threads != before:
            torch.set_num_threads(self.threads)
        try:
            return self._call(args)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    def _call(self, args: list[Any]) -> Any:
        if self._replay is None:
            return self.module(*args)
        try:
            return self._replay(*args)
        except Exception as exc:  # an op that cannot be captured: run without graphs from now
            self.note = f"CUDA graphs off ({first_line(exc)})"
            self.cuda_graph, self._replay = False, None
            self._torch.cuda.synchronize()
            return self.module(*args)


class TorchScriptExplainer(_TorchArtifact):
    """An ``explainer.torchscript.pt`` on TorchScript, on the CPU or a CUDA device."""

    kind = "torchscript"

    def _load(self, extra: dict[str, str]) -> tuple[Any, list[str]]:
        with warnings.catch_warnings():  # torch >= 2.11 flags TorchScript as deprecated
            warnings.simplefilter("ignore", FutureWarning)
            module = self._torch.jit.load(self.path, map_location=self.device, _extra_files=extra)
        return module, [a.name for a in module.forward.schema.arguments][1:]


class ExportedProgramExplainer(_TorchArtifact):
    """An ``explainer.pt2`` (``torch.export``), on the CPU or a CUDA device."""

    kind = "torch.export"

    def _load(self, extra: dict[str, str]) -> tuple[Any, list[str]]:
        import explain_export.nms_op  # noqa: F401  (a detector's NMS operator, to load)

        program = self._torch.export.load(self.path, extra_files=extra)
        names = [
            s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"
        ]
        if self.device != "cpu":
            # A program exported on the CPU names the CPU in its ops (``device=`` arguments) and
            # holds CPU constants: ``.to()`` moves neither. The export pass moves both.
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, self.device)
        return program.module(), names


Artifact = OnnxExplainer | TorchScriptExplainer | ExportedProgramExplainer
SUFFIXES = {".onnx": OnnxExplainer, ".pt2": ExportedProgramExplainer, ".pt": TorchScriptExplainer}


def load(
    path: str,
    device: str = "cpu",
    threads: int | None = None,
    input_format: str | None = None,
    cuda_graph: bool | None = None,
) -> Artifact:
    """Open an artifact by its file name: ``.onnx``, ``.pt`` (TorchScript) or ``.pt2``; or an
    export folder's, ONNX first (:func:`.folder.artifact_in`). On CUDA, IO binding and CUDA
    graphs are on unless ``cuda_graph=False`` (see :class:`OnnxExplainer`,
    :class:`_TorchArtifact`). ``device="cuda"`` where CUDA does not work runs on the CPU:
    ``.device`` says ``"cpu"``, ``.note`` why, and a :class:`~..errors.DeviceFallbackWarning`
    is issued."""
    from .folder import artifact_in

    path = artifact_in(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no artifact at '{path}'")
    for suffix, cls in SUFFIXES.items():
        if path.endswith(suffix):
            return cls(path, device, threads, input_format, cuda_graph=cuda_graph)
    raise ValueError(f"'{path}' is not .onnx, .pt or .pt2")
