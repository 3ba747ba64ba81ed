"""``PyVisionVideo-v0``: questions about a video; the model builds its visual context by sampling frames."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..prompts import VideoFacts, rl_video_user_prompt, system_prompt, video_user_prompt
from ..sandbox.backend import EpisodeSession
from ..tasks import Task
from ..visual_tokens import uniform_sampling_tokens
from .base import PyVisionEnv
from .config import VideoEnvConfig


class PyVisionVideoEnv(PyVisionEnv):
    env_id = "PyVisionVideo-v0"
    modality = "video"
    config_cls = VideoEnvConfig
    config: VideoEnvConfig

    def _check_task(self, task: Task) -> None:
        if task.video is None or task.images:
            raise ConfigError(f"{self.env_id} needs tasks with a video and no images; task {task.id!r} has "
                              f"video={task.video!r} and {len(task.images)} image(s)")

    def _first_observation(self, task: Task, session: EpisodeSession) -> tuple[str, tuple[np.ndarray, ...], dict]:
        facts = VideoFacts(**session.video_facts)  # what the episode's video_clue_0 reports
        placeholder = self.config.image_placeholder
        if self.prompt_template is not None:
            system = self.config.system_prompt
            user = rl_video_user_prompt(self.prompt_template, task.question, facts, placeholder)
        else:
            system = self.config.system_prompt or system_prompt("video")
            user = video_user_prompt(task.question, facts, placeholder)
        uniform = uniform_sampling_tokens(min(self.config.uniform_baseline_frames, facts.frames), facts.height,
                                          facts.width, self._token_rule,
                                          min_pixels=self.config.visual_token_min_pixels,
                                          max_pixels=self.config.visual_token_max_pixels)
        extra = {"system_prompt": system, "user_prompt": user, "visual_tokens_uniform": uniform,
                 "video": facts.__dict__ | {"duration_s": facts.duration_s}}
        return user if system is None else f"{system}\n\n{user}", (), extra
