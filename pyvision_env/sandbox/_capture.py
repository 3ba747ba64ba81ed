"""What the model's code shows and prints, captured inside the worker.

Frames: ``plt.show()``, ``Figure.show()``, ``display(obj)`` and PIL's ``Image.show()`` are hooked (never
the code text) and append raw RGB pixels, in order, to a :class:`FrameSink`. Text: fd 1 and 2 point at
memfds, so output from C code and child processes is caught too, in order, without holding a flood in
memory (RLIMIT_FSIZE bounds it); only head and tail are read back.
"""

from __future__ import annotations

import io
import os
import sys
import types
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.figure  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ..media.images import fit_pixels  # noqa: E402
from ._text import truncate_middle  # noqa: E402


class FrameSink:
    """Frames shown during one execution, with the per-step and per-episode caps applied."""

    def __init__(self, max_per_step: int, max_per_episode: int, max_pixels: int) -> None:
        self.max_per_step = max_per_step
        self.max_per_episode = max_per_episode
        self.max_pixels = max_pixels
        self.episode_total = 0
        self.frames: list[np.ndarray] = []
        self.dropped = 0
        self.downscaled = 0

    def add(self, frame: np.ndarray) -> None:
        if len(self.frames) >= self.max_per_step or self.episode_total >= self.max_per_episode:
            self.dropped += 1
            return
        fitted = fit_pixels(frame, self.max_pixels)
        if fitted is not frame:
            self.downscaled += 1
        frame = fitted
        self.frames.append(np.ascontiguousarray(frame, dtype=np.uint8))
        self.episode_total += 1

    def take(self) -> tuple[list[np.ndarray], list[str]]:
        frames, notes = self.frames, []
        if self.dropped:
            notes.append(f"{self.dropped} frame(s) not returned: at most {self.max_per_step} per "
                         f"execution and {self.max_per_episode} per episode")
        if self.downscaled:
            notes.append(f"{self.downscaled} frame(s) downscaled to at most {self.max_pixels} pixels")
        self.frames, self.dropped, self.downscaled = [], 0, 0
        return frames, notes


def figure_pixels(fig: matplotlib.figure.Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def array_pixels(arr: np.ndarray) -> np.ndarray | None:
    """HxW, HxWx1, HxWx3 or HxWx4 arrays of any numeric dtype as RGB uint8; None if not an image."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or 0 in arr.shape:
        return None
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.number):
            return None
        floating = np.issubdtype(arr.dtype, np.floating)
        arr = np.nan_to_num(arr.astype(np.float64))
        if floating and arr.max() <= 1.0:  # matplotlib's convention for float images
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr[..., :3]


class Hooks:
    """Installs the show/display hooks once per worker; ``display`` goes into the namespace."""

    def __init__(self, sink: FrameSink) -> None:
        self.sink = sink
        sink_ref = self

        def show(*_args: Any, **_kwargs: Any) -> None:
            for num in plt.get_fignums():
                fig = plt.figure(num)
                sink_ref.sink.add(figure_pixels(fig))
                plt.close(fig)

        def figure_show(fig: matplotlib.figure.Figure, *_args: Any, **_kwargs: Any) -> None:
            sink_ref.sink.add(figure_pixels(fig))

        def image_show(img: Image.Image, *_args: Any, **_kwargs: Any) -> None:
            sink_ref.sink.add(np.asarray(img.convert("RGB")))

        plt.show = show
        matplotlib.figure.Figure.show = figure_show
        Image.Image.show = image_show
        shim = types.ModuleType("IPython.display")
        shim.display = self.display  # type: ignore[attr-defined]
        sys.modules["IPython.display"] = shim

    def display(self, *objs: Any, **_kwargs: Any) -> None:
        """Show figures, PIL images and image-shaped arrays as frames; print anything else."""
        for obj in objs:
            if isinstance(obj, matplotlib.figure.Figure):
                self.sink.add(figure_pixels(obj))
                plt.close(obj)
            elif isinstance(obj, Image.Image):
                self.sink.add(np.asarray(obj.convert("RGB")))
            elif isinstance(obj, np.ndarray) and (pixels := array_pixels(obj)) is not None:
                self.sink.add(pixels)
            else:
                print(repr(obj))


class OutputCapture:
    """fd 1 and 2 (and sys.stdout/sys.stderr over them) write into memfds read back after each run."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        for fd, name in ((1, "stdout"), (2, "stderr")):
            mem = os.memfd_create(f"pyvision-{name}", os.MFD_CLOEXEC)
            os.dup2(mem, fd)
            os.close(mem)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", write_through=True)

    def take(self, fd: int) -> str:
        """Text written to ``fd`` since the last call, head and tail kept, then the memfd is emptied."""
        stream = sys.stdout if fd == 1 else sys.stderr
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
        try:
            total = os.fstat(fd).st_size
            if total == 0:  # the common case: nothing printed, nothing to read or reset
                return ""
            if total <= self.max_chars * 4:  # utf-8: at most 4 bytes a character
                text = truncate_middle(os.pread(fd, total, 0).decode("utf-8", "replace"), self.max_chars)
            else:
                half = self.max_chars // 2
                head = os.pread(fd, half * 4, 0).decode("utf-8", "replace")[:half]
                tail = os.pread(fd, half * 4, total - half * 4).decode("utf-8", "replace")[-half:]
                text = f"{head}\n... [about {total - 2 * half} bytes truncated] ...\n{tail}"
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        except OSError:  # the code closed or replaced fd 1/2: nothing to read
            return ""
        return text
