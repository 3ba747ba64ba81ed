"""Per-episode resource accounting: one cgroup per episode for memory, PIDs and CPU, made by the host.

RLIMIT_AS and RLIMIT_FSIZE count per process and per file, so memfds, files in the scratch tmpfs and
child processes could add up to many times ``memory_limit_mb``. A memory cgroup charges all of them (page
cache, tmpfs and memfd pages included) to the episode, ``pids.max`` bounds its processes, and where the
``cpu`` controller is available a quota bounds the CPU its processes (background children included) take
from other episodes.

Episode cgroups are always made *below* the host process's own cgroup (read from ``/proc/self/cgroup``),
never beside or above it, so the host's own accounting stays intact:

- cgroup v1 (``memory`` and ``pids`` hierarchies, as on the development machine): ``<own>/pyvision-<pid>-<n>/
  ep-<k>`` in each hierarchy, when they are writable (root, or a delegated subtree);
- cgroup v2 (most users' machines, with systemd delegation): the same layout in the unified hierarchy. v2
  allows controllers below a cgroup only when it holds no processes itself, so where our own cgroup holds
  just this process, the process moves into a leaf ``<own>/pyvision-<pid>-<n>/host`` first (what nsjail
  does); where other processes share it, there is no accounting and the report says why.

Where no cgroup can be made, :attr:`Cgroups.problem` says why and the sandbox falls back to the rlimits.
"""

from __future__ import annotations

import itertools
import logging
import os

log = logging.getLogger("pyvision_env.sandbox")
_counter = itertools.count()
_CPU_PERIOD_US = 100_000
_CONTROLLERS = ("memory", "pids")
_OPTIONAL = ("cpu",)  # used where present: a CPU quota keeps one episode's processes from starving the rest


class EpisodeCgroup:
    """The cgroup(s) of one episode: one directory per v1 hierarchy, or one in v2."""

    def __init__(self, dirs: list[str], kind: str) -> None:
        self.dirs = dirs
        self.kind = kind

    def add(self, pid: int) -> None:
        """Move ``pid`` (the worker, before it runs any code) into the episode's cgroup(s)."""
        for d in self.dirs:
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def open_for_self_join(self) -> list[int]:
        """v1: write-only descriptors of the cgroups' ``tasks`` files, for the worker to join them itself
        by writing ``0`` (see :func:`join_self`); empty on v2, where the host moves the worker.

        Why: a write of a pid to ``cgroup.procs`` takes the kernel's global threadgroup lock for writing,
        which waits for an RCU grace period whenever it has been idle (0.3 ms or ~11 ms here, half and
        half); a thread moving itself through ``tasks`` skips that lock (0.05-0.1 ms)."""
        if self.kind != "v1":
            return []
        fds: list[int] = []
        try:
            for d in self.dirs:
                fds.append(os.open(os.path.join(d, "tasks"), os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            return []
        return fds

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this episode for exceeding its memory limit."""
        name = "memory.oom_control" if self.kind == "v1" else "memory.events"
        for d in self.dirs:
            try:
                with open(os.path.join(d, name)) as f:
                    for line in f:
                        key, _, value = line.partition(" ")
                        if key == "oom_kill" and int(value) > 0:
                            return True
            except (OSError, ValueError):
                pass
        return False

    def remove(self) -> bool:
        """Remove the (empty) cgroup directories; False while a process is still inside."""
        left = []
        for d in self.dirs:
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(d)
        self.dirs = left
        return not left


class Cgroups:
    """The host's cgroup parent for its episodes, detected once per :class:`Sandbox`."""

    def __init__(self) -> None:
        self.kind: str | None = None
        """``v1``, ``v2``, or None when no episode cgroup can be made (see :attr:`problem`)."""
        self.problem: str | None = None
        self._parents: list[str] = []
        try:
            self._setup()
        except OSError as exc:
            self.kind, self._parents = None, []
            self.problem = f"cannot create cgroups below this process's own ({exc})"
        if self.kind is None and self.problem:
            log.info("no per-episode cgroups: %s", self.problem)

    def _setup(self) -> None:
        own = _own_cgroups()
        mounts = _cgroup_mounts()
        tag = f"pyvision-{os.getpid()}-{next(_counter)}"
        v1 = [(mounts.get(c), own.get(c)) for c in _CONTROLLERS]
        if all(m is not None and p is not None for m, p in v1):
            v1 += [(mounts[c], own[c]) for c in _OPTIONAL if c in mounts and c in own]
            bases = [os.path.join(m, p.lstrip("/")) for m, p in v1]
            for base in bases:
                _remove_stale(base)
            self._parents = [os.path.join(base, tag) for base in bases]
            for parent in self._parents:
                os.mkdir(parent)
            self.kind = "v1"
            return
        if "" in mounts and "" in own:
            base = os.path.join(mounts[""], own[""].lstrip("/"))
            with open(os.path.join(base, "cgroup.controllers")) as f:
                available = set(f.read().split())
            if not set(_CONTROLLERS) <= available:
                self.problem = f"cgroup v2 at {base} does not delegate {'/'.join(_CONTROLLERS)} to this user"
                return
            _remove_stale(base)
            parent = os.path.join(base, tag)
            os.mkdir(parent)
            wanted = [*_CONTROLLERS, *(c for c in _OPTIONAL if c in available)]
            try:
                _enable_controllers(base, parent, wanted)
                _enable_controllers(parent, None, wanted)
            except OSError as exc:
                if not os.listdir(parent):
                    os.rmdir(parent)
                self.problem = (f"cgroup v2: cannot enable {'/'.join(_CONTROLLERS)} below {base} ({exc}); run in a "
                                "cgroup of its own, e.g. `systemd-run --user --scope -p Delegate=yes ...`")
                return
            self._parents = [parent]
            self.kind = "v2"
            return
        self.problem = "no writable memory and pids cgroup controllers (cgroup v1 or v2) for this process"

    def create(self, memory_bytes: int, max_pids: int, cpu_cores: float) -> EpisodeCgroup | None:
        """A new episode cgroup with its limits; None when cgroups are unavailable (or creation failed)."""
        if self.kind is None:
            return None
        name = f"ep-{next(_counter)}"
        dirs = [os.path.join(parent, name) for parent in self._parents]
        made: list[str] = []
        try:
            for d in dirs:
                os.mkdir(d)
                made.append(d)
                if self.kind == "v1":
                    if os.path.exists(os.path.join(d, "memory.limit_in_bytes")):
                        _write(os.path.join(d, "memory.limit_in_bytes"), str(memory_bytes))
                        if os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes")):
                            _write(os.path.join(d, "memory.memsw.limit_in_bytes"), str(memory_bytes))
                    if os.path.exists(os.path.join(d, "pids.max")):
                        _write(os.path.join(d, "pids.max"), str(max_pids))
                    if os.path.exists(os.path.join(d, "cpu.cfs_quota_us")):
                        _write(os.path.join(d, "cpu.cfs_period_us"), str(_CPU_PERIOD_US))
                        _write(os.path.join(d, "cpu.cfs_quota_us"), str(int(cpu_cores * _CPU_PERIOD_US)))
                else:
                    _write(os.path.join(d, "memory.max"), str(memory_bytes))
                    if os.path.exists(os.path.join(d, "memory.swap.max")):
                        _write(os.path.join(d, "memory.swap.max"), "0")
                    _write(os.path.join(d, "pids.max"), str(max_pids))
                    if os.path.exists(os.path.join(d, "cpu.max")):
                        _write(os.path.join(d, "cpu.max"), f"{int(cpu_cores * _CPU_PERIOD_US)} {_CPU_PERIOD_US}")
        except OSError as exc:
            log.warning("could not create an episode cgroup (%s); this episode runs without one", exc)
            EpisodeCgroup(made, self.kind).remove()
            return None
        return EpisodeCgroup(dirs, self.kind)

    def close(self) -> None:
        """Remove the parent directories (their episode cgroups must be gone already)."""
        for parent in self._parents:
            host_leaf = os.path.join(parent, "host")
            if os.path.isdir(host_leaf):
                continue  # this process lives there (v2): the directory goes when it exits
            try:
                os.rmdir(parent)
            except OSError:
                pass
        self._parents = []


def _enable_controllers(cgroup: str, move_self_to: str | None, controllers: list[str]) -> None:
    control = os.path.join(cgroup, "cgroup.subtree_control")
    want = " ".join(f"+{c}" for c in controllers)
    try:
        _write(control, want)
    except OSError as exc:
        if exc.errno != 16 or move_self_to is None:  # EBUSY: the cgroup holds processes
            raise
        with open(os.path.join(cgroup, "cgroup.procs")) as f:
            others = [p for p in f.read().split() if int(p) != os.getpid()]
        if others:
            raise OSError(exc.errno, f"{cgroup} also holds processes {', '.join(others[:5])}") from exc
        leaf = os.path.join(move_self_to, "host")
        os.mkdir(leaf)
        _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
        _write(control, want)


def join_self(task_fds: list[int]) -> None:
    """In a single-threaded worker: move itself into the cgroups behind ``task_fds`` (from
    :meth:`EpisodeCgroup.open_for_self_join`, opened by the host, whose credentials the kernel checks),
    then close them, before any of the episode's code can run."""
    try:
        for fd in task_fds:
            os.write(fd, b"0")
    finally:
        for fd in task_fds:
            os.close(fd)


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _own_cgroups() -> dict[str, str]:
    """Controller name ('' for the v2 unified hierarchy) -> this process's cgroup path in it."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                own[name] = path
    return own


def _cgroup_mounts() -> dict[str, str]:
    """Controller name ('' for cgroup2) -> where its hierarchy is mounted."""
    mounts: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3].split(",")
            point = fields[4].encode().decode("unicode_escape")
            if fstype == "cgroup2":
                mounts.setdefault("", point)
            elif fstype == "cgroup":
                for name in (*_CONTROLLERS, *_OPTIONAL):
                    if name in options:
                        mounts.setdefault(name, point)
    return mounts


def _remove_stale(base: str) -> None:
    """Remove empty ``pyvision-<pid>-*`` cgroups left by host processes that died without cleaning up."""
    try:
        entries = os.listdir(base)
    except OSError:
        return
    for name in entries:
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != "pyvision" or not parts[1].isdigit():
            continue
        if int(parts[1]) == os.getpid() or os.path.exists(f"/proc/{parts[1]}"):
            continue
        parent = os.path.join(base, name)
        for child in os.listdir(parent):
            if os.path.isdir(os.path.join(parent, child)):
                try:
                    os.rmdir(os.path.join(parent, child))
                except OSError:
                    pass
        try:
            os.rmdir(parent)
        except OSError:
            pass
