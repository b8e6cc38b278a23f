"""Real photos that scikit-image ships, used for verification, tests and the demo.

They are read from the installed ``skimage/data`` folder without importing scikit-image.
"""

from __future__ import annotations

import importlib.util
import os

import cv2
import numpy as np

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
    """Read an image as float32 ``[3, H, W]`` RGB in [0, 1], resized (bilinear) to ``size``.

    OpenCV decodes to BGR; the channels are flipped to RGB here.
    """
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode image '{path}'")
    h, w = size
    rgb = cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0
