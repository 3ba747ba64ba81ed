r"""Turn protocols: how a model's turn is read (code, answer or neither) and how the interpreter replies.

A dialect is a :class:`Protocol`; four are registered by name in :data:`PROTOCOLS`:

- ``pyvision`` (default): the PyVision format. Code sits in ``<code>`` + a fenced python block +
  ``</code>``, the answer in ``<answer>\boxed{...}</answer>``, and the interpreter replies inside
  ``<interpreter>`` ... ``</interpreter>``.
- ``pyvision_rl``: the same turns with the exact replies of the PyVision-RL training code
  (``<tool_response>`` wrapper, different for the image and the video env); the dialect of
  ``profile="pyvision_rl"``.
- ``fenced``: plain fenced python blocks are code; the answer is ``<answer>`` or a final ``\boxed{}`` line.
- ``tool_call``: Hermes/Qwen tool calls, ``<tool_call>{"name": "python", "arguments": {"code": ...}}
  </tool_call>``, answered inside ``<tool_response>`` ... ``</tool_response>``.

In every dialect an answer wins over code in the same turn (no code runs, as in PyVision), several code
blocks run only the last one, and a tag left open because generation stopped (at a stop sequence or
the token limit) runs to the end of the turn. A turn with neither runnable code nor an answer gets a
``format_error``; the env answers it with :meth:`Protocol.format_error_observation`, so the model
learns the format instead of being silently ignored.

Turns are hostile text. Parsing is linear in the length of the turn whatever it holds (tags and fences
are found by plain substring search, never by patterns that backtrack), and observations cannot forge
image placeholders: every text an observation wraps passes through :func:`neutralize_image_tags`.
"""

from __future__ import annotations

import bisect
import difflib
import json
import re
import textwrap
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

from .errors import ConfigError

if TYPE_CHECKING:
    from .sandbox import ExecutionResult

Modality = Literal["image", "video"]


@dataclass(frozen=True)
class ParsedTurn:
    """What one model turn asks for: code to run, a final answer, or (when malformed) neither."""

    code: str | None
    """The code to run: the last code block of the turn, dedented. None when the turn answers or is malformed."""
    answer: str | None
    r"""The final answer text with ``\boxed{...}`` unwrapped; it ends the episode. None when there is none."""
    n_code_blocks: int
    """How many code blocks the turn holds (only the last one runs, none when the turn answers)."""
    format_error: str | None = None
    """Why the turn has neither runnable code nor an answer, e.g. ``no <code> block and no <answer>``."""
    notes: tuple[str, ...] = ()
    """What parsing changed in the turn (invalid Unicode replaced); the observation repeats them."""


# -- hostile text -------------------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
# Image tags of the dialects and chat templates we know (<image>, <img>, <video>, <image_clue_3>,
# </image_clue_3>) and every special-token-shaped <|...|> string (<|image_pad|>, <|vision_start|>,
# <|im_end|>): tokenizers turn the latter into special tokens even inside plain text.
_IMAGE_TAG = re.compile(r"</?(?:image|img|video|vision)(?:_[a-z0-9_]*)?>|<\|[a-z0-9_]+\|>", re.IGNORECASE)
_ZWSP = "\u200b"


def replace_surrogates(text: str) -> tuple[str, int]:
    """``text`` with every surrogate code point (invalid Unicode, unencodable as UTF-8) replaced by
    U+FFFD, and how many there were."""
    return _SURROGATE.subn("\ufffd", text)


def neutralize_image_tags(text: str, placeholder: str = "<image>") -> tuple[str, int]:
    """``text`` with every image tag and placeholder broken by a zero-width space after its first
    character, and how many there were.

    Interpreter output is the model's code speaking: a printed ``<image>`` would otherwise stand for an
    image that is not there (``build_messages`` and the verl agent loop count placeholders against
    images), and a printed ``<|image_pad|>`` would become the special token. The text stays readable.
    """
    count = 0

    def broken(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return match.group(0)[0] + _ZWSP + match.group(0)[1:]

    text = _IMAGE_TAG.sub(broken, text)
    if placeholder in text:  # a custom placeholder the pattern does not cover
        count += text.count(placeholder)
        text = text.replace(placeholder, placeholder[0] + _ZWSP + placeholder[1:])
    return text, count


# -- linear-time scanning -----------------------------------------------------------------------------


class _Span(NamedTuple):
    """One tagged block or fence: ``text[start:end]`` is all of it, ``text[body_start:body_end]`` its content."""

    start: int
    body_start: int
    body_end: int
    end: int
    label: str = ""


def _tag_blocks(text: str, tag: str) -> list[_Span]:
    """The ``<tag>...</tag>`` blocks of ``text``, case-insensitive, in order. An unclosed one ends at the
    next opening tag or at the end of the text. One pass over the tag positions: linear."""
    opens = [m.start() for m in re.finditer(re.escape(f"<{tag}>"), text, re.IGNORECASE)]
    closes = [m.start() for m in re.finditer(re.escape(f"</{tag}>"), text, re.IGNORECASE)]
    n_open, n_close = len(tag) + 2, len(tag) + 3
    spans: list[_Span] = []
    i, pos = 0, 0
    while i < len(opens):
        if opens[i] < pos:
            i += 1
            continue
        start, body = opens[i], opens[i] + n_open
        nxt = bisect.bisect_left(opens, body, i + 1)
        close = closes[bisect.bisect_left(closes, body)] if closes and closes[-1] >= body else len(text) + 1
        following = opens[nxt] if nxt < len(opens) else len(text) + 1
        if close < following:
            spans.append(_Span(start, body, close, close + n_close))
            pos = close + n_close
        elif following <= len(text):
            spans.append(_Span(start, body, following, following))
            pos = following
        else:
            spans.append(_Span(start, body, len(text), len(text)))
            break
        i = nxt
    return spans


# Runs of one character class, matched at a given position: a single greedy class with nothing after it
# never backtracks, so each costs one pass in C.
_BLANKS = re.compile(r"[ \t]*")
_LABEL = re.compile(r"[\w+.-]*")


def _fences(text: str) -> list[_Span]:
    """The fenced blocks of ``text``: ``` then an optional label line (```python, ``` py ...), the
    content, then ``` or the end of the text (generation cut). The label only counts when a newline
    ends its line, so ```print(1)``` is code. The header is read as three separate runs (blanks, label,
    blanks): a long run of spaces or tabs costs one pass, not the quadratic backtracking that one
    pattern with two blank runs around an optional label spends on it."""
    spans: list[_Span] = []
    pos = 0
    while (start := text.find("```", pos)) >= 0:
        body, label = start + 3, ""
        j = _BLANKS.match(text, body).end()
        k = _LABEL.match(text, j).end()
        m = _BLANKS.match(text, k).end()
        if m < len(text) and text[m] == "\n":
            body, label = m + 1, text[j:k]
        close = text.find("```", body)
        if close < 0:
            spans.append(_Span(start, body, len(text), len(text), label))
            break
        spans.append(_Span(start, body, close, close + 3, label))
        pos = close + 3
    return spans


def _without(text: str, spans: Sequence[_Span]) -> str:
    """``text`` with the spans cut out."""
    pieces, pos = [], 0
    for span in spans:
        pieces.append(text[pos:span.start])
        pos = span.end
    pieces.append(text[pos:])
    return "".join(pieces)


def _body(text: str, span: _Span) -> str:
    return text[span.body_start:span.body_end]


_PYTHON_LABELS = frozenset({"python", "py", "python3"})


def _python_fences(text: str, fences: Sequence[_Span]) -> list[str]:
    """Contents of the ``fences`` of ``text`` labelled python, py or python3."""
    return [_body(text, f) for f in fences if f.label.lower() in _PYTHON_LABELS]


def _clean_code(code: str) -> str:
    return textwrap.dedent(code).strip("\n")


def unwrap_boxed(text: str) -> str:
    r"""Return the content of the last ``\boxed{...}`` in ``text`` (nested braces kept), else ``text``.

    An unclosed ``\boxed{`` (generation cut) yields everything after it, so a truncated answer still counts.
    """
    start = text.rfind("\\boxed")
    if start < 0:
        return text
    brace = text.find("{", start)
    if brace < 0 or text[start + len("\\boxed"):brace].strip():
        return text
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1:i]
    return text[brace + 1:]


def _answer_in(text: str, *, closed_only: bool = False) -> str | None:
    r"""The last ``<answer>`` of ``text`` with ``\boxed{}`` unwrapped, or None when there is none or it is
    empty. With ``closed_only`` an answer needs its ``</answer>``."""
    blocks = _tag_blocks(text, "answer")
    if closed_only:
        blocks = [b for b in blocks if b.end > b.body_end]
    answer = unwrap_boxed(_body(text, blocks[-1])).strip() if blocks else ""
    return answer or None


def _neither(n_code_blocks: int, reason: str) -> ParsedTurn:
    return ParsedTurn(code=None, answer=None, n_code_blocks=n_code_blocks, format_error=reason)


def format_interpreter_text(stdout: str, stderr: str = "", error: str | None = None, notes: Sequence[str] = (),
                            timed_out: bool = False) -> str:
    """Build the text part of an interpreter reply: stdout, stderr, the error, then one ``Note:`` line per note.

    The order is fixed so that equal results give equal observations (and equal tokens). Trailing
    whitespace is dropped; a run that printed nothing says ``(no output)`` so the model is not left
    guessing. ``error`` is the sandbox's traceback or timeout/crash message; ``timed_out`` adds a
    timeout line only when no error text describes the timeout already.
    """
    parts = [part.rstrip() for part in (stdout, stderr, error or "") if part.strip()]
    if timed_out and not error:
        parts.append("TimeoutError: the execution passed its deadline and was interrupted.")
    return "\n".join((parts or ["(no output)"]) + [f"Note: {note}" for note in notes])


class Protocol(ABC):
    """A dialect: how code and answers are written in a turn and how observations are written back.

    A dialect implements :meth:`parse` and :meth:`_layout` (where the text and the image placeholders go);
    :meth:`format_observation` neutralises the text first, so no dialect can let the code forge images.
    """

    name: str
    """The name the dialect is registered under in :data:`PROTOCOLS`."""
    stop_sequences: tuple[str, ...]
    """Strings at which generation should stop so the env can run the code (kept or not in the output)."""
    format_hint: str
    """A short instruction sent back (see :meth:`format_error_observation`) when a turn is malformed."""

    def __init__(self, image_placeholder: str = "<image>", modality: Modality = "image") -> None:
        if not image_placeholder:
            raise ConfigError("image_placeholder must be a non-empty string (e.g. '<image>')")
        if modality not in ("image", "video"):
            raise ConfigError(f"modality must be 'image' or 'video', got {modality!r}")
        self.image_placeholder = image_placeholder
        """The text standing for one image in observations; chat templates substitute the image for it."""
        self.modality = modality
        """The env the dialect serves (``pyvision_rl`` replies differ between the image and the video env)."""

    @abstractmethod
    def parse(self, turn: str) -> ParsedTurn:
        """Read one model turn."""

    @abstractmethod
    def _layout(self, text: str, n_images: int, first_image_index: int) -> str:
        """Wrap already neutralised ``text`` and ``n_images`` image placeholders in the dialect's reply."""

    def format_observation(self, text: str, n_images: int = 0, *, first_image_index: int = 0) -> str:
        """Wrap interpreter text and ``n_images`` image placeholders (one per new frame, in order).

        Image tags in ``text`` are neutralised first (with a note saying so). ``first_image_index``
        numbers the images where the dialect names them (the ``image_clue_k`` tags of ``pyvision``): it
        is the number of images the episode has shown before these.
        """
        return self._layout(self._neutral(text), n_images, first_image_index)

    def format_result(self, result: ExecutionResult, *, first_image_index: int = 0, notes: Sequence[str] = ()
                      ) -> str:
        """The observation of an execution: stdout, stderr, the error and the notes (the sandbox's, then
        ``notes``), then one placeholder per frame."""
        text = format_interpreter_text(result.stdout, result.stderr, result.error, (*result.notes, *notes),
                                       result.timed_out)
        return self.format_observation(text, len(result.frames), first_image_index=first_image_index)

    def format_error_observation(self, turn: ParsedTurn) -> str:
        """The observation answering a malformed turn: the reason, the dialect's :attr:`format_hint` and
        the turn's notes."""
        if turn.format_error is None:
            raise ValueError("format_error_observation() needs a turn with a format_error")
        notes = "".join(f"\nNote: {note}" for note in turn.notes)
        return self.format_observation(f"Format error: {turn.format_error}. {self.format_hint}{notes}")

    def _neutral(self, text: str) -> str:
        text, n = neutralize_image_tags(text, self.image_placeholder)
        if n:
            text += (f"\nNote: {n} image tag(s) in this text were broken with a zero-width space; only the "
                     f"images the code showed are images.")
        return text


class PyVisionProtocol(Protocol):
    r"""The PyVision format: ``<code>`` + fenced python + ``</code>``; ``<answer>\boxed{...}</answer>``.

    Lenient where the models slip without meaning anything else: case-insensitive tags, any fence label
    (or no fence at all) inside ``<code>``, unclosed tags, text around tags. Strict where leniency would
    teach the wrong format: a fenced python block without ``<code>`` tags does not run (PyVision-RL's
    training code ran it; the ``pyvision_rl`` dialect does) and an empty ``<answer>`` is no answer.

    Observation (one line per item; the ``Image Result:`` lines only when the code showed images)::

        <interpreter>
        Text Result:
        {text}
        Image Result:
        <image_clue_{k}>{image_placeholder}</image_clue_{k}><image_clue_{k+1}>...</image_clue_{k+1}>
        </interpreter>

    This is the text of PyVision's inference engine; ``k`` (``first_image_index``) continues the
    numbering of the input images ``image_clue_0`` ...
    """

    name = "pyvision"
    stop_sequences = ("</code>",)
    format_hint = ("Write Python code as <code>\n```python\n...\n```\n</code> to run it, "
                   "or give the final answer as <answer>\\boxed{...}</answer>.")
    _answer_needs_close = False
    _bare_fence_runs = False

    def parse(self, turn: str) -> ParsedTurn:
        blocks, fences = _tag_blocks(turn, "code"), _fences(turn)
        # Fences are removed before looking for <answer> so a tag printed by the code is not an answer.
        answer = _answer_in(_without(turn, fences), closed_only=self._answer_needs_close)
        if answer is not None:
            return ParsedTurn(code=None, answer=answer, n_code_blocks=len(blocks))
        if blocks:
            last = _body(turn, blocks[-1])
            inner = _fences(last)
            code = _clean_code(_body(last, inner[-1]) if inner else last)
            if not code.strip():
                return _neither(len(blocks), "the <code> block is empty")
            return ParsedTurn(code=code, answer=None, n_code_blocks=len(blocks))
        if python := _python_fences(turn, fences):
            if self._bare_fence_runs and (code := _clean_code(python[-1])).strip():
                return ParsedTurn(code=code, answer=None, n_code_blocks=len(python))
            return _neither(0, "a ```python block without <code> tags does not run")
        if _tag_blocks(turn, "answer"):
            return _neither(0, "the <answer> is empty or not closed" if self._answer_needs_close
                            else "the <answer> is empty")
        if "\\boxed" in turn:
            return _neither(0, "a \\boxed{} answer outside <answer> tags")
        return _neither(0, "no <code> block and no <answer>")

    def _layout(self, text: str, n_images: int, first_image_index: int) -> str:
        lines = ["<interpreter>", "Text Result:", text]
        if n_images:
            lines.append("Image Result:")
            lines.append(self._image_tags(n_images, first_image_index))
        lines.append("</interpreter>")
        return "\n".join(lines)

    def _image_tags(self, n_images: int, first: int) -> str:
        return "".join(f"<image_clue_{k}>{self.image_placeholder}</image_clue_{k}>"
                       for k in range(first, first + n_images))


class PyVisionRLProtocol(PyVisionProtocol):
    r"""The turns and replies of PyVision-RL's training code, exactly (``profile="pyvision_rl"``).

    Parsing follows theirs where it differs from ``pyvision``: the last closed ``<answer>...</answer>``
    wins, otherwise the last ``<code>`` block, otherwise the last bare ```` ```python ```` block runs.

    Replies, with ``out`` the stripped stdout (their runtime drops stderr; our notes follow it as
    ``Note:`` lines) and ``clues`` one ``<image_clue_k>{image_placeholder}</image_clue_k>`` per frame,
    ``k`` counting the episode's images from the input image's 0 (so from 1 in the image env and from
    0 in the video env, which has no input image)::

        image env, text only:  <tool_response>\n<interpreter>\nText Result:\n{out}</interpreter>\n\n</tool_response>
        image env, figures:    <tool_response>\n<interpreter>Text Result:\n{out}\nImage Result:\n{clues}</interpreter>\n\n</tool_response>
        video env, text only:  <tool_response>\n<interpreter>\nText Result:\n{out}\n</interpreter>\n\n</tool_response>
        video env, figures:    <tool_response>\n<interpreter>\nText Result:\n{out}\n\nImage Result:\n{clues}</interpreter>\n\n</tool_response>
        an error:              <tool_response>\n<interpreter>Execution error: {exception line}</interpreter>\n\n</tool_response>

    Under the profile an error or a malformed turn ends the episode (their ``ERROR_IN_ACTION``), so the
    model never sees that last reply; with ``end_on_error=False`` it does, and frames shown before the
    error follow it as ``clues`` (our addition: their runtime dropped them).
    """  # noqa: E501

    name = "pyvision_rl"
    _answer_needs_close = True
    _bare_fence_runs = True

    def format_result(self, result: ExecutionResult, *, first_image_index: int = 0, notes: Sequence[str] = ()
                      ) -> str:
        if result.ok:
            text = "\n".join([result.stdout.strip(), *(f"Note: {note}" for note in (*result.notes, *notes))])
            return self.format_observation(text, len(result.frames), first_image_index=first_image_index)
        error = self._neutral(f"Execution error: {_exception_line(result.error or 'the execution failed')}")
        clues = self._image_tags(len(result.frames), first_image_index)
        return f"<tool_response>\n<interpreter>{error}{clues}</interpreter>\n\n</tool_response>"

    def format_error_observation(self, turn: ParsedTurn) -> str:
        if turn.format_error is None:
            raise ValueError("format_error_observation() needs a turn with a format_error")
        error = self._neutral(f"Execution error: Format error: {turn.format_error}. {self.format_hint}")
        return f"<tool_response>\n<interpreter>{error}</interpreter>\n\n</tool_response>"

    def _layout(self, text: str, n_images: int, first_image_index: int) -> str:
        clues = self._image_tags(n_images, first_image_index)
        if self.modality == "video":
            body = (f"\nText Result:\n{text}\n\nImage Result:\n{clues}" if n_images
                    else f"\nText Result:\n{text}\n")
        else:
            body = f"Text Result:\n{text}\nImage Result:\n{clues}" if n_images else f"\nText Result:\n{text}"
        return f"<tool_response>\n<interpreter>{body}</interpreter>\n\n</tool_response>"


def _exception_line(error: str) -> str:
    """The last non-empty line of a traceback (``ZeroDivisionError: division by zero``): what ``str(e)``
    told PyVision-RL's runtime, with the exception's name."""
    return next((line.strip() for line in reversed(error.splitlines()) if line.strip()), error.strip())


class FencedProtocol(Protocol):
    r"""Plain markdown: a fenced block labelled python, py or python3 is code (the last one runs).

    The answer is ``<answer>...</answer>``, or a ``\boxed{}`` on the last non-empty line after the last
    code block. Unlabelled fences are not code: in prose they usually hold output or an answer. There is
    no stop sequence (a closing fence looks like an opening one), so generation runs to the end of the turn.

    Observation: ``Output:``, the text, and when the code showed images an ``Images:`` line with one
    placeholder per image::

        Output:
        {text}
        Images: {image_placeholder}{image_placeholder}
    """

    name = "fenced"
    stop_sequences = ()
    format_hint = ("Write Python code in a ```python fenced block to run it, or give the final answer as "
                   "<answer>...</answer> or as \\boxed{...} on the last line.")

    def parse(self, turn: str) -> ParsedTurn:
        fences = _fences(turn)
        blocks = _python_fences(turn, fences)
        answer = _answer_in(_without(turn, fences))
        if answer is None:
            tail = turn[fences[-1].end if fences else 0:]
            last_line = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
            if "\\boxed" in last_line:
                answer = unwrap_boxed(last_line).strip() or None
        if answer is not None:
            return ParsedTurn(code=None, answer=answer, n_code_blocks=len(blocks))
        if blocks:
            code = _clean_code(blocks[-1])
            if not code.strip():
                return _neither(len(blocks), "the ```python block is empty")
            return ParsedTurn(code=code, answer=None, n_code_blocks=len(blocks))
        return _neither(0, "no ```python block and no answer")

    def _layout(self, text: str, n_images: int, first_image_index: int) -> str:
        lines = ["Output:", text]
        if n_images:
            lines.append("Images: " + self.image_placeholder * n_images)
        return "\n".join(lines)


class ToolCallProtocol(Protocol):
    """Hermes/Qwen tool calls: ``<tool_call>{"name": "python", "arguments": {"code": "..."}}</tool_call>``.

    ``arguments`` may also be a JSON string holding that object (as in OpenAI's wire format), the JSON
    may sit in a fenced block, and raw newlines inside its strings are accepted (models often write code
    that way). Malformed JSON is a format error that names the JSON error, so the
    model can fix its call. The answer is ``<answer>...</answer>`` outside the tool calls. A ``\\ud800``
    escape in the JSON decodes to invalid Unicode: it is replaced by U+FFFD, with a note.

    Observation (the image line only when the code showed images)::

        <tool_response>
        {text}
        {image_placeholder}{image_placeholder}
        </tool_response>
    """

    name = "tool_call"
    tool_name = "python"
    stop_sequences = ("</tool_call>",)
    format_hint = ('Run Python code with <tool_call>{"name": "python", "arguments": {"code": "..."}}</tool_call>, '
                   "or give the final answer as <answer>...</answer>.")

    def parse(self, turn: str) -> ParsedTurn:
        calls = _tag_blocks(turn, "tool_call")
        answer = _answer_in(_without(turn, calls))
        if answer is not None:
            return ParsedTurn(code=None, answer=answer, n_code_blocks=len(calls))
        if not calls:
            return _neither(0, "no <tool_call> and no <answer>")
        code, error = self._code_of(_body(turn, calls[-1]))
        if code is None:
            return _neither(len(calls), error or "")
        code, n_bad = replace_surrogates(code)
        notes = (f"the tool call's JSON decoded to {n_bad} invalid Unicode character(s) (lone surrogates); "
                 f"they were replaced by U+FFFD before the code ran",) if n_bad else ()
        return ParsedTurn(code=code, answer=None, n_code_blocks=len(calls), notes=notes)

    def _code_of(self, call: str) -> tuple[str | None, str | None]:
        """The code of one tool call, or why it cannot run."""
        fences = _fences(call)
        try:
            payload = json.loads(_body(call, fences[-1]) if fences else call, strict=False)
        except json.JSONDecodeError as exc:
            return None, f"malformed tool call JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        if not isinstance(payload, dict):
            return None, 'the tool call must be a JSON object with "name" and "arguments"'
        if payload.get("name") != self.tool_name:
            return None, f"unknown tool {payload.get('name')!r}: the only tool is {self.tool_name!r}"
        arguments = payload.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments, strict=False)
            except json.JSONDecodeError as exc:
                return None, f"malformed tool call arguments JSON string: {exc.msg} (column {exc.colno})"
        code = arguments.get("code") if isinstance(arguments, dict) else None
        if not isinstance(code, str) or not code.strip():
            return None, 'the tool call arguments need a non-empty "code" string'
        return _clean_code(code), None

    def _layout(self, text: str, n_images: int, first_image_index: int) -> str:
        lines = ["<tool_response>", text]
        if n_images:
            lines.append(self.image_placeholder * n_images)
        lines.append("</tool_response>")
        return "\n".join(lines)


PROTOCOLS: dict[str, type[Protocol]] = {
    cls.name: cls for cls in (PyVisionProtocol, PyVisionRLProtocol, FencedProtocol, ToolCallProtocol)
}
"""The dialects by name; ``pyvision`` is the default."""


def get_protocol(name: str = "pyvision", *, image_placeholder: str = "<image>", modality: Modality = "image"
                 ) -> Protocol:
    """The dialect registered as ``name``; an unknown name raises :class:`ConfigError` listing the known ones."""
    try:
        cls = PROTOCOLS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), PROTOCOLS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown protocol {name!r}{hint}; known protocols: {', '.join(sorted(PROTOCOLS))}") from None
    return cls(image_placeholder=image_placeholder, modality=modality)


__all__ = [
    "PROTOCOLS",
    "FencedProtocol",
    "Modality",
    "ParsedTurn",
    "Protocol",
    "PyVisionProtocol",
    "PyVisionRLProtocol",
    "ToolCallProtocol",
    "format_interpreter_text",
    "get_protocol",
    "neutralize_image_tags",
    "replace_surrogates",
    "unwrap_boxed",
]
