"""Hooks come off the model; the docstring examples run; one-line errors for empty messages."""

from __future__ import annotations

import doctest
import warnings

import pytest
import torch

from explain_export import errors, words
from explain_export.builder import explainer as explainer_mod
from explain_export.builder.explainer import build_explainer
from explain_export.builder.inspect.tap import Tap, TapSpec
from explain_export.builder.maths import cams, heads, targets
from explain_export.errors import DeviceFallbackWarning, first_line

from models import tiny_resnet


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_an_explainer_takes_its_hook_off_the_model(method):
    model = tiny_resnet()
    explainer = build_explainer(model, method=method, input_size=(32, 32))
    assert _hooks(model) == 1  # the probe left none, the tap one
    with explainer:
        explainer(torch.rand(1, 3, 32, 32))
    assert _hooks(model) == 0
    again = build_explainer(model, method=method, input_size=(32, 32))
    again.remove()
    assert _hooks(model) == 0


def test_a_tap_is_a_context_manager():
    model = tiny_resnet()
    with Tap(model, TapSpec.parse("layer2")) as tap:
        tap.clear()
        model(torch.rand(1, 3, 32, 32))
        assert tap.take().dim() == 4
    assert _hooks(model) == 0


@pytest.mark.parametrize("module", [heads, cams, targets, explainer_mod, errors, words])
def test_docstring_examples_run(module):
    torch.manual_seed(0)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_first_line_of_an_exception_with_an_empty_message():
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(ValueError("a\nb")) == "ValueError: a"
    assert first_line(RuntimeError("  \n"), with_type=False) == "RuntimeError"
    assert len(first_line(ValueError("x" * 500))) == len("ValueError: ") + 200


def test_loading_an_artifact_changes_no_process_setting(tmp_path):
    """The runtime's constructors leave torch's thread count alone (it applies ``threads``
    around each call only), and ONNX Runtime's default logger level as it was: a CUDA session
    opens with it at fatal (ONNX Runtime's lines of a provider that does not start are held
    back, our warning says why), then it is set back."""
    import numpy as np
    import onnxruntime as ort

    from explain_export.artifact import runtime
    from explain_export.builder.export.export import export_explainer

    explainer = build_explainer(tiny_resnet(), method="cam", input_size=(32, 32))
    paths = export_explainer(explainer, str(tmp_path), ("torchscript", "onnx")).paths
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    artifact = runtime.load(paths["torchscript"], threads=wanted)
    assert torch.get_num_threads() == before
    artifact(np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))
    assert torch.get_num_threads() == before
    seen: list[int] = []
    original = ort.set_default_logger_severity
    ort.set_default_logger_severity = lambda level: seen.append(level)  # type: ignore[assignment]
    try:
        with warnings.catch_warnings():  # asks for CUDA, may fall back to the CPU and say so
            warnings.simplefilter("ignore", DeviceFallbackWarning)
            runtime.load(paths["onnx"], device="cuda")
    finally:
        ort.set_default_logger_severity = original
    from explain_export.artifact.providers import _logs

    held = (
        [4, _logs["severity"]] if "CUDAExecutionProvider" in ort.get_available_providers() else []
    )
    assert seen == held
