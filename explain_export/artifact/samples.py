"""Real photos that scikit-image ships, used for verification, tests and the demo.

They are read from the installed ``skimage/data`` folder without importing scikit-image.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from . import images

__all__ = ["PHOTOS", "load_rgb", "photo_batch", "photo_path"]

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


def photo_path(name: str = "chelsea.png") -> str:
    """Path of one of scikit-image's bundled photos; FileNotFoundError if it is not installed."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-image is not installed; pip install scikit-image")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "data", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scikit-image has no bundled photo '{name}'")
    return path


def load_rgb(path: str, size: tuple[int, int]) -> np.ndarray:
    """An image as the graph takes it: float32 ``[3, H, W]``, RGB, in [0, 1] (stretched)."""
    return images.to_input(images.read_bgr(path), size)[0]


def photo_batch(
    names: tuple[str, ...] | list[str] = PHOTOS[:2], size: tuple[int, int] = (224, 224)
) -> np.ndarray:
    """A batch of the bundled photos as every artifact takes it: float32 ``[N, 3, H, W]``, RGB,
    in [0, 1] (stretched to ``size``)."""
    return np.stack([load_rgb(photo_path(n), size) for n in names])
