"""A policy without a model: plays given turns, or a synthetic task's scripted solution.

It makes the demo, the tests and the rollout benchmark independent of any VLM: the synthetic solutions
compute their answers from the pixels inside the sandbox, so a right answer proves the whole loop
(prompt, code, frames, judge).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..episode import Episode, Turn
from .base import Policy

_ANSWER = re.compile(r"ANSWER:\s*(.+)")


class ScriptedPolicy(Policy):
    """With ``turns``: plays them in order (then repeats the last one). Without: plays each code block
    of ``episode.task.metadata["solution"]`` in the ``pyvision`` dialect, then
    ``<answer>\\boxed{value}</answer>`` with the value after the last ``ANSWER:`` the interpreter printed."""

    name = "scripted"

    def __init__(self, turns: Sequence[str] | None = None) -> None:
        if turns is not None and not turns:
            raise ValueError("turns must hold at least one turn")
        self.turns = list(turns) if turns is not None else None

    def act(self, episode: Episode) -> Turn:
        k = len(episode.turns)
        if self.turns is not None:
            return Turn(self.turns[min(k, len(self.turns) - 1)], finish_reason="stop")
        task = episode.task
        solution = task.metadata.get("solution") if task is not None else None
        if not solution:
            raise ValueError(f"task {getattr(task, 'id', None)!r} has no scripted solution "
                             "(metadata['solution']); give ScriptedPolicy(turns=[...]) instead")
        if k < len(solution):
            code = solution[k].strip()
            text = f"Let me compute this with code.\n<code>\n```python\n{code}\n```\n</code>"
            return Turn(text, finish_reason="stop")
        found = [m for obs in episode.observations[1:] for m in _ANSWER.findall(obs.text)]
        answer = found[-1].strip() if found else "unknown"
        return Turn(f"<answer>\\boxed{{{answer}}}</answer>", finish_reason="stop")

    def describe(self) -> dict:
        return {"policy": self.name, "turns": "given" if self.turns is not None else "task solution"}
