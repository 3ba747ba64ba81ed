"""``pyvision view RUN [RUN ...]``: one self-contained HTML page of a run's trajectories, or of several
runs side by side (checkpoints of one training run, two models).

The page must open anywhere, offline, years later, so it carries everything: frames as ``data:`` URLs,
charts as inline SVG, styles and the little script inline, no fonts, no libraries. Model output is
hostile text (it may contain ``<script>``), so every string from a record goes through
:func:`html.escape` and nothing from a record is ever put into the page unescaped.

What a researcher reads first comes first: the summary table (human labels, the collapse signs marked
and, across runs, highlighted where they fall), then the distributions (:mod:`pyvision_agent.plots`),
then the episodes sorted by task and sample, the first few open. Large runs stay usable: each distinct
frame is stored once (GRPO samples of one task share their input image) and a frame is only attached to
its ``<img>`` when its episode is opened, so the browser does not decode thousands of images at load.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import html
import io
import json
import keyword
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plots import PALETTE, Chart, run_charts, svg
from .summary import METRICS, data_source, format_value, summarize

__all__ = ["Run", "highlight_python", "load_run", "render", "write_html"]

IMAGE_PLACEHOLDER = "<image>"
OPEN_AT_LOAD = 3
"""Episodes shown open when the page loads (the first ones in task order)."""
TOOL_CALLS_FALL, TURNS_FALL, NO_TOOL_RISE = 0.2, 0.2, 0.1
"""Across runs, a collapse sign is highlighted when tool calls or turns per episode fall by this share of
the first run's value, or the share of answers without tools rises by this many points."""
_MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


@dataclass
class Run:
    """What a run directory holds, as the viewer reads it."""

    run_dir: Path
    records: list[dict[str, Any]]
    """The well-formed trajectory records, in file order."""
    malformed: int
    """Lines of ``trajectories.jsonl`` that were not a JSON object with a list of steps (skipped)."""
    summary: dict[str, Any] | None
    """``summary.json`` when present and readable (the tables are computed from the records; this is
    only compared with them, to say when the two disagree)."""
    summary_note: str | None = None
    """Why ``summary.json`` was not used although it exists, if so."""


def load_run(run_dir: str | Path) -> Run:
    """Read ``RUN_DIR/trajectories.jsonl`` (skipping and counting malformed lines) and ``summary.json``.

    A crashed run can leave a truncated last line; one bad line must not hide the rest, so it is
    counted and reported on the page instead of raised.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist: pass the --out directory "
                                f"of a `pyvision eval` run")
    path = run_dir / "trajectories.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: {str(run_dir)!r} is not a run directory "
                                f"(`pyvision eval --out DIR` writes DIR/trajectories.jsonl)")
    records: list[dict[str, Any]] = []
    malformed = 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                malformed += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("steps", []), list):
                records.append(record)
            else:
                malformed += 1
    summary, note = None, None
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            note = f"summary.json is unreadable ({exc}); the tables are computed from the records"
        else:
            if not isinstance(summary, dict):
                summary, note = None, "summary.json is not a JSON object; the tables are computed from the records"
            elif summary.get("episodes") not in (None, len(records)):
                note = (f"summary.json counts {summary['episodes']} episodes but trajectories.jsonl holds "
                        f"{len(records)}: the tables are computed from the records")
    return Run(run_dir, records, malformed, summary, note)


def write_html(run_dirs: str | Path | Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write the page of one run (default ``RUN_DIR/index.html``) or the comparison page of several
    (default ``compare.html`` in the current directory) and return its path."""
    dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    if not dirs:
        raise ValueError("write_html needs at least one run directory")
    runs = [load_run(d) for d in dirs]
    if out is not None:
        out = Path(out)
    else:
        out = runs[0].run_dir / "index.html" if len(runs) == 1 else Path("compare.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(runs), encoding="utf-8")
    return out


# --- the page --------------------------------------------------------------------------------------------
def render(runs: Run | Sequence[Run]) -> str:
    """The whole HTML page of one run, or of several compared."""
    runs = [runs] if isinstance(runs, Run) else list(runs)
    names = _names([r.run_dir for r in runs])
    compare = len(runs) > 1
    frames = _Frames()
    ordered = sorted(((k, record) for k, run in enumerate(runs) for record in run.records),
                     key=lambda item: (_natural(item[1].get("task_id") or item[1].get("episode_id")), item[0],
                                       _int(item[1].get("sample"))))
    episodes = "\n".join(_episode(record, k, runs[k].run_dir, names[k] if compare else None, frames,
                                  open_=position < OPEN_AT_LOAD) for position, (k, record) in enumerate(ordered))
    notes = []
    for name, run in zip(names, runs):
        prefix = f"{name}: " if compare else ""
        if run.malformed:
            notes.append(f"{prefix}{run.malformed} malformed line{'s' if run.malformed != 1 else ''} skipped "
                         f"in trajectories.jsonl")
        if run.summary_note:
            notes.append(prefix + run.summary_note)
    if frames.missing:
        notes.append(f"{frames.missing} missing frame{'s' if frames.missing != 1 else ''}")
    n = len(ordered)
    title = f"PyVision runs compared: {', '.join(names)}" if compare else f"PyVision run: {runs[0].run_dir.name}"
    body = [f"<header><h1>{_e(title)}</h1>"]
    if compare:
        body.append("<ul id='runs'>" + "".join(
            f"<li>{_run_badge(k, name)} <span class='path'>{_e(run.run_dir.resolve())}</span> "
            f"<span class='muted'>{len(run.records)} episodes</span></li>"
            for k, (name, run) in enumerate(zip(names, runs))) + "</ul>")
    else:
        body.append(f"<p class='path'>{_e(runs[0].run_dir.resolve())}</p>")
    body.append(f"<p id='n-episodes'>{n} episode{'s' if n != 1 else ''}</p></header>")
    body.extend(f"<p class='note warn'>{_e(note)}</p>" for note in notes)
    body.append("<section id='summary-section'><h2>Summary</h2>"
                + _summary_table([(name, run.records) for name, run in zip(names, runs)]) + "</section>")
    if n:
        charts = run_charts([(name, run.records) for name, run in zip(names, runs)])
        body.append(_charts_section(charts, names if compare else []))
        body.append(_filters(names if compare else [], sorted({data_source(r) for _, r in ordered}), n))
        body.append(f"<main id='episodes'>{episodes}</main>")
    else:
        body.append("<p id='empty' class='note'>No episodes in this run.</p>")
    body.append("<div id='lightbox' hidden><img alt='full resolution'><p class='muted'>click or Esc to close</p></div>")
    frame_data = json.dumps(frames.urls).replace("<", "\\u003c")
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body)
            + f"<script type='application/json' id='frames'>{frame_data}</script><script>{_JS}</script>"
            "</body></html>\n")


def _charts_section(charts: list[Chart], run_names: list[str]) -> str:
    """The charts in a grid, the collapse signs marked; with several runs, their colours as a legend."""
    head = "<h2>Distributions</h2>"
    if run_names:
        head = ("<h2>Distributions <span class='muted'>(share of each run's episodes)</span></h2><p class='legend'>"
                + " ".join(_run_badge(k, name) for k, name in enumerate(run_names)) + "</p>")
    figures = []
    for chart in charts:
        mark = (" <span class='sign-mark' title='a sign of interaction collapse'>collapse sign</span>"
                if chart.collapse else "")
        note = f" <span class='muted'>({_e(chart.note)})</span>" if chart.note else ""
        figures.append(f"<figure class='chart{' sign' if chart.collapse else ''}' id='chart-{_e(chart.plot_id)}'>"
                       f"<figcaption>{_e(chart.title)}{mark}{note}</figcaption>{svg(chart)}</figure>")
    return f"<section id='charts-section'>{head}<div id='charts'>{''.join(figures)}</div></section>"


def _names(paths: list[Path]) -> list[str]:
    """Short distinct names for run directories: the last path component, with parents added until the
    names differ (``step100/eval`` and ``step200/eval``)."""
    parts = [p.resolve().parts for p in paths]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return names
        depth += 1


def _filters(run_names: list[str], sources: list[str], n: int) -> str:
    runs = ("<label>Run <select id='f-run'><option value=''>all</option>"
            + "".join(f"<option value='{k}'>{_e(name)}</option>" for k, name in enumerate(run_names))
            + "</select></label> ") if run_names else ""
    options = "".join(f"<option value='{_e(s)}'>{_e(s)}</option>" for s in sources)
    return ("<nav id='filters'>" + runs
            + f"<label>Data source <select id='f-source'><option value=''>all</option>{options}</select></label> "
            "<label>Result <select id='f-correct'><option value=''>all</option><option value='right'>right</option>"
            "<option value='wrong'>wrong</option><option value='none'>not judged</option></select></label> "
            f"<span id='shown'>{n} of {n} episodes shown</span> "
            "<button id='expand' type='button'>expand shown</button> "
            "<button id='collapse' type='button'>collapse all</button> "
            "<span class='keys muted'><kbd>j</kbd>/<kbd>k</kbd> next/previous episode, <kbd>o</kbd> open/close, "
            "click a frame for full size</span></nav>")


# --- the summary table -----------------------------------------------------------------------------------
def _summary_table(runs: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """Rows: all episodes, then each data source; with several runs, one row per run in each group and
    the collapse signs compared with the first run."""
    compare = len(runs) > 1
    summaries = [summarize(records) for _, records in runs]
    sources = sorted({s for summary in summaries for s in summary["per_data_source"]})
    head = "".join(f"<th class='{'sign' if m.collapse else ''}' title='{_e(m.help)}'>{_e(m.label)}"
                   + ("<span class='sign-dot' title='a sign of interaction collapse'>●</span>" if m.collapse else "")
                   + "</th>" for m in METRICS)
    rows = []
    for group in ["", *sources]:
        blocks = [s if not group else s["per_data_source"].get(group) for s in summaries]
        label = "All episodes" if not group else group
        present = [k for k, block in enumerate(blocks) if block is not None]
        for k in present:
            block = blocks[k]
            first = blocks[0] if compare and k > 0 else None  # collapse signs are measured against the first run
            if compare:
                row_head = (f"<span class='group'>{_e(label)}</span> " if k == present[0] else "") + _run_badge(
                    k, runs[k][0])
            else:
                row_head = _e(label)
            cells = "".join(_cell(m, block, first, runs[0][0]) for m in METRICS)
            reasons = ", ".join(f"{reason} {count}" for reason, count in block["end_reasons"].items())
            group_class = " class='group-start'" if k == present[0] and compare else ""
            rows.append(f"<tr{group_class} data-group='{_e(label)}' data-run='{k}'><th>{row_head}</th>{cells}"
                        f"<td class='reasons'>{_e(reasons)}</td></tr>")
    return (f"<table id='summary'><thead><tr><th></th>{head}<th>End reasons</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _cell(metric: Any, block: dict[str, Any], first: dict[str, Any] | None, first_name: str) -> str:
    value = block.get(metric.key)
    text = _e(format_value(metric, value))
    sign = _collapse(metric.key, value, None if first is None else first.get(metric.key))
    if sign is None:
        return f"<td data-key='{metric.key}'>{text}</td>"
    return (f"<td data-key='{metric.key}' class='collapse' title='collapse sign: {_e(sign)} than {_e(first_name)}'>"
            f"{text} <span class='delta'>{_e(sign)}</span></td>")


def _collapse(key: str, value: Any, first: Any) -> str | None:
    """How a collapse sign moved against the first run (``-35% tool calls``), when it moved that far."""
    if not isinstance(value, (int, float)) or not isinstance(first, (int, float)):
        return None
    if key in ("tool_calls_per_episode", "turns_per_episode") and first > 0:
        fall = 1 - value / first
        if fall >= (TOOL_CALLS_FALL if key == "tool_calls_per_episode" else TURNS_FALL):
            return f"{fall:.0%} fewer"
    if key == "answered_without_tools" and value - first >= NO_TOOL_RISE:
        return f"+{(value - first) * 100:.0f} points"
    return None


def _run_badge(k: int, name: str) -> str:
    return f"<span class='run' style='background:{PALETTE[k % len(PALETTE)]}'>{_e(name)}</span>"


# --- episodes --------------------------------------------------------------------------------------------
def _episode(record: dict[str, Any], run: int, run_dir: Path, run_name: str | None, frames: _Frames,
             open_: bool) -> str:
    correct = record.get("correct")
    verdict = "right" if correct is True else "wrong" if correct is False else "none"
    label = {"right": "right", "wrong": "wrong", "none": "not judged"}[verdict]
    title = record.get("episode_id") or record.get("task_id") or "episode"
    facts = [("reward", _fmt(record.get("reward"))), ("end", record.get("end_reason")),
             ("turns", record.get("turns")), ("tool calls", record.get("n_tool_calls"))]
    summary = (f"<summary><span class='badge {verdict}'>{label}</span> "
               + (_run_badge(run, run_name) + " " if run_name is not None else "")
               + f"<b>{_e(title)}</b> <span class='src'>{_e(data_source(record))}</span>"
               + "".join(f" <span class='fact'>{_e(k)} <b>{_e(_fmt(v))}</b></span>" for k, v in facts)
               + (" <span class='badge wrong'>error</span>" if record.get("error") else "") + "</summary>")
    details = [("question", record.get("question")), ("reference", record.get("reference")),
               ("prediction", record.get("prediction")), ("answer type", record.get("answer_type")),
               ("judge score", record.get("judge_score")),
               ("reward components", _inline(record.get("reward_components"))),
               ("images", record.get("n_images")), ("visual tokens", record.get("visual_tokens")),
               ("timings", _inline(record.get("timings"), unit=" s")), ("policy", _inline(record.get("policy"))),
               ("tokens", _tokens(record.get("tokens"))), ("env", record.get("env_id")),
               ("task", record.get("task_id")), ("sample", record.get("sample"))]
    meta = "".join(f"<dt>{_e(k)}</dt><dd>{_e(_fmt(v))}</dd>" for k, v in details if v not in (None, ""))
    parts = [f"<dl class='meta'>{meta}</dl>"]
    if record.get("error"):
        parts.append(f"<pre class='traceback'>{_e(record['error'])}</pre>")
    if record.get("system_prompt"):
        parts.append(f"<details class='system'><summary>system prompt</summary>"
                     f"<pre>{_e(record['system_prompt'])}</pre></details>")
    steps = record.get("steps") or []
    shown = _Shown(run_dir, "frame" if "video" in str(record.get("env_id", "")).lower() else "image")
    parts.extend(_step(step, frames, shown) for step in steps if isinstance(step, dict))
    if not any(isinstance(s, dict) and s.get("role") == "model" for s in steps):
        parts.append("<p class='note'>No model turn was recorded.</p>")
    return (f"<details class='episode' data-run='{run}' data-source='{_e(data_source(record))}' "
            f"data-correct='{verdict}'{' open' if open_ else ''}>{summary}<div class='body'>{''.join(parts)}</div>"
            "</details>")


@dataclass
class _Shown:
    """The frames of one episode as they are shown: numbered in order (the ``k`` of ``image_clue_k``)."""

    run_dir: Path
    kind: str
    count: int = 0


def _step(step: dict[str, Any], frames: _Frames, shown: _Shown) -> str:
    if step.get("role") == "model":
        return _model_step(step)
    error, timed_out = step.get("error"), step.get("timed_out")
    marks = []
    if error:
        marks.append("<span class='badge wrong'>error</span>")
    if timed_out:
        marks.append("<span class='badge wrong'>timed out</span>")
    if step.get("exec_time_s") is not None:
        marks.append(f"<span class='muted'>exec {_e(_fmt(step['exec_time_s']))} s</span>")
    text = _text(step.get("text"))
    images = step.get("images") if isinstance(step.get("images"), list) else []
    pieces = text.split(IMAGE_PLACEHOLDER)
    out = []
    for k, piece in enumerate(pieces):
        out.append(_marked(piece, error))
        if k < len(pieces) - 1:
            out.append(frames.img(shown, images[k]) if k < len(images) else
                       frames.missing_marker("no image was recorded for this placeholder"))
    out.extend(frames.img(shown, p) for p in images[len(pieces) - 1:])  # images without a placeholder: still shown
    if error and _text(error) not in text:  # cut out of the observation (output truncation): show it whole
        out.append(f"\n<span class='tb'>{_e(error)}</span>")
    cls = "step obs error" if error or timed_out else "step obs"
    return f"<div class='{cls}'><div class='who'>observation {' '.join(marks)}</div><pre>{''.join(out)}</pre></div>"


def _marked(text: str, error: Any) -> str:
    """``text`` escaped, with the traceback (when it appears in it) wrapped so that it stands out."""
    error = _text(error) if error else ""
    if not error or error not in text:
        return _e(text)
    before, after = text.split(error, 1)
    return f"{_e(before)}<span class='tb'>{_e(error)}</span>{_e(after)}"


_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[ \t]*\n(.*?)(```|\Z)", re.DOTALL)


def _model_step(step: dict[str, Any]) -> str:
    """A model turn: prose escaped, fenced code highlighted in place; the parsed code shown on its own
    only when the text holds no fence (another dialect, e.g. tool-call JSON)."""
    text = _text(step.get("text"))
    out, last, fenced = [], 0, False
    for m in _FENCE.finditer(text):
        fenced = True
        out.append(_e(text[last:m.start(2)]))
        code = m.group(2)
        if m.group(3) and code.endswith("\n"):  # the block ends its own line: that newline would show as a gap
            code = code[:-1]
        out.append(f"<code class='py'>{highlight_python(code)}</code>")
        last = m.start(3)
    out.append(_e(text[last:]))
    marks = []
    if step.get("answer") is not None:
        marks.append(f"<span class='badge answer'>answer: {_e(step['answer'])}</span>")
    if step.get("finish_reason") not in (None, "stop"):
        marks.append(f"<span class='badge wrong'>finish: {_e(step['finish_reason'])}</span>")
    code = step.get("code")
    extra = ""
    if code and not fenced:
        extra = (f"<div class='who'>code (as parsed)</div>"
                 f"<pre><code class='py'>{highlight_python(_text(code))}</code></pre>")
    return (f"<div class='step model'><div class='who'>model {' '.join(marks)}</div>"
            f"<pre>{''.join(out)}</pre>{extra}</div>")


# --- Python highlighting ---------------------------------------------------------------------------------
_BUILTINS = frozenset(name for name in dir(builtins) if not name.startswith("_"))
_KEYWORDS = frozenset(keyword.kwlist)  # not the soft ones: `type`, `match` are mostly plain names
_PY_TOKEN = re.compile(r"""
    (?P<c>\#[^\n]*)
  | (?P<s>(?:[rRbBuUfF]{1,2})?(?:'''[\s\S]*?(?:'''|\Z)|\"\"\"[\s\S]*?(?:\"\"\"|\Z)
                               |'(?:\\.|[^'\\\n])*(?:'|$)|"(?:\\.|[^"\\\n])*(?:"|$)))
  | (?P<n>(?<![\w.])(?:0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+
                       |(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d+)?[jJ]?)(?!\w))
  | (?P<w>[A-Za-z_][A-Za-z0-9_]*)
""", re.VERBOSE | re.MULTILINE)


def highlight_python(code: str) -> str:
    """``code`` as escaped HTML with ``<span class=k|b|s|c|n>`` around keywords, builtins, strings,
    comments and numbers. A tokenizer by regex, not :mod:`tokenize`: model code is often broken
    (unclosed strings, generation cut mid-line) and must still be shown, whole and in order."""
    out, last = [], 0
    for m in _PY_TOKEN.finditer(code):
        kind, token = m.lastgroup, m.group()
        if kind == "w":
            kind = "k" if token in _KEYWORDS else "b" if token in _BUILTINS else None
        if kind is None:
            continue
        out.append(_e(code[last:m.start()]))
        out.append(f"<span class='{kind}'>{_e(token)}</span>")
        last = m.end()
    out.append(_e(code[last:]))
    return "".join(out)


# --- frames ----------------------------------------------------------------------------------------------
class _Frames:
    """The frames of a page: each distinct file content stored once as a data URL, referenced by key."""

    def __init__(self) -> None:
        self.urls: dict[str, str] = {}
        self._seen: dict[Path, tuple[str, str]] = {}
        self.missing = 0

    def img(self, shown: _Shown, rel: Any) -> str:
        """The frame at ``rel`` (relative to the episode's run directory) with its caption (its index in
        the episode and its size), or a missing-frame marker."""
        rel = _text(rel)
        root = shown.run_dir.resolve()
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            return self.missing_marker(f"{rel} is outside the run directory")
        if path not in self._seen:
            try:
                data = path.read_bytes()
            except OSError:
                return self.missing_marker(rel)
            key = hashlib.sha1(data).hexdigest()[:16]
            mime = _MIME.get(path.suffix.lower(), "image/jpeg")
            self.urls.setdefault(key, f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}")
            self._seen[path] = (key, _size(data))
        key, size = self._seen[path]
        index = shown.count
        shown.count += 1
        caption = f"{shown.kind} {index}" + (f" · {size}" if size else "")
        return (f"<span class='frame'><img class='frame' data-frame='{key}' alt='{_e(rel)}' title='{_e(rel)}'>"
                f"<span class='caption'>{_e(caption)}</span></span>")

    def missing_marker(self, what: str) -> str:
        """The visible stand-in for a frame that cannot be shown (counted for the note on top)."""
        self.missing += 1
        return f"<span class='missing'>missing frame: {_e(what)}</span>"


def _size(data: bytes) -> str:
    """``WxH`` from the image header (nothing is decoded), or ``""`` when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return f"{image.width}×{image.height}"
    except (UnidentifiedImageError, OSError, ValueError):
        return ""


# --- small formatting helpers ----------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(_text(value), quote=True)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _natural(value: Any) -> tuple:
    """A sort key that puts ``task-2`` before ``task-10``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", _text(value)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return _inline(value)
    return "–" if value is None else _text(value)


def _inline(mapping: Any, unit: str = "") -> str | None:
    if not isinstance(mapping, dict):
        return None if mapping is None else _text(mapping)
    return ", ".join(f"{k} {_fmt(v)}{unit if isinstance(v, (int, float)) else ''}" for k, v in mapping.items())


def _tokens(tokens: Any) -> str | None:
    if not isinstance(tokens, dict):
        return None
    mask = tokens.get("response_mask") or []
    return (f"{len(tokens.get('prompt_ids') or [])} prompt, {len(tokens.get('response_ids') or [])} response "
            f"({sum(1 for m in mask if m)} generated)")


_CSS = """
:root { --fg: #1f2328; --muted: #656d76; --line: #d0d7de; --bg: #f6f8fa; --red: #cf222e; --green: #1a7f37;
        --blue: #0969da; --code: #ffffff; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 16px 20px 48px; max-width: 1400px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 2px; overflow-wrap: anywhere; } h2 { font-size: 16px; margin: 20px 0 8px; }
.path, .muted { color: var(--muted); font-weight: normal; } .path { margin: 0; font-family: monospace;
  overflow-wrap: anywhere; }
#n-episodes { margin: 4px 0 0; font-weight: 600; }
#runs { list-style: none; padding: 0; margin: 6px 0; } #runs li { margin: 2px 0; }
.run { display: inline-block; color: #fff; border-radius: 4px; padding: 0 6px; font-size: 12px; font-weight: 600;
       font-family: monospace; }
.note { padding: 6px 10px; border-radius: 6px; background: var(--bg); border: 1px solid var(--line); }
.note.warn { background: #fff8c5; border-color: #d4a72c; }
#summary-section { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { border: 1px solid var(--line); padding: 4px 7px; text-align: right; vertical-align: top; }
thead th { background: var(--bg); text-align: center; font-weight: 600; vertical-align: bottom; }
tbody th { background: #fbfcfd; text-align: left; font-weight: 600; min-width: 12em; }
tbody th .group { display: block; }
.legend { margin: 0 0 8px; }
td.reasons { text-align: left; min-width: 12em; }
tr.group-start > * { border-top: 2px solid #8c959f; }
th.sign { background: #fff1e5; } .sign-dot { color: #d1570b; font-size: 9px; vertical-align: super; margin-left: 2px; }
td.collapse { background: #ffebe9; color: var(--red); font-weight: 600; }
td .delta { display: block; font-size: 11px; font-weight: normal; }
#charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 12px; }
figure.chart { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 8px 10px; }
figure.chart.sign { border-color: #f0b37e; }
figure.chart figcaption { font-weight: 600; font-size: 13px; margin-bottom: 4px; }
.sign-mark { font-size: 11px; color: #d1570b; border: 1px solid #f0b37e; border-radius: 8px; padding: 0 5px;
             font-weight: 600; }
svg.plot { width: 100%; height: auto; display: block; font: 10.5px system-ui, sans-serif; }
svg.plot .grid { stroke: #e5e8eb; } svg.plot .tick, svg.plot .value { fill: var(--muted); }
svg.plot .label { fill: var(--fg); } svg.plot .axis { fill: var(--muted); font-size: 10px; }
svg.plot rect.bar:hover { opacity: .75; }
nav { position: sticky; top: 0; z-index: 2; background: #fff; padding: 10px 0; margin: 16px 0 8px;
      border-bottom: 1px solid var(--line); display: flex; gap: 8px 14px; align-items: center; flex-wrap: wrap; }
#shown { color: var(--muted); } button, select { font: inherit; }
kbd { font: 11px monospace; border: 1px solid var(--line); border-bottom-width: 2px; border-radius: 3px;
      padding: 0 3px; }
details.episode { border: 1px solid var(--line); border-radius: 8px; margin: 8px 0; background: #fff;
                  scroll-margin-top: 64px; }
details.episode.current { outline: 3px solid var(--blue); outline-offset: 1px; }
details.episode > summary { padding: 8px 12px; cursor: pointer; background: var(--bg); border-radius: 8px; }
details.episode[open] > summary { border-bottom: 1px solid var(--line); border-radius: 8px 8px 0 0; }
.fact { color: var(--muted); margin-left: 10px; } .fact b { color: var(--fg); }
.src { font-family: monospace; color: var(--blue); margin-left: 6px; }
.badge { display: inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px; font-weight: 600;
         border: 1px solid; }
.badge.right { color: var(--green); border-color: var(--green); background: #dafbe1; }
.badge.wrong { color: var(--red); border-color: var(--red); background: #ffebe9; }
.badge.none { color: var(--muted); border-color: var(--line); background: #fff; }
.badge.answer { color: var(--blue); border-color: var(--blue); background: #ddf4ff; }
.body { padding: 8px 12px 12px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 4px 0 10px; }
dl.meta dt { color: var(--muted); } dl.meta dd { margin: 0; white-space: pre-wrap; word-break: break-word; }
details.system > summary { cursor: pointer; color: var(--muted); margin: 6px 0; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font: 12.5px/1.45 ui-monospace, "SFMono-Regular",
      Menlo, Consolas, "DejaVu Sans Mono", monospace; }
.step { border-left: 4px solid var(--line); margin: 10px 0; padding: 6px 10px; background: var(--bg);
        border-radius: 0 6px 6px 0; }
.step.model { border-left-color: var(--blue); background: #f5faff; }
.step.error { border-left-color: var(--red); background: #fff5f5; }
.who { font-size: 12px; font-weight: 600; color: var(--muted); margin-bottom: 4px; text-transform: uppercase;
       letter-spacing: .03em; }
.who .badge, .who .muted { text-transform: none; letter-spacing: 0; }
code.py { display: block; background: var(--code); border: 1px solid var(--line); border-radius: 6px;
          padding: 6px 8px; margin: 2px 0; font: inherit; }
.k { color: #cf222e; font-weight: 600; } .b { color: #8250df; } .s { color: #0a3069; } .c { color: #6e7781;
  font-style: italic; } .n { color: #0550ae; }
.tb, pre.traceback { color: var(--red); } pre.traceback { background: #fff5f5; border: 1px solid #ffcecb;
  padding: 6px 8px; border-radius: 6px; margin: 6px 0; }
span.frame { display: inline-block; vertical-align: top; margin: 6px 10px 6px 0; max-width: 100%; }
span.frame .caption { display: block; font: 11.5px system-ui, sans-serif; color: var(--muted); }
img.frame { display: block; width: auto; max-width: 100%; min-height: 160px; max-height: 420px;
            border: 1px solid var(--line); border-radius: 4px; background: #fff; cursor: zoom-in; }
#lightbox { position: fixed; inset: 0; z-index: 10; background: rgba(20, 22, 26, .88); overflow: auto;
            padding: 24px; cursor: zoom-out; text-align: center; }
#lightbox img { max-width: none; background: #fff; }
#lightbox p { color: #d0d7de; }
.missing { display: inline-block; margin: 6px 0; padding: 10px 14px; border: 2px dashed var(--red);
           color: var(--red); background: #fff; font-weight: 600; border-radius: 4px; }
"""

_JS = """
(() => {
  const frames = JSON.parse(document.getElementById('frames').textContent);
  const episodes = [...document.querySelectorAll('details.episode')];
  // Frames are attached when their episode opens: a large run would otherwise decode every image at load.
  const attach = ep => ep.querySelectorAll('img[data-frame]:not([src])').forEach(img => {
    img.src = frames[img.dataset.frame];
  });
  episodes.forEach(ep => {
    ep.addEventListener('toggle', () => { if (ep.open) attach(ep); });
    if (ep.open) attach(ep);
  });
  const lightbox = document.getElementById('lightbox'), big = lightbox.querySelector('img');
  const closeBox = () => { lightbox.hidden = true; big.removeAttribute('src'); };
  document.addEventListener('click', e => {
    if (e.target.matches && e.target.matches('img.frame')) {
      big.src = e.target.src;
      lightbox.querySelector('p').textContent =
        `${e.target.naturalWidth}×${e.target.naturalHeight}, full resolution: click or Esc to close`;
      lightbox.hidden = false;
    }
  });
  lightbox.addEventListener('click', closeBox);
  const source = document.getElementById('f-source'), correct = document.getElementById('f-correct');
  const run = document.getElementById('f-run');
  let current = -1;
  const visible = () => episodes.filter(ep => !ep.hidden);
  const focus = ep => {
    episodes.forEach(e => e.classList.toggle('current', e === ep));
    current = episodes.indexOf(ep);
    ep.scrollIntoView({block: 'start'});
  };
  document.addEventListener('keydown', e => {
    if (e.key === 'Escape') { closeBox(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey || (e.target.closest && e.target.closest('select, input, textarea'))) return;
    // the next / previous shown episode in page order, from the current one even if a filter hid it
    const shown = visible(), after = shown.filter(ep => episodes.indexOf(ep) > current);
    const before = shown.filter(ep => episodes.indexOf(ep) < current);
    if (e.key === 'j' && shown.length) focus(after.length ? after[0] : shown[shown.length - 1]);
    else if (e.key === 'k' && shown.length) focus(before.length ? before[before.length - 1] : shown[0]);
    else if (e.key === 'o' && current >= 0) {
      const ep = episodes[current];
      ep.open = !ep.open;
      if (ep.open) attach(ep);
    } else return;
    e.preventDefault();
  });
  if (!source) return;
  const apply = () => {
    let count = 0;
    for (const ep of episodes) {
      const ok = (!source.value || ep.dataset.source === source.value) &&
                 (!correct.value || ep.dataset.correct === correct.value) &&
                 (!run || !run.value || ep.dataset.run === run.value);
      ep.hidden = !ok;
      count += ok;
    }
    document.getElementById('shown').textContent = `${count} of ${episodes.length} episodes shown`;
  };
  [source, correct, run].forEach(s => s && s.addEventListener('change', apply));
  document.getElementById('expand').addEventListener('click', () => episodes.forEach(ep => {
    if (!ep.hidden) { ep.open = true; attach(ep); }
  }));
  document.getElementById('collapse').addEventListener('click', () => episodes.forEach(ep => { ep.open = false; }));
  apply();
})();
"""
