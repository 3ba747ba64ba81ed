"""Media loading: input images, and decord-compatible video readers over one shared video service."""

from .images import ImageLike, fit_pixels, to_rgb_array
from .video import NDArray, ServedVideoReader, VideoReader, cpu

__all__ = ["ImageLike", "NDArray", "ServedVideoReader", "VideoReader", "cpu", "fit_pixels", "to_rgb_array"]
