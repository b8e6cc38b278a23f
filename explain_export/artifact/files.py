"""Output files: check a folder before work starts, and write files atomically."""

from __future__ import annotations

import os
import tempfile

from ..errors import OptionError

__all__ = ["ensure_out_dir", "write_atomic"]

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
