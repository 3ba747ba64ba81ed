"""Episode interpreters on the nodes of a Ray cluster, behind the session interface of the local sandbox.

One long-lived actor per node with CPUs (:class:`NodeSandbox`) owns that node's :class:`~.Sandbox`; its
zygote forks each episode's worker exactly as on one machine, so the isolation, limits, timeouts and
crash recovery are the local backend's. The driver side (:class:`RayBackend`) places each new episode
on the node with the most free capacity (open episodes per CPU; a node whose available memory is below
the episode's ``memory_limit_mb`` only when no other has it) and pins it there: the episode's
:class:`RaySession` sends every execution to that node's actor.

- Transfer: code and text travel in the actor call; input images (decoded once per driver and file)
  and videos (the file's bytes) go through Ray's object store as numpy arrays and are written once per
  node (images as raw pixels), and frames come back through the store (zero-copy reads). Nothing is
  PNG-encoded.
- Async: :meth:`RayBackend.asession` and :meth:`RaySession.aexecute` await the object refs on the
  caller's event loop; no thread waits for a node.
- Faults: every remote call has a deadline derived from the execution timeout (:func:`call_deadline`).
  A call whose node or actor died, or that passes its deadline, raises :class:`SandboxError` naming the
  node, and the actor leaves the pool (killed if it still runs). Resets look for live nodes every few
  seconds (:meth:`RayBackend.refresh`), so the next episode lands on a live node, and a node that joins
  (or comes back) gets an actor.
- The actors are named per node and shared by every process of the Ray job that uses the backend
  (verl's agent-loop workers, say): one zygote per node however many processes drive episodes. They
  live as long as the process that created them, or until :meth:`RayBackend.close`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import itertools
import os
import shutil
import socket
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from PIL import Image
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..errors import MediaError, PyVisionError, SandboxError, SandboxStartError, SessionClosedError
from ..media.images import ImageLike, to_rgb_array
from ._sandbox import Sandbox, Session, _thread_pool
from ._zygote_client import IsolationMode
from .config import SandboxConfig
from .results import ExecutionResult, IsolationReport

_REFRESH_S = 2.0  # how often a reset looks for nodes that joined or left
_START_TIMEOUT_S = 180.0  # an actor's start: a Python process, imports, the zygote (font cache on a new node)
_ACTOR_CONCURRENCY = 4096  # calls one node's actor serves at once (each waits on a socket in a thread)
_INPUT_CACHE_BYTES = 1 << 30  # decoded images and video files kept in the object store by the driver
_NODE_FILES_BYTES = 8 << 30  # input files kept on each node's disk (those in use are never removed)
_ACTOR_NAME = "pyvision-sandbox:{isolation}:{node_id}"

_Input = tuple[str | None, str, list[ray.ObjectRef]]
"""An input on its way to a node: (digest naming its file there, or None for an in-memory image; file
name; [object ref of the pixels or the file's bytes])."""


def call_deadline(config: SandboxConfig, timeout: float | None = None) -> float:
    """How long the driver waits for one actor call: twice what the node's sandbox itself allows an
    execution (its deadline plus the interrupt grace, after which it kills and replaces the worker),
    plus 10 s for a worker restart and the transfer. A call past it means the node or actor is stuck."""
    limit = config.exec_timeout_s if timeout is None else timeout
    return 2 * (limit + config.interrupt_grace_s) + 10.0


# -- on each node ------------------------------------------------------------------------------------


@ray.remote
class NodeSandbox:
    """One per node: the node's Sandbox (one zygote) and the sessions open on it.

    An async actor: every call awaits a session whose socket wait runs in the sandbox's threads, so the
    actor serves thousands of episodes at once. Errors of the sandbox (a bad video, a closed session)
    propagate to the driver as themselves.
    """

    def __init__(self, isolation: IsolationMode) -> None:
        self._sandbox = Sandbox(isolation)
        self._sessions: dict[int, tuple[Session, list[str]]] = {}
        self._ids = itertools.count(1)
        self._opened = 0
        self._files = _NodeFiles(tempfile.mkdtemp(prefix="pyvision-inputs-"), _NODE_FILES_BYTES)

    async def hello(self) -> dict[str, Any]:
        """Start the zygote (the first episode does not wait for it) and say who this is."""
        isolation = await asyncio.get_running_loop().run_in_executor(_thread_pool(), lambda: self._sandbox.isolation)
        return {"hostname": socket.gethostname(), "pid": os.getpid(), "isolation": isolation,
                "scratch_root": self._sandbox.scratch_root, "inputs_root": self._files.root, **self._load()}

    async def status(self) -> dict[str, Any]:
        return self._load()

    async def open(self, images: list[_Input], video: _Input | None, config: SandboxConfig) -> dict[str, Any]:
        """Open an episode. Inputs with a file key become files of this node (written once, so the
        sandbox's own image cache maps a GRPO group's image once); in-memory images come as arrays."""
        held: list[str] = []
        try:
            inputs = [await self._local(item, held) for item in images]
            path = None if video is None else await self._local(video, held)
            session = await self._sandbox.asession(inputs, path, config)
        except BaseException:
            self._files.release(held)
            raise
        sid = next(self._ids)
        self._sessions[sid] = (session, held)
        self._opened += 1
        return {"sid": sid, "isolation": session.isolation, "video_facts": session.video_facts, **self._load()}

    async def _local(self, item: _Input, held: list[str]) -> Any:
        digest, name, box = item
        if digest is None:
            return await box[0]
        path = await self._files.acquire(digest, name, box[0])
        held.append(digest)
        return path

    async def execute(self, sid: int, code: str, timeout: float) -> ExecutionResult:
        return await self._session(sid).aexecute(code, timeout)

    async def pid(self, sid: int) -> int:
        return self._session(sid).pid

    async def close(self, sid: int) -> None:
        """Close a session (idempotent; the driver does not wait for it)."""
        session, held = self._sessions.pop(sid, (None, []))
        if session is not None:
            await session.aclose()
        self._files.release(held)

    async def shutdown(self) -> None:
        """Close every session and the zygote, and remove the node's scratch and video files."""
        for sid in list(self._sessions):
            await self.close(sid)
        self._sandbox.close()
        self._files.clear()

    def _session(self, sid: int) -> Session:
        try:
            return self._sessions[sid][0]
        except KeyError:
            raise SessionClosedError(f"no open sandbox session {sid} on this node (it was closed)") from None

    def _load(self) -> dict[str, int]:
        return {"sessions": len(self._sessions), "opened": self._opened, "mem_available": _mem_available()}


def _mem_available() -> int:
    """The node's available memory in bytes (MemAvailable), 0 if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class _NodeFile:
    written: asyncio.Future[str]
    users: int = 0
    size: int = 0


class _NodeFiles:
    """The node's copies of the episodes' input files: a video's bytes as they are, an image's decoded
    pixels as a raw PPM (nothing to decode again). Each is fetched and written once per node.

    Unused copies are removed, oldest first, once they hold more than ``capacity`` bytes. Runs on the
    actor's event loop only, so it needs no lock.
    """

    def __init__(self, root: str, capacity: int) -> None:
        self.root = root
        self._capacity = capacity
        self._files: OrderedDict[str, _NodeFile] = OrderedDict()
        self._bytes = 0

    async def acquire(self, digest: str, name: str, ref: ray.ObjectRef) -> str:
        """The local path of the input (written now if it is new here); :meth:`release` it after use."""
        entry = self._files.get(digest)
        if entry is None:
            entry = self._files[digest] = _NodeFile(asyncio.ensure_future(self._write(digest, name, ref)))
        self._files.move_to_end(digest)
        entry.users += 1
        try:
            return await entry.written
        except BaseException:
            entry.users -= 1
            if entry.written.done() and self._files.get(digest) is entry:
                del self._files[digest]  # a failed write is tried again by the next episode
            raise

    async def _write(self, digest: str, name: str, ref: ray.ObjectRef) -> str:
        data: np.ndarray = await ref
        folder = os.path.join(self.root, digest)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name)
        write = (lambda: Image.fromarray(data).save(path, format="PPM")) if data.ndim == 3 else \
            (lambda: data.tofile(path))
        await asyncio.get_running_loop().run_in_executor(_thread_pool(), write)
        self._files[digest].size = data.nbytes
        self._bytes += data.nbytes
        self._evict()
        return path

    def release(self, digests: list[str]) -> None:
        for digest in digests:
            entry = self._files.get(digest)
            if entry is not None:
                entry.users -= 1
        self._evict()

    def _evict(self) -> None:
        for digest, entry in list(self._files.items()):
            if self._bytes <= self._capacity:
                return
            if entry.users == 0 and entry.written.done():
                del self._files[digest]
                self._bytes -= entry.size
                shutil.rmtree(os.path.join(self.root, digest), ignore_errors=True)

    def clear(self) -> None:
        self._files.clear()
        self._bytes = 0
        shutil.rmtree(self.root, ignore_errors=True)


# -- on the driver -----------------------------------------------------------------------------------


@dataclass
class _Actor:
    """The driver's view of one node's actor."""

    handle: Any
    node_id: str
    address: str
    cpus: float
    ready: concurrent.futures.Future
    """The reply to ``hello``: the actor is usable once it is done without error."""
    hello: dict[str, Any] | None = None
    sessions: int = 0
    """Open sessions on the node (all drivers), as last reported plus this driver's changes since."""
    pending: int = 0
    """This driver's opens placed here and not yet answered."""
    mem_available: int = 0
    broken: bool = False

    def describe(self) -> str:
        return f"Ray node {self.node_id} ({self.address})"

    def report(self, load: dict[str, Any]) -> None:
        self.sessions, self.mem_available = load["sessions"], load["mem_available"]


class _Inputs:
    """Input images (decoded pixels) and video files (their bytes) in the object store, kept per file
    (path, mtime, size) so the n episodes of a GRPO group put an input once; in-memory images are put
    each time. Each input travels as :data:`_Input`, the ref nested so that Ray does not fetch it
    for a node that has the file already."""

    def __init__(self, capacity_bytes: int) -> None:
        self._capacity = capacity_bytes
        self._refs: OrderedDict[tuple[Any, ...], tuple[ray.ObjectRef, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def image(self, image: ImageLike) -> _Input:
        if isinstance(image, (str, os.PathLike)):
            key = ("image", *_file_key(image, "image"), socket.gethostname())
            return _digest(key), "image.ppm", [self._cached(key, lambda: to_rgb_array(key[1]))]
        return None, "", [ray.put(to_rgb_array(image))]

    def video(self, video: str | os.PathLike[str]) -> _Input:
        key = ("video", *_file_key(video, "video"), socket.gethostname())
        return _digest(key), os.path.basename(key[1]), [self._cached(key, lambda: np.fromfile(key[1], np.uint8))]

    def _cached(self, key: tuple[Any, ...], load: Any) -> ray.ObjectRef:
        with self._lock:
            if key in self._refs:
                self._refs.move_to_end(key)
                return self._refs[key][0]
        data: np.ndarray = load()
        ref = ray.put(data)
        with self._lock:
            self._refs[key] = (ref, data.nbytes)
            self._bytes += data.nbytes
            while self._bytes > self._capacity and len(self._refs) > 1:
                _, (_, size) = self._refs.popitem(last=False)
                self._bytes -= size
        return ref

    def clear(self) -> None:
        with self._lock:
            self._refs.clear()
            self._bytes = 0


def _digest(key: tuple[Any, ...]) -> str:
    """A name for the file on the nodes: the same input from the same driver host gets the same one."""
    return hashlib.sha256(repr(key).encode()).hexdigest()[:32]


def _file_key(path: str | os.PathLike[str], kind: str) -> tuple[str, int, int]:
    real = os.path.realpath(os.fspath(path))
    try:
        st = os.stat(real)
    except OSError as exc:
        raise MediaError(f"{kind} file not found: {os.fspath(path)!r}") from exc
    if not os.path.isfile(real):
        raise MediaError(f"{kind} file not found: {os.fspath(path)!r}")
    return real, st.st_mtime_ns, st.st_size


class RayBackend:
    """Keeps a :class:`NodeSandbox` on every live node with CPUs and places episodes on them. Thread-safe.

    Most code wants :func:`get_ray_backend` (what ``gym.make(..., sandbox_backend="ray")`` uses), which
    shares one per setting in the process. ``node_resource`` limits the pool to the nodes that offer that
    Ray resource (e.g. CPU-only nodes started with ``--resources='{"pyvision_sandbox": 1}'``).
    """

    def __init__(self, isolation: IsolationMode = "auto", node_resource: str | None = None) -> None:
        _connect()
        self.isolation = isolation
        self.node_resource = node_resource
        self.job_id = ray.get_runtime_context().get_job_id()
        self._actors: dict[str, _Actor] = {}
        self._lock = threading.RLock()
        self._inputs = _Inputs(_INPUT_CACHE_BYTES)
        self._start_errors: dict[str, str] = {}
        self._next_refresh = 0.0
        self.closed = False
        self.refresh(wait=False)

    # -- sessions ----------------------------------------------------------------------------------------

    def session(self, images: Sequence[ImageLike] = (), video: str | os.PathLike[str] | None = None,
                config: SandboxConfig | None = None) -> RaySession:
        """Open an episode on the node with the most free capacity. MediaError names a bad input;
        SandboxError names a node that failed."""
        config = config or SandboxConfig()
        inputs = self._prepare(images, video)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not isinstance(got := self._pick(config, deadline), _Actor):
            concurrent.futures.wait(got, timeout=max(0.0, deadline - time.monotonic()),
                                    return_when=concurrent.futures.FIRST_COMPLETED)
        ref = got.handle.open.remote(*inputs, config)
        limit, reply = call_deadline(config), None
        try:
            reply = ray.get(ref, timeout=limit)
        except Exception as exc:
            raise self._failed(got, exc, "opening an episode", limit) from exc
        finally:
            self._settle(got, reply)
        return RaySession(self, got, reply, config)

    async def asession(self, images: Sequence[ImageLike] = (), video: str | os.PathLike[str] | None = None,
                       config: SandboxConfig | None = None) -> RaySession:
        """:meth:`session` awaiting the node on the event loop (inputs are decoded in a thread)."""
        config = config or SandboxConfig()
        inputs = await asyncio.get_running_loop().run_in_executor(_thread_pool(), self._prepare, images, video)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not isinstance(got := self._pick(config, deadline), _Actor):
            await asyncio.wait([asyncio.wrap_future(f) for f in got], timeout=max(0.0, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
        ref = got.handle.open.remote(*inputs, config)
        limit, reply = call_deadline(config), None
        try:
            reply = await asyncio.wait_for(ref, limit)
        except asyncio.CancelledError:
            _close_when_opened(got, ref)  # the caller gave up; the episode must not stay open on the node
            raise
        except Exception as exc:
            raise self._failed(got, exc, "opening an episode", limit) from exc
        finally:
            self._settle(got, reply)
        return RaySession(self, got, reply, config)

    def node_of(self, session: RaySession) -> str:
        return session.node

    # -- the pool ----------------------------------------------------------------------------------------

    def refresh(self, wait: bool = True) -> None:
        """Start an actor on each live node that has none (it joined, came back, or its actor died) and
        forget the nodes that left; with ``wait``, return once every live node's actor is ready, or
        failed to start three times."""
        for _ in range(3 if wait else 1):
            nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0
                     and (self.node_resource is None or n["Resources"].get(self.node_resource, 0) > 0)}
            with self._lock:
                self._check_open()
                for node_id, actor in list(self._actors.items()):
                    if node_id not in nodes:
                        self._drop(actor)
                for node_id, node in nodes.items():
                    if node_id not in self._actors:
                        self._actors[node_id] = self._start(node)
                self._next_refresh = time.monotonic() + _REFRESH_S
                starting = [a.ready for a in self._actors.values() if a.hello is None]
            if not wait or not starting:
                return
            concurrent.futures.wait(starting, timeout=_START_TIMEOUT_S)
            with self._lock:
                self._greet_started()
                if len(self._actors) == len(nodes):
                    return  # (a start fails when a killed actor's name is not released yet: try again)

    def nodes(self) -> list[dict[str, Any]]:
        """What each ready node's actor reports now: node id, address, hostname, CPUs, open sessions,
        sessions opened so far, available memory, the actor's pid, scratch and input-file folders."""
        with self._lock:
            self._greet_started()
            actors = [a for a in self._actors.values() if a.hello is not None]
        loads = ray.get([a.handle.status.remote() for a in actors], timeout=60)
        return [{"node_id": a.node_id, "address": a.address, "hostname": a.hello["hostname"], "cpus": a.cpus,
                 "pid": a.hello["pid"], "scratch_root": a.hello["scratch_root"],
                 "inputs_root": a.hello["inputs_root"], **load}
                for a, load in zip(actors, loads)]

    def close(self) -> None:
        """Stop every actor of this backend: their sessions, zygotes and files go with them. Idempotent.

        The actors are shared by the job's processes: call it once, when the job's episodes are done.
        """
        with self._lock:
            if self.closed:
                return
            self.closed = True
            actors = list(self._actors.values())
            self._actors.clear()
            for actor in actors:
                actor.broken = True  # sessions still open end with their actor: no call to send
        ray.wait([a.handle.shutdown.remote() for a in actors], num_returns=len(actors), timeout=60)
        for actor in actors:
            ray.kill(actor.handle, no_restart=True)
        self._inputs.clear()

    def _start(self, node: dict[str, Any]) -> _Actor:
        node_id = node["NodeID"]
        handle = NodeSandbox.options(
            name=_ACTOR_NAME.format(isolation=self.isolation, node_id=node_id), get_if_exists=True,
            num_cpus=0, max_concurrency=_ACTOR_CONCURRENCY, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(self.isolation)
        return _Actor(handle, node_id, node["NodeManagerAddress"], float(node["Resources"]["CPU"]),
                      handle.hello.remote().future())

    def _prepare(self, images: Sequence[ImageLike], video: str | os.PathLike[str] | None
                 ) -> tuple[list[_Input], _Input | None]:
        """Look for new or lost nodes when due, and put the inputs in the object store (blocking work)."""
        if time.monotonic() >= self._next_refresh or not self._actors:
            self.refresh(wait=False)
        return ([self._inputs.image(i) for i in images], None if video is None else self._inputs.video(video))

    def _pick(self, config: SandboxConfig, deadline: float) -> _Actor | list[concurrent.futures.Future]:
        """The ready actor with the fewest episodes per CPU (nodes short of memory last), counted as
        pending; or, while none is ready, the starts to wait for."""
        with self._lock:
            self._check_open()
            self._greet_started()
            ready = [a for a in self._actors.values() if a.hello is not None]
            starting = [a for a in self._actors.values() if a.hello is None]
            if not ready and starting and time.monotonic() >= deadline:
                for actor in starting:
                    self._start_errors[actor.node_id] = f"not ready after {_START_TIMEOUT_S:.0f} s"
                    self._drop(actor)
                starting = []
            if not ready and not starting:
                raise SandboxStartError(self._no_node_message())
            if not ready:
                return [a.ready for a in starting]
            need = config.memory_limit_mb << 20
            best = min(ready, key=lambda a: (a.mem_available < need, (a.sessions + a.pending) / a.cpus))
            best.pending += 1
            return best

    def _greet_started(self) -> None:
        """Take the finished starts: each actor is ready, or failed and leaves the pool (the lock is held)."""
        for actor in list(self._actors.values()):
            if actor.hello is not None or not actor.ready.done():
                continue
            try:
                actor.hello = actor.ready.result()
            except Exception as exc:  # it could not start: pyvision missing on the node, the node died...
                self._start_errors[actor.node_id] = _one_line(exc)
                self._drop(actor)
                continue
            actor.report(actor.hello)
            self._start_errors.pop(actor.node_id, None)

    def _settle(self, actor: _Actor, reply: dict[str, Any] | None) -> None:
        with self._lock:
            actor.pending -= 1
            if reply is not None:
                actor.report(reply)

    def _closed_one(self, actor: _Actor) -> None:
        with self._lock:
            actor.sessions = max(0, actor.sessions - 1)

    def _failed(self, actor: _Actor, exc: BaseException, doing: str, limit: float) -> Exception:
        """The error for a failed call; a node that is gone or stuck leaves the pool."""
        cause = getattr(exc, "cause", None)
        if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, PyVisionError):
            return cause  # the node's sandbox refused (a bad video, a closed session): the actor is fine
        if isinstance(exc, ray.exceptions.RayTaskError):
            return SandboxError(f"the sandbox on {actor.describe()} failed while {doing}: {_one_line(cause or exc)}")
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
            what = f"did not answer within {limit:.0f} s while {doing}, so its actor was stopped"
        else:
            what = f"was lost while {doing} ({_one_line(exc)})"
        with self._lock:
            self._drop(actor)
        return SandboxError(f"the sandbox on {actor.describe()} {what}. The episode's interpreter is gone; "
                            "reset() starts a new episode on a live node.")

    def _drop(self, actor: _Actor) -> None:
        """Take the actor out of the pool and kill it if it still runs (the lock is held)."""
        if self._actors.get(actor.node_id) is actor:
            del self._actors[actor.node_id]
        if not actor.broken:
            actor.broken = True
            ray.kill(actor.handle, no_restart=True)
        self._next_refresh = 0.0  # the node may be alive: start a fresh actor there at the next reset

    def _no_node_message(self) -> str:
        where = "with CPUs" + (f" and the resource {self.node_resource!r}" if self.node_resource else "")
        failed = "; ".join(f"{node}: {error}" for node, error in self._start_errors.items())
        return (f"no Ray node {where} can run sandbox sessions" + (f" (actors failed to start: {failed}; is "
                "pyvision installed on every node?)" if failed else " (none is alive)"))

    def _check_open(self) -> None:
        if self.closed:
            raise SandboxError("this RayBackend is closed")


class RaySession:
    """An episode's interpreter on one node; every call goes to that node's actor (the episode is pinned).

    Same interface as the local :class:`~.Session`. If the node fails, each call raises SandboxError
    naming the node: the interpreter's state is gone, start a new episode.
    """

    def __init__(self, backend: RayBackend, actor: _Actor, reply: dict[str, Any], config: SandboxConfig) -> None:
        self.config = config
        self.node: str = actor.node_id
        """The Ray node id of the node the episode runs on."""
        self._backend = backend
        self._actor = actor
        self._sid: int = reply["sid"]
        self._isolation: IsolationReport = reply["isolation"]
        self.video_facts: dict[str, Any] | None = reply["video_facts"]
        self._lost: str | None = None
        self._finalizer = weakref.finalize(self, RaySession._release, backend, actor, self._sid)
        self._finalizer.atexit = False

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def isolation(self) -> IsolationReport:
        self._check_usable()
        return self._isolation

    @property
    def pid(self) -> int:
        """The worker's pid on its node (in the node's PID namespace)."""
        self._check_usable()
        limit = call_deadline(self.config)
        try:
            return ray.get(self._actor.handle.pid.remote(self._sid), timeout=limit)
        except Exception as exc:
            raise self._fail(exc, limit) from exc

    def execute(self, code: str, timeout: float | None = None) -> ExecutionResult:
        """Run ``code`` in the episode's namespace on its node. Never raises for anything the code does;
        raises SandboxError naming the node if the node fails."""
        ref, limit = self._submit(code, timeout)
        try:
            return ray.get(ref, timeout=limit)
        except Exception as exc:
            raise self._fail(exc, limit) from exc

    async def aexecute(self, code: str, timeout: float | None = None) -> ExecutionResult:
        """:meth:`execute` awaiting the result on the event loop."""
        ref, limit = self._submit(code, timeout)
        try:
            return await asyncio.wait_for(ref, limit)
        except Exception as exc:
            raise self._fail(exc, limit) from exc

    def close(self) -> None:
        """End the episode on its node (not waited for: the node kills the worker). Idempotent."""
        self._finalizer()

    async def aclose(self) -> None:
        self.close()

    def _submit(self, code: str, timeout: float | None) -> tuple[ray.ObjectRef, float]:
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        timeout = self.config.exec_timeout_s if timeout is None else float(timeout)
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self._check_usable()
        return self._actor.handle.execute.remote(self._sid, code, timeout), call_deadline(self.config, timeout)

    def _check_usable(self) -> None:
        if self.closed:
            raise SessionClosedError("this sandbox session is closed")
        if self._lost is not None:
            raise SandboxError(self._lost)

    def _fail(self, exc: BaseException, limit: float) -> Exception:
        error = self._backend._failed(self._actor, exc, "running the episode's code", limit)
        if self._actor.broken:
            self._lost = str(error)
        return error

    @staticmethod
    def _release(backend: RayBackend, actor: _Actor, sid: int) -> None:
        if not actor.broken:
            actor.handle.close.remote(sid)
        backend._closed_one(actor)

    def __enter__(self) -> RaySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_when_opened(actor: _Actor, ref: ray.ObjectRef) -> None:
    """Close the session an abandoned open will create, once the node answers."""

    def close(future: concurrent.futures.Future) -> None:
        if not future.cancelled() and future.exception() is None and not actor.broken:
            actor.handle.close.remote(future.result()["sid"])

    ref.future().add_done_callback(close)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:400] + "..."


def _connect() -> None:
    """Join the running cluster (``ray.init(address="auto")``: RAY_ADDRESS, else the local one) unless
    this process is already connected (a Ray worker, or the caller ran ``ray.init``)."""
    if ray.is_initialized():
        return
    try:
        ray.init(address="auto")
    except ConnectionError as exc:
        raise SandboxStartError(
            f"sandbox_backend='ray' joins a running Ray cluster and found none ({_one_line(exc)}). Start one "
            "(`ray start --head`, then `ray start --address=HEAD:6379` on each node) and set RAY_ADDRESS, or "
            "call ray.init() before making the env.") from exc


_backends: dict[tuple[str, str | None], RayBackend] = {}
_backends_lock = threading.Lock()


def get_ray_backend(isolation: IsolationMode = "auto", node_resource: str | None = None) -> RayBackend:
    """The process-wide Ray backend for these settings (a new one after ``close`` or a new Ray session)."""
    _connect()
    with _backends_lock:
        key = (isolation, node_resource)
        backend = _backends.get(key)
        if backend is None or backend.closed or backend.job_id != ray.get_runtime_context().get_job_id():
            backend = _backends[key] = RayBackend(isolation, node_resource)
        return backend


__all__ = ["NodeSandbox", "RayBackend", "RaySession", "call_deadline", "get_ray_backend"]
