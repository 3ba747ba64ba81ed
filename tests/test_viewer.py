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


# --- the HTML text -----------------------------------------------------------------------------------------
def test_hostile_text_is_escaped_everywhere(tmp_path):
    hostile_code = f"<code>\n```python\nprint('{HOSTILE}')  # {HOSTILE}\n```\n</code>"
    rec = record(tmp_path, "evil", source=HOSTILE, correct=True, question=HOSTILE, prediction=HOSTILE,
                 system_prompt=HOSTILE, error=HOSTILE, policy={"policy": HOSTILE}, episode_id=HOSTILE)
    rec["steps"].insert(1, model_step(hostile_code + HOSTILE))
    rec["steps"].insert(2, obs_step(HOSTILE, [], first_image_index=1, error=HOSTILE))
    page = write_html(write_run(tmp_path, [rec])).read_text(encoding="utf-8")

    assert page.count("<script") == 2  # the frame store and the page's own script, nothing from the record
    assert "<img src=x" not in page and "</textarea>" not in page
    escaped = html.escape(HOSTILE, quote=True)
    assert page.count(escaped) >= 8  # question, prediction, system prompt, errors, policy, id, turns, source


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
    # the frame replaces its placeholder in the text, in place
    obs = re.search(r"Count the squares\. (<img[^>]*>)", page)
    assert obs and "data-frame" in obs.group(1)
    assert "&lt;image&gt;" not in page


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
    assert "<details class='episode'" not in page


def test_missing_run_dir_and_file_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run directory .*nowhere.* does not exist"):
        write_html(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"trajectories\.jsonl.* not found"):
        write_html(tmp_path)


def test_output_path_default_and_explicit(tmp_path):
    run = write_run(tmp_path / "run", [record(tmp_path / "run", "x", source="s", correct=True)])
    assert write_html(run) == run / "index.html"
    assert (run / "index.html").is_file()
    out = write_html(run, tmp_path / "new" / "elsewhere.html")
    assert out == tmp_path / "new" / "elsewhere.html" and out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_summary_from_summary_json_or_computed(tmp_path):
    records = [record(tmp_path, "r", source="alpha", correct=True),
               record(tmp_path, "w", source="alpha", correct=False),
               record(tmp_path, "n", source="beta", correct=None, end_reason="max_turns")]
    run = write_run(tmp_path, records)
    table = re.search(r"<table id='summary'>.*?</table>", write_html(run).read_text(encoding="utf-8")).group()
    rows = {text_of(m.group(1)): [text_of(c) for c in re.findall(r"<td>(.*?)</td>", m.group(2))]
            for m in re.finditer(r"<tr><th>(.*?)</th>(.*?)</tr>", table)}
    head = [text_of(h) for h in re.findall(r"<th>(.*?)</th>", table.split("</thead>")[0])][1:]
    overall = dict(zip(head, rows["all"]))
    assert overall["episodes"] == "3" and overall["accuracy"] == "0.5"  # the no-reference one is not judged
    assert overall["end_reasons"] == "answered 2, max_turns 1"
    assert dict(zip(head, rows["per_data_source: alpha"]))["accuracy"] == "0.5"
    assert dict(zip(head, rows["per_data_source: beta"]))["accuracy"] == "–"

    summary = {"n_episodes": 3, "accuracy": 0.25, "by_source": {"alpha": {"accuracy": 0.75}}}
    page = write_html(write_run(tmp_path, records, summary=summary)).read_text(encoding="utf-8")
    assert "(summary.json)" in page and ">n_episodes<" in page and ">0.25<" in page
    assert ">by_source: alpha<" in page and ">0.75<" in page
    (tmp_path / "summary.json").write_text("{broken")
    page = write_html(tmp_path).read_text(encoding="utf-8")
    assert "summary.json is unreadable" in page and "(computed from the records)" in page


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
    with Chromium(width=1200, height=900) as chromium:
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


def test_page_in_chromium(browser, browser_run):
    browser.load(browser_run)
    js = browser.evaluate
    assert browser.console_errors() == []
    assert js("window.pwned === undefined")
    assert js("document.querySelectorAll('details.episode').length") == 4
    assert js("document.getElementById('shown').textContent") == "4 of 4 episodes shown"
    assert "1 malformed line skipped" in js("document.body.innerText")
    assert HOSTILE in js("document.body.textContent")  # shown as text, verbatim

    # Collapsed episodes carry no decoded frames; opening them attaches and decodes them.
    assert js("document.querySelectorAll('img.frame[src]').length") == 0
    js("document.getElementById('expand').click()")
    js("Promise.all([...document.images].map(i => i.decode()))")
    widths = js("[...document.querySelectorAll('img.frame')].map(i => [i.naturalWidth, i.naturalHeight])")
    assert widths == [[128, 96]] * 7  # 2 + 1 (the failed step drew nothing) + 2 + 2

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
        return js("[...document.querySelectorAll('details.episode')].filter(e => !e.hidden)"
                  ".map(e => e.querySelector('summary b').textContent)")

    assert select("f-correct", "right") == ["count-1#0", "video-1#0"]
    assert js("document.getElementById('shown').textContent") == "2 of 4 episodes shown"
    assert select("f-source", "synthetic-video") == ["video-1#0"]
    assert select("f-correct", "none") == ["open-1#0"]
    assert select("f-correct", "wrong") == []
    assert js("document.getElementById('shown').textContent") == "0 of 4 episodes shown"
    assert select("f-source", "") == ["count-2#0"]
    assert select("f-correct", "") == ["count-1#0", "count-2#0", "video-1#0", "open-1#0"]


def test_screenshot_in_chromium(browser, browser_run, tmp_path):
    browser.load(browser_run)
    browser.evaluate("document.getElementById('expand').click()")
    browser.evaluate("Promise.all([...document.images].map(i => i.decode()))")
    png = browser.screenshot(tmp_path / "viewer.png").read_bytes()

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1200, 900)
    pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert pixels.shape == (900, 1200, 3)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, badges, frames
