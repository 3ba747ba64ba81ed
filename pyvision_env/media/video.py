"""decord-compatible video readers: ``video_clue_0`` in the sandbox, and a local reader.

Models trained with PyVision-RL use ``video_clue_0`` as a decord ``VideoReader``: ``len(vr)``,
``vr.get_avg_fps()``, ``vr.get_batch(indices).asnumpy()``, ``vr[i]``, ``vr.get_frame_timestamp(i)``,
``vr.get_key_indices()``, ``vr.seek(i)``, ``vr.seek_accurate(i)``, ``vr.next()``, ``vr.skip_frames(n)``.
:class:`DecordAPI` gives that API over any frame source, with decord's position rules (``vr[i]`` and
``get_batch`` leave the reader after the last frame they decoded; ``next()`` reads on from there). Two
sources exist:

* :class:`ServedVideoReader` (``video_clue_0``): frames come from the host's video service (see
  ``video_service.py``) as sealed memfds over the socket the worker got at spawn. The worker opens no
  file and runs no decoder, and a frame is decoded once for every episode of the host process.
* :class:`VideoReader`: decodes in this process (PyAV) with its own LRU cache of frames.

Unlike decord's ``seek``, which may land on a keyframe, ``seek`` is frame-accurate here (it is
``seek_accurate``). Bad indices raise ``IndexError``/``TypeError``; decoding failures ``MediaError``.
"""

from __future__ import annotations

import mmap
import os
import signal
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from ..errors import MediaError
from ._decoder import Decoder, VideoInfo

MAX_FRAMES_PER_REQUEST = 64  # frames per message from the video service (each is one fd)
T = TypeVar("T")


class NDArray(np.ndarray):
    """A numpy array with decord's ``asnumpy()``, so decord-style code and numpy code both work."""

    def asnumpy(self) -> np.ndarray:
        return np.asarray(self)


def cpu(device_id: int = 0) -> None:
    """decord's ``cpu(0)`` context: accepted and ignored (decoding is always on the CPU here)."""
    return None


class DecordAPI:
    """decord's ``VideoReader`` interface over :meth:`_fetch` (frames by sorted unique indices)."""

    info: VideoInfo
    _pos = 0

    def _fetch(self, indices: list[int]) -> dict[int, np.ndarray]:
        raise NotImplementedError

    def _index(self) -> tuple[np.ndarray, list[int]]:
        """(timestamps as an (N, 2) array of seconds, keyframe indices)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.info.frames

    def get_avg_fps(self) -> float:
        return self.info.fps

    def get_batch(self, indices: Iterable[int] | np.ndarray) -> NDArray:
        """Frames at ``indices`` as an (N, H, W, 3) uint8 array; negative indices count from the end."""
        wanted = self._normalise(indices)
        out = np.empty((len(wanted), self.info.height, self.info.width, 3), np.uint8)
        frames = self._fetch(sorted(set(wanted))) if wanted else {}
        for k, i in enumerate(wanted):
            out[k] = frames[i]
        if wanted:  # decord decodes each index at its first occurrence, in order, and stays after the last
            self._pos = list(dict.fromkeys(wanted))[-1] + 1
        return out.view(NDArray)

    def __getitem__(self, idx: int | slice) -> NDArray:
        if isinstance(idx, slice):
            return self.get_batch(range(*idx.indices(len(self))))
        return self.get_batch([idx])[0].view(NDArray)

    def next(self) -> NDArray:
        """The frame at the reader's position, then move on by one; StopIteration at the end."""
        if self._pos >= len(self):
            raise StopIteration
        return self[self._pos]

    def seek(self, pos: int) -> None:
        """Move to frame ``pos`` (frame-accurate, unlike decord's keyframe seek)."""
        self._pos = self._normalise([pos], negative=False)[0]

    def seek_accurate(self, pos: int) -> None:
        self.seek(pos)

    def skip_frames(self, num: int = 1) -> None:
        """Move ``num`` frames on (no frame is returned, none decoded)."""
        if not isinstance(num, (int, np.integer)) or isinstance(num, bool) or num < 1:
            raise ValueError(f"skip_frames needs a positive integer, got {num!r}")
        self._pos = min(self._pos + int(num), len(self))

    def get_frame_timestamp(self, idx: int | slice | Iterable[int]) -> np.ndarray:
        """Start and end time (seconds, float32 as decord) of each frame: (N, 2), or (2,) for one index."""
        if isinstance(idx, slice):
            idx = range(*idx.indices(len(self)))
        indices = self._normalise(idx)
        stamps = self._index()[0][indices].astype(np.float32)
        return stamps[0] if np.ndim(idx) == 0 else stamps

    def get_key_indices(self) -> list[int]:
        return list(self._index()[1])

    def _normalise(self, indices: Iterable[int] | int | np.ndarray, negative: bool = True) -> list[int]:
        n = len(self)
        out = []
        for raw in np.atleast_1d(np.asarray(indices)).ravel().tolist():
            if not isinstance(raw, int):
                raise TypeError(f"frame indices must be integers, got {raw!r}")
            i = raw + n if raw < 0 and negative else raw
            if not 0 <= i < n:
                raise IndexError(f"frame index {raw} out of range for a video of {n} frames")
            out.append(i)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(frames={len(self)}, fps={self.get_avg_fps():.3f})"


class VideoReader(DecordAPI):
    """Decode a video in this process. ``ctx`` and ``num_threads`` exist for decord compatibility;
    ``width``/``height`` resize frames (one of them alone keeps the aspect ratio)."""

    def __init__(self, uri: str | os.PathLike[str], ctx: Any = None, width: int = -1, height: int = -1,
                 num_threads: int = 0, *, cache_mb: int = 512) -> None:
        self.path = os.fspath(uri)
        if not os.path.isfile(self.path):
            raise MediaError(f"video file not found: {self.path!r}")
        self._decoder = Decoder(self.path)
        info = self._decoder.info
        if width <= 0 and height <= 0:
            width, height = info.width, info.height
        self._out_size = (width if width > 0 else round(info.width * height / info.height),
                          height if height > 0 else round(info.height * width / info.width))
        self.info = VideoInfo(info.frames, info.fps, *self._out_size)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_cap = cache_mb << 20

    def _fetch(self, indices: list[int]) -> dict[int, np.ndarray]:
        # Collect into a local dict: remembering new frames may evict others of this same batch.
        found = {i: self._cache[i] for i in indices if i in self._cache}
        for i in found:
            self._cache.move_to_end(i)
        missing = [i for i in indices if i not in found]
        if missing:
            for i, frame in self._decoder.decode(missing):
                found[i] = self._resize(frame)
                self._remember(i, found[i])
        return found

    def _index(self) -> tuple[np.ndarray, list[int]]:
        return self._decoder.timestamps, self._decoder.key_indices

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        if (frame.shape[1], frame.shape[0]) == self._out_size:
            return frame
        import cv2

        return cv2.resize(frame, self._out_size, interpolation=cv2.INTER_AREA)

    def _remember(self, i: int, frame: np.ndarray) -> None:
        self._cache[i] = frame
        self._cache_bytes += frame.nbytes
        while self._cache_bytes > self._cache_cap and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes

    def __repr__(self) -> str:
        return f"VideoReader({self.path!r}, frames={len(self)}, fps={self.get_avg_fps():.3f})"


class ServedVideoReader(DecordAPI):
    """``video_clue_0``: frames of one video from the host's video service, through a socket.

    The socket is bound to this episode's video by the service, so nothing sent on it can reach another
    file. Each frame arrives as a sealed memfd (shared read-only by every episode that asked for it)
    and is copied into the array returned. Safe to use from several threads.
    """

    def __init__(self, fd: int, facts: dict[str, Any]) -> None:
        self._sock = socket.socket(fileno=fd)
        self.info = VideoInfo(int(facts["frames"]), float(facts["fps"]), int(facts["width"]),
                              int(facts["height"]))
        self._lock = threading.Lock()
        self._next_id = 0
        self._index_cache: tuple[np.ndarray, list[int]] | None = None

    def _fetch(self, indices: list[int]) -> dict[int, np.ndarray]:
        h, w = self.info.height, self.info.width

        def mapped(reply) -> dict[int, np.ndarray]:
            if len(reply.fds) != len(chunk):
                raise MediaError(f"the video service sent {len(reply.fds)} frames for {len(chunk)}")
            views = {}
            for i, fd in zip(chunk, reply.fds):
                if os.fstat(fd).st_size != h * w * 3:
                    raise MediaError("the video service sent a frame of the wrong size")
                # a read-only view of the shared pixels, unmapped once get_batch has copied it
                buf = mmap.mmap(fd, h * w * 3, mmap.MAP_SHARED | mmap.MAP_POPULATE, mmap.PROT_READ)
                views[i] = np.frombuffer(buf, np.uint8).reshape(h, w, 3)
            return views

        frames: dict[int, np.ndarray] = {}
        for start in range(0, len(indices), MAX_FRAMES_PER_REQUEST):
            chunk = indices[start:start + MAX_FRAMES_PER_REQUEST]
            frames.update(self._call({"op": "frames", "indices": chunk}, mapped))
        return frames

    def _index(self) -> tuple[np.ndarray, list[int]]:
        if self._index_cache is None:
            n = len(self)

            def parsed(reply) -> tuple[np.ndarray, list[int]]:
                stamps, keys = reply.buffers if len(reply.buffers) == 2 else (b"", b"")
                if len(stamps) != 16 * n or len(keys) % 8:
                    raise MediaError("the video service sent a malformed index")
                return np.frombuffer(stamps, np.float64).reshape(n, 2), np.frombuffer(keys, np.int64).tolist()

            self._index_cache = self._call({"op": "index"}, parsed)
        return self._index_cache

    def _call(self, header: dict[str, Any], handle: Callable[[Any], T]) -> T:
        """Send one request and ``handle`` its reply. If the service restarted meanwhile (its decoder
        crashed, maybe on another episode's video), the request may have been lost: it is sent again."""
        from ..sandbox import _wire

        with self._lock:
            ids: set[int] = set()
            for _attempt in range(2):
                self._next_id += 1
                ids.add(self._next_id)
                try:
                    _wire.send(self._sock, dict(header, id=self._next_id))
                except OSError as exc:
                    raise MediaError(f"lost the video service ({exc!r}); the video cannot be read") from None
                while True:
                    with self._reply() as reply:
                        h = reply.header
                        if h.get("op") == "restarted":
                            break
                        if h.get("id") in ids:  # else: the late answer to an interrupted request
                            if not h.get("ok"):
                                raise MediaError(str(h.get("error")))
                            return handle(reply)
            raise MediaError("the video decoder crashed twice on this request; the video may be corrupt")

    @contextmanager
    def _reply(self) -> Iterator[Any]:
        """The next message. Waiting for it can be interrupted (the sandbox's deadline sends SIGINT);
        reading and handling it cannot, so the stream stays in step and its fds are always closed."""
        from ..sandbox import _wire

        lost = "lost the video service ({!r}); the video cannot be read"
        try:
            if not self._sock.recv(1, socket.MSG_PEEK):
                raise EOFError("the connection was closed")
        except (OSError, EOFError) as exc:
            raise MediaError(lost.format(exc)) from None
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            try:
                reply = _wire.recv(self._sock, 1 << 20, 24 * len(self), max_fds=MAX_FRAMES_PER_REQUEST)
            except (OSError, EOFError, _wire.ProtocolError) as exc:
                raise MediaError(lost.format(exc)) from None
            try:
                yield reply
            finally:
                for fd in reply.fds:
                    os.close(fd)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def close(self) -> None:
        self._sock.close()

