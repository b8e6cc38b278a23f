from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def default_model():
    """The embedded EfficientNet-Lite0 (loaded once per session)."""
    from explain_export.builder.zoo import load_default

    return load_default()


@pytest.fixture(scope="session")
def default_export(tmp_path_factory):
    """The default model exported once with the CLI's defaults (both formats)."""
    from explain_export.cli.export import main

    out = tmp_path_factory.mktemp("default_export")
    assert main(["--out", str(out)]) == 0
    return out


def pytest_collection_modifyitems(items):
    """A test that starts a live server is slow too."""
    for item in items:
        if item.get_closest_marker("serve"):
            item.add_marker(pytest.mark.slow)
