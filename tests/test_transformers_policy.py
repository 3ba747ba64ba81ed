"""TransformersPolicy end to end: a tiny random Qwen2.5-VL (built from a config) plays real episodes.

Its turns are junk, so the envs must take junk gracefully; the token record must still be exact: the
templated prompt, the sampled ids under mask 1 with their log-probs, image pads matching the images,
and one forward pass over the record (what a trainer does) giving back the sampling log-probs.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
from pathlib import Path

import gymnasium as gym
import pytest
from tiny_models import tiny_qwen2_text, tiny_qwen25_vl

import pyvision_env  # noqa: F401  (registers the envs)
from pyvision_agent.episode import Episode, build_messages
from pyvision_agent.policies.transformers import TransformersPolicy
from pyvision_agent.tokens import TokenMismatchError

PAD = "<|image_pad|>"


@pytest.fixture(scope="session")
def tiny_vl(tmp_path_factory) -> Path:
    return tiny_qwen25_vl(tmp_path_factory.mktemp("tiny_qwen25_vl"))


def tiny_llava(path: Path, *, seed: int = 0) -> Path:
    """A tiny random LLaVA (CLIP vision tower, Qwen2 text model) whose full processor loads without
    torchvision here: the other path of ChatTokens, where the processor expands the images itself."""
    import torch
    from tiny_models import CHAT_TEMPLATE, _tokenizer
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
    )

    tokenizer = _tokenizer(600)
    pad, eos, image = (tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", PAD))
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=56, patch_size=14),
        text_config=Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                                eos_token_id=eos, pad_token_id=pad),
        image_token_id=image, vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = eos, pad
    model.save_pretrained(path)
    images = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, image_token=PAD, chat_template=CHAT_TEMPLATE).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def policy(tiny_vl) -> TransformersPolicy:
    return TransformersPolicy(tiny_vl, max_new_tokens=16, temperature=1.0, seed=0)


@pytest.fixture(scope="session")
def llava_policy(tmp_path_factory) -> TransformersPolicy:
    return TransformersPolicy(tiny_llava(tmp_path_factory.mktemp("tiny_llava")), max_new_tokens=16, seed=0)


async def play(policy: TransformersPolicy, env_id: str, seed: int) -> tuple[Episode, dict]:
    env = gym.make(env_id, max_turns=2)
    try:
        obs, info = await env.unwrapped.areset(seed=seed)
        episode = Episode.from_reset(env_id, obs, info)
        done = False
        while not done:
            turn = await policy.aact(episode)
            obs, _, terminated, truncated, info = await env.unwrapped.astep(turn.text)
            done = terminated or truncated
            episode.add(turn, None if done else obs)
        return episode, info
    finally:
        env.close()


def collapse(text: str) -> str:
    return re.sub(f"(?:{re.escape(PAD)})+", PAD, text)


def forward_logprobs(policy: TransformersPolicy, episode: Episode) -> list[float]:
    """The log-prob of every response token from one forward pass over the whole record, as a trainer
    computes it (with the sampler's suppression of image tokens)."""
    import torch

    record, chat = episode.tokens, policy.chat
    ids = torch.tensor([chat.context_ids(record)])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **chat.image_inputs(episode)}
    if "mm_token_type_ids" in inspect.signature(policy.model.forward).parameters:  # M-RoPE in transformers 5
        inputs["mm_token_type_ids"] = (ids == chat.image_token_id).int()
    with torch.no_grad():
        logits = policy.model(**inputs).logits[0].float()
    logits[:, chat.image_token_id] = -math.inf
    logprobs = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return logprobs[len(record.prompt_ids) - 1:].tolist()


def context_segments(policy: TransformersPolicy, episode: Episode) -> list[str]:
    """The record's context tokens (mask 0) as text, one piece before and between the model's turns
    (an end-of-turn token the model sampled itself is counted with the context, as the template writes it)."""
    record, end = episode.tokens, policy.chat.close_ids[0]
    pieces, current = [], list(record.prompt_ids)
    for k, (token, mask) in enumerate(zip(record.response_ids, record.response_mask)):
        ended_turn = mask and token == end and (k + 1 == len(record.response_ids) or not record.response_mask[k + 1])
        if mask and not ended_turn:
            if current:
                pieces.append(current)
            current = []
        else:
            current.append(token)
    pieces.append(current)
    return [collapse(policy.chat.tokenizer.decode(piece)) for piece in pieces]


def template_segments(policy: TransformersPolicy, episode: Episode) -> list[str]:
    """The chat template's rendering of the episode, cut at the model's turns."""
    messages = [{"role": "assistant", "content": "@@TURN@@"} if m["role"] == "assistant" else m
                for m in build_messages(episode)]
    return policy.chat.tokenizer.apply_chat_template(messages, tokenize=False).split("@@TURN@@")


@pytest.mark.parametrize("model", ["policy", "llava_policy"])
@pytest.mark.parametrize("env_id", ["PyVisionImage-v0", "PyVisionVideo-v0"])
def test_junk_turns_play_whole_episodes_with_exact_token_bookkeeping(request, model, env_id):
    policy = request.getfixturevalue(model)

    async def both():  # two episodes at once through one model: generation is serialised by the lock
        return await asyncio.gather(play(policy, env_id, 0), play(policy, env_id, 1))

    chat = policy.chat
    for episode, info in asyncio.run(both()):
        assert info["end_reason"] in ("max_turns", "answered")
        assert len(episode.turns) == info["turn"] <= 2
        record = episode.tokens
        # the prompt is the template's prompt
        first = Episode(env_id, episode.observations[:1], system_prompt=episode.system_prompt)
        prompt = chat.tokenizer.apply_chat_template(build_messages(first), tokenize=False, add_generation_prompt=True)
        assert collapse(chat.tokenizer.decode(record.prompt_ids)) == prompt
        # mask 1 exactly on the sampled ids, which are the turns' ids, with their log-probs
        sampled = [t for turn in episode.turns for t in turn.token_ids]
        model = [i for i, m in enumerate(record.response_mask) if m]
        assert [record.response_ids[i] for i in model] == sampled
        assert [record.response_logprobs[i] for i in model] == [p for t in episode.turns for p in t.logprobs]
        assert all(math.isfinite(p) and p <= 0 for p in record.response_logprobs)
        assert all(len(t.token_ids) == len(t.logprobs) <= 16 and t.finish_reason in ("stop", "length")
                   for t in episode.turns)
        assert all(t.text == chat.tokenizer.decode(t.token_ids, skip_special_tokens=True) for t in episode.turns)
        # image pads match the images, and the mask-0 tokens are the template's
        assert record.n_images == len(episode.images)
        assert chat.context_ids(record).count(chat.image_token_id) == sum(chat.image_token_counts(episode.images))
        assert context_segments(policy, episode) == template_segments(policy, episode)
        # a trainer's forward pass over the record gives back the sampling log-probs
        recomputed = forward_logprobs(policy, episode)
        assert len(recomputed) == len(record.response_ids)
        for i in model:
            assert recomputed[i] == pytest.approx(record.response_logprobs[i], abs=1e-4)


def test_the_fallback_path_is_taken_without_torchvision(policy):
    pytest.importorskip("torch")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torchvision is installed: the full processor loads")
    assert policy.chat.source == "tokenizer+image_processor" and policy.chat.processor is None
    assert type(policy.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert policy.describe()["tokens"] == "tokenizer+image_processor"


def test_a_full_processor_that_loads_expands_the_images_itself(llava_policy):
    chat = llava_policy.chat
    assert chat.source == "processor" and chat.processor_error is None
    assert type(llava_policy.model).__name__ == "LlavaForConditionalGeneration"
    env = gym.make("PyVisionImage-v0")
    obs, info = env.reset(seed=0)
    env.close()
    episode = Episode.from_reset("PyVisionImage-v0", obs, info)
    record = chat.start(episode)
    # 56x56 crops in 14-pixel patches: 4x4 image tokens per image, counted by the processor itself
    assert record.prompt_ids.count(chat.image_token_id) == chat.image_token_counts(episode.images)[0] == 16


def test_a_seed_makes_a_run_reproducible(tiny_vl):
    async def first_turn(seed: int) -> list[int]:
        episode, _ = await play(TransformersPolicy(tiny_vl, max_new_tokens=8, seed=seed), "PyVisionVideo-v0", 3)
        return [t for turn in episode.turns for t in turn.token_ids]

    assert asyncio.run(first_turn(7)) == asyncio.run(first_turn(7)) != asyncio.run(first_turn(8))


def test_generation_stops_at_a_stop_string(tiny_vl):
    policy = TransformersPolicy(tiny_vl, max_new_tokens=32, seed=0, stop=("e",))  # 'e' is in many junk tokens
    episode, _ = asyncio.run(play(policy, "PyVisionVideo-v0", 0))
    decode = policy.chat.tokenizer.decode
    for turn in episode.turns:
        if turn.token_ids[-1] in policy._end_ids or turn.finish_reason == "length":
            continue
        assert turn.finish_reason == "stop" and "e" in turn.text  # stopped at the first 'e', kept in the turn
        assert "e" not in decode(turn.token_ids[:-1], skip_special_tokens=True)
    assert any(t.finish_reason == "stop" and "e" in t.text for t in episode.turns)


def test_a_text_only_model_loads_as_a_causal_lm(tmp_path):
    policy = TransformersPolicy(tiny_qwen2_text(tmp_path / "text"), max_new_tokens=8, temperature=0)
    assert policy.chat.source == "tokenizer" and type(policy.model).__name__ == "Qwen2ForCausalLM"
    episode, info = asyncio.run(play(policy, "PyVisionVideo-v0", 0))
    assert info["end_reason"] in ("max_turns", "answered") and episode.tokens.n_images == 0
    env = gym.make("PyVisionImage-v0")
    obs, info = env.reset(seed=0)
    env.close()
    with pytest.raises(TokenMismatchError, match="text-only model cannot take 1 image"):
        policy.act(Episode.from_reset("PyVisionImage-v0", obs, info))
    policy.close()
    with pytest.raises(RuntimeError, match="closed"):
        policy.act(episode)


def test_bad_model_paths_and_settings_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"no model directory at '/nonexistent/model'.*hub id"):
        TransformersPolicy("/nonexistent/model")
    with pytest.raises(ValueError, match=rf"cannot load the model '{re.escape(str(tmp_path))}'"):
        TransformersPolicy(tmp_path)  # a directory without config.json
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        TransformersPolicy(tmp_path, temperature=-1)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0"):
        TransformersPolicy(tmp_path, top_p=0)
