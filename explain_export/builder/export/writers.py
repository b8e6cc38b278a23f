"""Write one explainer to one file format, quietly: TorchScript, ONNX, ``torch.export``; stamp
the metadata into a written file; the versions it ran with; one line for an exporter's error.

:mod:`.export` calls these for every format, then verifies and moves the files into place.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from ... import __version__
from ...artifact.contract import METADATA_FILE, METADATA_KEY
from ...errors import ExplainExportError
from ..lower import lowering
from ..lower.rewrites import attention_in_4d

__all__ = ["quiet", "root_cause", "stamp", "to_onnx", "to_pt2", "to_torchscript", "versions"]


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Silence the exporters' progress prints, warnings and log lines; keep them for errors."""
    buf = io.StringIO()
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        logger.setLevel(level)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def root_cause(exc: BaseException, limit: int = 300) -> str:
    """One line for an exporter's error: the innermost exception of the chain (the exporters
    wrap the real reason in a generic 'failed to convert'), without colour codes."""
    seen: set[int] = set()
    while id(exc) not in seen and (exc.__cause__ or exc.__context__) is not None:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text}"[:limit]


def to_torchscript(explainer: torch.nn.Module, args: tuple[torch.Tensor, ...], path: str) -> None:
    """``torch.jit.trace`` + ``torch.jit.freeze``, saved to ``path``; a lowered graph
    (:class:`.lowering.Lowered`, alone or as a child) is scripted, the rest traced, not frozen.
    The batch is free."""
    with quiet(), torch.no_grad():
        if lowering.holds_lowered(explainer):
            module = lowering.to_script(explainer, args)
        else:
            traced = torch.jit.trace(explainer.eval(), args, check_trace=False)
            module = torch.jit.freeze(traced)
        torch.jit.save(module, path)


def to_onnx(
    explainer: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str,
    opset: int,
    dynamic_shapes: dict[str, Any],
    output_names: list[str],
) -> None:
    """The dynamo exporter (non-strict: the tap is a hook) to one self-contained file; attention
    on more than 4 dims folded to 4-D (:func:`.rewrites.attention_in_4d`)."""
    kwargs: dict[str, Any] = {
        "dynamo": True,
        "input_names": list(dynamic_shapes),
        "output_names": output_names,
        "opset_version": opset,
        "dynamic_shapes": dynamic_shapes,
        "external_data": False,
    }
    if "external_data" not in inspect.signature(torch.onnx.export).parameters:
        del kwargs["external_data"]  # older torch (< 2.6) writes one file by default
    from ... import nms_op

    if "custom_translation_table" in inspect.signature(torch.onnx.export).parameters:
        kwargs["custom_translation_table"] = nms_op.onnx_translation()  # greedy NMS: a Loop
    else:  # torch < 2.6: the NMS steps unrolled, one copy per pick
        explainer = nms_op.inline_steps(explainer)
    with quiet(), torch.no_grad(), attention_in_4d():
        try:
            program = torch.onnx.export(explainer.eval(), args, **kwargs)
        except Exception as exc:
            raise ExplainExportError(f"ONNX export failed: {root_cause(exc)}") from exc
        program.save(path)


def to_pt2(
    explainer: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str,
    dynamic_shapes: dict[str, Any],
) -> None:
    """``torch.export`` (non-strict: the tap is a hook), saved with ``torch.export.save``."""
    with quiet(), torch.no_grad():
        try:
            program = torch.export.export(
                explainer.eval(), args, dynamic_shapes=dynamic_shapes, strict=False
            )
        except Exception as exc:
            raise ExplainExportError(f"torch.export failed: {root_cause(exc)}") from exc
        torch.export.save(program, path)


def stamp(path: str, fmt: str, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` into the artifact itself (ONNX metadata_props, an extra file)."""
    text = json.dumps(metadata)
    if fmt == "onnx":
        import onnx

        proto = onnx.load(path)
        del proto.metadata_props[:]
        proto.metadata_props.add(key=METADATA_KEY, value=text)
        onnx.save(proto, path)
    elif fmt == "pt2":
        with quiet():
            program = torch.export.load(path)
            torch.export.save(program, path, extra_files={METADATA_FILE: text})
    else:
        with quiet():
            module = torch.jit.load(path, map_location="cpu")
            torch.jit.save(module, path, _extra_files={METADATA_FILE: text})


def versions() -> dict[str, str]:
    """The versions an export or a benchmark ran with (written into its metadata or report)."""
    import platform

    import numpy as np
    import onnx
    import onnxruntime

    return {
        "explain_export": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
