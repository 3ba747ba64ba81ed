"""Teardown off the caller's path: a killed worker's exit is awaited, then its cgroup and scratch removed.

``Session.close()`` only sends SIGKILL (through the worker's pidfd: the whole PID namespace dies with its
PID 1) and hands the rest here, so the next ``reset()`` never waits for the kernel to tear a process
tree down. One daemon thread polls the pidfds of every dying worker (a pidfd turns readable when its
process has exited, for non-children too); the zygote reaps the zombies. A worker that has not exited
:data:`KILL_GRACE_S` after its SIGKILL (stuck in uninterruptible I/O) is logged and killed again.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from dataclasses import dataclass

from ._cgroups import EpisodeCgroup

log = logging.getLogger("pyvision_env.sandbox")
KILL_GRACE_S = 5.0
"""A killed worker is gone within this time in all but pathological cases (documented in the README)."""


@dataclass
class _Dying:
    pidfd: int | None
    cgroup: EpisodeCgroup | None
    scratch: str | None
    since: float
    warned: bool = False


class Reaper:
    """Finishes the teardown of killed workers in a background thread (one per host process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[_Dying] = []
        self._idle = threading.Condition(self._lock)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None

    def submit(self, pidfd: int | None, cgroup: EpisodeCgroup | None = None, scratch: str | None = None) -> None:
        """Take ownership of ``pidfd`` (closed here), then remove ``cgroup`` and ``scratch`` once the
        process behind it has exited (at once when ``pidfd`` is None: nothing is running)."""
        with self._lock:
            self._pending.append(_Dying(pidfd, cgroup, scratch, time.monotonic()))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pyvision-reaper", daemon=True)
                self._thread.start()
        os.write(self._wake_w, b"x")

    def drain(self, timeout: float = KILL_GRACE_S + 1.0) -> bool:
        """Wait until everything submitted is torn down; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.05))
        return True

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        registered: set[int] = set()
        while True:
            with self._lock:
                pending = list(self._pending)
            for item in pending:
                if item.pidfd is not None and item.pidfd not in registered:
                    poller.register(item.pidfd, select.POLLIN)
                    registered.add(item.pidfd)
            events = poller.poll(100 if any(i.cgroup or i.scratch for i in pending) else 1000)
            exited = {fd for fd, _ in events if fd != self._wake_r}
            if any(fd == self._wake_r for fd, _ in events):
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            done = []
            now = time.monotonic()
            for item in pending:
                if item.pidfd is not None and item.pidfd not in exited:
                    if now - item.since > KILL_GRACE_S and not item.warned:
                        log.warning("a killed sandbox worker has not exited after %.0f s; killing it again",
                                    KILL_GRACE_S)
                        item.warned = True
                        _kill(item.pidfd)
                    continue
                if item.pidfd is not None:
                    poller.unregister(item.pidfd)
                    registered.discard(item.pidfd)
                    os.close(item.pidfd)
                    item.pidfd = None
                if item.cgroup is not None and not item.cgroup.remove():
                    continue  # the kernel is still emptying it: try again on the next round
                if item.scratch is not None:
                    remove_tree(item.scratch)
                done.append(item)
            if done:
                with self._lock:
                    self._pending = [i for i in self._pending if i not in done]
                    self._idle.notify_all()


def _kill(pidfd: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass


def remove_tree(root: str) -> None:
    """Remove a directory tree of any depth. Never raises, never recurses: ``shutil.rmtree`` recurses on
    the Python stack (a 1,500-deep tree made by the model's code raised RecursionError) and full paths of
    a deep tree pass PATH_MAX, so this walks with directory fds, one level at a time, going back up
    through ``..``. Unreadable directories are made accessible first; symlinks are removed, not followed."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(root, flags)
    except OSError:
        return
    names: list[str] = []  # the path from root to fd, as names
    stuck: set[tuple[int, int]] = set()  # directories that cannot be entered or removed: skipped
    while True:
        child = None
        try:
            entries = list(os.scandir(fd))
        except OSError:
            entries = []
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.name, dir_fd=fd)
                elif (entry.inode(), os.fstat(fd).st_dev) not in stuck:
                    child = entry.name
                    break
            except OSError:
                pass
        if child is not None:
            try:
                os.chmod(child, 0o700, dir_fd=fd, follow_symlinks=False)
            except (OSError, NotImplementedError):
                pass
            try:
                sub = os.open(child, flags, dir_fd=fd)
            except OSError:
                try:
                    stuck.add((os.stat(child, dir_fd=fd, follow_symlinks=False).st_ino, os.fstat(fd).st_dev))
                except OSError:
                    pass  # gone meanwhile: the next scan will not see it
                continue
            os.close(fd)
            fd, names = sub, [*names, child]
            continue
        if not names:
            os.close(fd)
            try:
                os.rmdir(root)
            except OSError:
                pass
            return
        parent = os.open("..", flags, dir_fd=fd)
        st = os.fstat(fd)
        os.close(fd)
        fd, name = parent, names.pop()
        try:
            os.rmdir(name, dir_fd=fd)
        except OSError:
            stuck.add((st.st_ino, st.st_dev))
