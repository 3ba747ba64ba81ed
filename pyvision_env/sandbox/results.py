"""Records the sandbox returns: the result of one execution and the isolation in force."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, repr=False)
class ExecutionResult:
    """What one execution of the model's code produced. Failures of the code are data, not exceptions."""

    stdout: str
    """Text written to stdout (Python or C level), head and tail kept past ``max_output_chars``."""
    stderr: str
    """Text written to stderr, truncated the same way."""
    error: str | None
    """The traceback (trimmed to the model's code), or what the sandbox did on a timeout or crash."""
    exec_time_s: float
    """Wall time of the execution as measured by the worker (by the host when the worker was killed)."""
    frames: tuple[np.ndarray, ...] = ()
    """Every frame the code showed, in order, as HxWx3 uint8 arrays."""
    timed_out: bool = False
    """The deadline passed. With ``restarted`` False the code was interrupted and the state is kept."""
    crashed: bool = False
    """The worker process died (segfault, ``os._exit``, a signal, the memory killer)."""
    restarted: bool = False
    """A fresh worker replaced the old one: variables are gone, the inputs are loaded again."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Things the sandbox changed in the output: truncation, dropped or downscaled frames."""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out and not self.crashed

    def __repr__(self) -> str:
        """Frames as their shapes: the pixels of a few frames would fill a terminal."""
        frames = ", ".join(f"{'x'.join(map(str, f.shape))} {f.dtype}" for f in self.frames)
        fields = [f"{name}={getattr(self, name)!r}" for name in ("stdout", "stderr", "error", "exec_time_s")]
        fields.append(f"frames=({frames})")
        fields.extend(f"{name}=True" for name in ("timed_out", "crashed", "restarted") if getattr(self, name))
        if self.notes:
            fields.append(f"notes={self.notes!r}")
        return f"ExecutionResult({', '.join(fields)})"


@dataclass(frozen=True)
class IsolationReport:
    """Which isolation mechanisms confine the model's code on this machine (README: threat model)."""

    network: str
    """``namespace`` (no interfaces at all, and only unix sockets), ``seccomp`` (only unix sockets),
    ``landlock-tcp`` (TCP only) or ``none``."""
    filesystem: str
    """``private-root`` (a mount namespace with a minimal read-only root and a scratch tmpfs: nothing else
    of the host is visible), ``landlock`` (the host's files stay visible but reads and writes are limited
    to what the interpreter needs and its scratch directory; metadata changes refused by seccomp) or
    ``none``."""
    processes: str
    """``pid-namespace`` (the episode sees and can signal only its own processes, all killed with it)
    or ``process-group`` (best effort)."""
    ipc: str = "host"
    """``namespace`` (SysV IPC, POSIX message queues and the hostname are the episode's own) or ``host``."""
    syscalls: str = "none"
    """``seccomp`` (Docker's default deny list, sockets limited to AF_UNIX, no new namespaces) or ``none``."""
    resources: str = "rlimits"
    """``cgroup-v1`` / ``cgroup-v2`` (memory, including memfds, tmpfs and children, and PIDs counted per
    episode) or ``rlimits`` (per process and per file only)."""
    problems: tuple[str, ...] = ()
    """Why a stronger mechanism is not in use."""

    @property
    def complete(self) -> bool:
        return (self.network in ("namespace", "seccomp") and self.filesystem == "private-root"
                and self.processes == "pid-namespace" and self.ipc == "namespace" and self.syscalls == "seccomp"
                and self.resources.startswith("cgroup"))

    def __str__(self) -> str:
        return (f"network={self.network} filesystem={self.filesystem} processes={self.processes} ipc={self.ipc} "
                f"syscalls={self.syscalls} resources={self.resources}")
