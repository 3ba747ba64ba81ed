"""Judges per answer type, the tool reward, and the LLM judge against a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import pydantic
import pytest
from fake_openai import FakeOpenAIServer

from pyvision_env.errors import ConfigError
from pyvision_env.rewards import (
    ANSWER_TYPES,
    LLMJudge,
    LLMJudgeConfig,
    RewardComponents,
    episode_reward,
    judge,
    judge_math,
    mra_score,
    parse_number,
    tool_reward,
)

CHOICES = ["a dog", "a cat", "a red car", "none of these"]

# (answer_type, prediction, answer, opts, expected)
JUDGE_CASES = [
    # choice: letters in the usual forms
    ("choice", "B", "B", {}, 1.0),
    ("choice", "(B)", "B", {}, 1.0),
    ("choice", "B.", "B", {}, 1.0),
    ("choice", "B)", "B", {}, 1.0),
    ("choice", "b", "B", {}, 1.0),
    ("choice", "Answer: B", "B", {}, 1.0),
    ("choice", "The correct answer is (B).", "B", {}, 1.0),
    ("choice", "option b", "B", {}, 1.0),
    ("choice", "Answer: option C", "C", {}, 1.0),
    ("choice", "\\boxed{B}", "B", {}, 1.0),
    ("choice", "**B**", "B", {}, 1.0),
    ("choice", "\\text{B}", "B", {}, 1.0),
    ("choice", "I think the answer is B", "B", {}, 1.0),
    ("choice", "B. a cat", "B", {}, 1.0),
    ("choice", "B", "(B)", {}, 1.0),
    # choice: option text when the options are given
    ("choice", "a cat", "B", {"choices": CHOICES}, 1.0),
    ("choice", "The cat.", "B", {"choices": CHOICES}, 1.0),
    ("choice", "C. A red car", "C", {"choices": CHOICES}, 1.0),
    ("choice", "B", "a cat", {"choices": CHOICES}, 1.0),
    ("choice", "I think B", "B", {"choices": CHOICES}, 1.0),
    # choice: wrong, ambiguous, out of range
    ("choice", "A", "B", {}, 0.0),
    ("choice", "a dog", "B", {"choices": CHOICES}, 0.0),
    ("choice", "A or B", "B", {}, 0.0),
    ("choice", "(A) (B)", "B", {}, 0.0),
    ("choice", "A, B", "B", {"choices": CHOICES}, 0.0),
    ("choice", "The answer is A or B", "B", {}, 0.0),
    ("choice", "I think B", "B", {}, 0.0),  # without choices "I" is a candidate letter too
    ("choice", "E", "B", {"choices": CHOICES}, 0.0),
    ("choice", "", "B", {}, 0.0),
    ("choice", "a cat", "B", {}, 0.0),  # option text needs the options
    # number
    ("number", "12", "12", {}, 1.0),
    ("number", "1,234.5", "1234.5", {}, 1.0),
    ("number", "12%", "12", {}, 1.0),
    ("number", "0.12", "12%", {}, 1.0),
    ("number", "3/4", "0.75", {}, 1.0),
    ("number", "\\frac{3}{4}", "0.75", {}, 1.0),
    ("number", "-2e3", "-2000", {}, 1.0),
    ("number", "\u22123", "-3", {}, 1.0),
    ("number", "12 cm", "12", {}, 1.0),
    ("number", "about 5 apples", "5", {}, 1.0),
    ("number", "\\boxed{7}", "7", {}, 1.0),
    ("number", "12.1", "12", {}, 0.0),  # exact by default: no reward for a near miss
    ("number", "599", "600", {}, 0.0),
    ("number", "600.0", "600", {}, 1.0),
    ("number", "0.30000000000000004", "0.3", {}, 1.0),  # float noise is tolerated
    ("number", "0.33", "1/3", {}, 0.0),  # rounding is not
    ("number", "12345678901234567", "12345678901234568", {}, 0.0),  # exact beyond float precision
    ("number", "12.5", "12", {"rel_tol": 0.05}, 1.0),
    ("number", "12.1", "12", {"abs_tol": 0.2}, 1.0),
    ("number", "0", "0", {}, 1.0),
    ("number", "12.5", "12", {}, 0.0),
    ("number", "13", "12", {}, 0.0),
    ("number", "0.12", "12", {}, 0.0),
    ("number", "-12", "12", {}, 0.0),
    ("number", "no idea", "12", {}, 0.0),
    ("number", "1/0", "0", {}, 0.0),
    # mra: score by default, binary on request
    ("mra", "10", "10", {}, 1.0),
    ("mra", "9", "10", {}, 0.8),
    ("mra", "12 m", "10", {}, 0.6),
    ("mra", "7.5", "10", {}, 0.5),
    ("mra", "5", "10", {}, 0.0),
    ("mra", "none", "10", {}, 0.0),
    ("mra", "7.5", "10", {"binary": True}, 1.0),
    ("mra", "6", "10", {"binary": True}, 0.0),
    # text
    ("text", "The Cat.", "cat", {}, 1.0),
    ("text", "  a   red car! ", "Red car", {}, 1.0),
    ("text", "\\text{Paris}", "paris", {}, 1.0),
    ("text", "cats", "cat", {}, 0.0),
    ("text", "dog", "cat", {}, 0.0),
    ("text", "the", "a", {}, 0.0),  # nothing left after normalisation is no answer
    # math
    ("math", "\\frac{1}{2}", "0.5", {}, 1.0),
    ("math", "1/2", "\\frac{1}{2}", {}, 1.0),
    ("math", "(x+1)^2", "x^2+2x+1", {}, 1.0),
    ("math", "x = 3", "3", {}, 1.0),
    ("math", "\\{2, 1\\}", "\\{1,2\\}", {}, 1.0),
    ("math", "2", "3", {}, 0.0),
    ("math", "\\frac{1}{3}", "0.5", {}, 0.0),
    ("math", "2x + 3", "3", {}, 0.0),
]


@pytest.mark.parametrize(("answer_type", "prediction", "answer", "opts", "expected"), JUDGE_CASES,
                         ids=[f"{c[0]}:{c[1]!r}-vs-{c[2]!r}" for c in JUDGE_CASES])
def test_judge(answer_type: str, prediction: str, answer: str, opts: dict, expected: float) -> None:
    assert judge(prediction, answer, answer_type, **opts) == pytest.approx(expected)


@pytest.mark.parametrize("answer_type", ANSWER_TYPES)
def test_no_prediction_scores_zero(answer_type: str) -> None:
    assert judge(None, "B" if answer_type in ("choice", "text") else "1", answer_type) == 0.0


def test_unknown_answer_type_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown answer_type 'numeric'; known: choice, number, mra, text, math$"):
        judge("1", "1", "numeric")


def test_unknown_judge_option_lists_accepted_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\) choices for answer_type 'number'; "
                                          r"accepted: rel_tol, abs_tol$"):
        judge("1", "1", "number", choices=["a"])
    with pytest.raises(ConfigError, match="accepted: none$"):
        judge("1", "1", "text", binary=True)


@pytest.mark.parametrize("answer_type", ["number", "mra"])
def test_non_numeric_answer_is_a_config_error(answer_type: str) -> None:
    with pytest.raises(ConfigError, match=f"the answer 'many' of a '{answer_type}' task is not a number"):
        judge("3", "many", answer_type)


def test_negative_tolerance_rejected() -> None:
    with pytest.raises(ConfigError, match="rel_tol must be >= 0, got -0.1"):
        judge("1", "1", "number", rel_tol=-0.1)


@pytest.mark.parametrize(("prediction", "answer", "expected"), [
    (10, 10, 1.0),
    (9, 10, 0.8),     # relative error 0.1 < 1 - t for t in 0.50 ... 0.85
    (11, 10, 0.8),
    (10.5, 10, 0.9),
    (5, 10, 0.0),     # relative error 0.5 is not < 0.5
    (0, 0, 1.0),
    (1, 0, 0.0),
    (-10, -10, 1.0),
])
def test_mra_score(prediction: float, answer: float, expected: float) -> None:
    assert mra_score(prediction, answer) == pytest.approx(expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("1,234.5 m", 1234.5), ("12%", 12.0), ("3/4", 0.75), ("-2e3", -2000.0), ("x = .5", 0.5), ("none", None),
])
def test_parse_number(text: str, expected: float | None) -> None:
    assert parse_number(text) == expected


def test_math_judge_works_outside_the_main_thread() -> None:
    """math-verify's signal-based timeout only works in the main thread; rollout threads must still be judged."""
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(judge_math, "\\frac{1}{2}", "0.5").result() == 1.0
        assert pool.submit(judge_math, "2", "3").result() == 0.0


def test_math_judge_falls_back_to_string_match_when_the_library_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import math_verify

    def broken(*args: object, **kwargs: object) -> bool:
        raise RuntimeError("boom")

    monkeypatch.setattr(math_verify, "verify", broken)
    assert judge_math("x + 1", "x+1") == 1.0
    assert judge_math("0.5", "\\frac{1}{2}") == 0.0


# -- tool reward and composition ----------------------------------------------------------------------

@pytest.mark.parametrize(("accuracy", "n_calls", "per_call", "cap", "expected"), [
    (1.0, 3, 0.1, None, 0.3),
    (1.0, 0, 0.1, None, 0.0),
    (0.0, 3, 0.1, None, 0.0),       # wrong answers earn no tool reward
    (1.0, 5, 0.1, 0.2, 0.2),        # capped
    (1.0, 1, 0.1, 0.2, 0.1),        # under the cap
    (1.0, 3, 0.0, None, 0.0),
    (0.6, 2, 0.1, None, 0.2),       # an MRA score >= 0.5 is right
    (0.45, 2, 0.1, None, 0.0),
])
def test_tool_reward(accuracy: float, n_calls: int, per_call: float, cap: float | None, expected: float) -> None:
    assert tool_reward(accuracy, n_calls, per_call, cap) == pytest.approx(expected)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"n_tool_calls": -1}, ValueError, "n_tool_calls must be >= 0, got -1"),
    ({"per_call": -0.1}, ConfigError, "tool_reward_per_call must be >= 0, got -0.1"),
    ({"cap": -1.0}, ConfigError, "tool_reward_cap must be >= 0 or None, got -1.0"),
])
def test_tool_reward_rejects_negative_values(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {"accuracy": 1.0, "n_tool_calls": 1} | kwargs
    with pytest.raises(error, match=re.escape(match)):
        tool_reward(**args)


@pytest.mark.parametrize(("accuracy", "n_calls", "kwargs", "expected"), [
    (1.0, 3, {}, RewardComponents(accuracy=1.0, tool=0.3, format=0.0, total=1.3)),
    (0.0, 3, {}, RewardComponents(accuracy=0.0, tool=0.0, format=0.0, total=0.0)),
    (1.0, 6, {"cap": 0.4}, RewardComponents(accuracy=1.0, tool=0.4, format=0.0, total=1.4)),
    (1.0, 2, {"per_call": 0.25}, RewardComponents(accuracy=1.0, tool=0.5, format=0.0, total=1.5)),
    (0.0, 1, {"format_reward": -0.2}, RewardComponents(accuracy=0.0, tool=0.0, format=-0.2, total=-0.2)),
])
def test_episode_reward(accuracy: float, n_calls: int, kwargs: dict, expected: RewardComponents) -> None:
    got = episode_reward(accuracy, n_calls, **kwargs)
    for field in ("accuracy", "tool", "format", "total"):
        assert getattr(got, field) == pytest.approx(getattr(expected, field)), field


# -- LLM judge ----------------------------------------------------------------------------------------

def _config(server: FakeOpenAIServer, **overrides: object) -> LLMJudgeConfig:
    return LLMJudgeConfig(base_url=server.base_url, model="judge", **overrides)


def test_llm_judge_scores_batches_and_caches_against_local_fake_openai_server(fake_server: FakeOpenAIServer) -> None:
    items = [("What color?", "blue", "Blue"), ("What color?", "blue", "red"), ("Shape?", "circle", "circle"),
             ("Shape?", "circle", "square"), ("What color?", "blue", "Blue"), ("What color?", "blue", None)]

    async def run(judge_: LLMJudge) -> tuple[list[float], float]:
        async with judge_:
            return await judge_.score_many(items), await judge_.score("What color?", "blue", "red")

    llm_judge = LLMJudge(_config(fake_server, max_concurrency=2))
    scores, again = asyncio.run(run(llm_judge))
    assert scores == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert again == 0.0
    # The repeat, the later single call and the missing prediction asked nothing; at most 2 at once.
    assert sorted(fake_server.predictions) == ["Blue", "circle", "red", "square"]
    assert fake_server.max_in_flight == 2
    # The cache outlives the event loop, and a new loop gets a working client.
    assert asyncio.run(run(llm_judge))[0] == scores
    assert asyncio.run(LLMJudge(_config(fake_server)).score("Q", "yes", "no")) == 0.0
    assert len(fake_server.predictions) == 5


def test_llm_judge_retries_server_errors_against_local_fake_openai_server(fake_server: FakeOpenAIServer) -> None:
    assert asyncio.run(LLMJudge(_config(fake_server, max_retries=1)).score("Q", "flaky", "flaky")) == 1.0
    assert fake_server.predictions == ["flaky", "flaky"]


def test_llm_judge_counts_replies_without_verdict_as_wrong_against_local_fake_openai_server(
        fake_server: FakeOpenAIServer) -> None:
    assert asyncio.run(LLMJudge(_config(fake_server, max_retries=2)).score("Q", "garbled", "garbled")) == 0.0
    assert fake_server.predictions == ["garbled"] * 3


def test_llm_judge_timeout_raises_against_local_fake_openai_server(fake_server: FakeOpenAIServer) -> None:
    import openai

    llm_judge = LLMJudge(_config(fake_server, timeout_s=0.2, max_retries=0))
    with pytest.raises(openai.APITimeoutError):
        asyncio.run(llm_judge.score("Q", "slow", "slow"))


def test_llm_judge_without_openai_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ImportError, match="needs the 'openai' package: pip install openai"):
        LLMJudge(LLMJudgeConfig(base_url="http://127.0.0.1:1/v1", model="judge"))


@pytest.mark.parametrize(("overrides", "match"), [
    ({"prompt_template": "Is {prediction} right?"}, "prompt_template lacks {question}, {answer}"),
    ({"max_concurrency": 0}, "greater than 0"),
    ({"temperature": -1}, "greater than or equal to 0"),
    ({"judge_model": "x"}, "Extra inputs are not permitted"),
])
def test_llm_judge_config_validation(overrides: dict, match: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=re.escape(match)):
        LLMJudgeConfig(base_url="http://127.0.0.1:1/v1", model="judge", **overrides)
