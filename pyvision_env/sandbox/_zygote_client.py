"""Host side of the zygote: start it lazily, restart it if it died, ask it to fork workers."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from typing import Any, Literal

from ..errors import SandboxError, SandboxStartError
from . import _wire
from ._cgroups import Cgroups
from .results import IsolationReport

log = logging.getLogger("pyvision_env.sandbox")

IsolationMode = Literal["auto", "strict", "none"]
_ZYGOTE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_zygote.py")
_READY_TIMEOUT_S = 180.0  # the first start may build matplotlib's font cache


class IsolationWarning(UserWarning):
    """The sandbox runs with part of its isolation missing on this machine."""


class ZygoteClient:
    """One zygote process and its control socket. Thread-safe: requests are serialised by a lock."""

    def __init__(self, mode: IsolationMode, use_namespaces: bool, scratch_root: str,
                 cgroups: Cgroups | None) -> None:
        self.mode = mode
        self.use_namespaces = use_namespaces
        self.cgroups = cgroups
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctrl: socket.socket | None = None
        self.plan: dict[str, Any] = {}
        self.scratch_root = scratch_root  # the zygote's log lives here
        self.closed = False
        self.starts = 0

    def report(self) -> IsolationReport:
        """The isolation in force (starting the zygote if it never ran)."""
        return self._report(self.plan_now())

    def plan_now(self) -> dict[str, Any]:
        """The zygote's isolation plan (starting it if it never ran). Once known it is read without the
        lock, which every spawn holds through a fork: a reset taking a pooled worker must not wait for
        the pool's refill. A restarted zygote on the same host makes the same plan."""
        if self.plan and not self.closed:
            return self.plan
        with self._lock:
            self._ensure_started()
            return self.plan

    def _report(self, plan: dict[str, Any]) -> IsolationReport:
        network = ("namespace" if plan["netns"] else "seccomp" if plan["seccomp"]
                   else "landlock-tcp" if plan["landlock_abi"] >= 4 else "none")
        filesystem = "private-root" if plan["mountns"] else "landlock" if plan["landlock_abi"] else "none"
        problems = list(plan["problems"])
        resources = f"cgroup-{self.cgroups.kind}" if self.cgroups is not None and self.cgroups.kind else "rlimits"
        if resources == "rlimits" and self.cgroups is not None and self.cgroups.problem:
            problems.append(f"no per-episode cgroups ({self.cgroups.problem}): memory and disk limits are per "
                            "process and per file (RLIMIT_AS, RLIMIT_FSIZE, the scratch tmpfs size)")
        return IsolationReport(network=network, filesystem=filesystem,
                               processes="pid-namespace" if plan["pidns"] else "process-group",
                               ipc="namespace" if plan["ipcns"] else "host",
                               syscalls="seccomp" if plan["seccomp"] else "none", resources=resources,
                               problems=tuple(problems))

    def spawn(self, header: dict[str, Any], fds: list[int]) -> int:
        """Fork a worker (its socket is ``fds[0]``); returns its pid as the zygote sees it."""
        with self._lock:
            for attempt in (1, 2):
                self._ensure_started()
                try:
                    _wire.send(self._ctrl, dict(header, op="spawn"), fds=fds)
                    reply = _wire.recv(self._ctrl, 1 << 20, 0).header
                    return int(reply["zpid"])
                except (OSError, EOFError, _wire.ProtocolError, KeyError) as exc:
                    log.warning("zygote died (%s); restarting it (attempt %d)", exc, attempt)
                    self._stop()
            raise SandboxStartError("the sandbox zygote died twice in a row while forking a worker; "
                                    f"see {self.scratch_root}/zygote.log")

    def status(self, zpid: int) -> int | None:
        """The wait status of a worker that died on its own (the zygote reaps every worker; this waits up
        to 2 s for one that is still exiting); None if unknown."""
        with self._lock:
            if self._ctrl is None:
                return None
            try:
                _wire.send(self._ctrl, {"op": "status", "zpid": zpid})
                return _wire.recv(self._ctrl, 1 << 20, 0).header.get("status")
            except (OSError, EOFError, _wire.ProtocolError):
                self._stop()
                return None

    def _ensure_started(self) -> None:
        if self.closed:
            raise SandboxError("this Sandbox is closed; its sessions cannot run or restart")
        if self._proc is not None and self._proc.poll() is None and self._ctrl is not None:
            return
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", self.scratch_root),  # matplotlib's font cache lives there
            "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join(os.path.abspath(p or os.curdir) for p in sys.path),
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "MPLBACKEND": "Agg",
        }
        options = json.dumps({"mode": self.mode, "use_namespaces": self.use_namespaces,
                              "scratch_root": self.scratch_root})
        command = [sys.executable, _ZYGOTE_SCRIPT, str(theirs.fileno()), options]
        with open(os.path.join(self.scratch_root, "zygote.log"), "wb") as logfile:
            self._proc = subprocess.Popen(
                command,
                pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL, stdout=logfile,
                stderr=logfile, start_new_session=True, cwd=self.scratch_root)
        theirs.close()
        self._ctrl = ours
        ours.settimeout(_READY_TIMEOUT_S)
        try:
            ready = _wire.recv(ours, 1 << 20, 0).header
        except (OSError, EOFError, _wire.ProtocolError) as exc:
            self._stop()
            raise SandboxStartError(f"the sandbox zygote did not start ({exc!r}): {self._log_tail()}") from exc
        finally:
            ours.settimeout(None)
        if not ready.get("ok"):
            self._stop()
            raise SandboxStartError(f"the sandbox zygote failed: {ready.get('error')}; {self._log_tail()}")
        self.plan = ready["plan"]
        self.starts += 1
        report = self._report(self.plan)
        if self.mode == "strict" and not report.complete:
            self._stop()
            raise SandboxStartError(f"isolation='strict' but only {report} is available here: "
                                    f"{'; '.join(report.problems) or 'see the report'}")
        if self.mode == "none":
            _warn("sandbox isolation is DISABLED (isolation='none'): model code can reach the network, "
                  "read and write anywhere this user can, and signal other processes")
        elif not report.complete:
            _warn(f"sandbox isolation is partial on this machine ({report}): "
                  f"{'; '.join(report.problems)}")
        else:
            log.info("sandbox zygote started, isolation: %s", report)

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.scratch_root, "zygote.log"), "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace") or "(zygote.log is empty)"
        except OSError:
            return "(no zygote.log)"

    def _stop(self) -> None:
        _wire.stop_helper(self._ctrl, self._proc)  # EOF: it kills what it started and exits
        self._ctrl = self._proc = None

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._stop()


def _warn(message: str) -> None:
    import warnings

    log.warning(message)
    warnings.warn(message, IsolationWarning, stacklevel=4)
