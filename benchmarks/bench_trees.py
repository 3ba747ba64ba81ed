"""``reset()`` of two source trees side by side: did a change to the hot path make the reset faster?

This machine's speed drifts during a day by more than most changes gain, so a figure from today cannot
be compared with one from yesterday. This runs the same loops on two checkouts (``git worktree add``),
alternating them round after round in one sitting, each loop in a fresh process with ``PYTHONPATH`` set to
its tree:

- image, tight: ``reset()`` timed, then ``step(x = 1)``, again and again (the bench_env figure);
- image, paced: the same with 30 ms of sleep before each reset (a model's turn between episodes);
- video, tight and paced: the same on an indexed 2-minute 640x480 video.

Usage: ``python benchmarks/bench_trees.py BEFORE_TREE AFTER_TREE [--rounds 3] [--episodes N] [--json OUT]``
(about 6 minutes with the defaults). Medians only: a p99 of 80-150 resets is one or two samples.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, make_image, write_json  # noqa: E402

LOOPS = [  # name, media, seconds of sleep before each reset, episodes
    ("image, tight loop", "image", 0.0, 150),
    ("image, paced (30 ms between)", "image", 0.03, 80),
    ("video, tight loop", "video", 0.0, 150),
    ("video, paced (30 ms between)", "video", 0.03, 80),
]
_STEP = "<code>\n```python\nx = 1\n```\n</code>"


def child(media: str, path: str, pause: float, episodes: int) -> None:
    """In the tree's own process: warm up, then print the reset times (ms) as JSON."""
    import gymnasium as gym

    import pyvision_env  # noqa: F401

    task = {"question": "q", "answer": "1", **({"images": [path]} if media == "image" else {"video": path})}
    env = gym.make("PyVisionImage-v0" if media == "image" else "PyVisionVideo-v0", tasks=[task])
    for _ in range(10):
        env.reset()
        env.step(_STEP)
    times = []
    for _ in range(episodes):
        if pause:
            time.sleep(pause)
        start = time.perf_counter()
        env.reset()
        times.append((time.perf_counter() - start) * 1e3)
        env.step(_STEP)
    env.close()
    print(json.dumps(times))


def run_loop(tree: str, media: str, path: str, pause: float, episodes: int) -> list[float]:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", media, path, str(pause),
                          str(episodes)], env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2], float(argv[3]), int(argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", help="the source tree to compare against (a git worktree)")
    parser.add_argument("after", help="the source tree with the change")
    parser.add_argument("--rounds", type=int, default=3, help="times each tree runs each loop (alternating)")
    parser.add_argument("--episodes", type=int, help="resets per loop (default: 150 tight, 80 paced)")
    parser.add_argument("--json", metavar="OUT", help="write every number to this JSON file")
    parser.add_argument("--video-seconds", type=int, default=120, metavar="S", help="length of the video")
    args = parser.parse_args(argv)
    for tree in (args.before, args.after):
        if not os.path.isfile(os.path.join(tree, "pyvision_env", "__init__.py")):
            parser.error(f"{tree!r} is not a source tree of this repository (no pyvision_env/ in it)")
    from bench_video import natural_video

    media = {"image": make_image(tempfile.mkdtemp(prefix="pyvision-bench-")),
             "video": natural_video(args.video_seconds)}
    results: dict[str, dict[str, list[float]]] = {name: {"before": [], "after": []} for name, *_ in LOOPS}
    for round_ in range(args.rounds):
        for name, kind, pause, episodes in LOOPS:
            for label in ("before", "after"):
                tree = args.before if label == "before" else args.after
                p50 = statistics.median(run_loop(tree, kind, media[kind], pause, args.episodes or episodes))
                results[name][label].append(p50)
                print(f"[round {round_ + 1}] {name}: {label} {p50:.2f} ms", file=sys.stderr, flush=True)
    m = machine()
    print(f"machine: {m['cpus']} CPUs, {m['cpu_model']}, Python {m['python']}, {m['platform']}; "
          f"1-min load average at the end {os.getloadavg()[0]:.2f}")
    print(f"before: {args.before}\nafter:  {args.after}\n")
    print("| `reset()` p50 per round | before | after | after / before (median of rounds) |\n|---|---|---|---|")
    for name, by_tree in results.items():
        before, after = by_tree["before"], by_tree["after"]
        print(f"| {name} | {', '.join(f'{v:.2f}' for v in before)} ms | {', '.join(f'{v:.2f}' for v in after)} ms "
              f"| {statistics.median(after) / statistics.median(before):.2f}x |")
    if args.json:
        write_json(args.json, {"machine": machine(), "before": args.before, "after": args.after,
                               "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
