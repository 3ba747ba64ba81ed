"""The trajectory viewer: run directories built by hand (records in the rollout's schema, real JPEG frames
written by OpenCV, turns parsed and observations formatted by the real protocol), checked as HTML text and
then in a real headless Chromium (DOM after the page's script ran, the filters, a screenshot)."""

from __future__ import annotations

import base64
import html
import json
import re
import struct
import traceback
from pathlib import Path

import cv2
import numpy as np
import pytest
from chromium import Chromium, ChromiumError, find_chromium

from pyvision_agent.viewer import highlight_python, load_run, write_html
from pyvision_env.protocol import format_interpreter_text, get_protocol

PROTOCOL = get_protocol("pyvision")
HOSTILE = "</textarea></pre><script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"


# --- building run directories ------------------------------------------------------------------------------
def write_frame(run_dir: Path, rel: str, color: tuple[int, int, int], size: tuple[int, int] = (96, 128)) -> str:
    """A real JPEG (a coloured square on grey) at ``run_dir/rel``; returns ``rel``."""
    image = np.full((*size, 3), 128, np.uint8)
    image[size[0] // 4: 3 * size[0] // 4, size[1] // 4: 3 * size[1] // 4] = color
    path = run_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
    return rel


def model_step(text: str) -> dict:
    parsed = PROTOCOL.parse(text)
    return {"role": "model", "text": text, "finish_reason": "stop", "code": parsed.code, "answer": parsed.answer}


def obs_step(stdout: str, frames: list[str], *, first_image_index: int, error: str | None = None) -> dict:
    text = PROTOCOL.format_observation(format_interpreter_text(stdout, "", error), len(frames),
                                       first_image_index=first_image_index)
    return {"role": "observation", "text": text, "images": frames, "stdout": stdout, "stderr": "", "error": error,
            "exec_time_s": 0.0021, "timed_out": False}


def a_traceback() -> str:
    try:
        exec(compile("x = [1, 2]\nprint(x[5])", "<code>", "exec"), {})
    except IndexError:
        return traceback.format_exc()
    raise AssertionError("the code above must raise")


def record(run_dir: Path, name: str, *, source: str, correct: bool | None, color=(220, 40, 40),
           error_turn: bool = False, **extra) -> dict:
    """One episode: the input image, a code turn that draws a frame (or fails), then an answer."""
    frames_dir = f"frames/{name}"
    steps = [{"role": "observation", "text": f"Count the squares. {PROTOCOL.image_placeholder}",
              "images": [write_frame(run_dir, f"{frames_dir}/00_0.jpg", color)]}]
    code_turn = ("Let me look closer.\n<code>\n```python\nimport numpy as np\n# crop the middle\n"
                 "img = image_clue_0.crop((8, 8, 64, 64))\nprint('size', img.size, 0x1F, 3.5e-2)\n"
                 "if np.asarray(img).mean() > 0:\n    display(img)\n```\n</code>")
    steps.append(model_step(code_turn))
    if error_turn:
        steps.append(obs_step("", [], first_image_index=1, error=a_traceback()))
    else:
        steps.append(obs_step("size (56, 56) 31 0.035", [write_frame(run_dir, f"{frames_dir}/01_0.jpg", color)],
                              first_image_index=1))
    prediction = "1" if correct is not False else "2"
    steps.append(model_step(f"There is one square.\n<answer>\\boxed{{{prediction}}}</answer>"))
    accuracy = 1.0 if correct else 0.0
    rec = {"episode_id": f"{name}#0", "env_id": "PyVisionImage-v0", "task_id": name, "sample": 0,
           "data_source": source, "question": "How many squares?", "reference": None if correct is None else "1",
           "answer_type": "number", "prediction": prediction, "correct": correct,
           "reward": accuracy + 0.1 * accuracy,
           "reward_components": {"accuracy": accuracy, "tool": 0.1 * accuracy, "format": 0.0,
                                 "total": accuracy + 0.1 * accuracy},
           "judge_score": None, "end_reason": "answered", "turns": 2, "n_tool_calls": 1,
           "n_images": 1 if error_turn else 2, "visual_tokens": 64 if error_turn else 128,
           "policy": {"policy": "scripted"},
           "timings": {"total_s": 0.05, "policy_s": 0.001, "env_s": 0.04, "sandbox_s": 0.03},
           "system_prompt": "You are a helpful assistant that writes Python.", "steps": steps, "tokens": None,
           "error": None, "some_future_key": {"ignored": True}}
    rec.update(extra)
    return rec


def write_run(run_dir: Path, records: list[dict], *, extra_lines: list[str] = (), summary: dict | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    (run_dir / "trajectories.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return run_dir


def frame_store(page: str) -> dict[str, str]:
    m = re.search(r"<script type='application/json' id='frames'>(.*?)</script>", page, re.DOTALL)
    assert m, "the page has no frame store"
    return json.loads(m.group(1))


def text_of(fragment: str) -> str:
    """What a browser would show for an HTML fragment without elements: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]*>", "", fragment))


def bars(page: str) -> dict[str, list[tuple[int, str, float]]]:
    """Every chart's bars as (series, category, value), read from the SVG text."""
    out = {}
    for m in re.finditer(r"<svg class='plot' data-plot='([^']+)'(.*?)</svg>", page, re.DOTALL):
        out[m.group(1)] = [(int(s), html.unescape(c), float(v)) for s, c, v in re.findall(
            r"<rect class='bar' data-series='(\d+)' data-category='([^']*)' data-value='([^']*)'", m.group(2))]
    return out


def table_rows(page: str) -> list[tuple[str, dict[str, str]]]:
    """The summary table as (row label, {column label: cell text}) in order (labels include run badges)."""
    table = re.search(r"<table id='summary'>.*?</table>", page, re.DOTALL).group()
    head = [text_of(h).rstrip("●") for h in re.findall(r"<th[^>]*>(.*?)</th>", table.split("</thead>")[0])][1:]
    rows = []
    for m in re.finditer(r"<tr[^>]*><th>(.*?)</th>(.*?)</tr>", table.split("</thead>")[1]):
        cells = [text_of(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", m.group(2))]
        rows.append((" ".join(text_of(m.group(1)).split()), dict(zip(head, cells))))
    return rows


def chart_run(run_dir: Path) -> list[dict]:
    """Five episodes whose distributions are known (see the expected bars in the tests)."""
    return [record(run_dir, "task-1", source="alpha", correct=True, n_tool_calls=0, turns=1, visual_tokens=100),
            record(run_dir, "task-2", source="alpha", correct=False, n_tool_calls=1, turns=2, visual_tokens=300),
            record(run_dir, "task-10", source="beta", correct=True, n_tool_calls=1, turns=2, visual_tokens=300),
            record(run_dir, "task-3", source="beta", correct=None, n_tool_calls=3, turns=4, visual_tokens=1200,
                   end_reason="max_turns"),
            record(run_dir, "task-4", source="beta", correct=None, n_tool_calls=0, turns=0, visual_tokens=0,
                   end_reason="policy_error", error="RuntimeError: model server went away")]


def collapsed_run(run_dir: Path) -> list[dict]:
    """The same tasks answered at once without any tool call: the picture of an interaction collapse."""
    tasks = [("task-1", "alpha", True), ("task-2", "alpha", False), ("task-10", "beta", False),
             ("task-3", "beta", None), ("task-4", "beta", False)]
    return [record(run_dir, name, source=source, correct=correct, n_tool_calls=0, turns=1, visual_tokens=64)
            for name, source, correct in tasks]


EXPECTED_BARS = {  # chart id -> values per series 0 bar, for chart_run
    "n_tool_calls": [2, 2, 0, 1],           # bins 0..3
    "turns": [1, 1, 2, 0, 1],               # bins 0..4
    "visual_tokens": [2, 2, 0, 0, 0, 0, 1],  # bins of 200 up to 1200
    "accuracy_by_tool_calls": [1.0, 0.5],   # only bins with judged episodes: 0 and 1 calls
    "end_reasons": [3, 1, 1],               # answered, max_turns, policy_error
    "accuracy_by_source": [0.5, 1.0],       # alpha, beta
    "tool_calls_by_source": [0.5, 4 / 3],
}


# --- the HTML text -----------------------------------------------------------------------------------------
def test_hostile_text_is_escaped_everywhere(tmp_path):
    hostile_code = f"<code>\n```python\nprint('{HOSTILE}')  # {HOSTILE}\n```\n</code>"
    rec = record(tmp_path, "evil", source=HOSTILE, correct=True, question=HOSTILE, prediction=HOSTILE,
                 system_prompt=HOSTILE, error=HOSTILE, policy={"policy": HOSTILE}, episode_id=HOSTILE,
                 end_reason=HOSTILE)
    rec["steps"].insert(1, model_step(hostile_code + HOSTILE))
    rec["steps"].insert(2, obs_step(HOSTILE, [], first_image_index=1, error=HOSTILE))
    page = write_html(write_run(tmp_path, [rec])).read_text(encoding="utf-8")

    assert page.count("<script") == 2  # the frame store and the page's own script, nothing from the record
    assert "<img src=x" not in page and "</textarea>" not in page
    escaped = html.escape(HOSTILE, quote=True)
    assert page.count(escaped) >= 8  # question, prediction, system prompt, errors, policy, id, turns, source
    # the charts name data sources and end reasons too: escaped there as well
    assert {c for _, c, _ in bars(page)["end_reasons"]} == {HOSTILE}
    assert re.search(r"<svg[^>]*data-plot='accuracy_by_source'.*?" + re.escape(escaped[:20]), page, re.DOTALL)

    other = tmp_path / "other" / "<i>run"  # run names on a comparison page come from directory names
    write_run(other, [record(other, "evil", source="s", correct=True)])
    page = write_html([tmp_path, other], tmp_path / "compare.html").read_text(encoding="utf-8")
    assert "<i>run" not in page and "&lt;i&gt;run" in page
    assert page.count("<script") == 2


def test_frames_are_inlined_once_per_distinct_content(tmp_path):
    first = record(tmp_path, "a", source="s", correct=True)
    second = record(tmp_path, "b", source="s", correct=False)  # same colour: byte-identical JPEG files
    third = record(tmp_path, "c", source="s", correct=True, color=(30, 200, 60))
    page = write_html(write_run(tmp_path, [first, second, third])).read_text(encoding="utf-8")

    store = frame_store(page)
    keys = re.findall(r"<img class='frame' data-frame='([0-9a-f]+)'", page)
    assert len(keys) == 6  # two frames per episode, each at its placeholder
    assert set(keys) == set(store)
    files = {p.read_bytes() for p in tmp_path.glob("frames/*/*.jpg")}
    assert len(store) == len(files) < 6  # a: input and drawn frame equal; b shares a's; c has its own
    decoded = {base64.b64decode(url.split(",", 1)[1]) for url in store.values()}
    assert decoded == files
    assert all(url.startswith("data:image/jpeg;base64,") for url in store.values())
    assert "frames/a/00_0.jpg" in page  # the frame's path is its alt text
    # the frame replaces its placeholder in the text, in place, with its index in the episode and its size
    obs = re.search(r"Count the squares\. <span class='frame'>(<img[^>]*>)<span class='caption'>(.*?)</span>", page)
    assert obs and "data-frame" in obs.group(1) and text_of(obs.group(2)) == "image 0 · 128×96"
    captions = [text_of(c) for c in re.findall(r"<span class='caption'>(.*?)</span>", page)]
    assert captions == ["image 0 · 128×96", "image 1 · 128×96"] * 3
    assert "&lt;image&gt;" not in page


def test_video_frames_are_captioned_as_frames(tmp_path):
    rec = record(tmp_path, "v", source="s", correct=True, env_id="PyVisionVideo-v0")
    rec["steps"][0]["images"] = []  # a video episode starts without frames
    rec["steps"][0]["text"] = "What happens?"
    rec["steps"][2]["images"].append(write_frame(tmp_path, "frames/v/01_1.jpg", (0, 0, 255), size=(48, 64)))
    rec["steps"][2]["text"] += PROTOCOL.image_placeholder
    page = write_html(write_run(tmp_path, [rec])).read_text(encoding="utf-8")
    assert [text_of(c) for c in re.findall(r"<span class='caption'>(.*?)</span>", page)] == [
        "frame 0 · 128×96", "frame 1 · 64×48"]


def test_missing_frame_shows_a_marker(tmp_path):
    rec = record(tmp_path, "m", source="s", correct=True)
    (tmp_path / "frames/m/01_0.jpg").unlink()
    rec["steps"][0]["images"].append("../outside.jpg")  # a path that escapes the run dir is never read
    rec["steps"][0]["text"] += " and " + PROTOCOL.image_placeholder + " " + PROTOCOL.image_placeholder
    (tmp_path.parent / "outside.jpg").write_bytes(b"secret")
    page = write_html(write_run(tmp_path, [rec])).read_text(encoding="utf-8")

    assert "missing frame: frames/m/01_0.jpg" in page
    assert "missing frame: ../outside.jpg is outside the run directory" in page
    assert "missing frame: no image was recorded for this placeholder" in page
    assert "3 missing frames" in page
    assert base64.b64encode(b"secret").decode() not in page
    assert len(frame_store(page)) == 1  # the input frame is still there


def test_malformed_lines_are_skipped_and_counted(tmp_path):
    good = [record(tmp_path, "g1", source="s", correct=True), record(tmp_path, "g2", source="s", correct=False)]
    bad = ['{"episode_id": "cut', "not json at all", "[1, 2, 3]", '{"steps": "not a list"}', ""]
    run = write_run(tmp_path, good, extra_lines=bad)
    loaded = load_run(run)
    assert [r["episode_id"] for r in loaded.records] == ["g1#0", "g2#0"]
    assert loaded.malformed == 4  # the blank line is not malformed
    page = write_html(run).read_text(encoding="utf-8")
    assert "4 malformed lines skipped" in page
    assert page.count("<details class='episode'") == 2


def test_empty_run_says_no_episodes(tmp_path):
    page = write_html(write_run(tmp_path, [])).read_text(encoding="utf-8")
    assert "No episodes in this run." in page
    assert "0 episodes" in page
    assert "<details class='episode'" not in page and "<svg" not in page


def test_missing_run_dir_and_file_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run directory .*nowhere.* does not exist"):
        write_html(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"trajectories\.jsonl.* not found"):
        write_html(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nowhere"):
        write_html([write_run(tmp_path / "ok", []), tmp_path / "nowhere"], tmp_path / "c.html")


def test_output_path_default_and_explicit(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run", [record(tmp_path / "run", "x", source="s", correct=True)])
    assert write_html(run) == run / "index.html"
    assert (run / "index.html").is_file()
    out = write_html(run, tmp_path / "new" / "elsewhere.html")
    assert out == tmp_path / "new" / "elsewhere.html" and out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    monkeypatch.chdir(tmp_path)
    assert write_html([run, run]) == Path("compare.html") and (tmp_path / "compare.html").is_file()


def test_episodes_are_sorted_by_task_and_sample_the_first_few_open(tmp_path):
    records = [record(tmp_path, name, source="s", correct=True, sample=sample, episode_id=f"{name}#{sample}")
               for name, sample in [("t-10", 0), ("t-2", 1), ("t-1", 0), ("t-2", 0), ("t-1", 1)]]
    page = write_html(write_run(tmp_path, records)).read_text(encoding="utf-8")
    episodes = re.findall(r"<details class='episode'[^>]*>\s*<summary>.*?<b>(.*?)</b>", page)
    assert episodes == ["t-1#0", "t-1#1", "t-2#0", "t-2#1", "t-10#0"]  # natural order: t-2 before t-10
    opened = re.findall(r"<details class='episode'([^>]*)>", page)
    assert [" open" in attrs for attrs in opened] == [True, True, True, False, False]


def test_summary_table_has_human_labels_and_is_computed_from_the_records(tmp_path):
    page = write_html(write_run(tmp_path, chart_run(tmp_path))).read_text(encoding="utf-8")
    rows = dict(table_rows(page))
    assert list(rows) == ["All episodes", "alpha", "beta"]
    overall = rows["All episodes"]
    assert list(overall)[:7] == ["Episodes", "Accuracy", "Judged", "Mean reward", "Tool calls / episode",
                                 "Turns / episode", "Answers without tools"]
    marked = re.findall(r"<th class='sign'[^>]*>([^<]*)<span class='sign-dot'", page)  # the collapse signs
    assert marked == ["Tool calls / episode", "Turns / episode", "Answers without tools"]
    assert overall["Episodes"] == "5" and overall["Judged"] == "3" and overall["Accuracy"] == "66.7%"
    assert overall["Failed episodes"] == "1"  # the policy error: not judged, not counted as wrong
    assert overall["Answers without tools"] == "33%" and overall["Tool calls / episode"] == "1.00"
    assert overall["End reasons"] == "answered 3, max_turns 1, policy_error 1"
    assert rows["alpha"]["Accuracy"] == "50.0%" and rows["beta"]["Accuracy"] == "100.0%"
    assert "_" not in "".join(overall)  # no raw key names

    (tmp_path / "summary.json").write_text(json.dumps({"episodes": 12, "accuracy": 0.25}))
    page = write_html(tmp_path).read_text(encoding="utf-8")
    assert "summary.json counts 12 episodes but trajectories.jsonl holds 5" in page
    assert dict(table_rows(page))["All episodes"]["Episodes"] == "5"
    (tmp_path / "summary.json").write_text("{broken")
    assert "summary.json is unreadable" in write_html(tmp_path).read_text(encoding="utf-8")


def test_charts_count_what_the_records_hold(tmp_path):
    page = write_html(write_run(tmp_path, chart_run(tmp_path))).read_text(encoding="utf-8")
    found = bars(page)
    assert set(found) == set(EXPECTED_BARS)
    for plot, values in EXPECTED_BARS.items():
        assert [v for _, _, v in found[plot]] == pytest.approx(values, rel=1e-5), plot
        assert {s for s, _, _ in found[plot]} == {0}
    assert [c for _, c, _ in found["n_tool_calls"]] == ["0", "1", "2", "3"]
    assert [c for _, c, _ in found["accuracy_by_tool_calls"]] == ["0", "1"]
    assert [c for _, c, _ in found["end_reasons"]] == ["answered", "max_turns", "policy_error"]
    assert "<title>1: 50% (1 of 2 right)</title>" in page  # every bar says what it counts
    assert page.count("class='sign-mark'") == 3  # tool calls, turns, tool calls by source


def test_integer_histograms_put_the_long_tail_in_one_bin(tmp_path):
    records = [record(tmp_path, f"t{k}", source="s", correct=True, n_tool_calls=k, turns=k + 1)
               for k in (0, 2, 30, 40)]
    found = bars(write_html(write_run(tmp_path, records)).read_text(encoding="utf-8"))
    assert [c for _, c, _ in found["n_tool_calls"]] == [*map(str, range(12)), "12+"]
    assert found["n_tool_calls"][-1][2] == 2 and sum(v for _, _, v in found["n_tool_calls"]) == 4


def test_comparison_page_holds_every_run_and_highlights_collapse(tmp_path):
    a, b = tmp_path / "ckpt" / "step100" / "eval", tmp_path / "ckpt" / "step200" / "eval"
    write_run(a, chart_run(a))
    write_run(b, collapsed_run(b))
    page = write_html([a, b], tmp_path / "compare.html").read_text(encoding="utf-8")

    assert "PyVision runs compared: step100/eval, step200/eval" in page  # names made distinct
    rows = table_rows(page)
    assert [label for label, _ in rows] == ["All episodes step100/eval", "step200/eval", "alpha step100/eval",
                                            "step200/eval", "beta step100/eval", "step200/eval"]
    assert [cells["Accuracy"] for _, cells in rows] == ["66.7%", "25.0%", "50.0%", "50.0%", "100.0%", "0.0%"]
    table = re.search(r"<table id='summary'>.*?</table>", page, re.DOTALL).group()
    flagged = re.findall(r"<tr[^>]*data-group='([^']*)' data-run='(\d)'>(.*?)</tr>", table)
    collapse = {(group, run, key) for group, run, row in flagged
                for key in re.findall(r"<td data-key='(\w+)' class='collapse'", row)}
    # against the first run, in every group: no more tool calls, one turn, every answer without tools
    assert collapse == {(group, "1", key) for group in ("All episodes", "alpha", "beta")
                        for key in ("tool_calls_per_episode", "turns_per_episode", "answered_without_tools")}
    assert "100% fewer" in table and "44% fewer" in table and "+67 points" in table

    found = bars(page)
    assert {s for s, _, _ in found["n_tool_calls"]} == {0, 1}
    assert len(found["n_tool_calls"]) == 4 * 2 and len(found["turns"]) == 5 * 2
    shares = [v for s, _, v in found["n_tool_calls"] if s == 1]
    assert shares == [1.0, 0.0, 0.0, 0.0]  # every collapsed episode made no call: shares, not counts
    assert page.count("data-run='0'") >= 5 and page.count("data-run='1'") >= 5
    assert len(re.findall(r"<details class='episode' data-run='1'", page)) == 5


def test_collapse_thresholds():
    from pyvision_agent.viewer import _collapse

    assert _collapse("tool_calls_per_episode", 0.79, 1.0) == "21% fewer"
    assert _collapse("tool_calls_per_episode", 0.85, 1.0) is None
    assert _collapse("turns_per_episode", 1.5, 2.0) == "25% fewer"
    assert _collapse("answered_without_tools", 0.45, 0.30) == "+15 points"
    assert _collapse("answered_without_tools", 0.35, 0.30) is None
    assert _collapse("tool_calls_per_episode", 2.0, 1.0) is None  # more calls is not collapse
    assert _collapse("accuracy", 0.1, 0.9) is None and _collapse("turns_per_episode", None, 2.0) is None


PY_SAMPLES = [
    "import numpy as np\nfor i in range(3):\n    print(i, 'x', 1.5e3)  # done\n",
    "s = '''multi\nline''' + f\"{x!r}\" + b'\\x00'\nif s is not None: pass",
    "print('unterminated\nx = 0x1F + .5j  # cut mid",  # broken code: shown whole anyway
    "a<b and c>d or '&' # <script>",
]


@pytest.mark.parametrize("code", PY_SAMPLES)
def test_highlight_python_keeps_the_code_and_marks_tokens(code):
    out = highlight_python(code)
    assert text_of(out) == code  # nothing lost, reordered or left unescaped
    assert "<script>" not in out and not re.search(r"<(?!/?span)", out)  # the only tags are its spans


def test_highlight_python_token_classes():
    spans = re.findall(r"<span class='(\w)'>(.*?)</span>", highlight_python(PY_SAMPLES[0]), re.DOTALL)
    assert ("k", "import") in spans and ("k", "for") in spans and ("k", "in") in spans
    assert ("b", "range") in spans and ("b", "print") in spans
    assert ("s", "&#x27;x&#x27;") in spans and ("c", "# done") in spans
    assert ("n", "3") in spans and ("n", "1.5e3") in spans
    assert ("k", "np") not in spans and all(tok != "i" for _, tok in spans)
    broken = re.findall(r"<span class='(\w)'>(.*?)</span>", highlight_python(PY_SAMPLES[2]), re.DOTALL)
    assert ("s", "&#x27;unterminated") in broken and ("n", "0x1F") in broken and ("n", ".5j") in broken
    assert ("c", "# cut mid") in broken and ("k", "x") not in broken
    assert ("b", "type") in re.findall(r"<span class='(\w)'>(.*?)</span>", highlight_python("type(x)"))


# --- in a real browser ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    try:
        find_chromium()
    except ChromiumError as exc:
        pytest.fail(f"the viewer's browser tests need Chromium: {exc}")
    with Chromium(width=1400, height=900) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    records = [record(run_dir, "count-1", source="synthetic-image", correct=True),
               record(run_dir, "count-2", source="synthetic-image", correct=False, error_turn=True),
               record(run_dir, "video-1", source="synthetic-video", correct=True, color=(40, 90, 230)),
               record(run_dir, "open-1", source="synthetic-video", correct=None, question=HOSTILE)]
    records[3]["steps"].insert(1, model_step(HOSTILE))
    return write_html(write_run(run_dir, records, extra_lines=["{oops"]))


@pytest.fixture(scope="module")
def compare_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a, b = root / "step100", root / "step200"
    write_run(a, chart_run(a))
    write_run(b, collapsed_run(b))
    return write_html([a, b], root / "compare.html")


def shown_titles(js) -> list[str]:
    return js("[...document.querySelectorAll('details.episode')].filter(e => !e.hidden)"
              ".map(e => e.querySelector('summary b').textContent)")


def test_page_in_chromium(browser, browser_run):
    browser.resize(1400, 900)
    browser.load(browser_run)
    js = browser.evaluate
    assert browser.console_errors() == []
    assert js("window.pwned === undefined")
    assert js("document.querySelectorAll('details.episode').length") == 4
    assert js("document.getElementById('shown').textContent") == "4 of 4 episodes shown"
    assert "1 malformed line skipped" in js("document.body.innerText")
    assert HOSTILE in js("document.body.textContent")  # shown as text, verbatim
    assert shown_titles(js) == ["count-1#0", "count-2#0", "open-1#0", "video-1#0"]  # by task

    # The first three are open with their frames attached; the closed one carries no decoded frame yet.
    assert js("[...document.querySelectorAll('details.episode')].map(e => e.open)") == [True, True, True, False]
    assert js("document.querySelectorAll('details.episode:not([open]) img.frame[src]').length") == 0
    assert js("document.querySelectorAll('details.episode[open] img.frame[src]').length") == 5  # 2 + 1 + 2
    js("document.getElementById('expand').click()")
    js("Promise.all([...document.querySelectorAll('img.frame')].map(i => i.decode()))")
    widths = js("[...document.querySelectorAll('img.frame')].map(i => [i.naturalWidth, i.naturalHeight])")
    assert widths == [[128, 96]] * 7  # 2 + 1 (the failed step drew nothing) + 2 + 2
    # readable: a 128x96 frame is shown at least 160 px high, never wider than its episode
    sizes = js("[...document.querySelectorAll('img.frame')].map(i => { const b = i.getBoundingClientRect();"
               " return [b.width, b.height]; })")
    assert all(h >= 160 and w >= 200 for w, h in sizes)

    assert js("document.querySelectorAll('code.py span.k').length") >= 4
    assert js("document.querySelectorAll('code.py span.s').length") >= 4
    assert js("document.querySelectorAll('code.py span.c').length") >= 4
    assert js("document.querySelectorAll('code.py span.n').length") >= 4
    # the failed run is marked: a red step whose traceback is wrapped
    assert js("document.querySelectorAll('.step.obs.error').length") == 1
    assert "IndexError: list index out of range" in js("document.querySelector('.step.error .tb').textContent")

    def select(id_: str, value: str) -> list[str]:
        js(f"(() => {{ const s = document.getElementById('{id_}'); s.value = {json.dumps(value)};"
           "s.dispatchEvent(new Event('change')); })()")
        return shown_titles(js)

    assert select("f-correct", "right") == ["count-1#0", "video-1#0"]
    assert js("document.getElementById('shown').textContent") == "2 of 4 episodes shown"
    assert select("f-source", "synthetic-video") == ["video-1#0"]
    assert select("f-correct", "none") == ["open-1#0"]
    assert select("f-correct", "wrong") == []
    assert js("document.getElementById('shown').textContent") == "0 of 4 episodes shown"
    assert select("f-source", "") == ["count-2#0"]
    assert select("f-correct", "") == ["count-1#0", "count-2#0", "open-1#0", "video-1#0"]


def test_keyboard_navigation_and_full_resolution_in_chromium(browser, browser_run):
    browser.resize(1400, 900)
    browser.load(browser_run)
    js = browser.evaluate

    def key(name: str) -> None:
        js(f"document.dispatchEvent(new KeyboardEvent('keydown', {{key: {json.dumps(name)}, bubbles: true}}))")

    def current() -> list:
        return js("[[...document.querySelectorAll('details.episode')].findIndex(e => e.classList.contains('current')),"
                  " Math.round(document.querySelector('details.episode.current').getBoundingClientRect().top)]")

    key("j")
    assert current()[0] == 0
    key("j")
    key("j")
    index, top = current()
    assert index == 2 and 0 <= top <= 120  # scrolled to the top, below the sticky filter bar
    key("k")
    assert current()[0] == 1
    key("o")  # closes the open episode, opens it again
    assert js("document.querySelector('details.episode.current').open") is False
    key("o")
    assert js("document.querySelector('details.episode.current').open") is True
    # hidden episodes are skipped
    js("(() => { const s = document.getElementById('f-correct'); s.value = 'right';"
       "s.dispatchEvent(new Event('change')); })()")
    key("j")
    assert js("document.querySelector('details.episode.current summary b').textContent") == "video-1#0"
    key("k")
    key("k")
    assert js("document.querySelector('details.episode.current summary b').textContent") == "count-1#0"

    # a click on a frame shows it at full resolution over the page; Esc closes it
    js("document.querySelector('details.episode.current img.frame').click()")
    js("document.querySelector('#lightbox img').decode()")
    assert js("document.getElementById('lightbox').hidden") is False
    assert js("(() => { const i = document.querySelector('#lightbox img');"
              " return [i.naturalWidth, Math.round(i.getBoundingClientRect().width)]; })()") == [128, 128]
    assert "128×96, full resolution" in js("document.querySelector('#lightbox p').textContent")
    key("Escape")
    assert js("document.getElementById('lightbox').hidden") is True


def test_charts_in_chromium(browser, tmp_path):
    run = write_run(tmp_path, chart_run(tmp_path))
    browser.resize(1400, 900)
    browser.load(write_html(run))
    js = browser.evaluate
    assert browser.console_errors() == []
    counts = js("Object.fromEntries([...document.querySelectorAll('svg.plot')].map(s => "
                "[s.dataset.plot, s.querySelectorAll('rect.bar').length]))")
    assert counts == {plot: len(values) for plot, values in EXPECTED_BARS.items()}
    # bars are drawn to scale: in the tool-call histogram (2, 2, 0, 1 episodes), heights follow the counts
    heights = js("[...document.querySelectorAll(\"svg[data-plot='n_tool_calls'] rect.bar\")]"
                 ".map(r => r.getBBox().height)")
    assert heights[0] == pytest.approx(heights[1]) and heights[2] == 0
    assert heights[0] == pytest.approx(2 * heights[3], rel=0.01)
    # every chart is visible and inside the page
    boxes = js("[...document.querySelectorAll('svg.plot')].map(s => { const b = s.getBoundingClientRect();"
               " return [b.width, b.height, b.right]; })")
    assert all(w > 250 and h > 60 and right <= 1400 for w, h, right in boxes)


def test_comparison_in_chromium(browser, compare_page):
    browser.resize(1400, 900)
    browser.load(compare_page)
    js = browser.evaluate
    assert browser.console_errors() == []
    assert js("[...document.querySelectorAll('#runs .run')].map(b => b.textContent)") == ["step100", "step200"]
    assert js("document.querySelectorAll('details.episode[data-run=\"0\"]').length") == 5
    assert js("document.querySelectorAll('details.episode[data-run=\"1\"]').length") == 5
    counts = js("Object.fromEntries([...document.querySelectorAll('svg.plot')].map(s => "
                "[s.dataset.plot, [0, 1].map(k => s.querySelectorAll(`rect.bar[data-series='${k}']`).length)]))")
    assert counts["n_tool_calls"] == [4, 4] and counts["turns"] == [5, 5] and counts["end_reasons"] == [3, 3]
    assert counts["accuracy_by_tool_calls"] == [2, 1]  # the collapsed run was judged only at zero calls
    colours = js("[0, 1].map(k => document.querySelector(`rect.bar[data-series='${k}']`).getAttribute('fill'))")
    assert colours[0] != colours[1]
    # the collapse signs are highlighted in the second run's rows only, in red
    assert js("[...document.querySelectorAll('td.collapse')].map(td => td.closest('tr').dataset.run)") == ["1"] * 9
    assert js("getComputedStyle(document.querySelector('td.collapse')).backgroundColor") == "rgb(255, 235, 233)"
    js("(() => { const s = document.getElementById('f-run'); s.value = '1'; s.dispatchEvent(new Event('change')); })()")
    assert js("document.getElementById('shown').textContent") == "5 of 10 episodes shown"


@pytest.mark.parametrize("width", [1400, 800])
def test_screenshots_at_1400_and_800(browser, compare_page, browser_run, tmp_path, width):
    for name, page in (("compare", compare_page), ("run", browser_run)):
        browser.resize(width, 900)
        browser.load(page)
        js = browser.evaluate
        js("Promise.all([...document.images].filter(i => i.src).map(i => i.decode()))")
        # nothing but the summary table may scroll sideways, and at 1400 px not even that
        assert js("document.scrollingElement.scrollWidth") <= width
        table, box = js("[document.getElementById('summary').scrollWidth,"
                        " document.getElementById('summary-section').clientWidth]")
        if width >= 1400:
            assert table <= box
        columns = js("getComputedStyle(document.getElementById('charts')).gridTemplateColumns.split(' ').length")
        assert columns == (3 if width >= 1400 else 2)
        png = browser.screenshot(tmp_path / f"{name}-{width}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", png[16:24]) == (width, 900)
        pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, badges, charts
        full = browser.screenshot(tmp_path / f"{name}-{width}-full.png", full_page=True).read_bytes()
        assert struct.unpack(">II", full[16:24])[0] == width
