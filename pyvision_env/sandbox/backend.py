"""Where an episode's interpreter runs: the one seam between the envs and the sandbox backends.

An env asks its backend for a session holding the episode's images, video and limits, and gets an
:class:`EpisodeSession` (``execute``/``aexecute``/``close``/``isolation``):

- ``local`` (the default): a worker forked from this process's zygote (:class:`~.Session`);
- ``ray``: a worker forked from the zygote of a long-lived actor on one of the Ray cluster's nodes
  (:mod:`pyvision_env.sandbox.ray_backend`, imported only when asked for, so ``ray`` stays optional).
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from ..errors import ConfigError
from ..media.images import ImageLike
from ._sandbox import Sandbox, Session, get_sandbox
from ._zygote_client import IsolationMode
from .config import SandboxConfig
from .results import ExecutionResult, IsolationReport

BackendName = Literal["local", "ray"]


class EpisodeSession(Protocol):
    """One episode's interpreter, wherever it runs. State persists across executions until ``close``."""

    config: SandboxConfig
    video_facts: dict[str, Any] | None
    """The video's frames, fps, width and height (what ``video_clue_0`` reports); None without a video."""

    @property
    def closed(self) -> bool: ...

    @property
    def isolation(self) -> IsolationReport: ...

    def execute(self, code: str, timeout: float | None = None) -> ExecutionResult: ...

    async def aexecute(self, code: str, timeout: float | None = None) -> ExecutionResult: ...

    def close(self) -> None: ...


class SandboxBackend(Protocol):
    """Opens episode sessions; shared by every env of a process that asks for the same settings."""

    def session(self, images: Sequence[ImageLike] = (), video: str | os.PathLike[str] | None = None,
                config: SandboxConfig | None = None) -> EpisodeSession: ...

    async def asession(self, images: Sequence[ImageLike] = (), video: str | os.PathLike[str] | None = None,
                       config: SandboxConfig | None = None) -> EpisodeSession: ...

    def node_of(self, session: EpisodeSession) -> str:
        """The machine the session runs on (``info["sandbox_node"]``)."""


class LocalBackend:
    """Sessions forked from this process's zygote: :func:`get_sandbox` behind the backend interface."""

    def __init__(self, isolation: IsolationMode = "auto") -> None:
        self.sandbox: Sandbox = get_sandbox(isolation)

    def session(self, images: Sequence[ImageLike] = (), video: str | os.PathLike[str] | None = None,
                config: SandboxConfig | None = None) -> Session:
        return self.sandbox.session(images, video, config)

    async def asession(self, images: Sequence[ImageLike] = (), video: str | os.PathLike[str] | None = None,
                       config: SandboxConfig | None = None) -> Session:
        return await self.sandbox.asession(images, video, config)

    def node_of(self, session: EpisodeSession) -> str:
        return socket.gethostname()


def get_backend(name: BackendName, isolation: IsolationMode = "auto", ray_node_resource: str | None = None
                ) -> SandboxBackend:
    """The process-wide backend for these settings (``ray`` connects to the running cluster on first use)."""
    if name == "local":
        return LocalBackend(isolation)
    if name != "ray":
        raise ConfigError(f"sandbox_backend must be 'local' or 'ray', got {name!r}")
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("sandbox_backend='ray' needs Ray: pip install 'pyvision[ray]'")
    from .ray_backend import get_ray_backend

    return get_ray_backend(isolation, ray_node_resource)


__all__ = ["BackendName", "EpisodeSession", "LocalBackend", "SandboxBackend", "get_backend"]
