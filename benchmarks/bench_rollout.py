"""Rollout throughput: episodes and steps per second with the scripted policy at several concurrencies.

    python benchmarks/bench_rollout.py                       # image and video, concurrency 1, 8, 64, 256
    python benchmarks/bench_rollout.py --env image --levels 1 8 --repeat 2 --json out.json

The scripted policy answers instantly, so this measures what the SDK adds around a model: env pool,
reset (worker fork, image load), code execution, frame transport and judging. Side by side in the same
run: a plain synchronous Gymnasium loop (``env.step`` in a for loop, one episode at a time), the way a
custom RL script would drive one env. Each level runs ``--repeat`` times; the table shows the median
throughput, per-episode latency p50/p99 and the sandbox's share of episode time (code execution over
the whole episode, the rest being reset, transport, judging and the runner).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyvision_env.synthetic  # noqa: E402
from pyvision_agent.policies import ScriptedPolicy  # noqa: E402
from pyvision_agent.rollout import play_episode, rollout  # noqa: E402
from pyvision_agent.summary import summarize_group  # noqa: E402
from pyvision_env.tasks import Task  # noqa: E402

ENVS = {"image": "PyVisionImage-v0", "video": "PyVisionVideo-v0"}


def sync_loop(env_id: str, tasks: list[Task], episodes: int) -> dict:
    """The baseline: one env, one episode at a time, the Gymnasium API as written in most RL scripts."""
    env = gym.make(env_id, tasks=tasks)
    policy = ScriptedPolicy()
    latencies, steps = [], 0
    start = time.perf_counter()
    for i in range(episodes):
        t = time.perf_counter()
        episode, _ = play_episode(env, policy, options={"task_index": i % len(tasks)})
        steps += len(episode.turns)
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    env.close()
    return {"wall_s": wall, "episodes": episodes, "steps": steps, "latencies": latencies, "sandbox_share": None}


def runner(env_id: str, tasks: list[Task], episodes: int, concurrency: int) -> dict:
    start = time.perf_counter()
    records = rollout(env_id, ScriptedPolicy(), env_kwargs={"tasks": tasks}, limit=episodes, concurrency=concurrency,
                      progress=False)
    wall = time.perf_counter() - start
    if any(r["error"] or not r["correct"] for r in records):
        bad = next(r for r in records if r["error"] or not r["correct"])
        raise RuntimeError(f"an episode failed, the numbers would be meaningless: {bad['episode_id']} {bad['error']}")
    return {"wall_s": wall, "episodes": len(records), "steps": sum(r["turns"] for r in records),
            "latencies": [r["timings"]["total_s"] for r in records],
            "sandbox_share": summarize_group(records)["sandbox_share"]}


def measure(env_id: str, levels: list[int], repeat: int, min_episodes: int) -> list[dict]:
    rows = []
    cases = [("sync gym loop", 1, sync_loop)] + [(f"rollout c={c}", c, runner) for c in levels]
    suite = pyvision_env.synthetic.suite(f"synthetic-{'video' if 'Video' in env_id else 'image'}")
    tasks = [suite[i] for i in range(max(min_episodes, 2 * max(levels)))]  # generated once, outside the timings
    sync_loop(env_id, tasks, 2)  # warm up: start the sandbox's zygote before anything is timed
    for name, c, fn in cases:
        episodes = max(min_episodes, 2 * c)
        runs = [fn(env_id, tasks, episodes) if fn is sync_loop else fn(env_id, tasks, episodes, c)
                for _ in range(repeat)]
        eps = [r["episodes"] / r["wall_s"] for r in runs]
        sps = [r["steps"] / r["wall_s"] for r in runs]
        lat = np.array([x for r in runs for x in r["latencies"]])
        shares = [r["sandbox_share"] for r in runs if r["sandbox_share"] is not None]
        rows.append({"env": env_id, "case": name, "concurrency": c, "episodes": episodes, "repeat": repeat,
                     "episodes_per_s": statistics.median(eps), "steps_per_s": statistics.median(sps),
                     "latency_p50_s": float(np.percentile(lat, 50)), "latency_p99_s": float(np.percentile(lat, 99)),
                     "sandbox_share": statistics.median(shares) if shares else None,
                     "runs_episodes_per_s": eps})
        print(f"  {env_id} {name}: {rows[-1]['episodes_per_s']:.1f} episodes/s", file=sys.stderr, flush=True)
    base = rows[0]["episodes_per_s"]
    for row in rows:
        row["vs_sync_loop"] = row["episodes_per_s"] / base
    return rows


def table(rows: list[dict]) -> str:
    head = ("| env | case | episodes | episodes/s | steps/s | vs sync loop | episode p50 | episode p99 | "
            "sandbox share |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        share = "-" if r["sandbox_share"] is None else f"{r['sandbox_share']:.0%}"
        lines.append(f"| {r['env']} | {r['case']} | {r['episodes']} x {r['repeat']} | {r['episodes_per_s']:.1f} | "
                     f"{r['steps_per_s']:.1f} | {r['vs_sync_loop']:.2f}x | {r['latency_p50_s'] * 1000:.0f} ms | "
                     f"{r['latency_p99_s'] * 1000:.0f} ms | {share} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", choices=[*ENVS, "both"], default="both")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 8, 64, 256], help="concurrent episodes")
    p.add_argument("--repeat", type=int, default=3, help="runs per level (the table shows medians)")
    p.add_argument("--min-episodes", type=int, default=64, help="episodes per run (at least 2x the level)")
    p.add_argument("--json", metavar="OUT", help="write every number to this file")
    args = p.parse_args(argv)
    if min(args.levels) < 1 or args.repeat < 1 or args.min_episodes < 1:
        p.error("--levels, --repeat and --min-episodes must be at least 1")
    rows = []
    for key in ENVS if args.env == "both" else [args.env]:
        rows += measure(ENVS[key], args.levels, args.repeat, args.min_episodes)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
