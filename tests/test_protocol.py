"""Parsing of model turns and formatting of observations, per dialect."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvision_env.errors import ConfigError
from pyvision_env.protocol import (
    PROTOCOLS,
    FencedProtocol,
    ParsedTurn,
    PyVisionProtocol,
    ToolCallProtocol,
    format_interpreter_text,
    get_protocol,
    unwrap_boxed,
)

FENCE = "```"
ROOT = Path(__file__).resolve().parents[1]


def code_turn(code: str, label: str = "python") -> str:
    return f"<code>\n{FENCE}{label}\n{code}\n{FENCE}\n</code>"


# (id, turn, code, answer, n_code_blocks, substring of format_error or None)
PYVISION_CASES = [
    ("plain", "I will measure it.\n" + code_turn("print(image_clue_0.size)"), "print(image_clue_0.size)", None, 1,
     None),
    ("text_around_tags", "Plan: crop.<code>```python\nx = 1\n```</code> now wait", "x = 1", None, 1, None),
    ("missing_fences", "<code>\nprint(1)\n</code>", "print(1)", None, 1, None),
    ("label_py", code_turn("x = 1", "py"), "x = 1", None, 1, None),
    ("label_python3", code_turn("x = 1", "python3"), "x = 1", None, 1, None),
    ("no_label", code_turn("x = 1", ""), "x = 1", None, 1, None),
    ("one_line_fence", "<code>```print(1)```</code>", "print(1)", None, 1, None),
    ("stopped_before_close_tag", "<code>\n```python\nprint(1)\n```\n", "print(1)", None, 1, None),
    ("cut_inside_fence", "<code>\n```python\nfor i in range(3):\n    print(i)", "for i in range(3):\n    print(i)",
     None, 1, None),
    ("several_blocks_last_runs", code_turn("a = 1") + "\nthen\n" + code_turn("b = 2"), "b = 2", None, 2, None),
    ("unclosed_then_another", "<code>\n```python\na = 1\n```\n" + code_turn("b = 2"), "b = 2", None, 2, None),
    ("case_insensitive_tags", "<CODE>\n```Python\nx = 2\n```\n</Code>", "x = 2", None, 1, None),
    ("indented_code_dedented", code_turn("    x = 1\n    if x:\n        print(x)"), "x = 1\nif x:\n    print(x)",
     None, 1, None),
    ("answer_tag_inside_code_is_code", code_turn("print('<answer>x</answer>')"), "print('<answer>x</answer>')", None,
     1, None),
    ("answer_boxed", "Done.\n<answer>\\boxed{B}</answer>", None, "B", 0, None),
    ("answer_nested_braces", "<answer>\\boxed{\\frac{1}{2}}</answer>", None, "\\frac{1}{2}", 0, None),
    ("answer_without_boxed", "<answer> left </answer>", None, "left", 0, None),
    ("answer_unclosed", "So:\n<answer>\n\\boxed{42}", None, "42", 0, None),
    ("answer_case_insensitive", "<Answer>yes</ANSWER>", None, "yes", 0, None),
    ("answer_last_of_several", "<answer>1</answer> no wait <answer>2</answer>", None, "2", 0, None),
    ("answer_wins_over_code", code_turn("x = 1") + "\n<answer>\\boxed{3}</answer>", None, "3", 1, None),
    ("answer_after_unclosed_code", "<code>\n```python\nx = 1\n```\n<answer>3</answer>", None, "3", 1, None),
    ("empty_answer_lets_code_run", code_turn("x = 1") + "<answer></answer>", "x = 1", None, 1, None),
    ("empty_answer", "<answer>  </answer>", None, None, 0, "the <answer> is empty"),
    ("empty_code", code_turn(""), None, None, 1, "the <code> block is empty"),
    ("fence_without_code_tags", "Let me run:\n```python\nprint(1)\n```", None, None, 0,
     "```python block without <code> tags"),
    ("boxed_without_answer_tags", "The answer is \\boxed{3}.", None, None, 0, "outside <answer> tags"),
    ("neither", "Let me think about the colors.", None, None, 0, "no <code> block and no <answer>"),
    ("empty_turn", "", None, None, 0, "no <code> block and no <answer>"),
]

FENCED_CASES = [
    ("plain", "Run:\n```python\nprint(1)\n```", "print(1)", None, 1, None),
    ("label_py", "```py\nx = 1\n```", "x = 1", None, 1, None),
    ("label_python3", "```python3\nx = 1\n```", "x = 1", None, 1, None),
    ("several_blocks_last_runs", "```python\na = 1\n```\nand\n```python\nb = 2\n```", "b = 2", None, 2, None),
    ("unclosed_fence", "```python\nfor i in range(2):\n    print(i)", "for i in range(2):\n    print(i)", None, 1,
     None),
    ("unlabelled_fence_is_not_code", "Output was:\n```\n42\n```", None, None, 0, "no ```python block and no answer"),
    ("answer_tag", "<answer>\\boxed{7}</answer>", None, "7", 0, None),
    ("answer_wins_over_code", "```python\nx = 1\n```\n<answer>7</answer>", None, "7", 1, None),
    ("final_boxed_line", "```python\nprint(1)\n```\nIt printed 1, so the answer is \\boxed{1}.\n\n", None, "1", 1,
     None),
    ("boxed_before_code_is_not_final", "Maybe \\boxed{3}? Check:\n```python\nprint(3)\n```", "print(3)", None, 1, None),
    ("boxed_inside_code_is_code", "```python\nprint('\\\\boxed{3}')\n```", "print('\\\\boxed{3}')", None, 1, None),
    ("empty_block", "```python\n```", None, None, 1, "the ```python block is empty"),
    ("neither", "Thinking...", None, None, 0, "no ```python block and no answer"),
]

TOOL_CALL_CASES = [
    ("plain", 'Run it.\n<tool_call>{"name": "python", "arguments": {"code": "print(1)"}}</tool_call>', "print(1)", None,
     1, None),
    ("arguments_as_json_string", '<tool_call>{"name": "python", "arguments": "{\\"code\\": \\"x = 1\\"}"}</tool_call>',
     "x = 1", None, 1, None),
    ("unclosed_tag", '<tool_call>\n{"name": "python", "arguments": {"code": "x = 1"}}\n', "x = 1", None, 1, None),
    ("raw_newlines_in_string", '<tool_call>{"name": "python", "arguments": {"code": "x = 1\nprint(x)"}}</tool_call>',
     "x = 1\nprint(x)", None, 1, None),
    ("json_in_fence", '<tool_call>\n```json\n{"name": "python", "arguments": {"code": "x = 1"}}\n```\n</tool_call>',
     "x = 1", None, 1, None),
    ("several_calls_last_runs",
     '<tool_call>{"name": "python", "arguments": {"code": "a = 1"}}</tool_call>'
     '<tool_call>{"name": "python", "arguments": {"code": "b = 2"}}</tool_call>', "b = 2", None, 2, None),
    ("case_insensitive_tags", '<TOOL_CALL>{"name": "python", "arguments": {"code": "x = 1"}}</Tool_Call>', "x = 1",
     None, 1, None),
    ("answer", "<answer>\\boxed{B}</answer>", None, "B", 0, None),
    ("answer_wins_over_call", '<tool_call>{"name": "python", "arguments": {"code": "x"}}</tool_call><answer>B</answer>',
     None, "B", 1, None),
    ("answer_tag_inside_call_is_code",
     '<tool_call>{"name": "python", "arguments": {"code": "print(\'<answer>1</answer>\')"}}</tool_call>',
     "print('<answer>1</answer>')", None, 1, None),
    ("malformed_json", '<tool_call>{"name": "python", "arguments": {"code": "x = 1"}</tool_call>', None, None, 1,
     "malformed tool call JSON: Expecting ',' delimiter (line 1, column 50)"),
    ("malformed_arguments_string", '<tool_call>{"name": "python", "arguments": "{code: 1}"}</tool_call>', None, None, 1,
     "malformed tool call arguments JSON string: Expecting property name enclosed in double quotes"),
    ("not_an_object", '<tool_call>["python", "x = 1"]</tool_call>', None, None, 1, "must be a JSON object"),
    ("unknown_tool", '<tool_call>{"name": "bash", "arguments": {"code": "ls"}}</tool_call>', None, None, 1,
     "unknown tool 'bash': the only tool is 'python'"),
    ("missing_code", '<tool_call>{"name": "python", "arguments": {"script": "x = 1"}}</tool_call>', None, None, 1,
     'need a non-empty "code" string'),
    ("empty_code", '<tool_call>{"name": "python", "arguments": {"code": "  "}}</tool_call>', None, None, 1,
     'need a non-empty "code" string'),
    ("fenced_code_is_not_a_call", "```python\nx = 1\n```", None, None, 0, "no <tool_call> and no <answer>"),
    ("neither", "Hmm.", None, None, 0, "no <tool_call> and no <answer>"),
]


def _check(parsed: ParsedTurn, code: str | None, answer: str | None, n_blocks: int, error: str | None) -> None:
    assert parsed.code == code
    assert parsed.answer == answer
    assert parsed.n_code_blocks == n_blocks
    if error is None:
        assert parsed.format_error is None
    else:
        assert parsed.format_error is not None and error in parsed.format_error
    # At most one of code and answer; a turn with neither says why.
    assert not (parsed.code is not None and parsed.answer is not None)
    assert (parsed.format_error is None) == (parsed.code is not None or parsed.answer is not None)


@pytest.mark.parametrize(("turn", "code", "answer", "n_blocks", "error"),
                         [case[1:] for case in PYVISION_CASES], ids=[case[0] for case in PYVISION_CASES])
def test_pyvision_parse(turn: str, code: str | None, answer: str | None, n_blocks: int, error: str | None) -> None:
    _check(PyVisionProtocol().parse(turn), code, answer, n_blocks, error)


@pytest.mark.parametrize(("turn", "code", "answer", "n_blocks", "error"),
                         [case[1:] for case in FENCED_CASES], ids=[case[0] for case in FENCED_CASES])
def test_fenced_parse(turn: str, code: str | None, answer: str | None, n_blocks: int, error: str | None) -> None:
    _check(FencedProtocol().parse(turn), code, answer, n_blocks, error)


@pytest.mark.parametrize(("turn", "code", "answer", "n_blocks", "error"),
                         [case[1:] for case in TOOL_CALL_CASES], ids=[case[0] for case in TOOL_CALL_CASES])
def test_tool_call_parse(turn: str, code: str | None, answer: str | None, n_blocks: int, error: str | None) -> None:
    _check(ToolCallProtocol().parse(turn), code, answer, n_blocks, error)


@pytest.mark.parametrize(("text", "expected"), [
    ("\\boxed{B}", "B"),
    ("The answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{1} or rather \\boxed{2}", "2"),
    ("\\boxed {x}", "x"),
    ("\\boxed{\\sqrt{2", "\\sqrt{2"),  # cut generation: the rest
    ("no box", "no box"),
    ("\\boxed without braces", "\\boxed without braces"),
])
def test_unwrap_boxed(text: str, expected: str) -> None:
    assert unwrap_boxed(text) == expected


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"stdout": ""}, "(no output)"),
    ({"stdout": " \n"}, "(no output)"),
    ({"stdout": "42\n"}, "42"),
    ({"stdout": "  indented\n"}, "  indented"),
    ({"stdout": "a\n", "stderr": "UserWarning: w\n"}, "a\nUserWarning: w"),
    ({"stdout": "a\n", "stderr": "w\n", "error": "Traceback ...\nNameError: x\n", "notes": ("1 frame(s) dropped",)},
     "a\nw\nTraceback ...\nNameError: x\nNote: 1 frame(s) dropped"),
    ({"stdout": "", "notes": ("output truncated",)}, "(no output)\nNote: output truncated"),
    ({"stdout": "", "timed_out": True}, "TimeoutError: the execution passed its deadline and was interrupted."),
    ({"stdout": "", "error": "TimeoutError: 5 s deadline", "timed_out": True}, "TimeoutError: 5 s deadline"),
])
def test_format_interpreter_text(kwargs: dict, expected: str) -> None:
    assert format_interpreter_text(**kwargs) == expected


@pytest.mark.parametrize(("name", "n_images", "first", "expected"), [
    ("pyvision", 0, 0, "<interpreter>\nText Result:\n42\n</interpreter>"),
    ("pyvision", 2, 1, "<interpreter>\nText Result:\n42\nImage Result:\n"
                       "<image_clue_1><image></image_clue_1><image_clue_2><image></image_clue_2>\n</interpreter>"),
    ("fenced", 0, 0, "Output:\n42"),
    ("fenced", 2, 5, "Output:\n42\nImages: <image><image>"),
    ("tool_call", 0, 0, "<tool_response>\n42\n</tool_response>"),
    ("tool_call", 1, 3, "<tool_response>\n42\n<image>\n</tool_response>"),
])
def test_format_observation(name: str, n_images: int, first: int, expected: str) -> None:
    assert get_protocol(name).format_observation("42", n_images, first_image_index=first) == expected


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_image_placeholder_is_used_once_per_image(name: str) -> None:
    protocol = get_protocol(name, image_placeholder="<|image_pad|>")
    assert protocol.image_placeholder == "<|image_pad|>"
    observation = protocol.format_observation("text", 3)
    assert observation.count("<|image_pad|>") == 3 and "<image>" not in observation
    assert "<|image_pad|>" not in protocol.format_observation("text", 0)


@pytest.mark.parametrize(("name", "stops", "hint_tag"), [
    ("pyvision", ("</code>",), "<code>"),
    ("pyvision_rl", ("</code>",), "<code>"),
    ("fenced", (), "```python"),
    ("tool_call", ("</tool_call>",), "<tool_call>"),
])
def test_stop_sequences_and_hint(name: str, stops: tuple[str, ...], hint_tag: str) -> None:
    protocol = get_protocol(name)
    assert protocol.stop_sequences == stops
    assert hint_tag in protocol.format_hint and "<answer>" in protocol.format_hint


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_generation_stopped_at_stop_sequence_still_runs(name: str) -> None:
    """Servers drop the stop string from the output by default; the turn must parse either way."""
    protocol = get_protocol(name)
    full = {"pyvision": code_turn("x = 1"), "pyvision_rl": code_turn("x = 1"), "fenced": "```python\nx = 1\n```",
            "tool_call": '<tool_call>{"name": "python", "arguments": {"code": "x = 1"}}</tool_call>'}[name]
    for stop in protocol.stop_sequences:
        assert full.endswith(stop)
        assert protocol.parse(full[: -len(stop)]).code == "x = 1"
    assert protocol.parse(full).code == "x = 1"


def test_format_error_observation() -> None:
    protocol = get_protocol("pyvision")
    observation = protocol.format_error_observation(protocol.parse("just words"))
    assert observation == ("<interpreter>\nText Result:\nFormat error: no <code> block and no <answer>. "
                           f"{protocol.format_hint}\n</interpreter>")
    with pytest.raises(ValueError, match="needs a turn with a format_error"):
        protocol.format_error_observation(protocol.parse("<answer>1</answer>"))


def test_default_protocol_is_pyvision() -> None:
    assert isinstance(get_protocol(), PyVisionProtocol)
    assert set(PROTOCOLS) == {"pyvision", "pyvision_rl", "fenced", "tool_call"}


def test_unknown_protocol_lists_known_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown protocol 'pyvison' \(did you mean 'pyvision'\?\); "
                                          r"known protocols: fenced, pyvision, pyvision_rl, tool_call"):
        get_protocol("pyvison")
    with pytest.raises(ConfigError, match="known protocols: fenced, pyvision, pyvision_rl, tool_call$"):
        get_protocol("xml")


def test_empty_image_placeholder_rejected() -> None:
    with pytest.raises(ConfigError, match="image_placeholder must be a non-empty string"):
        get_protocol("pyvision", image_placeholder="")


def test_parsed_turn_is_frozen() -> None:
    turn = ParsedTurn(code="x = 1", answer=None, n_code_blocks=1)
    with pytest.raises(AttributeError):
        turn.code = "y"  # type: ignore[misc]


# -- pyvision_rl: their parser and their replies ------------------------------------------------------

PYVISION_RL_CASES = [
    ("code", code_turn("x = 1"), "x = 1", None, 1, None),
    ("bare_fence_runs", "Run:\n```python\nprint(1)\n```", "print(1)", None, 1, None),
    ("closed_answer", "<answer>\n\\boxed{'B'}\n</answer>", None, "'B'", 0, None),
    ("unclosed_answer_is_no_answer", "<answer>\n\\boxed{'B'}", None, None, 0, "the <answer> is empty or not closed"),
    ("answer_wins", code_turn("x = 1") + "<answer>3</answer>", None, "3", 1, None),
    ("neither", "Hmm.", None, None, 0, "no <code> block and no <answer>"),
]


@pytest.mark.parametrize(("turn", "code", "answer", "n_blocks", "error"),
                         [case[1:] for case in PYVISION_RL_CASES], ids=[case[0] for case in PYVISION_RL_CASES])
def test_pyvision_rl_parse(turn: str, code: str | None, answer: str | None, n_blocks: int, error: str | None) -> None:
    _check(get_protocol("pyvision_rl").parse(turn), code, answer, n_blocks, error)


def _result(stdout: str = "", n_frames: int = 0, error: str | None = None, notes: tuple[str, ...] = ()):
    from pyvision_env.sandbox import ExecutionResult

    frames = tuple(np.zeros((2, 2, 3), np.uint8) for _ in range(n_frames))
    return ExecutionResult(stdout=stdout, stderr="ignored\n", error=error, exec_time_s=0.0, frames=frames, notes=notes)


@pytest.mark.parametrize(("modality", "result", "first", "expected"), [
    ("image", _result("  42\n"), 1,
     "<tool_response>\n<interpreter>\nText Result:\n42</interpreter>\n\n</tool_response>"),
    ("image", _result("", 2), 1, "<tool_response>\n<interpreter>Text Result:\n\nImage Result:\n<image_clue_1><image>"
                                 "</image_clue_1><image_clue_2><image></image_clue_2></interpreter>\n\n</tool_response>"),
    ("video", _result("30\n"), 0,
     "<tool_response>\n<interpreter>\nText Result:\n30\n</interpreter>\n\n</tool_response>"),
    ("video", _result("a\n", 1), 0, "<tool_response>\n<interpreter>\nText Result:\na\n\nImage Result:\n<image_clue_0>"
                                    "<image></image_clue_0></interpreter>\n\n</tool_response>"),
    ("image", _result("x", error="Traceback (most recent call last):\n  ...\nNameError: name 'y' is not defined\n"), 1,
     "<tool_response>\n<interpreter>Execution error: NameError: name 'y' is not defined</interpreter>\n\n"
     "</tool_response>"),
    ("image", _result("1", notes=("1 frame(s) dropped",)), 1,
     "<tool_response>\n<interpreter>\nText Result:\n1\nNote: 1 frame(s) dropped</interpreter>\n\n</tool_response>"),
])
def test_pyvision_rl_replies(modality: str, result, first: int, expected: str) -> None:
    assert get_protocol("pyvision_rl", modality=modality).format_result(result, first_image_index=first) == expected


def test_pyvision_rl_format_error_reply() -> None:
    protocol = get_protocol("pyvision_rl")
    assert protocol.format_error_observation(protocol.parse("words")) == (
        "<tool_response>\n<interpreter>Execution error: Format error: no <code> block and no <answer>. "
        f"{protocol.format_hint}</interpreter>\n\n</tool_response>")


# -- hostile text -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_observations_cannot_forge_image_placeholders(name: str) -> None:
    protocol = get_protocol(name)
    forged = "<image> <IMAGE> <|image_pad|> <|vision_start|> <|video_pad|> <image_clue_3></image_clue_3> <video>"
    observation = protocol.format_observation(forged, 2, first_image_index=1)
    assert observation.count("<image>") == 2  # exactly the two the dialect put there
    assert not any(tag in observation for tag in ("<IMAGE>", "<|image_pad|>", "<|vision_start|>", "<|video_pad|>",
                                                   "<video>", "<image_clue_3>"))
    assert "8 image tag(s) in this text were broken with a zero-width space" in observation
    error = protocol.format_error_observation(protocol.parse(
        '<tool_call>{"name": "<image>", "arguments": {"code": "x"}}</tool_call>' if name == "tool_call" else "<image>"))
    assert "<image>" not in error  # the model's own text comes back in format errors


def test_a_custom_placeholder_is_neutralised_too() -> None:
    protocol = get_protocol("pyvision", image_placeholder="[IMG]")
    observation = protocol.format_observation("[IMG][IMG]", 1)
    assert observation.count("[IMG]") == 1 and "2 image tag(s)" in observation


def test_surrogate_escapes_in_tool_call_json_are_replaced() -> None:
    parsed = get_protocol("tool_call").parse('<tool_call>{"name": "python", "arguments": {"code": '
                                             '"print(\\"\\udfff\\ud800\\")"}}</tool_call>')
    assert parsed.code == 'print("\ufffd\ufffd")'
    assert parsed.notes == ("the tool call's JSON decoded to 2 invalid Unicode character(s) (lone surrogates); "
                            "they were replaced by U+FFFD before the code ran",)
    parsed.code.encode("utf-8")  # what the sandbox's wire does with it


def _bench_parse():
    spec = importlib.util.spec_from_file_location("bench_parse", ROOT / "benchmarks" / "bench_parse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Pathological turns of 1 MB (the benchmark's): every dialect parses them in one pass. On a quadratic
# parser the first ones take minutes (an 80,000-character fence header took ~20 s); the timeout is
# generous for a noisy machine.
PATHOLOGICAL = _bench_parse().pathological_turns(1_000_000)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(PROTOCOLS))
@pytest.mark.parametrize("kind", sorted(PATHOLOGICAL))
def test_parsing_is_linear_on_pathological_turns(name: str, kind: str) -> None:
    parsed = get_protocol(name).parse(PATHOLOGICAL[kind])
    assert (parsed.format_error is None) == (parsed.code is not None or parsed.answer is not None)


def test_parse_benchmark_prints_every_dialect(tmp_path, capsys):
    out = tmp_path / "parse.json"
    assert _bench_parse().main(["--size", "20000", "--repeat", "2", "--baseline-size", "2000", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert set(figures["times_s"]) == set(PROTOCOLS) and figures["baseline"]["old_regex_s"] > 0
    printed = capsys.readouterr().out
    assert all(f" {name} " in printed for name in PROTOCOLS) and "0.2.0 regex" in printed


# The scanners agree with the patterns they replace (0.2.0's regexes, quadratic on long blank runs but
# exact), on random turns built from the pieces that matter.
_REFERENCE_FENCE = re.compile(r"```(?:[ \t]*([\w+.-]*)[ \t]*\n)?(.*?)(?:```|\Z)", re.DOTALL)
PIECES = ["<code>", "</code>", "<CODE>", "<answer>", "</Answer>", "<tool_call>", "</tool_call>", "```", "```python\n",
          "``` py \n", "```\t\n", " ", "\t", "\n", "x = 1", "`", "<", "/", "é", "_"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=30).map("".join), st.sampled_from(["code", "answer", "tool_call"]))
def test_scanners_agree_with_the_reference_patterns(turn: str, tag: str) -> None:
    from pyvision_env.protocol import _body, _fences, _tag_blocks

    assert [(f.label, _body(turn, f), f.start, f.end) for f in _fences(turn)] == [
        (m.group(1) or "", m.group(2), m.start(), m.end()) for m in _REFERENCE_FENCE.finditer(turn)]
    reference = re.compile(rf"<{tag}>(.*?)(?:</{tag}>|(?=<{tag}>)|\Z)", re.IGNORECASE | re.DOTALL)
    assert [(_body(turn, b), b.start, b.end) for b in _tag_blocks(turn, tag)] == [
        (m.group(1), m.start(), m.end()) for m in reference.finditer(turn)]
