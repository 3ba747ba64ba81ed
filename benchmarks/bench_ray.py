"""The Ray sandbox backend beside the local one: reset and step latency, and throughput at 64/256/1024
concurrent episodes, on simulated nodes of one machine.

    python benchmarks/bench_ray.py                                   # 3 simulated nodes, the defaults below
    python benchmarks/bench_ray.py --levels 64 --repeat 1 --latency-runs 20 --json out.json
    python benchmarks/bench_ray.py --address auto                    # a running cluster instead

Without ``--address`` it starts a ``ray.cluster_utils.Cluster`` of ``--nodes`` nodes with
``--cpus-per-node`` logical CPUs each: separate raylets, object stores and actor processes, all on this
machine's cores. Latency: one env per backend on the same task (a 1024x1024 PNG), the two measured in
alternation so they share the machine's load; medians and p99 over ``--latency-runs``. A reset is timed
after the previous episode's teardown has finished (the Ray backend does not wait for it, so without
the pause the next reset would pay for it). Throughput:
``c`` episodes at once through ``areset``/``astep`` (reset, two code steps, an answer), each level
``--repeat`` times, medians. Every episode's answer is checked: a wrong one stops the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import ray
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyvision_env  # noqa: E402, F401
from pyvision_env.sandbox.ray_backend import get_ray_backend  # noqa: E402

BACKENDS = ("local", "ray")


def code(text: str) -> str:
    return f"<code>\n```python\n{text}\n```\n</code>"


def make_image(folder: str, size: int, seed: int) -> str:
    path = os.path.join(folder, f"image-{size}.png")
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def latency(image: str, runs: int) -> list[dict]:
    """Reset and step round trips of one env per backend, measured alternately."""
    task = {"question": "What is the mean?", "answer": "0", "images": [image]}
    envs = {b: gym.make("PyVisionImage-v0", tasks=[task], sandbox_backend=b, max_turns=10**6,
                        max_frames_per_episode=10**6) for b in BACKENDS}
    cases = {"reset: new episode, 1024x1024 image ready": None,
             "step `x = 1` (full round trip)": code("x = 1"),
             "step `display(image_clue_0)` (1024x1024 frame back)": code("display(image_clue_0)")}
    samples: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for env in envs.values():  # warm up: actors, zygotes, the image in each cache
        env.reset(seed=0)
        env.step(code("display(image_clue_0)"))
    for name, turn in cases.items():
        for _ in range(runs):
            for backend, env in envs.items():
                if turn is None:
                    env.unwrapped._end_episode()
                    time.sleep(0.05)  # Ray ends an episode without waiting: let its teardown finish untimed
                    samples[(name, backend)].append(timed(lambda env=env: env.reset(seed=0)))
                else:
                    samples[(name, backend)].append(timed(lambda env=env, turn=turn: env.step(turn)))
    for env in envs.values():
        env.close()
    rows = []
    for name in cases:
        row = {"measurement": name}
        for backend in BACKENDS:
            values = np.array(samples[(name, backend)])
            row[backend] = {"p50_s": float(np.percentile(values, 50)), "p99_s": float(np.percentile(values, 99)),
                            "runs": len(values)}
        row["ratio_p50"] = row["ray"]["p50_s"] / row["local"]["p50_s"]
        rows.append(row)
    return rows


async def _episode(env: gym.Env, index: int) -> tuple[float, str]:
    start = time.perf_counter()
    _, info = await env.areset(options={"task_index": index})
    obs, *_ = await env.astep(code("w, h = image_clue_0.size\nprint(w * h)"))
    if f"{256 * 256}\n" not in obs["text"]:
        raise RuntimeError(f"episode {index} got a wrong reply: {obs['text']!r}")
    await env.astep(code("m = float(np.asarray(image_clue_0).mean())\nprint(round(m))"))
    *_, end = await env.astep(f"<answer>{index}</answer>")
    if end["reward_components"]["accuracy"] != 1.0:
        raise RuntimeError(f"episode {index} was judged wrong: {end}")
    return time.perf_counter() - start, info["sandbox_node"]


def throughput(image: str, level: int, repeat: int) -> list[dict]:
    tasks = [{"question": "Which episode?", "answer": str(i), "answer_type": "number", "images": [image]}
             for i in range(level)]
    rows = []
    for backend in BACKENDS:
        runs = []
        for _ in range(repeat):
            envs = [gym.make("PyVisionImage-v0", tasks=tasks, sandbox_backend=backend).unwrapped for _ in range(level)]

            async def run(envs=envs) -> list[tuple[float, str]]:
                return await asyncio.gather(*(_episode(env, i) for i, env in enumerate(envs)))

            start = time.perf_counter()
            episodes = asyncio.run(run())
            wall = time.perf_counter() - start
            for env in envs:
                env.close()
            runs.append((wall, episodes))
        latencies = np.array([t for _, eps in runs for t, _ in eps])
        per_node = collections.Counter(node for _, eps in runs for _, node in eps)
        eps_per_s = [level / wall for wall, _ in runs]
        rows.append({"backend": backend, "concurrency": level, "repeat": repeat,
                     "episodes_per_s": statistics.median(eps_per_s), "steps_per_s": 3 * statistics.median(eps_per_s),
                     "latency_p50_s": float(np.percentile(latencies, 50)),
                     "latency_p99_s": float(np.percentile(latencies, 99)),
                     "runs_episodes_per_s": eps_per_s,
                     "episodes_per_node": sorted(per_node.values(), reverse=True)})
        print(f"  {backend} c={level}: {rows[-1]['episodes_per_s']:.1f} episodes/s", file=sys.stderr, flush=True)
    rows[1]["vs_local"] = rows[1]["episodes_per_s"] / rows[0]["episodes_per_s"]
    return rows


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def tables(lat: list[dict], thr: list[dict]) -> str:
    lines = ["| measurement | local p50 | local p99 | ray p50 | ray p99 | ray / local (p50) |",
             "|---|---|---|---|---|---|"]
    for r in lat:
        lines.append(f"| {r['measurement']} | {_ms(r['local']['p50_s'])} | {_ms(r['local']['p99_s'])} | "
                     f"{_ms(r['ray']['p50_s'])} | {_ms(r['ray']['p99_s'])} | {r['ratio_p50']:.2f}x |")
    lines += ["", "| concurrent episodes | backend | episodes/s | steps/s | ray / local | episode p50 | episode p99 | "
              "episodes per node (all runs) |", "|---|---|---|---|---|---|---|---|"]
    for r in thr:
        ratio = f"{r['vs_local']:.2f}x" if "vs_local" in r else "-"
        spread = " / ".join(map(str, r["episodes_per_node"])) if r["backend"] == "ray" else "-"
        lines.append(f"| {r['concurrency']} | {r['backend']} | {r['episodes_per_s']:.1f} | {r['steps_per_s']:.1f} | "
                     f"{ratio} | {_ms(r['latency_p50_s'])} | {_ms(r['latency_p99_s'])} | {spread} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", help="join this Ray cluster ('auto': the running one) instead of simulating nodes")
    p.add_argument("--nodes", type=int, default=3, help="simulated nodes (default 3)")
    p.add_argument("--cpus-per-node", type=int, default=2, help="logical CPUs of each simulated node (default 2)")
    p.add_argument("--levels", type=int, nargs="+", default=[64, 256, 1024], help="concurrent episodes")
    p.add_argument("--repeat", type=int, default=3, help="runs per level (the table shows medians)")
    p.add_argument("--latency-runs", type=int, default=200, help="samples per latency measurement")
    p.add_argument("--json", metavar="OUT", help="write every number to this file")
    args = p.parse_args(argv)
    if min([*args.levels, args.repeat, args.latency_runs, args.nodes, args.cpus_per_node]) < 1:
        p.error("--levels, --repeat, --latency-runs, --nodes and --cpus-per-node must be at least 1")
    cluster = None
    if not ray.is_initialized():
        if args.address is None:
            from ray.cluster_utils import Cluster

            node = {"num_cpus": args.cpus_per_node, "object_store_memory": 512 << 20}
            cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
            for _ in range(args.nodes - 1):
                cluster.add_node(**node)
        ray.init(address=cluster.address if cluster else args.address, log_to_driver=False)
    try:
        backend = get_ray_backend()
        backend.refresh()
        nodes = backend.nodes()
        print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}; "
              f"Ray {ray.__version__}: {len(nodes)} nodes ({'simulated on this machine' if cluster else 'cluster'}), "
              f"{sum(n['cpus'] for n in nodes):g} logical CPUs; load average {os.getloadavg()[0]:.2f}")
        with tempfile.TemporaryDirectory() as folder:
            lat = latency(make_image(folder, 1024, 0), args.latency_runs)
            small = make_image(folder, 256, 1)
            thr = [row for level in args.levels for row in throughput(small, level, args.repeat)]
        print(tables(lat, thr))
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"latency": lat, "throughput": thr, "nodes": nodes}, indent=2))
    finally:
        if cluster is not None:
            get_ray_backend().close()
            ray.shutdown()
            cluster.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
