"""The agent-loop YAML's ``sandbox_backend: ray``: verl's agent loop plays the episode with its code on
a Ray actor, and the trajectory is token for token the one the local sandbox gives.

A one-node Ray instance is enough here (the loop only goes through ``gym.make``); placement, node
failures and the rest of the backend are tested on a three-node cluster in ``tests/test_ray.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pyvision_env.synthetic import suite

ray = pytest.importorskip("ray")

from pyvision_env.sandbox.ray_backend import get_ray_backend  # noqa: E402

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}


@pytest.fixture(scope="module")
def ray_backend():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    backend = get_ray_backend()
    yield backend
    backend.close()
    if started:
        ray.shutdown()


def play(make_loop: Any, server: Any, row: dict[str, Any], yaml: dict[str, Any] | None = None) -> Any:
    async def main() -> Any:
        return await make_loop(server, yaml=yaml).run(dict(SAMPLING), **row)

    return asyncio.run(main())


@pytest.mark.parametrize("suite_name", ["synthetic-image", "synthetic-video"])
def test_the_yaml_switch_runs_the_code_on_ray_with_the_same_trajectory(suite_name, ray_backend, make_loop, make_row,
                                                                      scripted):
    task = suite(suite_name)[0]
    row = make_row(task)
    turns = [*map(scripted.code, task.metadata["solution"]), scripted.answer(task.answer)]
    opened = sum(n["opened"] for n in ray_backend.nodes())

    local = play(make_loop, scripted(turns), row)
    remote = play(make_loop, scripted(turns), row, yaml={"sandbox_backend": "ray"})

    assert sum(n["opened"] for n in ray_backend.nodes()) == opened + 1  # the Ray run's episode, and only it
    assert remote.extra_fields["end_reason"] == "answered" and remote.extra_fields["n_tool_calls"] >= 1
    assert remote.prompt_ids == local.prompt_ids and remote.response_ids == local.response_ids
    assert remote.response_mask == local.response_mask and remote.extra_fields == local.extra_fields
    assert [im.tobytes() for im in remote.multi_modal_data.get("images", [])] == \
        [im.tobytes() for im in local.multi_modal_data.get("images", [])]
