"""Capture one tensor inside a model during its forward pass.

A layer is named as ``NAME[:input|:output][@CALL]``:

- ``NAME`` is a dotted name from ``model.named_modules()``, e.g. ``layer4`` or ``_blocks.15``;
- ``:input`` takes the module's first positional input instead of its output (``:output``,
  the default). Use it for the tensor that feeds a pooling layer, e.g. ``_avg_pooling:input``;
- ``@CALL`` picks one call, counted from 0, of a module that runs more than once per forward
  pass (EfficientNet-Lite's top-level ``_swish`` runs at the stem and at the head).

The capture is a forward hook that keeps the tensor as an ordinary value of the traced
``forward``, so it survives ``torch.jit.trace`` and the dynamo ONNX exporter (non-strict).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .errors import UsageError

LAYER_SYNTAX = "NAME[:input|:output][@CALL]"
_SPEC = re.compile(r"^(?P<name>[^:@\s]+)(?::(?P<port>input|output))?(?:@(?P<call>\d+))?$")


@dataclass(frozen=True)
class TapSpec:
    """The ``port`` of module ``module`` at call ``call`` (None: its only call)."""

    module: str
    port: str = "output"
    call: int | None = None

    @classmethod
    def parse(cls, text: str) -> TapSpec:
        m = _SPEC.match(text.strip())
        if m is None:
            raise UsageError(f"cannot read layer '{text}'; write it as {LAYER_SYNTAX}, e.g. layer4")
        call = m.group("call")
        return cls(
            m.group("name"), m.group("port") or "output", None if call is None else int(call)
        )

    def __str__(self) -> str:
        text = self.module + (":input" if self.port == "input" else "")
        return text if self.call is None else f"{text}@{self.call}"


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; a UsageError that suggests close names otherwise."""
    modules = dict(model.named_modules())
    modules.pop("", None)
    if name in modules:
        return modules[name]
    close = difflib.get_close_matches(name, list(modules), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see --list-layers for the names"
    raise UsageError(f"no layer '{name}' in the model; {hint}")


class Tap:
    """Keeps what one module produces (or receives) during each forward pass.

    It records only between ``clear()`` and ``take()``, so a model used on its own keeps no
    tensors alive. ``take()`` returns the tensor of the chosen call and forgets the rest.
    Validation with friendly errors happens before export, in :mod:`.probe`.
    """

    def __init__(self, model: nn.Module, spec: TapSpec) -> None:
        self.spec = spec
        self._seen: list[Any] = []
        self._armed = False
        module = resolve_module(model, spec.module)
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._armed:
            self._seen.append(output if self.spec.port == "output" else (args[0] if args else None))

    def clear(self) -> None:
        """Forget earlier calls and start recording."""
        self._seen = []
        self._armed = True

    def take(self) -> Tensor:
        """The chosen call's tensor; stops recording."""
        seen, self._seen, self._armed = self._seen, [], False
        index = 0 if self.spec.call is None else self.spec.call
        if len(seen) <= index or (self.spec.call is None and len(seen) != 1):
            raise UsageError(
                f"layer '{self.spec}' ran {len(seen)} time(s) in this forward pass; "
                "pick another layer or call (see --list-layers)"
            )
        value = seen[index]
        if not isinstance(value, Tensor) or value.dim() != 4:
            raise UsageError(f"layer '{self.spec}' is not a 4-D [N,C,h,w] feature map")
        return value

    def remove(self) -> None:
        """Detach the hook from the model."""
        self._handle.remove()
