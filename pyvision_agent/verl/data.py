"""PyVision tasks as verl dataset rows (parquet), from PyVision-RL's JSON, a Hugging Face dataset or a
synthetic suite. Used by ``recipes/*/prepare_data.py``; imports no verl.

A row carries the whole task as JSON in ``extra_info.task``: the agent loop rebuilds the episode from it
(system prompt, image placeholders, interpreter) with the env, so the row's ``prompt`` (the bare
question) only serves verl's dataset for its length filter and logs. There is deliberately no
``images`` column: verl's dataset would otherwise load and process every image before the agent loop
does it again. Images held in memory (synthetic arrays, PIL images from a Hugging Face dataset) are
written once as PNG files beside the parquet, and every path is made absolute so Ray workers in any
working directory find them.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from pyvision_env.tasks import Task, TaskList, load_file, to_task

AGENT_NAME = "pyvision_agent"
ENV_IDS = {"image": "PyVisionImage-v0", "video": "PyVisionVideo-v0"}
Modality = Literal["image", "video"]


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"task metadata holds a {type(value).__name__}, which cannot go into the row's JSON; keep "
                    f"metadata to JSON types")


def task_to_row(task: Task | dict[str, Any], *, index: int, split: str, image_dir: str | os.PathLike[str] | None = None
                ) -> dict[str, Any]:
    """One verl dataset row for ``task`` (the layout the PyVision agent loop reads).

    In-memory images are saved as ``image_dir/<split>-<index>-<k>.png`` (fast PNG); ``image_dir`` is
    required only for such tasks. The scripted solution of a synthetic task is left out. Raises
    ValueError for a task without an answer (a row must be scorable).
    """
    task = to_task(task)
    if task.answer is None:
        raise ValueError(f"task {task.id or index!r} has no answer; training and validation rows need one")
    images = []
    for k, image in enumerate(task.images):
        if isinstance(image, str):
            images.append(os.path.abspath(image))
            continue
        if image_dir is None:
            raise ValueError(f"task {task.id or index!r} holds in-memory images: pass image_dir to write them")
        path = Path(image_dir) / f"{split}-{index}-{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        picture.convert("RGB").save(path, compress_level=1)
        images.append(str(path.resolve()))
    data = task.model_dump() | {
        "id": task.id or f"{split}-{index}",
        "images": images,
        "video": os.path.abspath(task.video) if task.video else None,
        "metadata": {k: v for k, v in task.metadata.items() if k != "solution"},
    }
    return {
        "data_source": task.data_source,
        "prompt": [{"role": "user", "content": task.question}],
        "agent_name": AGENT_NAME,
        "reward_model": {"style": "rule", "ground_truth": task.answer},
        "extra_info": {"index": index, "split": split, "env_id": ENV_IDS["video" if task.video else "image"],
                       "task": json.dumps(data, default=_json_default)},
    }


def write_parquet(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write rows to one parquet file (what ``data.train_files`` / ``data.val_files`` point at)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("writing parquet needs pyarrow: pip install 'pyvision[data]'") from exc
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(list(rows)), path)
    return path


def write_split(tasks: Iterable[Task | dict[str, Any]], out_dir: str | os.PathLike[str], split: str) -> Path:
    """``out_dir/<split>.parquet`` from ``tasks``, in-memory images under ``out_dir/images``."""
    out_dir = Path(out_dir)
    rows = [task_to_row(task, index=i, split=split, image_dir=out_dir / "images") for i, task in enumerate(tasks)]
    return write_parquet(rows, out_dir / f"{split}.parquet")


def load_pyvision_rl_json(path: str) -> TaskList:
    """Tasks from a PyVision-RL data file, in its raw validation layout or its converted RL layout: the
    same reader as ``gym.make(..., tasks=path)`` (:func:`pyvision_env.tasks.load_file`)."""
    return load_file(path)


def tasks_from_hf(dataset: Iterable[dict[str, Any]], *, data_source: str, question_key: str = "question",
                  answer_key: str = "answer", image_key: str | None = "images", video_key: str | None = None,
                  answer_type: str | None = None) -> list[Task]:
    """Tasks from a Hugging Face dataset (any iterable of dict rows). The image column may hold one image
    or a list (paths or PIL images, as ``datasets``' Image feature decodes them). ``answer_type`` judges
    every row; without it a row's own ``answer_type`` column does, else the task infers it from the
    answer (``B`` is a choice, ``42`` a number; the inference is in the task's ``metadata``)."""
    tasks = []
    for i, row in enumerate(dataset):
        missing = [k for k in (question_key, answer_key) if k not in row]
        if missing:
            raise ValueError(f"row {i} of {data_source} has no column {missing[0]!r}; columns: {sorted(row)}; "
                             f"pick the right one with --question-key / --answer-key")
        images = row.get(image_key) if image_key else None
        images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
        tasks.append(to_task({"id": str(row.get("id", i)), "question": str(row[question_key]),
                              "answer": row[answer_key], "answer_type": answer_type or row.get("answer_type"),
                              "images": images, "video": row.get(video_key) if video_key else None,
                              "data_source": data_source}))
    return tasks


def synthetic_tasks(modality: Modality, n: int, *, start: int = 0, kind: str | None = None) -> list[Task]:
    """Tasks ``start .. start + n - 1`` of the built-in ``synthetic-<modality>`` suite (offline), or of its
    ``synthetic-<kind>`` suite (one task generator, e.g. ``count_shapes``)."""
    from pyvision_env.synthetic import SUITES, SyntheticSuite

    name = f"synthetic-{kind or modality}"
    if SUITES.get(name, (None,))[0] != modality:
        kinds = sorted(k.removeprefix("synthetic-") for k, (m, _) in SUITES.items()
                       if m == modality and k != f"synthetic-{modality}")
        raise ValueError(f"no synthetic {modality} suite {name!r}; {modality} kinds: {kinds}")
    suite = SyntheticSuite(name, size=start + n)
    return [suite[i] for i in range(start, start + n)]


def main(argv: Sequence[str] | None = None, *, modality: Modality) -> list[Path]:
    """Command line of ``recipes/<modality>/prepare_data.py``: writes ``train.parquet`` and ``val.parquet``."""
    parser = argparse.ArgumentParser(description=f"Write verl parquet files of PyVision {modality} tasks.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pyvision-json", metavar="FILE", help="PyVision-RL JSON/JSONL data file")
    source.add_argument("--hf-dataset", metavar="NAME_OR_DIR",
                        help="Hugging Face dataset: a hub name (cached or downloadable) or a save_to_disk directory")
    source.add_argument("--synthetic", type=int, metavar="N", help="N built-in synthetic tasks (smoke run, offline)")
    parser.add_argument("--synthetic-kind", metavar="KIND",
                        help="only synthetic tasks of one kind (e.g. count_shapes); default: every kind in turn")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--val-size", type=int, default=16, help="tasks held out for validation (default 16)")
    parser.add_argument("--hf-split", default="train")
    parser.add_argument("--question-key", default="question")
    parser.add_argument("--answer-key", default="answer")
    parser.add_argument("--media-key", default=None, help="image (or video) column; default images / video")
    parser.add_argument("--answer-type", help="judge for Hugging Face rows (choice, number, ...); default: a "
                        "row's answer_type column, else inferred from its answer")
    args = parser.parse_args(argv)
    if args.val_size < 1:
        parser.error(f"--val-size must be >= 1, got {args.val_size}")

    if args.synthetic_kind and args.synthetic is None:
        parser.error("--synthetic-kind goes with --synthetic N")
    if args.synthetic is not None:
        if args.synthetic < 1:
            parser.error(f"--synthetic must be >= 1, got {args.synthetic}")
        try:
            train = synthetic_tasks(modality, args.synthetic, kind=args.synthetic_kind)
            val = synthetic_tasks(modality, args.val_size, start=args.synthetic, kind=args.synthetic_kind)  # unseen
        except ValueError as exc:
            parser.error(str(exc))
    else:
        if args.pyvision_json:
            tasks = list(load_pyvision_rl_json(args.pyvision_json))
        else:
            tasks = tasks_from_hf(_load_hf(args.hf_dataset, args.hf_split), data_source=args.hf_dataset,
                                  question_key=args.question_key, answer_key=args.answer_key,
                                  image_key=None if modality == "video" else args.media_key or "images",
                                  video_key=args.media_key or "video" if modality == "video" else None,
                                  answer_type=args.answer_type)
        if len(tasks) <= args.val_size:
            parser.error(f"{len(tasks)} tasks cannot spare --val-size {args.val_size} for validation")
        train, val = tasks[:-args.val_size], tasks[-args.val_size:]
    wrong = [t.id for t in (*train, *val) if bool(t.video) != (modality == "video")]
    if wrong:
        parser.error(f"{len(wrong)} tasks are not {modality} tasks (e.g. {wrong[0]!r}); use the other recipe")
    paths = [write_split(train, args.out, "train"), write_split(val, args.out, "val")]
    print(f"wrote {len(train)} train and {len(val)} val rows: {paths[0]} {paths[1]}")
    return paths


def _load_hf(name: str, split: str) -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("--hf-dataset needs the datasets package: pip install datasets") from exc
    if os.path.isdir(name):
        loaded = datasets.load_from_disk(name)
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(name, split=split)
