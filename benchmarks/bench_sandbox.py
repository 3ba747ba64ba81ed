"""The sandbox layer alone: latency, memory and throughput of episode sessions, beside the alternatives.

    python benchmarks/bench_sandbox.py [--quick] [--repeat N] [--json OUT] [--ours-only]

Every measurement takes a *backend* (open an episode, run code in it), so one run times our sandbox
(``Sandbox.session``, below the Gymnasium env) and the alternatives of ``_baselines.py`` (Jupyter kernel,
``python -c`` per call, PyVision-RL style executor) on the same machine, media and code. What a user's
``gym.make`` loop gets on top of this is ``bench_env.py``. Host-side round trips, p50 and p99.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # _common, _baselines; the checkout's packages first

import _baselines  # noqa: E402
from _common import (  # noqa: E402
    SETUP,
    SIZE,
    BenchError,
    Episode,
    Plan,
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
    stats,
    table,
    target,
    timed,
    write_json,
)

FIGURE = "fig, ax = plt.subplots(); ax.plot(np.arange(100), np.sin(np.arange(100) / 10)); plt.show()"
VIDEO = f"b = video_clue_0.get_batch({[int(i) for i in np.linspace(0, 299, 16)]}).asnumpy(); print(b.shape)"
SMALL_WORK = "a = np.asarray(image_clue_0)[:256, :256]; print(int(a.mean()))"
STEPS_PER_EPISODE = 5
LOOPS = {"recovery loop": "while True:\n    pass",
         "recovery sigint": "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"}
DEADLINE_S = 0.1  # the timeout given to the endless loops
PROBE_TIMEOUT_S = 3.0  # no `x = 1` answer this long after a timeout counts as "never recovers"
ROWS = [  # key, label, unit
    ("reset", "reset: new episode, 1024x1024 image ready", "ms"),
    ("x = 1", "step `x = 1` (full round trip)", "ms"),
    ("print(1)", "step `print(1)`", "ms"),
    ("frame", "step showing a 1024x1024 frame (ours: `display(frame)`)", "ms"),
    ("image", "step `display(image_clue_0)` (1024x1024)", "ms"),
    ("figure", "matplotlib figure step (plot + `plt.show()`)", "ms"),
    ("video cold", "16 video frames, cold (fresh episode)", "ms"),
    ("video cached", "16 video frames, cached (same frames again)", "ms"),
    ("recovery loop", "recovery after the deadline: `while True: pass`", "ms"),
    ("recovery sigint", "recovery after the deadline: SIGINT-ignoring loop", "ms"),
    ("idle uss", "idle memory per episode (USS)", "MB"),
]
TARGETS = [  # text, key, statistic, bound (<=)
    ("reset <= 5 ms p50", "reset", "p50", 5.0),
    ("`x = 1` round trip <= 0.2 ms p50", "x = 1", "p50", 0.2),
    ("`x = 1` round trip <= 0.5 ms p99", "x = 1", "p99", 0.5),
    ("1024x1024 frame back in <= 2 ms (p50)", "frame", "p50", 2.0),
    ("recovery <= 20 ms after the deadline, `while True: pass` (p50)", "recovery loop", "p50", 20.0),
    ("recovery <= 20 ms after the deadline, SIGINT-ignoring loop (p50)", "recovery sigint", "p50", 20.0),
    ("<= 30 MB USS per idle episode (p50)", "idle uss", "p50", 30.0),
]


class SessionEpisode(Episode, Protocol):
    pid: int | None  # the process holding the episode's state (None: stateless)
    def close(self) -> None: ...


class Backend(Protocol):
    name: str
    stateless: bool  # nothing survives a call: the frame step must build its array again
    show: dict[str, str]  # code showing "frame" (the SETUP array) and "image" (image_clue_0)
    max_concurrency: int
    def open(self, image: str | None, video: str | None = None) -> SessionEpisode: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Scale:
    """What else ``--quick`` / ``--repeat`` shrink here, besides the runs per measurement."""

    concurrency: tuple[int, ...] = (1, 8, 32)
    alt_concurrency: tuple[int, ...] = (1, 8, 32)
    idle_episodes: int = 16
    stateless_throughput: bool = True  # a python -c per step: slow enough to leave out of --quick


def make_scale(quick: bool, repeat: int | None) -> Scale:
    scale = Scale((1, 8, 32), (8,), 4, False) if quick else Scale()
    return Scale(scale.concurrency, scale.alt_concurrency, min(scale.idle_episodes, max(repeat, 2)),
                 scale.stateless_throughput) if repeat else scale


class Ours:
    """Our sandbox with its defaults, except the per-episode frame cap (32), raised so that hundreds of
    timed frame steps in one episode still return their frame. A private Sandbox (same code path as
    ``get_sandbox()``): closing it at the end must not close the host process's shared one."""

    name, stateless, max_concurrency = "ours", False, 1 << 20
    show = {"frame": "display(frame)", "image": "display(image_clue_0)"}

    def __init__(self) -> None:
        from pyvision_env.sandbox import Sandbox, SandboxConfig

        self.sandbox = Sandbox()
        self.config = SandboxConfig(max_frames_per_episode=1 << 30)

    def open(self, image: str | None, video: str | None = None) -> Any:
        return self.sandbox.session(images=[image] if image else [], video=video, config=self.config)

    async def aopen(self, image: str | None, video: str | None = None) -> Any:
        return await self.sandbox.asession(images=[image] if image else [], video=video, config=self.config)

    def close(self) -> None:
        self.sandbox.close()


# -- Measurements ---------------------------------------------------------------------------------------


def measure_reset(backend: Backend, image: str, plan: Plan) -> list[float]:
    """Seconds until a new episode has the image loaded and can run code (closing it is not timed)."""
    def one() -> float:
        start = time.perf_counter()
        ep = backend.open(image)
        elapsed = time.perf_counter() - start
        ep.close()
        return elapsed
    return collect(one, plan)


def measure_steps(backend: Backend, image: str, plan: Plan) -> dict[str, list[float]]:
    """Round trips of the step rows in one episode; frame steps must return the frame they show."""
    steps = {"x = 1": ("x = 1", {}), "print(1)": ("print(1)", {"stdout": "1"}),
             "frame": (backend.show["frame"], {"frames": 1, "full": True}),
             "image": (backend.show["image"], {"frames": 1, "full": True}), "figure": (FIGURE, {"frames": 1})}
    ep = backend.open(image)
    try:
        check(ep.execute(SETUP, 60.0), SETUP)
        out = {}
        for key, (code, expect) in steps.items():
            code = f"{SETUP}\n{code}" if backend.stateless and key == "frame" else code
            progress(backend.name, key)
            out[key] = collect(lambda code=code, expect=expect: timed(ep, code, **expect), plan)
        return out
    finally:
        ep.close()


def measure_video(backend: Backend, video: str, plan: Plan) -> tuple[list[float], list[float]]:
    """16 frames by ``get_batch``: the first call in a fresh episode (cold), then the same call again."""
    def one() -> tuple[float, float]:
        ep = backend.open(None, video)
        try:
            return timed(ep, VIDEO, stdout="(16, 360, 640, 3)"), timed(ep, VIDEO, stdout="(16, 360, 640, 3)")
        finally:
            ep.close()
    samples = collect(one, plan)
    return [s[0] for s in samples], [s[1] for s in samples]


def measure_recovery(backend: Backend, image: str, loop: str, plan: Plan) -> list[float]:
    """Seconds from the deadline of an endless loop until the next ``x = 1`` has answered."""
    ep = backend.open(image)
    def one() -> float:
        start = time.perf_counter()
        if not ep.execute(loop, DEADLINE_S).timed_out:
            raise BenchError(f"{loop!r} did not time out")
        probe = ep.execute("x = 1", PROBE_TIMEOUT_S)
        if probe.timed_out:
            return math.inf
        check(probe, "x = 1")
        return time.perf_counter() - (start + DEADLINE_S)
    try:
        return collect(one, plan)
    finally:
        ep.close()


def measure_idle_memory(backend: Backend, image: str, count: int) -> list[float]:
    """MiB of USS (pages no other process shares) of each of ``count`` open, idle episodes."""
    import psutil

    eps: list[SessionEpisode] = []
    try:
        for _ in range(count):
            eps.append(backend.open(image))
            check(eps[-1].execute("x = 1", 60.0), "x = 1")
        return [psutil.Process(ep.pid).memory_full_info().uss / 2**20 for ep in eps]
    finally:
        for ep in eps:
            ep.close()


async def _call(pool: ThreadPoolExecutor, obj: Any, name: str, *args: Any) -> Any:
    """``obj.a<name>(*args)`` where the backend is async-native (ours: aexecute), else a pool thread."""
    native = getattr(obj, "a" + name, None)
    if native is not None:
        return await native(*args)
    return await asyncio.get_running_loop().run_in_executor(pool, getattr(obj, name), *args)


def measure_throughput(backend: Backend, image: str, n: int, plan: Plan) -> tuple[float, float]:
    """Episodes/s and steps/s of ``n`` concurrent episodes (reset + 5 small numpy steps + close)."""
    async def episode(pool: ThreadPoolExecutor) -> None:
        ep = await _call(pool, backend, "open", image, None)
        try:
            for _ in range(STEPS_PER_EPISODE):
                check(await _call(pool, ep, "execute", SMALL_WORK, 60.0), SMALL_WORK)
        finally:
            await _call(pool, ep, "close")

    async def rounds() -> tuple[int, float]:
        done, start = 0, time.perf_counter()
        with ThreadPoolExecutor(max_workers=n) as pool:
            while done < n * 50:
                results = await asyncio.gather(*(episode(pool) for _ in range(n)), return_exceptions=True)
                for r in results:
                    if isinstance(r, BaseException):
                        raise r
                done += n
                if plan.fixed or time.perf_counter() - start >= plan.budget_s:
                    break
        return done, time.perf_counter() - start

    done, elapsed = asyncio.run(rounds())
    return done / elapsed, done * STEPS_PER_EPISODE / elapsed


def measure_all(backend: Backend, image: str, video: str, plan: Plan, scale: Scale,
                concurrency: Sequence[int]) -> dict:
    """Every row for one backend, as stats in the row's unit (times in ms)."""
    progress(backend.name, "reset")
    out = {"reset": ms(measure_reset(backend, image, plan))}
    out.update({key: ms(samples) for key, samples in measure_steps(backend, image, plan).items()})
    progress(backend.name, "video")
    out["video cold"], out["video cached"] = map(ms, measure_video(backend, video, plan))
    for key, loop in LOOPS.items():
        progress(backend.name, key)
        out[key] = ms(measure_recovery(backend, image, loop, plan))
    if not backend.stateless and importlib.util.find_spec("psutil"):
        progress(backend.name, "idle memory")
        out["idle uss"] = dict(stats(measure_idle_memory(backend, image, scale.idle_episodes)), unit="MB")
    for n in (n for n in concurrency if n <= backend.max_concurrency and (scale.stateless_throughput
                                                                          or not backend.stateless)):
        progress(backend.name, f"throughput N={n}")
        episodes, steps = measure_throughput(backend, image, n, plan)
        out[f"episodes/s, N={n}"] = dict(stats([episodes]), unit="/s")
        out[f"steps/s, N={n}"] = dict(stats([steps]), unit="/s")
    return out


# -- Media, report, entry points ------------------------------------------------------------------------


def make_video(directory: str, seconds: int = 10, fps: int = 30, width: int = 640, height: int = 360) -> str:
    """A synthetic H.264 video (moving patterns; libx264 defaults but a fast preset), written with PyAV."""
    from pyvision_env.synthetic.video import write_video

    path = os.path.join(directory, "video.mp4")
    yy, xx = np.mgrid[0:height, 0:width]
    frames = (np.stack([(xx + 4 * i) % 256, (yy + 2 * i) % 256, (xx // 8 + yy // 8 + i) % 256], -1).astype(np.uint8)
              for i in range(seconds * fps))
    write_video(path, frames, fps=fps, options={"preset": "ultrafast"})
    return path


def all_rows(results: dict[str, dict[str, dict]]) -> list[tuple[str, str, str]]:
    """ROWS, then the throughput rows ours has (their concurrencies depend on the scale)."""
    return ROWS + [(k, f"throughput: {k}", "/s") for k in results["ours"] if k.startswith(("episodes", "steps"))]


def check_targets(results: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    ours = results["ours"]
    out = [target(text, ours[key][stat], ours[key]["unit"],  # p99 of 1 run: None
                  None if ours[key][stat] is None else ours[key][stat] <= bound)
           for text, key, stat, bound in TARGETS if key in ours]
    if "reset" in results.get("jupyter", {}):
        speedup = results["jupyter"]["reset"]["p50"] / ours["reset"]["p50"]
        out.append(target(">= 100x faster reset than Jupyter (p50)", speedup, "x", speedup >= 100))
    return out


def print_report(report: dict[str, Any], out: TextIO) -> None:
    iso = report["isolation"]
    print("\n## The sandbox layer alone (Sandbox.session, below gym.make)\n", file=out)
    print_machine(report, out)
    print(f"our isolation: {iso['summary']}" + "".join(f"; {p}" for p in iso["problems"]), file=out)
    print(f"media: {report['media']}\n\n{table(all_rows(report['results']), report['results'])}\n", file=out)
    print("ratio = alternative p50 / ours p50: above 1 = ours faster (smaller) for times and memory; below 1 = "
          f"ours faster for throughput rows. never = no answer {PROBE_TIMEOUT_S:g} s after the deadline.", file=out)
    for name, error in report["errors"].items():
        print(f"{name}: NOT MEASURED COMPLETELY: {error}", file=out)
    if report["leftover_processes"]:
        print(f"LEFTOVER child processes: {report['leftover_processes']}", file=out)
    print_targets(report["targets"], out)


def run(quick: bool = False, repeat: int | None = None, baselines: bool = True,
        out: TextIO | None = None) -> dict[str, Any]:
    """Measure ours and (``baselines``) the alternatives of ``_baselines.py``; print the report (to stdout by
    default) and return it."""
    plan, scale, load = make_plan(quick, repeat), make_scale(quick, repeat), {}
    before = _child_processes()  # e.g. a zygote the caller already runs: not ours to report
    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="pyvision-bench-") as tmp:
        image, video = make_image(tmp), make_video(tmp)
        media = (f"{SIZE}x{SIZE} PNG of {os.path.getsize(image) / 2**20:.2f} MiB; 10 s 30 fps 640x360 H.264; "
                 f"endless loops get a {DEADLINE_S:g} s deadline")
        ours = Ours()
        try:
            iso, load["ours"] = ours.sandbox.isolation, os.getloadavg()[0]
            results["ours"] = measure_all(ours, image, video, plan, scale, scale.concurrency)
        finally:
            ours.close()
        for backend in _baselines.make_backends() if baselines else []:
            try:
                load[backend.name] = os.getloadavg()[0]
                results[backend.name] = measure_all(backend, image, video, plan, scale, scale.alt_concurrency)
            except Exception as exc:  # noqa: BLE001 - one broken alternative must not lose the others
                errors[backend.name] = f"{type(exc).__name__}: {exc}"
            finally:
                backend.close()
    load["end"] = os.getloadavg()[0]
    report = {"machine": machine(), "load_average_1min": load, "media": media,
              "plan": {**vars(plan), **vars(scale)},
              "isolation": {"summary": str(iso), "problems": list(iso.problems)}, "results": results,
              "errors": errors, "targets": check_targets(results),
              "leftover_processes": sorted(set(_child_processes()) - set(before))}
    print_report(report, out or sys.stdout)
    return report


def _child_processes() -> list[str]:
    """This process's descendants; any that appear during a run and outlive it are leftovers."""
    if not importlib.util.find_spec("psutil"):
        return []
    import psutil

    return [f"{p.pid}: {' '.join(p.cmdline())[:100]}" for p in psutil.Process().children(recursive=True)]


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__).parse_args(argv)
    report = run(quick=args.quick, repeat=args.repeat, baselines=not args.ours_only)
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
