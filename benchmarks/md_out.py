"""A benchmark's text: printed, and written to ``--out`` where one is given (its folder made)."""

from __future__ import annotations

import os


def emit(text: str, out: str | None) -> None:
    """Print ``text``; with ``out``, write it there too (one trailing newline)."""
    print(text)
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            f.write(text + "\n")
