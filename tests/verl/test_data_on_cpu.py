"""Dataset rows: written by pyvision_agent.verl.data, read back by verl's own RLHFDataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from PIL import Image

from pyvision_agent.verl.data import (
    load_pyvision_rl_json,
    main,
    task_to_row,
    tasks_from_hf,
    write_split,
)
from pyvision_env.tasks import Task

REPO = Path(__file__).resolve().parents[2]


def rl_dataset(path: Path, tokenizer, **data):
    """verl's RLHFDataset over ``path`` with the data section the recipes use."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 512, "filter_overlong_prompts": True,
                               "return_raw_chat": True, "truncation": "error", "cache_dir": str(path.parent / "cache"),
                               **data})
    return RLHFDataset(data_files=[str(path)], tokenizer=tokenizer, config=config, processor=None)


def test_synthetic_image_rows_round_trip_through_verls_dataset(tmp_path, tokenizer):
    from pyvision_agent.verl.data import synthetic_tasks

    tasks = synthetic_tasks("image", 3)
    path = write_split(tasks, tmp_path, "train")
    dataset = rl_dataset(path, tokenizer)
    assert len(dataset) == 3

    item = dataset[1]
    assert item["agent_name"] == "pyvision_agent"
    assert item["raw_prompt"] == [{"role": "user", "content": tasks[1].question}]
    assert item["reward_model"] == {"style": "rule", "ground_truth": tasks[1].answer}
    assert item["data_source"] == tasks[1].data_source
    assert item["index"] == 1
    extra = item["extra_info"]
    assert (extra["split"], extra["env_id"]) == ("train", "PyVisionImage-v0")

    # the task comes back whole, images as PNG files with the exact pixels, no scripted solution
    task = Task(**json.loads(extra["task"]))
    assert (task.id, task.question, task.answer, task.answer_type) == (tasks[1].id, tasks[1].question,
                                                                        tasks[1].answer, tasks[1].answer_type)
    assert "solution" in tasks[1].metadata and "solution" not in task.metadata
    (image_path,) = task.images
    assert Path(image_path).is_absolute() and Path(image_path).parent == tmp_path / "images"
    np.testing.assert_array_equal(np.asarray(Image.open(image_path)), np.asarray(tasks[1].images[0]))


def test_synthetic_video_rows_keep_the_video_path(tmp_path, tokenizer):
    from pyvision_agent.verl.data import synthetic_tasks

    (task,) = synthetic_tasks("video", 1)
    row = task_to_row(task, index=0, split="val")
    assert row["extra_info"]["env_id"] == "PyVisionVideo-v0"
    restored = Task(**json.loads(row["extra_info"]["task"]))
    assert restored.video == task.video and Path(restored.video).is_file()


def test_in_memory_images_need_an_image_dir_and_rows_need_an_answer():
    task = {"question": "How many?", "answer": "3", "images": [np.zeros((4, 4, 3), np.uint8)]}
    with pytest.raises(ValueError, match="holds in-memory images: pass image_dir"):
        task_to_row(task, index=0, split="train")
    with pytest.raises(ValueError, match="task 7 has no answer"):
        task_to_row({"question": "How many?"}, index=7, split="train")


def test_pyvision_rl_json_both_layouts(tmp_path, tokenizer):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    raw = [{"id": 5, "question": "What colour?", "answer": "black", "image_path": "a.png", "data_source": "demo",
            "answer_type": "text"}]
    converted = [{"prompt": [{"role": "user", "content": "SYSTEM... What colour? ..."}], "data_source": "demo",
                  "ability": "vqa", "env_name": "pyvision_gym_wo_image_hint",
                  "reward_model": {"ground_truth": "black", "style": "model"},
                  "extra_info": {"answer": "black", "index": 5, "question": "What colour?", "split": "train"},
                  "mm_hint": {"hint_path": "a.png", "hint_type": "image"}}]
    for name, rows in (("raw.json", raw), ("rl.json", converted)):
        (tmp_path / name).write_text(json.dumps(rows))
        (task,) = load_pyvision_rl_json(str(tmp_path / name))
        assert (task.id, task.question, task.answer, task.data_source) == ("5", "What colour?", "black", "demo")
        assert task.images == [str(tmp_path / "a.png")]


def test_hugging_face_dataset_from_disk(tmp_path, tokenizer):
    datasets = pytest.importorskip("datasets")
    pictures = [Image.fromarray(np.full((6, 6, 3), 13 * i, np.uint8)) for i in range(20)]
    ds = datasets.Dataset.from_dict({"problem": [f"q{i}" for i in range(20)], "solution": [str(i) for i in range(20)],
                                     "images": [[p] for p in pictures]})
    ds.save_to_disk(str(tmp_path / "hf"))
    train, val = main(["--hf-dataset", str(tmp_path / "hf"), "--question-key", "problem", "--answer-key", "solution",
                       "--answer-type", "number", "--val-size", "4", "--out", str(tmp_path / "out")], modality="image")
    assert pq.read_table(train).num_rows == 16 and pq.read_table(val).num_rows == 4
    item = rl_dataset(val, tokenizer)[0]
    task = Task(**json.loads(item["extra_info"]["task"]))
    assert (task.question, task.answer, task.answer_type) == ("q16", "16", "number")
    np.testing.assert_array_equal(np.asarray(Image.open(task.images[0])), np.asarray(pictures[16]))

    with pytest.raises(ValueError, match="row 0 of .* has no column 'question'"):
        tasks_from_hf(ds, data_source="x")


def test_prepare_data_script_synthetic_smoke_set(tmp_path, tokenizer):
    """The recipe's own script, as its README runs it."""
    out = tmp_path / "data"
    done = subprocess.run([sys.executable, str(REPO / "recipes" / "image" / "prepare_data.py"), "--synthetic", "6",
                           "--val-size", "2", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    train, val = rl_dataset(out / "train.parquet", tokenizer), rl_dataset(out / "val.parquet", tokenizer)
    assert (len(train), len(val)) == (6, 2)
    train_ids = {json.loads(train[i]["extra_info"]["task"])["id"] for i in range(6)}
    val_ids = {json.loads(val[i]["extra_info"]["task"])["id"] for i in range(2)}
    assert not train_ids & val_ids  # validation tasks are unseen seeds


def test_prepare_data_rejects_the_wrong_modality(tmp_path, capsys):
    rows = [{"id": i, "question": "q", "answer": "1", "video_path": "v.mp4"} for i in range(3)]
    (tmp_path / "v.json").write_text(json.dumps(rows))
    with pytest.raises(SystemExit):
        main(["--pyvision-json", str(tmp_path / "v.json"), "--val-size", "1", "--out", str(tmp_path / "o")],
             modality="image")
    assert "3 tasks are not image tasks (e.g. '0'); use the other recipe" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_hugging_face_rows_without_an_answer_type_are_inferred_not_text():
    rows = [{"question": "Which is red? (A) sky (B) apple", "answer": "B"}, {"question": "How many?", "answer": "42"},
            {"question": "Colour?", "answer": "dark red"}, {"question": "Q", "answer": "7", "answer_type": "text"}]
    tasks = tasks_from_hf(rows, data_source="unit", image_key=None)
    assert [t.answer_type for t in tasks] == ["choice", "number", "text", "text"]  # the last: its own column
    assert tasks[1].metadata["inferred"]["answer_type"] == "number"
    assert [t.answer_type for t in tasks_from_hf(rows, data_source="unit", image_key=None, answer_type="text")] \
        == ["text"] * 4
