"""Load an exported explainer and run it on numpy batches.

ONNX models run on ONNX Runtime and never import torch; TorchScript (``.pt``) and
``torch.export`` programs (``.pt2``) import torch lazily. Every artifact takes the runner's
canonical batch, float32 ``[N,3,H,W]`` RGB in [0,1] (converted here to uint8 ``[N,H,W,3]`` for
graphs exported with ``--input-format uint8-nhwc``), returns ``(logits, heatmap)`` as float32
numpy arrays from ``__call__`` and every output from ``outputs()``, and carries the metadata
that ``explain-export`` wrote: from the file itself, or else from ``explainer.json`` beside it.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

METADATA_KEY = "explain_export"  # ONNX metadata_props key
TS_EXTRA_FILE = "explainer.json"  # TorchScript / pt2 extra file, and the sidecar file's name
DEVICES = ("cpu", "cuda")


def sidecar_metadata(path: str) -> dict[str, Any] | None:
    """The ``explainer.json`` in the artifact's folder, if there is one."""
    sidecar = os.path.join(os.path.dirname(os.path.abspath(path)), TS_EXTRA_FILE)
    if not os.path.isfile(sidecar):
        return None
    with open(sidecar) as f:
        return json.load(f)


def graph_image(image: np.ndarray, input_format: str) -> np.ndarray:
    """float32 ``[N,3,H,W]`` in [0,1] -> what a graph of ``input_format`` takes."""
    if input_format == "uint8-nhwc":
        pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
    return np.ascontiguousarray(image, dtype=np.float32)


def _class_feed(n: int, class_index: np.ndarray | None) -> np.ndarray:
    return np.full(n, -1, np.int64) if class_index is None else class_index.astype(np.int64)


def _input_format(metadata: dict[str, Any] | None, given: str | None) -> str:
    if given:
        return given
    return str((metadata or {}).get("input_format", "float-nchw"))


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

    def __call__(
        self, image: np.ndarray, class_index: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        out = self.outputs(image, class_index)
        return out["logits"], out["heatmap"]


class OnnxExplainer(_Artifact):
    """An ``explainer.onnx`` on ONNX Runtime.

    ``device="cuda"`` asks for the CUDA provider when ONNX Runtime lists it; ``providers`` then
    says what the session really uses (a CUDA provider that cannot start falls back to CPU).
    """

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        threads: int | None = None,
        input_format: str | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        wanted = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            wanted.insert(0, "CUDAExecutionProvider")
            # A CUDA provider whose libraries are missing logs a red error and falls back to
            # the CPU; silence that and report what was really used (see `providers`).
            ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(path, options, providers=wanted)
        finally:
            ort.set_default_logger_severity(3)
        self.path = path
        self.device = device
        self.providers = self.session.get_providers()
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_names = [i.name for i in inputs]
        self.output_names = [o.name for o in outputs]
        # per tensor, dims as ints, or names where dynamic (e.g. ["batch", 3, 224, 224])
        self.shapes = {t.name: list(t.shape) for t in inputs + outputs}
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata = json.loads(raw) if raw else sidecar_metadata(path)
        uint8 = inputs and inputs[0].type == "tensor(uint8)"
        self.input_format = input_format or ("uint8-nhwc" if uint8 else "float-nchw")

    @property
    def backend(self) -> str:
        return f"onnxruntime {self.providers[0]}"

    def outputs(
        self, image: np.ndarray, class_index: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        feeds = {"image": graph_image(image, self.input_format)}
        if "class_index" in self.input_names:
            feeds["class_index"] = _class_feed(image.shape[0], class_index)
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True))


class _TorchArtifact(_Artifact):
    """Shared by the TorchScript and torch.export artifacts; subclasses say how to load."""

    kind = ""

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        threads: int | None = None,
        input_format: str | None = None,
    ) -> None:
        import torch

        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.path = path
        self.device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        self.providers = [self.device]
        self.shapes: dict[str, list] = {}  # neither format declares shapes
        extra = {TS_EXTRA_FILE: ""}
        self.module, self.input_names = self._load(extra)
        text = extra[TS_EXTRA_FILE]
        self.metadata = json.loads(text) if text else sidecar_metadata(path)
        self.input_format = _input_format(self.metadata, input_format)
        outputs = (self.metadata or {}).get("outputs")
        self.output_names = [o["name"] for o in outputs] if outputs else ["logits", "heatmap"]

    def _load(self, extra: dict[str, str]) -> tuple[Any, list[str]]:
        """The callable module and its input names; fills ``extra`` with the metadata file."""
        raise NotImplementedError

    @property
    def backend(self) -> str:
        return f"{self.kind} {self.device}"

    def outputs(
        self, image: np.ndarray, class_index: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(graph_image(image, self.input_format)).to(self.device)]
        if "class_index" in self.input_names:
            args.append(torch.from_numpy(_class_feed(image.shape[0], class_index)).to(self.device))
        with torch.inference_mode():
            result = self.module(*args)
        names = self.output_names if len(self.output_names) == len(result) else None
        names = names or ["logits", "heatmap", "overlay"][: len(result)]
        return {n: t.cpu().numpy() for n, t in zip(names, result, strict=True)}


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
    path: str, device: str = "cpu", threads: int | None = None, input_format: str | None = None
) -> Artifact:
    """Open an artifact by its file name: ``.onnx``, ``.pt`` (TorchScript) or ``.pt2``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no artifact at '{path}'")
    for suffix, cls in SUFFIXES.items():
        if path.endswith(suffix):
            return cls(path, device, threads, input_format)
    raise ValueError(f"'{path}' is not .onnx, .pt or .pt2")
