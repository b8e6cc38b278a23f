"""The public API, module by module, against a snapshot (``public_api.json``).

A public name added to or removed from a public module's ``__all__`` fails here until the
snapshot is updated on purpose: ``python tests/test_public_api.py`` rewrites it. The snapshot
holds public modules only (no dotted part starting with ``_``, such as ``cli._common``) and their
public names (no leading ``_``; a dunder such as ``__version__`` is public), so moving private
code does not churn it. Every module, private ones included, still declares ``__all__``, and
every name in it exists.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import pytest

import explain_export

SNAPSHOT = Path(__file__).with_name("public_api.json")


def modules() -> list[str]:
    found = ["explain_export"]
    for info in pkgutil.walk_packages(explain_export.__path__, "explain_export."):
        if not info.name.endswith("__main__"):
            found.append(info.name)
    return sorted(found)


def is_public(name: str) -> bool:
    """A public module's dotted name, or a public name: no leading ``_`` (dunders are public)."""
    return all(
        not part.startswith("_") or (part.startswith("__") and part.endswith("__"))
        for part in name.split(".")
    )


def current() -> dict[str, list[str]]:
    """The snapshot: each public module's public ``__all__`` names."""
    return {
        name: sorted(n for n in importlib.import_module(name).__all__ if is_public(n))
        for name in modules()
        if is_public(name)
    }


def test_every_module_declares_its_public_names():
    missing = [n for n in modules() if not hasattr(importlib.import_module(n), "__all__")]
    assert missing == []


@pytest.mark.parametrize("name", modules())
def test_public_names_exist(name):
    module = importlib.import_module(name)
    assert [n for n in module.__all__ if not hasattr(module, n)] == []


def test_the_public_api_matches_its_snapshot():
    assert current() == json.loads(SNAPSHOT.read_text())


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(current(), indent=1) + "\n")
    print(f"wrote {SNAPSHOT}", file=sys.stderr)
