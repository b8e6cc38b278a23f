"""Flags that need no model are checked before anything loads (issue 20, item 11).

The ``--arch`` of these tests, ``models:never_built``, fails when it is called: a check that
ran only after the model was built would end in its error (exit 1), not the flag's (exit 2).
A malformed checkpoint beside a missing ``--arch`` callable shows that the checkpoint is not
read before ``--arch`` resolves. No timing is asserted.
"""

from __future__ import annotations

import pytest

from explain_export.cli import bench, export

from commands import run_module

NEVER = ["--arch", "models:never_built"]


def _usage_error(main, args: list[str], capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "the model was built" not in err
    return err


def test_the_never_built_arch_is_built_where_the_flags_are_fine(tmp_path, capsys):
    """The control: with good flags the model is built, and that fails (exit 1)."""
    assert export.main([*NEVER, "--out", str(tmp_path / "o")]) == 1
    assert "the model was built" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--input-size", "0", "0"], "--input-size must be positive, got 0 0"),
        (["--formats", "onnx,gif"], "--formats takes a comma list of torchscript, onnx, pt2"),
        (["--std", "0.2", "0", "0.2"], "--std values must be positive"),
        (["--background", "sky"], "--background takes a class index or none, not 'sky'"),
        (["--labels", "MISSING/labels.txt"], "cannot read --labels"),
        (["--ckpt", "MISSING/model.pt"], "checkpoint 'MISSING/model.pt' does not exist"),
        (["--triton-repo", "MISSING/repo", "--max-batch-size", "0"], "--max-batch-size"),
        (["--arch-kwargs", "[1]"], "--arch-kwargs must be a JSON object"),
    ],
)
def test_export_checks_its_flags_before_it_builds_the_model(args, expected, tmp_path, capsys):
    args = [a.replace("MISSING", str(tmp_path / "missing")) for a in args]
    expected = expected.replace("MISSING", str(tmp_path / "missing"))
    err = _usage_error(export.main, [*NEVER, *args, "--out", str(tmp_path / "o")], capsys)
    assert err.startswith("explain-export: error: ") and expected in err
    assert not (tmp_path / "o").exists()


def test_an_out_that_is_a_file_is_refused_before_the_model_is_built(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = _usage_error(export.main, [*NEVER, "--out", str(tmp_path / "file")], capsys)
    assert err.endswith(f"--out '{tmp_path / 'file'}' is a file; give a folder")


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("models:no_such_net", "--arch: 'models' has no attribute 'no_such_net'"),
        ("no_such_package.nets:net", "--arch: cannot import 'no_such_package.nets'"),
        ("models", "must look like package.module:callable"),
        ("models:nn", "--arch: 'models:nn' is not callable"),
    ],
)
def test_arch_resolves_before_the_checkpoint_is_read(arch, expected, tmp_path, capsys):
    """The checkpoint is no PyTorch file: read first, it would be the error."""
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    args = ["--ckpt", str(tmp_path / "notes.pt"), "--arch", arch, "--out", str(tmp_path / "o")]
    assert expected in _usage_error(export.main, args, capsys)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--input-size", "0", "7"], "--input-size must be positive, got 0 7"),
        (["--ckpt", "MISSING/model.pt"], "checkpoint 'MISSING/model.pt' does not exist"),
        (["--batch-sizes", "0"], "--batch-sizes"),
        (["--skip", "everything"], "--skip takes a comma list"),
        (["--methods", "scorecam"], "unknown method scorecam"),
    ],
)
def test_bench_checks_its_flags_before_it_builds_the_model(args, expected, tmp_path, capsys):
    args = [a.replace("MISSING", str(tmp_path / "missing")) for a in args]
    expected = expected.replace("MISSING", str(tmp_path / "missing"))
    err = _usage_error(bench.main, [*NEVER, *args, "--out", str(tmp_path / "b")], capsys)
    assert err.startswith("explain-bench: error: ") and expected in err


def test_bench_resolves_arch_before_it_loads_anything(tmp_path, capsys):
    err = _usage_error(bench.main, ["--arch", "models:resnet999", "--out", str(tmp_path)], capsys)
    assert err == "explain-bench: error: --arch: 'models' has no attribute 'resnet999'"


def test_a_bad_size_is_one_line_from_the_command(tmp_path):
    """As a user sees it: one line on stderr, exit 2, nothing built, nothing written."""
    args = [*NEVER, "--input-size", "0", "0", "--out", str(tmp_path / "o")]
    proc = run_module("explain_export", *args)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "explain-export: error: --input-size must be positive, got 0 0"
    ]
    assert proc.stdout == "" and not (tmp_path / "o").exists()


def test_a_labels_file_that_is_not_utf8_is_a_usage_error(tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_bytes("chat\ncaf\u00e9\n".encode("latin-1"))
    err = _usage_error(
        export.main, [*NEVER, "--labels", str(labels), "--out", str(tmp_path / "o")], capsys
    )
    assert err.endswith(
        f"--labels '{labels}' is not UTF-8 text (byte 0xe9 at offset 8); save it as UTF-8, one "
        "label per line"
    )
    assert not (tmp_path / "o").exists()
