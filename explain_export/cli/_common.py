"""What every command shares: one-line errors and exit codes (0 ok, 1 failure, 2 usage)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit code 2) that points at --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def run_main(prog: str, body: Callable[[], int], debug: bool) -> int:
    """Run ``body``; turn errors into one line on stderr and an exit code.

    A traceback is shown only with ``--debug``.
    """
    from ..errors import ExplainExportError, first_line

    try:
        return body()
    except ExplainExportError as exc:
        if debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # disk full, permissions, ... while writing
        if debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"{prog}: error: {exc.strerror or exc}{where}; no half-written file was left",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            raise
        print(
            f"{prog}: error: {first_line(exc)} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def log(message: str) -> None:
    """A progress line on stderr, so stdout keeps only the results."""
    print(message, file=sys.stderr, flush=True)
