"""Small helpers for the data-layer tests (a module of its own, so that test modules import
it by a name no other test folder's conftest shadows)."""

import os

import numpy as np
from PIL import Image


def write_image(path, height, width, value=128):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.full((height, width, 3), value, dtype=np.uint8)
    fmt = "JPEG" if path.lower().endswith((".jpg", ".jpeg")) else "PNG"
    Image.fromarray(arr).save(path, format=fmt)
