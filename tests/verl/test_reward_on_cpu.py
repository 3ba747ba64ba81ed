"""compute_score: the env's judges plus the capped tool reward, alone and through verl's naive reward manager."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import gymnasium as gym
import pytest
import ray
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

from pyvision_agent.policies.scripted import ScriptedPolicy
from pyvision_agent.rollout import play_episode
from pyvision_agent.verl.reward import compute_score
from pyvision_env.synthetic import suite
from pyvision_env.tasks import Task

IMAGE, VIDEO = "PyVisionImage-v0", "PyVisionVideo-v0"


def info_for(task: Task, **fields: Any) -> dict[str, Any]:
    """``extra_info`` as the naive manager passes it: the row's fields plus the agent loop's."""
    data = task.model_dump(exclude={"images"}) | {"metadata": {}}
    return {"index": 0, "split": "train", "env_id": IMAGE, "task": json.dumps(data), **fields}


@pytest.mark.parametrize(("prediction", "n_tool_calls", "kwargs", "score", "tool"), [
    ("3", 3, {}, 1.3, 0.3),
    ("3", 3, {"tool_reward_cap": 0.2}, 1.2, 0.2),
    ("3", 3, {"tool_reward_per_call": 0.05}, 1.15, 0.15),
    ("3", 0, {}, 1.0, 0.0),
    ("4", 3, {}, 0.0, 0.0),   # tools pay only for a right answer
    (None, 2, {}, 0.0, 0.0),  # no answer
])
def test_score_is_accuracy_plus_tool_reward_for_right_answers(prediction, n_tool_calls, kwargs, score, tool):
    task = suite("synthetic-image")[0]  # answer "3", a number
    result = compute_score(task.data_source, "ignored", task.answer,
                           info_for(task, prediction=prediction, n_tool_calls=n_tool_calls, broken=False,
                                    end_reason="answered"), **kwargs)
    accuracy = 1.0 if score else 0.0
    assert result == pytest.approx({"score": score, "acc": accuracy, "accuracy": accuracy, "tool_reward": tool,
                                    "n_tool_calls": float(n_tool_calls), "broken": 0.0, "malformed": 0.0,
                                    "end_reason": "answered", "pred": prediction or ""})


def test_judges_follow_the_task_answer_type():
    choice = suite("synthetic-image")[2]  # choices A..I, answer a letter
    option = choice.choices["ABCDEFGHI".index(choice.answer)]
    assert compute_score("s", "", choice.answer, info_for(choice, prediction=option))["acc"] == 1.0
    assert compute_score("s", "", choice.answer, info_for(choice, prediction=f"({choice.answer})"))["acc"] == 1.0
    mra = Task(question="How far?", answer="10", answer_type="mra")
    assert compute_score("s", "", "10", info_for(mra, prediction="9"))["acc"] == 1.0  # MRA 0.8: right
    assert compute_score("s", "", "10", info_for(mra, prediction="4"))["acc"] == 0.0
    graded = compute_score("s", "", "10", info_for(mra, prediction="9", n_tool_calls=2), mra_reward="graded")
    assert (graded["acc"], graded["tool_reward"], graded["score"]) == pytest.approx((0.8, 0.2, 1.0))


@pytest.mark.parametrize(("data_source", "ground_truth", "prediction", "accuracy"), [
    ("vstar", "A", "A", 1.0),                # was 0: a one-letter text answer lost its letter to the article rule
    ("vstar", "B", "\\boxed{'B'}", 1.0),    # their prompt shows the quotes
    ("vstar", "B", "B. cotton", 1.0),
    ("vstar", "B", "C", 0.0),
    ("mathvista", "600", "599", 0.0),        # was 1: a 1% default tolerance
    ("vsi_numerical", "3.0", "3", 1.0),      # was 0: vsi_numerical rows are MRA
    ("vsi_numerical", "10", "7.5", 1.0),     # MRA 0.5: right under the binary default
])
def test_rows_without_a_task_are_judged_as_the_env_infers_them(data_source, ground_truth, prediction, accuracy):
    """PyVision-RL's rows carry no answer type: the answer and the data source decide, as in the env."""
    result = compute_score(data_source, f"<answer>{prediction}</answer>", ground_truth, {"question": "Which?"})
    assert result["acc"] == accuracy


def test_the_env_accuracy_from_the_agent_loop_wins():
    """Under profile pyvision_rl the env pays graded MRA; the loop reports it and the reward uses it."""
    task = Task(question="How far?", answer="10", data_source="vsi_numerical")
    result = compute_score("vsi_numerical", "", "10", info_for(task, prediction="9", accuracy=0.8, n_tool_calls=1))
    assert (result["acc"], result["tool_reward"], result["score"]) == pytest.approx((0.8, 0.1, 0.9))


def test_without_the_agent_loop_the_answer_is_read_from_the_response():
    task = suite("synthetic-image")[0]
    response = "<code>\n```python\nprint(3)\n```\n</code>\n<interpreter>3</interpreter><answer>\\boxed{3}</answer>"
    result = compute_score(task.data_source, response, task.answer, {"task": info_for(task)["task"]})
    assert (result["score"], result["pred"], result["n_tool_calls"], result["end_reason"]) == (1.0, "3", 0.0,
                                                                                                "unknown")
    assert compute_score(task.data_source, "no answer here", task.answer, None)["score"] == 0.0


def test_bad_settings_and_rows_fail_clearly():
    task = suite("synthetic-image")[0]
    with pytest.raises(ValueError, match="tool_reward_cap must be >= 0, got 0.1 and -1"):
        compute_score("s", "", "3", info_for(task, prediction="3"), tool_reward_cap=-1)
    with pytest.raises(ValueError, match="extra_info\\['task'\\] is not valid JSON"):
        compute_score("s", "", "3", {"task": "{not json", "prediction": "3"})


def play_in_env(env_id: str, task: Task, policy: ScriptedPolicy) -> dict[str, Any]:
    """The env's own episode with a scripted policy; returns the last step's info."""
    env = gym.make(env_id)
    try:
        return play_episode(env, policy, options={"task": task})[1]
    finally:
        env.close()


@pytest.mark.parametrize(("env_id", "index", "wrong"), [
    (IMAGE, 0, False), (IMAGE, 1, False), (IMAGE, 2, False), (IMAGE, 0, True), (VIDEO, 1, False)])
def test_score_equals_the_env_reward(env_id, index, wrong):
    task = suite("synthetic-image" if env_id == IMAGE else "synthetic-video")[index]
    code = [f"Let me look.\n<code>\n```python\n{c.strip()}\n```\n</code>" for c in task.metadata["solution"]]
    policy = ScriptedPolicy([*code, "<answer>\\boxed{no idea}</answer>"]) if wrong else ScriptedPolicy()
    info = play_in_env(env_id, task, policy)
    fields = {"prediction": info["prediction"], "n_tool_calls": info["n_tool_calls"], "end_reason": info["end_reason"]}
    result = compute_score(task.data_source, "", task.answer, info_for(task, **fields))
    assert result["score"] == pytest.approx(info["reward_components"]["total"])
    assert result["acc"] == info["reward_components"]["accuracy"] == (0.0 if wrong else 1.0)


@pytest.fixture(scope="module")
def reward_worker(compose_config: Any) -> Any:
    """verl's RewardLoopWorker as the trainer runs it: a Ray actor loading compute_score from the config."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    config = compose_config("reward.reward_manager.name=naive",
                            "reward.custom_reward_function.path=pkg://pyvision_agent.verl.reward",
                            "reward.custom_reward_function.name=compute_score",
                            "+reward.custom_reward_function.reward_kwargs.tool_reward_cap=0.15")
    actor = ray.remote(RewardLoopWorker).remote(config, None)
    yield actor, config
    ray.kill(actor)
    if started:
        ray.shutdown()


def test_reward_through_verl_naive_manager_after_the_agent_loop(reward_worker, make_loop, make_row, scripted,
                                                                 postprocess):
    """The trainer's path: the loop's output is postprocessed by verl's worker code, which builds the
    DataProto and sends it to the reward actor; the naive manager merges the loop's extra fields into
    extra_info and calls compute_score with the configured reward_kwargs (a 0.15 cap here)."""
    actor, config = reward_worker
    task = suite("synthetic-image")[1]  # read the label: two code turns
    row = make_row(task)
    solution = [scripted.code(code) for code in task.metadata["solution"]]
    cases = {"right": [*solution, scripted.answer(task.answer)],
             "wrong": [*solution, scripted.answer("0000")],
             "malformed first": ["The label says something.", *solution, scripted.answer(task.answer)]}
    for name, turns in cases.items():
        async def main(turns: list[str] = turns) -> Any:
            return await make_loop(scripted(turns)).run({"temperature": 1.0, "logprobs": False}, **row)

        out = asyncio.run(main())
        post = postprocess(out, row, config, reward_handles=[actor])
        right = name != "wrong"
        expected = {"score": 1.15 if right else 0.0, "acc": float(right), "accuracy": float(right),
                    "tool_reward": 0.15 if right else 0.0, "n_tool_calls": 2.0,
                    "broken": 0.0, "malformed": 1.0 if name == "malformed first" else 0.0,
                    "end_reason": "answered", "pred": task.answer if right else "0000"}
        assert post.extra_fields["reward_extra_info"] == pytest.approx(expected), name
        assert post.reward_score == pytest.approx(expected["score"]), name
