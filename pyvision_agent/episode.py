"""The episode as a policy sees it, and the one function that turns it into chat messages.

An :class:`Episode` is the env's observations interleaved with the policy's own turns. Every policy
builds its model input from :func:`build_messages`, so an OpenAI-compatible server, a local
transformers model and the vLLM engine all see the same conversation: a system message, the task as
a user message (text and input images in place of their placeholders), then per turn the model's
text as an assistant message and the interpreter's reply (text and frames) as a user message.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from pyvision_env.tasks import Task


@dataclass(frozen=True)
class Observation:
    """What the env returned: text with one image placeholder per image, and the images (HxWx3 uint8)."""

    text: str
    images: tuple[np.ndarray, ...] = ()


@dataclass
class Turn:
    """One model turn. Token-level policies also fill ``token_ids``/``logprobs`` (for training)."""

    text: str
    token_ids: list[int] | None = None
    """The generated token ids, exactly as sampled (never re-tokenised: that is where training drifts)."""
    logprobs: list[float] | None = None
    """The sampling log-probability of each generated token."""
    finish_reason: str | None = None
    """Why generation stopped: ``stop`` (a stop sequence or end of turn), ``length`` (the token budget)..."""


@dataclass
class TokenRecord:
    """The token view of an episode, kept by token-level policies (transformers, vLLM).

    ``prompt_ids`` is the templated system + task prompt; ``response_ids`` everything after it: model
    tokens (mask 1) interleaved with templated interpreter replies (mask 0, not trained on). Image
    placeholder tokens appear in step with ``n_images``: a policy checks that after every turn.
    """

    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)
    response_logprobs: list[float] = field(default_factory=list)
    n_images: int = 0

    def append(self, ids: list[int], *, model: bool, logprobs: list[float] | None = None) -> None:
        """Add ``ids`` to the response: the model's own (mask 1, with their log-probs) or context (mask 0)."""
        if logprobs is not None and len(logprobs) != len(ids):
            raise ValueError(f"{len(logprobs)} log-probs for {len(ids)} tokens")
        self.response_ids.extend(ids)
        self.response_mask.extend([1 if model else 0] * len(ids))
        self.response_logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_ids": self.prompt_ids, "response_ids": self.response_ids,
                "response_mask": self.response_mask, "response_logprobs": self.response_logprobs,
                "n_images": self.n_images}


@dataclass
class Episode:
    """One episode so far: ``observations[0]`` is the reset observation, ``observations[k]`` the reply
    to ``turns[k-1]``. ``state`` is private scratch space of the policy playing it."""

    env_id: str
    observations: list[Observation]
    system_prompt: str | None = None
    """The system part of the reset text (the env reports it in ``info["system_prompt"]``)."""
    task: Task | None = None
    image_placeholder: str = "<image>"
    turns: list[Turn] = field(default_factory=list)
    tokens: TokenRecord | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_reset(cls, env_id: str, observation: dict, info: dict, *, task: Task | None = None,
                   image_placeholder: str = "<image>") -> Episode:
        """Start an episode from ``env.reset()``'s observation and info."""
        text = info.get("user_prompt", observation["text"])
        return cls(env_id=env_id, observations=[Observation(text, tuple(observation["images"]))],
                   system_prompt=info.get("system_prompt"), task=task, image_placeholder=image_placeholder)

    def add(self, turn: Turn, observation: dict | None = None) -> None:
        """Record a turn and, unless the episode ended with it, the env's reply."""
        self.turns.append(turn)
        if observation is not None:
            self.observations.append(Observation(observation["text"], tuple(observation["images"])))

    @property
    def images(self) -> list[np.ndarray]:
        """Every image of the conversation, in order (what a multimodal model's processor is given)."""
        return [image for obs in self.observations for image in obs.images]


ImageMode = Literal["array", "data_url"]


def encode_data_url(image: np.ndarray, *, fmt: Literal["jpeg", "png"] = "jpeg", quality: int = 90) -> str:
    """An RGB array as a ``data:`` URL. JPEG through OpenCV (~3 ms for 1024x1024) by default; PNG at
    compression level 1 when exact pixels matter (PIL's default PNG costs ~400 ms for a photo)."""
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        raise ValueError(f"image format must be 'jpeg' or 'png', got {fmt!r}")
    if not ok:
        raise ValueError(f"cannot encode a {image.shape} {image.dtype} image as {fmt}")
    return f"data:image/{fmt};base64,{base64.b64encode(buf.tobytes()).decode('ascii')}"


def _content(obs: Observation, placeholder: str, mode: ImageMode, encode: Any) -> list[dict[str, Any]]:
    pieces = obs.text.split(placeholder)
    if len(pieces) - 1 != len(obs.images):
        raise ValueError(f"an observation has {len(pieces) - 1} image placeholder(s) {placeholder!r} for "
                         f"{len(obs.images)} image(s); they must match one to one")
    parts: list[dict[str, Any]] = []
    for k, piece in enumerate(pieces):
        if piece:
            parts.append({"type": "text", "text": piece})
        if k < len(obs.images):
            image = obs.images[k]
            parts.append({"type": "image", "image": image} if mode == "array"
                         else {"type": "image_url", "image_url": {"url": encode(image)}})
    return parts


def build_messages(episode: Episode, *, images: ImageMode = "array",
                   encode: Any = encode_data_url) -> list[dict[str, Any]]:
    """The episode as OpenAI-style chat messages: ``system``, the task as ``user``, then ``assistant`` turns
    and the interpreter replies as ``user`` messages.

    Images replace their placeholders in the text, in order: as ``{"type": "image", "image": array}``
    parts (what Hugging Face chat templates and processors take) or, with ``images="data_url"``, as
    OpenAI ``image_url`` parts made by ``encode`` (pass a caching encoder to avoid re-encoding the
    same frames every turn). Raises ValueError when placeholders and images do not match.
    """
    if images not in ("array", "data_url"):
        raise ValueError(f"images must be 'array' or 'data_url', got {images!r}")
    messages: list[dict[str, Any]] = []
    if episode.system_prompt:
        messages.append({"role": "system", "content": episode.system_prompt})
    for k, obs in enumerate(episode.observations):
        if k > 0:
            messages.append({"role": "assistant", "content": episode.turns[k - 1].text})
        messages.append({"role": "user", "content": _content(obs, episode.image_placeholder, images, encode)})
    if len(episode.turns) >= len(episode.observations):  # the last turn ended the episode
        messages.append({"role": "assistant", "content": episode.turns[-1].text})
    return messages
