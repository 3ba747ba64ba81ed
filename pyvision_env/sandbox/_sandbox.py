"""The public sandbox API: a :class:`Sandbox` per host process, a :class:`Session` per episode."""

from __future__ import annotations

import asyncio
import fcntl
import math
import mmap
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np

from ..errors import MediaError, SandboxError, SessionClosedError
from ..media.images import ImageLike, to_rgb_array
from ..media.video_service import VideoService
from . import _wire
from ._zygote_client import IsolationMode, ZygoteClient
from .config import SandboxConfig
from .results import ExecutionResult, IsolationReport

_SOCKET_BUFFER = 8 << 20  # a 1024x1024 frame crosses in one go
_HELLO_TIMEOUT_S = 60.0
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _thread_pool() -> ThreadPoolExecutor:
    """Threads for the async API: a step blocks a thread on its socket, never the event loop."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="pyvision-sandbox")
        return _executor


class _ImageStore:
    """Decoded input images in sealed memfds, shared read-only with every worker that loads them.

    A GRPO group loads the same image n times: it is decoded once, and each worker maps the pixels
    without a copy through the socket. Sealing makes the pixels immutable even to a hostile worker.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self._capacity = capacity_bytes
        self._entries: OrderedDict[tuple[Any, ...], tuple[int, tuple[int, int]]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def acquire(self, image: ImageLike) -> tuple[int, tuple[int, int]]:
        """A fresh fd (the caller closes it) holding the image's RGB pixels, and (height, width)."""
        key = None
        if isinstance(image, (str, os.PathLike)):
            path = os.path.realpath(os.fspath(image))
            try:
                st = os.stat(path)
            except OSError as exc:
                raise MediaError(f"image file not found: {os.fspath(image)!r}") from exc
            key = (path, st.st_mtime_ns, st.st_size)
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    fd, shape = self._entries[key]
                    return os.dup(fd), shape
        pixels = to_rgb_array(image)
        fd = _sealed_memfd(pixels)
        shape = (int(pixels.shape[0]), int(pixels.shape[1]))
        if key is None:
            return fd, shape
        with self._lock:
            self._entries[key] = (fd, shape)
            self._bytes += shape[0] * shape[1] * 4
            while self._bytes > self._capacity and len(self._entries) > 1:
                _, (old_fd, (h, w)) = self._entries.popitem(last=False)
                os.close(old_fd)
                self._bytes -= h * w * 4
            return os.dup(fd), shape

    def clear(self) -> None:
        with self._lock:
            for fd, _ in self._entries.values():
                os.close(fd)
            self._entries.clear()
            self._bytes = 0


def _sealed_memfd(pixels: np.ndarray) -> int:
    """RGB pixels as RGBX (Pillow's own layout for RGB, so workers map them without a copy) in a
    memfd sealed against any write, grow or shrink."""
    h, w = pixels.shape[:2]
    fd = os.memfd_create("pyvision-image", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, h * w * 4)
    with mmap.mmap(fd, h * w * 4) as buf:
        rgbx = np.frombuffer(buf, np.uint8).reshape(h, w, 4)
        rgbx[..., :3] = pixels
        rgbx[..., 3] = 255
        del rgbx
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    return fd


class Sandbox:
    """Starts one zygote (lazily) and opens episode sessions from it. Thread-safe.

    Most code wants :func:`get_sandbox`, which shares one Sandbox per isolation setting in the process.
    """

    def __init__(self, isolation: IsolationMode = "auto", use_namespaces: bool = True,
                 image_cache_mb: int = 1024, video_cache_mb: int = 1024) -> None:
        if isolation not in get_args(IsolationMode):
            raise ValueError(f"isolation must be one of {get_args(IsolationMode)}, got {isolation!r}")
        self.scratch_root = tempfile.mkdtemp(prefix="pyvision-")
        self._zygote = ZygoteClient(isolation, use_namespaces, self.scratch_root)
        self._images = _ImageStore(image_cache_mb << 20)
        self._videos = VideoService(video_cache_mb, isolation != "none" and use_namespaces, self.scratch_root)
        self._finalizer = weakref.finalize(self, Sandbox._cleanup, self._zygote, self._images, self._videos,
                                           self.scratch_root)

    @property
    def isolation(self) -> IsolationReport:
        """The isolation in force (starts the zygote if needed)."""
        return self._zygote.report()

    @property
    def closed(self) -> bool:
        return self._zygote.closed

    @property
    def zygote_starts(self) -> int:
        return self._zygote.starts

    def session(self, images: Sequence[ImageLike] = (), video: str | os.PathLike[str] | None = None,
                config: SandboxConfig | None = None) -> Session:
        """Open an episode: a fresh interpreter with ``image_clue_i`` and ``video_clue_0`` loaded.

        Raises MediaError naming the file when an input cannot be read.
        """
        if self.closed:
            raise SandboxError("this Sandbox is closed")
        return Session(self, list(images), None if video is None else os.fspath(video), config or SandboxConfig())

    async def asession(self, images: Sequence[ImageLike] = (), video: str | os.PathLike[str] | None = None,
                       config: SandboxConfig | None = None) -> Session:
        """:meth:`session` without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            _thread_pool(), lambda: self.session(images, video, config))

    def close(self) -> None:
        """Stop the zygote (every open session's worker dies with it) and remove scratch space."""
        self._finalizer()

    @staticmethod
    def _cleanup(zygote: ZygoteClient, images: _ImageStore, videos: VideoService, scratch_root: str) -> None:
        zygote.close()
        videos.close()
        images.clear()
        shutil.rmtree(scratch_root, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared: dict[tuple[str, bool], Sandbox] = {}
_shared_lock = threading.Lock()


def get_sandbox(isolation: IsolationMode = "auto", use_namespaces: bool = True) -> Sandbox:
    """The process-wide Sandbox for these settings (one zygote per setting per host process)."""
    with _shared_lock:
        key = (isolation, use_namespaces)
        if key not in _shared or _shared[key].closed:
            _shared[key] = Sandbox(isolation, use_namespaces)
        return _shared[key]


@dataclass
class _Worker:
    sock: socket.socket
    pid: int  # in the host's PID namespace
    zpid: int  # in the zygote's
    pidfd: int
    isolation: IsolationReport

    def signal(self, sig: int) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the worker: in a PID namespace that kills all it started; otherwise kill its
        process group too (best effort: a child that left the group survives)."""
        if self.isolation.processes != "pid-namespace":
            try:
                os.killpg(self.pid, signal.SIGKILL)  # the worker made itself a session leader
            except OSError:
                pass
        self.signal(signal.SIGKILL)

    def release(self) -> None:
        self.sock.close()
        os.close(self.pidfd)


class Session:
    """One episode's interpreter. State persists across :meth:`execute` calls until :meth:`close`.

    Thread-safe (executions are serialised). Use :meth:`aexecute` from asyncio code.
    """

    def __init__(self, sandbox: Sandbox, images: list[ImageLike], video: str | None,
                 config: SandboxConfig) -> None:
        self.config = config
        self._sandbox = sandbox
        self._lock = threading.Lock()
        self._next_id = 0
        self._images = images
        self._video = video
        self.video_facts: dict[str, Any] | None = None  # set at spawn, from the video service
        if video is not None and not os.path.isfile(video):
            raise MediaError(f"video file not found: {video!r}")
        self.scratch_dir = tempfile.mkdtemp(prefix="episode-", dir=sandbox.scratch_root)
        self._state: dict[str, Any] = {"worker": None, "scratch": self.scratch_dir, "zygote": sandbox._zygote}
        self._finalizer = weakref.finalize(self, Session._cleanup, self._state)
        try:
            self._state["worker"] = self._spawn()
        except BaseException:
            self.close()
            raise

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def pid(self) -> int:
        """The worker's pid in the host's PID namespace."""
        return self._live_worker().pid

    @property
    def isolation(self) -> IsolationReport:
        return self._live_worker().isolation

    def _live_worker(self) -> _Worker:
        if self.closed:
            raise SessionClosedError("this sandbox session is closed")
        if self._sandbox.closed:
            raise SessionClosedError("the Sandbox of this session was closed (its worker died with it)")
        worker = self._state["worker"]
        if worker is None:
            worker = self._state["worker"] = self._spawn()
        return worker

    def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        image_fds: list[int] = []
        try:
            shapes = []
            for image in self._images:
                fd, shape = self._sandbox._images.acquire(image)
                image_fds.append(fd)
                shapes.append(shape)
            facts = None
            if self._video is not None:  # the worker reads frames from the video service through this fd
                fd, facts = self._sandbox._videos.attach(self._video)
                image_fds.append(fd)
                self.video_facts = facts  # frames, fps, width, height: what video_clue_0 reports
            header = {"scratch_dir": self.scratch_dir, "images": shapes, "video": facts,
                      "limits": self.config.model_dump()}
            zpid = self._sandbox._zygote.spawn(header, [theirs.fileno(), *image_fds])
        finally:
            theirs.close()
            for fd in image_fds:
                os.close(fd)
        ours.settimeout(_HELLO_TIMEOUT_S)
        try:
            hello = _wire.recv(ours, 1 << 20, 0, credentials=True)
        except (OSError, EOFError, _wire.ProtocolError) as exc:
            ours.close()
            self._sandbox._zygote.wait(zpid)
            raise SandboxError(f"the sandbox worker died while starting ({exc!r})") from exc
        finally:
            ours.settimeout(None)
        if not hello.header.get("ok"):
            ours.close()
            self._sandbox._zygote.wait(zpid)
            error_type = MediaError if hello.header.get("kind") == "media" else SandboxError
            raise error_type(f"the episode's interpreter could not start: {hello.header.get('error')}")
        if hello.pid is None:
            ours.close()
            raise SandboxError("the worker did not send its credentials")
        applied = hello.header["isolation"]
        report = IsolationReport(applied["network"], applied["filesystem"], applied["processes"],
                                 self._sandbox.isolation.problems)
        return _Worker(ours, hello.pid, zpid, os.pidfd_open(hello.pid), report)

    # -- execution ---------------------------------------------------------------------------------

    def execute(self, code: str, timeout: float | None = None) -> ExecutionResult:
        """Run ``code`` in the episode's namespace. Never raises for anything the code does."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        timeout = self.config.exec_timeout_s if timeout is None else float(timeout)
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        with self._lock:
            worker = self._live_worker()
            self._next_id += 1
            rid = self._next_id
            start = time.perf_counter()
            request = {"op": "exec", "id": rid, "code": code,
                       "cpu_limit_s": math.ceil(timeout + self.config.interrupt_grace_s) + 1}
            try:
                _wire.send(worker.sock, request)
            except OSError:
                return self._replace_worker(worker, start, timed_out=False)
            reply = self._await_reply(worker, rid, start + timeout)
            if reply is _DEADLINE:
                worker.signal(signal.SIGINT)  # KeyboardInterrupt in the code: the namespace survives
                reply = self._await_reply(worker, rid, time.perf_counter() + self.config.interrupt_grace_s)
                if reply is _DEADLINE or reply is _DEAD:
                    return self._replace_worker(worker, start, timed_out=True)
                return self._to_result(reply, timed_out=True, timeout=timeout)
            if reply is _DEAD:
                return self._replace_worker(worker, start, timed_out=False)
            return self._to_result(reply, timed_out=False, timeout=timeout)

    async def aexecute(self, code: str, timeout: float | None = None) -> ExecutionResult:
        """:meth:`execute` without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(_thread_pool(), self.execute, code, timeout)

    def _await_reply(self, worker: _Worker, rid: int, deadline: float) -> _wire.Message | object:
        """The reply to request ``rid``; stale replies (answers to timed-out requests) are dropped."""
        cfg = self.config
        max_header = cfg.max_output_chars * 24 + (1 << 20)
        max_frames = (cfg.max_frames_per_step + 1) * (cfg.max_frame_pixels * 3 + 64)
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return _DEADLINE
            worker.sock.settimeout(remaining)
            try:
                first = worker.sock.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                return _DEADLINE
            except OSError:
                return _DEAD
            if not first:
                return _DEAD
            # A reply has begun: the worker writes it in one go, so a stall now is a broken worker.
            worker.sock.settimeout(max(remaining, 10.0))
            try:
                msg = _wire.recv(worker.sock, max_header, max_frames)
            except (OSError, EOFError, _wire.ProtocolError):
                return _DEAD
            if msg.header.get("id") == rid and _valid_reply(msg):
                return msg
            if msg.header.get("id") == rid:
                return _DEAD

    def _to_result(self, msg: _wire.Message, timed_out: bool, timeout: float) -> ExecutionResult:
        h = msg.header
        frames = tuple(np.frombuffer(buf, np.uint8).reshape(hh, ww, 3)
                       for (hh, ww), buf in zip(h["frames"], msg.buffers))
        error = h["error"]
        if timed_out:
            error = (f"TimeoutError: the execution passed its {timeout:g} s deadline and was interrupted; "
                     f"variables defined before the interruption are kept.\n{error or ''}").rstrip()
        return ExecutionResult(stdout=h["stdout"], stderr=h["stderr"], error=error,
                               exec_time_s=float(h["exec_time_s"]), frames=frames, timed_out=timed_out,
                               notes=tuple(str(n) for n in h["notes"]))

    def _replace_worker(self, worker: _Worker, start: float, timed_out: bool) -> ExecutionResult:
        """Kill the worker (and everything it started), reap it, and start a fresh one."""
        elapsed = time.perf_counter() - start
        worker.kill()
        status = self._sandbox._zygote.wait(worker.zpid)
        worker.release()
        self._state["worker"] = None
        if timed_out:
            error = ("TimeoutError: the execution passed its deadline and did not stop on an interrupt; "
                     "the interpreter was restarted and all variables were lost (the inputs are loaded "
                     "again).")
        else:
            error = (f"The interpreter process died ({_describe_status(status)}); it was restarted and all "
                     f"variables were lost (the inputs are loaded again).")
        try:
            self._state["worker"] = self._spawn()
            restarted = True
        except (SandboxError, MediaError) as exc:
            error += f" Restarting failed: {exc}"
            restarted = False
        return ExecutionResult(stdout="", stderr="", error=error, exec_time_s=elapsed, timed_out=timed_out,
                               crashed=not timed_out, restarted=restarted)

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill the worker and everything it started, and remove the scratch directory. Idempotent."""
        with self._lock:
            self._finalizer()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(_thread_pool(), self.close)

    @staticmethod
    def _cleanup(state: dict[str, Any]) -> None:
        worker: _Worker | None = state["worker"]
        if worker is not None:
            worker.kill()
            state["zygote"].wait(worker.zpid)
            worker.release()
            state["worker"] = None
        shutil.rmtree(state["scratch"], ignore_errors=True)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_DEADLINE = object()
_DEAD = object()


def _valid_reply(msg: _wire.Message) -> bool:
    """Check a reply from the (untrusted) worker before anything is built from it."""
    h = msg.header
    try:
        shapes = h["frames"]
        return (isinstance(h["stdout"], str) and isinstance(h["stderr"], str)
                and (h["error"] is None or isinstance(h["error"], str))
                and isinstance(h["exec_time_s"], (int, float)) and isinstance(h["notes"], list)
                and len(shapes) == len(msg.buffers)
                and all(isinstance(hh, int) and isinstance(ww, int) and hh > 0 and ww > 0
                        and len(buf) == hh * ww * 3 for (hh, ww), buf in zip(shapes, msg.buffers)))
    except (KeyError, TypeError, ValueError):
        return False


def _describe_status(status: int | None) -> str:
    if status is None:
        return "no exit status"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {sig} ({name})"
    return f"exit code {os.WEXITSTATUS(status)}"
