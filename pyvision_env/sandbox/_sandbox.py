"""The public sandbox API: a :class:`Sandbox` per host process, a :class:`Session` per episode."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import mmap
import os
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
from ..media.images import ImageLike, fit_pixels, to_rgb_array
from ..media.video_service import VideoService
from . import _rootfs, _wire
from ._cgroups import Cgroups, EpisodeCgroup
from ._reaper import Reaper, remove_tree
from ._text import replace_surrogates, truncate_middle
from ._zygote_client import IsolationMode, ZygoteClient
from .config import SandboxConfig
from .results import ExecutionResult, IsolationReport

_SOCKET_BUFFER = 8 << 20  # a 1024x1024 frame crosses in one go
_HELLO_TIMEOUT_S = 60.0
_TRANSFER_ALLOWANCE_S = 1.0  # a reply must be complete this long after its deadline (plus the grace)
_MAX_CODE_CHARS = 8_000_000  # requests are JSON with ASCII escapes: at most 6 bytes a character, < 64 MiB
_MAX_NOTES = 16
_CGROUP_OVERHEAD_MB = 64  # the worker's own pages (copy-on-write of the interpreter) on top of the budget
_reaper = Reaper()
_executor: ThreadPoolExecutor | None = None
log = logging.getLogger("pyvision_env.sandbox")
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
            if key in self._entries:  # another thread stored it meanwhile: keep one copy
                os.close(fd)
                return os.dup(self._entries[key][0]), shape
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
                 image_cache_mb: int = 1024, video_cache_mb: int = 1024, pool_size: int = 2) -> None:
        if isolation not in get_args(IsolationMode):
            raise ValueError(f"isolation must be one of {get_args(IsolationMode)}, got {isolation!r}")
        if pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {pool_size}")
        self.scratch_root = tempfile.mkdtemp(prefix="pyvision-")
        self._cgroups = Cgroups() if isolation != "none" else None
        self._zygote = ZygoteClient(isolation, use_namespaces, self.scratch_root, self._cgroups)
        self._images = _ImageStore(image_cache_mb << 20)
        self._videos = VideoService(video_cache_mb, isolation != "none" and use_namespaces, self.scratch_root)
        self._pool = _WorkerPool(self, pool_size)
        self._pid = os.getpid()
        self._finalizer = weakref.finalize(self, Sandbox._cleanup, self._pid, self._zygote, self._images,
                                           self._videos, self._cgroups, self._pool, self.scratch_root)

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
        if os.getpid() != self._pid:
            raise SandboxError(f"this Sandbox belongs to process {self._pid}, and this is a fork of it; call "
                               "get_sandbox() here for one of this process's own")
        return Session(self, list(images), None if video is None else os.fspath(video), config or SandboxConfig())

    async def asession(self, images: Sequence[ImageLike] = (), video: str | os.PathLike[str] | None = None,
                       config: SandboxConfig | None = None) -> Session:
        """:meth:`session` without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            _thread_pool(), lambda: self.session(images, video, config))

    def close(self) -> None:
        """Stop the zygote (every open session's worker dies with it) and remove scratch space."""
        self._finalizer()

    def _take_worker(self, prep: tuple[tuple[str, Any], ...], host_scratch: str | None,
                     pooled: bool = True) -> _Worker:
        """A prepared worker for an episode: from the pool (private root only: elsewhere the isolation
        depends on the episode's own scratch directory), else forked now."""
        if pooled and host_scratch is None:
            worker = self._pool.take(prep)
            if worker is not None:
                return worker
        return self._new_worker(prep, host_scratch)

    def _new_worker(self, prep: tuple[tuple[str, Any], ...], host_scratch: str | None) -> _Worker:
        """Fork a worker in a fresh episode cgroup (it joins it first thing, or the host moves it after
        ``hello``: before it can run anything, since it waits for its inputs) and let it confine itself."""
        limits = dict(prep)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        memory = (limits["memory_limit_mb"] + _CGROUP_OVERHEAD_MB) << 20
        cgroup = (self._cgroups.create(memory, limits["max_processes"], limits["cpu_limit_cores"])
                  if self._cgroups is not None else None)
        task_fds = cgroup.open_for_self_join() if cgroup is not None else []
        try:
            zpid = self._zygote.spawn({"prep": limits, "scratch_dir": host_scratch}, [theirs.fileno(), *task_fds])
        except BaseException:
            ours.close()
            _reaper.submit(None, cgroup)
            raise
        finally:
            theirs.close()
            for fd in task_fds:
                os.close(fd)
        try:
            hello = _wire.recv(ours, 1 << 20, 0, credentials=True, deadline=time.monotonic() + _HELLO_TIMEOUT_S)
            if not hello.header.get("ok") or hello.pid is None:
                raise SandboxError(f"the episode's interpreter could not start: "
                                   f"{hello.header.get('error') or 'no credentials'}")
        except (OSError, EOFError, _wire.ProtocolError, SandboxError) as exc:
            ours.close()
            self._zygote.status(zpid)
            _reaper.submit(None, cgroup)
            if isinstance(exc, SandboxError):
                raise
            raise SandboxError(f"the sandbox worker died while starting ({exc!r})") from exc
        finally:
            ours.settimeout(None)
        pidfd = os.pidfd_open(hello.pid)
        resources = "rlimits"
        if cgroup is not None:
            try:
                if not hello.header.get("cgroup_joined"):
                    cgroup.add(hello.pid)
                resources = f"cgroup-{cgroup.kind}"
            except ProcessLookupError:  # it died already (its zygote was stopped: the Sandbox is closing, say)
                ours.close()
                _reaper.submit(pidfd, cgroup)
                raise SandboxError("the sandbox worker died while starting") from None
            except OSError as exc:
                log.warning("could not move the worker into its cgroup (%s); it runs with rlimits only", exc)
        applied = hello.header["isolation"]
        report = IsolationReport(applied["network"], applied["filesystem"], applied["processes"], applied["ipc"],
                                 applied["syscalls"], resources, self.isolation.problems)
        return _Worker(ours, hello.pid, zpid, pidfd, report, cgroup)

    @staticmethod
    def _cleanup(owner: int, zygote: ZygoteClient, images: _ImageStore, videos: VideoService,
                 cgroups: Cgroups | None, pool: _WorkerPool, scratch_root: str) -> None:
        if os.getpid() != owner:  # a forked child exiting: all of this is its parent's
            return
        pool.close()
        zygote.close()
        videos.close()
        images.clear()
        _reaper.drain()
        if cgroups is not None:
            cgroups.close()
        remove_tree(scratch_root)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared: dict[tuple[str, bool], Sandbox] = {}
_shared_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child (multiprocessing, Gymnasium's AsyncVectorEnv) must not drive its parent's zygote,
    workers, reaper or threads: it forgets them, closing nothing of the parent's, and makes its own on use."""
    global _reaper, _executor, _executor_lock, _shared_lock
    _shared.clear()
    _reaper = Reaper()
    _executor, _executor_lock, _shared_lock = None, threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def get_sandbox(isolation: IsolationMode = "auto", use_namespaces: bool = True) -> Sandbox:
    """The process-wide Sandbox for these settings (one zygote per setting per host process; a forked
    child gets its own)."""
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
    cgroup: EpisodeCgroup | None

    def signal(self, sig: int) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
        except ProcessLookupError:
            pass

    def kill_and_release(self) -> None:
        """SIGKILL the worker (in a PID namespace that kills all it started; otherwise its process group
        too, best effort) and hand its exit, cgroup and pidfd to the reaper: nothing here waits."""
        if self.isolation.processes != "pid-namespace":
            try:
                os.killpg(self.pid, signal.SIGKILL)  # the worker made itself a session leader
            except OSError:
                pass
        self.signal(signal.SIGKILL)
        self.sock.close()
        _reaper.submit(self.pidfd, self.cgroup)


def _prep_key(config: SandboxConfig) -> tuple[tuple[str, Any], ...]:
    """The limits a worker needs before its episode is known (its tmpfs, PIDs, cgroup): the pool's key."""
    return tuple((name, getattr(config, name)) for name in _PREP_FIELDS)


_PREP_FIELDS = ("max_scratch_mb", "max_processes", "memory_limit_mb", "cpu_limit_cores")


class _StaleWorker(Exception):
    """A worker died before its episode started (a pooled one whose zygote was killed, say)."""


class _WorkerPool:
    """A few workers forked and confined ahead of time, so that ``reset()`` skips the fork and the
    isolation set-up (most of a session start). Kept for the limits asked for last (an RL run
    asks for one set); refilled by a background thread once each taker has started. Idle pooled
    workers block on their socket: no CPU, ~4 MB of private memory each."""

    def __init__(self, sandbox: Sandbox, size: int) -> None:
        self._sandbox = weakref.ref(sandbox)
        self._size = size
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._key: tuple[tuple[str, Any], ...] | None = None
        self._ready: list[_Worker] = []
        self._thread: threading.Thread | None = None
        self._closed = False

    def take(self, key: tuple[tuple[str, Any], ...]) -> _Worker | None:
        if self._size == 0:
            return None
        with self._lock:
            if self._closed:
                return None
            if key != self._key:
                stale, self._ready, self._key = self._ready, [], key
                for worker in stale:
                    worker.kill_and_release()
            worker = self._ready.pop(0) if self._ready else None
            if self._thread is None:
                self._thread = threading.Thread(target=self._refill, name="pyvision-pool", daemon=True)
                self._thread.start()
            if worker is None:  # empty: prepare the next one while the taker forks its own
                self._wake.notify()
        return worker

    def replenish(self) -> None:
        """Prepare a worker for the one taken: called once the taker's episode has started, since the
        preparation (a fork and the confinement, ~5 ms of CPU) would otherwise compete with that start."""
        with self._lock:
            self._wake.notify()

    def _refill(self) -> None:
        while True:
            with self._lock:
                while not self._closed and len(self._ready) >= self._size:
                    self._wake.wait()
                if self._closed:
                    return
                key = self._key
            sandbox = self._sandbox()
            if sandbox is None or sandbox.closed:
                return
            try:
                worker = sandbox._new_worker(key, None)
            except (SandboxError, OSError) as exc:
                if not (self._closed or sandbox.closed):  # closing races the refill: nothing to report
                    log.warning("could not prepare a pooled worker (%s); episodes fork their own", exc)
                with self._lock:
                    self._wake.wait(1.0)
                continue
            finally:
                del sandbox
            with self._lock:
                if self._closed or key != self._key:
                    worker.kill_and_release()
                else:
                    self._ready.append(worker)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
            self._wake.notify_all()
        for worker in ready:
            worker.kill_and_release()


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
        self._frames_shown = 0
        self._images = images
        self._video = None if video is None else os.path.realpath(video)
        self.video_facts: dict[str, Any] | None = None  # set at start, from the video service
        if video is not None and not os.path.isfile(video):
            raise MediaError(f"video file not found: {video!r}")
        private_root = sandbox._zygote.plan_now()["mountns"]
        host_scratch = None if private_root else tempfile.mkdtemp(prefix="episode-", dir=sandbox.scratch_root)
        self.scratch_dir: str = _rootfs.HOME if private_root else host_scratch
        """The code's working directory and $HOME, as the code sees it. With a private root it is a tmpfs
        inside the worker's mount namespace (not on the host's disk); otherwise a host directory."""
        self._state: dict[str, Any] = {"worker": None, "scratch": host_scratch, "owner": os.getpid()}
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
        """A prepared worker (from the pool when one matches) started with this episode's inputs."""
        prep = _prep_key(self.config)
        for attempt in (1, 2):
            # a second attempt forks a fresh worker: the pool may hold more of a dead zygote's workers
            worker = self._sandbox._take_worker(prep, self._state["scratch"], pooled=attempt == 1)
            try:
                self._start(worker)
                return worker
            except _StaleWorker as exc:  # it died before its episode started (e.g. with a killed zygote)
                worker.kill_and_release()
                if attempt == 2:
                    raise SandboxError(f"the sandbox worker died while starting ({exc.__cause__!r})") from None
            except BaseException:
                worker.kill_and_release()
                raise
            finally:
                self._sandbox._pool.replenish()
        raise AssertionError("unreachable")

    def _start(self, worker: _Worker) -> None:
        """Send the episode's limits and inputs (image memfds, then the video service's socket for this
        episode's video) and wait for ``started``."""
        fds: list[int] = []
        try:
            shapes = []
            for image in self._images:
                fd, shape = self._sandbox._images.acquire(image)
                fds.append(fd)
                shapes.append(shape)
            facts = None
            if self._video is not None:  # the worker reads frames from the video service through this fd
                fd, facts = self._sandbox._videos.attach(self._video)
                fds.append(fd)
                self.video_facts = facts  # frames, fps, width, height: what video_clue_0 reports
            try:
                _wire.send(worker.sock, {"op": "start", "images": shapes, "video": facts,
                                         "limits": self.config.model_dump()}, fds=fds)
            except OSError as exc:
                raise _StaleWorker from exc
        finally:
            for fd in fds:
                os.close(fd)
        try:
            reply = _wire.recv(worker.sock, 1 << 20, 0, deadline=time.monotonic() + _HELLO_TIMEOUT_S).header
        except (ConnectionError, EOFError) as exc:
            raise _StaleWorker from exc
        except (OSError, _wire.ProtocolError) as exc:
            raise SandboxError(f"the sandbox worker failed while starting ({exc!r})") from exc
        finally:
            worker.sock.settimeout(None)
        if not reply.get("ok"):
            error_type = MediaError if reply.get("kind") == "media" else SandboxError
            raise error_type(f"the episode's interpreter could not start: {reply.get('error')}")

    # -- execution ---------------------------------------------------------------------------------

    def execute(self, code: str, timeout: float | None = None) -> ExecutionResult:
        """Run ``code`` in the episode's namespace. Never raises for anything the code does."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        timeout = self.config.exec_timeout_s if timeout is None else float(timeout)
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if len(code) > _MAX_CODE_CHARS:
            return ExecutionResult(stdout="", stderr="", exec_time_s=0.0,
                                   error=f"The code was not run: it is {len(code):,} characters long, over the "
                                         f"limit of {_MAX_CODE_CHARS:,}.")
        grace = self.config.interrupt_grace_s
        with self._lock:
            worker = self._live_worker()
            self._next_id += 1
            rid = self._next_id
            start = time.monotonic()
            request = {"op": "exec", "id": rid, "code": code, "cpu_limit_s": math.ceil(timeout + grace) + 1}
            try:
                _wire.send(worker.sock, request)
            except OSError:
                return self._replace_worker(worker, start, "crash")
            reply = self._await_reply(worker, rid, start + timeout)
            if reply is _DEADLINE:
                worker.signal(signal.SIGINT)  # KeyboardInterrupt in the code: the namespace survives
                reply = self._await_reply(worker, rid, time.monotonic() + grace)
                if isinstance(reply, _wire.Message):
                    return self._to_result(reply, timed_out=True, timeout=timeout)
                return self._replace_worker(worker, start, "protocol" if isinstance(reply, str) else "timeout",
                                            detail=reply if isinstance(reply, str) else "")
            if isinstance(reply, _wire.Message):
                return self._to_result(reply, timed_out=False, timeout=timeout)
            if isinstance(reply, str):
                return self._replace_worker(worker, start, "protocol", detail=reply)
            return self._replace_worker(worker, start, "stalled" if reply is _STALLED else "crash")

    async def aexecute(self, code: str, timeout: float | None = None) -> ExecutionResult:
        """:meth:`execute` without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(_thread_pool(), self.execute, code, timeout)

    def _await_reply(self, worker: _Worker, rid: int, deadline: float) -> _wire.Message | str | object:
        """The reply to request ``rid``: a message, ``_DEADLINE`` (nothing began before ``deadline``),
        ``_STALLED`` (a reply began but was not complete by the deadline plus the grace and a transfer
        allowance), ``_DEAD`` (the worker closed its socket), or a str saying how the reply broke the
        wire format. Stale replies (answers to timed-out requests) are dropped."""
        cfg = self.config
        max_header = cfg.max_output_chars * 3 * 6 + (1 << 20)  # three texts of 6-byte escapes, plus notes
        max_frames = (cfg.max_frames_per_step + 1) * (cfg.max_frame_pixels * 3 + 64)
        complete_by = deadline + cfg.interrupt_grace_s + _TRANSFER_ALLOWANCE_S
        while True:
            remaining = deadline - time.monotonic()
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
            try:
                msg = _wire.recv(worker.sock, max_header, max_frames, deadline=complete_by)
            except TimeoutError:
                return _STALLED
            except (OSError, EOFError):
                return _DEAD
            except _wire.ProtocolError as exc:
                return str(exc)
            finally:
                worker.sock.settimeout(None)
            if msg.header.get("id") == rid:
                return msg if _valid_reply(msg) else "a reply with missing or mistyped fields"

    def _to_result(self, msg: _wire.Message, timed_out: bool, timeout: float) -> ExecutionResult:
        """Build the result from a (validated) reply, enforcing every cap here: the worker is not trusted
        to have applied them (the model's code can write its own reply on the worker's socket)."""
        cfg = self.config
        h = msg.header
        notes = [str(n)[:500] for n in h["notes"][:_MAX_NOTES]]
        texts, invalid = [], 0
        for text in (h["stdout"], h["stderr"], h["error"]):
            if text is not None:
                text, count = replace_surrogates(truncate_middle(text, cfg.max_output_chars))
                invalid += count
            texts.append(text)
        stdout, stderr, error = texts
        if invalid:
            notes.append(f"{invalid} invalid character(s) (lone surrogates) in the output replaced by U+FFFD")
        allowed = max(0, min(cfg.max_frames_per_step, cfg.max_frames_per_episode - self._frames_shown))
        frames, downscaled = [], 0
        for (hh, ww), buf in zip(h["frames"][:allowed], msg.buffers):
            frame = np.frombuffer(buf, np.uint8).reshape(hh, ww, 3)
            fitted = fit_pixels(frame, cfg.max_frame_pixels)
            downscaled += fitted is not frame
            frames.append(fitted)
        if len(h["frames"]) > allowed:
            notes.append(f"{len(h['frames']) - allowed} frame(s) not returned: at most {cfg.max_frames_per_step} per "
                         f"execution and {cfg.max_frames_per_episode} per episode")
        if downscaled:
            notes.append(f"{downscaled} frame(s) downscaled to at most {cfg.max_frame_pixels} pixels")
        self._frames_shown += len(frames)
        if timed_out:
            error = (f"TimeoutError: the execution passed its {timeout:g} s deadline and was interrupted; "
                     f"variables defined before the interruption are kept.\n{error or ''}").rstrip()
        exec_time = float(h["exec_time_s"])
        return ExecutionResult(stdout=stdout, stderr=stderr, error=error,
                               exec_time_s=exec_time if math.isfinite(exec_time) and exec_time >= 0 else 0.0,
                               frames=tuple(frames), timed_out=timed_out, notes=tuple(notes))

    def _replace_worker(self, worker: _Worker, start: float, reason: str, detail: str = "") -> ExecutionResult:
        """Kill the worker (and everything it started) and start a fresh one; the result says why."""
        elapsed = time.monotonic() - start
        lost = "all variables were lost (the inputs are loaded again)."
        if reason == "timeout":
            error = ("TimeoutError: the execution passed its deadline and did not stop on an interrupt; the "
                     f"interpreter was restarted and {lost}")
        elif reason == "stalled":
            error = ("TimeoutError: the interpreter's reply did not arrive before the deadline (it stalled in the "
                     f"middle of the reply); the interpreter was killed and restarted and {lost}")
        elif reason == "protocol":
            error = (f"The interpreter broke the reply protocol ({detail}); it was killed and restarted and {lost}")
        else:
            worker.signal(signal.SIGKILL)  # it may have only closed its socket: never wait on a live one
            status = self._sandbox._zygote.status(worker.zpid)
            cause = ("killed by the kernel for exceeding the episode's memory limit "
                     f"(memory_limit_mb={self.config.memory_limit_mb})"
                     if worker.cgroup is not None and worker.cgroup.oom_killed() else _describe_status(status))
            error = f"The interpreter process died ({cause}); it was restarted and {lost}"
        worker.kill_and_release()
        self._state["worker"] = None
        try:
            self._state["worker"] = self._spawn()
            restarted = True
        except (SandboxError, MediaError) as exc:
            error += f" Restarting failed: {exc}"
            restarted = False
        timed_out = reason in ("timeout", "stalled")
        return ExecutionResult(stdout="", stderr="", error=error, exec_time_s=elapsed, timed_out=timed_out,
                               crashed=not timed_out, restarted=restarted)

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill the worker and everything it started; never raises, never waits for the teardown.

        The processes get SIGKILL here; their exit is awaited and their cgroup and any host scratch
        directory removed in the background (all gone within milliseconds, at most ``KILL_GRACE_S``).
        Idempotent."""
        with self._lock:
            self._finalizer()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(_thread_pool(), self.close)

    @staticmethod
    def _cleanup(state: dict[str, Any]) -> None:
        if os.getpid() != state["owner"]:  # a forked child exiting: the worker is its parent's
            return
        worker: _Worker | None = state["worker"]
        state["worker"] = None
        if worker is not None:
            worker.kill_and_release()
        if state["scratch"] is not None:
            _reaper.submit(None, None, state["scratch"])

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_DEADLINE = object()
_DEAD = object()
_STALLED = object()


def _valid_reply(msg: _wire.Message) -> bool:
    """Check the types of a reply from the (untrusted) worker before anything is built from it."""
    h = msg.header
    try:
        shapes = h["frames"]
        return (isinstance(h["stdout"], str) and isinstance(h["stderr"], str)
                and (h["error"] is None or isinstance(h["error"], str))
                and isinstance(h["exec_time_s"], (int, float)) and isinstance(h["notes"], list)
                and isinstance(shapes, list) and len(shapes) == len(msg.buffers)
                and all(isinstance(shape, list) and len(shape) == 2 for shape in shapes)
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
