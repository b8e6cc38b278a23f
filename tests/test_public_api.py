"""The public API, module by module, against a snapshot (``public_api.json``).

A name added to or removed from a module's ``__all__`` fails here until the snapshot is updated
on purpose: ``python tests/test_public_api.py`` rewrites it.
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


def current() -> dict[str, list[str]]:
    return {name: sorted(importlib.import_module(name).__all__) for name in modules()}


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
