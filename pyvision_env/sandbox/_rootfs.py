"""The private filesystem view of the interpreters: a minimal root built once per zygote, a fresh scratch
tmpfs and ``/proc`` per worker.

Inside, the model's code sees::

    /usr /bin /lib* /sbin     read-only binds of the host's system directories (libraries, fonts)
    <python prefixes>         read-only binds of the Python installation and its site-packages, at the
                              same paths; for other ``sys.path`` entries only the packages imported from them
    /etc                      a few read-only files (ld.so.cache, fonts, localtime) and our own passwd/group
    /dev                      null, zero, full, random, urandom; fd, stdin/out/err links
    /proc                     the worker's own PID namespace only
    /sandbox/home             the episode's scratch: the working directory and $HOME (tmpfs with a size)
    /sandbox/tmp              $TMPDIR, also behind /tmp and /dev/shm

and nothing else of the host: no home directories, /run, /var, /sys, the dataset or other episodes'
scratch. The root itself is a read-only tmpfs; the per-worker tmpfs is the only writable place, and it
vanishes with the worker's mount namespace (nothing to clean up on disk).
"""

from __future__ import annotations

import os
import site
import sys

from . import _isolation as iso

SANDBOX = "/sandbox"
HOME = "/sandbox/home"
TMP = "/sandbox/tmp"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/fonts",
        "/etc/alternatives", "/etc/mime.types")
_DEVICES = ("null", "zero", "full", "random", "urandom")
_PASSWD = f"root:x:0:0:sandbox:{HOME}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def python_paths() -> list[str]:
    """What the interpreter needs of the host's Python: the installation prefixes, every site-packages
    directory, zips on ``sys.path``, and the top-level packages already imported from anywhere else (a
    source checkout, an editable install), so a repository's other files stay out of view."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages()}
    user_site = site.getusersitepackages()
    if isinstance(user_site, str) and os.path.isdir(user_site):
        roots.add(user_site)
    roots = {os.path.realpath(p) for p in roots if os.path.exists(p)}
    paths = set(roots) | {os.path.realpath(p) for p in sys.path if p and os.path.isfile(p)}
    for name in list(sys.modules):
        top = sys.modules.get(name.partition(".")[0])
        locations = list(getattr(top, "__path__", None) or []) or [getattr(top, "__file__", None) or ""]
        for location in locations:
            location = os.path.realpath(location) if location else ""
            if location and os.path.exists(location) and not _beneath(location, roots):
                paths.add(location)
    return sorted(paths)


def _beneath(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def exposed_paths() -> list[str]:
    """Every host path the interpreter may read (also the Landlock read allowlist of the fallback)."""
    return [p for p in (*_SYSTEM_DIRS, *_ETC, *python_paths()) if os.path.lexists(p)]


def build_root(new_root: str) -> list[str]:
    """Build the minimal root on a tmpfs at ``new_root``, pivot into it and make it read-only.

    Runs once in the zygote (inside its user, mount and PID namespaces, after the preloads). Returns the
    exposed paths that lie under /tmp (a virtual environment in a fresh clone under /tmp, say): there /tmp is
    a directory of the root holding their binds, and each worker rebuilds them over its own /tmp
    (:func:`enter_worker_root`); elsewhere /tmp is a link to the worker's scratch.
    """
    iso.mount(None, "/", None, iso.MS_REC | iso.MS_PRIVATE)  # nothing we mount propagates to the host
    os.makedirs(new_root, exist_ok=True)
    iso.mount("tmpfs", new_root, "tmpfs", iso.MS_NOSUID | iso.MS_NODEV, "mode=0755,size=4m")
    bound: list[str] = []
    paths = [p for p in exposed_paths() if not _beneath(os.path.realpath(p), {SANDBOX, "/proc", "/dev"})]
    for path in paths:
        _expose(new_root, path, bound)
    tmp_paths = [p for p in bound if _beneath(p, {"/tmp"})]
    etc = os.path.join(new_root, "etc")
    os.makedirs(etc, exist_ok=True)
    for name, text in (("passwd", _PASSWD), ("group", _GROUP), ("hostname", "sandbox\n"),
                       ("hosts", "127.0.0.1 localhost sandbox\n")):
        with open(os.path.join(etc, name), "w") as f:
            f.write(text)
    dev = os.path.join(new_root, "dev")
    os.makedirs(dev, exist_ok=True)
    for name in _DEVICES:
        open(os.path.join(dev, name), "w").close()
        iso.bind_read_only(f"/dev/{name}", os.path.join(dev, name))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("shm", TMP)):
        os.symlink(target, os.path.join(dev, name))
    if not tmp_paths:
        os.symlink(TMP, os.path.join(new_root, "tmp"))
    os.makedirs(new_root + SANDBOX)
    os.makedirs(os.path.join(new_root, "proc"))
    # The zygote's own /proc: a worker may mount a fresh proc only where one is already fully visible.
    iso.mount("proc", os.path.join(new_root, "proc"), "proc", iso.MS_NOSUID | iso.MS_NODEV | iso.MS_NOEXEC)
    iso.pivot_root(new_root)
    iso.mount(None, "/", None, iso.MS_REMOUNT | iso.MS_BIND | iso.MS_RDONLY | iso.MS_NOSUID | iso.MS_NODEV)
    return tmp_paths


def _expose(new_root: str, path: str, bound: list[str]) -> None:
    """Make ``path`` appear at the same place inside ``new_root``: symlinks along the way are recreated,
    the real file or directory is bound read-only (once: a path inside a bound directory is skipped)."""
    _recreate_links(new_root, path, depth=0)
    real = os.path.realpath(path)
    if _beneath(real, set(bound)) or not os.path.exists(real):
        return
    inside = new_root + real
    if os.path.isdir(real):
        os.makedirs(inside, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(inside), exist_ok=True)
        open(inside, "a").close()
    iso.bind_read_only(real, inside)
    bound.append(real)


def _recreate_links(new_root: str, path: str, depth: int) -> None:
    """Recreate inside ``new_root`` every symlink met while resolving ``path`` (e.g. ``/lib -> usr/lib``)."""
    current = ""
    for part in os.path.normpath(path).strip("/").split("/"):
        host = f"{current}/{part}"
        if os.path.islink(host) and depth < 40:
            inside = new_root + host
            if not os.path.lexists(inside):
                os.makedirs(os.path.dirname(inside), exist_ok=True)
                os.symlink(os.readlink(host), inside)
            _recreate_links(new_root, os.path.join(os.path.dirname(host), os.readlink(host)), depth + 1)
            host = os.path.realpath(host)
        current = host


def enter_worker_root(scratch_mb: int, own_network: bool, tmp_paths: list[str]) -> None:
    """Per worker, right after fork: own mount, IPC and UTS namespaces, a fresh scratch tmpfs of
    ``scratch_mb`` MiB and a fresh ``/proc`` of the worker's PID namespace (the worker is its PID 1).

    ``own_network`` adds a network namespace (~0.5 ms more, and more work for the kernel at exit): needed
    only where Landlock cannot scope abstract unix sockets (ABI < 6), which live per network namespace.
    ``tmp_paths`` (see :func:`build_root`) are bound again, read-only, inside the worker's writable /tmp."""
    iso.unshare(iso.CLONE_NEWNS | iso.CLONE_NEWIPC | iso.CLONE_NEWUTS | (iso.CLONE_NEWNET if own_network else 0))
    iso.mount("tmpfs", SANDBOX, "tmpfs", iso.MS_NOSUID | iso.MS_NODEV,
              f"mode=0755,size={scratch_mb}m,nr_inodes={max(1024, scratch_mb * 64)}")
    os.mkdir(HOME, 0o700)
    os.mkdir(TMP, 0o1777)
    iso.mount("proc", "/proc", "proc", iso.MS_NOSUID | iso.MS_NODEV | iso.MS_NOEXEC)
    iso.sethostname("sandbox")
    if tmp_paths:
        # descriptors of the zygote's binds in this namespace's copy, taken before /tmp is covered
        held = [(path, os.open(path, os.O_PATH | os.O_CLOEXEC)) for path in tmp_paths]
        iso.mount(TMP, "/tmp", None, iso.MS_BIND)
        for path, fd in held:
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(path, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "a").close()
            iso.bind_read_only(f"/proc/self/fd/{fd}", path)
            os.close(fd)
