"""A PyVision episode as a verl agent loop: the model writes turns, the env's sandbox runs their code.

One :class:`PyVisionAgentLoop` plays one trajectory (verl builds one instance per dataset row and
rollout). The loop keeps a single token stream, ``prompt + response``: the model's tokens go in exactly
as sampled (mask 1, with their log-probs) and every interpreter reply is rendered by verl's Continuous
Token helpers as a user message with its frames (mask 0). Images and their placeholder tokens move in
lockstep: an observation is appended only after it passed the image and response-length budgets, and
the placeholder runs are counted against the images after every append.

The loop ends on the env's own end (an answer, the turn budget, ``end_on_error``, ``end_on_format_error``)
or stops early when the trajectory cannot go on: the response budget is spent, an observation would pass
``max_images``, or the env does not answer in time. Those early stops and the turns that mean the rollout
is unusable for training (a crashed interpreter, placeholder tokens written by the model) set ``broken``,
which the sampler uses to drop the group before advantages (as PyVision-RL filters them). A malformed
turn sets ``malformed``: the sampler drops its group too unless ``keep_malformed`` (PyVision-RL keeps
such trajectories, with reward 0).

Under ``profile: pyvision_rl`` (an env setting in the YAML) the interpreter's reply follows the model's
``</code>`` directly in the token stream, as in PyVision-RL's training: no end-of-turn token is put
between them. Otherwise the turn is closed as the chat template closes it, as at evaluation.

Register it with the agent-loop YAML beside this file (verl takes a file path, absolute or relative to
the working directory; ``pkg://`` is not understood there)::

    actor_rollout_ref.rollout.agent.agent_loop_config_path=pyvision_agent/verl/agent_loop.yaml
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import gymnasium as gym
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput
from verl.utils.profiler import simple_timer
from verl.utils.tokenizer import get_processor_token_id

import pyvision_env  # noqa: F401  (registers the env ids)
from pyvision_agent.episode import Episode, Turn, build_messages

logger = logging.getLogger(__name__)

ENV_IDS = ("PyVisionImage-v0", "PyVisionVideo-v0")

# Settings the loop owns (so the YAML cannot set them): the task comes from the dataset row.
_RESERVED_ENV_SETTINGS = ("tasks",)


@dataclass
class _Trajectory:
    """The growing token stream of one episode and what the extra fields report about it."""

    ids: list[int]
    """prompt + response token ids, as the server sees them."""
    prompt_length: int
    messages: list[dict[str, Any]]
    """The conversation so far (PIL images in place), append-only as Continuous Token requires."""
    images: list[Image.Image]
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    assistant_turns: int = 0
    observation_turns: int = 0
    n_tool_calls: int = 0
    input_images: int = 0
    close_turns: bool = True
    """Close a turn that stopped at a stop sequence with the end-of-turn tokens before the reply."""
    end_reason: str | None = None
    broken_reason: str | None = None
    malformed: bool = False
    prediction: str | None = None
    accuracy: float | None = None
    weight_steps: list[Any] = field(default_factory=list)
    """The trainer step of the weights that served each turn (the server reports it): verl's trainer
    reads the first and last as ``min_global_steps``/``max_global_steps`` to measure staleness."""

    def stop(self, reason: str) -> None:
        """End the episode early: the trajectory cannot go on, so it is broken."""
        self.end_reason = reason
        self.broken_reason = self.broken_reason or reason


class PyVisionAgentLoop(AgentLoopBase):
    """Plays ``PyVisionImage-v0`` / ``PyVisionVideo-v0`` episodes for verl.

    Args (the extra keys of the agent-loop YAML entry):
        max_images: Images one trajectory may hold, input images included (PyVision-RL: 32). An
            observation that would pass it stops the episode (``image_limit``, broken).
        max_tokens_per_turn: Tokens one model turn may take (PyVision-RL: 10,240); None: only the
            trajectory's response budget bounds a turn.
        env_timeout_margin_s: Added to the env's ``exec_timeout_s`` for the deadline of one reset or
            step; the env kills its own runaway code first, so this only fires when the env hangs.
        **env_settings: ``gym.make`` settings of the env (``end_on_error``, ``exec_timeout_s``,
            ``max_frames_per_step``...). ``max_turns`` defaults to
            ``actor_rollout_ref.rollout.multi_turn.max_assistant_turns`` when that is set.

    The row's ``extra_info`` holds ``env_id`` and ``task`` (the task as a JSON string); see
    ``pyvision_agent.verl.data``. verl's own constructor arguments (``trainer_config``,
    ``server_manager``, ``tokenizer``, ``processor``...) are passed through to ``AgentLoopBase``;
    ``tools`` (verl's tool list) and ``name`` (the YAML entry's name, which verl passes along with the
    other keys) are accepted and unused: the env is the only tool.
    """

    def __init__(self, *args: Any, tools: Any = None, name: str | None = None, max_images: int = 32,
                 max_tokens_per_turn: int | None = None, env_timeout_margin_s: float = 60.0, **kwargs: Any) -> None:
        verl_names = ("trainer_config", "server_manager", "tokenizer", "processor", "dataset_cls", "data_config",
                      "hf_model_type")
        super().__init__(*args, **{k: kwargs.pop(k) for k in verl_names if k in kwargs})
        env_settings = _plain(kwargs)
        reserved = [k for k in _RESERVED_ENV_SETTINGS if k in env_settings]
        if reserved:
            raise ValueError(f"the agent-loop YAML sets {reserved}; remove it: each episode's task comes from the "
                             "dataset row's extra_info['task']")
        if not isinstance(max_images, int) or max_images < 0:
            raise ValueError(f"max_images must be an int >= 0, got {max_images!r}")
        if max_tokens_per_turn is not None and (not isinstance(max_tokens_per_turn, int) or max_tokens_per_turn < 1):
            raise ValueError(f"max_tokens_per_turn must be an int >= 1 or null, got {max_tokens_per_turn!r}")
        if env_timeout_margin_s <= 0:
            raise ValueError(f"env_timeout_margin_s must be > 0, got {env_timeout_margin_s!r}")
        max_turns = self.rollout_config.multi_turn.get("max_assistant_turns")
        if max_turns and "max_turns" not in env_settings:
            env_settings["max_turns"] = int(max_turns)
        self.env_settings = env_settings
        self.max_images = max_images
        self.max_tokens_per_turn = max_tokens_per_turn
        self.env_timeout_margin_s = float(env_timeout_margin_s)
        self.response_length = int(self.rollout_config.response_length)
        self._image_token_id = get_processor_token_id(self.processor, "image")
        self._placeholder_tokens = [t for t in (getattr(self.processor, "image_token", None),
                                                getattr(self.processor, "video_token", None)) if t]
        self._turn_end_ids = _turn_end_ids(self.tokenizer)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        env_id, task = _task_of_row(kwargs)
        env = await asyncio.to_thread(gym.make, env_id, tasks=[task], **self.env_settings)
        try:
            return await self._play(env.unwrapped, env_id, task, sampling_params)
        finally:
            await asyncio.to_thread(env.close)  # ends the episode's interpreter (a few ms: not on the event loop)

    async def _play(self, env: Any, env_id: str, task: dict[str, Any], sampling_params: dict[str, Any]
                    ) -> AgentLoopOutput:
        deadline = env.config.exec_timeout_s + self.env_timeout_margin_s
        try:
            obs, info = await asyncio.wait_for(env.areset(options={"task": task}), deadline)
        except asyncio.TimeoutError:
            raise TimeoutError(f"{env_id} reset of task {task.get('id')!r} passed {deadline:.0f} s; is its media "
                               "readable?") from None
        episode = Episode.from_reset(env_id, obs, info, image_placeholder=env.config.image_placeholder)
        messages = [_with_pil(m) for m in build_messages(episode, images="array")]
        images = _images_in(messages)
        if len(images) > self.max_images:
            raise ValueError(f"task {task.get('id')!r} has {len(images)} input images, more than max_images="
                             f"{self.max_images}; raise max_images in the agent-loop YAML")
        self._assert_mm_supported(bool(images))
        prompt_ids = await self.ct_build_initial_tokens(messages, images=images or None)
        traj = _Trajectory(ids=prompt_ids, prompt_length=len(prompt_ids), messages=messages, images=images,
                           logprobs=[] if sampling_params.get("logprobs") else None, input_images=len(images),
                           close_turns=env.config.profile != "pyvision_rl")
        self._check_lockstep(traj)
        params = {**sampling_params,
                  "stop": sorted({*(sampling_params.get("stop") or ()), *env.protocol.stop_sequences})}
        metrics: dict[str, Any] = {}
        request_id = uuid4().hex  # one per episode: the server routes every turn to the same replica
        while traj.end_reason is None:
            text = await self._generate(traj, request_id, params, metrics)
            if traj.end_reason is not None:
                break
            if len(traj.mask) >= self.response_length and env.protocol.parse(text).answer is None:
                traj.stop("max_response_length")  # no room left for the interpreter's reply
                break
            with simple_timer("tool_calls", metrics):
                try:
                    obs, _, terminated, truncated, info = await asyncio.wait_for(env.astep(text), deadline)
                except asyncio.TimeoutError:
                    logger.warning("env step of task %r passed %.0f s; the episode is dropped", task.get("id"),
                                   deadline)
                    traj.stop("env_timeout")
                    break
            traj.n_tool_calls = info["n_tool_calls"]
            traj.malformed = traj.malformed or info["format_error"] is not None
            if info["crashed"]:
                traj.broken_reason = traj.broken_reason or "crash"
            if terminated or truncated:
                traj.end_reason, traj.prediction = info["end_reason"], info.get("prediction")
                traj.accuracy = info["reward_components"]["accuracy"]
                break
            episode.add(Turn(text), obs)
            await self._append_observation(traj, build_messages(episode, images="array")[len(traj.messages):])
        return self._output(traj, metrics)

    async def _generate(self, traj: _Trajectory, request_id: str, params: dict[str, Any],
                        metrics: dict[str, Any]) -> str:
        """Sample one turn into the stream and return its text; stops the episode when it cannot go on."""
        budget = self.response_length - len(traj.mask)  # >= 1: an observation is appended only with room left
        if self.max_tokens_per_turn is not None:
            budget = min(budget, self.max_tokens_per_turn)
        with simple_timer("generate_sequences", metrics):
            output = await self.server_manager.generate(
                request_id=request_id, prompt_ids=traj.ids, sampling_params={**params, "max_tokens": budget},
                image_data=traj.images or None, video_data=None, mm_processor_kwargs=self._get_mm_processor_kwargs())
        ids, logprobs = list(output.token_ids)[:budget], output.log_probs
        traj.weight_steps.append(output.extra_fields.get("global_steps"))
        if traj.logprobs is not None and logprobs is None:
            raise ValueError("sampling_params asked for log-probs but the server returned none")
        cut = self._placeholder_cut(ids)
        if cut is not None:
            ids = ids[:cut]
            traj.stop("placeholder_token_generated")
        merge, traj.mask, traj.logprobs = await self.ct_merge_assistant_token(
            traj.ids, ids, traj.mask, traj.logprobs,
            assistant_logprobs=list(logprobs[:len(ids)]) if traj.logprobs is not None else None)
        traj.ids = merge.token_ids
        traj.assistant_turns += 1
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    async def _append_observation(self, traj: _Trajectory, new_messages: list[dict[str, Any]]) -> None:
        """Append the assistant turn and the interpreter's reply, or stop when the reply does not fit."""
        assistant, reply = new_messages[0], _with_pil(new_messages[1])
        new_images = _images_in([reply])
        if len(traj.images) + len(new_images) > self.max_images:
            traj.stop("image_limit")
            return
        self._assert_mm_supported(bool(new_images))
        ids, mask, logprobs = list(traj.ids), list(traj.mask), traj.logprobs
        if traj.close_turns and self._turn_end_ids and ids[-len(self._turn_end_ids):] != self._turn_end_ids:
            # The turn stopped at a stop sequence: close it as the chat template does (not trained on).
            ids += self._turn_end_ids
            mask += [0] * len(self._turn_end_ids)
            logprobs = None if logprobs is None else logprobs + [0.0] * len(self._turn_end_ids)
        before = [*traj.messages, assistant]
        merge, mask, logprobs = await self.ct_merge_context_msg(before, [*before, reply], ids, mask, logprobs)
        if len(mask) >= self.response_length:
            traj.stop("max_response_length")
            return
        traj.ids, traj.mask, traj.logprobs = merge.token_ids, mask, logprobs
        traj.messages = [*before, reply]
        traj.images = [*traj.images, *new_images]
        traj.observation_turns += 1
        self._check_lockstep(traj)

    def _placeholder_cut(self, ids: list[int]) -> int | None:
        """Where the model's tokens start spelling an image/video placeholder, or None.

        Placeholder tokens in the response would be counted as image features at training time and
        fail the forward ("image features and image tokens do not match"); a random or drifting model
        can write them as the special token or piece by piece, so the decoded text is searched.
        """
        if not self._placeholder_tokens or not self._has_placeholder(ids):
            return None
        low, high = 0, len(ids)  # the shortest prefix holding a placeholder has ``high`` tokens
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if self._has_placeholder(ids[:middle]) else (middle + 1, high)
        return high - 1

    def _has_placeholder(self, ids: list[int]) -> bool:
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return any(token in text for token in self._placeholder_tokens)

    def _check_lockstep(self, traj: _Trajectory) -> None:
        """Fail loudly if the image placeholder runs in the stream ever differ from the images."""
        if self._image_token_id is None:
            runs = 0
        else:
            is_image = np.asarray(traj.ids) == self._image_token_id
            runs = int(is_image[0]) + int(np.count_nonzero(is_image[1:] & ~is_image[:-1])) if is_image.size else 0
        if runs != len(traj.images):
            raise RuntimeError(f"the token stream holds {runs} image placeholder run(s) for {len(traj.images)} "
                               "image(s); images and placeholder tokens must stay in lockstep (a PyVision bug)")

    def _output(self, traj: _Trajectory, metrics: dict[str, Any]) -> AgentLoopOutput:
        response_ids = traj.ids[traj.prompt_length:]
        if len(response_ids) != len(traj.mask) or len(traj.mask) > self.response_length:
            raise RuntimeError(f"{len(response_ids)} response tokens, {len(traj.mask)} mask entries, budget "
                               f"{self.response_length}: the response bookkeeping is off (a PyVision bug)")
        num_turns = 1 + traj.assistant_turns + traj.observation_turns  # verl counts user and assistant messages
        visual_tokens = traj.ids.count(self._image_token_id) if self._image_token_id is not None else 0
        return AgentLoopOutput(
            prompt_ids=traj.ids[:traj.prompt_length],
            response_ids=response_ids,
            response_mask=traj.mask,
            response_logprobs=traj.logprobs,
            multi_modal_data={"images": traj.images} if traj.images else {},
            mm_processor_kwargs=self._get_mm_processor_kwargs(),
            num_turns=num_turns,
            metrics=metrics,
            extra_fields={
                "n_tool_calls": traj.n_tool_calls,
                "num_turns": num_turns,
                "end_reason": traj.end_reason,
                "visual_tokens": visual_tokens,
                "n_images": len(traj.images),
                "observation_images": len(traj.images) - traj.input_images,
                "broken": traj.broken_reason is not None,
                "broken_reason": traj.broken_reason,
                "malformed": traj.malformed,
                "prediction": traj.prediction,
                "accuracy": traj.accuracy,
                "answered_without_tools": traj.prediction is not None and traj.n_tool_calls == 0,
                "min_global_steps": traj.weight_steps[0] if traj.weight_steps else None,
                "max_global_steps": traj.weight_steps[-1] if traj.weight_steps else None,
            },
        )


def _task_of_row(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The env id and task dict a dataset row names (see ``pyvision_agent.verl.data``)."""
    extra_info = row.get("extra_info")
    if not isinstance(extra_info, dict) or "task" not in extra_info or "env_id" not in extra_info:
        raise ValueError("a PyVision dataset row needs extra_info with 'env_id' and 'task' (the task as a JSON "
                         f"string); got extra_info={extra_info!r}. Write rows with pyvision_agent.verl.data")
    env_id, task = extra_info["env_id"], extra_info["task"]
    if env_id not in ENV_IDS:
        raise ValueError(f"extra_info['env_id'] must be one of {ENV_IDS}, got {env_id!r}")
    if not isinstance(task, str):
        raise ValueError(f"extra_info['task'] must be the task as a JSON string, got {type(task).__name__}")
    try:
        task = json.loads(task)
    except json.JSONDecodeError as exc:
        raise ValueError(f"extra_info['task'] is not valid JSON ({exc}): {task[:200]!r}") from exc
    if not isinstance(task, dict):
        raise ValueError(f"extra_info['task'] must hold a JSON object, got {type(task).__name__}")
    return env_id, task


def _plain(settings: dict[str, Any]) -> dict[str, Any]:
    """Hydra hands nested YAML values over as OmegaConf containers; the env's config wants plain ones."""
    return {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig | ListConfig) else v
            for k, v in settings.items()}


def _with_pil(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with its image arrays as PIL images (what verl's processors and servers take)."""
    content = message["content"]
    if isinstance(content, str):
        return message
    parts = [{"type": "image", "image": Image.fromarray(p["image"])} if p["type"] == "image" else p for p in content]
    return {**message, "content": parts}


def _images_in(messages: list[dict[str, Any]]) -> list[Image.Image]:
    return [p["image"] for m in messages if not isinstance(m["content"], str)
            for p in m["content"] if p["type"] == "image"]


def _turn_end_ids(tokenizer: Any) -> list[int]:
    """The tokens the chat template puts after an assistant message's text, without trailing whitespace
    (Qwen: ``<|im_end|>``). A turn that stopped at ``</code>`` is closed with them before the interpreter
    replies, so the stream is the chat template's rendering of the conversation, as at evaluation."""
    marker = "PYVISION-TURN-TEXT"
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    suffix = rendered[rendered.rindex(marker) + len(marker):].rstrip()
    return tokenizer.encode(suffix, add_special_tokens=False) if suffix else []
