"""Aggregate trajectory records: accuracy and reward, and the signs of interaction collapse.

A model trained with a tool reward can drift to answering without tools (or to calling tools without
need). The summary reports, overall and per data source: tool calls and turns per episode, the share of
answers given without any tool call, end reasons and visual tokens, next to accuracy and reward.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from statistics import fmean
from typing import Any


def _mean(values: Sequence[float]) -> float | None:
    return fmean(values) if values else None


def summarize_group(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of one group of records (all of a run, or one data source)."""
    judged = [r["correct"] for r in records if r.get("correct") is not None]
    answered = [r for r in records if r.get("end_reason") == "answered"]
    total_time = sum(r["timings"]["total_s"] for r in records)
    return {
        "episodes": len(records),
        "accuracy": _mean([float(c) for c in judged]),
        "judged": len(judged),
        "mean_reward": _mean([r["reward"] for r in records]),
        "tool_calls_per_episode": _mean([r["n_tool_calls"] for r in records]),
        "turns_per_episode": _mean([r["turns"] for r in records]),
        "answered": len(answered),
        "answered_without_tools": _mean([float(r["n_tool_calls"] == 0) for r in answered]),
        "visual_tokens_per_episode": _mean([r["visual_tokens"] for r in records]),
        "images_per_episode": _mean([r["n_images"] for r in records]),
        "end_reasons": dict(Counter(str(r.get("end_reason")) for r in records).most_common()),
        "errors": sum(1 for r in records if r.get("error")),
        "sandbox_share": (sum(r["timings"]["sandbox_s"] for r in records) / total_time) if total_time else None,
    }


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``summary.json``: the whole run, then ``per_data_source`` in name order."""
    records = list(records)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r.get("data_source") or "unknown"].append(r)
    return {**summarize_group(records),
            "per_data_source": {name: summarize_group(groups[name]) for name in sorted(groups)}}


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table of the summary (one row per data source and one for all), for the terminal."""
    columns = [("episodes", "episodes", "{}"), ("accuracy", "acc", "{:.3f}"), ("mean_reward", "reward", "{:.3f}"),
               ("tool_calls_per_episode", "tools/ep", "{:.2f}"), ("turns_per_episode", "turns/ep", "{:.2f}"),
               ("answered_without_tools", "no-tool ans", "{:.0%}"), ("visual_tokens_per_episode", "vis tok/ep",
                                                                     "{:.0f}"), ("errors", "errors", "{}")]
    rows = [(name, group) for name, group in summary["per_data_source"].items()] + [("ALL", summary)]
    cells = [["data source", *[head for _, head, _ in columns], "end reasons"]]
    for name, group in rows:
        values = [("-" if group[key] is None else fmt.format(group[key])) for key, _, fmt in columns]
        reasons = ", ".join(f"{k} {v}" for k, v in group["end_reasons"].items())
        cells.append([name, *values, reasons])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(w) if i in (0, len(widths) - 1) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
