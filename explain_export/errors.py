"""Error types. Each carries the process exit code the CLI should use."""

from __future__ import annotations

__all__ = ["ExplainExportError", "ParityError", "UsageError", "first_line"]


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
