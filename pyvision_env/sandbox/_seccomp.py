"""The seccomp filter every worker runs under, compiled once per zygote and loaded as raw BPF per worker.

The deny list follows Docker's default profile (the reference most users know): no ptrace, no mounts, no
new namespaces after set-up, no BPF, perf, keyrings, userfaultfd, io_uring, kernel modules or clock
changes. On top of it sockets are limited to ``AF_UNIX`` (no IPv4/IPv6, packet, netlink: no network and
no way to bring an interface up, whatever namespace the worker is in). Where no private mount namespace
hides the host's files (the fallback), metadata changes (chmod, chown, utimes, xattrs) and ``socket()``
itself are refused too, because Landlock covers neither. Denied calls fail with EPERM (sockets with EAFNOSUPPORT);
``clone3`` gets ENOSYS so that libc falls back to ``clone``, whose flags the filter can inspect.
"""

from __future__ import annotations

import errno
import os
import socket

try:  # at import, so the zygote loads libseccomp while the host's library paths are still in view
    import pyseccomp as sc
except (ImportError, OSError):  # no pyseccomp, or no libseccomp library
    sc = None

_CLONE_NAMESPACES = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET

DENIED = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
    "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms", "init_module",
    "io_uring_enter", "io_uring_register", "io_uring_setup", "ioperm", "iopl", "kcmp", "kexec_file_load",
    "kexec_load", "keyctl", "lookup_dcookie", "mount", "mount_setattr", "move_mount", "move_pages",
    "name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open", "pivot_root",
    "process_vm_readv", "process_vm_writev", "ptrace", "query_module", "quotactl", "quotactl_fd", "reboot",
    "request_key", "setns", "settimeofday", "swapoff", "swapon", "syslog", "umount", "umount2", "unshare",
    "uselib", "userfaultfd", "ustat", "vhangup", "chroot", "setdomainname", "sethostname",
)
"""Refused in every mode (EPERM)."""

METADATA = (
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "utime", "utimes",
    "utimensat", "futimesat", "setxattr", "lsetxattr", "fsetxattr", "setxattrat", "removexattr",
    "lremovexattr", "fremovexattr", "removexattrat",
)
"""Also refused where the host's files are visible (no private mount namespace)."""


def compile_filter(private_root: bool) -> bytes:
    """The filter as raw BPF for :func:`~._isolation.load_seccomp_filter`. Needs libseccomp (pyseccomp).

    Without a private root (``private_root=False``) the host's files and pathname sockets are in view:
    metadata calls are refused, and ``socket()`` is refused for every family (unix included: Landlock
    cannot stop a ``connect`` to a host socket such as Docker's); ``socketpair`` stays for in-episode IPC.
    """
    if sc is None:
        raise ImportError("pyseccomp (with the libseccomp library) is not installed")
    flt = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in DENIED + (() if private_root else METADATA):
        try:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        except (RuntimeError, ValueError, OSError):
            pass  # a call this libseccomp or architecture does not know cannot be made either
    flt.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socketpair", sc.Arg(0, sc.NE, socket.AF_UNIX))
    if private_root:
        flt.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    else:
        flt.add_rule(sc.ERRNO(errno.EACCES), "socket")
    for bit in range(32):
        if _CLONE_NAMESPACES & (1 << bit):
            flt.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, 1 << bit, 1 << bit))
    try:
        flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    except (RuntimeError, ValueError, OSError):
        pass
    with os.fdopen(os.memfd_create("pyvision-seccomp", os.MFD_CLOEXEC), "w+b") as buf:
        flt.export_bpf(buf)
        buf.seek(0)
        return buf.read()
