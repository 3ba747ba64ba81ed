"""The policy interface: given the episode so far, return the next turn.

A policy implements :meth:`Policy.act` (sync) or :meth:`Policy.aact` (async), or both; the other one
comes for free. Rollouts call ``aact`` so that many episodes generate concurrently; custom RL code can
call ``act``. One policy object serves many episodes at once: anything it keeps per episode goes in
``episode.state`` (or ``episode.tokens`` for token-level policies), never on ``self``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pyvision_env.background import BackgroundLoop

from ..episode import Episode, Turn

__all__ = ["BackgroundLoop", "ContextLengthError", "Policy", "PolicyRequestError", "check_sampling"]


class Policy:
    """Base class of every policy. Subclasses override ``act`` or ``aact`` (or both)."""

    name: str = "policy"

    def act(self, episode: Episode) -> Turn:
        """The next turn of ``episode`` (blocking)."""
        if type(self).aact is Policy.aact:
            raise NotImplementedError(f"{type(self).__name__} implements neither act nor aact")
        return asyncio.run(self.aact(episode))

    async def aact(self, episode: Episode) -> Turn:
        """The next turn of ``episode`` without blocking the event loop (a sync ``act`` runs in a thread)."""
        if type(self).act is Policy.act:
            raise NotImplementedError(f"{type(self).__name__} implements neither act nor aact")
        return await asyncio.to_thread(self.act, episode)

    def describe(self) -> dict[str, Any]:
        """What identifies this policy in a trajectory record (model name, sampling settings...)."""
        return {"policy": self.name}

    def close(self) -> None:
        """Release clients, engines or models."""


class ContextLengthError(ValueError):
    """The conversation (plus the turn's token budget) no longer fits the model's context window: the
    episode cannot go on, so a rollout should end it rather than retry."""


class PolicyRequestError(RuntimeError):
    """The model server refused or failed a request in a way retrying does not fix; the message says
    what to change (key, model name, URL, timeout)."""


def check_sampling(max_tokens: int, temperature: float, top_p: float, *, max_tokens_name: str = "max_tokens") -> None:
    """Refuse sampling settings every backend would reject later (or worse, silently clamp)."""
    if max_tokens < 1:
        raise ValueError(f"{max_tokens_name} must be >= 1, got {max_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
