"""Nothing is downloaded while an ``--arch`` builder runs: the checkpoint supplies every weight.

A builder's pretrained-weights parameters (torchvision's ``weights`` and ``weights_backbone``,
timm's ``pretrained``, segmentation_models_pytorch's ``encoder_weights``, ...) default to
downloading in some libraries: ``deeplabv3_mobilenet_v3_large`` fetches ImageNet backbone
weights unless ``weights_backbone=None``. :func:`weight_defaults` gives each such parameter that
the builder's signature names, and the user's kwargs do not, the value that loads nothing. A
builder that takes only ``**kwargs`` gets none (its accepted names are unknown); if it, or any
builder, still reaches for the network, :func:`downloads_refused` turns the network error into
one line that says to pass the weights flag in ``--arch-kwargs``.
"""

from __future__ import annotations

import inspect
import socket
import urllib.error
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ...errors import OptionError, first_line

__all__ = [
    "WEIGHT_PARAMETERS",
    "describe_weight_defaults",
    "downloads_refused",
    "network_error",
    "weight_defaults",
]

# parameter name -> the value that loads no pretrained weights
WEIGHT_PARAMETERS: dict[str, Any] = {
    "weights": None,
    "weights_backbone": None,
    "encoder_weights": None,
    "pretrained": False,
    "pretrained_backbone": False,
}
_NETWORK_TYPES = (urllib.error.URLError, socket.gaierror, socket.herror, ConnectionError)
_NETWORK_MODULES = ("requests", "urllib3", "httpx", "huggingface_hub")  # httpx2 too


def weight_defaults(target: Callable[..., Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The pretrained-weights parameters that ``target``'s signature names explicitly and
    ``given`` leaves out, each with the value that loads nothing (:data:`WEIGHT_PARAMETERS`)."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read
        return {}
    named = {p.name for p in parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return {k: v for k, v in WEIGHT_PARAMETERS.items() if k in named and k not in given}


def describe_weight_defaults(passed: Mapping[str, Any], checkpoint: bool) -> str:
    """One printout line for what :func:`weight_defaults` passed, e.g. ``arch: weights=None,
    weights_backbone=None (the checkpoint supplies every weight)``."""
    values = ", ".join(f"{k}={v!r}" for k, v in passed.items())
    why = (
        "the checkpoint supplies every weight"
        if checkpoint
        else "nothing is downloaded: the weights are the builder's random init"
    )
    return f"arch: {values} ({why})"


def network_error(exc: BaseException) -> BaseException | None:
    """The network error in ``exc``'s chain (itself, its cause or context), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _NETWORK_TYPES) or type(current).__module__.startswith(
            _NETWORK_MODULES
        ):
            return current
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def downloads_refused(arch: str) -> Iterator[None]:
    """Run a builder; a network error it raises becomes an :class:`.OptionError` that says the
    builder tried to download and how to stop it."""
    try:
        yield
    except Exception as exc:
        found = network_error(exc)
        if found is None:
            raise
        raise OptionError(
            "arch_kwargs",
            "{arch} '{arch_name}' tried to download weights while building the model "
            "({why}); nothing is downloaded here: set its weights flag off in {name}, e.g. "
            "'{example}', and give the weights with {ckpt}",
            arch_name=arch,
            why=first_line(found, limit=100),
            example='{"weights": null}' if "torchvision" in arch else '{"pretrained": false}',
        ) from exc
