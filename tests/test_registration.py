"""What ``gym.make`` and ``gym.make_vec`` give a user: our env checker (which survives a failed reset) and
vector envs in both modes, the async one with its default shared memory. Real envs, real worker processes."""

from __future__ import annotations

import gc
import os

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

import pyvision_env  # noqa: F401  (registers the ids)
from pyvision_env.errors import MediaError

DRAW = "<code>\n```python\nprint('naïve ✓', image_clue_0.size)\ndisplay(image_clue_0)\n```\n</code>"


@pytest.fixture()
def tasks(tmp_path) -> list[dict]:
    """A task whose image is missing, then two good ones of different sizes."""
    for name, size in (("a.png", (60, 40)), ("b.png", (30, 20))):
        Image.fromarray(np.random.default_rng(len(name)).integers(0, 256, (size[1], size[0], 3), np.uint8)).save(
            tmp_path / name)
    return [{"id": "missing", "question": "q?", "answer": "1", "images": [str(tmp_path / "gone.png")]},
            {"id": "a", "question": "q?", "answer": "1", "images": [str(tmp_path / "a.png")]},
            {"id": "b", "question": "q?", "answer": "2", "images": [str(tmp_path / "b.png")]}]


def test_a_failed_first_reset_does_not_break_the_next_episode(tasks):
    env = gym.make("PyVisionImage-v0", tasks=tasks)  # exactly as a user does: the checker is on by default
    with pytest.raises(MediaError, match="gone.png"):
        env.reset(options={"task_index": 0})
    obs, info = env.reset(options={"task_index": 1})
    assert env.checked_reset  # the reset check ran on this successful reset
    obs, reward, terminated, truncated, info = env.step(DRAW)  # Gymnasium's checker raised TypeError here
    assert "naïve ✓ (60, 40)" in info["stdout"] and obs["images"][0].shape == (40, 60, 3)
    *_, info = env.step("<answer>1</answer>")
    assert info["reward_components"]["accuracy"] == 1.0
    env.close()


def test_gymnasiums_own_checker_still_breaks_after_a_failed_reset(tasks):
    """Why we register our own: if Gymnasium fixes its checker, this fails and ours can go."""
    env = gym.wrappers.PassiveEnvChecker(gym.make("PyVisionImage-v0", tasks=tasks).unwrapped)
    with pytest.raises(MediaError):
        env.reset(options={"task_index": 0})
    env.reset(options={"task_index": 1})
    with pytest.raises(TypeError, match="cannot unpack non-iterable NoneType"):
        env.step(DRAW)
    env.close()


@pytest.mark.parametrize("env_id", ["PyVisionImage-v0", "PyVisionVideo-v0"])
def test_the_registered_stack_and_its_spec_round_trip(env_id):
    env = gym.make(env_id)
    assert str(env) == f"<EnvChecker<OrderEnforcing<{type(env.unwrapped).__name__}<{env_id}>>>>"
    spec = env.spec
    assert spec.disable_env_checker is True  # Gymnasium's checker is not added on top of ours
    assert [w.entry_point for w in spec.additional_wrappers] == ["pyvision_env.envs.checker:EnvChecker"]
    again = gym.make(spec)
    assert str(again) == str(env) and again.spec == spec
    env.close()
    again.close()


def test_sync_and_async_vector_envs_agree(tasks):
    good = tasks[1:]
    sync = gym.make_vec("PyVisionImage-v0", num_envs=2, vectorization_mode="sync", tasks=good)
    vec = gym.make_vec("PyVisionImage-v0", num_envs=2, vectorization_mode="async", tasks=good)  # the default
    assert vec.shared_memory  # shared memory, as Gymnasium defaults to
    try:
        reset = [v.reset(seed=3) for v in (sync, vec)]  # the same seeds draw the same tasks in both
        turns = [DRAW, "<code>\n```python\nprint('é' * 3)\n```\n</code>"]
        steps = [v.step(turns) for v in (sync, vec)]
        answers = [v.step(["<answer>1</answer>", "<answer>2</answer>"]) for v in (sync, vec)]
        for sync_result, async_result in (reset, steps, answers):
            _same_obs(sync_result[0], async_result[0])
        obs, info = reset[1]
        assert all("q?" in text for text in obs["text"]) and all(len(f) == 1 for f in obs["images"])
        obs, _, _, _, info = steps[1]
        assert [len(f) for f in obs["images"]] == [1, 0] and "<interpreter>" in obs["text"][1]
        assert list(info["stdout"]) == [f"naïve ✓ {obs['images'][0][0].shape[1::-1]}\n", "ééé\n"]
        assert answers[1][2].tolist() == [True, True] and answers[1][1].tolist() == answers[0][1].tolist()
    finally:
        sync.close()
        vec.close()


def _same_obs(a: dict, b: dict) -> None:
    assert type(a["text"]) is type(b["text"]) is tuple and a["text"] == b["text"]
    assert type(a["images"]) is type(b["images"]) is tuple and len(a["images"]) == len(b["images"])
    for frames_a, frames_b in zip(a["images"], b["images"]):
        assert len(frames_a) == len(frames_b) and all(np.array_equal(x, y) for x, y in zip(frames_a, frames_b))


def test_async_vector_env_without_copies_sees_each_new_observation(tasks):
    vec = gym.make_vec("PyVisionImage-v0", num_envs=2, vectorization_mode="async", vector_kwargs={"copy": False},
                       tasks=tasks[1:])
    try:
        obs, _ = vec.reset(seed=0)
        texts = obs["text"]  # a live view, as Gymnasium's shared arrays are with copy=False
        assert all("q?" in text for text in texts) and all(len(frames) == 1 for frames in obs["images"])
        obs, *_ = vec.step(["<code>\n```python\nprint('first')\n```\n</code>",
                            "<code>\n```python\nprint('second')\n```\n</code>"])
        assert obs["text"] is texts and "first" in texts[0] and "second" in texts[1]
        assert texts[:] == (texts[0], texts[1]) and list(obs["images"]) == [(), ()]
    finally:
        vec.close()


def test_async_shared_memory_is_removed_with_the_vector_env(tasks):
    def ours() -> set[str]:
        return {d for d in os.listdir("/dev/shm") if d.startswith("pyvision-vector-")}

    before = ours()
    vec = gym.make_vec("PyVisionImage-v0", num_envs=2, vectorization_mode="async", tasks=tasks[1:])
    vec.reset(seed=0)
    made = ours() - before
    assert len(made) == 2  # one mailbox per variable-size key: text and images
    vec.close()
    del vec
    gc.collect()
    assert not (ours() & made)
