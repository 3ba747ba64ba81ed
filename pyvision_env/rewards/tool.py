"""The accumulative tool reward and the composition of an episode's reward."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .rules import is_right


def tool_reward(accuracy: float, n_tool_calls: int, per_call: float = 0.1, cap: float | None = None) -> float:
    """PyVision-RL's accumulative tool reward: ``per_call * n_tool_calls`` for a right answer, else 0.

    Only right answers earn it, so calling tools never pays by itself; failed calls count too (they
    are tool use). ``cap`` bounds it (None: no cap, as in the paper).
    """
    if n_tool_calls < 0:
        raise ValueError(f"n_tool_calls must be >= 0, got {n_tool_calls}")
    if per_call < 0:
        raise ConfigError(f"tool_reward_per_call must be >= 0, got {per_call}")
    if cap is not None and cap < 0:
        raise ConfigError(f"tool_reward_cap must be >= 0 or None, got {cap}")
    if not is_right(accuracy):
        return 0.0
    reward = per_call * n_tool_calls
    return reward if cap is None else min(reward, cap)


@dataclass(frozen=True)
class RewardComponents:
    """The parts of an episode's reward, kept apart so training logs can show which one moved."""

    accuracy: float
    """The accuracy term (:func:`~pyvision_env.rewards.accuracy_of`): 0 or 1, or the graded MRA score;
    0 without an answer."""
    tool: float
    """The accumulative tool reward (:func:`tool_reward`)."""
    format: float
    """The caller's format term (0 by default)."""
    total: float
    """accuracy + tool + format."""


def episode_reward(accuracy: float, n_tool_calls: int, *, per_call: float = 0.1, cap: float | None = None,
                   format_reward: float = 0.0) -> RewardComponents:
    """Compose an episode's reward: accuracy + tool reward + format term.

    The format term is 0 by default: PyVision-RL's released reward has none (format errors cost the
    model its turns instead). Pass a negative ``format_reward`` to penalise malformed episodes.
    """
    tool = tool_reward(accuracy, n_tool_calls, per_call, cap)
    return RewardComponents(accuracy=accuracy, tool=tool, format=format_reward,
                            total=accuracy + tool + format_reward)


__all__ = ["RewardComponents", "episode_reward", "tool_reward"]
