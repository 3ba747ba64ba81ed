"""Playing episodes in the real envs for the policy tests (the rollout runner does more; these tests want
the episode objects themselves)."""

from __future__ import annotations

import asyncio
from typing import Any

import gymnasium as gym

import pyvision_env  # noqa: F401  (registers the envs)
from pyvision_agent.episode import Episode
from pyvision_agent.policies.base import Policy


async def play(policy: Policy, env_id: str, *, seed: int, **env_kwargs: Any) -> tuple[Episode, dict[str, Any]]:
    """One episode through ``aact``/``astep``; returns it and the last step's info."""
    env = gym.make(env_id, **env_kwargs)
    core = env.unwrapped
    try:
        obs, info = await core.areset(seed=seed)
        episode = Episode.from_reset(env_id, obs, info, image_placeholder=core.config.image_placeholder)
        done = False
        while not done:
            turn = await policy.aact(episode)
            obs, _, terminated, truncated, info = await core.astep(turn.text)
            done = terminated or truncated
            episode.add(turn, None if done else obs)
        return episode, info
    finally:
        env.close()


def play_many(policy: Policy, env_id: str, n: int, **env_kwargs: Any) -> list[tuple[Episode, dict[str, Any]]]:
    """``n`` episodes at once (seeds 0..n-1), as a rollout runs them."""

    async def run() -> list[tuple[Episode, dict[str, Any]]]:
        return await asyncio.gather(*(play(policy, env_id, seed=k, **env_kwargs) for k in range(n)))

    return asyncio.run(run())
