"""The prompts: our system prompts and per-task user prompt, and the user turn of the PyVision-RL profile.

``profile="pyvision"`` (ours) sends a system prompt that names every variable of the runtime and how
frames come back, then the task as a user turn (input images with their sizes, or the video's facts).

``profile="pyvision_rl"`` reproduces what the released PyVision-RL models saw: no system prompt of
ours (policies send the model's default one), and a user turn made from a *template* in the layout of
their ``rl_system_prompt_template.json``. The project ships none of their text: point
``prompt_template`` at your own copy (``PATH.json#KEY`` or a text file). Without one the profile uses
our own wording in the same structure (:data:`RL_IMAGE_TEMPLATE`, :data:`RL_VIDEO_TEMPLATE`).
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError
from .protocol import neutralize_image_tags


@dataclass(frozen=True)
class VideoFacts:
    frames: int
    fps: float
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps if self.fps else 0.0


# -- ours ---------------------------------------------------------------------------------------------

_FORMAT = """Write Python code inside <code> followed by a ```python fenced block and </code>. It runs in a \
persistent Python interpreter (state is kept between your turns) and you then see its output inside \
<interpreter>...</interpreter>: printed text first, then every image your code showed. When you are \
sure, give the final answer as <answer>\\boxed{{...}}</answer>."""

_OURS_IMAGE = """You are a visual assistant that solves problems by writing Python code.
The input image{s} {are} loaded as PIL images: {names}. numpy (np), matplotlib.pyplot (plt), PIL's Image \
and cv2 are already imported. Show any image with plt.show() or display(x) (a figure, a PIL image or an \
array); use print() for values. Zoom into small details by cropping and resizing.
""" + _FORMAT

_OURS_VIDEO = """You are a visual assistant that solves problems about a video by writing Python code.
You cannot see the video directly. It is loaded as video_clue_0, a decord-style VideoReader: \
len(video_clue_0) frames, video_clue_0.get_avg_fps(), video_clue_0.get_batch(indices).asnumpy() -> \
(N, H, W, 3) uint8, video_clue_0[i].asnumpy(). numpy (np), matplotlib.pyplot (plt), PIL's Image and cv2 \
are already imported. Sample only the frames you need and show them with display(frame) or plt.show(); \
use print() for values.
""" + _FORMAT


def system_prompt(modality: Literal["image", "video"], n_images: int = 1) -> str:
    """Our system prompt (``profile="pyvision"``)."""
    if modality == "video":
        return _OURS_VIDEO.format()
    names = ", ".join(f"image_clue_{i}" for i in range(max(n_images, 1)))
    return _OURS_IMAGE.format(s="s" if n_images > 1 else "", are="are" if n_images > 1 else "is", names=names)


def image_user_prompt(question: str, sizes: list[tuple[int, int]], placeholder: str) -> str:
    """The question with each input image (as a placeholder the chat template fills) and its size."""
    lines = []
    for i, (w, h) in enumerate(sizes):
        lines.append(f"<image_clue_{i}>{placeholder}</image_clue_{i}>")
        lines.append(f"image_clue_{i}: width {w}, height {h}")
    return "\n".join(lines + ["", _neutral(question, placeholder)])


def video_user_prompt(question: str, facts: VideoFacts, placeholder: str = "<image>") -> str:
    info = (f"Video information: {facts.frames} frames, {facts.fps:.3f} frames per second, "
            f"{facts.duration_s:.2f} seconds, frame size {facts.width}x{facts.height} (width x height).")
    return f"{info}\n\n{_neutral(question, placeholder)}"


def _neutral(question: str, placeholder: str) -> str:
    """A dataset question may carry an image tag (``<image>\\nWhat is...``): it must not count as an image."""
    return neutralize_image_tags(question, placeholder)[0]


# -- the PyVision-RL profile ---------------------------------------------------------------------------

RL_IMAGE_TEMPLATE = """You solve visual problems with Python code as your tool; keep going until the \
problem is solved. Before each code call, say what you want to check; after it, reflect on the result.
The image is loaded as image_clue_0 (a PIL image); matplotlib (plt), numpy (np), PIL's Image, io and \
base64 are imported. To look at a figure, call plt.show(); use print() to inspect values.
Image size: width {width}, height {height}.
Write code as <code>
```python
...
```
</code> and give the final answer as <answer>
\\boxed{{...}}
</answer>.

Question: {query}"""
"""Our own wording of an image template, with the fields PyVision-RL's image templates use."""

RL_VIDEO_TEMPLATE = """You solve problems about a video with Python code as your tool; keep going until \
the problem is solved. You cannot see the video: sample its frames with code. Before each code call, say \
what you want to check; after it, reflect on the result.
The video is loaded as video_clue_0, a decord VideoReader (VideoReader and cpu come from decord): \
get_batch(indices).asnumpy() gives frames; show them with plt.show(). matplotlib (plt), numpy (np), PIL's \
Image, io and base64 are imported.
{video_info}
Write code as <code>
```python
...
```
</code> and give the final answer as <answer>
\\boxed{{...}}
</answer>.

Question: {query}"""
"""Our own wording of a video template, with the fields PyVision-RL's video templates use."""

TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "image": ("query", "width", "height"),
    "video": ("query", "video_info", "width", "height", "video_length", "fps"),
}
"""The ``str.format`` fields a template may use, per modality. PyVision-RL's image templates use
``query``, ``width`` and ``height`` (of the original image); their video templates ``query`` and
``video_info`` (:func:`video_info`). The rest are there for templates of your own."""


def load_prompt_template(spec: str) -> str:
    """The template ``spec`` names: ``PATH.json#KEY`` (a JSON object of templates, the layout of
    PyVision-RL's ``rl_system_prompt_template.json``) or the path of a text file.

    Raises ConfigError naming a missing file, a key not in the JSON (with the keys it has) or a value
    that is not a string.
    """
    path, _, key = spec.partition("#") if ".json#" in spec else (spec, "", "")
    if not os.path.isfile(path):
        raise ConfigError(f"prompt_template {spec!r}: no such file {path!r} (give PATH.json#KEY or a text file)")
    with open(path, encoding="utf-8") as f:
        if not key:
            return f.read()
        try:
            templates = json.load(f)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"prompt_template {spec!r}: {path} is not valid JSON ({exc.msg})") from exc
    if not isinstance(templates, dict) or key not in templates:
        keys = sorted(templates) if isinstance(templates, dict) else []
        raise ConfigError(f"prompt_template {spec!r}: no key {key!r} in {path}; keys: {', '.join(keys) or 'none'}")
    if not isinstance(templates[key], str):
        raise ConfigError(f"prompt_template {spec!r}: the value of {key!r} is a {type(templates[key]).__name__}, "
                          "not a string")
    return templates[key]


def check_template(template: str, modality: Literal["image", "video"]) -> str:
    """``template`` if every ``{field}`` in it is one of :data:`TEMPLATE_FIELDS`; ConfigError otherwise."""
    allowed = TEMPLATE_FIELDS[modality]
    try:
        fields = {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as exc:
        raise ConfigError(f"the {modality} prompt template is not a valid str.format template: {exc}") from exc
    unknown = sorted(fields - set(allowed))
    if unknown:
        raise ConfigError(f"the {modality} prompt template uses unknown field(s) {', '.join(unknown)}; "
                          f"known: {', '.join(allowed)}")
    return template


def video_info(facts: VideoFacts) -> str:
    """The ``video_info`` block of PyVision-RL's video prompt: frame size, length in frames, sample fps
    with two decimals, and where the video is."""
    return (f"Frame Width: {facts.width}; Frame Height: {facts.height};\n"
            f"Video Length: {facts.frames}; Sample FPS: {facts.fps:.2f}\n"
            f"The original video has been read into the global variable `video_clue_0`.")


def rl_image_user_prompt(template: str, question: str, sizes: list[tuple[int, int]], placeholder: str) -> str:
    """The image user turn of the profile: each input image tagged ``<image_clue_i>{placeholder}
    </image_clue_i>`` on its own line, then the template with the question and the first image's
    original size (PyVision-RL tasks have one image)."""
    tags = "".join(f"<image_clue_{i}>{placeholder}</image_clue_{i}>\n" for i in range(len(sizes)))
    width, height = sizes[0]
    return tags + template.format(query=_neutral(question, placeholder), width=str(width), height=str(height))


def rl_video_user_prompt(template: str, question: str, facts: VideoFacts, placeholder: str = "<image>") -> str:
    """The video user turn of the profile: the template alone (no frame), with the video's facts."""
    return template.format(query=_neutral(question, placeholder), video_info=video_info(facts), width=facts.width,
                           height=facts.height, video_length=facts.frames, fps=f"{facts.fps:.2f}")
