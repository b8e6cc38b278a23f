"""Library errors name the library's parameters; the commands word them with their flags.

Every ``OptionError`` raised in the package is read from the source (AST): each argument it names
must be a flag of some command once worded by the CLI, so no message points at a flag that does
not exist.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from explain_export import errors
from explain_export.builder.model.source import ModelSource
from explain_export.cli import bench, export, run, serve
from explain_export.cli._common import FLAGS, flag_namer, run_main
from explain_export.errors import OptionError

PACKAGE = pathlib.Path(errors.__file__).parent
PARSERS = {m.__name__.rsplit(".", 1)[1]: m.build_parser() for m in (bench, export, run, serve)}


def _flags() -> set[str]:
    return {s for p in PARSERS.values() for a in p._actions for s in a.option_strings}


def _raised() -> list[tuple[str, str, set[str]]]:
    """``(where, field, arguments named in its template)`` for each OptionError raised."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "OptionError"):
                continue
            if not (node.args and isinstance(node.args[0], ast.Constant)):
                continue  # the class's own machinery
            text = "".join(
                c.value
                for arg in node.args[1:]
                for c in ast.walk(arg)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            )
            values = {k.arg for k in node.keywords if k.arg}
            keys = set(re.findall(r"\{(\w+)[^{}]*\}", text)) - values - {"name"}
            found.append((f"{path.name}:{node.lineno}", node.args[0].value, keys))
    return found


def test_option_errors_are_found_in_the_source():
    raised = _raised()
    fields = {field for _, field, _ in raised}
    assert len(raised) >= 40
    assert {"target", "trust", "out_dir", "layer", "arch_kwargs", "batch_sizes"} <= fields


def test_every_argument_an_error_names_is_a_flag():
    flags, word = _flags(), flag_namer()
    missing = [
        f"{where}: {key} -> {word(key)}"
        for where, field, keys in _raised()
        for key in {field, *keys}
        if word(key) not in flags
    ]
    assert not missing
    assert set(FLAGS.values()) <= flags


def test_library_wording_names_parameters_and_the_cli_wording_flags():
    with pytest.raises(OptionError) as caught:
        ModelSource(arch="m:f", arch_kwargs="[1]")
    assert str(caught.value).startswith("arch_kwargs must be a JSON object")
    assert caught.value.worded(flag_namer()).startswith("--arch-kwargs must be a JSON object")
    exc = OptionError("target", "{name} 3 is out of range; see {list_layers} or {trust}")
    assert str(exc) == "target 3 is out of range; see layers.format_layers() or trust=True"
    assert exc.worded(flag_namer()) == (
        "--class-index 3 is out of range; see --list-layers or --trust-checkpoint"
    )


def test_values_with_braces_are_kept_as_given():
    exc = OptionError("colormap", "unknown {name} '{given}'", given="{x}")
    assert str(exc) == "unknown colormap '{x}'"


def test_run_main_words_option_errors_with_flags(capsys):
    def body() -> int:
        raise OptionError("out_dir", "{name} 'a' is a file; give a folder")

    assert run_main("prog", body, debug=False) == 2
    assert capsys.readouterr().err == "prog: error: --out 'a' is a file; give a folder\n"
