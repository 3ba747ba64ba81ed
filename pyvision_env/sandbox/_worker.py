"""One episode's interpreter: runs in a process forked from the zygote, never returns.

Two phases, so that workers can be forked and confined ahead of time (the host keeps a small pool):

1. *prepare*, right after fork: join the episode's cgroup (v1; on v2 the host moves the worker after
   ``hello``), every isolation step (namespaces, scratch tmpfs, /proc, capabilities, Landlock, seccomp),
   then ``hello`` (with credentials: the host learns the pid), then a warm-up cell on dummy inputs
   (:func:`_rehearse`). A pooled worker then waits, blocked, using no CPU.
2. *start*, when an episode claims it: the inputs arrive (image memfds, the video) with the episode's
   limits; the namespace is built and ``started`` answered. Only then is code run, so the model's first
   line already runs confined.
"""

from __future__ import annotations

import ast
import linecache
import mmap
import os
import resource
import signal
import socket
import time
import traceback
from typing import Any, NoReturn

from . import _cgroups, _isolation, _rootfs, _wire
from ._capture import FrameSink, Hooks, OutputCapture
from ._text import truncate_middle

_THIS_FILE = __file__
_MAX_REQUEST = 64 * 1024 * 1024


class _Interrupts:
    """SIGINT interrupts the model's code only while it runs; a late one (the deadline raced the end
    of the execution) is ignored instead of breaking the worker's own loop."""

    executing = False

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        if cls.executing:
            raise KeyboardInterrupt


def _apply_isolation(spawn: dict[str, Any], bpf: bytes) -> dict[str, Any]:
    """Confine this process before it answers anything; returns what was applied (for the host's report).

    With a private root (``plan["mountns"]``) the worker gets its own mount, IPC and UTS namespaces, a
    fresh scratch tmpfs and /proc; without it, Landlock also restricts reads to what the interpreter needs.
    Capabilities are dropped after the last step that needs them; seccomp comes last.
    """
    limits, plan = spawn["prep"], spawn["isolation"]
    applied = {"network": "none", "filesystem": "none", "processes": "process-group", "ipc": "host",
               "syscalls": "none"}
    os.setsid()  # killpg(0) or a terminal's signals reach this episode's processes only
    if plan["mountns"]:
        _rootfs.enter_worker_root(limits["max_scratch_mb"], own_network=plan["landlock_abi"] < 6,
                                  tmp_paths=plan["tmp_paths"])
        applied.update(filesystem="private-root", ipc="namespace")
    if plan["pidns"]:
        _isolation.limit_pids_in_namespace(limits["max_processes"])
        applied["processes"] = "pid-namespace"
    else:
        _isolation.set_parent_death_signal(signal.SIGKILL)
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["max_processes"], limits["max_processes"]))
    if plan["netns"]:
        applied["network"] = "namespace"
    if plan["mode"] != "none":
        _isolation.join_fresh_session_keyring()
    scratch = _rootfs.HOME if plan["mountns"] else spawn["scratch_dir"]
    os.chdir(scratch)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if plan["mode"] != "none":
        _isolation.drop_capabilities()
    abi = plan["landlock_abi"]
    if abi:
        # with a private root, /tmp is the scratch's tmp (a link to it, or a bind where installs live in /tmp)
        writable = [_rootfs.SANDBOX, "/tmp"] if plan["mountns"] else [scratch]
        rules = [(path, _isolation.landlock_write_rights(abi) | _isolation.FS_READ) for path in writable]
        rules.append(("/dev/null", _isolation.FS_WRITE_FILE | _isolation.FS_READ_FILE))
        if not plan["mountns"]:  # the host's files are visible: allow reading only what the interpreter needs
            rules += [(path, _isolation.FS_READ) for path in _rootfs.exposed_paths()]
            rules += [(f"/dev/{name}", _isolation.FS_READ) for name in ("zero", "full", "random", "urandom")]
            rules.append(("/proc/self", _isolation.FS_READ))  # resolved now: this process's own entry only
        _isolation.landlock_restrict(rules, abi, handle_reads=not plan["mountns"])
        if not plan["mountns"]:
            applied["filesystem"] = "landlock"
        if applied["network"] == "none" and abi >= 4:
            applied["network"] = "landlock-tcp"
    if bpf:
        _isolation.load_seccomp_filter(bpf)
        applied["syscalls"] = "seccomp"
        if applied["network"] in ("none", "landlock-tcp"):
            applied["network"] = "seccomp"
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=scratch, LANG="C.UTF-8",
                      TMPDIR=_rootfs.TMP if plan["mountns"] else scratch, MPLBACKEND="Agg", OMP_NUM_THREADS="1",
                      OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return applied


def _limit_memory(budget_mb: int) -> None:
    """RLIMIT_AS = what the warm worker already maps + the budget, so the budget is what the code adds."""
    with open("/proc/self/statm") as f:
        size_pages = int(f.read().split()[0])
    limit = size_pages * mmap.PAGESIZE + (budget_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _build_namespace(spawn: dict[str, Any], image_fds: list[int], hooks: Hooks) -> dict[str, Any]:
    import base64
    import io

    import cv2
    import matplotlib
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from ..media import video as video_mod

    # the names PyVision-RL's runtime predefines (io, base64, matplotlib too), so its models' code runs as is
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__, "np": np, "plt": plt,
                          "Image": Image, "cv2": cv2, "io": io, "base64": base64, "matplotlib": matplotlib,
                          "display": hooks.display, "VideoReader": video_mod.VideoReader, "cpu": video_mod.cpu}
    for i, ((h, w), fd) in enumerate(zip(spawn["images"], image_fds)):
        ns[f"image_clue_{i}"] = _map_image(fd, h, w)
        os.close(fd)
    if spawn.get("video"):  # the video service's socket follows the image fds
        ns["video_clue_0"] = video_mod.ServedVideoReader(image_fds[len(spawn["images"])], spawn["video"])
    return ns


def _map_image(fd: int, height: int, width: int) -> Any:
    """A read-only PIL image over the host's sealed RGBX pixels: no copy, no decode (~0.05 ms instead
    of ~5 ms for 1024x1024). Pillow lays RGB out as 4 bytes a pixel, so the buffer maps as it is; an
    in-place edit makes Pillow copy first (copy-on-write), so the shared pixels stay pristine."""
    return _image_over(mmap.mmap(fd, height * width * 4, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ),
                       height, width)


def _image_over(buf: mmap.mmap, height: int, width: int) -> Any:
    import numpy as np
    from PIL import Image

    try:  # Image.frombuffer refuses to map "RGB" only because it assumes 3-byte raw data
        image = Image.new("RGB", (0, 0))._new(Image.core.map_buffer(buf, (width, height), "raw", 0, ("RGB", 0, 1)))
        image.readonly = 1
        return image
    except (AttributeError, TypeError, ValueError):  # a Pillow without map_buffer: copy instead
        return Image.fromarray(np.frombuffer(buf, np.uint8).reshape(height, width, 4)[..., :3].copy())


def _format_error(exc: BaseException) -> str:
    """The traceback as the model should see it: from its own code onwards (not ``ast.parse``, the
    exec wrapper or the worker's signal handler), chained exceptions included."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    seen: set[int] = set()
    pending = [te]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        frames = list(current.stack)
        first = next((i for i, f in enumerate(frames) if f.filename.startswith("<code-")), len(frames))
        current.stack = traceback.StackSummary.from_list(
            [f for f in frames[first:] if f.filename != _THIS_FILE])
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return "".join(te.format())


def _run_code(code: str, cell: int, ns: dict[str, Any]) -> str | None:
    """Run ``code`` like a notebook cell (the value of a last bare expression is printed)."""
    filename = f"<code-{cell}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        _Interrupts.executing = True
        try:
            tree = ast.parse(code, filename)
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, filename, "exec"), ns)
            if last is not None:
                value = eval(compile(ast.Expression(last.value), filename, "eval"), ns)
                if value is not None:
                    print(repr(value))
        finally:
            _Interrupts.executing = False
    except BaseException as exc:  # noqa: BLE001 - the model must see every failure, SystemExit included
        return _format_error(exc)
    return None


def _serve(sock: socket.socket, limits: dict[str, Any], ns: dict[str, Any], sink: FrameSink,
           output: OutputCapture, my_pid: int) -> NoReturn:
    cell = 0
    while True:
        try:
            request = _wire.recv(sock, _MAX_REQUEST, 0).header
        except KeyboardInterrupt:
            continue
        except (EOFError, OSError, _wire.ProtocolError):
            os._exit(0)  # the host is gone
        if request.get("op") != "exec":
            continue
        cell += 1
        cpu_now = int(sum(os.times()[:2]))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_now + int(request["cpu_limit_s"]) + 1, resource.RLIM_INFINITY))
        error = None
        start = time.perf_counter()
        try:
            error = _run_code(request["code"], cell, ns)
        except KeyboardInterrupt:  # landed between the code's end and our bookkeeping
            pass
        elapsed = time.perf_counter() - start
        if os.getpid() != my_pid:  # a child the code forked must never answer for the worker
            os._exit(0)
        try:
            frames, notes = sink.take()
            reply = {"id": request["id"], "stdout": output.take(1), "stderr": output.take(2),
                     "error": truncate_middle(error, limits["max_output_chars"]) if error else None,
                     "exec_time_s": elapsed, "frames": [list(f.shape[:2]) for f in frames], "notes": notes}
            _wire.send(sock, reply, [memoryview(f).cast("B") for f in frames])
        except KeyboardInterrupt:
            continue
        except OSError:
            os._exit(0)


def _rehearse() -> OutputCapture:
    """Phase 1's last step, after ``hello``: build a namespace over a dummy image and run a first cell in
    it (showing the image), then throw them away. The copy-on-write faults and first-call costs this
    brings (~0.5 ms) are paid while the worker waits in the pool, not on the episode's clock. Returns
    the output capture (its memfds), which the episode keeps."""
    output = OutputCapture(0)
    ns = _build_namespace({"images": []}, [], Hooks(FrameSink(1, 1, 1)))
    ns["image_clue_0"] = _image_over(mmap.mmap(-1, 4 * 4 * 4), 4, 4)
    _run_code("x = 1\ndisplay(image_clue_0)", 0, ns)
    linecache.cache.pop("<code-0>", None)
    output.take(1)
    output.take(2)
    return output


def _start(start: dict[str, Any], fds: list[int], output: OutputCapture) -> tuple[dict[str, Any], FrameSink]:
    """Phase 2: the episode's limits and inputs. ``fds`` are one sealed memfd per input image, then, for a
    video, a socket to the host's video service bound to that one video (the worker never sees its file)."""
    limits = start["limits"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["max_file_mb"] << 20,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["max_open_files"],) * 2)
    sink = FrameSink(limits["max_frames_per_step"], limits["max_frames_per_episode"], limits["max_frame_pixels"])
    ns = _build_namespace(start, fds, Hooks(sink))
    output.max_chars = limits["max_output_chars"]
    _limit_memory(limits["memory_limit_mb"])
    return ns, sink


def main(sock: socket.socket, spawn: dict[str, Any], bpf: bytes, cgroup_fds: list[int]) -> NoReturn:
    """Entry point in the freshly forked child: prepare, say hello, wait for the inputs, start, serve.
    Failures are reported to the host, which raises a clear error. ``bpf`` is the zygote's compiled
    seccomp filter (empty: none); ``cgroup_fds`` the episode cgroups' ``tasks`` files (v1), joined first
    (``hello`` says whether that worked; if not, the host moves the worker itself)."""
    _isolation.set_process_name("pyvision-ep")
    try:
        _cgroups.join_self(cgroup_fds)
        joined = bool(cgroup_fds)
    except OSError:
        joined = False
    try:
        signal.signal(signal.SIGINT, _Interrupts.handler)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past RLIMIT_FSIZE raise instead of killing
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        my_pid = os.getpid()
        hello = {"op": "hello", "ok": True, "isolation": _apply_isolation(spawn, bpf), "cgroup_joined": joined}
    except BaseException as exc:  # noqa: BLE001
        hello = {"op": "hello", "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    try:
        _wire.send(sock, hello, credentials=True)  # tells the host our pid in its PID namespace
        if not hello["ok"]:
            os._exit(1)
        output = _rehearse()
        msg = _wire.recv(sock, 1 << 20, 0, max_fds=64)  # a pooled worker waits here
    except BaseException:  # noqa: BLE001 - the host is gone (or interrupted us while we wait): nothing to do
        os._exit(0)
    try:
        ns, sink = _start(msg.header, msg.fds, output)
        started = {"op": "started", "ok": True}
    except BaseException as exc:  # noqa: BLE001
        kind = "media" if type(exc).__name__ == "MediaError" else "startup"
        started = {"op": "started", "ok": False, "kind": kind, "error": f"{type(exc).__name__}: {exc}"}
    try:
        _wire.send(sock, started)
    except OSError:
        os._exit(1)
    if not started["ok"]:
        os._exit(1)
    _serve(sock, msg.header["limits"], ns, sink, output, my_pid)
