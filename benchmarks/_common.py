"""What every benchmark here shares: how often to measure, statistics, media, the machine, the table.

Times are host-side round trips (``time.perf_counter``), p50 and p99 over many runs, measured side by side
with the alternatives in one run. Nothing is tuned to the targets: they are printed next to what was
measured. The scripts import this module by its file name (their folder is on ``sys.path``), so it is
not part of the installed package.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

import numpy as np

T = TypeVar("T")
SIZE = 1024  # side of the input image and of the frame every benchmark shows
SETUP = "frame = np.asarray(image_clue_0).copy()"  # the prepared 1024x1024 uint8 array the frame step shows


class BenchError(RuntimeError):
    """A measured step did not do its work, so its time would mean nothing."""


@dataclass
class Reply:
    """One execution's outcome; our ExecutionResult has the same fields, so sessions are episodes as is."""

    stdout: str = ""
    frames: Sequence[np.ndarray] = field(default_factory=list)
    error: str | None = None
    timed_out: bool = False


class Episode(Protocol):
    """An open episode of any backend: runs code in its state."""

    def execute(self, code: str, timeout: float | None = None) -> Reply: ...


# -- how often --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Repeat until a time budget per measurement is spent (within min/max runs), or exactly ``fixed``."""

    budget_s: float
    min_runs: int
    max_runs: int
    fixed: int | None = None


def make_plan(quick: bool, repeat: int | None) -> Plan:
    if repeat:
        return Plan(0.0, repeat, repeat, repeat)
    return Plan(0.4, 3, 100) if quick else Plan(5.0, 10, 500)


def collect(sample: Callable[[], T], plan: Plan) -> list[T]:
    """Call ``sample`` as the plan says. A first call cheap enough to spare is a dropped warm-up; an
    infinite sample ends the series (the backend is stuck: more runs would only wait)."""
    start = time.perf_counter()
    first = sample()
    cost = time.perf_counter() - start
    if _is_inf(first):
        return [first]
    n = plan.fixed or int(min(plan.max_runs, max(plan.min_runs, plan.budget_s / max(cost, 1e-6))))
    out = [] if plan.fixed or cost * plan.min_runs < plan.budget_s else [first]
    while len(out) < n and not (out and _is_inf(out[-1])):
        out.append(sample())
    return out


def _is_inf(value: Any) -> bool:
    return any(isinstance(v, float) and math.isinf(v) for v in (value if isinstance(value, tuple) else (value,)))


def stats(samples: Sequence[float]) -> dict[str, Any]:
    """p50 (median) and p99 (interpolated); an infinite sample (never recovered) stays infinite, and
    ``never`` says so in the JSON, where infinity is written as null."""
    values = sorted(float(s) for s in samples)
    never = not all(map(math.isfinite, values))
    p99 = float(np.percentile(values, 99, method="higher" if never else "linear")) if len(values) > 1 else None
    return {"p50": statistics.median(values), "p99": p99, "n": len(values), "samples": values, "never": never}


def ms(samples: Sequence[float]) -> dict[str, Any]:
    """Stats of samples in seconds, as milliseconds."""
    return dict(stats([s * 1e3 for s in samples]), unit="ms")


# -- measuring one step -----------------------------------------------------------------------------------


def check(reply: Reply, code: str, frames: int = 0, stdout: str | None = None, full: bool = False) -> None:
    """Raise BenchError unless ``code`` ran cleanly, returned ``frames`` frames (``full``: the first one is
    SIZE x SIZE x 3) and printed ``stdout``."""
    problem = None
    if reply.error or reply.timed_out:
        problem = f"failed: {reply.error}"
    elif len(reply.frames) != frames:
        problem = f"returned {len(reply.frames)} frames instead of {frames}"
    elif full and reply.frames[0].shape != (SIZE, SIZE, 3):
        problem = f"returned a {reply.frames[0].shape} frame"
    elif stdout is not None and reply.stdout.strip() != stdout:
        problem = f"printed {reply.stdout.strip()[:200]!r} instead of {stdout!r}"
    if problem:
        raise BenchError(f"{code!r} {problem}")


def timed(ep: Episode, code: str, **expect: Any) -> float:
    """Seconds of one ``execute`` round trip, checked as :func:`check` says."""
    start = time.perf_counter()
    reply = ep.execute(code, 60.0)
    elapsed = time.perf_counter() - start
    check(reply, code, **expect)
    return elapsed


_T0 = time.perf_counter()


def progress(name: str, what: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:6.1f} s] {name}: {what}", file=sys.stderr, flush=True)


# -- media and machine ------------------------------------------------------------------------------------


def make_image(directory: str) -> str:
    """A photo-like 1024x1024 PNG (shading, shapes, sensor noise): PNG costs depend on content."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    img = np.stack([200 * x + 30, 160 * y + 40, 120 * (1 - x * y) + 60], axis=-1)
    for _ in range(24):
        centre = tuple(int(v) for v in rng.integers(0, SIZE, 2))
        cv2.circle(img, centre, int(rng.integers(20, 160)), tuple(float(v) for v in rng.integers(0, 255, 3)), -1)
    path = os.path.join(directory, "image.png")
    Image.fromarray(np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)).save(path)
    return path


def machine() -> dict[str, Any]:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        model = "?"
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform()}


def print_machine(report: dict[str, Any], out: TextIO) -> None:
    """The machine line and the 1-min load average as each part of the run started (contention shows)."""
    m = report["machine"]
    print(f"machine: {m['cpus']} CPUs, {m['cpu_model']}, Python {m['python']}, {m['platform']}", file=out)
    print("1-min load average as each part started: "
          + ", ".join(f"{k} {v:.2f}" for k, v in report["load_average_1min"].items()), file=out)


# -- report -----------------------------------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "never"
    if unit == "ms":
        return f"{value / 1e3:.2f} s" if value >= 1e3 else f"{value:.3g} ms"
    return f"{value:.1f} MB" if unit == "MB" else f"{value:,.0f}/s" if value >= 100 else f"{value:.3g}/s"


def ratio(alt: float | None, ours: float | None) -> str:
    if alt is None or not ours or math.isinf(ours):
        return "—"
    return "∞" if math.isinf(alt) else f"{alt / ours:,.0f}x" if alt / ours >= 100 else f"{alt / ours:.3g}x"


def table(rows: Sequence[tuple[str, str, str]], results: dict[str, dict[str, dict]]) -> str:
    """Markdown: one row per (key, label, unit); ours p50 and p99, then p50 and alt/ours per alternative."""
    alts = [name for name in results if name != "ours"]
    head = ["measurement", "ours p50", "ours p99"] + [h for a in alts for h in (f"{a} p50", "ratio (alt/ours)")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, unit in rows:
        ours = results["ours"].get(key) or {}
        cells = [label, fmt(ours.get("p50"), unit), fmt(ours.get("p99"), unit)]
        for a in alts:
            alt = results[a].get(key) or {}
            cells += [fmt(alt.get("p50"), unit), ratio(alt.get("p50"), ours.get("p50"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target(text: str, value: float | None, unit: str, met: bool | None) -> dict[str, Any]:
    """One target line of a report (``met`` None: not measurable in this run, e.g. a p99 of one run)."""
    return {"target": text, "value": value, "unit": unit, "met": met}


def print_targets(targets: Sequence[dict[str, Any]], out: TextIO) -> None:
    print("\ntargets (ours):", file=out)
    for t in targets:
        value = f"{t['value']:.3g}x" if t["unit"] == "x" else fmt(t["value"], t["unit"])
        verdict = {True: "MET   ", False: "MISSED", None: "n/a   "}[t["met"]]
        print(f"  {verdict}  {t['target']}: measured {value}", file=out)


def write_json(path: str | os.PathLike[str], report: Any) -> None:
    """Every number to ``path``; JSON has no infinity, so "never recovered" is written as null."""
    text = json.dumps(report, indent=1, default=str).replace("Infinity", "null")
    Path(path).write_text(text + "\n")


def arguments(doc: str) -> argparse.ArgumentParser:
    """The arguments of ``bench_env.py`` and ``bench_sandbox.py`` (``pyvision bench`` runs both)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small time budgets (a few minutes)")
    p.add_argument("--repeat", type=_positive, metavar="N", help="run every measurement exactly N times "
                   "(smoke tests)")
    p.add_argument("--json", metavar="OUT", help="write every number to this JSON file")
    p.add_argument("--ours-only", action="store_true", help="leave out the alternatives")
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
