"""Video through the public API: a GRPO group on one video, the first episode, reset of an indexed video.

    python benchmarks/bench_video.py                   # 2-minute 640x480 30 fps H.264, 5 groups of 8
    python benchmarks/bench_video.py --seconds 60 --repeat 3 --json out.json

Every figure goes through ``gym.make("PyVisionVideo-v0")``, ``reset()`` and ``step()`` with a model-like
turn (``video_clue_0.get_batch(16 evenly spaced indices).asnumpy()``), and is measured side by side, in
the same run, with what a PyVision-RL-style runtime does per episode: a fresh decord ``VideoReader``
(open + ``get_batch`` + ``asnumpy``), and a fresh PyAV reader (open + index + seek/decode). Each group
uses a copy of the video the service has not seen, so its first episode indexes and decodes for real.

One function per figure (``group_figure``, ``reset_figure``) so that another script can call them;
``natural_video`` makes the input on the fly (smooth panning texture with moving objects, H.264 with
a normal GOP) and caches it under the temp dir, keyed by its parameters. Medians and p99 of wall time;
no test asserts any of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # _common; the checkout's packages first

from _common import machine, print_targets, stats, target  # noqa: E402

import pyvision_env  # noqa: E402, F401 - registers the envs
from pyvision_env.media._decoder import Decoder  # noqa: E402
from pyvision_env.sandbox import get_sandbox  # noqa: E402
from pyvision_env.synthetic.video import write_video  # noqa: E402

CACHE_DIR = os.path.join(tempfile.gettempdir(), "pyvision-bench-videos")


def natural_video(seconds: int = 120, width: int = 640, height: int = 480, fps: int = 30, gop: int = 60) -> str:
    """An H.264 video of a camera slowly panning over a smooth textured scene with a few objects moving
    through it (x264 veryfast, crf 23, B-frames, a keyframe every ``gop`` frames). Cached by parameters."""
    path = os.path.join(CACHE_DIR, f"natural_{width}x{height}_{fps}fps_{seconds}s_g{gop}.mp4")
    if os.path.exists(path):
        return path
    import cv2

    rng = np.random.default_rng(0)
    big_h, big_w = 2 * height, 2 * width
    scene = np.zeros((big_h, big_w, 3), np.float32)
    for octave, weight in ((64, 0.6), (16, 0.3), (4, 0.1)):  # smooth noise: walls, furniture, texture
        small = rng.uniform(0, 255, (big_h // octave + 2, big_w // octave + 2, 3)).astype(np.float32)
        scene += weight * cv2.resize(small, (big_w, big_h), interpolation=cv2.INTER_CUBIC)[:big_h, :big_w]
    objects = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(-2, 2), rng.uniform(-1.5, 1.5),
                int(rng.integers(20, 60)), tuple(int(c) for c in rng.integers(0, 255, 3))) for _ in range(4)]

    def frames():
        for i in range(seconds * fps):
            t = i / fps
            x = int((width / 2) * (1 + np.sin(t / 9)))  # a slow pan back and forth
            y = int((height / 2) * (1 + np.sin(t / 13 + 1)))
            frame = np.ascontiguousarray(scene[y:y + height, x:x + width]).clip(0, 255).astype(np.uint8)
            for ox, oy, vx, vy, r, colour in objects:
                cx, cy = int((ox + vx * i) % width), int((oy + vy * i) % height)
                cv2.circle(frame, (cx, cy), r, colour, -1, lineType=cv2.LINE_AA)
            yield frame

    write_video(path, frames(), fps=fps, options={"preset": "veryfast", "crf": "23", "g": str(gop)})
    return path


def evenly_spaced(n_frames: int, count: int = 16) -> list[int]:
    return [int(i) for i in np.linspace(0, n_frames - 1, count)]


def fresh_copy(video: str, folder: str) -> str:
    """The same bytes under a new name: a video the service has not indexed yet."""
    path = os.path.join(folder, f"copy_{time.monotonic_ns()}.mp4")
    shutil.copyfile(video, path)
    return path


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decord_episode(video: str, indices: list[int]) -> float:
    """What a PyVision-RL episode pays: a fresh decord reader, one batch. (Its reader keeps decoding in
    the background after the call; deleting it, outside the timing, stops that before the next one.)"""
    import decord

    holder: dict[str, Any] = {}

    def run() -> None:
        holder["vr"] = decord.VideoReader(video, ctx=decord.cpu(0))
        holder["vr"].get_batch(indices).asnumpy()

    elapsed = _timed(run)
    del holder["vr"]
    return elapsed


def pyav_episode(video: str, indices: list[int]) -> float:
    """A fresh PyAV reader: open, index (one demux pass), seek to each frame's keyframe and decode."""
    def run() -> None:
        decoder = Decoder(video)
        try:
            np.stack([frame for _, frame in decoder.decode(sorted(set(indices)))])
        finally:
            decoder.close()

    return _timed(run)


def _turn(indices: list[int]) -> str:
    return f"<code>\n```python\nfr = video_clue_0.get_batch({indices}).asnumpy()\nprint(fr.shape)\n```\n</code>"


def ours_episode(env: gym.Env, video: str, indices: list[int]) -> tuple[float, float]:
    """(reset, step) of one episode through the public API."""
    task = {"question": "How many people are in the room?", "answer": "2", "video": video}
    reset = _timed(lambda: env.reset(options={"task": task}))
    start = time.perf_counter()
    _, _, _, _, info = env.step(_turn(indices))
    step = time.perf_counter() - start
    if info["error"] or not info["stdout"].startswith(f"({len(indices)},"):
        raise RuntimeError(f"the episode failed: {info['error'] or info['stdout']}")
    return reset, step


def group_figure(video: str, repeat: int = 5, group: int = 8, count: int = 16) -> dict[str, Any]:
    """A GRPO group: ``group`` episodes on one video not indexed yet, each asking for the same ``count``
    frames, one after another; and the same group run concurrently (wall time). Side by side: as many
    fresh decord and PyAV readers."""
    decoder = Decoder(video)
    decoder.close()
    indices = evenly_spaced(decoder.info.frames, count)
    envs = [gym.make("PyVisionVideo-v0") for _ in range(group)]
    ours_episode(envs[0], video, indices)  # warm: zygote and video service started, imports done
    samples: dict[str, list[float]] = {k: [] for k in (
        "ours group", "decord group", "pyav group", "ours first", "ours later step", "ours later",
        "decord episode", "pyav episode", "ours group concurrent", "decord group concurrent")}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeat):
            copy = fresh_copy(video, folder)
            episodes = [ours_episode(env, copy, indices) for env in envs]
            samples["ours group"].append(sum(r + s for r, s in episodes))
            samples["ours first"].append(sum(episodes[0]))
            samples["ours later"] += [r + s for r, s in episodes[1:]]
            samples["ours later step"] += [s for _, s in episodes[1:]]
            decord = [decord_episode(copy, indices) for _ in range(group)]
            samples["decord group"].append(sum(decord))
            samples["decord episode"] += decord
            pyav = [pyav_episode(copy, indices) for _ in range(group)]
            samples["pyav group"].append(sum(pyav))
            samples["pyav episode"] += pyav
            copy = fresh_copy(video, folder)
            samples["ours group concurrent"].append(_concurrently(
                [lambda env=env, path=copy: ours_episode(env, path, indices) for env in envs]))
            samples["decord group concurrent"].append(_concurrently(
                [lambda path=copy: decord_episode(path, indices)] * group))
    for env in envs:
        env.close()
    return {key: stats(values) for key, values in samples.items()}


def _concurrently(calls: list[Callable[[], Any]]) -> float:
    threads = [threading.Thread(target=call) for call in calls]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def reset_figure(video: str, repeat: int = 50, tight: int = 200) -> dict[str, Any]:
    """``reset()`` of a video the service has indexed, in a plain reset()/step() loop (each reset follows
    a step ``x = 1``; the previous episode's teardown is included) as ``bench_env.py`` times the image
    env's reset: ``tight`` resets after 10 untimed episodes (the sandbox's start and its worker pool's
    first fill are not what a running loop pays); then ``repeat`` resets with 30 ms between episodes;
    and, for scale, opening a decord reader on it."""
    import decord

    env = gym.make("PyVisionVideo-v0")
    task = {"question": "How many chairs are there?", "answer": "4", "video": video}
    step = "<code>\n```python\nx = 1\n```\n</code>"
    resets = []
    for _ in range(min(10, tight) + tight):
        resets.append(_timed(lambda: env.reset(options={"task": task})))
        env.step(step)
    resets = resets[min(10, tight):]
    paced = []
    for _ in range(repeat):  # as in RL: the model's turn (here 30 ms) lets the sandbox prepare the next worker
        time.sleep(0.03)
        paced.append(_timed(lambda: env.reset(options={"task": task})))
        env.step(step)
    videos = get_sandbox()._videos  # the env's (default settings): its video service
    attaches = [_timed(lambda: os.close(videos.attach(video)[0])) for _ in range(repeat)]
    env.close()
    opens = [_timed(lambda: decord.VideoReader(video, ctx=decord.cpu(0))) for _ in range(min(repeat, 10))]
    return {"ours reset": stats(resets), "ours reset paced": stats(paced), "ours attach": stats(attaches),
            "decord open": stats(opens)}


ROWS = [  # label, ours key, decord key, PyAV key
    ("group of 8 episodes, same 16 frames (total, one after another)", "ours group", "decord group", "pyav group"),
    ("group of 8 episodes, run concurrently (wall)", "ours group concurrent", "decord group concurrent", None),
    ("first episode of the group (reset + step; decord: open + get_batch)", "ours first", "decord episode",
     "pyav episode"),
    ("each later episode of the group (reset + step)", "ours later", "decord episode", "pyav episode"),
    ("  its step alone (16 frames from the shared cache)", "ours later step", None, None),
    ("reset() of an indexed video (decord: opening a reader)", "ours reset", "decord open", None),
    ("  the same, 30 ms after the last step (a model's turn between)", "ours reset paced", "decord open", None),
    ("  its video part (attaching the episode to the video service)", "ours attach", None, None),
]


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s" if value >= 1 else f"{value * 1e3:.1f} ms"


def table(results: dict[str, Any]) -> str:
    lines = ["| measurement | ours p50 | ours p99 | decord p50 | decord / ours | PyAV p50 | PyAV / ours |",
             "|---|---|---|---|---|---|---|"]
    for label, ours_key, decord_key, pyav_key in ROWS:
        ours = results[ours_key]
        cells = [label, _ms(ours["p50"]), _ms(ours["p99"])]
        for key in (decord_key, pyav_key):
            alt = results.get(key) if key else None
            cells += [_ms(alt["p50"]), f"{alt['p50'] / ours['p50']:.2f}x"] if alt else ["—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's video targets (p50), beside what was measured."""
    group = results["decord group"]["p50"] / results["ours group"]["p50"]
    first = results["ours first"]["p50"] / results["decord episode"]["p50"]
    reset = results["ours reset"]["p50"] * 1e3
    return [target("group of 8 episodes >= 5x less time than 8 fresh decord readers", group, "x", group >= 5),
            target("first episode <= 1.2x decord's time (open + get_batch)", first, "x", first <= 1.2),
            target("reset() of an indexed video <= 5 ms", reset, "ms", reset <= 5)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=120, help="video length (VSI-Bench videos are 1-3 minutes)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--gop", type=int, default=60, help="keyframe interval in frames")
    p.add_argument("--repeat", type=int, default=5, help="groups of 8 (each on a fresh copy of the video)")
    p.add_argument("--json", metavar="OUT", help="write every number to this file")
    args = p.parse_args(argv)
    start = time.perf_counter()
    video = natural_video(args.seconds, args.width, args.height, args.fps, args.gop)
    print(f"video: {args.width}x{args.height}, {args.fps} fps, {args.seconds} s, keyframe every {args.gop} "
          f"frames, {os.path.getsize(video) / 1e6:.1f} MB ({time.perf_counter() - start:.1f} s to get it)")
    load_before = os.getloadavg()
    results = group_figure(video, repeat=args.repeat) | reset_figure(video)
    m = machine()
    print(f"machine: {m['cpus']} CPUs, {m['cpu_model']}, Python {m['python']}; load average before/after: "
          f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}")
    print(table(results))
    print_targets(targets(results), sys.stdout)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "machine": m, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
