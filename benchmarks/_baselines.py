"""The alternatives ``bench_sandbox.py`` and ``bench_env.py`` measure next to ours, each small and faithful to
its design.

* ``JupyterBackend``: an IPython kernel per episode via jupyter_client (what most code-interpreter tools
  run), over zmq's ipc transport (its fastest); on a timeout it interrupts, and restarts the kernel if the
  interrupt has not worked within the same grace our sandbox gives (0.2 s).
* ``PythonCBackend``: a fresh ``python -c`` per call, stateless (like the GEM peer's Python tool).
* ``PvrlBackend``: PyVision-RL's executor design, re-implemented: a multiprocessing Process per episode
  (Linux default context, fork) fed by two queues; the image PNG-encoded and base64'd into *every*
  request; ``plt.show()`` replaced in the code *text* by savefig-to-PNG + base64; and, like theirs, a
  timed-out worker is left running.

All preload numpy, PIL, cv2 and matplotlib (Agg) as our zygote does; frames come back as pixels (PNG
decoded on the host), so each row compares the same work.
"""

from __future__ import annotations

import base64
import io
import multiprocessing
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from contextlib import redirect_stdout
from typing import Any

import cv2  # noqa: F401 - imported before forking, as PyVision-RL's host has its imports
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _common import Reply  # noqa: E402 - the benchmarks folder is on sys.path (bench_*.py put it there)
from PIL import Image  # noqa: E402

_ENV = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
_IMPORTS = 'import base64, io, sys\nimport cv2, matplotlib\nmatplotlib.use("Agg")\nimport matplotlib.pyplot as plt\n' \
           'import numpy as np\nfrom PIL import Image\n'
_SHOW_PIL = {"frame": "display(Image.fromarray(frame))", "image": "display(image_clue_0)"}
_SHOW_PNG = """\
def _show(*args, **kwargs):
    for num in plt.get_fignums():
        buf = io.BytesIO(); plt.figure(num).savefig(buf, format="png"); plt.close(num); _emit(buf.getvalue())
plt.show = _show
"""


def _inputs(image: str | None, video: str | None) -> str:
    src = f"image_clue_0 = Image.open({image!r}).convert('RGB')\n" if image else ""
    return src + (f"from decord import VideoReader, cpu\nvideo_clue_0 = VideoReader({video!r}, ctx=cpu(0))\n"
                  if video else "")


def _pixels(png_base64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64))).convert("RGB"))


class JupyterEpisode:
    def __init__(self, image: str | None, video: str | None, workdir: str, grace_s: float) -> None:
        from jupyter_client import KernelManager

        self.setup = _IMPORTS + "from IPython.display import display, Image as _PNG\n" \
            "_emit = lambda png: display(_PNG(data=png))\n" + _SHOW_PNG + _inputs(image, video)
        self.grace_s = grace_s
        name = os.path.join(workdir, uuid.uuid4().hex[:12])
        self.km = KernelManager(kernel_name="python3", transport="ipc", ip=name, connection_file=name + ".json")
        self.km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_ENV, cwd=workdir)
        self.pid = self.km.provisioner.process.pid
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self._ready()
        except BaseException:
            self.close()
            raise

    def _ready(self) -> None:
        self.kc.wait_for_ready(timeout=120)
        reply = self.execute(self.setup, 120)
        if reply.error:
            raise RuntimeError(f"the kernel's preload failed: {reply.error}")

    def execute(self, code: str, timeout: float = 30.0) -> Reply:
        msg_id = self.kc.execute(code, store_history=False, allow_stdin=False)
        reply = self._collect(msg_id, time.perf_counter() + timeout)
        if reply is None:
            self.km.interrupt_kernel()  # SIGINT: KeyboardInterrupt in the cell, the kernel's state survives
            reply = self._collect(msg_id, time.perf_counter() + self.grace_s)
            if reply is None:
                self.km.restart_kernel(now=True)
                self.pid = self.km.provisioner.process.pid
                self._ready()
            return Reply(error="timeout", timed_out=True)
        return reply

    def _collect(self, msg_id: str, deadline: float) -> Reply | None:
        """Outputs of ``msg_id`` until the kernel is idle again; None if the deadline passes first."""
        out, frames, error = [], [], None
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(deadline - time.perf_counter(), 0.0))
            except queue.Empty:
                return None
            kind, content = msg["msg_type"], msg["content"]
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if kind == "stream":
                out.append(content["text"])
            elif kind in ("display_data", "execute_result"):
                if "image/png" in content["data"]:
                    frames.append(_pixels(content["data"]["image/png"]))
                else:
                    out.append(content["data"].get("text/plain", "") + "\n")
            elif kind == "error":
                error = "\n".join(content["traceback"])
            elif kind == "status" and content["execution_state"] == "idle":
                break
        while self.kc.get_shell_msg(timeout=30)["parent_header"].get("msg_id") != msg_id:
            pass  # read the execute_reply too, as every client must
        return Reply("".join(out), frames, error)

    def close(self) -> None:
        try:
            self.kc.stop_channels()
        finally:
            self.km.shutdown_kernel(now=True)


class JupyterBackend:
    name, stateless, show, max_concurrency = "jupyter", False, _SHOW_PIL, 1 << 20

    def __init__(self, grace_s: float = 0.2) -> None:
        self.grace_s = grace_s
        self.workdir: str | None = None  # connection files and ipc sockets, made at the first open

    def open(self, image: str | None, video: str | None = None) -> JupyterEpisode:
        self.workdir = self.workdir or tempfile.mkdtemp(prefix="bench-jupyter-")
        return JupyterEpisode(image, video, self.workdir, self.grace_s)

    def close(self) -> None:
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


_MARK = "\x1eFRAME:"
_PYC_DISPLAY = f"""\
def _emit(png):
    sys.stdout.write("\\n{_MARK}" + base64.b64encode(png).decode() + "\\n")
def display(*objs):
    for obj in objs:
        if isinstance(obj, Image.Image):
            buf = io.BytesIO(); obj.save(buf, format="PNG"); _emit(buf.getvalue())
        else:
            print(repr(obj))
"""


class PythonCEpisode:
    """Nothing persists: every call is a new interpreter that imports, loads the inputs, runs and exits."""

    pid = None

    def __init__(self, image: str | None, video: str | None) -> None:
        self.prelude = _IMPORTS + _PYC_DISPLAY + _SHOW_PNG + _inputs(image, video)
        reply = self.execute("pass")  # "ready" = one interpreter got as far as having the image loaded
        if reply.error:
            raise RuntimeError(reply.error)

    def execute(self, code: str, timeout: float = 30.0) -> Reply:
        try:
            proc = subprocess.run([sys.executable, "-c", f"{self.prelude}exec(compile({code!r}, '<code>', 'exec'))"],
                                  capture_output=True, text=True, timeout=timeout, env=_ENV)
        except subprocess.TimeoutExpired:  # subprocess.run has killed and reaped it
            return Reply(error="timeout", timed_out=True)
        lines = proc.stdout.split("\n")
        frames = [_pixels(line[len(_MARK):]) for line in lines if line.startswith(_MARK)]
        stdout = "\n".join(line for line in lines if not line.startswith(_MARK))
        return Reply(stdout, frames, proc.stderr if proc.returncode else None)

    def close(self) -> None:
        pass


class PythonCBackend:
    # 32 concurrent episodes = 192 interpreter starts: minutes on a small machine, and nothing new to learn
    name, stateless, show, max_concurrency = "python -c", True, _SHOW_PIL, 8

    def open(self, image: str | None, video: str | None = None) -> PythonCEpisode:
        return PythonCEpisode(image, video)

    def close(self) -> None:
        pass


_PVRL_HEADER = _IMPORTS + """\
_captured_figures = []
def _internal_capture_plt_figure():
    buf = io.BytesIO()
    plt.savefig(buf, format="png")
    _captured_figures.append(base64.b64encode(buf.getvalue()).decode())
    plt.close()
"""
_FORBIDDEN = re.compile(r"(\s|^)?(input|os\.system|subprocess)\(")


def _pvrl_runtime(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The episode's namespace in the worker, built from the chat messages (images as data URLs)."""
    ns: dict[str, Any] = {}
    exec(_PVRL_HEADER, ns)
    for item in messages[0]["content"]:
        if item["type"] == "image_url":
            ns["image_clue_0"] = Image.open(io.BytesIO(base64.b64decode(item["image_url"]["url"].split(",")[1])))
            ns["image_clue_0"].load()  # "loaded and ready" at reset (theirs decodes lazily, at first use)
        elif item["type"] == "video_hint_path":
            exec(_inputs(None, item["video_hint_path"]), ns)
    return ns


def _pvrl_worker(inbox: Any, outbox: Any) -> None:
    ns = None
    while (task := inbox.get()) is not None:
        try:
            if task["type"] == "init" or ns is None:
                ns = _pvrl_runtime(task["messages"])
            if task["type"] == "init":
                outbox.put({"status": "success"})
                continue
            if _FORBIDDEN.search(task["code"]):
                raise RuntimeError("Forbidden function calls detected")
            before, text = len(ns["_captured_figures"]), io.StringIO()
            try:
                with redirect_stdout(text):
                    exec(task["code"].replace("plt.show()", "_internal_capture_plt_figure()"), ns)
            except Exception:
                plt.close("all")
                raise
            outbox.put({"status": "success", "text": text.getvalue().strip(),
                        "images": ns["_captured_figures"][before:]})
        except Exception as exc:  # noqa: BLE001 - reported to the host, as theirs does
            outbox.put({"status": "error", "error": str(exc), "traceback": traceback.format_exc()})


class PvrlEpisode:
    def __init__(self, ctx: Any, image: Image.Image | None, video: str | None) -> None:
        self.image, self.video, self.stuck = image, video, False
        self.inbox, self.outbox = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=_pvrl_worker, args=(self.inbox, self.outbox), daemon=True)
        self.proc.start()
        self.pid = self.proc.pid
        self.inbox.put({"type": "init", "messages": self._messages()})
        try:
            self.outbox.get(timeout=120)
        except BaseException:
            self.close()
            raise

    def _messages(self) -> list[dict[str, Any]]:
        """The chat messages, rebuilt for every request: the image is PNG-encoded and base64'd each time."""
        content: list[dict[str, Any]] = []
        if self.image is not None:
            buf = io.BytesIO()
            self.image.save(buf, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
            content.append({"type": "image_url", "image_url": {"url": url}})
        if self.video:
            content.append({"type": "video_hint_path", "video_hint_path": self.video})
        return [{"role": "user", "content": content}]

    def execute(self, code: str, timeout: float = 30.0) -> Reply:
        self.inbox.put({"type": "execute", "code": code, "messages": self._messages()})
        try:
            res = self.outbox.get(timeout=timeout)
        except queue.Empty:
            self.stuck = True  # as theirs: the worker is not stopped, later requests queue behind it
            return Reply(error="Execution timeout", timed_out=True)
        if res["status"] != "success":
            return Reply(error=res["traceback"])
        return Reply(res["text"], [_pixels(s) for s in res["images"]])

    def close(self) -> None:
        if self.proc.is_alive() and not self.stuck:
            self.inbox.put(None)
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        for q in (self.inbox, self.outbox):
            q.close()
            q.cancel_join_thread()


class PvrlBackend:
    name, stateless, max_concurrency = "pyvision-rl", False, 1 << 20
    # only plt.show() yields images: an array is shown at full size as a figure of its own pixel size
    show = {key: f"_a = np.asarray({expr}); plt.figure(figsize=(_a.shape[1] / 100, _a.shape[0] / 100), dpi=100); "
                 "plt.figimage(_a); plt.show()" for key, expr in (("frame", "frame"), ("image", "image_clue_0"))}

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("fork")
        self.images: dict[str, Image.Image] = {}  # decoded on the host once, as their dataset hands them over

    def open(self, image: str | None, video: str | None = None) -> PvrlEpisode:
        if image and image not in self.images:
            self.images[image] = Image.open(image).convert("RGB")
        return PvrlEpisode(self.ctx, self.images[image] if image else None, video)

    def close(self) -> None:
        self.images.clear()


def make_backends() -> list[Any]:
    """Every alternative this environment can run (Jupyter needs jupyter_client and ipykernel)."""
    backends: list[Any] = [PvrlBackend(), PythonCBackend()]
    try:
        import ipykernel  # noqa: F401
        import jupyter_client  # noqa: F401
    except ImportError as exc:
        print(f"[bench] skipping the Jupyter baseline: {exc}", file=sys.stderr)
    else:
        backends.append(JupyterBackend())
    return backends
