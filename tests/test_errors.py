"""Errors a user meets first, checked by their exact text: a bad config key or value, a misspelled task key
(inline or in a task file), a bad ``--env-config`` / ``--policy-config``. Each names what is wrong and the
closest valid key, in one message without pydantic's chained traceback."""

from __future__ import annotations

import json
import re
import traceback

import gymnasium as gym
import pytest

import pyvision_env  # noqa: F401  (registers the ids)
from pyvision_agent.cli import main
from pyvision_agent.policies import make_policy
from pyvision_env.errors import ConfigError


def make_error(**config) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        gym.make("PyVisionImage-v0", **config)
    return caught.value


@pytest.mark.parametrize(("config", "message"), [
    ({"max_turn": 3}, "invalid PyVisionImage-v0 config: unknown key 'max_turn' (did you mean 'max_turns'?)"),
    ({"exec_timeout": 3},
     "invalid PyVisionImage-v0 config: unknown key 'exec_timeout' (did you mean 'exec_timeout_s'?)"),
    ({"zzz": 1}, "invalid PyVisionImage-v0 config: unknown key 'zzz'"),
    ({"max_turns": 0}, "invalid PyVisionImage-v0 config: max_turns=0: Input should be greater than or equal to 1"),
    ({"judge": "llm"}, "invalid PyVisionImage-v0 config: judge='llm' needs llm_judge={'base_url': ..., 'model': ...}"),
    ({"llm_judge": {"base_ur": "http://x", "model": "m"}, "judge": "llm"},
     "invalid PyVisionImage-v0 config: missing key 'llm_judge.base_url'; unknown key 'llm_judge.base_ur' "
     "(did you mean 'base_url'?)"),
    ({"max_turn": 3, "end_on_eror": True},
     "invalid PyVisionImage-v0 config: unknown key 'max_turn' (did you mean 'max_turns'?); unknown key "
     "'end_on_eror' (did you mean 'end_on_error'?)"),
])
def test_config_errors_are_one_short_message(config, message):
    error = make_error(**config)
    assert str(error) == message
    shown = "".join(traceback.format_exception(error))
    assert "pydantic" not in shown and "errors.pydantic.dev" not in shown and "ValidationError" not in shown
    assert "During handling of the above exception" not in shown and error.__suppress_context__


def test_a_wrong_value_names_its_key_and_value():
    message = str(make_error(dialect="pyvison"))
    assert "dialect='pyvison': unknown protocol 'pyvison' (did you mean 'pyvision'?)" in message
    long = "x" * 500
    assert str(make_error(isolation=long)).startswith(f"invalid PyVisionImage-v0 config: isolation='{'x' * 56}...: ")


def test_misspelled_inline_task_keys_name_the_task_and_the_closest_key():
    error = make_error(tasks=[{"question": "How many cats are on the sofa, counting the kitten?", "image": "a.png"}])
    assert str(error) == ("invalid task #0 without an id (question 'How many cats are on the sofa, counting...'): "
                          "unknown key 'image' (did you mean 'images'?); a task holds id, question, answer, "
                          "answer_type, choices, judge_options, images, video, data_source, metadata")
    error = make_error(tasks=[{"id": "t7", "question": "q", "images": ["a.png"], "answr": "3"}])
    assert str(error).startswith("invalid task 't7': unknown key 'answr' (did you mean 'answer'?)")
    assert "pydantic" not in "".join(traceback.format_exception(error))
    error = make_error(tasks=[{"id": "t8", "question": "q", "answer_type": "vibes"}])
    assert str(error) == ("invalid task 't8': answer_type='vibes': Input should be 'choice', 'number', 'mra', "
                          "'text' or 'math'")  # a value error does not list the keys


def test_misspelled_task_file_keys_are_refused_other_columns_kept(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "Colour?", "answer": "red", "image_pth": "a.png"}) + "\n")
    error = make_error(tasks=str(path))
    assert str(error) == (f"{path}: row 1: unknown key 'image_pth' (did you mean 'image_path'?); a task row holds "
                          "answer, answer_type, choices, data_source, id, image_path, images, judge_options, "
                          "metadata, question, video, video_path (other columns go to metadata)")
    rows = [{"id": "a", "question": "Colour?", "answr": "red", "image_path": "a.png"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert "row 1: unknown key 'answr' (did you mean 'answer'?)" in str(make_error(tasks=str(path)))

    # columns that are no misspelling of a key the row lacks stay metadata (datasets carry many)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [{"id": "a", "question": "Colour?", "answer": "red", "image_path": "a.png", "question_type": "colour",
             "image_id": 17, "category": "easy", "answers": ["red", "crimson"]}]
    path.write_text(json.dumps(rows[0]))
    env = gym.make("PyVisionImage-v0", tasks=str(path))
    metadata = dict(env.unwrapped.tasks[0].metadata)
    assert metadata.pop("inferred")["answer_type"] == "text"  # no answer_type: inferred and reported
    assert metadata == {"question_type": "colour", "image_id": 17, "category": "easy", "answers": ["red", "crimson"]}
    env.close()


@pytest.mark.parametrize(("argv", "message"), [
    (["--env-config", '{"max_turn": 3}'],
     "pyvision eval: invalid PyVisionImage-v0 config: unknown key 'max_turn' (did you mean 'max_turns'?)"),
    (["--policy-config", '{"turn": ["<answer>1</answer>"]}'],
     "pyvision eval: the scripted policy has no setting 'turn' (did you mean 'turns'?); its settings: turns"),
    (["--policy-config", '{"turns": []}'], "pyvision eval: turns must hold at least one turn"),
])
def test_eval_config_errors(tmp_path, argv, message):
    with pytest.raises(SystemExit) as caught:
        main(["eval", "--env", "PyVisionImage-v0", "--policy", "scripted", "--out", str(tmp_path / "run"), "--quiet",
              *argv])
    assert str(caught.value) == message
    assert caught.value.__suppress_context__


def test_policy_options_are_checked_against_the_policy():
    with pytest.raises(ValueError, match=re.escape("the openai policy has no setting 'temprature' (did you mean "
                                                   "'temperature'?)")):
        make_policy("openai", model="m", options={"temprature": 0.5})
    with pytest.raises(ValueError, match=re.escape("unknown policy 'scripte' (did you mean 'scripted'?)")):
        make_policy("scripte")
    with pytest.raises(ValueError, match="takes no model, server or sampling settings"):
        make_policy("scripted", model="m")
    assert make_policy("scripted", options={"turns": ["<answer>1</answer>"]}).turns == ["<answer>1</answer>"]
