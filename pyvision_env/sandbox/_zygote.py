"""The zygote: started once per host process, preloads the heavy imports, forks one worker per episode.

Run as a script (``python _zygote.py CONTROL_FD OPTIONS_JSON``), not with ``-m``: a package import would
run ``pyvision_env/__init__.py`` and start threads before the namespaces are made (``unshare`` of a
user namespace needs a single-threaded process). The sequence is:

1. launcher: user + network + PID + mount + IPC + UTS namespaces (stdlib only), then fork: the child is
   PID 1 of a PID namespace this user namespace owns, so it may make a nested PID namespace per worker;
2. zygote: import numpy, PIL, cv2, matplotlib (Agg) and the worker code, warm them;
   compile the seccomp filter; build the minimal read-only root (``_rootfs``) and pivot into it, so the
   host's filesystem is gone from this process and from everything it forks; back its heap with huge
   pages where the kernel can (a fork then copies a few hundred page-table entries fewer);
3. loop on the host's control socket: ``spawn`` forks a worker (PID 1 of its own PID namespace, so
   killing it kills all it started); children are reaped as they exit (SIGCHLD wakes the loop) and their
   statuses kept for a later ``status`` request; EOF (the host exited or died) ends everything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import socket
import sys
import time
from collections import OrderedDict


def _load_isolation():  # by path: importing the package here would defeat the point (see above)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_isolation.py")
    spec = importlib.util.spec_from_file_location("_pyvision_isolation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _enter_namespaces(iso, options: dict) -> dict:
    plan = {"mode": options["mode"], "netns": False, "pidns": False, "mountns": False, "ipcns": False,
            "landlock_abi": 0, "seccomp": False, "tmp_paths": [], "problems": []}
    if options["mode"] == "none":
        return plan
    if not options["use_namespaces"]:
        plan["problems"].append("namespaces disabled (use_namespaces=False): no private filesystem, PID, IPC or "
                                "network namespaces")
    else:
        try:
            iso.enter_user_namespace(iso.CLONE_NEWNET | iso.CLONE_NEWPID | iso.CLONE_NEWNS | iso.CLONE_NEWIPC
                                     | iso.CLONE_NEWUTS)
            plan.update(netns=True, pidns=True, mountns=True, ipcns=True)
        except OSError as exc:
            plan["problems"].append(f"user namespaces refused ({exc}): no private filesystem, PID, IPC or "
                                    "network namespaces")
    return plan


def _preload() -> None:
    # Not PyAV: workers get frames from the host's video service, and its ffmpeg libraries would double
    # the zygote's memory mappings (~950 instead of ~470), which every fork copies and every exit unmaps
    # (~1.5 ms of CPU per episode). Code that calls ``VideoReader`` itself imports it then, from the root.
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from pyvision_env.media import video  # noqa: F401
    from pyvision_env.sandbox import _worker  # noqa: F401

    cv2.setNumThreads(1)
    fig, ax = plt.subplots()  # warm the renderer and the font cache once, for every worker
    ax.plot([0, 1], [0, 1])
    ax.set_title("warm")
    fig.canvas.draw()
    plt.close(fig)
    cv2.resize(np.zeros((8, 8, 3), np.uint8), (4, 4))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).convert("L")
    import gc

    gc.collect()
    gc.freeze()  # workers' collections skip the preloaded objects: fewer pages copied after fork


def _thread_count() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def _isolate(plan: dict, options: dict, iso) -> bytes:
    """After the preloads: the seccomp filter and the private root. Returns the filter's BPF (empty
    without seccomp); problems go into ``plan``. Everything the zygote and its workers import later
    must be imported before the root is built (the root exposes only what is imported by then)."""
    if options["mode"] == "none":
        return b""
    from pyvision_env.sandbox import _rootfs, _seccomp

    plan["landlock_abi"] = iso.landlock_abi()
    if not plan["landlock_abi"]:
        plan["problems"].append("Landlock unavailable: no second line of defence for the filesystem, signals "
                                "and abstract unix sockets")
    if plan["mountns"]:
        try:
            plan["tmp_paths"] = _rootfs.build_root(os.path.join(options["scratch_root"], "root"))
        except OSError as exc:
            plan["mountns"] = False
            plan["problems"].append(f"no private root ({exc}): the host's files are hidden by Landlock only")
    try:
        bpf = _seccomp.compile_filter(private_root=plan["mountns"])
        plan["seccomp"] = True
    except (ImportError, OSError, RuntimeError, AttributeError) as exc:
        bpf = b""
        plan["problems"].append(f"no seccomp filter ({exc}): pip install pyseccomp and the libseccomp library")
    return bpf


def _serve(ctrl: socket.socket, plan: dict, bpf: bytes, iso) -> None:
    from pyvision_env.sandbox import _wire, _worker

    pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC) if plan["pidns"] else -1
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so SIGCHLD writes to the wakeup fd
    children: set[int] = set()
    statuses: OrderedDict[int, int] = OrderedDict()  # exit statuses of reaped workers, newest last
    while True:
        _reap(children, statuses)
        try:
            ready, _, _ = select.select([ctrl, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 4096):
                        break
                except BlockingIOError:
                    break
        if ctrl not in ready:
            continue
        try:
            msg = _wire.recv(ctrl, 1 << 24, 0, max_fds=64)
        except (EOFError, OSError, _wire.ProtocolError):
            break  # the host is gone: take every worker with us
        op = msg.header.get("op")
        if op == "spawn":
            if plan["pidns"]:
                iso.unshare(iso.CLONE_NEWPID)
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd in (ctrl.fileno(), wake_r, wake_w, pidns_fd):
                    if fd >= 0:
                        os.close(fd)
                try:
                    _worker.main(socket.socket(fileno=msg.fds[0]), dict(msg.header, isolation=plan), bpf,
                                 cgroup_fds=msg.fds[1:])
                finally:
                    os._exit(1)  # a worker never returns into the zygote's loop
            if plan["pidns"]:
                iso.setns(pidns_fd, iso.CLONE_NEWPID)
            for fd in msg.fds:
                os.close(fd)
            children.add(pid)
            _wire.send(ctrl, {"op": "spawned", "zpid": pid})
        elif op == "status":  # only asked for a worker that died on its own: it is exiting already
            zpid = msg.header["zpid"]
            deadline = time.monotonic() + 2.0
            while zpid in children and time.monotonic() < deadline:
                _reap(children, statuses)
                if zpid in children:
                    time.sleep(0.001)
            _wire.send(ctrl, {"op": "status", "zpid": zpid, "status": statuses.pop(zpid, None)})
    for pid in children:
        try:
            os.killpg(pid, signal.SIGKILL) if not plan["pidns"] else os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)


def _reap(children: set[int], statuses: OrderedDict[int, int]) -> None:
    """Reap every worker that has exited (the host kills them; nothing waits for them here)."""
    while children:
        try:
            done, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if not done:
            return
        children.discard(done)
        statuses[done] = status
        while len(statuses) > 4096:
            statuses.popitem(last=False)


def main() -> None:
    # A blocked or ignored signal survives fork and exec: a host that runs in a Ray worker (which blocks
    # SIGINT) would give every interpreter a deaf ear to the interrupt that stops runaway code.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    ctrl_fd, options = int(sys.argv[1]), json.loads(sys.argv[2])
    iso = _load_isolation()
    plan = _enter_namespaces(iso, options)
    if plan["pidns"]:
        pid = os.fork()
        if pid:  # the launcher: outlive nothing, report the zygote's fate
            os.close(ctrl_fd)
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    iso.set_process_name("pyvision-zygote")
    ctrl = socket.socket(fileno=ctrl_fd)
    from pyvision_env.sandbox import _wire

    try:
        _preload()
    except Exception as exc:  # noqa: BLE001 - the host turns this into SandboxStartError
        _wire.send(ctrl, {"op": "ready", "ok": False, "error": f"preloading failed: {exc!r}"})
        os._exit(1)
    bpf = _isolate(plan, options, iso)
    threads = _thread_count()
    if threads != 1:
        _wire.send(ctrl, {"op": "ready", "ok": False,
                          "error": f"zygote has {threads} threads after preloading; fork would be unsafe"})
        os._exit(1)
    iso.collapse_to_huge_pages()  # last: fewer page-table entries for every fork to copy and exit to free
    _wire.send(ctrl, {"op": "ready", "ok": True, "plan": plan, "pid_in_namespace": os.getpid()})
    _serve(ctrl, plan, bpf, iso)


if __name__ == "__main__":
    main()
