"""The viewer's charts: distributions of one run or of several side by side, as inline SVG.

Interaction collapse shows in distributions before it shows in means (a run whose mean is two tool
calls may be half zero-call answers and half long loops), so the charts are histograms of tool calls,
turns and visual tokens per episode, accuracy by number of tool calls, end reasons, and accuracy and
tool calls per data source. They are drawn here as SVG text (no script, no library, no network: the
page opens anywhere). Every bar is a ``<rect class='bar'>`` carrying its series, category and value as
data attributes and a ``<title>`` tooltip, so a person can hover it and a test can count it.

With several runs, each run is a series in its own colour and the histograms show shares of that run's
episodes (runs of different sizes compare); with one run they show episode counts.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .summary import data_source

PALETTE = ("#0969da", "#d1570b", "#1a7f37", "#8250df", "#bf3989", "#0a7e8c", "#9a6700", "#57606a")
"""Series colours, in run order (the legend and the viewer's run badges use the same)."""

MAX_INT_BIN = 12
"""Integer histograms (tool calls, turns) get one bin per value up to this, then one ``12+`` bin."""


@dataclass(frozen=True)
class Series:
    """One run's bars in a chart: a value (or None: no bar) and a tooltip per category."""

    name: str
    values: list[float | None]
    tips: list[str]


@dataclass(frozen=True)
class Chart:
    """A chart: its id (``data-plot``), title, categories and one series per run."""

    plot_id: str
    title: str
    categories: list[str]
    series: list[Series]
    value_label: str
    fmt: Callable[[float], str]
    horizontal: bool = False
    collapse: bool = False
    """A chart of a collapse sign (tool calls, turns): marked on the page."""
    note: str = ""


def run_charts(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> list[Chart]:
    """The charts of ``runs`` (a name and its records each), in the order the page shows them."""
    shares = len(runs) > 1
    everything = [r for _, records in runs for r in records]
    per_episode = _share if shares else _count
    y_label = "share of episodes" if shares else "episodes"

    def histogram(key: str, title: str, collapse: bool) -> Chart:
        top = max((_int(r.get(key)) for r in everything), default=0)
        labels = [str(v) for v in range(min(top, MAX_INT_BIN))] + [f"{MAX_INT_BIN}+" if top >= MAX_INT_BIN else
                                                                     str(top)]
        series = []
        for name, records in runs:
            counts = Counter(min(_int(r.get(key)), MAX_INT_BIN) for r in records)
            series.append(per_episode(name, [counts.get(min(v, MAX_INT_BIN), 0) for v in range(len(labels))],
                                      len(records)))
        return Chart(key, title, labels, series, y_label, _pct if shares else _plain, collapse=collapse)

    charts = [histogram("n_tool_calls", "Tool calls per episode", True),
              histogram("turns", "Turns per episode", True)]

    tokens = [_int(r.get("visual_tokens")) for r in everything]
    edges = _edges(max(tokens, default=0))
    token_series = []
    for name, records in runs:
        counts = Counter(_bin(_int(r.get("visual_tokens")), edges) for r in records)
        token_series.append(per_episode(name, [counts.get(k, 0) for k in range(len(edges) - 1)], len(records)))
    charts.append(Chart("visual_tokens", "Visual tokens per episode", [f"{_compact(a)}–{_compact(b)}" for a, b in
                                                                          zip(edges, edges[1:])],
                        token_series, y_label, _pct if shares else _plain))

    tool_bins = charts[0].categories
    accuracy = []
    for name, records in runs:
        judged = [(min(_int(r.get("n_tool_calls")), MAX_INT_BIN), r["correct"]) for r in records
                  if isinstance(r.get("correct"), bool)]
        values, tips = [], []
        for k in range(len(tool_bins)):
            outcomes = [c for b, c in judged if b == k]
            values.append(sum(outcomes) / len(outcomes) if outcomes else None)
            tips.append(f"{sum(outcomes)} of {len(outcomes)} right" if outcomes else "no judged episode")
        accuracy.append(Series(name, values, tips))
    charts.append(Chart("accuracy_by_tool_calls", "Accuracy by number of tool calls", tool_bins, accuracy,
                        "accuracy", _pct, note="judged episodes only"))

    reasons = [k for k, _ in Counter(str(r.get("end_reason")) for r in everything).most_common()]
    end_series = []
    for name, records in runs:
        counts = Counter(str(r.get("end_reason")) for r in records)
        end_series.append(per_episode(name, [counts.get(k, 0) for k in reasons], len(records)))
    charts.append(Chart("end_reasons", "End reasons", reasons, end_series, y_label, _pct if shares else _plain,
                        horizontal=True))

    sources = sorted({data_source(r) for r in everything})
    by_source: list[Series] = []
    tools_by_source: list[Series] = []
    for name, records in runs:
        groups = {s: [r for r in records if data_source(r) == s] for s in sources}
        values, tips, tool_values, tool_tips = [], [], [], []
        for s in sources:
            judged = [r["correct"] for r in groups[s] if isinstance(r.get("correct"), bool)]
            values.append(sum(judged) / len(judged) if judged else None)
            tips.append(f"{sum(judged)} of {len(judged)} right" if judged else "no judged episode")
            calls = [_int(r.get("n_tool_calls")) for r in groups[s]]
            tool_values.append(sum(calls) / len(calls) if calls else None)
            tool_tips.append(f"{sum(calls)} calls in {len(calls)} episodes" if calls else "no episode")
        by_source.append(Series(name, values, tips))
        tools_by_source.append(Series(name, tool_values, tool_tips))
    charts.append(Chart("accuracy_by_source", "Accuracy by data source", sources, by_source, "accuracy", _pct,
                        horizontal=True))
    charts.append(Chart("tool_calls_by_source", "Tool calls per episode by data source", sources, tools_by_source,
                        "tool calls per episode", _decimal, horizontal=True, collapse=True))
    return charts


# --- drawing ---------------------------------------------------------------------------------------------
_W, _H = 440, 230  # the vertical charts' coordinate box (they scale to their container's width)
_LEFT, _RIGHT, _TOP, _BOTTOM = 46, 10, 12, 40


def svg(chart: Chart) -> str:
    """The chart as one ``<svg>`` element."""
    return _horizontal(chart) if chart.horizontal else _vertical(chart)


def _vertical(chart: Chart) -> str:
    top = _nice_max(chart)
    width, height = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    n_cat, n_ser = max(len(chart.categories), 1), max(len(chart.series), 1)
    group = width / n_cat
    bar = group * 0.8 / n_ser
    parts = _frame(chart, _W, _H)
    for frac in (0, 0.5, 1):
        y = _TOP + height * (1 - frac)
        parts.append(f"<line class='grid' x1='{_LEFT}' x2='{_W - _RIGHT}' y1='{y:.1f}' y2='{y:.1f}'/>"
                     f"<text class='tick' x='{_LEFT - 4}' y='{y + 3.5:.1f}' text-anchor='end'>"
                     f"{_e(chart.fmt(top * frac))}</text>")
    every = math.ceil(n_cat / 14)  # at most ~14 labels under the axis
    for k, label in enumerate(chart.categories):
        x0 = _LEFT + k * group + group * 0.1
        for s, series in enumerate(chart.series):
            value = series.values[k]
            if value is None:
                continue
            h = height * (value / top if top else 0)
            parts.append(_bar(chart, s, series, k, label, x0 + s * bar, _TOP + height - h, max(bar - 1, 1), h))
        if k % every == 0:
            parts.append(f"<text class='label' x='{_LEFT + (k + 0.5) * group:.1f}' y='{_H - _BOTTOM + 14}' "
                         f"text-anchor='middle'>{_e(_clip(label, 10))}</text>")
    parts.append(f"<text class='axis' x='{_LEFT + width / 2:.1f}' y='{_H - 6}' text-anchor='middle'>"
                 f"{_e(_x_label(chart))}</text></svg>")
    return "".join(parts)


def _horizontal(chart: Chart) -> str:
    top = _nice_max(chart)
    n_ser = max(len(chart.series), 1)
    row = 8 + 14 * n_ser
    label_w, right = 170, 54
    height = _TOP + row * max(len(chart.categories), 1) + 24
    width = _W - label_w - right
    parts = _frame(chart, _W, height)
    for frac in (0, 0.5, 1):
        x = label_w + width * frac
        parts.append(f"<line class='grid' x1='{x:.1f}' x2='{x:.1f}' y1='{_TOP}' y2='{height - 24}'/>"
                     f"<text class='tick' x='{x:.1f}' y='{height - 10}' text-anchor='middle'>"
                     f"{_e(chart.fmt(top * frac))}</text>")
    for k, label in enumerate(chart.categories):
        y0 = _TOP + k * row + 4
        parts.append(f"<text class='label' x='{label_w - 6}' y='{y0 + row / 2:.1f}' text-anchor='end'>"
                     f"<title>{_e(label)}</title>{_e(_clip(label, 27))}</text>")
        for s, series in enumerate(chart.series):
            value = series.values[k]
            y = y0 + s * 14
            if value is None:
                parts.append(f"<text class='tick' x='{label_w + 4}' y='{y + 10}'>–</text>")
                continue
            w = width * (value / top if top else 0)
            parts.append(_bar(chart, s, series, k, label, label_w, y, w, 12))
            parts.append(f"<text class='value' x='{label_w + w + 4:.1f}' y='{y + 10}'>{_e(chart.fmt(value))}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _frame(chart: Chart, width: int, height: float) -> list[str]:
    return [f"<svg class='plot' data-plot='{_e(chart.plot_id)}' viewBox='0 0 {width} {height:.0f}' role='img' "
            f"aria-label='{_e(chart.title)}' xmlns='http://www.w3.org/2000/svg'>"]


def _bar(chart: Chart, s: int, series: Series, k: int, label: str, x: float, y: float, w: float, h: float) -> str:
    value = series.values[k]
    tip = f"{series.name}: {label}: {chart.fmt(value)} ({series.tips[k]})" if len(chart.series) > 1 else \
        f"{label}: {chart.fmt(value)} ({series.tips[k]})"
    return (f"<rect class='bar' data-series='{s}' data-category='{_e(label)}' data-value='{value:.6g}' "
            f"x='{x:.1f}' y='{y:.1f}' width='{w:.1f}' height='{max(h, 0):.1f}' fill='{PALETTE[s % len(PALETTE)]}'>"
            f"<title>{_e(tip)}</title></rect>")


def _x_label(chart: Chart) -> str:
    return {"n_tool_calls": "tool calls", "turns": "turns", "visual_tokens": "visual tokens",
            "accuracy_by_tool_calls": "tool calls"}.get(chart.plot_id, "")


def _nice_max(chart: Chart) -> float:
    """The axis top: the largest value rounded up to a round number (a share: 100% unless all are small;
    a count: an even number, so that the middle tick is a whole number too)."""
    top = max((v for s in chart.series for v in s.values if v is not None), default=0.0)
    if chart.fmt is _pct:
        return 1.0 if top > 0.5 or top == 0 else _round_up(top)
    if chart.fmt is _plain:
        return _round_up(max(top, 1.0), (2, 4, 6, 8, 10))
    return _round_up(top) if top > 0 else 1.0


def _round_up(value: float, steps: tuple[float, ...] = (1, 2, 2.5, 5, 10)) -> float:
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in steps if m * power >= value - 1e-12)


# --- binning ---------------------------------------------------------------------------------------------
def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else 0


def _edges(top: int, bins: int = 8) -> list[int]:
    """``bins`` equal integer bins from 0 that cover ``top`` (the last edge is exclusive)."""
    step = max(1, int(_round_up((top + 1) / bins))) if top > 0 else 1
    count = max(1, math.ceil((top + 1) / step))
    return [k * step for k in range(count + 1)]


def _bin(value: int, edges: list[int]) -> int:
    return min(value // (edges[1] - edges[0]), len(edges) - 2)


def _count(name: str, counts: list[int], total: int) -> Series:
    return Series(name, [float(c) for c in counts], [f"{c} episode{'s' if c != 1 else ''}" for c in counts])


def _share(name: str, counts: list[int], total: int) -> Series:
    return Series(name, [c / total if total else 0.0 for c in counts], [f"{c} of {total} episodes" for c in counts])


# --- formatting ------------------------------------------------------------------------------------------
def _plain(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _decimal(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if value else "0"


def _pct(value: float) -> str:
    return f"{value:.0%}"


def _compact(value: int) -> str:
    return f"{value / 1000:.3g}k" if value >= 1000 else str(value)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


__all__ = ["MAX_INT_BIN", "PALETTE", "Chart", "Series", "run_charts", "svg"]
