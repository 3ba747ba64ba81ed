"""The video service: decodes frames for every episode of one host process, outside the host.

Started by :class:`~pyvision_env.media.video_service.VideoService` as a script
(``python _video_server.py CONTROL_FD OPTIONS_JSON``), like the sandbox's zygote, so that it can enter
its own user + network namespace before anything starts a thread. It runs as two processes:

* the supervisor talks to the host, keeps a duplicate of every episode's connection and forks the
  decoder. It never opens a video, so a decoder that crashes on a corrupt file cannot take it down;
* the decoder indexes videos, decodes frames into sealed memfds kept in one LRU cache (bounded in
  bytes, keyed by the file's identity: path, device, inode, size, mtime) and serves each episode's
  connection in a thread of its own. When it dies, the supervisor forks a new one that inherits every
  connection; a worker waiting for a reply then gets ``{"op": "restarted"}`` and asks again.

Messages (``sandbox/_wire.py``: a JSON header, raw buffers, fds as SCM_RIGHTS):

    host -> supervisor     {"op": "attach", "id", "path"} + the service's end of the episode's socket
                           {"op": "stats", "id"}
    supervisor -> host     {"op": "attached", "id", "ok", "facts" | "error"}; {"op": "stats", "id", ...}
    worker -> decoder      {"op": "frames", "id", "indices"} (sorted, unique, in range, at most 64)
                           {"op": "index", "id"}
    decoder -> worker      {"id", "ok": true} + one sealed memfd per frame (H*W*3 bytes, RGB)
                           {"id", "ok": true} + buffers: timestamps (float64, N x 2), keyframes (int64)
                           {"id", "ok": false, "error"}; {"op": "restarted"}
    decoder -> supervisor  the host's replies, and {"op": "closed", "id"} when an episode's worker is gone

A worker can only name frames: its connection is bound to one video when the host attaches it.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import resource
import select
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any

_MAX_REQUEST = 64 * 1024
_MAX_INDEXED = 512  # videos whose index is kept (~100 kB each for 2 minutes at 30 fps)
_MAX_OPEN_PER_CPU = 2  # decoders kept open (each holds the file, its codec threads and ~10 MB)
_STALL_S = 60.0  # a decoder that makes no progress for this long is hung on a hostile file: exit


def _load_isolation():  # by path: importing the package before unshare would start threads
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sandbox", "_isolation.py")
    spec = importlib.util.spec_from_file_location("_pyvision_isolation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ctrl_fd, options = int(sys.argv[1]), json.loads(sys.argv[2])
    problems: list[str] = []
    iso = _load_isolation() if options["isolate"] else None
    if iso is not None:
        try:
            iso.enter_user_namespace(iso.CLONE_NEWNET)
        except OSError as exc:
            problems.append(f"no user/network namespace for the video service ({exc})")
    import av  # noqa: F401 - warm imports, inherited by every decoder the supervisor forks
    import numpy  # noqa: F401

    from pyvision_env.media import _decoder  # noqa: F401
    from pyvision_env.sandbox import _wire

    ctrl = socket.socket(fileno=ctrl_fd)
    if iso is not None and iso.landlock_abi():
        iso.landlock_restrict([], iso.landlock_abi(), handle_reads=False)  # reads only, from here on
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the cache holds one fd per frame
    _wire.send(ctrl, {"op": "ready", "problems": problems})
    _Supervisor(ctrl, options, problems).run()


class _Supervisor:
    def __init__(self, host: socket.socket, options: dict[str, Any], problems: list[str]) -> None:
        self.host = host
        self.options = options
        self.problems = problems
        self.conns: dict[int, tuple[int, str]] = {}  # episode id -> (our duplicate of its socket, path)
        self.pending: dict[int, dict[str, Any]] = {}  # requests the decoder has not answered yet
        self.retried: set[int] = set()  # attaches already sent to a decoder that died
        self.restarts = 0

    def run(self) -> None:
        from pyvision_env.sandbox import _wire

        self._fork_decoder()
        while True:
            readable, _, _ = select.select([self.host, self.decoder], [], [])
            if self.host in readable:
                try:
                    msg = _wire.recv(self.host, 1 << 20, 0, max_fds=1)
                except (EOFError, OSError, _wire.ProtocolError):
                    break  # the host is gone
                self._from_host(msg)
            if self.decoder in readable:
                try:
                    msg = _wire.recv(self.decoder, 1 << 20, 0)
                except (EOFError, OSError, _wire.ProtocolError):
                    self._decoder_died()
                    continue
                self._from_decoder(msg)
        os.kill(self.decoder_pid, signal.SIGKILL)
        os._exit(0)

    def _fork_decoder(self) -> None:
        """Start a decoder that serves every attached episode (after a crash, it tells each one)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                self.host.close()
                ours.close()
                attached = {cid: conn for cid, conn in self.conns.items() if cid not in self.pending}
                _DecodeServer(theirs, self.options).run(attached)
            finally:
                os._exit(1)
        theirs.close()
        self.decoder, self.decoder_pid = ours, pid

    def _from_host(self, msg) -> None:
        h = msg.header
        if h.get("op") == "attach" and len(msg.fds) == 1:
            self.conns[h["id"]] = (msg.fds[0], h["path"])
            self.pending[h["id"]] = h
            self._to_decoder(h, msg.fds)
        elif h.get("op") == "stats":
            self.pending[h["id"]] = h
            self._to_decoder(h)
        else:
            for fd in msg.fds:
                os.close(fd)

    def _to_decoder(self, header: dict[str, Any], fds: list[int] = ()) -> None:
        from pyvision_env.sandbox import _wire

        try:
            _wire.send(self.decoder, header, fds=fds)
        except OSError:
            pass  # it died: select() reports EOF next and _decoder_died answers for it

    def _from_decoder(self, msg) -> None:
        from pyvision_env.sandbox import _wire

        h = msg.header
        if h.get("op") == "closed":
            fd, _ = self.conns.pop(h["id"], (None, None))
            if fd is not None:
                os.close(fd)
            return
        self.pending.pop(h.get("id"), None)
        self.retried.discard(h.get("id"))
        if h.get("op") == "attached" and not h.get("ok"):
            fd, _ = self.conns.pop(h["id"], (None, None))
            if fd is not None:
                os.close(fd)
        if h.get("op") == "stats":
            h = dict(h, restarts=self.restarts, problems=self.problems, decoder_pid=self.decoder_pid)
        _wire.send(self.host, h)

    def _decoder_died(self) -> None:
        """Fork a new decoder. Attaches the dead one had not answered go to the new one, once: an attach
        that was pending at two crashes in a row is taken for their cause and fails."""
        from pyvision_env.sandbox import _wire

        self.decoder.close()
        _, status = os.waitpid(self.decoder_pid, 0)
        print(f"video decoder {self.decoder_pid} died (wait status {status}); restarting it", flush=True)
        for rid, request in list(self.pending.items()):
            if request["op"] == "attach" and rid not in self.retried:
                self.retried.add(rid)
                continue
            del self.pending[rid]
            self.retried.discard(rid)
            if request["op"] == "attach":
                os.close(self.conns.pop(rid)[0])
                _wire.send(self.host, {"op": "attached", "id": rid, "ok": False,
                                       "error": f"the video decoder crashed twice while opening {request['path']!r}"})
            else:
                _wire.send(self.host, {"op": request["op"], "id": rid, "ok": False})
        self.restarts += 1
        if time.monotonic() - self.started < 1.0:
            time.sleep(0.5)  # crashing at once again and again: do not spin
        self._fork_decoder()
        for rid, request in self.pending.items():
            self._to_decoder(request, [self.conns[rid][0]])


class _FrameCache:
    """Decoded frames as sealed memfds, LRU, bounded in bytes and in fds. Thread-safe."""

    def __init__(self, capacity_bytes: int, max_entries: int) -> None:
        self.capacity = capacity_bytes
        self.max_entries = max_entries
        self.bytes = 0
        self._entries: OrderedDict[tuple[Any, int], tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, indices: list[int]) -> dict[int, int]:
        """Duplicates (the caller closes them) of the cached frames among ``indices``."""
        found = {}
        with self._lock:
            for i in indices:
                entry = self._entries.get((key, i))
                if entry is not None:
                    self._entries.move_to_end((key, i))
                    found[i] = os.dup(entry[0])
        return found

    def put(self, key: Any, i: int, fd: int, nbytes: int) -> None:
        with self._lock:
            self._entries[(key, i)] = (fd, nbytes)
            self.bytes += nbytes
            while self._entries and (self.bytes > self.capacity or len(self._entries) > self.max_entries):
                _, (old_fd, old_bytes) = self._entries.popitem(last=False)
                os.close(old_fd)
                self.bytes -= old_bytes

    def drop(self, key: Any) -> None:
        """Forget every frame of one version of a file (it changed on disk)."""
        with self._lock:
            for k in [k for k in self._entries if k[0] == key]:
                fd, nbytes = self._entries.pop(k)
                os.close(fd)
                self.bytes -= nbytes

    def __len__(self) -> int:
        return len(self._entries)


class _Video:
    def __init__(self, key: tuple, decoder) -> None:
        self.key = key
        self.decoder = decoder
        self.lock = threading.Lock()  # one decode at a time; a second episode then finds its frames cached


class _DecodeServer:
    def __init__(self, ctrl: socket.socket, options: dict[str, Any]) -> None:
        self.ctrl = ctrl
        self._send_lock = threading.Lock()
        self.videos: OrderedDict[str, _Video] = OrderedDict()  # by path: the latest version of each file
        self._open_decoders: OrderedDict[tuple, _Video] = OrderedDict()
        self._videos_lock = threading.Lock()
        self._opening = [threading.Lock() for _ in range(64)]  # indexing a path: by hash(path)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.cache = _FrameCache(options["cache_mb"] << 20, max(nofile // 2, 64))
        cpus = len(os.sched_getaffinity(0))
        self._decoding = threading.BoundedSemaphore(cpus)
        self._max_open = _MAX_OPEN_PER_CPU * cpus
        self._busy: dict[int, float] = {}  # thread -> last progress, for the stall watchdog
        self.indexed = self.decoded = 0

    def run(self, inherited: dict[int, tuple[int, str]]) -> None:
        from pyvision_env.sandbox import _wire

        threading.Thread(target=self._watchdog, daemon=True).start()
        for cid, (fd, path) in inherited.items():
            self._start(cid, path, os.dup(fd), restarted=True)
        for fd, _ in inherited.values():
            os.close(fd)
        while True:
            try:
                msg = _wire.recv(self.ctrl, 1 << 20, 0, max_fds=1)
            except (EOFError, OSError, _wire.ProtocolError):
                os._exit(0)  # the supervisor is gone
            h = msg.header
            if h.get("op") == "attach" and len(msg.fds) == 1:
                self._start(h["id"], h["path"], msg.fds[0], restarted=False)
            elif h.get("op") == "stats":
                self._send_ctrl({"op": "stats", "id": h["id"], "ok": True, "videos_indexed": self.indexed,
                                 "frames_decoded": self.decoded, "cache_entries": len(self.cache),
                                 "cache_bytes": self.cache.bytes, "cache_capacity": self.cache.capacity,
                                 "open_decoders": len(self._open_decoders), "max_open_decoders": self._max_open})

    def _start(self, cid: int, path: str, fd: int, restarted: bool) -> None:
        threading.Thread(target=self._serve, args=(cid, path, fd, restarted), daemon=True).start()

    def _send_ctrl(self, header: dict[str, Any]) -> None:
        from pyvision_env.sandbox import _wire

        with self._send_lock:
            _wire.send(self.ctrl, header)

    # -- one episode's connection ---------------------------------------------------------------

    def _serve(self, cid: int, path: str, fd: int, restarted: bool) -> None:
        from pyvision_env.errors import MediaError
        from pyvision_env.sandbox import _wire

        sock = socket.socket(fileno=fd)
        try:
            try:
                video, error = self._open(path), None
            except MediaError as exc:
                video, error = None, str(exc)
            if restarted:
                _wire.send(sock, {"op": "restarted"})
            else:
                info = video.decoder.info if video else None
                self._send_ctrl({"op": "attached", "id": cid, "ok": video is not None, "error": error,
                                 "facts": info and {"frames": info.frames, "fps": info.fps,
                                                    "width": info.width, "height": info.height}})
                if video is None:
                    return
            while True:
                request = _wire.recv(sock, _MAX_REQUEST, 0).header  # fds a worker sends are dropped unread
                reply, buffers, fds = self._answer(video, error, request)
                try:
                    _wire.send(sock, reply, buffers, fds=fds)
                finally:
                    for f in fds:
                        os.close(f)
        except (EOFError, OSError, _wire.ProtocolError):
            pass  # the worker is gone, or sent garbage: drop its connection
        finally:
            sock.close()
            self._send_ctrl({"op": "closed", "id": cid})

    def _answer(self, video: _Video | None, error: str | None, request: dict[str, Any]):
        from pyvision_env.errors import MediaError

        rid = request.get("id")
        if not isinstance(rid, int):
            raise OSError("a request without an integer id")
        try:
            if video is None:
                raise MediaError(error)
            op = request.get("op")
            if op == "frames":
                return {"id": rid, "ok": True}, [], self._frames(video, self._check(video, request.get("indices")))
            if op == "index":
                import numpy as np

                keys = np.array(video.decoder.key_indices, np.int64)
                return {"id": rid, "ok": True}, [video.decoder.timestamps.tobytes(), keys.tobytes()], []
            raise MediaError(f"unknown request {op!r}")
        except MediaError as exc:
            return {"id": rid, "ok": False, "error": str(exc)}, [], []

    @staticmethod
    def _check(video: _Video, indices: Any) -> list[int]:
        from pyvision_env.errors import MediaError
        from pyvision_env.media.video import MAX_FRAMES_PER_REQUEST

        n = video.decoder.info.frames
        if (not isinstance(indices, list) or not 0 < len(indices) <= MAX_FRAMES_PER_REQUEST
                or not all(type(i) is int and 0 <= i < n for i in indices)
                or any(a >= b for a, b in zip(indices, indices[1:]))):
            raise MediaError(f"a frames request needs 1 to {MAX_FRAMES_PER_REQUEST} sorted, unique indices "
                             f"in [0, {n})")
        return indices

    # -- videos and frames ----------------------------------------------------------------------

    def _open(self, path: str) -> _Video:
        """The indexed video at ``path`` as it is on disk now (indexed once per version of the file)."""
        from pyvision_env.errors import MediaError
        from pyvision_env.media._decoder import Decoder

        try:
            st = os.stat(path)
        except OSError as exc:
            raise MediaError(f"video file not found: {path!r} ({exc.strerror})") from None
        key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        # episodes resetting on one new video wait for a single indexing pass
        with self._opening[hash(path) % len(self._opening)]:
            with self._videos_lock:
                video = self.videos.get(path)
                if video is not None and video.key == key:
                    self.videos.move_to_end(path)
                    return video
            with self._watch():
                decoder = Decoder(path)
            self.indexed += 1
            with self._videos_lock:
                old = self.videos.pop(path, None)
                self.videos[path] = video = _Video(key, decoder)
                while len(self.videos) > _MAX_INDEXED:
                    self.videos.popitem(last=False)  # live episodes keep theirs
            if old is not None:
                self.cache.drop(old.key)  # the file changed: its old frames must never be served
            with video.lock:
                self._opened(video)
            return video

    def _opened(self, video: _Video) -> None:
        """Note that ``video``'s decoder is open (its lock held) and close the least recently used ones
        beyond the cap, skipping any that is decoding now."""
        with self._videos_lock:
            self._open_decoders[video.key] = video
            self._open_decoders.move_to_end(video.key)
            excess = list(self._open_decoders.values())[:-self._max_open]
        for old in excess:
            if old.lock.acquire(blocking=False):
                try:
                    old.decoder.close()
                    with self._videos_lock:
                        self._open_decoders.pop(old.key, None)
                finally:
                    old.lock.release()

    def _frames(self, video: _Video, indices: list[int]) -> list[int]:
        """Fresh fds (the caller closes them) of the frames at ``indices``, decoded at most once."""
        fds = self.cache.get(video.key, indices)
        try:
            if len(fds) < len(indices):
                with video.lock:
                    fds.update(self.cache.get(video.key, [i for i in indices if i not in fds]))
                    missing = [i for i in indices if i not in fds]
                    if missing:
                        with self._decoding, self._watch():
                            for i, rgb in video.decoder.decode(missing):
                                fd = _sealed_memfd(rgb)
                                fds[i] = os.dup(fd)
                                self.cache.put(video.key, i, fd, rgb.nbytes)
                                self.decoded += 1
                                self._busy[threading.get_ident()] = time.monotonic()
                        self._opened(video)
            return [fds[i] for i in indices]
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise

    @contextmanager
    def _watch(self):
        me = threading.get_ident()
        self._busy[me] = time.monotonic()
        try:
            yield
        finally:
            self._busy.pop(me, None)

    def _watchdog(self) -> None:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            if any(now - t > _STALL_S for t in list(self._busy.values())):
                print(f"video decoder stalled for {_STALL_S:.0f} s (a hostile or broken file?): exiting",
                      flush=True)
                os._exit(3)


def _sealed_memfd(pixels) -> int:
    """``pixels``' bytes in a memfd sealed against any write, grow or shrink: immutable even to a hostile
    worker that maps it."""
    data = memoryview(pixels).cast("B")
    fd = os.memfd_create("pyvision-frame", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        written = 0
        while written < len(data):
            written += os.pwrite(fd, data[written:], written)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd


if __name__ == "__main__":
    main()
