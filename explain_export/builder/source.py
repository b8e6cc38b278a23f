"""Where the model comes from: a checkpoint, an ``--arch`` callable, or the embedded default.

:class:`ModelSource` is the model flags of ``explain-export`` and ``explain-bench`` as one value,
checked when made; :meth:`ModelSource.load` reads :mod:`.checkpoint` or :mod:`.zoo`, which
know nothing of each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import OptionError
from .checkpoint import LoadedModel, check_checkpoint_file, load_model, resolve_arch
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
