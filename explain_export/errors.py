"""Error types. Each carries the process exit code the CLI should use."""

from __future__ import annotations


class ExplainExportError(Exception):
    """A failure to report in one line, without a traceback (exit code 1)."""

    exit_code = 1


class UsageError(ExplainExportError):
    """Bad input from the user: a flag, a path, a layer name (exit code 2)."""

    exit_code = 2


class ParityError(ExplainExportError):
    """An exported artifact does not compute what the eager explainer computes (exit code 1)."""
