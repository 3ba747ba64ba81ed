"""``PyVisionImage-v0``: questions about one or more images, answered with code over ``image_clue_i``."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..media import fit_pixels, to_rgb_array
from ..prompts import image_user_prompt, system_prompt
from ..sandbox.backend import EpisodeSession
from ..tasks import Task
from .base import PyVisionEnv
from .config import ImageEnvConfig


class PyVisionImageEnv(PyVisionEnv):
    env_id = "PyVisionImage-v0"
    modality = "image"
    config_cls = ImageEnvConfig
    config: ImageEnvConfig

    def _check_task(self, task: Task) -> None:
        if not task.images or task.video is not None:
            raise ConfigError(f"{self.env_id} needs tasks with images and no video; task {task.id!r} has "
                              f"{len(task.images)} image(s) and video={task.video!r}")

    def _first_observation(self, task: Task, session: EpisodeSession) -> tuple[str, tuple[np.ndarray, ...], dict]:
        originals = [to_rgb_array(image) for image in task.images]
        sizes = [(int(a.shape[1]), int(a.shape[0])) for a in originals]  # the code sees the originals
        limit = self.config.image_max_pixels
        images = tuple(originals if limit is None else (fit_pixels(a, limit) for a in originals))
        system = self.config.system_prompt or system_prompt(self.config.prompt_style, "image", len(images))
        user = image_user_prompt(task.question, sizes, self.config.image_placeholder)
        return f"{system}\n\n{user}", images, {"system_prompt": system, "user_prompt": user}
