"""A set of files replaces the previous set together (``files.commit_set``), or not at all.

The export and the Triton writer are made to fail at each step of their commit (the Nth rename
in ``files.py`` raises), with and without a previous set in place; the folder then holds one
complete set, byte for byte the old one or entirely the new one, and nothing else. A commit
killed midway (no rollback) leaves a mix that the loader refuses by its export ids.

The exports here stage small stand-in files (an ONNX Identity graph, a scripted module) instead
of exporting and verifying the explainer: what is under test is the commit, which runs for real
(metadata built from a real explainer, stamped into each file, explainer.json, the renames).
"""

from __future__ import annotations

import json
import os
import shutil

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from explain_export.artifact import files, runtime, triton
from explain_export.artifact.contract import FILES, METADATA_FILE
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export import export as export_mod
from explain_export.builder.export import verify
from explain_export.builder.export.export import export_explainer
from explain_export.errors import UsageError

from models import tiny_resnet

SIZE = (32, 32)


class _Os:
    """``os`` as ``files.py`` sees it: ``rename`` raises on call number ``at`` (from 1), once;
    with ``dead``, it and every later rename and unlink raise (a killed process runs no
    rollback)."""

    def __init__(self, at: int, dead: bool = False) -> None:
        self.at, self.dead, self.calls = at, dead, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def rename(self, src, dst):
        self.calls += 1
        if self.calls == self.at or (self.dead and self.calls > self.at):
            raise OSError(28, "No space left on device")
        os.rename(src, dst)

    def unlink(self, path):
        if self.dead and self.calls >= self.at:
            raise OSError(5, "Input/output error")
        os.unlink(path)


class _NoRmtree:
    """``shutil`` as ``files.py`` sees it, with an ``rmtree`` that fails to remove anything."""

    def __getattr__(self, name):
        return getattr(shutil, name)

    def rmtree(self, *_args, **_kwargs):
        pass


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """An ONNX and a TorchScript file that load and stamp in a fraction of a second."""
    folder = tmp_path_factory.mktemp("stand_ins")
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, *SIZE])
    y = helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, ["N", 3, *SIZE])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["heatmap"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(folder / FILES["onnx"]))
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(folder / FILES["torchscript"]))
    return folder


@pytest.fixture(scope="module")
def explainer():
    return build_explainer(tiny_resnet(), input_size=SIZE)


@pytest.fixture
def cheap(monkeypatch, stand_ins, explainer):
    """``export(folder)``: an export whose stage copies the stand-ins and whose verify passes."""

    def stage(_explainer, _info, tmp, formats, *_rest):
        return {f: shutil.copy(stand_ins / FILES[f], os.path.join(tmp, FILES[f])) for f in formats}

    monkeypatch.setattr(export_mod, "_stage", stage)
    monkeypatch.setattr(export_mod, "_verify", lambda *_: (verify.ParityReport([]), [], None))
    return lambda folder: export_explainer(explainer, str(folder), model="tiny")


def _snapshot(folder) -> dict[str, bytes | None]:
    """Every entry under ``folder``: a file's bytes, None for a folder."""
    out: dict[str, bytes | None] = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def _export_ids(folder) -> set[str]:
    """The export id of explainer.json and of each file's own metadata."""
    with open(folder / METADATA_FILE) as f:
        ids = {json.load(f)["export_id"]}
    for fmt in ("onnx", "torchscript"):
        ids.add(runtime.load(str(folder / FILES[fmt])).metadata["export_id"])
    return ids


# export: 'explainer.pt2' (left from an earlier export) aside; then torchscript, onnx and
# explainer.json each aside and in: 7 renames
@pytest.mark.parametrize("at", range(1, 9))
def test_a_failed_export_commit_leaves_the_old_set_or_the_whole_new_one(cheap, tmp_path, at):
    old = cheap(tmp_path)
    (tmp_path / FILES["pt2"]).write_bytes(b"an earlier export's pt2")
    before = _snapshot(tmp_path)
    fake = _Os(at)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(files, "os", fake)
        if at <= 7:
            with pytest.raises(OSError, match="No space left"):
                cheap(tmp_path)
        else:
            new = cheap(tmp_path)
    assert fake.calls >= min(at, 7)
    if at <= 7:
        assert _snapshot(tmp_path) == before
        assert _export_ids(tmp_path) == {old.metadata["export_id"]}
    else:
        names = [FILES["onnx"], FILES["torchscript"], METADATA_FILE]
        assert sorted(os.listdir(tmp_path)) == sorted(names)  # the stale pt2 left with the old set
        assert _export_ids(tmp_path) == {new.metadata["export_id"]}
        assert new.metadata["export_id"] != old.metadata["export_id"]


@pytest.mark.parametrize("at", [1, 2, 3])
def test_a_failed_first_export_commit_leaves_nothing(cheap, tmp_path, at):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(files, "os", _Os(at))
        with pytest.raises(OSError):
            cheap(tmp_path)
    assert os.listdir(tmp_path) == []


def test_backups_that_cannot_be_removed_leave_the_new_set_in_place(cheap, tmp_path, monkeypatch):
    old = cheap(tmp_path)
    before = _snapshot(tmp_path)
    monkeypatch.setattr(files, "shutil", _NoRmtree())
    new = cheap(tmp_path)
    assert _export_ids(tmp_path) == {new.metadata["export_id"]} != {old.metadata["export_id"]}
    leftover = [n for n in os.listdir(tmp_path) if n not in before]
    assert len(leftover) == 1 and leftover[0].startswith(".commit-old-")  # as its docstring says
    assert sorted(_snapshot(tmp_path / leftover[0]).values()) == sorted(before.values())


def test_a_killed_commit_leaves_a_mix_the_loader_refuses(cheap, tmp_path):
    cheap(tmp_path)
    with pytest.MonkeyPatch.context() as mp:  # torchscript replaced; dies moving onnx aside
        mp.setattr(files, "os", _Os(3, dead=True))
        with pytest.raises(OSError):
            cheap(tmp_path)
    path = str(tmp_path / FILES["torchscript"])
    with pytest.raises(UsageError, match="come from different exports") as err:
        runtime.load(path)
    assert str(err.value) == (
        f"'{path}' and explainer.json beside it come from different exports "
        "(a commit was interrupted); re-export"
    )


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_file_beside_another_exports_json_is_refused(cheap, tmp_path, fmt):
    first, second = cheap(tmp_path / "a"), cheap(tmp_path / "b")
    assert first.metadata["export_id"] != second.metadata["export_id"]
    assert runtime.load(second.paths[fmt]).metadata == second.metadata  # its own set loads
    shutil.copy(first.paths[fmt], second.paths[fmt])
    with pytest.raises(UsageError, match=r"different exports \(a commit was interrupted\)"):
        runtime.load(second.paths[fmt])
    os.remove(tmp_path / "b" / METADATA_FILE)  # no explainer.json: the file's own metadata
    assert runtime.load(second.paths[fmt]).metadata == first.metadata


# --- the Triton writer: onnx and torchscript folders, each aside and in: 4 renames ----------


@pytest.fixture
def pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):
        pytest.skip("tritonclient[grpc] is not installed (pip install -e '.[triton]')")
    return model_config_pb2


@pytest.mark.parametrize("at", range(1, 6))
def test_a_failed_triton_commit_leaves_the_old_repo_or_the_whole_new_one(pb2, cheap, tmp_path, at):
    result = cheap(tmp_path / "export")
    repo = tmp_path / "repo"
    triton.write_triton_repo(result.paths, result.metadata, str(repo), max_batch_size=4)
    before = _snapshot(repo)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(files, "os", _Os(at))
        write = lambda: triton.write_triton_repo(  # noqa: E731
            result.paths, result.metadata, str(repo), max_batch_size=16, overwrite=True
        )
        if at <= 4:
            with pytest.raises(OSError):
                write()
        else:
            write()
    after = _snapshot(repo)
    assert sorted(os.listdir(tmp_path)) == ["export", "repo"]  # no staging or backup folder
    if at <= 4:
        assert after == before
    else:
        assert after.keys() == before.keys() and after != before
        for fmt in ("onnx", "torchscript"):
            assert b"max_batch_size: 16" in (after[f"explainer_{fmt}/config.pbtxt"] or b"")


@pytest.mark.parametrize("at", [1, 2])
def test_a_failed_first_triton_commit_leaves_an_empty_repo(pb2, cheap, tmp_path, at):
    result = cheap(tmp_path / "export")
    repo = tmp_path / "repo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(files, "os", _Os(at))
        with pytest.raises(OSError):
            triton.write_triton_repo(result.paths, result.metadata, str(repo))
    assert os.listdir(repo) == []
    assert sorted(os.listdir(tmp_path)) == ["export", "repo"]


# --- commit_set itself: files and folders, new ones, removals ---------------------------------


def _plain_set(folder, tag: str) -> None:
    (folder / "a").write_text(f"a {tag}")
    (folder / "dir").mkdir()
    (folder / "dir" / "x").write_text(f"x {tag}")


# a: aside, in; new: in; dir: aside, in; gone: aside: 6 renames
@pytest.mark.parametrize("at", range(1, 8))
def test_commit_set_puts_back_the_previous_set_at_every_step(tmp_path, monkeypatch, at):
    out, staging = tmp_path / "out", tmp_path / "staging"
    out.mkdir()
    staging.mkdir()
    _plain_set(out, "old")
    (out / "gone").write_text("removed with the set")
    _plain_set(staging, "new")
    (staging / "new").write_text("no predecessor")
    before = _snapshot(out)
    staged = {str(out / n): str(staging / n) for n in ("a", "new", "dir")}
    monkeypatch.setattr(files, "os", _Os(at))
    if at <= 6:
        with pytest.raises(OSError):
            files.commit_set({**staged, str(out / "gone"): None}, str(tmp_path))
        assert _snapshot(out) == before
    else:
        files.commit_set({**staged, str(out / "gone"): None}, str(tmp_path))
        assert _snapshot(out) == {
            "a": b"a new",
            "new": b"no predecessor",
            "dir": None,
            os.path.join("dir", "x"): b"x new",
        }
    assert sorted(os.listdir(tmp_path)) == ["out", "staging"]
