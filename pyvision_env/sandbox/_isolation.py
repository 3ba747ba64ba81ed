"""Kernel isolation primitives, through ctypes (stdlib only: the launcher imports this before anything else).

Measured on the development machine (kernel 6.18, 2 cores, loaded): a user + network + PID + mount + IPC +
UTS namespace for the zygote costs ~1 ms once; per worker, a PID namespace costs ~0.1 ms on top of fork,
a mount + IPC + UTS namespace with a fresh tmpfs and ``proc`` ~0.3 ms, Landlock ~0.3 ms, loading a
pre-compiled seccomp filter ~0.02 ms. ``pid_max`` is per PID namespace since Linux 6.14, which bounds a
fork bomb where RLIMIT_NPROC does not (inside a user namespace RLIMIT_NPROC is not enforced for the
mapped user here).
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
_MNT_DETACH = 2
_SYS_PIVOT_ROOT = 155

_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_SECCOMP_MODE_FILTER = 2
_SYS_CAPSET = 126
_SYS_KEYCTL = 250
_KEYCTL_JOIN_SESSION_KEYRING = 1
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

# Landlock filesystem rights, by the ABI that introduced them.
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
_FS_WRITE_BY_ABI = {
    1: sum(1 << bit for bit in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12)),
    2: 1 << 13,  # REFER
    3: 1 << 14,  # TRUNCATE
    5: 1 << 15,  # IOCTL_DEV
}
_NET_TCP_BIND_CONNECT = 0b11  # ABI >= 4
_SCOPE_ABSTRACT_UNIX_AND_SIGNAL = 0b11  # ABI >= 6

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def set_process_name(name: str) -> None:
    """The name ``ps``, ``top`` and ``perf`` show (at most 15 bytes): sandbox processes are told apart
    from the host's Python at a glance."""
    _libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def collapse_to_huge_pages() -> int:
    """Back this process's writable anonymous memory (its heap, Python's arenas) with 2 MiB pages where a
    whole aligned 2 MiB fits (``MADV_COLLAPSE``, Linux 6.1+; best effort: 0 elsewhere). A fork copies one
    entry per huge page instead of 512, and an exit frees them as fast; a child's write still copies one
    4 KiB page. Returns the number of huge pages made."""
    huge, made = 2 << 20, 0
    with open("/proc/self/maps") as f:
        regions = [line.split() for line in f]
    for fields in regions:
        if len(fields) > 5 and fields[5] != "[heap]" or "w" not in fields[1]:
            continue  # file-backed, a stack or another special region, or read-only
        start, end = (int(x, 16) for x in fields[0].split("-"))
        start, end = -(-start // huge) * huge, end // huge * huge
        if end > start and _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 25) == 0:
            made += (end - start) // huge
    return made


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def enter_user_namespace(extra_flags: int) -> None:
    """Make a user namespace (root inside, the caller's uid outside) together with ``extra_flags``
    namespaces (network, PID, mount, IPC, UTS).

    Must run while the process has one thread (before numpy & co. start theirs). A PID namespace applies to
    children: the caller must fork once so that its child is PID 1 there.
    """
    uid, gid = os.getuid(), os.getgid()
    unshare(CLONE_NEWUSER | extra_flags)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def _encode(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_encode(source), target.encode(), _encode(fstype), flags, _encode(data)), f"mount({target})")


def bind_read_only(source: str, target: str) -> None:
    """Bind ``source`` on ``target`` read-only, keeping the nosuid/nodev/noexec flags the source mount
    has (a user namespace may not clear them: the remount would fail with EPERM)."""
    mount(source, target, None, MS_BIND | MS_REC)
    st = os.statvfs(target)
    kept = ((MS_NOSUID if st.f_flag & os.ST_NOSUID else 0) | (MS_NODEV if st.f_flag & os.ST_NODEV else 0)
            | (MS_NOEXEC if st.f_flag & os.ST_NOEXEC else 0))
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def pivot_root(new_root: str) -> None:
    """Make ``new_root`` the root of this mount namespace and detach the old one entirely."""
    put_old = os.path.join(new_root, ".old-root")
    os.mkdir(put_old)
    _check(_libc.syscall(_SYS_PIVOT_ROOT, new_root.encode(), put_old.encode()), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.old-root", _MNT_DETACH), "umount2(/.old-root)")
    os.rmdir("/.old-root")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def set_parent_death_signal(sig: int) -> None:
    _check(_libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def limit_pids_in_namespace(max_pids: int) -> None:
    """Cap the PIDs of the caller's own PID namespace (the caller must be its PID 1; kernel >= 6.14)."""
    with open("/proc/sys/kernel/pid_max", "w") as f:
        f.write(str(max(max_pids, 301)))  # 301 is the kernel's minimum


def join_fresh_session_keyring() -> None:
    """Replace the inherited session keyring (the host's keys) with a new, empty, anonymous one."""
    _check(_libc.syscall(_SYS_KEYCTL, _KEYCTL_JOIN_SESSION_KEYRING, None), "keyctl(JOIN_SESSION_KEYRING)")


def drop_capabilities() -> None:
    """Drop every capability (effective, permitted, inheritable, ambient and the bounding set) and set
    no_new_privs: uid 0 inside the user namespace can then neither mount, nor regain capabilities by
    executing a program, nor override file permissions."""
    for cap in range(64):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() == 22:  # EINVAL: no such cap
            break
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = bytes(24)  # two {effective, permitted, inheritable} u32 triples, all zero
    _check(_libc.syscall(_SYS_CAPSET, header, data), "capset")
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def load_seccomp_filter(bpf: bytes) -> None:
    """Install a seccomp filter given as raw BPF (``struct sock_filter`` array, compiled once in the zygote)."""
    count = len(bpf) // 8
    program = ctypes.create_string_buffer(bpf, len(bpf))
    fprog = struct.pack("HxxxxxxP", count, ctypes.addressof(program))
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    _check(_libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0), "seccomp")


def landlock_abi() -> int:
    """Landlock ABI version, or 0 when the kernel lacks it or it is disabled."""
    ret = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    return max(int(ret), 0)


def landlock_write_rights(abi: int) -> int:
    return sum(bits for level, bits in _FS_WRITE_BY_ABI.items() if abi >= level)


def landlock_restrict(rules: list[tuple[str, int]], abi: int, *, handle_reads: bool) -> None:
    """Allow filesystem access only as ``rules`` (path, rights) say.

    Writes are always handled (refused outside the rules); with ``handle_reads`` reading and executing
    are too (the fallback where no private mount namespace hides the host's files). With ABI >= 4 TCP
    bind/connect are refused, and with ABI >= 6 signals and abstract unix sockets cannot reach processes
    outside the sandboxed process tree (other episodes included). Paths that do not exist are skipped.
    """
    handled = landlock_write_rights(abi) | (FS_READ if handle_reads else 0)
    net = _NET_TCP_BIND_CONNECT if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX_AND_SIGNAL if abi >= 6 else 0
    attr = struct.pack("QQQ", handled, net, scoped)
    attr_size = 24 if abi >= 6 else (16 if abi >= 4 else 8)
    buf = ctypes.create_string_buffer(attr[:attr_size], attr_size)
    ruleset = _check(_libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_size_t(attr_size),
                                   ctypes.c_uint32(0)), "landlock_create_ruleset")
    try:
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):  # files take file rights only
                    rights &= FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (1 << 14) | (1 << 15)
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights & handled, fd), 12)
                _check(_libc.syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset),
                                     ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), rule, ctypes.c_uint32(0)),
                       f"landlock_add_rule({path})")
            finally:
                os.close(fd)
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(_libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)),
               "landlock_restrict_self")
    finally:
        os.close(ruleset)
