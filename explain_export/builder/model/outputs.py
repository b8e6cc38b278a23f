"""Which of a model's outputs is explained: the model may return a tensor, a dict, a tuple or
list, or an object with ``.logits`` (Hugging Face style).

:class:`OutputKey` is the choice, ``--output KEY|INDEX``: a dict key, a position, or an
attribute; :func:`choose_output` resolves it once on the probe's output (the default is the
obvious one: the tensor itself, a dict's ``out`` or else its first tensor, ``.logits``, a
sequence's first tensor) and says which it took; :meth:`OutputKey.pick` then takes that same
output of every call, in eager mode and in the exported graph alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ...errors import OptionError
from ...words import a_or_an

__all__ = ["OutputKey", "choose_output", "describe"]


@dataclass(frozen=True)
class OutputKey:
    """One output of a model: ``kind`` ``tensor`` (the output itself), ``key`` (a dict's),
    ``index`` (a tuple's or list's) or ``attr`` (an object's attribute); ``value`` names it."""

    kind: str = "tensor"
    value: str | int | None = None

    def __str__(self) -> str:
        if self.kind == "key":
            return f"['{self.value}']"
        if self.kind == "index":
            return f"[{self.value}]"
        if self.kind == "attr":
            return f".{self.value}"
        return "the output"

    def pick(self, out: Any) -> Any:
        """This output of ``out`` (what the model returned)."""
        if self.kind == "key":
            return out[self.value]
        if self.kind == "index":
            return out[int(self.value)]  # type: ignore[arg-type]
        if self.kind == "attr":
            return getattr(out, str(self.value))
        return out


def describe(value: Any) -> str:
    """A model output in words: a tensor's shape, a dict's keys, a sequence's length."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, Mapping):
        return f"{a_or_an(type(value).__name__)} with keys {', '.join(map(str, value))}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return f"{a_or_an(type(value).__name__)} of {len(value)}"
    return a_or_an(type(value).__name__)


def _given(out: Any, given: str) -> OutputKey:
    """``--output KEY|INDEX`` against what the model returned."""
    if isinstance(out, Mapping):
        if given in out:
            return OutputKey("key", given)
        choices = ", ".join(map(str, out))
        raise OptionError(
            "output",
            "{name} '{g}' is not a key of {d}; choose one of {c}",
            g=given,
            d=describe(out),
            c=choices,
        )
    if isinstance(out, Sequence) and not isinstance(out, Tensor | str):
        try:
            index = int(given)
        except ValueError:
            index = None
        if index is None or not -len(out) <= index < len(out):
            raise OptionError(
                "output",
                "{name} '{g}' is no position of {d}; give 0..{last}",
                g=given,
                d=describe(out),
                last=len(out) - 1,
            )
        return OutputKey("index", index % len(out))
    if not isinstance(out, Tensor) and hasattr(out, given):
        return OutputKey("attr", given)
    raise OptionError(
        "output", "{name} '{g}' does not name an output of {d}", g=given, d=describe(out)
    )


def _default(out: Any) -> OutputKey | None:
    """The obvious output: the tensor itself, ``out`` or a dict's first tensor, ``.logits``,
    a sequence's first tensor; None where there is none."""
    if isinstance(out, Tensor):
        return OutputKey()
    if isinstance(out, Mapping):
        if isinstance(out.get("out"), Tensor):
            return OutputKey("key", "out")
        return next((OutputKey("key", k) for k, v in out.items() if isinstance(v, Tensor)), None)
    if isinstance(getattr(out, "logits", None), Tensor):
        return OutputKey("attr", "logits")
    if isinstance(out, Sequence) and not isinstance(out, str):
        return next(
            (OutputKey("index", i) for i, v in enumerate(out) if isinstance(v, Tensor)), None
        )
    return None


def choose_output(out: Any, given: str | None = None) -> OutputKey:
    """The output to explain, from one call's ``out``: ``given`` (a key, a position or an
    attribute), else the obvious one. Raises an :class:`~.errors.OptionError` naming what the
    model returns where ``given`` does not fit, or where no tensor can be found."""
    key = _given(out, given) if given is not None else _default(out)
    if key is None:
        raise OptionError(
            "output",
            "the model returns {d}, with no tensor to explain; pick one with {name} KEY|INDEX",
            d=describe(out),
        )
    picked = key.pick(out)
    if not isinstance(picked, Tensor):
        raise OptionError(
            "output",
            "{name} {k} of the model's output is {d}, not a tensor",
            k=str(key),
            d=describe(picked),
        )
    return key
