"""Issue 26, item 8: the smaller things a first hour meets. A misspelt method gets the one
meant."""

from __future__ import annotations

import re

import pytest

from explain_export.builder import methods
from explain_export.cli import bench, export
from explain_export.errors import UsageError


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("gradcampp", "gradcam++"), ("GradCAM_plusplus", "gradcam++"), ("layer-cam", "layercam")],
)
def test_a_near_miss_method_gets_the_one_meant(typed, meant, capsys, tmp_path):
    with pytest.raises(SystemExit, match="2"):
        export.main(["--method", typed, "--out", str(tmp_path)])
    assert capsys.readouterr().err == (
        f"explain-export: error: argument --method: unknown method '{typed}'; did you mean "
        f"{meant}? (see explain-export --help)\n"
    )
    said = f"unknown method '{typed}'; did you mean {meant}?"
    with pytest.raises(UsageError, match=f"^{re.escape(said)}$"):
        methods.get(typed)


def test_a_method_near_none_lists_the_choices(capsys, tmp_path):
    with pytest.raises(SystemExit, match="2"):
        export.main(["--method", "scorecam", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "invalid choice: 'scorecam'" in err and "did you mean" not in err
    with pytest.raises(UsageError, match="choose one of auto, sum, cam, gradcam, "):
        methods.get("scorecam")


def test_the_bench_methods_list_suggests_too(capsys, tmp_path):
    assert bench.main(["--methods", "cam,gradcampp", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "explain-bench: error: --methods: unknown method 'gradcampp'; did you mean gradcam++?\n"
    )
