"""Aggregate trajectory records: accuracy and reward, and the signs of interaction collapse.

A model trained with a tool reward can drift to answering without tools (or to calling tools without
need). The summary reports, overall and per data source: tool calls and turns per episode, the share of
answers given without any tool call, end reasons and visual tokens, next to accuracy and reward.

Episodes that failed (the policy or the env raised: a server down, a missing file) are counted as
``errors`` and are not judged: they say nothing about the model, and counting them as wrong would
dilute the accuracy without a word. The same code summarizes for ``summary.json`` and for the viewer,
so it takes records as they come from a file (a missing or odd field is skipped, not raised on).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

FAILED_END_REASONS = ("env_error", "policy_error")
"""End reasons of episodes that did not run to an end: not judged, played again when a run is resumed."""


@dataclass(frozen=True)
class Metric:
    """One number of a summary, with what people read for it."""

    key: str
    """The key in ``summary.json``."""
    label: str
    """Its name for a person (viewer tables, plots)."""
    short: str
    """Its column header in the terminal table."""
    fmt: str
    """How it is printed (``str.format``)."""
    collapse: bool = False
    """A sign of interaction collapse: it falls (or the share without tools rises) before the accuracy does."""
    help: str = ""
    """One line on what it counts."""


METRICS: tuple[Metric, ...] = (
    Metric("episodes", "Episodes", "episodes", "{}"),
    Metric("accuracy", "Accuracy", "acc", "{:.1%}", help="right answers / judged episodes"),
    Metric("judged", "Judged", "judged", "{}", help="episodes with a reference answer that ran to an end"),
    Metric("mean_reward", "Mean reward", "reward", "{:.3f}"),
    Metric("tool_calls_per_episode", "Tool calls / episode", "tools/ep", "{:.2f}", collapse=True,
           help="executed code blocks per episode (failed ones too)"),
    Metric("turns_per_episode", "Turns / episode", "turns/ep", "{:.2f}", collapse=True, help="model turns per episode"),
    Metric("answered_without_tools", "Answers without tools", "no-tool ans", "{:.0%}", collapse=True,
           help="share of answers given without any tool call"),
    Metric("visual_tokens_per_episode", "Visual tokens / episode", "vis tok/ep", "{:.0f}"),
    Metric("images_per_episode", "Images / episode", "img/ep", "{:.1f}"),
    Metric("errors", "Failed episodes", "errors", "{}", help="policy or env errors: not judged, retried on resume"),
    Metric("sandbox_share", "Sandbox share of time", "sandbox", "{:.0%}", help="code execution / episode time"),
)
"""The numbers of a summary in the order tables show them (``end_reasons`` comes last, as text)."""


def _numbers(records: Iterable[dict[str, Any]], key: str) -> list[float]:
    return [float(v) for r in records if isinstance(v := r.get(key), (int, float)) and not isinstance(v, bool)]


def _mean(values: Sequence[float]) -> float | None:
    return fmean(values) if values else None


def summarize_group(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of one group of records (all of a run, or one data source)."""
    judged = [r["correct"] for r in records if isinstance(r.get("correct"), bool)]
    answered = [r for r in records if r.get("end_reason") == "answered"]
    timings = [r["timings"] for r in records if isinstance(r.get("timings"), dict)]
    total_time = sum(_numbers(timings, "total_s"))
    return {
        "episodes": len(records),
        "accuracy": _mean([float(c) for c in judged]),
        "judged": len(judged),
        "mean_reward": _mean(_numbers(records, "reward")),
        "tool_calls_per_episode": _mean(_numbers(records, "n_tool_calls")),
        "turns_per_episode": _mean(_numbers(records, "turns")),
        "answered": len(answered),
        "answered_without_tools": _mean([float(r.get("n_tool_calls") == 0) for r in answered]),
        "visual_tokens_per_episode": _mean(_numbers(records, "visual_tokens")),
        "images_per_episode": _mean(_numbers(records, "n_images")),
        "end_reasons": dict(Counter(str(r.get("end_reason")) for r in records).most_common()),
        "errors": sum(1 for r in records if r.get("end_reason") in FAILED_END_REASONS),
        "sandbox_share": sum(_numbers(timings, "sandbox_s")) / total_time if total_time else None,
    }


def data_source(record: dict[str, Any]) -> str:
    """The record's data source, ``unknown`` when it has none."""
    source = record.get("data_source")
    return str(source) if source not in (None, "") else "unknown"


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``summary.json``: the whole run, then ``per_data_source`` in name order."""
    records = list(records)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[data_source(r)].append(r)
    return {**summarize_group(records),
            "per_data_source": {name: summarize_group(groups[name]) for name in sorted(groups)}}


def format_value(metric: Metric, value: Any) -> str:
    """``value`` as the metric prints it; ``-`` when there is none."""
    return "-" if value is None else metric.fmt.format(value)


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table of the summary (one row per data source and one for all), for the terminal."""
    columns = [m for m in METRICS if m.key not in ("judged", "images_per_episode", "sandbox_share")]
    rows = [(name, group) for name, group in summary["per_data_source"].items()] + [("ALL", summary)]
    cells = [["data source", *[m.short for m in columns], "end reasons"]]
    for name, group in rows:
        reasons = ", ".join(f"{k} {v}" for k, v in group["end_reasons"].items())
        cells.append([name, *[format_value(m, group.get(m.key)) for m in columns], reasons])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(w) if i in (0, len(widths) - 1) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


__all__ = ["FAILED_END_REASONS", "METRICS", "Metric", "data_source", "format_table", "format_value", "summarize",
           "summarize_group"]
