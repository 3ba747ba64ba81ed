"""``pyvision view RUN_DIR``: one self-contained HTML page of a run's trajectories.

The page must open anywhere, offline, years later, so it carries everything: frames as ``data:`` URLs,
styles and the little script inline, no fonts, no libraries. Model output is hostile text (it may
contain ``<script>``), so every string from a record goes through :func:`html.escape` and nothing
from a record is ever put into the page unescaped.

Large runs stay usable: episodes are collapsed ``<details>``, each distinct frame is stored once
(GRPO samples of one task share their input image) and a frame is only attached to its ``<img>``
when its episode is opened, so the browser does not decode thousands of images at load.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import html
import json
import keyword
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Run", "highlight_python", "load_run", "render", "summarize", "write_html"]

IMAGE_PLACEHOLDER = "<image>"
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
    """``summary.json`` when present and readable."""
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
            note = f"summary.json is unreadable ({exc}); the table is computed from the records"
        else:
            if not isinstance(summary, dict):
                summary, note = None, "summary.json is not a JSON object; the table is computed from the records"
    return Run(run_dir, records, malformed, summary, note)


def write_html(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's page (default ``RUN_DIR/index.html``) and return its path."""
    run = load_run(run_dir)
    out = Path(out) if out is not None else run.run_dir / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(run), encoding="utf-8")
    return out


# --- the page --------------------------------------------------------------------------------------------
def render(run: Run) -> str:
    """The whole HTML page of ``run``."""
    frames = _Frames(run.run_dir)
    episodes = "\n".join(_episode(record, k, frames) for k, record in enumerate(run.records))
    sources = sorted({_source(r) for r in run.records})
    notes = []
    if run.malformed:
        notes.append(f"{run.malformed} malformed line{'s' if run.malformed != 1 else ''} skipped "
                     f"in trajectories.jsonl")
    if run.summary_note:
        notes.append(run.summary_note)
    if frames.missing:
        notes.append(f"{frames.missing} missing frame{'s' if frames.missing != 1 else ''}")
    summary = run.summary if run.summary is not None else summarize(run.records)
    n = len(run.records)
    body = [
        f"<header><h1>PyVision run</h1><p class='path'>{_e(run.run_dir.resolve())}</p>"
        f"<p id='n-episodes'>{n} episode{'s' if n != 1 else ''}</p></header>",
        *(f"<p class='note warn'>{_e(note)}</p>" for note in notes),
        "<section><h2>Summary <span class='muted'>(" + ("summary.json" if run.summary is not None else
                                                       "computed from the records") + ")</span></h2>",
        _summary_table(summary), "</section>",
    ]
    if n:
        options = "".join(f"<option value='{_e(s)}'>{_e(s)}</option>" for s in sources)
        body.append(
            "<nav id='filters'><label>Data source <select id='f-source'><option value=''>all</option>"
            f"{options}</select></label> <label>Result <select id='f-correct'><option value=''>all</option>"
            "<option value='right'>right</option><option value='wrong'>wrong</option>"
            "<option value='none'>no reference</option></select></label> "
            f"<span id='shown'>{n} of {n} episodes shown</span> "
            "<button id='expand' type='button'>expand shown</button> "
            "<button id='collapse' type='button'>collapse all</button></nav>")
        body.append(f"<main id='episodes'>{episodes}</main>")
    else:
        body.append("<p id='empty' class='note'>No episodes in this run.</p>")
    frame_data = json.dumps(frames.urls).replace("<", "\\u003c")
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>PyVision run: {_e(run.run_dir.name)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body)
            + f"<script type='application/json' id='frames'>{frame_data}</script><script>{_JS}</script>"
            "</body></html>\n")


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The aggregate the page shows when there is no ``summary.json``: overall and per data source."""

    def block(rs: list[dict[str, Any]]) -> dict[str, Any]:
        judged = [r["correct"] for r in rs if isinstance(r.get("correct"), bool)]
        return {"episodes": len(rs),
                "accuracy": sum(judged) / len(judged) if judged else None,
                "mean_reward": _mean(r.get("reward") for r in rs),
                "mean_turns": _mean(r.get("turns") for r in rs),
                "mean_tool_calls": _mean(r.get("n_tool_calls") for r in rs),
                "mean_visual_tokens": _mean(r.get("visual_tokens") for r in rs),
                "end_reasons": dict(Counter(str(r.get("end_reason")) for r in rs))}

    by_source: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_source.setdefault(_source(r), []).append(r)
    return {**block(records), "per_data_source": {s: block(rs) for s, rs in sorted(by_source.items())}}


def _summary_table(summary: dict[str, Any]) -> str:
    """Any summary shape as one table: top-level values make the "all" row; a mapping of mappings (e.g.
    per data source) adds one row per key. The shape of summary.json is the rollout's business, so the
    viewer shows whatever is there rather than a fixed list of fields."""
    rows: list[tuple[str, dict[str, Any]]] = [("all", {k: v for k, v in summary.items() if not _is_table(v)})]
    for name, value in summary.items():
        if _is_table(value):
            rows.extend((f"{name}: {key}", sub) for key, sub in value.items())
    columns: list[str] = []
    for _, row in rows:
        columns.extend(k for k in row if k not in columns)
    head = "".join(f"<th>{_e(c)}</th>" for c in ["", *columns])
    lines = "".join("<tr><th>" + _e(label) + "</th>" + "".join(f"<td>{_e(_fmt(row.get(c)))}</td>"
                                                                   for c in columns) + "</tr>"
                    for label, row in rows)
    return f"<div class='scroll'><table id='summary'><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table></div>"


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, dict) for v in value.values())


def _episode(record: dict[str, Any], index: int, frames: _Frames) -> str:
    correct = record.get("correct")
    verdict = "right" if correct is True else "wrong" if correct is False else "none"
    label = {"right": "right", "wrong": "wrong", "none": "no reference"}[verdict]
    title = record.get("episode_id") or record.get("task_id") or f"episode {index}"
    facts = [("reward", _fmt(record.get("reward"))), ("end", record.get("end_reason")),
             ("turns", record.get("turns")), ("tool calls", record.get("n_tool_calls"))]
    summary = (f"<summary><span class='badge {verdict}'>{label}</span> <b>{_e(title)}</b> "
               f"<span class='src'>{_e(_source(record))}</span>"
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
    parts.extend(_step(step, frames) for step in steps if isinstance(step, dict))
    if not any(isinstance(s, dict) and s.get("role") == "model" for s in steps):
        parts.append("<p class='note'>No model turn was recorded.</p>")
    return (f"<details class='episode' data-source='{_e(_source(record))}' data-correct='{verdict}'>"
            f"{summary}<div class='body'>{''.join(parts)}</div></details>")


def _step(step: dict[str, Any], frames: _Frames) -> str:
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
            out.append(frames.img(images[k]) if k < len(images) else
                       frames.missing_marker("no image was recorded for this placeholder"))
    out.extend(frames.img(p) for p in images[len(pieces) - 1:])  # images without a placeholder: still shown
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

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir.resolve()
        self.urls: dict[str, str] = {}
        self._keys: dict[Path, str] = {}
        self.missing = 0

    def img(self, rel: Any) -> str:
        """An ``<img>`` for the frame at ``rel`` (relative to the run directory), or a missing-frame marker."""
        rel = _text(rel)
        path = (self.run_dir / rel).resolve()
        if not path.is_relative_to(self.run_dir):
            return self.missing_marker(f"{rel} is outside the run directory")
        if path not in self._keys:
            try:
                data = path.read_bytes()
            except OSError:
                return self.missing_marker(rel)
            key = hashlib.sha1(data).hexdigest()[:16]
            mime = _MIME.get(path.suffix.lower(), "image/jpeg")
            self.urls.setdefault(key, f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}")
            self._keys[path] = key
        return f"<img class='frame' data-frame='{self._keys[path]}' alt='{_e(rel)}' title='{_e(rel)}'>"

    def missing_marker(self, what: str) -> str:
        """The visible stand-in for a frame that cannot be shown (counted for the note on top)."""
        self.missing += 1
        return f"<span class='missing'>missing frame: {_e(what)}</span>"


# --- small formatting helpers ----------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(_text(value), quote=True)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _source(record: dict[str, Any]) -> str:
    return _text(record.get("data_source")) or "unknown"


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


def _mean(values: Any) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(numbers) / len(numbers) if numbers else None


_CSS = """
:root { --fg: #1f2328; --muted: #656d76; --line: #d0d7de; --bg: #f6f8fa; --red: #cf222e; --green: #1a7f37;
        --blue: #0969da; --code: #ffffff; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 16px 24px 48px; max-width: 1200px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 2px; } h2 { font-size: 16px; margin: 18px 0 8px; }
.path, .muted { color: var(--muted); font-weight: normal; } .path { margin: 0; font-family: monospace; }
#n-episodes { margin: 4px 0 0; font-weight: 600; }
.note { padding: 6px 10px; border-radius: 6px; background: var(--bg); border: 1px solid var(--line); }
.note.warn { background: #fff8c5; border-color: #d4a72c; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
thead th { background: var(--bg); } tbody th { background: #fbfcfd; white-space: nowrap; }
nav { position: sticky; top: 0; z-index: 2; background: #fff; padding: 10px 0; margin: 12px 0 8px;
      border-bottom: 1px solid var(--line); display: flex; gap: 14px; align-items: center; flex-wrap: wrap; }
#shown { color: var(--muted); } button, select { font: inherit; }
details.episode { border: 1px solid var(--line); border-radius: 8px; margin: 8px 0; background: #fff; }
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
img.frame { display: block; max-width: 100%; max-height: 320px; margin: 6px 0; border: 1px solid var(--line);
            border-radius: 4px; background: #fff; cursor: zoom-in; }
img.frame.zoom { max-height: none; cursor: zoom-out; }
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
  episodes.forEach(ep => ep.addEventListener('toggle', () => { if (ep.open) attach(ep); }));
  document.addEventListener('click', e => {
    if (e.target.matches && e.target.matches('img.frame')) e.target.classList.toggle('zoom');
  });
  const source = document.getElementById('f-source'), correct = document.getElementById('f-correct');
  if (!source) return;
  const apply = () => {
    let shown = 0;
    for (const ep of episodes) {
      const ok = (!source.value || ep.dataset.source === source.value) &&
                 (!correct.value || ep.dataset.correct === correct.value);
      ep.hidden = !ok;
      shown += ok;
    }
    document.getElementById('shown').textContent = `${shown} of ${episodes.length} episodes shown`;
  };
  source.addEventListener('change', apply);
  correct.addEventListener('change', apply);
  document.getElementById('expand').addEventListener('click', () => episodes.forEach(ep => {
    if (!ep.hidden) { ep.open = true; attach(ep); }
  }));
  document.getElementById('collapse').addEventListener('click', () => episodes.forEach(ep => { ep.open = false; }));
  apply();
})();
"""
