"""An OpenAI-compatible chat server as a policy: ``vllm serve``, SGLang, hosted APIs.

Why it is built this way:

- Requests run on one private event loop in a daemon thread (:class:`BackgroundLoop`). The async
  client's connection pool and the concurrency semaphore belong to one loop, so ``act`` (sync, even
  from a notebook whose own loop is running) and ``aact`` (from any caller's loop) share both, and
  ``max_concurrency`` bounds every request this policy makes.
- The whole conversation is sent every turn, images as data URLs. Encoding each frame once per
  episode (a cache in ``episode.state``) instead of once per turn keeps the cost flat as episodes
  grow: re-encoding every image on every call is what makes PyVision-RL's executor slow.
- Generation stops at ``</code>``; servers strip stop strings, so it is put back and the env sees a
  closed code block.
- Failures a caller can fix (API key, model name, context length, unreachable or stalled server)
  become errors that say what to change; transient ones (5xx, 429, timeouts) are first retried by the
  client with backoff.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any, Literal

import numpy as np

from ..episode import Episode, Turn, build_messages, encode_data_url
from .base import BackgroundLoop, ContextLengthError, Policy, PolicyRequestError, check_sampling

STOP = "</code>"
_OPEN = "<code>"
_CACHE = "openai_data_urls"
"""The key of the per-episode data-URL cache in ``episode.state``."""
_MISSING = "the OpenAI-compatible policy needs the openai client: pip install 'pyvision[agent]'"
_CONTEXT = re.compile(r"context length|context window|maximum context|too long|reduce the length", re.IGNORECASE)


class OpenAIPolicy(Policy):
    """Plays turns with a chat model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    Args:
        model: The served model name (``vllm serve`` serves the path it was given, or
            ``--served-model-name``).
        base_url: The API root, e.g. ``http://localhost:8000/v1``; None: ``$OPENAI_BASE_URL`` or OpenAI's.
        api_key: None: ``$OPENAI_API_KEY``, else ``"EMPTY"`` (local servers take any key).
        max_tokens: Token budget of one turn.
        temperature: Sampling temperature (0: greedy).
        top_p: Nucleus sampling threshold in (0, 1].
        seed: Sent to servers that take one (vLLM, SGLang, OpenAI); None: unseeded.
        timeout_s: Seconds one request may take before it is abandoned (and retried).
        max_retries: Retries of a request after a timeout, a lost connection, 429 or 5xx (with backoff).
        max_concurrency: At most this many requests in flight from this policy, whatever calls it.
        image_format: ``jpeg`` (fast, small; the default) or ``png`` (exact pixels).
        extra_body: Extra request fields the server understands (e.g. vLLM's ``top_k``,
            ``structured_outputs``, ``chat_template_kwargs``).
    """

    name = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 max_tokens: int = 1024, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                 timeout_s: float = 120.0, max_retries: int = 2, max_concurrency: int = 16,
                 image_format: Literal["jpeg", "png"] = "jpeg", extra_body: dict[str, Any] | None = None) -> None:
        if not model:
            raise ValueError("model must name the served model (what the server's /v1/models lists)")
        check_sampling(max_tokens, temperature, top_p)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
        try:
            import openai
        except ImportError as exc:
            raise ImportError(_MISSING) from exc
        self._openai = openai
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.image_format = image_format
        self.extra_body = dict(extra_body or {})
        self._client = openai.AsyncOpenAI(api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                                          base_url=base_url, timeout=timeout_s, max_retries=max_retries)
        self.base_url = str(self._client.base_url)
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._loop = BackgroundLoop("pyvision-openai")

    def messages(self, episode: Episode) -> list[dict[str, Any]]:
        """The request's messages: the episode with its images as data URLs, each frame encoded once
        per episode (the cache lives in ``episode.state``, keyed by the frame's array)."""
        cache: dict[int, tuple[np.ndarray, str]] = episode.state.setdefault(_CACHE, {})

        def encode(image: np.ndarray) -> str:
            hit = cache.get(id(image))
            if hit is None or hit[0] is not image:  # the array is kept in the entry, so its id is not reused
                hit = cache[id(image)] = (image, encode_data_url(image, fmt=self.image_format))
            return hit[1]

        return build_messages(episode, images="data_url", encode=encode)

    def act(self, episode: Episode) -> Turn:
        return self._loop.run(self._complete(self.messages(episode)))

    async def aact(self, episode: Episode) -> Turn:
        return await self._loop.arun(self._complete(self.messages(episode)))

    async def _complete(self, messages: list[dict[str, Any]]) -> Turn:
        request: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                                   "temperature": self.temperature, "top_p": self.top_p, "stop": [STOP]}
        if self.seed is not None:
            request["seed"] = self.seed
        if self.extra_body:
            request["extra_body"] = self.extra_body
        async with self._semaphore:
            try:
                response = await self._client.chat.completions.create(**request)
            except self._openai.APIError as exc:
                raise await self._explain(exc) from exc
        if not response.choices:
            raise PolicyRequestError(f"{self.base_url} answered without a choice: {response!r}")
        choice = response.choices[0]
        text = choice.message.content or ""
        # "stop" with a <code> still open means the server stopped on </code> and stripped it.
        if choice.finish_reason == "stop" and text.rfind(_OPEN) > text.rfind(STOP):
            text += STOP
        return Turn(text, finish_reason=choice.finish_reason)

    async def _explain(self, exc: Exception) -> Exception:
        """The client's exception as one that says what to fix (the original stays as its cause)."""
        openai, where = self._openai, f"the server at {self.base_url}"
        attempts = f"{self.max_retries + 1} attempt(s)"
        if isinstance(exc, openai.APITimeoutError):
            return PolicyRequestError(f"{where} did not answer within timeout_s={self.timeout_s} s ({attempts}); "
                                      "raise timeout_s or max_retries, or check that the server is not stalled")
        if isinstance(exc, openai.APIConnectionError):
            return PolicyRequestError(f"cannot connect to {where} ({attempts}): is it running? base_url must be "
                                      "the API root, e.g. http://localhost:8000/v1")
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return PolicyRequestError(f"{where} refused the API key ({exc.status_code}): set OPENAI_API_KEY or "
                                      "pass api_key=...")
        if isinstance(exc, openai.NotFoundError):
            served = await self._served_models()
            if served is not None and self.model not in served:
                return PolicyRequestError(f"{where} does not serve a model named {self.model!r}; it serves: "
                                          f"{', '.join(served) or 'nothing'}. Pass one of these as the model")
            return PolicyRequestError(f"{where} answered 404 for /chat/completions: check base_url (the API "
                                      f"root, usually ending in /v1): {exc}")
        if isinstance(exc, openai.BadRequestError) and _CONTEXT.search(str(exc)):
            return ContextLengthError(f"the conversation plus max_tokens={self.max_tokens} does not fit "
                                      f"{self.model!r}'s context window ({where} said: {exc}); end the episode, "
                                      "lower max_tokens, or serve the model with a longer context")
        if isinstance(exc, openai.APIStatusError):
            retried = f" ({attempts})" if exc.status_code >= 500 or exc.status_code in (408, 409, 429) else ""
            return PolicyRequestError(f"{where} answered {exc.status_code}{retried}: {exc}")
        return PolicyRequestError(f"the request to {where} failed: {exc}")

    async def _served_models(self) -> list[str] | None:
        """The model names the server lists, or None when it cannot say."""
        try:
            return sorted([m.id async for m in self._client.models.list()])
        except self._openai.APIError:
            return None

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "model": self.model, "base_url": self.base_url, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed, "stop": [STOP],
                "max_concurrency": self.max_concurrency, "image_format": self.image_format,
                "extra_body": self.extra_body}

    def close(self) -> None:
        """Close the HTTP client and stop the private loop (idempotent)."""
        if not self._loop.loop.is_closed():
            self._loop.run(self._client.close())
            self._loop.close()
