"""The env checker ``gym.make`` puts around our envs instead of Gymnasium's own.

Gymnasium 1.4's :class:`~gymnasium.wrappers.PassiveEnvChecker` marks ``reset`` as checked *before* it
calls it. When that first reset raises (a task whose image is missing), the checker never records the
reset data it compares the first step against, and the next successful ``reset()`` + ``step()`` crash
inside the checker with ``TypeError: cannot unpack non-iterable NoneType object``. A bad task is an
everyday event for our users, so the ids are registered with ``disable_env_checker=True`` and this
checker as an additional wrapper: the same checks, except that a reset that raises leaves the checker
as it was, so they run on the next reset instead.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec
from gymnasium.wrappers import PassiveEnvChecker

__all__ = ["EnvChecker"]


class EnvChecker(PassiveEnvChecker):
    """:class:`~gymnasium.wrappers.PassiveEnvChecker` whose first-reset check survives a reset that raises."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        checked = self.checked_reset
        try:
            return super().reset(seed=seed, options=options)
        except BaseException:
            self.checked_reset = checked  # the check (and the data the first step is compared with) runs again
            raise

    @property
    def spec(self) -> EnvSpec | None:
        """The spec as a plain wrapper records it (this checker among ``additional_wrappers``), so that
        ``gym.make(env.spec)`` rebuilds the same stack; Gymnasium's checker would instead flip
        ``disable_env_checker`` and get its own checker added on top."""
        return gym.Wrapper.spec.fget(self)
