"""Is a ``.pt`` or ``.pt2`` file the artifact its name says? Checked from the zip archive's
member names before torch reads it (torch's own errors name zip internals). No torch here."""

from __future__ import annotations

import zipfile

from ..errors import OptionError

__all__ = ["check_file"]

_ZIP_KINDS = {".pt2": "torch.export program", ".pt": "TorchScript file"}


def check_file(path: str) -> None:
    """Refuse, with an :class:`.OptionError` that says why, a ``.pt`` or ``.pt2`` file that is
    not the artifact its name says, before torch reads it (torch's own errors name zip
    internals). Both are zip archives: TorchScript holds a ``constants.pkl``, a torch.export
    program an ``archive_format``. Other names pass unchecked."""
    suffix = next((s for s in _ZIP_KINDS if path.endswith(s)), None)
    if suffix is None:
        return
    kind = _ZIP_KINDS[suffix]
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise OptionError(
            "path",
            "{name} '{v}' is not a whole {kind}: not a zip archive (damaged, cut short, or "
            "another kind of file); export it again",
            v=path,
            kind=kind,
        ) from exc
    script = any(n.endswith("/constants.pkl") for n in names)
    program = any(n.endswith("/archive_format") for n in names)
    if program and suffix == ".pt":
        raise OptionError("path", "{name} '{v}' is a torch.export program; name it .pt2", v=path)
    if script and suffix == ".pt2":
        raise OptionError(
            "path", "{name} '{v}' is a TorchScript file; name it .torchscript.pt", v=path
        )
    if not (script or program):
        saved = any(n.endswith("/data.pkl") for n in names)  # torch.save's own archive
        hint = " (a checkpoint? explain-export --ckpt takes it)" if saved else ""
        raise OptionError(
            "path",
            "{name} '{v}' is a zip archive, but not an exported {kind}{hint}",
            v=path,
            kind=kind,
            hint=hint,
        )
