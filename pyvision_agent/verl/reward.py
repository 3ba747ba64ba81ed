r"""The reward of a PyVision trajectory with verl's custom-reward signature.

Configure it with::

    reward.reward_manager.name=naive
    reward.custom_reward_function.path=pkg://pyvision_agent.verl.reward
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.tool_reward_cap=0.3     # optional; default: no cap

Use the ``naive`` reward manager: it merges the agent loop's ``extra_fields`` (``accuracy``,
``prediction``, ``n_tool_calls``, ``broken``...) into ``extra_info``; ``dapo`` does not. Accuracy is the
one the env judged (its judges, the task's ``answer_type``/``choices``/``judge_options``, and its
``mra_reward``: graded under ``profile: pyvision_rl``); the tool reward is PyVision-RL's
``tool_reward_per_call * n_tool_calls``, paid only for a right answer.
"""

from __future__ import annotations

import json
from typing import Any

from pyvision_env.errors import ConfigError
from pyvision_env.protocol import get_protocol
from pyvision_env.rewards import accuracy_of, episode_reward
from pyvision_env.tasks import Task, to_task


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict[str, Any] | None = None,
                  *, tool_reward_per_call: float = 0.1, tool_reward_cap: float | None = None,
                  mra_reward: str = "binary", **kwargs: Any) -> dict[str, Any]:
    r"""Score one trajectory: ``accuracy + tool_reward``, with the parts beside ``score``.

    ``accuracy`` is the env's, as the agent loop reports it. Without it (a response scored outside the
    agent loop, or a trajectory the loop stopped before the env could judge it) the answer the loop
    reports, or else the last ``<answer>`` of ``solution_str`` read with the PyVision protocol, is
    judged here with the row's task (``extra_info["task"]``; without one, a task built from
    ``ground_truth`` and ``data_source``, its answer type inferred as the env infers it: a
    ``vsi_numerical`` row is MRA, a letter is a choice...), an MRA score paid as ``mra_reward`` says.
    ``kwargs`` takes what verl's managers add (e.g. ``reward_router_address``).

    Returns ``score``, ``acc`` (verl's validation reads this name) and ``accuracy`` (0/1, or the graded
    MRA score), ``tool_reward``, ``n_tool_calls``, ``broken`` and ``malformed`` (1.0 when the loop
    marked the trajectory so), ``end_reason`` and ``pred`` (verl's majority-vote metrics read it).
    Every key is always present, as verl stacks them over the batch.
    """
    if tool_reward_per_call < 0 or (tool_reward_cap is not None and tool_reward_cap < 0):
        raise ValueError(f"tool_reward_per_call and tool_reward_cap must be >= 0, got {tool_reward_per_call} and "
                         f"{tool_reward_cap}")
    info = extra_info or {}
    prediction = info["prediction"] if "prediction" in info else get_protocol("pyvision").parse(solution_str).answer
    accuracy = info.get("accuracy")
    if accuracy is None:
        if ground_truth is None:
            accuracy = 0.0
        else:
            task = _task(info, str(ground_truth), data_source)
            accuracy = accuracy_of(task.judge(prediction), task.answer_type or "text", mra_reward)
    accuracy = float(accuracy)
    n_tool_calls = int(info.get("n_tool_calls") or 0)
    parts = episode_reward(accuracy, n_tool_calls, per_call=tool_reward_per_call, cap=tool_reward_cap)
    return {
        "score": parts.total,
        "acc": accuracy,
        "accuracy": accuracy,
        "tool_reward": parts.tool,
        "n_tool_calls": float(n_tool_calls),
        "broken": float(bool(info.get("broken", False))),
        "malformed": float(bool(info.get("malformed", False))),
        "end_reason": str(info.get("end_reason") or "unknown"),
        "pred": prediction or "",
    }


def _task(extra_info: dict[str, Any], ground_truth: str, data_source: str) -> Task:
    """The row's task (``extra_info["task"]``, a JSON string), or one built from the ground truth."""
    task = extra_info.get("task")
    if task is None:
        question = extra_info.get("question") or "(not given)"
        return to_task({"question": question, "answer": ground_truth, "data_source": data_source or "unknown"})
    try:
        parsed = json.loads(task) if isinstance(task, str) else task
    except json.JSONDecodeError as exc:
        raise ValueError(f"extra_info['task'] is not valid JSON ({exc}): {task[:200]!r}") from exc
    if not isinstance(parsed, dict):
        raise ValueError(f"extra_info['task'] must hold a JSON object, got {type(parsed).__name__}")
    try:
        return to_task({**parsed, "answer": ground_truth})
    except ConfigError as exc:
        raise ValueError(f"extra_info['task'] is not a valid task: {exc}") from exc
