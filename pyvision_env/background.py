"""An event loop in a daemon thread, for async clients used from sync code (or from another loop)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    """An event loop in a daemon thread that owns a policy's async resources (clients, engines).

    Async clients and engines are bound to the loop they first ran on; giving them a private loop lets
    sync callers and callers on any other loop share them. A cancelled ``arun`` cancels the coroutine
    on the private loop too (so an engine aborts the request).
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the private loop and wait for its result (blocking)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("BackgroundLoop.run was called from its own loop (it would wait forever)")
        return asyncio.run_coroutine_threadsafe(coro, self._running()).result()

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the private loop without blocking the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._running()))

    def close(self) -> None:
        """Stop the loop and its thread (idempotent)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    def _running(self) -> asyncio.AbstractEventLoop:
        if self.loop.is_closed():
            raise RuntimeError("the policy is closed; make a new one")
        return self.loop
