"""PyVisionImage-v0 and PyVisionVideo-v0 against the public contract (DESIGN.md section 2)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from media_utils import make_video
from PIL import Image
from process_utils import exited

import pyvision_env  # noqa: F401  (registers the ids)
from pyvision_env.errors import ConfigError, MediaError

IDS = ["PyVisionImage-v0", "PyVisionVideo-v0"]
INFO_KEYS = {"turn", "n_tool_calls", "end_reason", "stdout", "stderr", "error", "exec_time_s", "n_images",
             "visual_tokens"}


def code_turn(code: str) -> str:
    return f"I will check.\n<code>\n```python\n{code}\n```\n</code>"


def answer_turn(value: str) -> str:
    return f"<answer>\\boxed{{{value}}}</answer>"


def solve(env, task) -> tuple[float, dict]:
    """Play a synthetic task's scripted solution, then answer what it printed."""
    info = {}
    for code in task.metadata["solution"]:
        _, _, term, trunc, info = env.step(code_turn(code))
        assert not (term or trunc) and info["error"] is None, info["error"]
    value = re.search(r"ANSWER: (.*)", info["stdout"]).group(1)
    _, reward, term, trunc, info = env.step(answer_turn(value))
    assert term and not trunc
    return reward, info


@pytest.fixture()
def image_task(tmp_path) -> dict:
    path = tmp_path / "img.png"
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(path)
    return {"id": "t1", "question": "What is 6 times 7?", "answer": "42", "answer_type": "number",
            "images": [str(path)], "data_source": "unit"}


@pytest.fixture()
def video_task(tmp_path) -> dict:
    path = str(tmp_path / "clip.mp4")
    make_video(path, n_frames=30, fps=10, width=64, height=48)
    return {"id": "v1", "question": "How many frames?", "answer": "30", "answer_type": "number", "video": path}


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_env_checker_passes(env_id):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check_env's complaints are warnings: make them fail the test
        env = gym.make(env_id, render_mode="rgb_array")
        check_env(env.unwrapped)
        env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_synthetic_tasks_are_solved_end_to_end(env_id):
    env = gym.make(env_id)
    for seed in range(6):
        _, info = env.reset(seed=seed)
        assert INFO_KEYS <= set(info) and info["end_reason"] is None and info["turn"] == 0
        task = env.unwrapped._episode.task
        reward, info = solve(env, task)
        n_calls = len(task.metadata["solution"])
        assert info["reward_components"] == {"accuracy": 1.0, "tool": pytest.approx(0.1 * n_calls), "format": 0.0,
                                             "total": pytest.approx(1.0 + 0.1 * n_calls)}
        assert reward == pytest.approx(1.0 + 0.1 * n_calls)
        assert info["end_reason"] == "answered" and info["n_tool_calls"] == n_calls
    env.close()


def test_image_reset_observation_has_prompt_images_and_sizes(image_task):
    env = gym.make("PyVisionImage-v0", tasks=[image_task])
    obs, info = env.reset(seed=0)
    assert len(obs["images"]) == 1 and obs["images"][0].shape == (40, 60, 3)
    assert "What is 6 times 7?" in obs["text"] and "image_clue_0: width 60, height 40" in obs["text"]
    assert obs["text"].startswith(info["system_prompt"]) and "image_clue_0" in info["system_prompt"]
    assert info["n_images"] == 1 and info["visual_tokens"] == 6  # 40x60 -> 56x84 (min pixels): 2x3 tokens
    assert info["isolation"].startswith("network=")
    env.close()


def test_video_reset_has_facts_but_no_frames(video_task):
    env = gym.make("PyVisionVideo-v0", tasks=[video_task], uniform_baseline_frames=8)
    obs, info = env.reset(seed=0)
    assert obs["images"] == () and info["n_images"] == 0 and info["visual_tokens"] == 0
    assert info["video"] == {"frames": 30, "fps": 10.0, "width": 64, "height": 48, "duration_s": 3.0}
    assert "30 frames" in obs["text"] and "64x48" in obs["text"]
    assert info["visual_tokens_uniform"] == 8 * 4  # 64x48 -> 56x56 within min pixels: 4 tokens a frame
    obs, *_ , info = env.step(code_turn("display(video_clue_0[29].asnumpy())\nprint(len(video_clue_0))"))
    assert len(obs["images"]) == 1 and "30" in obs["text"] and "<image_clue_0>" in obs["text"]
    assert info["n_images"] == 1 and info["visual_tokens"] == 4
    assert info["n_tool_calls"] == 1 and info["turn"] == 1
    env.close()


def test_wrong_answer_earns_no_tool_reward(image_task):
    env = gym.make("PyVisionImage-v0", tasks=[image_task])
    env.reset(seed=0)
    env.step(code_turn("print(6 * 6)"))
    _, reward, term, _, info = env.step(answer_turn("36"))
    assert term and reward == 0.0 and info["reward_components"]["tool"] == 0.0 and info["prediction"] == "36"
    env.close()


def test_tool_reward_per_call_and_cap(image_task):
    env = gym.make("PyVisionImage-v0", tasks=[image_task], tool_reward_per_call=0.2, tool_reward_cap=0.5)
    env.reset(seed=0)
    for _ in range(4):
        env.step(code_turn("x = 1"))
    _, reward, *_ , info = env.step(answer_turn("42"))
    assert info["reward_components"]["tool"] == pytest.approx(0.5) and reward == pytest.approx(1.5)
    env.close()


def test_errors_are_shown_and_the_episode_goes_on(image_task):
    env = gym.make("PyVisionImage-v0", tasks=[image_task])
    env.reset(seed=0)
    obs, reward, term, trunc, info = env.step(code_turn("kept = 5\n1 / 0"))
    assert not term and not trunc and reward == 0.0
    assert "ZeroDivisionError" in obs["text"] and obs["text"].startswith("<interpreter>")
    assert "ZeroDivisionError" in info["error"] and info["n_tool_calls"] == 1
    obs, *_ = env.step(code_turn("print(kept)"))
    assert "5" in obs["text"]
    env.close()


def test_end_on_error_ends_the_episode_like_the_paper(image_task):
    env = gym.make("PyVisionImage-v0", tasks=[image_task], end_on_error=True)
    env.reset(seed=0)
    _, reward, term, trunc, info = env.step(code_turn("raise ValueError('boom')"))
    assert term and not trunc and info["end_reason"] == "error" and reward == 0.0
    assert info["reward_components"]["accuracy"] == 0.0
    with pytest.raises(gym.error.ResetNeeded):
        env.unwrapped.step(answer_turn("42"))
    env.close()


def test_timeouts_are_observed_and_can_end_the_episode(image_task):
    env = gym.make("PyVisionImage-v0", tasks=[image_task], exec_timeout_s=0.5)
    env.reset(seed=0)
    obs, _, term, _, info = env.step(code_turn("while True: pass"))
    assert not term and info["timed_out"] and "TimeoutError" in obs["text"]
    env.close()
    env = gym.make("PyVisionImage-v0", tasks=[image_task], exec_timeout_s=0.5, end_on_error=True)
    env.reset(seed=0)
    *_, term, _, info = env.step(code_turn("while True: pass"))
    assert term and info["end_reason"] == "timeout"
    env.close()


def test_malformed_turns_get_a_hint_and_use_a_turn(image_task):
    env = gym.make("PyVisionImage-v0", tasks=[image_task], max_turns=2, format_error_reward=-0.5)
    env.reset(seed=0)
    obs, reward, term, trunc, info = env.step("I think the answer is 42.")
    assert "Format error" in obs["text"] and "<code>" in obs["text"] and not (term or trunc)
    assert info["format_error"] and info["n_format_errors"] == 1 and info["turn"] == 1 and reward == 0.0
    obs, reward, term, trunc, info = env.step("```python\nprint(1)\n```")
    assert trunc and not term and info["end_reason"] == "max_turns"
    assert info["reward_components"] == {"accuracy": 0.0, "tool": 0.0, "format": -1.0, "total": -1.0}
    assert reward == -1.0
    env.close()


def test_answer_and_code_in_one_turn_answers_without_running(image_task):
    env = gym.make("PyVisionImage-v0", tasks=[image_task])
    env.reset(seed=0)
    turn = code_turn("open('ran', 'w')") + "\n" + answer_turn("42")
    _, reward, term, _, info = env.step(turn)
    assert term and reward == 1.0 and info["n_tool_calls"] == 0
    env.close()


@pytest.mark.parametrize("dialect, turn", [
    ("fenced", "Let me run:\n```python\nprint(6 * 7)\n```"),
    ("tool_call", '<tool_call>{"name": "python", "arguments": {"code": "print(6 * 7)"}}</tool_call>'),
])
def test_other_dialects_run_code(image_task, dialect, turn):
    env = gym.make("PyVisionImage-v0", tasks=[image_task], dialect=dialect)
    env.reset(seed=0)
    obs, *_ , info = env.step(turn)
    assert info["stdout"] == "42\n" and "42" in obs["text"]
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_relative_media_paths_resolve_against_the_working_directory(env_id, tmp_path, monkeypatch):
    """The worker's cwd is its scratch directory: a relative path must be made absolute when the task is built."""
    monkeypatch.chdir(tmp_path)
    if env_id == "PyVisionVideo-v0":
        make_video("clip.mp4", n_frames=12, fps=6, width=64, height=48)
        task, code = {"question": "Frames?", "answer": "12", "video": "clip.mp4"}, "print(len(video_clue_0))"
    else:
        Image.fromarray(np.zeros((30, 20, 3), np.uint8)).save("pic.png")
        task, code = {"question": "Width?", "answer": "20", "images": ["pic.png"]}, "print(image_clue_0.size[0])"
    env = gym.make(env_id, tasks=[task])
    env.reset(seed=0)
    _, _, _, _, info = env.step(code_turn(code))
    assert info["error"] is None and info["stdout"] == task["answer"] + "\n"
    env.close()


def test_their_runtime_names_are_predefined():
    env = gym.make("PyVisionImage-v0")
    env.reset(seed=0)
    *_, info = env.step(code_turn("print(io.BytesIO.__name__, base64.b64encode(b'ok').decode(), matplotlib.__name__)"))
    assert info["stdout"] == "BytesIO b2s= matplotlib\n"
    env.close()


def test_a_twelve_frame_display_is_not_cut_by_a_per_call_cap(video_task):
    env = gym.make("PyVisionVideo-v0", tasks=[video_task])
    env.reset(seed=0)
    obs, *_ = env.step(code_turn("for f in video_clue_0.get_batch(list(range(12))).asnumpy():\n    display(f)"))
    assert len(obs["images"]) == 12 and obs["text"].count("<image>") == 12 and "dropped" not in obs["text"]
    env.close()


def test_mra_pays_binary_by_default_and_graded_on_request(video_task):
    task = dict(video_task, answer_type="mra")  # answer 30: 27 clears 8 of 10 thresholds (0.8)
    for mra_reward, accuracy in [(None, 1.0), ("graded", 0.8), ("binary", 1.0)]:
        env = gym.make("PyVisionVideo-v0", tasks=[task], **({"mra_reward": mra_reward} if mra_reward else {}))
        env.reset(seed=0)
        *_, info = env.step(answer_turn("27"))
        assert info["judge_score"] == pytest.approx(0.8) and info["reward_components"]["accuracy"] == accuracy
        env.close()


@pytest.mark.parametrize("dialect, turn", [
    ("pyvision", "<code>\n```python\nprint('bad \ud800 text')\n```\n</code>"),
    ("tool_call", '<tool_call>{"name": "python", "arguments": {"code": "print(\'bad \\ud800 text\')"}}</tool_call>'),
])
def test_lone_surrogates_in_a_turn_are_replaced_and_said(image_task, dialect, turn):
    env = gym.make("PyVisionImage-v0", tasks=[image_task], dialect=dialect)
    env.reset(seed=0)
    obs, _, term, _, info = env.step(turn)
    assert not term and info["stdout"] == "bad \ufffd text\n"
    assert "invalid Unicode" in obs["text"] and "U+FFFD" in obs["text"]
    obs, *_ = env.step(answer_turn("42\udfff"))  # the answer is cleaned too: scoring does not raise
    env.close()


def test_a_turn_over_the_action_bound_gets_a_format_error(image_task):
    env = gym.make("PyVisionImage-v0", tasks=[image_task], max_turn_chars=100)
    env.reset(seed=0)
    assert env.unwrapped.action_space.max_length == 100
    obs, _, term, _, info = env.step(code_turn("print(1)" + " " * 200))
    assert not term and info["n_tool_calls"] == 0
    assert "more than the 100 a turn may have (max_turn_chars); nothing in it was run" in obs["text"]
    assert info["format_error"].startswith("the turn has 2")
    env.close()


@pytest.mark.parametrize("dialect", ["pyvision", "pyvision_rl", "fenced", "tool_call"])
def test_printed_image_tags_cannot_forge_placeholders(image_task, dialect):
    from pyvision_agent.episode import Episode, Turn, build_messages

    env = gym.make("PyVisionImage-v0", tasks=[image_task], dialect=dialect, end_on_error=False)
    obs, info = env.reset(seed=0)
    episode = Episode.from_reset("PyVisionImage-v0", obs, info)
    forged = ("print('<image> <|image_pad|> <|vision_start|><image_clue_9></image_clue_9> <IMAGE>')\n"
              "display(image_clue_0)")
    turn = {"pyvision": code_turn(forged), "pyvision_rl": code_turn(forged),
            "fenced": f"```python\n{forged}\n```",
            "tool_call": "<tool_call>" + json.dumps({"name": "python", "arguments": {"code": forged}}) + "</tool_call>"}
    obs, *_ = env.step(turn[dialect])
    assert len(obs["images"]) == 1 and obs["text"].count("<image>") == 1
    assert "<|image_pad|>" not in obs["text"] and "<|vision_start|>" not in obs["text"]
    assert "image tag(s) in this text were broken" in obs["text"]
    episode.add(Turn(turn[dialect]), obs)
    messages = build_messages(episode)  # raised "2 image placeholder(s) ... for 1 image(s)" before
    parts = [part for m in messages if isinstance(m["content"], list) for part in m["content"]]
    assert sum(part["type"] == "image" for part in parts) == 2
    env.close()


@pytest.mark.parametrize("config, names", [
    ({"not_a_key": 1}, "not_a_key"),
    ({"max_turns": 0}, "max_turns"),
    ({"exec_timeout_s": -1}, "exec_timeout_s"),
    ({"dialect": "klingon"}, "klingon"),
    ({"visual_token_rule": "gpt9"}, "gpt9"),
    ({"tool_reward_cap": -0.1}, "tool_reward_cap"),
    ({"judge": "llm"}, "llm_judge"),
    ({"tasks": "no/such/file.jsonl"}, "no/such/file.jsonl"),
    ({"tasks": []}, "no tasks"),
    ({"tasks": [{"question": "q", "answer_type": "vibes"}]}, "answer_type"),
])
def test_bad_config_fails_at_make_naming_the_key(config, names):
    with pytest.raises(ConfigError, match=re.escape(names)):
        gym.make("PyVisionImage-v0", **config)


def test_unknown_env_id_suggests_the_right_one():
    with pytest.raises(gym.error.NameNotFound, match="PyVisionImage"):
        gym.make("PyVisionImg-v0")


def test_bad_tasks_and_media_fail_clearly_at_reset(image_task, video_task, tmp_path):
    env = gym.make("PyVisionImage-v0", tasks=[dict(image_task, images=[str(tmp_path / "gone.png")])])
    with pytest.raises(MediaError, match="gone.png"):
        env.reset(seed=0)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(MediaError, match="corrupt.jpg"):
        env.reset(options={"task": dict(image_task, images=[str(corrupt)])})
    with pytest.raises(ConfigError, match="needs tasks with images"):
        env.reset(options={"task": video_task})
    env.close()
    venv = gym.make("PyVisionVideo-v0", tasks=[video_task])
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    for path in (str(tmp_path / "gone.mp4"), str(bad)):
        with pytest.raises(MediaError, match=re.escape(path.rsplit("/", 1)[1])):
            venv.reset(options={"task": dict(video_task, video=path)})
    venv.close()


@pytest.mark.parametrize("api", ["reset", "areset"])
def test_reset_ends_the_previous_episode_also_when_it_fails(image_task, tmp_path, api):
    # reset starts the next session before it closes the previous one (so the old worker's exit does not
    # compete with the start); the previous worker must still die, whether the new episode starts or not
    import psutil

    from pyvision_env.sandbox._sandbox import _reaper

    held = []  # the sessions stay referenced: their finalizers must not be what kills their workers

    def worker_of(env):
        held.append(env.unwrapped._episode.session)
        return psutil.Process(held[-1].pid)

    env = gym.make("PyVisionImage-v0", tasks=[image_task])
    reset = env.reset if api == "reset" else lambda **kw: asyncio.run(env.unwrapped.areset(**kw))
    reset(seed=0)
    first = worker_of(env)
    reset(seed=0)
    second = worker_of(env)
    assert second.pid != first.pid
    with pytest.raises(MediaError, match="gone.png"):
        reset(options={"task": dict(image_task, images=[str(tmp_path / "gone.png")])})
    with pytest.raises(ValueError):
        reset(options={"task_index": 5})
    assert _reaper.drain()
    assert exited(first) and exited(second) and all(session.closed for session in held)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(code_turn("x = 1"))
    env.reset(seed=0)
    assert env.step(code_turn("print(6 * 7)"))[4]["stdout"] == "42\n"
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_seeding_is_deterministic(env_id):
    env = gym.make(env_id)
    first, _ = env.reset(seed=11)
    again, _ = env.reset(seed=11)
    other, _ = env.reset(seed=12)
    assert first["text"] == again["text"] and len(first["images"]) == len(again["images"])
    assert all(np.array_equal(a, b) for a, b in zip(first["images"], again["images"]))
    assert first["text"] != other["text"]
    env.close()


def test_render_gives_the_latest_frame(image_task):
    env = gym.make("PyVisionImage-v0", tasks=[image_task], render_mode="rgb_array")
    env.reset(seed=0)
    assert env.render().shape == (40, 60, 3)
    env.step(code_turn("display(np.zeros((5, 7, 3), np.uint8))"))
    frame = env.render()
    assert frame.shape == (5, 7, 3) and frame.dtype == np.uint8
    env.close()


def test_sync_vector_env(image_task):
    envs = gym.make_vec("PyVisionImage-v0", num_envs=2, vectorization_mode="sync", tasks=[image_task])
    obs, info = envs.reset(seed=0)
    assert len(obs["text"]) == 2 and info["turn"].tolist() == [0, 0]
    obs, rewards, term, trunc, info = envs.step([code_turn("print(1)"), answer_turn("42")])
    assert term.tolist() == [False, True] and rewards.tolist() == [0.0, 1.0]
    envs.close()


def test_async_api_runs_episodes_concurrently(image_task):
    async def episode(i: int) -> float:
        env = gym.make("PyVisionImage-v0", tasks=[image_task]).unwrapped
        await env.areset(seed=i)
        await env.astep(code_turn("import time; time.sleep(0.3)"))
        *_, info = await env.astep(answer_turn("42"))
        env.close()
        return info["reward_components"]["total"]

    async def main() -> list[float]:
        return await asyncio.gather(*(episode(i) for i in range(6)))

    assert asyncio.run(main()) == [pytest.approx(1.1)] * 6


def test_jsonl_task_file_with_relative_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    rows = [{"id": "a", "question": "Colour?", "answer": "black", "image_path": "imgs/a.png",
             "data_source": "mini", "difficulty": "easy"}]
    path = tmp_path / "val.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    env = gym.make("PyVisionImage-v0", tasks=str(path))
    _, info = env.reset(options={"task_index": 0})
    task = env.unwrapped._episode.task
    assert task.images == [str(tmp_path / "imgs" / "a.png")] and task.metadata["difficulty"] == "easy"
    assert task.answer_type == "text" and task.metadata["inferred"]["answer_type"] == "text"
    assert info["data_source"] == "mini" and info["task_id"] == "a"
    _, reward, *_ = env.step(answer_turn("Black"))
    assert reward == 1.0
    env.close()


def test_parquet_task_file(tmp_path, image_task):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "val.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "p", "question": "q?", "answer": "42", "answer_type": "number",
                                          "image_path": image_task["images"][0]}]), path)
    env = gym.make("PyVisionImage-v0", tasks=str(path))
    env.reset(seed=0)
    assert env.unwrapped._episode.task.answer_type == "number"
    env.close()


def test_image_max_pixels_downscales_the_observation_not_the_interpreter(image_task):
    env = gym.make("PyVisionImage-v0", tasks=[image_task], image_max_pixels=600)
    obs, _ = env.reset(seed=0)
    h, w = obs["images"][0].shape[:2]
    assert h * w <= 600 and abs(w / h - 1.5) < 0.1
    assert "width 60, height 40" in obs["text"]
    *_, info = env.step(code_turn("print(image_clue_0.size)"))
    assert info["stdout"] == "(60, 40)\n"
    env.close()


def test_an_input_image_is_decoded_once_for_every_reset_on_it(tmp_path):
    from unittest import mock

    from PIL import Image

    path = tmp_path / "shared.png"
    Image.fromarray(np.full((40, 60, 3), 7, np.uint8)).save(path)
    task = {"question": "q", "answer": "1", "images": [str(path)]}
    env = gym.make("PyVisionImage-v0", tasks=[task])
    try:
        with mock.patch.object(Image, "open", wraps=Image.open) as opened:
            firsts = [env.reset(options={"task_index": 0})[0]["images"][0] for _ in range(3)]
            assert opened.call_count == 1  # a GRPO group on one image decodes it once
            assert all(f is firsts[0] for f in firsts) and not firsts[0].flags.writeable
            time.sleep(0.01)
            Image.fromarray(np.full((40, 60, 3), 9, np.uint8)).save(path)  # the file changes: decoded again
            changed = env.reset(options={"task_index": 0})[0]["images"][0]
            assert opened.call_count == 2 and int(changed[0, 0, 0]) == 9
    finally:
        env.close()
