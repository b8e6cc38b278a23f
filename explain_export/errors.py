"""Error types, each with the process exit code the CLI should use; and the warning a device
fallback gives."""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "DeviceFallbackWarning",
    "ExplainExportError",
    "OptionError",
    "ParityError",
    "UsageError",
    "first_line",
]


def first_line(exc: BaseException, with_type: bool = True, limit: int = 200) -> str:
    """One line for an exception: ``Type: first line of its message`` (``limit`` characters of
    message at most), or ``Type`` alone where the message is empty; ``with_type=False`` gives the
    first line alone (still the type where the message is empty)."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0][:limit]}" if with_type else lines[0][:limit]


class ExplainExportError(Exception):
    """A failure to report in one line, without a traceback (exit code 1)."""

    exit_code = 1


class UsageError(ExplainExportError):
    """Bad input from the user: a flag, a path, a layer name (exit code 2)."""

    exit_code = 2


class ParityError(ExplainExportError):
    """An exported artifact does not compute what the eager explainer computes (exit code 1)."""


class DeviceFallbackWarning(UserWarning):
    """An artifact asked to run on CUDA runs on the CPU; the message (and the artifact's
    ``note``) says why."""


# how library messages name a switch or a helper that is not one parameter's value
_LIBRARY_NAMES = {
    "list_layers": "layers.format_layers()",
    "overwrite": "overwrite=True",
    "trust": "trust=True",
    "tuned_malloc": "tuned_malloc=True",
}


class _Names(dict):  # type: ignore[type-arg]
    """Template values: given ones as they are, any other key an argument, named by ``namer``."""

    def __init__(self, namer: Callable[[str], str], field: str, values: dict[str, object]):
        super().__init__(values)
        self.namer, self.field = namer, field

    def __missing__(self, key: str) -> str:
        return self.namer(self.field if key == "name" else key)


class OptionError(UsageError):
    """A bad argument, worded for whoever passed it.

    The message is a template: ``{name}`` stands for the argument at fault (``field``), any other
    ``{key}`` not in ``values`` for the argument ``key``. As raised it names the library's
    parameters (``target``); a command line words it with its flags (``--class-index``) through
    :meth:`worded`.

    >>> exc = OptionError("input_size", "{name} must be positive; got {h} {w}", h=0, w=224)
    >>> str(exc)
    'input_size must be positive; got 0 224'
    >>> exc.worded(lambda key: "--" + key.replace("_", "-"))
    '--input-size must be positive; got 0 224'
    """

    def __init__(self, field: str, template: str, **values: object) -> None:
        self.field, self.template, self.values = field, template, values
        super().__init__(self.worded(lambda key: _LIBRARY_NAMES.get(key, key)))

    def worded(self, namer: Callable[[str], str]) -> str:
        """The message with each argument named by ``namer(parameter name)``."""
        return self.template.format_map(_Names(namer, self.field, self.values))
