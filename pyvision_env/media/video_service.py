"""Host side of the video service: one per :class:`~pyvision_env.sandbox.Sandbox`, started on first use.

Every episode with a video gets, at spawn, one end of a socketpair whose other end the service (see
``_video_server.py``) binds to that video. The worker's ``video_clue_0`` asks for frames on it and gets
sealed memfds back, so within one host process a video is opened and indexed once and each frame is
decoded once for all the episodes that ask for it (a GRPO group, repeated evaluations), and neither
the host nor the worker ever runs a decoder: a corrupt file can only crash the service, which restarts.
"""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

from ..errors import MediaError, SandboxError
from ..sandbox import _wire

_SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_video_server.py")
_START_TIMEOUT_S = 60.0
_REPLY_TIMEOUT_S = 120.0  # the service's own watchdog ends a stalled decoder after 60 s
_FACTS_KEPT = 4096  # file versions whose facts are known (attached without waiting)
# unread replies to attaches nobody waits for, at most: beyond it an attach waits for its reply (and reads
# the others on the way). The service blocks once its replies fill the control socket (~200 small messages).
_MAX_UNANSWERED = 64


class VideoService:
    """Starts the service lazily, attaches episodes to videos, restarts the service if it died. Thread-safe."""

    def __init__(self, cache_mb: int, isolate: bool, log_dir: str) -> None:
        self.cache_mb = cache_mb
        self.isolate = isolate
        self.log_path = os.path.join(log_dir, "video_service.log")
        self._lock = threading.Lock()  # starting, stopping and sending
        self._cond = threading.Condition()  # replies, read by one waiting thread for all of them
        self._replies: dict[int, dict[str, Any]] = {}
        self._waiting: set[int] = set()
        self._known: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()  # file version -> facts
        self._unanswered = 0  # replies to attaches nobody waits for, not read yet
        self._reading = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctrl: socket.socket | None = None
        self._next_id = 0
        self.closed = False
        self.problems: list[str] = []  # isolation the service could not apply

    def attach(self, path: str | os.PathLike[str]) -> tuple[int, dict[str, Any]]:
        """A socket fd bound to the video at ``path`` (for the worker; the caller closes its copy) and the
        video's facts (frames, fps, width, height). MediaError names a missing or unreadable file.

        A version of a file (path, inode, size, mtime, ctime) the service has opened before is attached without
        waiting for its reply (a GRPO group's later episodes, repeated evaluations): the facts are known,
        and the worker's first request simply queues on its socket until the service serves it. Should
        the service fail to open it this time, it closes the socket and the code gets a clear error on
        its first read."""
        path = os.path.abspath(os.fspath(path))
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise MediaError(f"video file not found: {path!r}")
        version = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._cond:
                known = self._known.get(version) if self._unanswered < _MAX_UNANSWERED else None
            if known is not None:
                self._send({"op": "attach", "path": path}, fds=[theirs.fileno()], reply=False)
                self._drain()
                return ours.detach(), dict(known)
            reply = self._call({"op": "attach", "path": path}, fds=[theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        if not reply.get("ok"):
            ours.close()
            raise MediaError(str(reply.get("error") or f"the video service could not open {path!r}"))
        facts = reply.get("facts") or {}
        if not (isinstance(facts.get("frames"), int) and facts["frames"] > 0 and isinstance(facts.get("fps"), float)
                and all(isinstance(facts.get(k), int) and facts[k] > 0 for k in ("width", "height"))):
            ours.close()
            raise SandboxError(f"the video service sent malformed facts for {path!r}: {facts!r}")
        with self._cond:
            self._known[version] = dict(facts)
            while len(self._known) > _FACTS_KEPT:
                self._known.popitem(last=False)
        return ours.detach(), facts

    def stats(self) -> dict[str, Any]:
        """Counters of the running service: videos indexed, frames decoded, cache size, restarts, pid."""
        reply = self._call({"op": "stats"})
        return {k: v for k, v in reply.items() if k not in ("op", "id", "ok", "buffers")}

    def _call(self, header: dict[str, Any], fds: list[int] = ()) -> dict[str, Any]:
        return self._await(self._send(header, fds))

    def _send(self, header: dict[str, Any], fds: list[int] = (), reply: bool = True) -> int:
        """Send a request (restarting the service once if it died); returns its id. With ``reply=False``
        nobody waits for the answer: whoever reads the control socket next drops it."""
        with self._lock:
            if self.closed:
                raise SandboxError("this Sandbox is closed; its video service is stopped")
            for attempt in (1, 2):
                self._ensure_started()
                self._next_id += 1
                rid = self._next_id
                try:
                    if reply:
                        with self._cond:
                            self._waiting.add(rid)
                    _wire.send(self._ctrl, dict(header, id=rid), fds=fds)
                    if not reply:
                        with self._cond:
                            self._unanswered += 1
                    return rid
                except OSError:
                    with self._cond:
                        self._waiting.discard(rid)
                    self._stop()
                    if attempt == 2:
                        raise SandboxError(f"the video service died at once twice; see {self.log_path}") from None
        raise AssertionError("unreachable")

    def _drain(self) -> None:
        """Read the replies already there, unless a waiting caller is reading: replies nobody waits for
        must not pile up in the control socket until the service blocks on it."""
        with self._cond:
            if self._reading or self._ctrl is None:
                return
            self._reading = True
            ctrl = self._ctrl
        try:
            while (msg := self._read(ctrl, timeout=0)) is not None:
                with self._cond:
                    self._file(msg)
        finally:
            with self._cond:
                self._reading = False
                self._cond.notify_all()

    def _await(self, rid: int) -> dict[str, Any]:
        """The reply to ``rid``. Whichever caller is waiting reads the control socket for everyone."""
        deadline = time.monotonic() + _REPLY_TIMEOUT_S
        with self._cond:
            while rid not in self._replies:
                if time.monotonic() > deadline:
                    self._waiting.discard(rid)
                    raise SandboxError(f"the video service did not answer in {_REPLY_TIMEOUT_S:.0f} s; "
                                       f"see {self.log_path}")
                if self._reading:
                    self._cond.wait(0.5)
                    continue
                self._reading = True
                ctrl = self._ctrl
                self._cond.release()
                try:
                    msg = self._read(ctrl)
                finally:
                    self._cond.acquire()
                    self._reading = False
                    self._cond.notify_all()
                if msg is not None:
                    self._file(msg)
            self._waiting.discard(rid)
            return self._replies.pop(rid)

    def _file(self, msg: dict[str, Any]) -> None:
        """Keep a reply for its waiting caller, or count an unawaited one as read (``_cond`` held)."""
        if msg["id"] in self._waiting:
            self._replies[msg["id"]] = msg
        else:
            self._unanswered = max(0, self._unanswered - 1)

    def _read(self, ctrl: socket.socket | None, timeout: float = 0.5) -> dict[str, Any] | None:
        """One reply, or None after ``timeout`` s without one. If the service died, every request waiting is
        answered with an error here (it restarts on the next call)."""
        try:
            if ctrl is None:
                raise OSError("not running")
            ready, _, _ = select.select([ctrl], [], [], timeout)
            if not ready:
                return None
            msg = _wire.recv(ctrl, 1 << 20, 0).header
            if not isinstance(msg.get("id"), int):
                raise _wire.ProtocolError("a reply without an id")
            return msg
        except (OSError, EOFError, _wire.ProtocolError) as exc:
            with self._lock:
                if ctrl is self._ctrl:
                    self._stop()
            error = f"the video service died ({exc!r}); see {self.log_path}"
            with self._cond:
                for rid in self._waiting:
                    self._replies.setdefault(rid, {"id": rid, "ok": False, "error": error})
            return None

    def _ensure_started(self) -> None:
        if self._proc is not None and self._proc.poll() is None and self._ctrl is not None:
            return
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "PYTHONPATH": os.pathsep.join(os.path.abspath(p or os.curdir) for p in sys.path),
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        options = json.dumps({"cache_mb": self.cache_mb, "isolate": self.isolate})
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen([sys.executable, _SERVER_SCRIPT, str(theirs.fileno()), options],
                                          pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=log, start_new_session=True)
        theirs.close()
        ours.settimeout(_START_TIMEOUT_S)
        try:
            ready = _wire.recv(ours, 1 << 20, 0).header
        except (OSError, EOFError, _wire.ProtocolError) as exc:
            ours.close()
            self._stop()
            raise SandboxError(f"the video service did not start ({exc!r}); see {self.log_path}") from exc
        ours.settimeout(None)
        self._ctrl = ours
        self.problems = ready.get("problems", [])

    def _stop(self) -> None:
        _wire.stop_helper(self._ctrl, self._proc)  # EOF: it kills what it started and exits
        self._ctrl = self._proc = None
        with self._cond:
            self._unanswered = 0  # a stopped service sends nothing more

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._stop()
