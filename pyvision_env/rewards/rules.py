r"""Rule judges, one per answer type, and the inference of a task's answer type.

``judge(prediction, answer, answer_type, **opts)`` dispatches on the task's ``answer_type``:

- ``choice``: an option letter in any usual form (``B``, ``(B)``, ``B.``, ``'B'``, ``B. cotton``,
  ``Answer: B``, ``option b``) or, when the options are known, the option's text; a prediction naming
  several letters is wrong (no credit for hedging).
- ``number``: exact. Integers compare exactly, other numbers within a tiny relative tolerance
  (:data:`FLOAT_REL_TOL`, float noise only); ``rel_tol``/``abs_tol`` give a task a real tolerance.
  Reads ``1,234.5``, ``12%`` (also ``0.12``), ``3/4``, ``\frac{3}{4}``, ``-2e3``, ``12 cm``.
- ``mra``: VSI-Bench's mean relative accuracy, a score in [0, 1]; ``binary=True`` gives 1.0 when the
  score is at least :data:`RIGHT_THRESHOLD` (0.5).
- ``text``: exact match after SQuAD normalisation; a one-letter answer compares as an option letter
  (the article rule of the normalisation would otherwise erase ``A``).
- ``math``: equivalence by ``math-verify`` (symbolic and numeric).

Judges never see the whole turn: the protocol has already taken the answer out of ``<answer>`` and
unwrapped its ``\boxed{}``. Every pattern here is linear in the length of its input (no nested or
adjacent unbounded quantifiers over the same characters), because predictions are model text.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import string
import threading
import unicodedata
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from ..errors import ConfigError
from ..protocol import unwrap_boxed

logger = logging.getLogger(__name__)

RIGHT_THRESHOLD = 0.5
"""An accuracy at or above this is a right answer: it earns the tool reward (and MRA's binary form pays 1)."""

MRA_THRESHOLDS = (0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95)
"""VSI-Bench's confidence thresholds: a prediction hits threshold t when its relative error is below 1 - t."""

FLOAT_REL_TOL = 1e-12
"""The relative tolerance of :func:`judge_number` for an answer that is not an integer: float noise
(``0.30000000000000004`` for ``0.3``), not rounding (``0.33`` is not ``1/3``)."""

_MRA_MARGINS = tuple(round(1 - t, 2) for t in MRA_THRESHOLDS)  # rounded so 1 - 0.9 is exactly 0.1


def is_right(accuracy: float) -> bool:
    """Whether an accuracy counts as a right answer (it earns the tool reward)."""
    return accuracy >= RIGHT_THRESHOLD


# -- text helpers --------------------------------------------------------------------------------------

_LATEX_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf)\s*\{([^{}]*)\}")
_QUOTES = {"'": "'", '"': '"', "‘": "’", "“": "”", "`": "`"}


def _clean(prediction: str) -> str:
    r"""Strip the wrapping models put around a short answer: ``\boxed{}``, ``\text{}``, bold, backticks,
    ``$`` and quotes (their prompt shows ``\boxed{'...'}``, so models copy the quotes)."""
    text = _LATEX_TEXT.sub(r"\1", unwrap_boxed(prediction)).replace("**", "").strip().strip("`$").strip()
    while len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


def normalize_text(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower()
                   if ch not in string.punctuation and not unicodedata.category(ch).startswith("P"))
    return " ".join(re.sub(r"\b(?:a|an|the)\b", " ", text).split())


def judge_text(prediction: str, answer: str) -> float:
    """1.0 when the normalised prediction equals the normalised answer (see :func:`normalize_text`).

    A one-letter answer (``A``, ``(b)``) is an option letter: it is judged by :func:`judge_choice`.
    """
    if _LONE_LETTER.fullmatch(_clean(answer)):
        return judge_choice(prediction, answer)
    normalized = normalize_text(_clean(prediction))
    return float(bool(normalized) and normalized == normalize_text(answer))


# -- multiple choice -----------------------------------------------------------------------------------

# "The final answer is: option", repeated ("Answer: the answer is B"); each round eats a keyword, so the
# repetition cannot backtrack over the same characters.
_CHOICE_PREFIX = re.compile(r"(?:(?:the\s+)?(?:(?:final|correct|best)\s+)?(?:answer|option|choice)\b"
                            r"(?:\s+is\b)?\s*(?:[:：]\s*)?)+", re.IGNORECASE)
_LONE_LETTER = re.compile(r"\(?([A-Za-z])\)?[.:)]?")
# "B. cotton", "(B) cotton", "B) cotton": a leading letter then its option's text.
_LEADING_LETTER = re.compile(r"(?:\(([A-Za-z])\)|([A-Z])[.:)])\s*(.*)", re.DOTALL)
# Another option marker after a leading letter ("(A) (B)", "A. or B.") makes the prediction a hedge.
_OPTION_MARK = re.compile(r"\([A-Za-z]\)|(?<![\w'’])[A-Z][.:)](?!\w)")
# "the answer is B", "option (b)": a letter the text names as the answer.
_NAMED_LETTER = re.compile(r"(?i:\b(?:answer(?:\s+is\b)?|option|choice)\s*(?:[:：]\s*)?)\(?([A-Za-z])\)?(?![\w'’])")
# "(b)" or a capital letter standing alone ("B", "B." but not the "I" of "I'm").
_BARE_LETTER = re.compile(r"\(([A-Za-z])\)|(?<![\w'’])([A-Z])(?![\w'’])")
# An option line of a question: "(A) red", "A. red", "A) red", "A: red".
_OPTION_LINE = re.compile(r"[ \t]*(?:\(([A-Z])\)|([A-Z])[.):])[ \t]*(\S.*)")


def options_in_question(question: str) -> list[str] | None:
    """The option texts a question lists one per line from ``A`` on (``(A) red``, ``B. blue``), or None.

    At least two options in letter order are needed, so a sentence that happens to start with
    ``A.`` is not taken for an option list.
    """
    options: list[str] = []
    for line in question.splitlines():
        m = _OPTION_LINE.fullmatch(line)
        if m is None:
            continue
        letter = m.group(1) or m.group(2)
        if letter == "A":
            options = []
        if len(options) < len(string.ascii_uppercase) and letter == string.ascii_uppercase[len(options)]:
            options.append(m.group(3).strip())
    return options if len(options) >= 2 else None


def _choice_by_text(text: str, choices: Sequence[str]) -> str | None:
    """The letter of the one option whose text equals ``text`` (normalised), else None."""
    wanted = normalize_text(text)
    matches = [letter for letter, choice in zip(string.ascii_uppercase, choices) if normalize_text(choice) == wanted]
    return matches[0] if len(matches) == 1 and wanted else None


def _choice_letter(text: str, choices: Sequence[str] | None) -> str | None:
    """The option letter ``text`` names, or None when it names none, several, or one out of range."""
    allowed = set(string.ascii_uppercase[:len(choices)] if choices else string.ascii_uppercase)
    text = _clean(text)
    if m := _CHOICE_PREFIX.match(text):
        text = _clean(text[m.end():])
    if m := _LONE_LETTER.fullmatch(text):
        letter = m.group(1).upper()
        return letter if letter in allowed else None
    if m := _LEADING_LETTER.fullmatch(text):
        letter, rest = (m.group(1) or m.group(2)).upper(), m.group(3)
        named = _choice_by_text(rest, choices) if choices else None
        # the text, when it names an option, must agree, and must not mark another option
        consistent = named in (None, letter) and not _OPTION_MARK.search(rest)
        return letter if consistent and letter in allowed else None
    if choices and (letter := _choice_by_text(text, choices)):
        return letter
    named_letters = {m.group(1).upper() for m in _NAMED_LETTER.finditer(text)} & allowed
    bare = {(m.group(1) or m.group(2)).upper() for m in _BARE_LETTER.finditer(text)} & allowed
    letters = named_letters or bare
    return letters.pop() if len(letters) == 1 else None


def judge_choice(prediction: str, answer: str, *, choices: Sequence[str] | None = None) -> float:
    """1.0 when the prediction names the answer's option.

    ``answer`` is a letter or, with ``choices`` (option texts for A, B, C, ...), an option's text. The
    prediction may be a letter in any usual form, a letter followed by its option's text, or the
    option's exact text (normalised). A prediction naming several letters ("A or B") is wrong; without
    ``choices`` every capital letter standing alone is a candidate, so "I think B" is ambiguous while
    "I think the answer is B" is not.
    """
    expected = _choice_letter(answer, choices)
    if expected is None:
        normalized = normalize_text(_clean(prediction))
        return float(bool(normalized) and normalized == normalize_text(answer))
    return float(_choice_letter(prediction, choices) == expected)


# -- numbers -------------------------------------------------------------------------------------------

_NUMBER = re.compile(
    r"(?P<num>[-+\u2212]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?)"
    r"(?:[ \t]*/[ \t]*(?P<den>\d+(?:\.\d+)?))?(?P<pct>[ \t]*%)?"
)
_MAX_EXPONENT = 400
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")


def _parse_exact(text: str, *, whole: bool = False) -> tuple[Fraction, bool] | None:
    r"""The first number in ``text`` as an exact fraction and whether it is a percentage, or None.

    Reads ``1,234.5``, ``-2e3``, ``3/4``, ``\frac{3}{4}``, ``12%`` and a number followed by a unit.
    With ``whole`` the text must be the number and nothing else.
    """
    text = _LATEX_FRAC.sub(r"\1/\2", text).replace("\\%", "%").replace("{,}", ",")
    m = _NUMBER.fullmatch(text.strip()) if whole else _NUMBER.search(text)
    if m is None:
        return None
    number = m.group("num").replace(",", "").replace("\u2212", "-")
    exponent = number.lower().partition("e")[2].lstrip("+-")
    if len(exponent) > 3 or (exponent and int(exponent) > _MAX_EXPONENT):
        return None  # 1e999999999 is no answer, and its exact value would take minutes to build
    try:
        value = Fraction(number)
        if m.group("den") is not None:
            denominator = Fraction(m.group("den"))
            if denominator == 0:
                return None
            value /= denominator
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return None
    return value, m.group("pct") is not None


def parse_number(text: str) -> float | None:
    """The first number in ``text`` as written (``12%`` is 12.0), or None when there is none."""
    parsed = _parse_exact(text)
    if parsed is None:
        return None
    try:
        return float(parsed[0])
    except OverflowError:
        return math.copysign(math.inf, parsed[0])


def _answer_number(answer: str, answer_type: str) -> tuple[Fraction, bool]:
    parsed = _parse_exact(answer)
    if parsed is None:
        raise ConfigError(f"the answer {answer!r} of a {answer_type!r} task is not a number")
    return parsed


def judge_number(prediction: str, answer: str, *, rel_tol: float | None = None, abs_tol: float | None = None
                 ) -> float:
    """1.0 when the prediction's first number equals the answer's.

    Without a tolerance an integer answer needs the exact integer (``599`` is not ``600``) and any other
    answer agrees within :data:`FLOAT_REL_TOL` of itself. A task that accepts more passes ``rel_tol``
    and/or ``abs_tol``: then ``|p - a| <= max(rel_tol * |a|, abs_tol)``, the tolerance relative to the
    answer. A percentage also matches its fraction (``12%`` matches ``0.12`` and ``12``) because models
    and datasets write both.
    """
    for name, tol in (("rel_tol", rel_tol), ("abs_tol", abs_tol)):
        if tol is not None and not tol >= 0:
            raise ConfigError(f"{name} must be >= 0, got {tol}")
    expected = _answer_number(answer, "number")
    predicted = _parse_exact(_clean(prediction))
    if predicted is None:
        return 0.0

    def values(parsed: tuple[Fraction, bool]) -> tuple[Fraction, ...]:
        return (parsed[0], parsed[0] / 100) if parsed[1] else (parsed[0],)

    def agrees(p: Fraction, g: Fraction) -> bool:
        if rel_tol is None and abs_tol is None:
            return p == g if g.denominator == 1 else abs(p - g) <= FLOAT_REL_TOL * abs(g)
        return abs(p - g) <= max(Fraction(rel_tol or 0) * abs(g), Fraction(abs_tol or 0))

    return float(any(agrees(p, g) for p in values(predicted) for g in values(expected)))


def mra_score(prediction: float, answer: float) -> float:
    """VSI-Bench's mean relative accuracy: the share of :data:`MRA_THRESHOLDS` t with ``|p - a| / |a| < 1 - t``.

    An answer of 0 has no relative error: the score is 1.0 for an exact 0 and 0.0 otherwise (as in
    PyVision-RL).
    """
    if answer == 0:
        return float(prediction == 0)
    relative_error = abs(prediction - answer) / abs(answer)
    return sum(relative_error < margin for margin in _MRA_MARGINS) / len(_MRA_MARGINS)


def judge_mra(prediction: str, answer: str, *, binary: bool = False) -> float:
    """:func:`mra_score` of the first numbers of prediction and answer; with ``binary``, 1.0 if it is >= 0.5.

    The graded score is VSI-Bench's metric and what PyVision-RL pays; the env's ``mra_reward`` picks
    the form the reward uses (:func:`accuracy_of`).
    """
    expected = float(_answer_number(answer, "mra")[0])
    predicted = parse_number(_clean(prediction))
    score = 0.0 if predicted is None else mra_score(predicted, expected)
    return float(is_right(score)) if binary else score


# -- math ----------------------------------------------------------------------------------------------


def _as_latex(text: str) -> str:
    """Put bare text in ``$...$`` so math-verify reads it as LaTeX rather than hunting for a last number."""
    return text if "$" in text or "\\boxed" in text else f"${text}$"


def _normalize_math(text: str) -> str:
    return re.sub(r"\s+|\$", "", text)


def judge_math(prediction: str, answer: str) -> float:
    """1.0 when math-verify finds the prediction equivalent to the answer (``1/2`` = ``\\frac{1}{2}`` = 0.5).

    math-verify's timeouts use ``signal.alarm``, which only the main thread may set: elsewhere (rollout
    threads) it runs without a timeout. If the library raises, a whitespace-insensitive string match decides.
    """
    try:
        from math_verify import parse, verify

        timeout = 5 if threading.current_thread() is threading.main_thread() else None
        gold = parse(_as_latex(answer), parsing_timeout=timeout)
        predicted = parse(_as_latex(prediction), parsing_timeout=timeout)
        return float(verify(gold, predicted, timeout_seconds=timeout))
    except Exception:  # the library's own failure must not lose the episode's reward
        logger.debug("math-verify failed on %r vs %r; using string match", prediction, answer, exc_info=True)
        return float(_normalize_math(prediction) == _normalize_math(answer) != "")


# -- dispatch ------------------------------------------------------------------------------------------

_JUDGES: dict[str, Callable[..., float]] = {
    "choice": judge_choice,
    "number": judge_number,
    "mra": judge_mra,
    "text": judge_text,
    "math": judge_math,
}
ANSWER_TYPES = tuple(_JUDGES)
"""The answer types :func:`judge` knows."""


def judge_options(answer_type: str) -> tuple[str, ...]:
    """The keyword options the judge of ``answer_type`` accepts; ConfigError for an unknown type."""
    try:
        judge_fn = _JUDGES[answer_type]
    except KeyError:
        raise ConfigError(f"unknown answer_type {answer_type!r}; known: {', '.join(ANSWER_TYPES)}") from None
    return tuple(name for name, p in inspect.signature(judge_fn).parameters.items() if p.kind is p.KEYWORD_ONLY)


def check_judge_options(answer_type: str, opts: dict[str, Any]) -> None:
    """Raise ConfigError naming any option the judge of ``answer_type`` does not accept."""
    accepted = judge_options(answer_type)
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for answer_type {answer_type!r}; "
                          f"accepted: {', '.join(accepted) or 'none'}")


def judge(prediction: str | None, answer: str, answer_type: str, **opts: Any) -> float:
    """Score a prediction against the answer with the judge for ``answer_type``.

    Returns 0.0 or 1.0, or a score in [0, 1] for ``mra``. ``prediction`` None (no answer) scores 0.0.
    ``opts`` go to the judge: ``choices`` (choice), ``rel_tol``/``abs_tol`` (number), ``binary`` (mra).
    An unknown answer type or option raises :class:`ConfigError` naming the accepted ones.
    """
    check_judge_options(answer_type, opts)
    return 0.0 if prediction is None else _JUDGES[answer_type](prediction, answer, **opts)


def accuracy_of(score: float | None, answer_type: str, mra_reward: str = "binary") -> float:
    """The accuracy term of the reward from a judge's score: the score itself (0 or 1), except for a
    graded ``mra`` score under ``mra_reward="binary"``, which pays 1.0 from :data:`RIGHT_THRESHOLD` on.

    ``mra_reward="graded"`` pays the MRA score as it is, as PyVision-RL does.
    """
    if mra_reward not in ("graded", "binary"):
        raise ConfigError(f"mra_reward must be 'graded' or 'binary', got {mra_reward!r}")
    if score is None:
        return 0.0
    if answer_type == "mra" and mra_reward == "graded":
        return float(score)
    return float(is_right(score))


# -- answer type inference -----------------------------------------------------------------------------

VSI_NUMERICAL_SOURCES = frozenset({"vsi_numerical"})
"""``data_source`` values of PyVision-RL's VSI-Bench numerical rows, judged by mean relative accuracy."""


def infer_answer_type(answer: str | None, data_source: str | None = None) -> tuple[str, str]:
    """The answer type of a row that names none, and why (the rule that decided).

    In order: a VSI-Bench numerical source (``vsi_numerical``) is ``mra``; a single option letter
    (``B``, ``(B)``, ``B.``; with or without the options listed in the question) is ``choice``; an
    answer that is a plain number (``42``, ``-1.5``, ``3/4``, ``12%``) is ``number``; the rest is
    ``text``. A row without an answer is ``text``.
    """
    if answer is None:
        return "text", "the task has no answer"
    if data_source in VSI_NUMERICAL_SOURCES:
        return "mra", f"data_source {data_source!r} is a VSI-Bench numerical source"
    stripped = answer.strip()
    if (m := _LONE_LETTER.fullmatch(stripped)) and m.group(1).isupper():
        return "choice", "the answer is a single option letter"
    if _parse_exact(stripped, whole=True) is not None:
        return "number", "the answer is a plain number"
    return "text", "the answer is neither an option letter nor a plain number"


__all__ = [
    "ANSWER_TYPES",
    "FLOAT_REL_TOL",
    "MRA_THRESHOLDS",
    "RIGHT_THRESHOLD",
    "VSI_NUMERICAL_SOURCES",
    "accuracy_of",
    "check_judge_options",
    "infer_answer_type",
    "is_right",
    "judge",
    "judge_choice",
    "judge_math",
    "judge_mra",
    "judge_number",
    "judge_options",
    "judge_text",
    "mra_score",
    "normalize_text",
    "options_in_question",
    "parse_number",
]
