"""Output files: check a folder before work starts, write files atomically, and replace a set
of files or folders together (:func:`commit_set`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping

from ..errors import OptionError

__all__ = ["commit_set", "ensure_out_dir", "write_atomic"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def ensure_out_dir(out_dir: str) -> None:
    """Create ``out_dir`` and check that it takes files; an :class:`.OptionError` if not."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OptionError("out_dir", "{name} '{path}' is a file; give a folder", path=out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise OptionError(
            "out_dir",
            "cannot write to {name} '{path}': {why}",
            path=out_dir,
            why=exc.strerror or exc,
        ) from exc


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def commit_set(staged: Mapping[str, str | None], work_dir: str) -> None:
    """Replace a set of files or folders together: ``staged`` maps each final path to its staged
    path on the same filesystem, or to None where the final is removed with the set.
    ``work_dir`` (on that filesystem too) gets a hidden folder for the backups.

    In the mapping's order, each existing final is renamed into the backups and its staged path
    renamed in. Guarantee: when this returns, every final holds the new set. When a step raises,
    every final is put back as it was (a new one with no predecessor removed, each backup
    renamed back) and the error is re-raised: the finals hold the previous set exactly. The
    backup folder is removed either way; only where that removal, or a putting back, fails does
    it stay (``work_dir/.commit-old-*``), with what it holds. A process killed mid-commit cannot
    put back: give the entry that names the set (``explainer.json``) last, so what it leaves is
    a mix that the export ids show.
    """
    old = tempfile.mkdtemp(prefix=".commit-old-", dir=work_dir)
    placed: list[str] = []  # finals renamed in
    moved: list[tuple[str, str]] = []  # (final, backup) renamed aside
    try:
        for index, (final, path) in enumerate(staged.items()):
            if os.path.lexists(final):
                backup = os.path.join(old, str(index))
                os.rename(final, backup)
                moved.append((final, backup))
            if path is not None:
                os.rename(path, final)
                placed.append(final)
    except BaseException:
        for final in reversed(placed):
            with contextlib.suppress(OSError):
                _remove(final)
        for final, backup in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(backup, final)
        with contextlib.suppress(OSError):
            os.rmdir(old)  # empty unless a backup could not be put back: then it stays
        raise
    shutil.rmtree(old, ignore_errors=True)
