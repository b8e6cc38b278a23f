"""What every command shares: one-line errors and exit codes (0 ok, 1 failure, 2 usage)."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_main(prog: str, body: Callable[[], int], debug: bool) -> int:
    """Run ``body``; turn errors into one line on stderr and an exit code.

    A traceback is shown only with ``--debug``.
    """
    from ..errors import ExplainExportError

    try:
        return body()
    except ExplainExportError as exc:
        if debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was moved into place", file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"{prog}: error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def log(message: str) -> None:
    """A progress line on stderr, so stdout keeps only the results."""
    print(message, file=sys.stderr, flush=True)
