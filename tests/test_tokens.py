"""ChatTokens against a real tokenizer, chat template and Qwen2-VL image processor, driven by real episodes.

The reference everywhere is the chat template itself: a record is right when its ids, with each run of
image pads collapsed to one, decode to the template's rendering of the same conversation, and when its
pads match what the image processor makes of the images.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from tiny_models import CHAT_TEMPLATE, tiny_qwen2_text, tiny_qwen25_vl

import pyvision_env  # noqa: F401  (registers the envs)
from pyvision_agent.episode import Episode, Observation, TokenRecord, Turn, build_messages
from pyvision_agent.policies import ScriptedPolicy
from pyvision_agent.tokens import ChatTokens, TokenMismatchError

PAD = "<|image_pad|>"


@pytest.fixture(scope="session")
def tiny_vl(tmp_path_factory) -> Path:
    return tiny_qwen25_vl(tmp_path_factory.mktemp("tiny_qwen25_vl"))


@pytest.fixture(scope="session")
def chat(tiny_vl) -> ChatTokens:
    return ChatTokens.from_pretrained(tiny_vl, keep_image_inputs=True)


def collapse(text: str) -> str:
    """One pad per image, as the template writes it."""
    return re.sub(f"(?:{re.escape(PAD)})+", PAD, text)


def rendered(chat: ChatTokens, episode: Episode, *, generation_prompt: bool = True) -> str:
    return chat.tokenizer.apply_chat_template(build_messages(episode), tokenize=False,
                                              add_generation_prompt=generation_prompt)


def scripted_turn(chat: ChatTokens, text: str) -> Turn:
    """A scripted turn with token ids, as a token-level policy would return it (the tiny tokenizer round-trips)."""
    ids = chat.tokenizer.encode(text, add_special_tokens=False)
    assert chat.tokenizer.decode(ids) == text
    return Turn(text, token_ids=ids, finish_reason="stop")


def count_shapes_index(env) -> int:
    """A synthetic task whose scripted solution shows a figure with plt.show()."""
    return next(i for i, t in enumerate(env.unwrapped.tasks) if t.metadata["kind"] == "count_shapes")


def test_without_torchvision_the_image_processor_path_is_taken(chat, tiny_vl):
    """The full Qwen2.5-VL processor needs torchvision (its video processor); ChatTokens falls back."""
    from transformers import AutoProcessor

    try:
        AutoProcessor.from_pretrained(tiny_vl)
    except ImportError:
        pass
    else:
        pytest.skip("the full processor loads here (torchvision installed): the fallback is not needed")
    assert chat.source == "tokenizer+image_processor"
    assert chat.processor is None and "torchvision" in chat.processor_error.lower()
    assert chat.image_token == PAD and chat.merge_size == 2


def test_a_template_kept_only_for_the_processor_is_found(tiny_vl, tmp_path):
    """Some repositories keep the chat template only in chat_template.json (the processor's file)."""
    for f in tiny_vl.iterdir():
        if f.name != "chat_template.jinja":
            shutil.copy(f, tmp_path / f.name)
    tokens = ChatTokens.from_pretrained(tmp_path)
    assert not tokens.tokenizer.chat_template and tokens.chat_template == CHAT_TEMPLATE


def test_prompt_is_the_templated_prompt_with_each_image_expanded(chat):
    env = gym.make("PyVisionImage-v0", max_turns=2)
    obs, info = env.reset(seed=0)
    env.close()
    episode = Episode.from_reset("PyVisionImage-v0", obs, info)
    record = chat.start(episode)
    text = chat.tokenizer.decode(record.prompt_ids)
    assert collapse(text) == rendered(chat, episode)
    assert text.endswith("<|im_start|>assistant\n") and record.response_ids == [] and record.n_images == 1
    # The pads equal the visual features the model will get: pixel_values rows / merge_size**2.
    pixels = chat.image_inputs(episode)["pixel_values"]
    assert record.prompt_ids.count(chat.image_token_id) == pixels.shape[0] // 4 == chat.image_token_counts(
        episode.images)[0]
    chat.check(record, episode.images)


def test_scripted_frames_grow_the_pads_and_the_record_stays_the_templated_conversation(chat):
    env = gym.make("PyVisionImage-v0", max_turns=3)
    obs, info = env.reset(options={"task_index": count_shapes_index(env)})
    episode = Episode.from_reset("PyVisionImage-v0", obs, info, task=env.unwrapped.tasks[count_shapes_index(env)])
    policy = ScriptedPolicy()
    record = chat.update(episode)
    pads = [record.prompt_ids.count(chat.image_token_id)]
    model_ids: list[int] = []
    done = False
    while not done:
        turn = scripted_turn(chat, policy.act(episode).text)
        chat.add_turn(record, turn)
        model_ids += turn.token_ids
        obs, _, terminated, truncated, info = env.step(turn.text)
        done = terminated or truncated
        episode.add(turn, None if done else obs)
        if not done:
            chat.update(episode)
            chat.check(record, episode.images)
            pads.append(chat.context_ids(record).count(chat.image_token_id))
            # exactly the template's rendering of the whole conversation, waiting for the next turn
            assert collapse(chat.tokenizer.decode(chat.context_ids(record))) == rendered(chat, episode)
    env.close()
    assert info["end_reason"] == "answered" and info["reward_components"]["accuracy"] == 1.0
    frames = episode.observations[1].images
    assert len(frames) >= 1, "the scripted solution shows a figure with plt.show()"
    assert pads[1] - pads[0] == sum(chat.image_token_counts(frames)) > 0
    assert record.n_images == len(episode.images) == 1 + len(frames)
    # the episode ended with an answer: the record is the whole rendered conversation, last turn closed
    assert collapse(chat.tokenizer.decode(chat.context_ids(record))) == rendered(chat, episode,
                                                                                  generation_prompt=False)
    assert [i for i, m in zip(record.response_ids, record.response_mask) if m] == model_ids
    assert chat.image_inputs(episode)["image_grid_thw"].shape[0] == len(episode.images)

    with pytest.raises(TokenMismatchError, match=r"holds 2 image\(s\) but the episode has 1"):
        chat.check(record, episode.images[:1])
    record.n_images -= 1  # as if a frame's pads had gone missing
    with pytest.raises(TokenMismatchError, match=rf"{pads[-1]} image placeholder tokens .* need {pads[0]}"):
        chat.check(record, episode.images[:1])


def test_a_turn_is_closed_the_way_the_template_closes_it(chat):
    env = gym.make("PyVisionVideo-v0", max_turns=2)
    obs, info = env.reset(seed=1)
    env.close()
    episode = Episode.from_reset("PyVisionVideo-v0", obs, info)
    record = chat.start(episode)
    end, newline = chat.close_ids
    assert chat.tokenizer.convert_ids_to_tokens(end) == "<|im_end|>"
    stopped = scripted_turn(chat, "<code>\n```python\nprint(1)\n```\n</code>")
    chat.add_turn(record, stopped)
    assert record.response_ids[-2:] == [end, newline] and record.response_mask[-2:] == [0, 0]
    n = len(record.response_ids)
    ended = Turn("x", token_ids=[*chat.tokenizer.encode("x"), end], logprobs=[-1.0, -0.5])
    chat.add_turn(record, ended)  # the model wrote the end-of-turn token itself: only the newline is added
    assert record.response_ids[n:] == ended.token_ids + [newline]
    assert record.response_mask[n:] == [1, 1, 0] and record.response_logprobs[n:] == [-1.0, -0.5, 0.0]


def test_misuse_fails_clearly(chat):
    env = gym.make("PyVisionVideo-v0", max_turns=2)
    obs, info = env.reset(seed=1)
    episode = Episode.from_reset("PyVisionVideo-v0", obs, info)
    with pytest.raises(ValueError, match="call start"):
        chat.add_observation(TokenRecord(prompt_ids=[]), episode)
    record = chat.update(episode)
    with pytest.raises(ValueError, match="needs turn.token_ids"):
        chat.add_turn(record, Turn("text only"))
    with pytest.raises(ValueError, match="record holds 1 observation"):
        chat.add_observation(record, episode)  # no turn was played: there is nothing to add
    turn = scripted_turn(chat, "no code")
    chat.add_turn(record, turn)
    obs, *_ = env.step(turn.text)
    env.close()
    episode.add(turn, obs)
    chat.update(episode)
    assert chat.update(episode) is record and record.response_mask.count(0) > 0  # idempotent
    with pytest.raises(ValueError, match="record holds 2 observation"):
        chat.add_observation(record, episode)


def test_an_image_token_printed_into_an_observation_is_caught(chat):
    image = np.zeros((28, 28, 3), np.uint8)
    episode = Episode("PyVisionImage-v0", [Observation(f"code printed {PAD} before <image>", (image,))])
    with pytest.raises(TokenMismatchError, match=r"2 image token\(s\) '<\|image_pad\|>' for 1 image"):
        chat.start(episode)


def test_a_template_that_rewrites_history_is_refused(tiny_vl, chat):
    counting = "{{ messages | length }}" + chat.chat_template  # the first line changes with every message
    tokens = ChatTokens(chat.tokenizer, chat.image_processor, image_token=PAD, chat_template=counting)
    env = gym.make("PyVisionVideo-v0", max_turns=2)
    obs, info = env.reset(seed=1)
    episode = Episode.from_reset("PyVisionVideo-v0", obs, info)
    record = tokens.update(episode)
    turn = scripted_turn(chat, "no code")
    tokens.add_turn(record, turn)
    obs, *_ = env.step(turn.text)
    env.close()
    episode.add(turn, obs)
    with pytest.raises(ValueError, match="not append-only"):
        tokens.update(episode)


def test_a_text_only_model_has_no_image_path_and_refuses_images(tmp_path):
    tokens = ChatTokens.from_pretrained(tiny_qwen2_text(tmp_path / "text"))
    assert tokens.source == "tokenizer" and tokens.image_token_id is None
    env = gym.make("PyVisionImage-v0", max_turns=2)
    obs, info = env.reset(seed=0)
    env.close()
    with pytest.raises(TokenMismatchError, match="text-only model cannot take 1 image"):
        tokens.start(Episode.from_reset("PyVisionImage-v0", obs, info))
