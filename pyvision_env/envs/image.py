"""``PyVisionImage-v0``: questions about one or more images, answered with code over ``image_clue_i``."""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..errors import ConfigError
from ..media import fit_pixels, to_rgb_array
from ..prompts import image_user_prompt, rl_image_user_prompt, system_prompt
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
        images = tuple(_within(a, self.config.image_min_pixels, self.config.image_max_pixels) for a in originals)
        placeholder = self.config.image_placeholder
        if self.prompt_template is not None:
            system = self.config.system_prompt
            user = rl_image_user_prompt(self.prompt_template, task.question, sizes, placeholder)
        else:
            system = self.config.system_prompt or system_prompt("image", len(images))
            user = image_user_prompt(task.question, sizes, placeholder)
        text = user if system is None else f"{system}\n\n{user}"
        return text, images, {"system_prompt": system, "user_prompt": user}


def _within(image: np.ndarray, min_pixels: int | None, max_pixels: int | None) -> np.ndarray:
    """``image`` scaled (aspect kept) into ``[min_pixels, max_pixels]`` pixels, as the observation shows it."""
    if max_pixels is not None:
        image = fit_pixels(image, max_pixels)
    h, w = image.shape[:2]
    if min_pixels is not None and h * w < min_pixels:
        scale = math.sqrt(min_pixels / (h * w))
        image = cv2.resize(image, (math.ceil(w * scale), math.ceil(h * scale)), interpolation=cv2.INTER_CUBIC)
    return image
