"""Through gym.make and the public API: what a user's loop gets, beside the alternatives, in one run.

    python benchmarks/bench_env.py [--quick] [--repeat N] [--json OUT] [--ours-only] [--video-seconds S]

Image (``PyVisionImage-v0``, one task given inline with a 1024x1024 photo-like PNG): ``reset()`` timed in a
plain loop of ``reset()`` + ``step(x = 1)``, so each reset also closes the episode before it; the ``x = 1``
step round trip; a step that shows a prepared 1024x1024 array (``display(frame)``) and gets the frame back
in the observation. The same three at the alternatives' own API (``_baselines.py``): a Jupyter kernel and
the PyVision-RL-style executor, where a reset closes the running episode and opens one with the image.
``--ours-only`` leaves these two out.

Video (``PyVisionVideo-v0``): the figures of ``bench_video.py`` on a 640x480 30 fps H.264 video made on the
fly: a GRPO group of 8 episodes against 8 fresh decord and PyAV readers, the first episode against
decord, ``reset()`` of a video already indexed. decord and PyAV always run: the targets are ratios to them.

Issue 11's targets are printed beside the measurements, which are not tuned to them. Medians and p99;
no test asserts a time. The sandbox layer alone, without the env around it, is ``bench_sandbox.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import gymnasium as gym

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # _common, _baselines, bench_video; the checkout's packages first

import _baselines  # noqa: E402
import bench_video  # noqa: E402
from _common import (  # noqa: E402
    SETUP,
    SIZE,
    Plan,
    Reply,
    arguments,
    check,
    collect,
    machine,
    make_image,
    make_plan,
    ms,
    print_machine,
    print_targets,
    progress,
    table,
    target,
    timed,
    write_json,
)

import pyvision_env  # noqa: E402, F401 - registers the envs

IMAGE_ROWS = [  # key, label, unit
    ("reset", "`reset()`: new episode, 1024x1024 image (closing the previous one included)", "ms"),
    ("x = 1", "step `x = 1` (full round trip)", "ms"),
    ("frame", "step showing a 1024x1024 array, frame back (ours: `display(frame)`)", "ms"),
]
IMAGE_TARGETS = [  # text, key, bound on the p50 in ms
    ("image env reset() <= 5 ms p50 (previous episode's teardown included)", "reset", 5.0),
    ("`x = 1` step round trip <= 0.3 ms p50", "x = 1", 0.3),
    ("1024x1024 frame back <= 2 ms p50", "frame", 2.0),
]


def code_turn(code: str) -> str:
    """A model turn that runs ``code`` (the default dialect)."""
    return f"<code>\n```python\n{code}\n```\n</code>"


class GymLoop:
    """Ours as a user's loop drives it: one ``gym.make`` env, ``reset()`` and ``step(turn)``. The turn and
    frame caps are raised so that hundreds of timed steps fit in one episode."""

    name, show_frame = "ours", "display(frame)"

    def __init__(self, image: str) -> None:
        task = {"question": "What is in the picture?", "answer": "a", "images": [image]}
        self.env = gym.make("PyVisionImage-v0", tasks=[task], max_turns=10**9, max_frames_per_episode=10**9)
        self.isolation = ""

    def reset(self) -> None:
        _, info = self.env.reset()
        self.isolation = info["isolation"]

    def execute(self, code: str, timeout: float | None = None) -> Reply:
        obs, _, terminated, truncated, info = self.env.step(code_turn(code))
        ended = f"the episode ended: {info['end_reason']}" if terminated or truncated else None
        return Reply(info["stdout"], obs["images"], info["error"] or ended, info["timed_out"])

    def close(self) -> None:
        self.env.close()


class BackendLoop:
    """An alternative at its own API: a reset closes the running episode and opens one with the image."""

    def __init__(self, backend: Any, image: str) -> None:
        self.backend, self.image, self.episode = backend, image, None
        self.name, self.show_frame = backend.name, backend.show["frame"]

    def reset(self) -> None:
        if self.episode is not None:
            self.episode.close()
            self.episode = None
        self.episode = self.backend.open(self.image)

    def execute(self, code: str, timeout: float | None = None) -> Reply:
        return self.episode.execute(code, timeout or 60.0)

    def close(self) -> None:
        try:
            if self.episode is not None:
                self.episode.close()
        finally:
            self.backend.close()


def measure_image(loop: GymLoop | BackendLoop, plan: Plan) -> dict[str, dict]:
    """The three image rows for one loop, in ms. A first, untimed episode warms up (our zygote, imports)."""
    def reset_then_step() -> float:
        start = time.perf_counter()
        loop.reset()
        elapsed = time.perf_counter() - start
        check(loop.execute("x = 1"), "x = 1")
        return elapsed

    reset_then_step()
    progress(loop.name, "reset")
    out = {"reset": ms(collect(reset_then_step, plan))}
    loop.reset()
    progress(loop.name, "x = 1")
    out["x = 1"] = ms(collect(lambda: timed(loop, "x = 1"), plan))
    check(loop.execute(SETUP), SETUP)
    progress(loop.name, "frame")
    out["frame"] = ms(collect(lambda: timed(loop, loop.show_frame, frames=1, full=True), plan))
    return out


def measure_video(video: str, groups: int, resets: int) -> dict[str, dict]:
    """``bench_video.py``'s figures (seconds): the GRPO group, the first episode, reset of an indexed video."""
    progress("video", f"{groups} groups of 8 episodes beside decord and PyAV")
    results = bench_video.group_figure(video, repeat=groups)
    progress("video", f"{4 * resets} + {resets} resets of an indexed video (a tight loop, then paced)")
    return results | bench_video.reset_figure(video, repeat=resets, tight=4 * resets)


def check_targets(image: dict[str, dict], video: dict[str, dict] | None) -> list[dict[str, Any]]:
    out = [target(text, image[key]["p50"], "ms", image[key]["p50"] <= bound) for text, key, bound in IMAGE_TARGETS]
    return out + (bench_video.targets(video) if video else [])


def print_report(report: dict[str, Any], out: TextIO) -> None:
    print("\n## Through gym.make and the public API: what a user's loop gets\n", file=out)
    print_machine(report, out)
    print(f"our isolation: {report['isolation']}\nmedia: {report['media']}", file=out)
    print(f"\n### PyVisionImage-v0\n\n{table(IMAGE_ROWS, report['results'])}\n", file=out)
    print("ratio = alternative p50 / ours p50 (above 1: ours takes less time). Alternatives at their own API: "
          "a reset closes the running episode and opens one with the image.", file=out)
    if report["video"]:
        runs = report["video_runs"]
        print(f"\n### PyVisionVideo-v0 ({runs['groups']} groups of 8 episodes; {4 * runs['resets']} resets in a "
              f"loop, {runs['resets']} paced)\n\n"
              f"{bench_video.table(report['video'])}", file=out)
    for name, error in report["errors"].items():
        print(f"{name}: NOT MEASURED COMPLETELY: {error}", file=out)
    print_targets(report["targets"], out)


def run(quick: bool = False, repeat: int | None = None, baselines: bool = True, video_seconds: int = 120,
        out: TextIO | None = None) -> dict[str, Any]:
    """Measure the image env and its alternatives, then the video env; print the report (to stdout by
    default) and return it."""
    plan, load = make_plan(quick, repeat), {}
    groups, resets = repeat or (2 if quick else 5), repeat or (20 if quick else 50)
    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="pyvision-bench-") as tmp:
        image = make_image(tmp)
        ours = GymLoop(image)
        try:
            load["ours image"] = os.getloadavg()[0]
            results["ours"] = measure_image(ours, plan)
            isolation = ours.isolation
        finally:
            ours.close()
        for backend in (b for b in (_baselines.make_backends() if baselines else []) if not b.stateless):
            loop = BackendLoop(backend, image)  # python -c is stateless: it has no episode to reset
            try:
                load[backend.name] = os.getloadavg()[0]
                results[backend.name] = measure_image(loop, plan)
            except Exception as exc:  # noqa: BLE001 - one broken alternative must not lose the others
                errors[backend.name] = f"{type(exc).__name__}: {exc}"
            finally:
                loop.close()
        media = f"{SIZE}x{SIZE} PNG of {os.path.getsize(image) / 2**20:.2f} MiB"
    progress("video", f"making (or reusing) a {video_seconds} s 640x480 video")
    video = bench_video.natural_video(video_seconds)
    media += (f"; {video_seconds} s 640x480 30 fps H.264 (keyframe every 60 frames), "
              f"{os.path.getsize(video) / 1e6:.1f} MB")
    load["ours video"] = os.getloadavg()[0]
    try:
        video_results = measure_video(video, groups, resets)
    except ImportError as exc:  # decord is the video targets' yardstick: pip install -e '.[video]'
        video_results, errors["video"] = None, f"{exc} (install the video extra: pip install -e '.[video]')"
    load["end"] = os.getloadavg()[0]
    report = {"machine": machine(), "load_average_1min": load, "media": media, "isolation": isolation,
              "plan": vars(plan), "video_runs": {"groups": groups, "resets": resets}, "results": results,
              "video": video_results, "errors": errors, "targets": check_targets(results["ours"], video_results)}
    print_report(report, out or sys.stdout)
    return report


def main(argv: list[str] | None = None) -> int:
    p = arguments(__doc__)
    p.add_argument("--video-seconds", type=int, default=120, metavar="S",
                   help="length of the video (default 120: VSI-Bench videos are 1-3 minutes)")
    args = p.parse_args(argv)
    report = run(quick=args.quick, repeat=args.repeat, baselines=not args.ours_only, video_seconds=args.video_seconds)
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
