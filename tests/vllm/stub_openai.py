"""A stdlib HTTP server speaking OpenAI's /v1/chat/completions, for what a real server will not do on
demand: fail, stall, refuse a key, or let a test read exactly what the client sent (images included)."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

from fake_openai import JSONHandler  # tests/ is on sys.path (tests/conftest.py)


class StubOpenAIServer(ThreadingHTTPServer):
    """Answers ``reply`` after ``delay_s``; the first ``failures`` requests get a 500; with ``stall`` it
    never answers (until closed); ``status`` answers every request with that error status.

    It records every request body and the most requests it had in flight at once.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, *, reply: str = "<answer>\\boxed{1}</answer>", delay_s: float = 0.0, failures: int = 0,
                 stall: bool = False, status: int | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reply, self.delay_s, self.failures, self.stall, self.status = reply, delay_s, failures, stall, status
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> StubOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()  # releases stalled handlers
        self.shutdown()
        self.server_close()
        self._thread.join()

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet when a client gave up waiting (the timeout tests do)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(JSONHandler):
    server: StubOpenAIServer

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            server.requests.append(body)
            n = len(server.requests)
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            if server.stall:
                server.closing.wait(60)
                return
            time.sleep(server.delay_s)
            if server.status is not None:
                self._send(server.status, {"error": {"message": f"stub status {server.status}", "type": "error"}})
            elif n <= server.failures:
                self._send(500, {"error": {"message": "overloaded", "type": "server_error"}}, {"retry-after-ms": "1"})
            else:
                self._send(200, {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0,
                                 "model": body["model"], "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                                                   "total_tokens": 2},
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": server.reply}}]})
        finally:
            with server.lock:
                server.in_flight -= 1
