"""Capture one tensor inside a model during its forward pass.

A layer is named as ``NAME[:input|:output][@CALL]``:

- ``NAME`` is a dotted name from ``model.named_modules()``, e.g. ``layer4`` or ``_blocks.15``;
- ``:input`` takes the module's first positional input instead of its output (``:output``,
  the default). Use it for the tensor that feeds a pooling layer, e.g. ``_avg_pooling:input``;
- ``@CALL`` picks one call, counted from 0, of a module that runs more than once per forward
  pass (EfficientNet-Lite's top-level ``_swish`` runs at the stem and at the head).

The capture is a forward hook (a pre-hook for ``:input``) that keeps the tensor as an ordinary
value of the traced ``forward``, so it survives ``torch.jit.trace``, the dynamo ONNX exporter
and ``torch.export`` (non-strict), and ``make_fx`` (:mod:`.lowering`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ...errors import OptionError, UsageError
from ...words import count

__all__ = ["LAYER_SYNTAX", "Tap", "TapSpec", "resolve_module"]

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
    if close:
        raise OptionError(
            "layer",
            "no layer '{v}' in the model; did you mean {close}?",
            v=name,
            close=", ".join(close),
        )
    raise OptionError(
        "layer", "no layer '{v}' in the model; see {list_layers} for the names", v=name
    )


class Tap:
    """Keeps what one module produces (or receives) at one call of each forward pass.

    It records only between ``clear()`` and ``take()``, so a model used on its own keeps no
    tensors alive. ``take()`` returns the tensor of the chosen call and forgets it.

    A tap holds the value *at that point*. ``clone``: a later in-place op (``relu_``, ``+=``)
    changes the tensor, so the tap keeps a copy (:mod:`.probe` decides this from the tensor's
    version counter). ``grad``: the tapped value becomes a leaf that requires grad, and the
    network continues from it (from a copy of it, with ``clone``), so that ``∂y/∂A`` is the
    gradient at the tap and the layers before it run forward only. An ``:input`` tap hands the
    module that leaf, so the gradient is the one that flows through that module. A value that
    already requires grad (it comes after another tap's leaf, when several layers are fused) is
    kept as it is, so the gradient still reaches the earlier tap through it.
    Validation with friendly errors happens before export, in :mod:`.probe`. The hook stays on
    the model until :meth:`remove`, or the end of a ``with`` block.
    """

    def __init__(
        self, model: nn.Module, spec: TapSpec, *, clone: bool = False, grad: bool = False
    ) -> None:
        self.spec = spec
        self.clone = clone
        self.grad = grad
        self._calls = 0
        self._value: Any = None
        self._armed = False
        module = resolve_module(model, spec.module)
        if spec.port == "input":
            self._handle = module.register_forward_pre_hook(self._pre_hook)
        else:
            self._handle = module.register_forward_hook(self._hook)

    def _capture(self, value: Any) -> Any:
        """Keep ``value`` if this is the chosen call; return what the network gets instead."""
        if not self._armed:
            return None
        call, self._calls = self._calls, self._calls + 1
        if call != (self.spec.call or 0) or not isinstance(value, Tensor):
            return None
        if self.grad and value.requires_grad:  # after another tap's leaf: keep the path to it
            self._value = value
            return value.clone() if self.clone else None
        if self.grad:
            leaf = value.detach().requires_grad_(True)
            self._value = leaf
            return leaf.clone() if self.clone else leaf
        self._value = value.clone() if self.clone else value
        return None

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not args:
            return None
        replaced = self._capture(args[0])
        return None if replaced is None else (replaced, *args[1:])

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        return self._capture(output)

    def clear(self) -> None:
        """Forget earlier calls and start recording."""
        self._calls, self._value, self._armed = 0, None, True

    def take(self) -> Tensor:
        """The chosen call's tensor; stops recording."""
        value, calls = self._value, self._calls
        self._calls, self._value, self._armed = 0, None, False
        expected = (self.spec.call or 0) + 1
        if calls < expected or (self.spec.call is None and calls != 1):
            raise OptionError(
                "layer",
                "layer '{spec}' ran {calls} in this forward pass; pick another layer or "
                "call (see {list_layers})",
                spec=self.spec,
                calls=count(calls, "time"),
            )
        if not isinstance(value, Tensor) or value.dim() not in (3, 4):
            raise UsageError(
                f"layer '{self.spec}' is neither a [N,C,h,w] map nor an [N,T,C] token sequence"
            )
        return value

    def remove(self) -> None:
        """Detach the hook from the model."""
        self._handle.remove()

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
