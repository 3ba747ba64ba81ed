"""A real HTTP server on 127.0.0.1 that speaks OpenAI's /v1/chat/completions, for judge tests (no remote
API is reachable here). It answers 1 when the model answer equals the reference answer."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAIServer(ThreadingHTTPServer):
    """A stdlib HTTP server speaking /v1/chat/completions: it says 1 when the model answer equals the reference.

    Model answers steer it: "flaky" fails once with a 500, "slow" answers after 1 s, "garbled" never
    gives a verdict.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeOpenAIHandler)
        self.lock = threading.Lock()
        self.predictions: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet when a client gave up waiting (the timeout test does)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class JSONHandler(BaseHTTPRequestHandler):
    """Quiet JSON replies; the base of the test servers' handlers."""

    def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        pass


class FakeOpenAIHandler(JSONHandler):
    server: FakeOpenAIServer

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        assert self.path == "/v1/chat/completions", self.path
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        reference = re.search(r"^Reference answer: (.*)$", prompt, re.MULTILINE).group(1)
        prediction = re.search(r"^Model answer: (.*)$", prompt, re.MULTILINE).group(1)
        server = self.server
        with server.lock:
            server.predictions.append(prediction)
            first_flaky = prediction == "flaky" and server.predictions.count("flaky") == 1
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            time.sleep(1.0 if prediction == "slow" else 0.05)  # long enough for concurrent requests to overlap
            if first_flaky:
                self._send(500, {"error": {"message": "overloaded", "type": "server_error"}}, {"retry-after-ms": "1"})
                return
            if prediction == "garbled":
                content = "I cannot decide."
            elif prediction.lower() == reference.lower():
                content = "<think>Is it 0 or 1? Same meaning.</think>Judgement: 1"
            else:
                content = "0"
            self._send(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            })
        finally:
            with server.lock:
                server.in_flight -= 1
