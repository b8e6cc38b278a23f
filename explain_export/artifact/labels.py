"""The class-name lists the package ships, as data (``explain_export/data/*.txt``, one name a
line, in class-index order): what ``--labels NAME`` stores in an export's metadata.

- ``imagenet``: the 1000 ImageNet-1k classes;
- ``coco80``: the 80 COCO classes in the order YOLO (Ultralytics) detectors predict them
  (``person``, ``bicycle``, ``car``, ...);
- ``coco91``: torchvision's 91-entry COCO category list, the index a torchvision detector
  predicts: 0 is ``__background__`` and the ids COCO left unused are ``N/A``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["LABEL_SETS", "label_set"]

LABEL_SETS = {"imagenet": 1000, "coco80": 80, "coco91": 91}  # name -> how many classes


@cache
def _read(name: str) -> tuple[str, ...]:
    file = "imagenet_classes.txt" if name == "imagenet" else f"{name}.txt"
    text = resources.files("explain_export").joinpath("data", file).read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != LABEL_SETS[name]:
        raise ValueError(f"data/{file} has {len(names)} names, not {LABEL_SETS[name]}")
    return names


def label_set(name: str) -> list[str]:
    """The class names of the shipped set ``name`` (one of :data:`LABEL_SETS`), in class-index
    order; a ValueError names the sets for any other name."""
    if name not in LABEL_SETS:
        raise ValueError(f"no label set '{name}'; the shipped ones are {', '.join(LABEL_SETS)}")
    return list(_read(name))
