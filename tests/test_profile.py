"""profile="pyvision_rl": the protocol of the released PyVision-RL models, string by string.

Templates, rows and turns are built in PyVision-RL's layouts (../shared/NOTES-pyvision.md) with our own
wording, and every observation the env writes is checked exactly, turn by turn, with the rewards.
"""

from __future__ import annotations

import json
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
from media_utils import make_video
from PIL import Image

import pyvision_env  # noqa: F401
from pyvision_env.errors import ConfigError

FENCE = "```"
IMAGE_TEMPLATE = "Our words: study the picture ({width} by {height}).\nQuestion: {query}"
VIDEO_TEMPLATE = "Our words about a clip.\n{video_info}\nQuestion: {query}"


def code(body: str) -> str:
    return f"Let me look.\n<code>\n{FENCE}python\n{body}\n{FENCE}\n</code>"


def answer(value: str) -> str:
    """Their prompt shows the answer inside <answer>\\n\\boxed{'...'}\\n</answer>: models copy the quotes."""
    return f"Done.\n<answer>\n\\boxed{{'{value}'}}\n</answer>"


def response(body: str) -> str:
    return f"<tool_response>\n<interpreter>{body}</interpreter>\n\n</tool_response>"


@pytest.fixture()
def templates(tmp_path) -> str:
    path = tmp_path / "rl_templates.json"
    path.write_text(json.dumps({"ours_image_v1": IMAGE_TEMPLATE, "ours_video_v1": VIDEO_TEMPLATE}))
    return str(path)


@pytest.fixture()
def image_task(tmp_path) -> dict:
    path = tmp_path / "small.png"
    Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(path)
    return {"id": "i1", "question": "What is 6 times 7?", "answer": "42", "images": [str(path)],
            "data_source": "unit"}


@pytest.fixture()
def video_task(tmp_path) -> dict:
    path = str(tmp_path / "clip.mp4")
    make_video(path, n_frames=30, fps=10, width=64, height=48)
    return {"id": "v1", "question": "How many frames?", "answer": "30", "video": path, "data_source": "vsi_numerical"}


def rl_env(env_id: str, task: dict, templates: str, key: str, **config):
    return gym.make(env_id, tasks=[task], profile="pyvision_rl", prompt_template=f"{templates}#{key}", **config)


def test_image_episode_turn_by_turn(image_task, templates):
    env = rl_env("PyVisionImage-v0", image_task, templates, "ours_image_v1")
    obs, info = env.reset(seed=0)
    # the template is the user turn (original size), the image tagged as they tag it, no system prompt
    assert obs["text"] == ("<image_clue_0><image></image_clue_0>\n"
                           "Our words: study the picture (60 by 40).\nQuestion: What is 6 times 7?")
    assert info["system_prompt"] is None and info["user_prompt"] == obs["text"]
    (shown,) = obs["images"]  # 40x60 = 2,400 pixels: shown within 3,136 .. 2,000,000 pixels, aspect kept
    assert 3136 <= shown.shape[0] * shown.shape[1] <= 3136 * 1.1 and abs(shown.shape[1] / shown.shape[0] - 1.5) < 0.05

    obs, reward, term, trunc, info = env.step(code("print('  6 * 7 =', 6 * 7, '  ')"))
    assert obs["text"] == response("\nText Result:\n6 * 7 = 42") and obs["images"] == ()
    assert (reward, term, trunc) == (0.0, False, False)

    obs, *_ = env.step(code("print(image_clue_0.size)\ndisplay(image_clue_0)\n"
                            "plt.imshow(np.zeros((4, 4)))\nplt.show()"))
    assert obs["text"] == response("Text Result:\n(60, 40)\nImage Result:\n"
                                   "<image_clue_1><image></image_clue_1><image_clue_2><image></image_clue_2>")
    assert len(obs["images"]) == 2

    obs, reward, term, trunc, info = env.step(answer("42"))
    assert term and not trunc and info["end_reason"] == "answered" and info["prediction"] == "'42'"
    assert info["reward_components"] == {"accuracy": 1.0, "tool": pytest.approx(0.2), "format": 0.0,
                                         "total": pytest.approx(1.2)}
    env.close()


def test_video_episode_turn_by_turn_with_graded_mra(video_task, templates):
    env = rl_env("PyVisionVideo-v0", video_task, templates, "ours_video_v1")
    obs, info = env.reset(seed=0)
    assert obs["text"] == ("Our words about a clip.\nFrame Width: 64; Frame Height: 48;\nVideo Length: 30; "
                           "Sample FPS: 10.00\nThe original video has been read into the global variable "
                           "`video_clue_0`.\nQuestion: How many frames?")
    assert obs["images"] == () and info["system_prompt"] is None

    obs, *_ = env.step(code("print(len(video_clue_0))"))
    assert obs["text"] == response("\nText Result:\n30\n")

    # a 12-frame display: no per-call cap below the 32-frame budget; clues count from 0 in the video env
    obs, *_, info = env.step(code("frames = video_clue_0.get_batch(list(range(0, 24, 2))).asnumpy()\n"
                                  "for f in frames:\n    display(f)"))
    clues = "".join(f"<image_clue_{k}><image></image_clue_{k}>" for k in range(12))
    assert obs["text"] == response(f"\nText Result:\n\n\nImage Result:\n{clues}") and len(obs["images"]) == 12

    obs, *_ = env.step(code("display(video_clue_0[29].asnumpy())"))
    assert obs["text"] == response("\nText Result:\n\n\nImage Result:\n<image_clue_12><image></image_clue_12>")

    # vsi_numerical: MRA, graded as PyVision-RL pays it; |27 - 30| / 30 = 0.1 clears 8 of 10 thresholds
    *_, reward, term, _, info = env.step(answer("27"))
    assert term and info["judge_score"] == pytest.approx(0.8)
    assert info["reward_components"] == {"accuracy": pytest.approx(0.8), "tool": pytest.approx(0.3), "format": 0.0,
                                         "total": pytest.approx(1.1)}
    env.close()


def test_an_error_ends_the_episode_with_their_error_reply(image_task, templates):
    env = rl_env("PyVisionImage-v0", image_task, templates, "ours_image_v1")
    env.reset(seed=0)
    obs, reward, term, trunc, info = env.step(code("print('before')\n1 / 0"))
    assert obs["text"] == response("Execution error: ZeroDivisionError: division by zero")
    assert term and not trunc and info["end_reason"] == "error" and reward == 0.0
    assert info["reward_components"]["total"] == 0.0
    env.close()


@pytest.mark.parametrize("turn, reason", [
    ("I believe it is 42.", "no <code> block and no <answer>"),
    ("<answer>\n\\boxed{'42'}", "the <answer> is empty or not closed"),  # cut before </answer>: no answer for them
])
def test_a_malformed_turn_ends_the_episode_with_reward_0(image_task, templates, turn, reason):
    env = rl_env("PyVisionImage-v0", image_task, templates, "ours_image_v1")
    env.reset(seed=0)
    obs, reward, term, trunc, info = env.step(turn)
    assert term and not trunc and info["end_reason"] == "format_error" and reward == 0.0
    assert info["format_error"] == reason and obs["text"].startswith("<tool_response>\n<interpreter>Execution error: ")
    env.close()


def test_a_bare_python_fence_runs_as_in_their_parser(image_task, templates):
    env = rl_env("PyVisionImage-v0", image_task, templates, "ours_image_v1")
    env.reset(seed=0)
    obs, *_, info = env.step(f"Run this:\n{FENCE}python\nprint(7)\n{FENCE}")
    assert obs["text"] == response("\nText Result:\n7") and info["n_tool_calls"] == 1
    env.close()


def test_every_profile_setting_stays_overridable(image_task, templates):
    env = rl_env("PyVisionImage-v0", image_task, templates, "ours_image_v1")
    cfg = env.unwrapped.config
    assert (cfg.dialect, cfg.max_turns, cfg.end_on_error, cfg.end_on_format_error, cfg.mra_reward,
            cfg.image_min_pixels, cfg.image_max_pixels, cfg.max_frames_per_episode,
            cfg.sandbox_config().max_frames_per_step) == ("pyvision_rl", 30, True, True, "graded", 3136, 2_000_000,
                                                          32, 32)
    env.close()
    env = rl_env("PyVisionImage-v0", image_task, templates, "ours_image_v1", max_turns=5, end_on_error=False,
                 mra_reward="binary", system_prompt="Be brief.")
    obs, info = env.reset(seed=0)
    assert obs["text"].startswith("Be brief.\n\n<image_clue_0>") and info["system_prompt"] == "Be brief."
    obs, _, term, *_ = env.step(code("1 / 0"))
    assert not term and obs["text"] == response("Execution error: ZeroDivisionError: division by zero")
    assert (env.unwrapped.config.max_turns, env.unwrapped.config.mra_reward) == (5, "binary")
    env.close()


def test_without_a_template_our_wording_is_used_and_a_warning_says_so(image_task):
    with pytest.warns(UserWarning, match="exact reproduction of PyVision-RL needs their template"):
        env = gym.make("PyVisionImage-v0", tasks=[image_task], profile="pyvision_rl")
    obs, info = env.reset(seed=0)
    assert obs["text"].startswith("<image_clue_0><image></image_clue_0>\nYou solve visual problems")
    assert "width 60, height 40" in obs["text"] and obs["text"].endswith("Question: What is 6 times 7?")
    env.close()


def test_a_text_file_template(image_task, tmp_path):
    path = tmp_path / "image_prompt.txt"
    path.write_text("Size {width}x{height}. {query}")
    env = gym.make("PyVisionImage-v0", tasks=[image_task], profile="pyvision_rl", prompt_template=str(path))
    obs, _ = env.reset(seed=0)
    assert obs["text"] == "<image_clue_0><image></image_clue_0>\nSize 60x40. What is 6 times 7?"
    env.close()


@pytest.mark.parametrize("spec, match", [
    ("{dir}/nothing.json#k", "no such file"),
    ("{templates}#missing_key", "no key 'missing_key'.*keys: ours_image_v1, ours_video_v1"),
    ("{templates}#ours_video_v1", "unknown field\\(s\\) video_info; known: query, width, height"),
])
def test_bad_templates_fail_at_make(image_task, templates, tmp_path, spec, match):
    with pytest.raises(ConfigError, match=match):
        gym.make("PyVisionImage-v0", tasks=[image_task], profile="pyvision_rl",
                 prompt_template=spec.format(dir=tmp_path, templates=templates))


def test_prompt_template_needs_the_profile_and_prompt_style_is_gone(image_task, templates):
    with pytest.raises(ConfigError, match="prompt_template is the user turn of profile='pyvision_rl'"):
        gym.make("PyVisionImage-v0", tasks=[image_task], prompt_template=f"{templates}#ours_image_v1")
    with pytest.raises(ConfigError, match=re.escape("prompt_style was folded into profile (0.3.0): use "
                                                    "profile='pyvision_rl'")):
        gym.make("PyVisionVideo-v0", prompt_style="pyvision_rl")


def test_their_rl_layout_json_loads_through_gym_make(tmp_path, templates):
    (tmp_path / "media").mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "media" / "a.png")
    make_video(str(tmp_path / "media" / "b.mp4"), n_frames=12, fps=6, width=64, height=48)
    rows = [{"prompt": [{"role": "user", "content": "<image>\nOur prepared prompt."}], "env_name": "our_image_env",
             "data_source": "vstar", "ability": "vqa", "reward_model": {"ground_truth": "B", "style": "model"},
             "extra_info": {"question": "Which?\n(A) red\n(B) black", "index": 7, "split": "train"},
             "mm_hint": {"hint_path": "media/a.png", "hint_type": "image"}},
            {"prompt": [{"role": "user", "content": "Our prepared video prompt."}], "env_name": "our_video_env",
             "data_source": "vsi_numerical", "reward_model": {"ground_truth": "12.0"},
             "extra_info": {"question": "How many frames?", "index": 8},
             "mm_hint": {"hint_path": "media/b.mp4", "hint_type": "video"}}]
    path = tmp_path / "rl_train.json"
    path.write_text(json.dumps(rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make("PyVisionImage-v0", tasks=str(path))
    (image_task, video_task) = env.unwrapped.tasks
    assert (image_task.id, image_task.question, image_task.answer, image_task.answer_type, image_task.choices) == (
        "7", "Which?\n(A) red\n(B) black", "B", "choice", ["red", "black"])
    assert image_task.images == [str(tmp_path / "media" / "a.png")]
    assert image_task.metadata["env_name"] == "our_image_env"
    assert image_task.metadata["inferred"]["answer_type"] == "choice"
    assert (video_task.video, video_task.answer_type) == (str(tmp_path / "media" / "b.mp4"), "mra")
    env.reset(options={"task_index": 0})
    *_, reward, _, _, _ = env.step("<answer>black</answer>")
    assert reward == 1.0
    env.close()
    venv = gym.make("PyVisionVideo-v0", tasks=str(path), profile="pyvision_rl",
                    prompt_template=f"{templates}#ours_video_v1")
    obs, _ = venv.reset(options={"task_index": 1})
    assert "Video Length: 12; Sample FPS: 6.00" in obs["text"]
    *_, reward, _, _, _ = venv.step(answer("12"))
    assert reward == 1.0
    venv.close()


def test_a_bad_rl_row_names_the_problem(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"prompt": [], "mm_hint": {"hint_path": "a.png", "hint_type": "audio"},
                                 "extra_info": {"question": "q"}}]))
    with pytest.raises(ConfigError, match="row 0: mm_hint must be"):
        gym.make("PyVisionImage-v0", tasks=str(path))
