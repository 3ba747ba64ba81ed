"""``pyvision demo``: a few synthetic image and video episodes, played offline by the scripted policy."""

from __future__ import annotations

import textwrap
import time

import gymnasium as gym

import pyvision_env  # noqa: F401  (registers the envs)

from .episode import Episode
from .policies import ScriptedPolicy


def _indent(text: str, width: int = 100, lines: int = 6, wrap: bool = False) -> str:
    """``text`` indented, at most ``lines`` lines of at most ``width`` characters: long lines are wrapped
    (``wrap``, for questions) or cut at a word boundary with an ellipsis (interpreter output)."""
    kept = [part for line in text.strip().splitlines()
            for part in (textwrap.wrap(line, width) or [""] if wrap else [_clip(line, width)])]
    shown = kept[:lines] + ([f"... ({len(kept) - lines} more lines)"] if len(kept) > lines else [])
    return textwrap.indent("\n".join(shown), "    ")


def _clip(line: str, width: int) -> str:
    """``line`` cut to ``width`` characters at a word boundary (mid-word only for a single long word), with
    an ellipsis that says it was cut."""
    if len(line) <= width:
        return line
    cut = line[:width - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > width // 2 else cut).rstrip() + "…"


def run(episodes_per_env: int = 3, seed: int = 0, show: bool = True) -> list[dict]:
    """Play ``episodes_per_env`` episodes in each env; print what happened; return one summary per episode."""
    summaries = []
    for env_id in ("PyVisionImage-v0", "PyVisionVideo-v0"):
        env = gym.make(env_id)
        for k in range(episodes_per_env):
            start = time.perf_counter()
            obs, info = env.reset(seed=seed + k)
            uniform = info.get("visual_tokens_uniform")
            task = env.unwrapped._episode.task
            policy = ScriptedPolicy()
            episode = Episode.from_reset(env_id, obs, info, task=task)
            if show:
                print(f"\n=== {env_id} | {task.id} | isolation: {info['isolation']}")
                print(_indent(task.question, lines=12, wrap=True))
                sizes = ", ".join(f"{i.shape[1]}x{i.shape[0]}" for i in obs["images"]) or "none (sample with code)"
                print(f"  input frames: {sizes}")
            reward, done = 0.0, False
            while not done:
                turn = policy.act(episode)
                obs, reward, terminated, truncated, info = env.step(turn.text)
                done = terminated or truncated
                episode.add(turn, None if done else obs)
                if show and not done:
                    frames = ", ".join(f"{i.shape[1]}x{i.shape[0]}" for i in obs["images"]) or "none"
                    print(f"  turn {info['turn']}: ran code in {info['exec_time_s'] * 1000:.1f} ms, frames: {frames}")
                    print(_indent(info["stdout"] or info["error"] or "(no output)", lines=3))
            summary = {"env": env_id, "task": task.id, "answer": info["prediction"], "reference": task.answer,
                       "reward": reward, **info["reward_components"], "turns": info["turn"],
                       "tool_calls": info["n_tool_calls"], "visual_tokens": info["visual_tokens"],
                       "seconds": time.perf_counter() - start}
            summaries.append(summary)
            if show:
                print(f"  answer {summary['answer']!r} (reference {task.answer!r}) -> reward {reward:.2f} "
                      f"(accuracy {summary['accuracy']:.0f} + tool {summary['tool']:.1f}); "
                      f"visual tokens {info['visual_tokens']}"
                      + (f" (uniform sampling would cost {uniform})" if uniform else "")
                      + f"; {summary['seconds']:.2f} s")
        env.close()
    if show:
        right = sum(s["accuracy"] for s in summaries)
        print(f"\n{right:.0f}/{len(summaries)} answered right; mean reward "
              f"{sum(s['reward'] for s in summaries) / len(summaries):.2f}")
    return summaries
