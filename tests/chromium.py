"""A real headless Chromium driven over the DevTools protocol, for tests of the HTML pages we write.

Chromium speaks CDP over a pair of pipes (``--remote-debugging-pipe``: it reads commands from fd 3 and
writes replies to fd 4, each a JSON object ended by a NUL byte). That is what Puppeteer and Playwright
use: no WebDriver binary, no websocket library, no port to race for. Every wait has a deadline, so a
stuck browser fails the test with a message instead of hanging it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

INSTALL_HINT = "install it with: apt-get update && apt-get install -y chromium"
# The flags NOTES-machine.md checked for this machine: no sandbox (root in a container), no GPU, and nothing
# that reaches the network on its own.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--remote-debugging-pipe")


class ChromiumError(RuntimeError):
    """The browser is missing, died, timed out, or a CDP command or page script failed."""


def find_chromium() -> str:
    """The Chromium executable; a clear error naming the install command when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise ChromiumError(f"no Chromium found on PATH (looked for chromium, chromium-browser, google-chrome); "
                        f"{INSTALL_HINT}")


class Chromium:
    """One headless browser with one page. Use as a context manager; ``timeout_s`` bounds every command."""

    def __init__(self, *, width: int = 1280, height: int = 900, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self._profile = tempfile.mkdtemp(prefix="pyvision-chromium-")
        self._log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty browser must never block on it
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        def wire() -> None:
            """In the child: put the pipes at fds 3 and 4 (via fds >= 10, so neither clobbers the other)."""
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)
            os.close(high_r)
            os.close(high_w)

        self._proc = subprocess.Popen(
            [find_chromium(), *FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            close_fds=False, preexec_fn=wire)  # close_fds would close 3 and 4 after wire(); the parent's own
        # fds are non-inheritable (PEP 446), so nothing else leaks into the browser.
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        try:
            target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.resize(width, height)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the browser and remove its fresh profile directory."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    # --- the protocol -----------------------------------------------------------------------------------
    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a CDP command on the page and return its result."""
        return self._send(method, params, session=self._session)

    def _send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
              ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._read(deadline, f"the reply to {method}")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ChromiumError(f"{method} failed: {reply['error']}")
                return reply["result"]
            self._events.append(reply)

    def _read(self, deadline: float, what: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise ChromiumError(f"Chromium sent no {what} within {self.timeout_s} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")[-2000:]
                raise ChromiumError(f"Chromium exited (status {self._proc.poll()}) while waiting for {what}:\n{err}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    # --- what tests use ---------------------------------------------------------------------------------
    def resize(self, width: int, height: int) -> None:
        """Set the viewport (CSS pixels, scale 1): what a window of that size shows and lays out."""
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def load(self, path: str | Path) -> None:
        """Open a local file and wait for its load event (its scripts have run by then)."""
        self._events.clear()
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()})
        self.evaluate("new Promise(r => document.readyState === 'complete' ? r() : addEventListener('load', r))")

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (awaiting a promise) and return its JSON value."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise ChromiumError(f"page script failed: {details.get('exception', {}).get('description', details)}")
        return result["result"].get("value")

    def console_errors(self) -> list[str]:
        """Uncaught page exceptions seen so far (Runtime events), as text."""
        return [e["params"]["exceptionDetails"].get("exception", {}).get("description", "")
                for e in self._events if e.get("method") == "Runtime.exceptionThrown"]

    def screenshot(self, out: str | Path, *, full_page: bool = False) -> Path:
        """Save a PNG of the viewport (or of the whole page) to ``out``."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.send("Page.captureScreenshot", params)["data"]
        out = Path(out)
        out.write_bytes(base64.b64decode(data))
        return out
