"""Tasks and where they come from: lists, JSONL/parquet files, benchmark copies, synthetic suites.

A task source is any ``Sequence[Task]``: the env draws ``source[i]`` with its seeded RNG, and an
evaluation walks it in order. Benchmarks are read from local copies in their published layouts (no
downloads at run time).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Union

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, describe_validation_error, did_you_mean
from .rewards.rules import check_judge_options, infer_answer_type, judge, options_in_question

AnswerType = Literal["choice", "number", "mra", "text", "math"]
TaskSourceSpec = Union[str, "os.PathLike[str]", Sequence[Any]]


class Task(BaseModel):
    """One question about an image (or images) or a video.

    Media paths are made absolute when the task is built (relative to the current directory here;
    task files resolve theirs against the file's directory), so the sandbox's workers, whose working
    directory is their scratch space, find them. A task without ``answer_type`` gets one inferred by
    :func:`~pyvision_env.rewards.infer_answer_type`, and a ``choice`` task without ``choices`` takes the
    options its question lists one per line; both are reported in ``metadata["inferred"]``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    id: str | None = None
    """A stable identifier (used to resume evaluations and to group rollouts)."""
    question: str = Field(min_length=1)
    """What the model is asked, without the system prompt."""
    answer: str | None = None
    """The reference answer; optional at evaluation time (then no accuracy is computed)."""
    answer_type: AnswerType | None = None
    """Which judge scores the answer: choice letters, numbers, VSI-Bench's MRA, normalised text, math.
    None (not given) is inferred when the task is built, so a built task always has one; a given one
    always wins."""
    choices: list[str] | None = None
    """Option texts for ``choice`` questions, in letter order (A, B, ...)."""
    judge_options: dict[str, Any] = Field(default_factory=dict)
    """Options of this task's judge, e.g. ``{"rel_tol": 0.01}`` for a ``number`` task that accepts 1%
    (numbers are exact by default). Checked against the judge when the task is built."""
    images: list[Any] = Field(default_factory=list)
    """Paths, PIL images or HxWx3 uint8 arrays (image env)."""
    video: str | None = None
    """Path of the video (video env)."""
    data_source: str = "unknown"
    """The dataset the task belongs to; summaries are broken down by it."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Free-form extras (a synthetic task's scripted solution lives here)."""

    @field_validator("images")
    @classmethod
    def _check_images(cls, images: list[Any]) -> list[Any]:
        for image in images:
            if not isinstance(image, (str, os.PathLike, Image.Image, np.ndarray)):
                raise ValueError(f"an image must be a path, a PIL image or an HxWx3 uint8 array, got "
                                 f"{type(image).__name__}")
        return [os.path.abspath(i) if isinstance(i, (str, os.PathLike)) else i for i in images]

    @field_validator("video")
    @classmethod
    def _absolute_video(cls, video: str | None) -> str | None:
        return None if video is None else os.path.abspath(video)

    @field_validator("answer", mode="before")
    @classmethod
    def _answer_to_str(cls, answer: Any) -> Any:
        return None if answer is None else str(answer)

    @model_validator(mode="after")
    def _infer_judging(self) -> Task:
        inferred: dict[str, str] = {}
        if self.answer_type is None:
            self.answer_type, why = infer_answer_type(self.answer, self.data_source)
            inferred |= {"answer_type": self.answer_type, "why": why}
        if self.answer_type == "choice" and self.choices is None:
            self.choices = options_in_question(self.question)
            if self.choices is not None:
                inferred["choices"] = "listed in the question"
        if "choices" in self.judge_options:
            raise ValueError("judge_options cannot hold 'choices': give the options as the task's choices field")
        check_judge_options(self.answer_type, self.judge_options)
        if inferred:
            self.metadata = {**self.metadata, "inferred": {**self.metadata.get("inferred", {}), **inferred}}
        return self

    def judge(self, prediction: str | None) -> float:
        """The rule judge's score of ``prediction`` with this task's answer type, choices and judge options
        (0.0 without a prediction). Raises ValueError for a task without an answer."""
        if self.answer is None:
            raise ValueError(f"task {self.id!r} has no answer to judge against")
        opts = dict(self.judge_options)
        if self.answer_type == "choice" and self.choices:
            opts["choices"] = self.choices
        return judge(prediction, self.answer, self.answer_type, **opts)


def to_task(item: Task | dict[str, Any], where: str = "") -> Task:
    """Validate one task; the error names the task (its id, else ``where`` and its question), the bad key
    and the closest valid one."""
    if isinstance(item, Task):
        return item
    if not isinstance(item, dict):
        raise ConfigError(f"a task must be a dict or a Task, got {type(item).__name__}")
    try:
        return Task(**item)
    except ValidationError as exc:
        if item.get("id") is not None:
            name = repr(item["id"])
        else:
            question = str(item.get("question") or "")
            question = question if len(question) <= 40 else question[:40].rstrip() + "..."
            name = " ".join(filter(None, [where, "without an id", f"(question {question!r})" if question else ""]))
        problems = describe_validation_error(exc, Task)
        keys = f"; a task holds {', '.join(Task.model_fields)}" if "unknown key" in problems else ""
        raise ConfigError(f"invalid task {name}: {problems}{keys}") from None


# The keys of a row of a task file: the Task fields plus the file layout's names for the media.
_ROW_KEYS = frozenset({*Task.model_fields, "image_path", "video_path"})
_MEDIA_KEYS = frozenset({"images", "image_path", "video", "video_path"})


def _check_row_keys(row: dict[str, Any], where: str) -> None:
    """Columns that are not task keys go to ``metadata`` (datasets carry many), but one that looks like a
    misspelling of a key the row lacks (``image_pth`` without ``image_path``) is an error here, instead
    of an env refusing the task much later for having no image."""
    has_media = any(row.get(k) for k in _MEDIA_KEYS)
    for key in row:
        if key in _ROW_KEYS:
            continue
        lacking = [k for k in _ROW_KEYS if k != "id" and k not in row and not (k in _MEDIA_KEYS and has_media)]
        hint = did_you_mean(str(key), lacking, cutoff=0.75)  # stricter than for configs: extra columns are normal
        if hint:
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; a task row holds "
                              f"{', '.join(sorted(_ROW_KEYS))} (other columns go to metadata)")


class TaskList(Sequence[Task]):
    """Tasks validated up front, so a bad row fails at make time, not in the middle of training."""

    def __init__(self, items: Iterable[Task | dict[str, Any]], name: str = "tasks") -> None:
        self.name = name
        self._tasks = [to_task(item, f"#{i}") for i, item in enumerate(items)]
        if not self._tasks:
            raise ConfigError(f"the task source {name!r} holds no tasks")

    def __len__(self) -> int:
        return len(self._tasks)

    def __getitem__(self, i: int) -> Task:  # type: ignore[override]
        return self._tasks[i]


def load_tasks(spec: TaskSourceSpec, modality: Literal["image", "video"]) -> Sequence[Task]:
    """Resolve a task source: a list of dicts/Tasks, a path to .jsonl/.json/.parquet, a benchmark
    directory, or the name of a synthetic suite (``synthetic``, ``synthetic-image``, ...)."""
    from . import synthetic

    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text in synthetic.SUITES or text == "synthetic":
            return synthetic.suite(text if text != "synthetic" else f"synthetic-{modality}")
        if not os.path.exists(text):
            raise ConfigError(f"tasks={text!r} is neither an existing file nor a suite; known suites: "
                              f"{', '.join(['synthetic', *synthetic.SUITES])}")
        return load_file(text)
    if isinstance(spec, Sequence):
        return TaskList(spec)
    raise ConfigError(f"tasks must be a list of task dicts, a file path or a suite name, got {type(spec).__name__}")


def load_file(path: str) -> TaskList:
    """Tasks from a JSONL, JSON or parquet file in one of PyVision-RL's layouts; relative media paths
    are resolved against the file's directory.

    - Validation layout: ``id, question, answer, image_path | video_path, data_source`` (plus our
      ``answer_type``, ``choices``, ``judge_options``; other keys go to ``metadata``).
    - RL layout: ``prompt, env_name, data_source, reward_model.ground_truth, extra_info.{question, index},
      mm_hint.{hint_path, hint_type}``. The bare question and the media path are taken back; the
      row's ready-made ``prompt`` is not used (the env builds the prompt, see ``profile``).
    """
    rows = _read_rows(path)
    base = os.path.dirname(os.path.abspath(path))
    for i, row in enumerate(rows):
        if isinstance(row, dict) and "mm_hint" not in row:
            _check_row_keys(row, f"{path}: row {i + 1}")
    return TaskList(((_rl_row_to_task if "mm_hint" in row else _row_to_task)(row, base, i)
                     for i, row in enumerate(rows)), name=path)


def _read_rows(path: str) -> list[dict[str, Any]]:
    if path.endswith(".parquet"):
        return _read_parquet(path)
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            rows = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
            return rows
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc.msg})") from exc
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON list of task objects")
    return data


def _read_parquet(path: str) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError("reading parquet task files needs pyarrow: pip install 'pyvision[data]'") from exc
    return pq.read_table(path).to_pylist()


def _resolve(path: str, base: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base, path)


def _row_to_task(row: dict[str, Any], base: str, index: int) -> Task:
    def resolve(p: str) -> str:
        return _resolve(p, base)

    images = row.get("images") or row.get("image_path") or []
    if isinstance(images, str):
        images = [images]
    video = row.get("video") or row.get("video_path")
    return to_task({
        "id": str(row.get("id", index)),
        "question": row.get("question", ""),
        "answer": row.get("answer"),
        "answer_type": row.get("answer_type") or None,
        "choices": row.get("choices"),
        "judge_options": row.get("judge_options") or {},
        "images": [resolve(p) for p in images],
        "video": resolve(video) if video else None,
        "data_source": row.get("data_source") or "unknown",
        "metadata": {**(row.get("metadata") or {}), **{k: v for k, v in row.items() if k not in _ROW_KEYS}},
    })


def _rl_row_to_task(row: dict[str, Any], base: str, index: int) -> Task:
    """A row of PyVision-RL's RL layout (see :func:`load_file`) as a task."""
    hint, extra = row.get("mm_hint"), row.get("extra_info") or {}
    if not isinstance(hint, dict) or hint.get("hint_type") not in ("image", "video") or not hint.get("hint_path"):
        raise ConfigError(f"row {index}: mm_hint must be {{'hint_path': PATH, 'hint_type': 'image' | 'video'}}, "
                          f"got {hint!r}")
    if not extra.get("question"):
        raise ConfigError(f"row {index}: an RL-layout row needs extra_info.question (the bare question)")
    media = _resolve(hint["hint_path"], base)
    return to_task({
        "id": str(extra.get("index", index)),
        "question": extra["question"],
        "answer": (row.get("reward_model") or {}).get("ground_truth"),
        "data_source": row.get("data_source") or "unknown",
        **({"video": media} if hint["hint_type"] == "video" else {"images": [media]}),
        "metadata": {key: row[key] for key in ("env_name", "ability") if key in row},
    })


# -- benchmark copies in their published layouts ------------------------------------------------------

_LETTERS = "ABCDEFGHIJ"


def load_vstar(root: str) -> TaskList:
    """V* Bench (craigwu/vstar_bench): ``test_questions.jsonl`` (question_id, image, text, category,
    label) with the images beside it; the question text already lists the options."""
    path = os.path.join(root, "test_questions.jsonl")
    if not os.path.isfile(path):
        raise ConfigError(f"V* Bench: {path} not found (expected the dataset's published layout)")
    tasks = []
    for row in _read_rows(path):
        tasks.append({
            "id": f"vstar-{row['question_id']}", "question": row["text"], "answer": row["label"],
            "answer_type": "choice", "images": [os.path.join(root, row["image"])],
            "data_source": f"vstar/{row.get('category', 'unknown')}",
        })
    return TaskList(tasks, name="vstar")


def load_hrbench(path: str, cache_dir: str | None = None) -> TaskList:
    """HR-Bench (DreamMr/HR-Bench) TSV or parquet: index, question, answer, A-D, category,
    cycle_category, image (base64). Images are decoded once into ``cache_dir``."""
    if path.endswith(".tsv"):
        import csv

        csv.field_size_limit(1 << 31)
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    else:
        rows = _read_rows(path)
    cache_dir = cache_dir or os.path.join(_cache_root(), "hrbench",
                                          hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12])
    os.makedirs(cache_dir, exist_ok=True)
    tasks = []
    for row in rows:
        image_path = os.path.join(cache_dir, f"{row['index']}.png")
        if not os.path.exists(image_path):
            Image.open(io.BytesIO(base64.b64decode(row["image"]))).save(image_path + ".tmp", format="PNG")
            os.replace(image_path + ".tmp", image_path)
        choices = [row[letter] for letter in "ABCD" if row.get(letter) not in (None, "")]
        options = "\n".join(f"{_LETTERS[i]}. {c}" for i, c in enumerate(choices))
        tasks.append({
            "id": f"hrbench-{row['index']}", "question": f"{row['question']}\n{options}", "answer": row["answer"],
            "answer_type": "choice", "choices": choices, "images": [image_path],
            "data_source": f"hrbench/{row.get('category', 'unknown')}",
            "metadata": {"cycle_category": row.get("cycle_category")},
        })
    return TaskList(tasks, name="hrbench")


_VSI_NUMERIC = {"object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation"}


def load_vsibench(path: str, video_root: str) -> TaskList:
    """VSI-Bench (nyu-visionx/VSI-Bench) rows (JSONL or parquet): id, dataset, scene_name,
    question_type, question, options, ground_truth; videos at ``video_root/dataset/scene_name.mp4``.
    Numeric question types are scored with mean relative accuracy, the rest as multiple choice."""
    tasks = []
    for row in _read_rows(path):
        numeric = row["question_type"] in _VSI_NUMERIC
        options = row.get("options") or []
        question = row["question"] if numeric else row["question"] + "\n" + "\n".join(options)
        tasks.append({
            "id": f"vsibench-{row['id']}", "question": question, "answer": row["ground_truth"],
            "answer_type": "mra" if numeric else "choice",
            "choices": None if numeric else [o.split(". ", 1)[-1] for o in options],
            "video": os.path.join(video_root, row["dataset"], f"{row['scene_name']}.mp4"),
            "data_source": f"vsibench/{row['question_type']}",
        })
    return TaskList(tasks, name="vsibench")


def _cache_root() -> str:
    return os.environ.get("PYVISION_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pyvision")
