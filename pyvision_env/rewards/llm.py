"""The LLM judge: asks a model behind an OpenAI-compatible endpoint whether a prediction matches the answer.

For answers the rule judges cannot compare (free-form text). Async and batched, cached by
(question, answer, prediction), one HTTP client per event loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

logger = logging.getLogger(__name__)

DEFAULT_JUDGE_PROMPT = """You are grading a model's answer to a question about an image or a video.

Question: {question}
Reference answer: {answer}
Model answer: {prediction}

The model answer is correct if it means the same as the reference answer; wording, units and format may \
differ, but a number must match, and a hedge between several answers is wrong.
Reply with 1 if the model answer is correct and 0 if it is not, and nothing else."""

_VERDICT = re.compile(r"(?<![\d.])([01])(?!\d|\.\d)")


def _parse_verdict(reply: str) -> float | None:
    """The last standalone 0 or 1 of the reply after any ``</think>``, or None."""
    verdicts = _VERDICT.findall(reply.rsplit("</think>", 1)[-1])
    return float(verdicts[-1]) if verdicts else None


class LLMJudgeConfig(BaseModel):
    """Where and how to ask an OpenAI-compatible chat endpoint (vLLM, SGLang, OpenAI) for verdicts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str
    """The API root, e.g. ``http://localhost:8000/v1``."""
    model: str
    """The served model's name."""
    api_key: str = "EMPTY"
    """The key sent as a bearer token (local servers ignore it)."""
    max_concurrency: int = Field(16, gt=0)
    """Requests in flight at once, per event loop."""
    timeout_s: float = Field(60.0, gt=0)
    """Timeout of one request."""
    max_retries: int = Field(3, ge=0)
    """Retries of a failed request (connection errors, 408/429/5xx; the client backs off) and, separately,
    of a reply without a 0/1 verdict."""
    temperature: float = Field(0.0, ge=0)
    """Sampling temperature of the judge."""
    max_tokens: int = Field(32, gt=0)
    """Tokens the judge may generate; raise it for judges that think before answering."""
    prompt_template: str = DEFAULT_JUDGE_PROMPT
    """A ``str.format`` template with the fields ``{question}``, ``{answer}`` and ``{prediction}``."""

    @field_validator("prompt_template")
    @classmethod
    def _has_fields(cls, template: str) -> str:
        missing = [field for field in ("{question}", "{answer}", "{prediction}") if field not in template]
        if missing:
            raise ValueError(f"prompt_template lacks {', '.join(missing)}")
        return template


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as exc:
        raise ImportError("LLMJudge needs the 'openai' package: pip install openai "
                          "(or pip install 'pyvision[agent]')") from exc
    return openai


class LLMJudge:
    """Asks a model behind an OpenAI-compatible endpoint whether predictions match the answers.

    For answers the rule judges cannot compare (free-form text). Async and batched
    (:meth:`score_many`, at most ``max_concurrency`` requests at once), and cached by
    (question, answer, prediction) because GRPO groups repeat the same short answers. Requests that
    still fail after the retries raise the ``openai`` error (a judge outage must not pass for wrong
    answers); a reply without a verdict after the retries counts as wrong and is logged.
    """

    def __init__(self, config: LLMJudgeConfig) -> None:
        self.config = config
        self._openai = _import_openai()
        self._cache: dict[tuple[str, str, str], float] = {}
        # One client and semaphore per event loop: both are bound to the loop that first uses them.
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, asyncio.Semaphore]] = (
            weakref.WeakKeyDictionary())

    def _loop_state(self) -> tuple[Any, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if loop not in self._per_loop:
            client = self._openai.AsyncOpenAI(base_url=self.config.base_url, api_key=self.config.api_key,
                                              timeout=self.config.timeout_s, max_retries=self.config.max_retries)
            self._per_loop[loop] = (client, asyncio.Semaphore(self.config.max_concurrency))
        return self._per_loop[loop]

    async def score(self, question: str, answer: str, prediction: str | None) -> float:
        """1.0 if the judge finds the prediction right, else 0.0 (0.0 without asking when it is None)."""
        if prediction is None:
            return 0.0
        key = (question, answer, prediction)
        if key not in self._cache:
            self._cache[key] = await self._ask(key)
        return self._cache[key]

    async def score_many(self, items: Sequence[tuple[str, str, str | None]]) -> list[float]:
        """Scores of (question, answer, prediction) triples, asked concurrently; repeats are asked once."""
        unique = list(dict.fromkeys(items))
        scores = dict(zip(unique, await asyncio.gather(*(self.score(*item) for item in unique))))
        return [scores[item] for item in items]

    async def _ask(self, key: tuple[str, str, str]) -> float:
        question, answer, prediction = key
        prompt = self.config.prompt_template.format(question=question, answer=answer, prediction=prediction)
        client, semaphore = self._loop_state()
        async with semaphore:
            for _ in range(self.config.max_retries + 1):
                response = await client.chat.completions.create(
                    model=self.config.model, messages=[{"role": "user", "content": prompt}],
                    temperature=self.config.temperature, max_tokens=self.config.max_tokens)
                verdict = _parse_verdict(response.choices[0].message.content or "")
                if verdict is not None:
                    return verdict
        logger.warning("LLM judge gave no 0/1 verdict in %d tries for prediction %r; counted as wrong",
                       self.config.max_retries + 1, prediction)
        return 0.0

    async def aclose(self) -> None:
        """Close the HTTP client of the running event loop."""
        state = self._per_loop.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state[0].close()

    async def __aenter__(self) -> LLMJudge:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


__all__ = ["DEFAULT_JUDGE_PROMPT", "LLMJudge", "LLMJudgeConfig"]
