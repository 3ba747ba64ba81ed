"""PyVisionAgentLoop on CPU with verl 0.9.1's own classes, a tiny real Qwen2.5-VL and the real sandbox.

Scripted turns make the episodes exact (real code from the synthetic suites runs, the answers are
judged); the tiny random model makes them junk, which the loop must take without breaking its token
bookkeeping. Every trajectory is checked turn by turn against what the server was sent and returned.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

import pyvision_agent.verl.agent_loop as agent_loop_module
from pyvision_env.errors import ConfigError
from pyvision_env.synthetic import suite

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}


def play(make_loop: Any, server: Any, row: dict[str, Any], *, yaml: dict | None = None, config: Any = None) -> Any:
    """One trajectory as verl's worker runs it: the loop is built inside the running event loop."""

    async def main() -> Any:
        return await make_loop(server, yaml=yaml, config=config).run(dict(SAMPLING), **row)

    return asyncio.run(main())


def runs(values: list[int], value: int) -> list[tuple[int, int]]:
    """[start, end) of every maximal run of ``value``."""
    found, start = [], None
    for i, v in enumerate([*values, None]):
        if v == value and start is None:
            start = i
        elif v != value and start is not None:
            found.append((start, i))
            start = None
    return found


def image_runs(ids: list[int], processor: Any) -> list[int]:
    return [b - a for a, b in runs(ids, processor.image_token_id)]


def grid_tokens(processor: Any, image: Any) -> int:
    """Placeholder tokens of one image, from the image processor alone (merge 2x2)."""
    grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"]
    return int(grid.prod()) // processor.image_processor.merge_size ** 2


def check_turns(out: Any, server: Any, processor: Any, response_length: int, per_turn: int | None = None) -> None:
    """What holds for every trajectory: each call saw a prefix of the final stream with its images in
    lockstep, the model's tokens are exactly the mask-1 runs, and nothing passed the budget."""
    ids = out.prompt_ids + out.response_ids
    images = out.multi_modal_data.get("images", [])
    assert len(out.response_ids) == len(out.response_mask) == len(out.response_logprobs) <= response_length
    assert len({call["request_id"] for call in server.calls}) == 1
    for call in server.calls:
        assert ids[:len(call["prompt_ids"])] == call["prompt_ids"]
        assert len(image_runs(call["prompt_ids"], processor)) == len(call["images"])
        assert all(a is b for a, b in zip(call["images"], images, strict=False))
        assert call["sampling_params"]["stop"] == ["</code>"]
        spent = len(call["prompt_ids"]) - len(out.prompt_ids)
        assert call["sampling_params"]["max_tokens"] == min(response_length - spent, per_turn or response_length)
    sent = [(c["token_ids"], c["log_probs"]) for c in server.calls]
    if out.extra_fields["end_reason"] == "placeholder_token_generated":  # the loop cut the last turn there
        cut = next(n for n in range(len(sent[-1][0]) + 1)
                   if "<|image_pad|>" in processor.tokenizer.decode(sent[-1][0][:n]))
        sent[-1] = (sent[-1][0][:cut - 1], sent[-1][1][:cut - 1])
    model_runs = runs(out.response_mask, 1)
    assert [out.response_ids[a:b] for a, b in model_runs] == [ids for ids, _ in sent if ids]
    assert [out.response_logprobs[a:b] for a, b in model_runs] == [lps for ids, lps in sent if ids]
    assert all(lp == 0.0 for lp, m in zip(out.response_logprobs, out.response_mask) if m == 0)
    assert image_runs(ids, processor) == [grid_tokens(processor, image) for image in images]
    assert out.extra_fields["n_images"] == len(images)
    assert out.extra_fields["visual_tokens"] == ids.count(processor.image_token_id)


def reset_prompts(row: dict[str, Any]) -> tuple[str, str]:
    env = gym.make(row["extra_info"]["env_id"])
    try:
        _, info = env.reset(options={"task": json.loads(row["extra_info"]["task"])})
        return info["system_prompt"], info["user_prompt"]
    finally:
        env.close()


def test_image_episode_turn_by_turn(make_loop, make_row, scripted, tokenizer, processor):
    task = suite("synthetic-image")[0]  # count shapes: one code turn that shows a figure, then the answer
    row = make_row(task)
    server = scripted([*map(scripted.code, task.metadata["solution"]), scripted.answer(task.answer)])
    out = play(make_loop, server, row)

    check_turns(out, server, processor, response_length=2048)
    system, user = reset_prompts(row)
    input_image = out.multi_modal_data["images"][0]
    vision = "<|vision_start|>" + "<|image_pad|>" * grid_tokens(processor, input_image) + "<|vision_end|>"
    assert tokenizer.decode(out.prompt_ids) == (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
                                                f"{user.replace('<image>', vision)}<|im_end|>\n<|im_start|>assistant\n")
    assert server.calls[0]["prompt_ids"] == out.prompt_ids and len(server.calls[0]["images"]) == 1

    (_, code_end), (answer_start, answer_end) = runs(out.response_mask, 1)
    reply = tokenizer.decode(out.response_ids[code_end:answer_start])
    frame = vision.replace("<|image_pad|>" * grid_tokens(processor, input_image),
                           "<|image_pad|>" * grid_tokens(processor, out.multi_modal_data["images"][1]))
    assert reply.startswith("<|im_end|>\n<|im_start|>user\n<interpreter>\nText Result:\n")
    assert f"ANSWER: {task.answer}\nImage Result:\n<image_clue_1>{frame}</image_clue_1>\n</interpreter>" in reply
    assert reply.endswith("</interpreter><|im_end|>\n<|im_start|>assistant\n")
    assert answer_end == len(out.response_ids) and tokenizer.decode(out.response_ids[-1:]) == "<|im_end|>"
    assert out.num_turns == 4
    assert out.extra_fields == {
        "n_tool_calls": 1, "num_turns": 4, "end_reason": "answered", "n_images": 2, "observation_images": 1,
        "broken": False, "broken_reason": None, "malformed": False, "prediction": task.answer, "accuracy": 1.0,
        "answered_without_tools": False, "min_global_steps": None, "max_global_steps": None,  # no weights version
        "visual_tokens": (out.prompt_ids + out.response_ids).count(processor.image_token_id)}


def test_video_episode_adds_the_frames_the_code_shows(make_loop, make_row, scripted, tokenizer, processor):
    task = suite("synthetic-video")[0]
    row = make_row(task)
    server = scripted([*map(scripted.code, task.metadata["solution"]), scripted.answer(task.answer)])
    out = play(make_loop, server, row)

    check_turns(out, server, processor, response_length=2048)
    _, user = reset_prompts(row)
    assert user in tokenizer.decode(out.prompt_ids) and processor.image_token_id not in out.prompt_ids
    assert [len(call["images"]) for call in server.calls] == [0, 1]
    assert out.extra_fields | {"visual_tokens": None} == {
        "n_tool_calls": 1, "num_turns": 4, "end_reason": "answered", "n_images": 1, "observation_images": 1,
        "broken": False, "broken_reason": None, "malformed": False, "prediction": task.answer, "accuracy": 1.0,
        "answered_without_tools": False, "visual_tokens": None, "min_global_steps": None, "max_global_steps": None}


def check_training_forward(post: Any, out: Any, model: Any) -> None:
    """The padded trajectory goes through the model's forward: a placeholder/feature mismatch raises there."""
    keep = post.attention_mask[0].bool()
    mm = post.multi_modal_inputs
    assert int(mm.get("image_grid_thw", torch.zeros(0, 3)).prod(-1).sum()) // 4 == out.extra_fields["visual_tokens"]
    with torch.no_grad():
        logits = model(input_ids=post.input_ids[:, keep], pixel_values=mm.get("pixel_values"),
                       image_grid_thw=mm.get("image_grid_thw")).logits
    assert logits.shape[1] == int(keep.sum()) and torch.isfinite(logits).all()
    assert post.position_ids.shape == (1, 4, post.input_ids.shape[1])


def test_trajectory_passes_verl_postprocess_and_the_model_forward(make_loop, make_row, scripted, compose_config,
                                                                  postprocess, tiny_vl_model):
    task = suite("synthetic-image")[2]  # locate object: the code shows a crop
    row = make_row(task)
    server = scripted([*map(scripted.code, task.metadata["solution"]), scripted.answer(task.answer)])
    out = play(make_loop, server, row)
    assert out.extra_fields["n_images"] == 2 and out.extra_fields["prediction"] == task.answer

    post = postprocess(out, row, compose_config())
    assert post.response_mask.sum() == sum(out.response_mask)
    check_training_forward(post, out, tiny_vl_model)


@pytest.mark.parametrize("seed", [0, 7, 10, 11])  # seeds whose junk ends in different ways
def test_tiny_model_junk_keeps_the_bookkeeping(seed, make_loop, make_row, tiny_server, compose_config, postprocess,
                                                processor, tiny_vl_model):
    config = compose_config("actor_rollout_ref.rollout.response_length=384")
    task = suite("synthetic-image")[seed % 3]
    row = make_row(task)
    server = tiny_server(seed=seed)
    out = play(make_loop, server, row, yaml={"max_turns": 3}, config=config)

    check_turns(out, server, processor, response_length=384)
    fields = out.extra_fields
    assert fields["end_reason"] in {"answered", "max_turns", "max_response_length", "placeholder_token_generated"}
    assert fields["broken"] == (fields["broken_reason"] is not None)
    assert 1 <= len(server.calls) <= 3 and out.num_turns == fields["num_turns"]
    check_training_forward(postprocess(out, row, config), out, tiny_vl_model)


def test_image_limit_stops_before_the_frames_are_appended(make_loop, make_row, scripted, processor):
    task = suite("synthetic-image")[0]
    server = scripted([scripted.code("for _ in range(3):\n    display(image_clue_0)"), scripted.answer("1")])
    out = play(make_loop, server, make_row(task), yaml={"max_images": 3})

    check_turns(out, server, processor, response_length=2048)
    assert len(server.calls) == 1 and out.response_mask == [1] * len(out.response_ids)
    assert out.extra_fields | {"visual_tokens": None} == {
        "n_tool_calls": 1, "num_turns": 2, "end_reason": "image_limit", "n_images": 1, "observation_images": 0,
        "broken": True, "broken_reason": "image_limit", "malformed": False, "prediction": None, "accuracy": None,
        "answered_without_tools": False, "visual_tokens": None, "min_global_steps": None, "max_global_steps": None}


def test_response_budget_stops_before_an_observation_that_does_not_fit(make_loop, make_row, scripted, compose_config,
                                                                       processor):
    config = compose_config("actor_rollout_ref.rollout.response_length=120")
    task = suite("synthetic-image")[0]
    server = scripted([scripted.code("display(image_clue_0)"), scripted.answer("1")])
    out = play(make_loop, server, make_row(task), config=config)

    check_turns(out, server, processor, response_length=120)
    assert len(server.calls) == 1 and out.response_mask == [1] * len(out.response_ids)
    assert out.extra_fields["n_tool_calls"] == 1 and out.extra_fields["n_images"] == 1
    assert out.extra_fields["end_reason"] == out.extra_fields["broken_reason"] == "max_response_length"


def test_a_turn_cut_by_the_budget_is_not_executed(make_loop, make_row, scripted, compose_config, processor):
    config = compose_config("actor_rollout_ref.rollout.response_length=16")
    task = suite("synthetic-image")[0]
    server = scripted([scripted.code("print('a long line that does not fit in sixteen tokens at all')")])
    out = play(make_loop, server, make_row(task), config=config)

    check_turns(out, server, processor, response_length=16)
    assert len(out.response_ids) == 16 and out.extra_fields["n_tool_calls"] == 0
    assert out.extra_fields["end_reason"] == out.extra_fields["broken_reason"] == "max_response_length"


def test_max_tokens_per_turn_caps_each_request_below_the_response_budget(make_loop, make_row, scripted,
                                                                         compose_config, processor):
    config = compose_config("actor_rollout_ref.rollout.response_length=4000")
    task = suite("synthetic-image")[0]
    server = scripted([scripted.code("print(1)"), scripted.answer("1")])
    out = play(make_loop, server, make_row(task), config=config, yaml={"max_tokens_per_turn": 50})

    check_turns(out, server, processor, response_length=4000, per_turn=50)
    assert [c["sampling_params"]["max_tokens"] for c in server.calls] == [50, 50]
    unbounded = scripted([scripted.answer("1")])
    play(make_loop, unbounded, make_row(task), config=config, yaml={"max_tokens_per_turn": None})
    assert unbounded.calls[0]["sampling_params"]["max_tokens"] == 4000  # only the response budget
    with pytest.raises(Exception, match="max_tokens_per_turn must be an int >= 1"):
        play(make_loop, scripted([scripted.answer("1")]), make_row(task), config=config,
             yaml={"max_tokens_per_turn": 0})


@pytest.mark.parametrize("spelled", ["special token", "piece by piece"])
def test_placeholder_tokens_written_by_the_model_are_cut(spelled, make_loop, make_row, scripted, tokenizer,
                                                         processor):
    head = tokenizer.encode("I see", add_special_tokens=False)
    pad = ([processor.image_token_id] if spelled == "special token"
           else tokenizer.encode("<|ima", add_special_tokens=False) + tokenizer.encode("ge_pad|>",
                                                                                       add_special_tokens=False))
    assert tokenizer.decode(pad) == "<|image_pad|>"
    server = scripted([head + pad + tokenizer.encode(" <code>print(1)</code>", add_special_tokens=False)])
    out = play(make_loop, server, make_row(suite("synthetic-image")[0]))

    assert out.response_ids == head + pad[:-1] and out.response_mask == [1] * len(out.response_ids)
    assert "<|image_pad|>" not in tokenizer.decode(out.response_ids)
    assert out.extra_fields["end_reason"] == out.extra_fields["broken_reason"] == "placeholder_token_generated"
    assert out.extra_fields["n_tool_calls"] == 0 and len(image_runs(out.prompt_ids + out.response_ids, processor)) == 1


@pytest.mark.parametrize(("first", "reason"), [("I think the answer is on the left.", "format_error"),
                                                ("import os\nos._exit(3)", "crash")])
def test_malformed_turns_and_crashes_are_marked_and_the_episode_goes_on(first, reason, make_loop, make_row, scripted,
                                                                         processor):
    task = suite("synthetic-image")[0]
    turn = first if reason == "format_error" else scripted.code(first)
    server = scripted([turn, *map(scripted.code, task.metadata["solution"]), scripted.answer(task.answer)])
    out = play(make_loop, server, make_row(task))

    check_turns(out, server, processor, response_length=2048)
    assert out.extra_fields["end_reason"] == "answered" and out.extra_fields["prediction"] == task.answer
    malformed = reason == "format_error"  # a malformed turn is not broken: the sampler decides (keep_malformed)
    assert out.extra_fields["malformed"] == malformed and out.extra_fields["broken"] == (not malformed)
    assert out.extra_fields["broken_reason"] == (None if malformed else reason)
    assert out.extra_fields["n_tool_calls"] == (1 if malformed else 2)


def test_end_on_error_from_the_yaml_ends_the_episode(make_loop, make_row, scripted, processor):
    server = scripted([scripted.code("1 / 0"), scripted.answer("1")])
    out = play(make_loop, server, make_row(suite("synthetic-image")[0]), yaml={"end_on_error": True})

    assert len(server.calls) == 1
    assert (out.extra_fields["end_reason"], out.extra_fields["broken"], out.extra_fields["n_tool_calls"]) == (
        "error", False, 1)


def test_turn_budget_follows_max_assistant_turns_unless_the_yaml_sets_max_turns(make_loop, make_row, scripted,
                                                                                compose_config):
    config = compose_config("actor_rollout_ref.rollout.multi_turn.max_assistant_turns=2")
    row = make_row(suite("synthetic-image")[0])
    for yaml, turns in [(None, 2), ({"max_turns": 3}, 3)]:
        server = scripted([scripted.code("print(1)")])
        out = play(make_loop, server, row, yaml=yaml, config=config)
        assert len(server.calls) == turns and out.extra_fields["end_reason"] == "max_turns"
        assert out.extra_fields["num_turns"] == 1 + turns + (turns - 1) and not out.extra_fields["broken"]


def test_code_runs_off_the_event_loop(make_loop, make_row, scripted):
    """While the sandboxed code sleeps for a second, another coroutine of the same event loop keeps
    ticking: it can only if the env step does not block the loop (a blocked loop gives it a tick or two)."""
    server = scripted([scripted.code("import time\ntime.sleep(1.0)\nprint('slept')"), scripted.answer("1")])
    generate, first_turn_sent = server.generate, asyncio.Event()

    async def generate_then_signal(*args: Any, **kwargs: Any) -> Any:
        output = await generate(*args, **kwargs)
        first_turn_sent.set()
        return output

    server.generate = generate_then_signal
    ticks: list[float] = []
    finished = asyncio.Event()

    async def tick() -> None:
        await first_turn_sent.wait()
        while not finished.is_set():
            ticks.append(asyncio.get_running_loop().time())
            await asyncio.sleep(0.01)

    async def main() -> Any:
        ticker = asyncio.create_task(tick())
        try:
            return await make_loop(server).run(dict(SAMPLING), **make_row(suite("synthetic-image")[0]))
        finally:
            finished.set()
            await ticker

    out = asyncio.run(main())
    assert "Text Result:\nslept\n" in server.tokenizer.decode(out.response_ids)
    assert len(ticks) >= 20, f"the event loop ticked {len(ticks)} times during a 1 s execution"


def test_an_env_that_does_not_answer_in_time_drops_the_episode(make_loop, make_row, scripted):
    """Code that ignores SIGINT keeps the env busy for its kill grace (0.2 s) past exec_timeout_s; the
    loop's deadline (a 0.05 s margin here) fires first and the episode ends broken, without hanging."""
    stubborn = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(10)"
    server = scripted([scripted.code(stubborn), scripted.answer("1")])
    out = play(make_loop, server, make_row(suite("synthetic-image")[0]),
               yaml={"exec_timeout_s": 1.0, "env_timeout_margin_s": 0.05})

    assert len(server.calls) == 1
    assert out.extra_fields["end_reason"] == out.extra_fields["broken_reason"] == "env_timeout"


def test_placeholder_runs_that_differ_from_the_images_fail_loudly(make_loop, scripted, processor):
    async def check() -> None:
        loop = make_loop(scripted(["x"]))
        ids = [processor.image_token_id] * 4
        loop._check_lockstep(agent_loop_module._Trajectory(ids=ids, prompt_length=4, messages=[], images=[]))

    with pytest.raises(RuntimeError, match=r"1 image placeholder run\(s\) for 0 image\(s\).*lockstep"):
        asyncio.run(check())


def test_the_env_is_closed_whatever_happens(make_loop, make_row, scripted, monkeypatch):
    closed: list[bool] = []
    make = gym.make

    def spying_make(*args: Any, **kwargs: Any) -> Any:
        env = make(*args, **kwargs)
        close = env.close
        env.close = lambda: (closed.append(True), close())[1]
        return env

    monkeypatch.setattr(agent_loop_module.gym, "make", spying_make)
    server = scripted([scripted.code("x = 1"), RuntimeError("the server went away")])
    with pytest.raises(RuntimeError, match="the server went away"):
        play(make_loop, server, make_row(suite("synthetic-image")[0]))
    assert closed == [True]


def test_bad_rows_and_settings_fail_clearly(make_loop, make_row, scripted):
    row = make_row(suite("synthetic-image")[0])
    server = scripted([scripted.answer("1")])
    with pytest.raises(ValueError, match=r"extra_info with 'env_id' and 'task'.*pyvision_agent.verl.data"):
        play(make_loop, server, {**row, "extra_info": {"index": 0}})
    with pytest.raises(ValueError, match="must be one of .*'PyVisionImage-v0'.*got 'Pong-v5'"):
        play(make_loop, server, {**row, "extra_info": {**row["extra_info"], "env_id": "Pong-v5"}})
    with pytest.raises(ValueError, match="task as a JSON string, got dict"):
        play(make_loop, server, {**row, "extra_info": {**row["extra_info"], "task": {"question": "q"}}})
    # hydra.utils.instantiate (how verl builds agent loops) wraps constructor errors, keeping their text
    with pytest.raises(InstantiationException, match=r"sets \['tasks'\]; remove it"):
        play(make_loop, server, row, yaml={"tasks": "synthetic"})
    with pytest.raises(InstantiationException, match="max_images must be an int >= 0, got -1"):
        play(make_loop, server, row, yaml={"max_images": -1})
    with pytest.raises(ConfigError, match="no_such_setting"):
        play(make_loop, server, row, yaml={"no_such_setting": 1})


def test_yaml_entry_is_what_verl_registers():
    (entry,) = OmegaConf.load(Path(agent_loop_module.__file__).with_name("agent_loop.yaml"))
    assert entry.name == "pyvision_agent"
    assert entry._target_ == "pyvision_agent.verl.agent_loop.PyVisionAgentLoop"
    assert OmegaConf.to_container(entry) == {"name": "pyvision_agent", "_target_": entry._target_, "max_images": 32,
                                             "max_tokens_per_turn": 10240, "max_frames_per_episode": 32,
                                             "sandbox_backend": "local"}


# -- profile pyvision_rl and hostile output -------------------------------------------------------------

def test_profile_pyvision_rl_splices_the_reply_after_code_and_ends_on_errors(make_loop, make_row, scripted, tokenizer,
                                                                           processor):
    """PyVision-RL's training stream: the reply follows the model's </code> with no end-of-turn token; their
    reply layout; a runtime error ends the episode (not broken, reward 0 from the env)."""
    task = suite("synthetic-image")[0]
    yaml = {"profile": "pyvision_rl"}
    server = scripted([scripted.code("print(6 * 7)"), scripted.code("1 / 0"), scripted.answer("1")])
    with pytest.warns(UserWarning, match="exact reproduction of PyVision-RL needs their template"):
        out = play(make_loop, server, make_row(task), yaml=yaml)

    check_turns(out, server, processor, response_length=2048)
    assert len(server.calls) == 2
    (_, code_end), (second_start, _) = runs(out.response_mask, 1)
    assert tokenizer.decode(out.response_ids[:code_end]).endswith("</code>")
    reply = tokenizer.decode(out.response_ids[code_end:second_start])
    assert reply == ("<|im_start|>user\n<tool_response>\n<interpreter>\nText Result:\n42</interpreter>\n\n"
                     "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert out.extra_fields["end_reason"] == "error" and not out.extra_fields["broken"]
    assert out.extra_fields["accuracy"] == 0.0 and out.extra_fields["n_tool_calls"] == 2


def test_profile_pyvision_rl_ends_on_a_malformed_turn_as_a_reward_0_sample(make_loop, make_row, scripted, processor):
    server = scripted(["I think it is 3.", scripted.answer("3")])
    with pytest.warns(UserWarning):
        out = play(make_loop, server, make_row(suite("synthetic-image")[0]), yaml={"profile": "pyvision_rl"})
    assert len(server.calls) == 1 and out.response_mask == [1] * len(out.response_ids)
    fields = out.extra_fields
    assert (fields["end_reason"], fields["malformed"], fields["broken"], fields["accuracy"]) == (
        "format_error", True, False, 0.0)


def test_printed_image_tags_keep_images_and_placeholders_in_lockstep(make_loop, make_row, scripted, tokenizer,
                                                                     processor):
    """Code that prints the placeholder tokens of every dialect (and shows one real image) must not add
    placeholder runs to the stream: the lockstep check would raise and the training forward fail."""
    # the code assembles the special tokens: written whole in the model's turn they would be tokens there
    forged = ("pad, vision = '_pad|>', '<|vision'\nprint(vision + '_start|><|image' + pad + vision + '_end|> <image> "
              "<image_clue_7></image_clue_7> <|video' + pad)\ndisplay(image_clue_0)")
    task = suite("synthetic-image")[0]
    server = scripted([scripted.code(forged), scripted.answer(task.answer)])
    out = play(make_loop, server, make_row(task))

    check_turns(out, server, processor, response_length=2048)  # one placeholder run per image, all along
    assert out.extra_fields["n_images"] == 2 and out.extra_fields["end_reason"] == "answered"
    (_, code_end), (answer_start, _) = runs(out.response_mask, 1)
    reply = tokenizer.decode(out.response_ids[code_end:answer_start])
    assert reply.count("<|vision_start|>") == 1  # the one real frame; check_turns counted its pad run
    assert "<\u200b|vision_start|>" in reply and "7 image tag(s) in this text were broken" in reply
