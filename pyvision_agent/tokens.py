"""Token bookkeeping of an episode: what a token-level policy feeds its model, and what training reads back.

:class:`ChatTokens` keeps an episode's :class:`~pyvision_agent.episode.TokenRecord` in step with its
conversation. Two rules make the record trainable:

- The model's own turns are kept as the ids it sampled (mask 1), never re-tokenised from their text:
  decoding and encoding again does not round-trip, and a policy-gradient step on other ids than the
  sampled ones is silently wrong.
- Everything else (the prompt, each interpreter reply, the template's turn delimiters) is templated by
  the model's own chat template, so the record is what the template would give for the conversation.
  An observation's tokens are the *delta* between the conversation rendered with and without it. This
  works for any append-only template, without knowing its delimiters.

Images: the template emits one image token per image (``<|image_pad|>`` for Qwen); the model wants one
per visual feature. Where the model's full processor loads, it expands them itself; otherwise (Qwen-VL
processors on a CPU-only torch, which need torchvision) the image processor's grid gives the count:
``image_grid_thw.prod() // merge_size**2``. :meth:`ChatTokens.check` recounts after every turn.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .episode import Episode, TokenRecord, Turn, build_messages

_STATE = "chat_tokens"
"""The key of ChatTokens' per-episode state in ``episode.state``."""
_SENTINEL = "\x00pyvision-turn\x00"
"""Stands for every assistant turn when templating: the model's turns are never re-tokenised, and a
fixed text keeps content-dependent template logic (e.g. dropping old reasoning) out of the deltas."""
_TEXT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"})


class TokenMismatchError(ValueError):
    """The image placeholder tokens of an episode do not match its images (the model would fail or,
    worse, attend to the wrong pixels)."""


class ChatTokens:
    """Builds and checks token records with a Hugging Face tokenizer and chat template.

    Args:
        tokenizer: The model's tokenizer (its ``chat_template`` is used unless ``chat_template`` is given).
        image_processor: For multimodal models without a loadable full processor: a Qwen-style image
            processor (``image_grid_thw`` outputs and a ``merge_size``).
        processor: The model's full processor; when given it expands image placeholders itself.
        image_token: The token the template emits per image (e.g. ``<|image_pad|>``); None for text-only.
        chat_template: Overrides the tokenizer's (or processor's) template.
        keep_image_inputs: Keep each observation's processed pixels in ``episode.state`` so that
            :meth:`image_inputs` gives the model's image inputs without processing images twice
            (a local model needs them; a server that takes raw images does not).
    """

    def __init__(self, tokenizer: Any, image_processor: Any = None, *, processor: Any = None,
                 image_token: str | None = None, chat_template: str | None = None,
                 keep_image_inputs: bool = False) -> None:
        self.tokenizer = tokenizer
        self.processor = processor
        self.image_processor = processor.image_processor if processor is not None else image_processor
        self.keep_image_inputs = keep_image_inputs
        self.chat_template = (chat_template or getattr(processor, "chat_template", None)
                              or getattr(tokenizer, "chat_template", None))
        if not self.chat_template:
            raise ValueError("the tokenizer has no chat template; pass chat_template=... (a Jinja string)")
        self.image_token = image_token or getattr(processor, "image_token", None)
        self.image_token_id: int | None = None
        if self.image_token is not None:
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
                raise ValueError(f"the image token {self.image_token!r} is not in the tokenizer's vocabulary")
        if self.image_processor is not None and self.image_token_id is None:
            raise ValueError("a multimodal model needs image_token=... (the token its template emits per image)")
        self.merge_size: int | None = None
        if processor is None and self.image_processor is not None:
            self.merge_size = getattr(self.image_processor, "merge_size", None)
            if not isinstance(self.merge_size, int):
                raise ValueError(f"{type(self.image_processor).__name__} has no merge_size: without the full "
                                 "processor only Qwen-style image processors (image_grid_thw) can expand images; "
                                 "install what the processor needs (e.g. torchvision) so it loads")
        self.source = "processor" if processor is not None else (
            "tokenizer+image_processor" if self.image_processor is not None else "tokenizer")
        """Which path expands images: ``processor``, ``tokenizer+image_processor`` or ``tokenizer`` (text)."""
        self.processor_error: str | None = None
        """Why the full processor did not load (set by :meth:`from_pretrained`), else None."""
        self.close_ids = self._close_ids()
        """The template's tokens after an assistant turn's content (Qwen: ``<|im_end|>``, ``\\n``)."""
        self._count_for_size = functools.lru_cache(maxsize=4096)(self._count_by_processing)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, keep_image_inputs: bool = False,
                        trust_remote_code: bool = False) -> ChatTokens:
        """Load from a model directory or hub id: the full processor, or else tokenizer + image processor."""
        from transformers import AutoConfig, AutoProcessor, AutoTokenizer

        path = str(path)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        image_token_id = _config_image_token_id(config)
        processor, error = None, None
        if image_token_id is not None:
            try:
                loaded = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
                processor = loaded if hasattr(loaded, "image_processor") else None
            except (ImportError, OSError, ValueError, TypeError, AttributeError) as exc:
                # e.g. Qwen-VL processors want a video processor that needs torchvision
                error = f"{type(exc).__name__}: {str(exc).strip()}"
        tokenizer = processor.tokenizer if processor is not None else AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code)
        image_processor = None
        if processor is None and image_token_id is not None:
            image_processor = _load_image_processor(path, trust_remote_code)
        image_token = None
        if image_token_id is not None:
            image_token = getattr(processor, "image_token", None) or tokenizer.convert_ids_to_tokens(image_token_id)
        template = None if getattr(processor or tokenizer, "chat_template", None) else _template_file(path)
        chat = cls(tokenizer, image_processor, processor=processor, image_token=image_token,
                   chat_template=template, keep_image_inputs=keep_image_inputs)
        chat.processor_error = error
        return chat

    # -- the record -------------------------------------------------------------------------------------

    def start(self, episode: Episode) -> TokenRecord:
        """The record of a new episode: system + task prompt with the generation prompt, images expanded."""
        messages = self._messages(episode)[:self._user_index(episode, 0) + 1]
        text = self._render(messages, generation_prompt=True)
        images = episode.observations[0].images
        ids, inputs = self._encode(text, images)
        episode.state[_STATE] = {"observations": 1, "image_inputs": [inputs] if self._keeps(inputs) else []}
        return TokenRecord(prompt_ids=ids, n_images=len(images))

    def add_turn(self, record: TokenRecord, turn: Turn) -> None:
        """Append the turn's sampled ids (mask 1, with their log-probs), then close the assistant turn the
        way the template does (mask 0): all of the close when generation stopped early (``</code>``, the
        token budget), the rest of it when the model ended with the end-of-turn token itself."""
        if turn.token_ids is None:
            raise ValueError("add_turn needs turn.token_ids: the policy must return the ids it sampled "
                             "(re-tokenising the text does not give them back)")
        ids = list(turn.token_ids)
        record.append(ids, model=True, logprobs=turn.logprobs)
        done = next((k for k in range(len(self.close_ids), 0, -1) if ids[-k:] == self.close_ids[:k]), 0)
        record.append(self.close_ids[done:], model=False)

    def add_observation(self, record: TokenRecord, episode: Episode) -> None:
        """Append the latest observation as context (mask 0): the templated delta it adds to the
        conversation, images expanded, then the next generation prompt."""
        state = self._state(episode)
        k = len(episode.observations) - 1
        if state["observations"] != k or len(episode.turns) != k:
            raise ValueError(f"add_observation adds the one observation that answers the latest turn: the record "
                             f"holds {state['observations']} observation(s), the episode has {k + 1} and "
                             f"{len(episode.turns)} turn(s) (call it once per step, after episode.add)")
        messages = self._messages(episode)
        user = self._user_index(episode, k)
        before = self._render(messages[:user], generation_prompt=False)
        after = self._render(messages[:user + 1], generation_prompt=True)
        if not after.startswith(before):
            raise ValueError("the chat template is not append-only: adding a message changed how earlier "
                             "messages render, so an observation has no token delta; use a template that "
                             "renders past turns unchanged")
        images = episode.observations[k].images
        ids, inputs = self._encode(after[len(before):], images)
        record.append(ids, model=False)
        record.n_images += len(images)
        state["observations"] = k + 1
        if self._keeps(inputs):
            state["image_inputs"].append(inputs)

    def update(self, episode: Episode) -> TokenRecord:
        """``episode.tokens``, started or brought up to the latest observation (what a policy calls
        before generating)."""
        if episode.tokens is None:
            episode.tokens = self.start(episode)
        elif self._state(episode)["observations"] < len(episode.observations):
            self.add_observation(episode.tokens, episode)
        return episode.tokens

    @staticmethod
    def context_ids(record: TokenRecord) -> list[int]:
        """Prompt + response ids: what the model is given to generate the next turn."""
        return record.prompt_ids + record.response_ids

    def check(self, record: TokenRecord, images: Sequence[np.ndarray]) -> None:
        """Raise TokenMismatchError unless the record holds exactly the placeholder tokens of ``images``."""
        if record.n_images != len(images):
            raise TokenMismatchError(f"the token record holds {record.n_images} image(s) but the episode has "
                                     f"{len(images)}")
        if self.image_token_id is None:
            if images:
                raise TokenMismatchError(f"a text-only model cannot take the episode's {len(images)} image(s)")
            return
        found = self.context_ids(record).count(self.image_token_id)
        expected = sum(self.image_token_counts(images))
        if found != expected:
            raise TokenMismatchError(f"{found} image placeholder tokens {self.image_token!r} in the episode's "
                                     f"tokens, but its {len(images)} image(s) need {expected}")

    def image_token_counts(self, images: Sequence[np.ndarray]) -> list[int]:
        """How many placeholder tokens each image takes. Qwen-style processors know it from the size alone
        (no pixels processed: an independent recount of the expansion); others process the image."""
        if self.image_token_id is None:
            raise ValueError("a text-only model takes no images")
        if hasattr(self.image_processor, "get_number_of_image_patches") and self.merge_size:
            return [self.image_processor.get_number_of_image_patches(int(i.shape[0]), int(i.shape[1]), {})
                    // self.merge_size**2 for i in images]
        return [self._count_for_size(int(i.shape[0]), int(i.shape[1])) for i in images]

    def _count_by_processing(self, height: int, width: int) -> int:
        """Placeholder tokens of one image of this size, as the processor expands them (the counts of the
        processors we know depend on the size alone, so a blank image stands for any)."""
        blank = np.zeros((height, width, 3), np.uint8)
        return self._encode(self.image_token, [blank])[0].count(self.image_token_id)

    def image_inputs(self, episode: Episode) -> dict[str, Any]:
        """The processed images of the whole episode (``pixel_values``, ``image_grid_thw``...), in order,
        as kept by ``keep_image_inputs=True``; empty when the episode has no image."""
        import torch

        if not self.keep_image_inputs:
            raise ValueError("image_inputs() needs ChatTokens(..., keep_image_inputs=True)")
        kept = self._state(episode)["image_inputs"]
        return {key: torch.cat([inputs[key] for inputs in kept]) for key in (kept[0] if kept else {})}

    # -- parts ------------------------------------------------------------------------------------------

    def _messages(self, episode: Episode) -> list[dict[str, Any]]:
        messages = build_messages(episode)
        return [{"role": "assistant", "content": _SENTINEL} if m["role"] == "assistant" else m for m in messages]

    @staticmethod
    def _user_index(episode: Episode, k: int) -> int:
        """Index of observation ``k``'s user message in :meth:`_messages` (system first, then user/assistant)."""
        return (1 if episode.system_prompt else 0) + 2 * k

    def _render(self, messages: list[dict[str, Any]], *, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def _close_ids(self) -> list[int]:
        conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
        text = self._render(conversation, generation_prompt=False)
        if _SENTINEL not in text:
            raise ValueError("the chat template does not render assistant messages' content as given")
        return self.tokenizer.encode(text.split(_SENTINEL, 1)[1], add_special_tokens=False)

    def _encode(self, text: str, images: Sequence[np.ndarray]) -> tuple[list[int], dict[str, Any]]:
        """Token ids of templated ``text`` with its image tokens expanded, and the processed ``images``."""
        n_slots = text.count(self.image_token) if self.image_token else 0
        if self.image_token is None and images:
            raise TokenMismatchError(f"a text-only model cannot take {len(images)} image(s); use a multimodal model")
        if n_slots != len(images):
            raise TokenMismatchError(f"the templated text has {n_slots} image token(s) {self.image_token!r} for "
                                     f"{len(images)} image(s); an image token inside an observation's text "
                                     "(printed by code?) breaks the match")
        if not images:
            return self.tokenizer.encode(text, add_special_tokens=False), {}
        pictures = [np.ascontiguousarray(i) for i in images]
        if self.processor is not None:
            out = self.processor(text=[text], images=pictures, add_special_tokens=False, return_tensors="pt")
            return out["input_ids"][0].tolist(), {k: v for k, v in out.items() if k not in _TEXT_KEYS}
        inputs = dict(self.image_processor(images=pictures, return_tensors="pt"))
        counts = iter((inputs["image_grid_thw"].prod(-1) // self.merge_size**2).tolist())
        ids: list[int] = []
        for token in self.tokenizer.encode(text, add_special_tokens=False):
            ids.extend([token] * next(counts) if token == self.image_token_id else [token])
        return ids, inputs

    def _keeps(self, inputs: dict[str, Any]) -> bool:
        return self.keep_image_inputs and bool(inputs)

    @staticmethod
    def _state(episode: Episode) -> dict[str, Any]:
        if _STATE not in episode.state:
            raise ValueError("this episode has no token record yet: call start(episode) first")
        return episode.state[_STATE]


def _config_image_token_id(config: Any) -> int | None:
    """The image token id a multimodal config declares (Qwen-VL: ``image_token_id``; LLaVA: ``image_token_index``)."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _load_image_processor(path: str, trust_remote_code: bool) -> Any:
    """The model's image processor. Some transformers 5 releases refuse ``AutoImageProcessor`` without
    torchvision while the class itself falls back to its PIL backend: then load the class by name."""
    import transformers
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ImportError:
        config, _ = transformers.ImageProcessingMixin.get_image_processor_dict(path)
        cls = getattr(transformers, str(config.get("image_processor_type")), None)
        if cls is None:
            raise
        return cls.from_pretrained(path)


def _template_file(path: str) -> str | None:
    """The chat template a repository keeps for its processor only (``chat_template.jinja`` or ``.json``),
    which the tokenizer does not load: without the full processor it is still the model's template."""
    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        found = cached_file(path, name, _raise_exceptions_for_missing_entries=False)
        if found is not None:
            text = Path(found).read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None
