"""Words in messages: the article before a name, and a count with its noun. No torch.

>>> a_or_an("OrderedDict"), a_or_an("Tensor"), a_or_an("int"), a_or_an("UserDict")
('an OrderedDict', 'a Tensor', 'an int', 'a UserDict')
>>> a_or_an("8x8 input"), a_or_an("11x11 input"), a_or_an("18000"), a_or_an("110x110")
('an 8x8 input', 'an 11x11 input', 'an 18000', 'a 110x110')
>>> count(1, "file"), count(3, "file"), count(2, "replica"), count(0, "CPU")
('1 file', '3 files', '2 replicas', '0 CPUs')
>>> METHODS = ("cam", "gradcam", "gradcam++", "layercam")
>>> closest("gradcampp", METHODS), closest("Layer-CAM", METHODS), closest("scorecam", METHODS)
('gradcam++', 'layercam', None)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = ["a_or_an", "closest", "count"]

# names that start with a vowel letter but sound like "you" (a UserDict, a uint8 tensor)
_YOU = ("uni", "use", "usu", "uint", "uti", "ure", "uro", "eu")


def a_or_an(name: str) -> str:
    """``name`` after its indefinite article, by how it sounds: an ``OrderedDict``, a
    ``Tensor``; for a number, how it is read (an 8x8 input, an 11x11, a 224x224)."""
    lower = name.lower()
    digits = re.match(r"[0-9]+", lower)
    if digits:
        n = digits.group()
        vowel = n[0] == "8" or (len(n) % 3 == 2 and n[:2] in ("11", "18"))  # eight, eleven, ...
    else:
        vowel = lower[:1] in ("a", "e", "i", "o", "u") and not lower.startswith(_YOU)
    return f"{'an' if vowel else 'a'} {name}"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun, plural unless ``n`` is 1 (``plural``, else the noun + ``s``)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _spelling(name: str) -> str:
    """A name as it is typed in many ways: lower case, no ``-``, ``_`` or spaces, a trailing
    ``pp`` or ``plusplus`` read as ``++`` (gradcampp, GradCAM_plusplus: gradcam++)."""
    key = re.sub(r"[-_ ]", "", name.lower())
    return re.sub(r"(pp|plusplus)$", "++", key)


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice ``name`` most likely misspells: the one spelt the same but for case,
    separators and ``pp`` for ``++``, else the nearest by :func:`difflib.get_close_matches`
    (similarity at least 0.7); None where none is near."""
    by_key = {_spelling(c): c for c in choices}
    key = _spelling(name)
    if key in by_key:
        return by_key[key]
    near = difflib.get_close_matches(key, list(by_key), n=1, cutoff=0.7)
    return by_key[near[0]] if near else None
