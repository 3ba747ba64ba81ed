"""The zygote: started once per host process, preloads the heavy imports, forks one worker per episode.

Run as a script (``python _zygote.py CONTROL_FD OPTIONS_JSON``), not with ``-m``: a package import would
run ``pyvision_env/__init__.py`` and start threads before the namespaces are made (``unshare`` of a
user namespace needs a single-threaded process). The sequence is:

1. launcher: user + network + PID namespaces (stdlib only), then fork: the child is PID 1 of a PID
   namespace this user namespace owns, so it may make a nested PID namespace for every worker;
2. zygote: import numpy, PIL, cv2, matplotlib (Agg), the video backend and the worker code, warm them;
3. loop on the host's control socket: ``spawn`` forks a worker (PID 1 of its own PID namespace, so
   killing it kills all it started), ``wait`` reaps one; EOF (the host exited or died) ends everything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sys
import time


def _load_isolation():  # by path: importing the package here would defeat the point (see above)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_isolation.py")
    spec = importlib.util.spec_from_file_location("_pyvision_isolation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _enter_namespaces(iso, options: dict) -> dict:
    plan = {"netns": False, "pidns": False, "landlock_abi": 0, "seccomp": False, "problems": []}
    if options["mode"] == "none":
        return plan
    if options["use_namespaces"]:
        try:
            iso.enter_user_namespace(net=True, pid=True)
            plan["netns"] = plan["pidns"] = True
        except OSError as exc:
            plan["problems"].append(f"user namespaces refused ({exc})")
    return plan


def _preload() -> None:
    import av  # noqa: F401
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


def _serve(ctrl: socket.socket, plan: dict, iso) -> None:
    from pyvision_env.sandbox import _wire, _worker

    pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC) if plan["pidns"] else -1
    children: set[int] = set()
    statuses: dict[int, int] = {}
    while True:
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
                ctrl.close()
                if pidns_fd >= 0:
                    os.close(pidns_fd)
                try:
                    _worker.main(socket.socket(fileno=msg.fds[0]), dict(msg.header, isolation=plan), msg.fds[1:])
                finally:
                    os._exit(1)  # a worker never returns into the zygote's loop
            if plan["pidns"]:
                iso.setns(pidns_fd, iso.CLONE_NEWPID)
            for fd in msg.fds:
                os.close(fd)
            children.add(pid)
            _wire.send(ctrl, {"op": "spawned", "zpid": pid})
        elif op == "wait":
            zpid = msg.header["zpid"]
            status = statuses.pop(zpid, None)
            deadline = time.monotonic() + 2.0
            while status is None and zpid in children and time.monotonic() < deadline:
                done, st = os.waitpid(zpid, os.WNOHANG)
                if done:
                    status = st
                else:
                    time.sleep(0.0005)
            children.discard(zpid)
            _wire.send(ctrl, {"op": "waited", "zpid": zpid, "status": status})
        # reap whatever else ended, keeping statuses for a later "wait"
        while children:
            try:
                done, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not done:
                break
            if done in children:
                children.discard(done)
                statuses[done] = st
    for pid in children:
        try:
            os.killpg(pid, signal.SIGKILL) if not plan["pidns"] else os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)


def main() -> None:
    ctrl_fd, options = int(sys.argv[1]), json.loads(sys.argv[2])
    iso = _load_isolation()
    plan = _enter_namespaces(iso, options)
    if plan["pidns"]:
        pid = os.fork()
        if pid:  # the launcher: outlive nothing, report the zygote's fate
            os.close(ctrl_fd)
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    ctrl = socket.socket(fileno=ctrl_fd)
    from pyvision_env.sandbox import _wire

    try:
        _preload()
    except Exception as exc:  # noqa: BLE001 - the host turns this into SandboxStartError
        _wire.send(ctrl, {"op": "ready", "ok": False, "error": f"preloading failed: {exc!r}"})
        os._exit(1)
    if options["mode"] != "none":
        plan["landlock_abi"] = iso.landlock_abi()
        if not plan["landlock_abi"]:
            plan["problems"].append("Landlock unavailable: writes outside the scratch directory are not blocked")
        if not plan["netns"]:
            try:
                import pyseccomp  # noqa: F401

                plan["seccomp"] = True
            except ImportError as exc:
                plan["problems"].append(f"no seccomp fallback for the network ({exc})")
    threads = _thread_count()
    if threads != 1:
        _wire.send(ctrl, {"op": "ready", "ok": False,
                          "error": f"zygote has {threads} threads after preloading; fork would be unsafe"})
        os._exit(1)
    _wire.send(ctrl, {"op": "ready", "ok": True, "plan": plan, "pid_in_namespace": os.getpid()})
    _serve(ctrl, plan, iso)


if __name__ == "__main__":
    main()
