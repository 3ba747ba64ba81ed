"""A local Hugging Face transformers model as a policy, with the token record training needs.

Any model with a chat template works through one path: the episode's :class:`~pyvision_agent.tokens.ChatTokens`
record *is* the model input (``context_ids`` plus the episode's processed images), so what the model was
given and what a trainer reads back cannot drift apart. Each turn's sampled ids and their log-probs go
into the record (mask 1), each interpreter reply goes in as templated context (mask 0), and the image
placeholder count is checked after every turn.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..episode import Episode, Turn
from .base import Policy, check_sampling

_MISSING = "the transformers policy needs torch and transformers: pip install 'pyvision[agent]'"


class TransformersPolicy(Policy):
    """Generates turns with a local model: ``AutoModelForImageTextToText`` for vision-language models,
    ``AutoModelForCausalLM`` for text-only ones.

    Args:
        model: A model directory or a Hugging Face hub id.
        device: Where the model runs (``cpu``, ``cuda``, ``cuda:1``...).
        dtype: ``float32``, ``bfloat16``... (a string or a torch dtype); None keeps the checkpoint's.
        max_new_tokens: Token budget of one turn.
        temperature: Sampling temperature; 0 decodes greedily.
        top_p: Nucleus sampling threshold in (0, 1].
        seed: Seeds torch's global RNG before each generation (``seed + n``, n counting this policy's
            calls), so a sequential run is reproducible.
        stop: Strings that end a turn besides the end-of-turn token (kept in the turn), by default the
            PyVision dialect's ``</code>``.
        trust_remote_code: Passed to ``from_pretrained``.

    One model serves concurrent episodes: ``aact`` runs ``act`` in a thread and generation is serialised
    by a lock (a local model computes one batch at a time anyway).
    """

    name = "transformers"

    def __init__(self, model: str | os.PathLike[str], *, device: str = "cpu", dtype: Any = None,
                 max_new_tokens: int = 1024, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                 stop: Sequence[str] = ("</code>",), trust_remote_code: bool = False) -> None:
        check_sampling(max_new_tokens, temperature, top_p, max_tokens_name="max_new_tokens")
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise ImportError(_MISSING) from exc
        from ..tokens import ChatTokens

        self.model_name = str(model)
        source = _local_or_hub(self.model_name)
        try:
            self.chat = ChatTokens.from_pretrained(source, keep_image_inputs=True, trust_remote_code=trust_remote_code)
            self.model = _load_model(transformers, source, dtype, trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load the model {self.model_name!r}: {exc}\nGive a local model directory "
                             "(config.json, weights, tokenizer) or a Hugging Face hub id") from exc
        self.model.to(device).eval()
        self.dtype = str(self.model.dtype)
        self._torch = torch
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.stop = tuple(stop)
        tokenizer = self.chat.tokenizer
        eos = self.model.generation_config.eos_token_id
        self._end_ids = {i for i in [*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id]
                         if i is not None}
        if not self._end_ids:
            raise ValueError(f"{self.model_name!r} declares no end-of-turn (eos) token in its generation config "
                             "or tokenizer; a turn could only end at max_new_tokens")
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self._end_ids)
        # The checkpoint's sampling defaults (Qwen2.5-VL ships top_k=1 and repetition_penalty=1.05) would
        # silently reshape the distribution: sampling is exactly temperature + top_p, so that the recorded
        # log-probs are those of the stated settings.
        self.model.generation_config = transformers.GenerationConfig(eos_token_id=sorted(self._end_ids),
                                                                     pad_token_id=self._pad_id)
        # A sampled image placeholder would break the image bookkeeping (and the model's next forward).
        self._suppress = [self.chat.image_token_id] if self.chat.image_token_id is not None else []
        self._takes_mm_types = "mm_token_type_ids" in inspect.signature(self.model.forward).parameters
        self._lock = threading.Lock()
        self._calls = 0

    def act(self, episode: Episode) -> Turn:
        """Generate the next turn of ``episode``; ``episode.tokens`` then holds it (and everything before)."""
        if self.model is None:
            raise RuntimeError("this TransformersPolicy was closed; make a new one")
        with self._lock:  # one generation at a time; the tokenizer is not shared across threads either
            return self._act(episode)

    def _act(self, episode: Episode) -> Turn:
        torch = self._torch
        record = self.chat.update(episode)
        context = torch.tensor([self.chat.context_ids(record)], device=self.device)
        inputs: dict[str, Any] = {"input_ids": context, "attention_mask": torch.ones_like(context)}
        for key, value in self.chat.image_inputs(episode).items():
            floating = value.is_floating_point()
            inputs[key] = value.to(self.device, dtype=self.model.dtype if floating else value.dtype)
        if self._takes_mm_types and self.chat.image_token_id is not None:
            # Marks the image tokens (1) so M-RoPE models give them 2-D positions (transformers >= 5).
            inputs["mm_token_type_ids"] = (context == self.chat.image_token_id).int()
        # top_k=0: transformers otherwise adds its global default top_k=50
        sampling = ({"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
                    if self.temperature > 0 else {"do_sample": False})
        with torch.inference_mode():
            if self.seed is not None:
                torch.manual_seed(self.seed + self._calls)
            self._calls += 1
            out = self.model.generate(**inputs, **sampling, max_new_tokens=self.max_new_tokens,
                                      stop_strings=list(self.stop) or None, tokenizer=self.chat.tokenizer,
                                      suppress_tokens=self._suppress or None, output_scores=True,
                                      return_dict_in_generate=True)
        ids = out.sequences[0, context.shape[1]:].tolist()
        # log-softmax of the scores the sampler drew from (after temperature, top-p and the suppressed
        # image token): the sampling log-prob
        logprobs = [float(torch.log_softmax(score[0].float(), dim=-1)[token]) for score, token in zip(out.scores, ids)]
        text = self.chat.tokenizer.decode(ids, skip_special_tokens=True)
        stopped = ids[-1] in self._end_ids or any(s in text for s in self.stop)
        turn = Turn(text, token_ids=ids, logprobs=logprobs, finish_reason="stop" if stopped else "length")
        self.chat.add_turn(record, turn)
        self.chat.check(record, episode.images)
        return turn

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "model": self.model_name, "device": self.device, "dtype": self.dtype,
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed, "stop": list(self.stop), "tokens": self.chat.source}

    def close(self) -> None:
        self.model = None


def _local_or_hub(model: str) -> str:
    """``model`` as ``from_pretrained`` takes it. A path meant to be local that does not exist fails here,
    not after a hub lookup."""
    if not (model.startswith((".", "/", "~")) or model.count("/") > 1):  # hub ids are 'org/name'
        return model
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ValueError(f"no model directory at {model!r}; give a directory with config.json, weights and "
                         "tokenizer, or a Hugging Face hub id such as 'Qwen/Qwen2.5-VL-7B-Instruct'")
    return str(path)


def _load_model(transformers: Any, model: str, dtype: Any, trust_remote_code: bool) -> Any:
    kwargs = {"trust_remote_code": trust_remote_code, **({"dtype": dtype} if dtype is not None else {})}
    try:
        return transformers.AutoModelForImageTextToText.from_pretrained(model, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" not in str(exc):
            raise
        return transformers.AutoModelForCausalLM.from_pretrained(model, **kwargs)
