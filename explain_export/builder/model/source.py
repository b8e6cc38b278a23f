"""Where the model comes from: a checkpoint, an ``--arch`` callable, or the embedded default.

:class:`ModelSource` is the model flags of ``explain-export`` and ``explain-bench`` as one value,
checked when made; :meth:`ModelSource.load` reads :mod:`.checkpoint` or :mod:`.zoo`, which
know nothing of each other.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import OptionError
from .checkpoint import (
    LoadedModel,
    check_checkpoint_file,
    load_model,
    read_checkpoint,
    resolve_arch,
    unpack,
)
from .offline import weight_defaults
from .zoo import load_default

__all__ = ["ModelSource"]

_KWARGS_EXAMPLE = '{"num_classes": 10}'


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from, as ``explain-export`` and ``explain-bench`` take it: a
    checkpoint and/or an ``--arch`` callable with its keyword arguments, or neither for the
    embedded EfficientNet-Lite0 (:mod:`.zoo`). ``arch_kwargs`` may be given as JSON text."""

    ckpt: str | None = None
    arch: str | None = None
    arch_kwargs: Mapping[str, Any] | str = field(default_factory=dict)
    trust: bool = False

    def __post_init__(self) -> None:
        kwargs = self.arch_kwargs
        if isinstance(kwargs, str):
            try:
                kwargs = json.loads(kwargs)
            except json.JSONDecodeError as exc:
                raise OptionError(
                    "arch_kwargs",
                    "{name} is not valid JSON ({why}); e.g. '{example}'",
                    why=exc.msg,
                    example=_KWARGS_EXAMPLE,
                ) from exc
        if not isinstance(kwargs, Mapping):
            raise OptionError(
                "arch_kwargs",
                "{name} must be a JSON object, e.g. '{example}'",
                example=_KWARGS_EXAMPLE,
            )
        object.__setattr__(self, "arch_kwargs", dict(kwargs))

    @property
    def embedded(self) -> bool:
        """No checkpoint and no ``--arch``: the embedded default model."""
        return self.ckpt is None and self.arch is None

    def check(self) -> None:
        """What can be checked without a model, in moments: the checkpoint is a file with
        something in it, and ``arch`` names a callable (its module imported, nothing built)."""
        if self.ckpt is not None:
            check_checkpoint_file(self.ckpt)
        if self.arch is not None:
            resolve_arch(self.arch)

    def known_classes(self) -> tuple[int, str] | None:
        """The model's class count where the flags tell it without building the model, and
        how they tell it: the embedded model's 1000; ``num_classes`` in ``arch_kwargs``; else
        the default of a ``num_classes`` parameter that ``arch`` declares (a checkpoint's
        weights must then fit that head). None where it is not known so: a trusted checkpoint
        may hold a whole model, whose own head counts."""
        if self.embedded:
            return 1000, "the embedded EfficientNet-Lite0's ImageNet-1k classes"
        if self.arch is None or (self.ckpt is not None and self.trust):
            return None
        given = self.arch_kwargs.get("num_classes")  # type: ignore[union-attr]
        if isinstance(given, int) and not isinstance(given, bool) and given > 0:
            return given, "num_classes in arch_kwargs"
        if given is not None:
            return None
        try:
            parameter = inspect.signature(resolve_arch(self.arch)).parameters.get("num_classes")
        except (TypeError, ValueError):  # a builtin or C callable: no signature to read
            return None
        default = None if parameter is None else parameter.default
        if isinstance(default, int) and not isinstance(default, bool) and default > 0:
            return default, f"the default num_classes of {self.arch}"
        return None

    def checkpoint_classes(self, labels: int) -> tuple[int, str] | None:
        """Where the flags do not tell the class count (:meth:`known_classes`): the outputs of
        the checkpoint state dict's last layer (its last 2-D or 1x1-conv weight, ``[K, C]``),
        read without building the model, and its name; only where no tensor of the state dict
        has a side of ``labels``, so no layer could give that many classes. None otherwise, or
        where the checkpoint holds a whole model."""
        if self.ckpt is None or self.trust or self.known_classes() is not None:
            return None
        state, _ = unpack(read_checkpoint(self.ckpt), self.ckpt)
        if not isinstance(state, Mapping):
            return None
        last = None
        for key, tensor in state.items():
            if labels in tensor.shape:
                return None  # a layer that may give that many classes: judged after building
            flat = tensor.dim() == 2 or (tensor.dim() == 4 and tuple(tensor.shape[2:]) == (1, 1))
            if key.endswith(".weight") and flat:
                last = (int(tensor.shape[0]), key.removesuffix(".weight"))
        return last

    def load(self, input_size: tuple[int, int] = (224, 224)) -> LoadedModel:
        """The model in eval mode on the CPU, with what is known about it."""
        if self.embedded:
            return load_default(input_size)
        kwargs = dict(self.arch_kwargs)
        model, info = load_model(self.ckpt, self.arch, kwargs, self.trust)
        passed = {}
        if self.arch is not None and (info is None or not info.format.endswith("pickled module")):
            passed = weight_defaults(resolve_arch(self.arch), kwargs)
        return LoadedModel(model, self.arch or type(model).__name__, None, None, info, passed)
