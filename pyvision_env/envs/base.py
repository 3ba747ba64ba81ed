"""The episode logic both envs share: parse a turn, run its code, score the answer.

An episode owns one sandbox session (a forked interpreter with the inputs loaded), opened by the env's
sandbox backend (``local``: this process's zygote; ``ray``: a node of the Ray cluster); it is closed as
soon as the episode ends, so thousands of finished episodes hold no processes. ``reset``/``step`` and
``areset``/``astep`` share every part but the calls into the session, which the async API awaits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from pydantic import ValidationError

from ..background import BackgroundLoop
from ..errors import ConfigError, describe_validation_error
from ..prompts import RL_IMAGE_TEMPLATE, RL_VIDEO_TEMPLATE, check_template, load_prompt_template
from ..protocol import ParsedTurn, get_protocol, replace_surrogates
from ..rewards import LLMJudge, RewardComponents, accuracy_of, episode_reward
from ..sandbox import ExecutionResult
from ..sandbox._sandbox import _thread_pool
from ..sandbox.backend import EpisodeSession, get_backend
from ..tasks import Task, load_tasks, to_task
from ..visual_tokens import get_rule
from .config import EnvConfig
from .spaces import Frames, UnicodeText

_MAX_OBS_CHARS = 10_000_000


@dataclass
class _Episode:
    task: Task
    session: EpisodeSession | None
    turn: int = 0
    n_tool_calls: int = 0
    n_format_errors: int = 0
    n_images: int = 0
    visual_tokens: int = 0
    prediction: str | None = None
    end_reason: str | None = None
    last_frames: tuple[np.ndarray, ...] = field(default_factory=tuple)


class PyVisionEnv(gym.Env[dict, str]):
    """Actions are model turns (text); observations are ``{"text": str, "images": tuple of HxWx3 uint8}``."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 1}
    env_id: ClassVar[str]
    modality: ClassVar[str]
    config_cls: ClassVar[type[EnvConfig]]

    def __init__(self, render_mode: str | None = None, **config: Any) -> None:
        try:
            self.config = self.config_cls(**config)
        except ValidationError as exc:
            problems = describe_validation_error(exc, self.config_cls)
            raise ConfigError(f"invalid {self.env_id} config: {problems}") from None  # one message, no chain
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.tasks = load_tasks(self.config.tasks, self.modality)
        self.protocol = get_protocol(self.config.dialect, image_placeholder=self.config.image_placeholder,
                                     modality=self.modality)
        self.prompt_template = self._load_template()
        self._token_rule = get_rule(self.config.visual_token_rule)
        self._backend = get_backend(self.config.sandbox_backend, self.config.isolation, self.config.ray_node_resource)
        self._llm_judge = LLMJudge(self.config.llm_judge) if self.config.judge == "llm" else None
        self.action_space = UnicodeText(self.config.max_turn_chars)
        self.observation_space = spaces.Dict({"text": UnicodeText(_MAX_OBS_CHARS),
                                              "images": Frames(max_frames=1024, max_pixels=1 << 31)})
        self._episode: _Episode | None = None

    # -- the Gymnasium API ------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start an episode with ``options={"task": {...}}``, ``{"task_index": i}``, or a task drawn
        with the seeded RNG. Raises MediaError naming a missing or corrupt input file."""
        previous = self._detach_session()
        try:
            task = self._begin_reset(seed, options)
            self._episode = _Episode(task=task, session=self._backend.session(
                images=task.images, video=task.video, config=self.config.sandbox_config()))
        finally:
            if previous is not None:
                previous.close()
        try:
            return self._finish_reset()
        except BaseException:
            self._end_episode()
            raise

    def step(self, action: str) -> tuple[dict, float, bool, bool, dict]:
        ep, parsed = self._begin_step(action)
        result = ep.session.execute(parsed.code) if parsed.answer is None and parsed.code is not None else None
        return self._finish_step(ep, parsed, result)

    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """:meth:`reset` without blocking the event loop: the session (on a Ray node too) is awaited, the
        rest (picking and checking the task, the first observation) runs in a thread; closing the previous
        episode only sends a signal."""
        loop = asyncio.get_running_loop()
        previous = self._detach_session()
        try:
            task = await loop.run_in_executor(_thread_pool(), self._begin_reset, seed, options)
            self._episode = _Episode(task=task, session=await self._backend.asession(
                images=task.images, video=task.video, config=self.config.sandbox_config()))
        finally:
            if previous is not None:
                previous.close()
        try:
            return await loop.run_in_executor(_thread_pool(), self._finish_reset)
        except BaseException:
            self._end_episode()
            raise

    async def astep(self, action: str) -> tuple[dict, float, bool, bool, dict]:
        """:meth:`step` without blocking the event loop: the code runs while other episodes generate."""
        ep, parsed = self._begin_step(action)
        result = await ep.session.aexecute(parsed.code) if parsed.answer is None and parsed.code is not None else None
        return await asyncio.get_running_loop().run_in_executor(_thread_pool(), self._finish_step, ep, parsed, result)

    def _detach_session(self) -> EpisodeSession | None:
        """End the current episode and hand back its session, still open: ``reset`` closes it only once
        the next episode's session has started, so that the old worker's exit (a few ms of the kernel's
        CPU) does not compete with the start."""
        ep, self._episode = self._episode, None
        return ep.session if ep is not None else None

    def _begin_reset(self, seed: int | None, options: dict[str, Any] | None) -> Task:
        super().reset(seed=seed)
        task = self._pick_task(options or {})
        self._check_task(task)
        return task

    def _finish_reset(self) -> tuple[dict, dict]:
        ep = self._episode
        text, images, extra = self._first_observation(ep.task, ep.session)
        ep.n_images = len(images)
        ep.visual_tokens = self._tokens(images)
        ep.last_frames = images
        info = self._info(None)
        info.update(extra, isolation=str(ep.session.isolation), sandbox_node=self._backend.node_of(ep.session))
        # read-only arrays (decoded files, shared by every episode on that image) go out as they are
        return {"text": text, "images": tuple(i if not i.flags.writeable else np.array(i) for i in images)}, info

    def _begin_step(self, action: str) -> tuple[_Episode, ParsedTurn]:
        ep = self._running_episode()
        if not isinstance(action, str):
            raise TypeError(f"an action is the model's turn as a str, got {type(action).__name__}")
        ep.turn += 1
        return ep, self._parse(action)

    def _finish_step(self, ep: _Episode, parsed: ParsedTurn, result: ExecutionResult | None
                     ) -> tuple[dict, float, bool, bool, dict]:
        """The step's observation, reward and info from the turn and what its code did (None: no code ran)."""
        terminated = False
        frames: tuple[np.ndarray, ...] = ()
        if parsed.answer is not None:
            text, ep.prediction, ep.end_reason, terminated = "", parsed.answer, "answered", True
        elif result is not None:
            ep.n_tool_calls += 1
            frames = result.frames
            text = self.protocol.format_result(result, first_image_index=ep.n_images, notes=parsed.notes)
            ep.n_images += len(frames)
            ep.visual_tokens += self._tokens(frames)
            if self.config.end_on_error and not result.ok:
                ep.end_reason, terminated = ("timeout" if result.timed_out else "error"), True
        else:
            ep.n_format_errors += 1
            text = self.protocol.format_error_observation(parsed)
            if self.config.end_on_format_error:
                ep.end_reason, terminated = "format_error", True
        truncated = not terminated and ep.turn >= self.config.max_turns
        if truncated:
            ep.end_reason = "max_turns"
        if frames:
            ep.last_frames = frames
        info = self._info(result, parsed)
        reward = self.config.step_reward
        if terminated or truncated:
            components, score = self._score(ep)
            reward = components.total
            info["reward_components"] = asdict(components)
            info["judge_score"] = score
            info["prediction"] = ep.prediction
            info["reference"] = ep.task.answer
            self._close_session()
        return {"text": text, "images": frames}, float(reward), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """The latest frame the model saw (input image at reset, last frame shown since), as RGB."""
        if self.render_mode != "rgb_array":
            return None
        frames = self._episode.last_frames if self._episode else ()
        return np.array(frames[-1]) if frames else np.zeros((64, 64, 3), np.uint8)

    def close(self) -> None:
        self._end_episode()
        super().close()

    # -- parts -----------------------------------------------------------------------------------------

    def _parse(self, action: str) -> ParsedTurn:
        """The protocol's reading of a turn that is within the action bound and valid Unicode: a longer
        turn is a format error (nothing in it runs); invalid Unicode is replaced, with a note."""
        if len(action) > self.config.max_turn_chars:
            return ParsedTurn(code=None, answer=None, n_code_blocks=0, format_error=(
                f"the turn has {len(action):,} characters, more than the {self.config.max_turn_chars:,} a turn may "
                f"have (max_turn_chars); nothing in it was run"))
        action, n_bad = replace_surrogates(action)
        parsed = self.protocol.parse(action)
        if n_bad:
            note = (f"the turn held {n_bad} invalid Unicode character(s) (lone surrogates); they were replaced by "
                    f"U+FFFD")
            parsed = dataclasses.replace(parsed, notes=(note, *parsed.notes))
        return parsed

    def _load_template(self) -> str | None:
        """The user-turn template of ``profile="pyvision_rl"`` (None for ours), checked at make time."""
        if self.config.profile != "pyvision_rl":
            return None
        if self.config.prompt_template is None:
            warnings.warn(f"{self.env_id} with profile='pyvision_rl' and no prompt_template uses our own wording of "
                          "the prompt; exact reproduction of PyVision-RL needs their template: "
                          "prompt_template='rl_system_prompt_template.json#KEY'", UserWarning, stacklevel=3)
            return RL_IMAGE_TEMPLATE if self.modality == "image" else RL_VIDEO_TEMPLATE
        return check_template(load_prompt_template(self.config.prompt_template), self.modality)

    def _pick_task(self, options: dict[str, Any]) -> Task:
        unknown = set(options) - {"task", "task_index"}
        if unknown:
            raise ConfigError(f"unknown reset option(s) {sorted(unknown)}; accepted: task, task_index")
        if "task" in options:
            return to_task(options["task"])
        if "task_index" in options:
            index = options["task_index"]
            if not isinstance(index, int) or not 0 <= index < len(self.tasks):
                raise ConfigError(f"task_index must be an int in [0, {len(self.tasks)}), got {index!r}")
            return self.tasks[index]
        return self.tasks[int(self.np_random.integers(len(self.tasks)))]

    def _check_task(self, task: Task) -> None:
        raise NotImplementedError

    def _first_observation(self, task: Task, session: EpisodeSession) -> tuple[str, tuple[np.ndarray, ...], dict]:
        """Text, images and extra info of the reset observation (no code runs: a reset stays a fork)."""
        raise NotImplementedError

    def _tokens(self, images: tuple[np.ndarray, ...]) -> int:
        return sum(self._token_rule(int(i.shape[0]), int(i.shape[1]), min_pixels=self.config.visual_token_min_pixels,
                                    max_pixels=self.config.visual_token_max_pixels) for i in images)

    def _info(self, result: ExecutionResult | None, parsed: ParsedTurn | None = None) -> dict[str, Any]:
        ep = self._episode
        return {
            "turn": ep.turn, "n_tool_calls": ep.n_tool_calls, "end_reason": ep.end_reason,
            "stdout": result.stdout if result else "", "stderr": result.stderr if result else "",
            "error": result.error if result else None, "exec_time_s": result.exec_time_s if result else 0.0,
            "timed_out": bool(result and result.timed_out), "crashed": bool(result and result.crashed),
            "format_error": parsed.format_error if parsed else None, "n_format_errors": ep.n_format_errors,
            "n_images": ep.n_images, "visual_tokens": ep.visual_tokens,
            "task_id": ep.task.id, "data_source": ep.task.data_source,
        }

    def _score(self, ep: _Episode) -> tuple[RewardComponents, float | None]:
        task = ep.task
        score: float | None = None
        if task.answer is not None and ep.prediction is not None:
            if self._llm_judge is not None:
                score = _run_judge(self._llm_judge.score(task.question, task.answer, ep.prediction))
            else:
                score = task.judge(ep.prediction)
        accuracy = accuracy_of(score, task.answer_type, self.config.mra_reward)
        components = episode_reward(accuracy, ep.n_tool_calls, per_call=self.config.tool_reward_per_call,
                                    cap=self.config.tool_reward_cap,
                                    format_reward=self.config.format_error_reward * ep.n_format_errors)
        return components, score

    def _running_episode(self) -> _Episode:
        if self._episode is None:
            raise ResetNeeded("call reset() before step()")
        if self._episode.end_reason is not None:
            raise ResetNeeded(f"the episode ended ({self._episode.end_reason}); call reset() to start another")
        return self._episode

    def _close_session(self) -> None:
        if self._episode is not None and self._episode.session is not None:
            self._episode.session.close()
            self._episode.session = None

    def _end_episode(self) -> None:
        self._close_session()
        self._episode = None


_judge_loop: BackgroundLoop | None = None
_judge_lock = threading.Lock()


def _run_judge(coro: Any) -> Any:
    """Await the async LLM judge from the sync ``step``, also from a thread whose own loop is running."""
    global _judge_loop
    with _judge_lock:
        if _judge_loop is None:
            _judge_loop = BackgroundLoop("pyvision-judge")
    return _judge_loop.run(coro)
