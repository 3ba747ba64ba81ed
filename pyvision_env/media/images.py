"""Loading input images: a path, a PIL image or an HxWx3 uint8 array, always to contiguous RGB pixels."""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from typing import Any, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import MediaError

ImageLike = Union[str, "os.PathLike[str]", Image.Image, np.ndarray]


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """Return ``image`` as a C-contiguous HxWx3 uint8 array; MediaError names a bad file or array.

    A file is decoded once per process while it is unchanged (a GRPO group resets on the same image n
    times, an evaluation repeats it): the array comes from a bounded LRU cache and is read-only."""
    if isinstance(image, np.ndarray):
        return _check_array(image)
    if isinstance(image, Image.Image):
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    path = os.fspath(image)
    try:
        st = os.stat(path)
    except OSError:
        raise MediaError(f"image file not found: {path!r}") from None
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _decoded.get(key)
    if cached is not None:
        return cached
    try:
        with Image.open(path) as im:
            pixels = np.ascontiguousarray(np.asarray(im.convert("RGB")))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"cannot read image {path!r}: {exc}") from exc
    pixels.setflags(write=False)
    _decoded.put(key, pixels)
    return pixels


class _DecodedImages:
    """Decoded image files, least recently used first out beyond ``capacity`` bytes. Thread-safe."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> np.ndarray | None:
        with self._lock:
            pixels = self._items.get(key)
            if pixels is not None:
                self._items.move_to_end(key)
            return pixels

    def put(self, key: tuple[Any, ...], pixels: np.ndarray) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = pixels
            self._bytes += pixels.nbytes
            while self._bytes > self._capacity and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes


_decoded = _DecodedImages(512 << 20)


def fit_pixels(image: np.ndarray, max_pixels: int) -> np.ndarray:
    """``image`` downscaled (aspect kept where it can be, INTER_AREA) to at most ``max_pixels`` pixels; as is
    if it fits. Both sides are bounded: when the short side would fall below one pixel (a 1x3,000,000
    strip), it stays at one and the long side is cut to fit."""
    import cv2

    h, w = image.shape[:2]
    if h * w <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (h * w))
    new_h, new_w = max(1, int(h * scale)), max(1, int(w * scale))
    if new_h * new_w > max_pixels:  # the short side was clamped up to 1: cut the long one
        if new_h >= new_w:
            new_h = max_pixels // new_w
        else:
            new_w = max_pixels // new_h
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)


def _check_array(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise MediaError(f"image arrays must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise MediaError(f"image arrays must be HxWx3 (or HxW, HxWx4), got shape {arr.shape}")
    return np.ascontiguousarray(arr)
