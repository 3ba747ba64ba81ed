r"""The reward of a PyVision trajectory with verl's custom-reward signature.

Configure it with::

    reward.reward_manager.name=naive
    reward.custom_reward_function.path=pkg://pyvision_agent.verl.reward
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.tool_reward_cap=0.3     # optional; default: no cap

Use the ``naive`` reward manager: it merges the agent loop's ``extra_fields`` (``prediction``,
``n_tool_calls``, ``broken``...) into ``extra_info``; ``dapo`` does not. Accuracy comes from the env's
judges (the task's ``answer_type`` and ``choices`` are in ``extra_info["task"]``); the tool reward is
PyVision-RL's ``tool_reward_per_call * n_tool_calls``, paid only for a right answer.
"""

from __future__ import annotations

import json
from typing import Any

from pyvision_env.protocol import get_protocol
from pyvision_env.rewards import episode_reward, is_right, judge


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict[str, Any] | None = None,
                  *, tool_reward_per_call: float = 0.1, tool_reward_cap: float | None = None,
                  **kwargs: Any) -> dict[str, Any]:
    r"""Score one trajectory: ``accuracy + tool_reward``, with the parts beside ``score``.

    ``prediction`` is the answer the env took from the last turn (the agent loop reports it); without
    an agent loop (``extra_info`` lacks it) the last ``<answer>`` of ``solution_str`` is read with the
    PyVision protocol. ``kwargs`` takes what verl's managers add (e.g. ``reward_router_address``).

    Returns ``score``, ``acc`` (verl's validation reads this name) and ``accuracy`` (both 0/1),
    ``tool_reward``, ``n_tool_calls``, ``broken`` (1.0 when the loop marked the trajectory unusable),
    ``end_reason`` and ``pred`` (verl's majority-vote metrics read it). Every key is always present,
    as verl stacks them over the batch.
    """
    if tool_reward_per_call < 0 or (tool_reward_cap is not None and tool_reward_cap < 0):
        raise ValueError(f"tool_reward_per_call and tool_reward_cap must be >= 0, got {tool_reward_per_call} and "
                         f"{tool_reward_cap}")
    info = extra_info or {}
    task = _task(info)
    prediction = info["prediction"] if "prediction" in info else get_protocol("pyvision").parse(solution_str).answer
    opts = {"choices": task["choices"]} if task.get("answer_type") == "choice" and task.get("choices") else {}
    right = ground_truth is not None and is_right(judge(prediction, str(ground_truth),
                                                          task.get("answer_type", "text"), **opts))
    accuracy = 1.0 if right else 0.0
    n_tool_calls = int(info.get("n_tool_calls") or 0)
    parts = episode_reward(accuracy, n_tool_calls, per_call=tool_reward_per_call, cap=tool_reward_cap)
    return {
        "score": parts.total,
        "acc": accuracy,
        "accuracy": accuracy,
        "tool_reward": parts.tool,
        "n_tool_calls": float(n_tool_calls),
        "broken": float(bool(info.get("broken", False))),
        "end_reason": str(info.get("end_reason") or "unknown"),
        "pred": prediction or "",
    }


def _task(extra_info: dict[str, Any]) -> dict[str, Any]:
    """The task dict of ``extra_info["task"]`` (a JSON string), or {} when the row has none."""
    task = extra_info.get("task")
    if task is None:
        return {}
    try:
        parsed = json.loads(task) if isinstance(task, str) else task
    except json.JSONDecodeError as exc:
        raise ValueError(f"extra_info['task'] is not valid JSON ({exc}): {task[:200]!r}") from exc
    if not isinstance(parsed, dict):
        raise ValueError(f"extra_info['task'] must hold a JSON object, got {type(parsed).__name__}")
    return parsed
