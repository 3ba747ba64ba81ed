"""The judges against a conformance table of answer styles (tests/data/judge_conformance.tsv), and
property tests: a right answer written in any supported style scores 1, a different value scores 0.

Each table row is judged the way the env judges a task: the row becomes a task (its options written
into the question as the benchmark writes them, ``answer_type`` left out where the row leaves it out,
so inference decides as it does for PyVision-RL's rows), then ``Task.judge``. Expected scores were
written down per style, never computed by the judges.
"""

from __future__ import annotations

import csv
import json
import string
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvision_env.rewards import MRA_THRESHOLDS, judge, mra_score
from pyvision_env.tasks import to_task

TABLE = Path(__file__).with_name("data") / "judge_conformance.tsv"
with TABLE.open(encoding="utf-8", newline="") as f:
    ROWS = list(csv.DictReader(f, delimiter="\t"))

# V* Bench writes "(A) red"; HR-Bench, VSI-Bench and MathVista write "A. red"
_OPTION_STYLE = {"vstar": "({letter}) {text}", "traps": "({letter}) {text}"}


def row_task(row: dict[str, str]):
    question = "Which option is right?"
    if row["options"]:
        style = _OPTION_STYLE.get(row["bench"], "{letter}. {text}")
        question += "\n" + "\n".join(style.format(letter=letter, text=text)
                                     for letter, text in zip(string.ascii_uppercase, row["options"].split("|")))
    return to_task({"question": question, "answer": row["answer"], "answer_type": row["answer_type"] or None,
                    "data_source": row["data_source"] or "unknown",
                    "judge_options": json.loads(row["judge_options"]) if row["judge_options"] else {}})


def test_the_table_covers_every_benchmark_style():
    counts = Counter(row["bench"] for row in ROWS)
    assert len(ROWS) >= 300
    assert {"vstar", "hrbench", "vsibench", "mathvista", "freetext", "traps"} <= set(counts)
    assert sum(row["answer_type"] == "" for row in ROWS) >= 100  # rows that rely on inference, as theirs do


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['bench']}-{i}" for i, r in enumerate(ROWS)])
def test_conformance_row(row):
    task = row_task(row)
    assert task.judge(row["prediction"]) == pytest.approx(float(row["expected"])), row["note"]


def test_inference_is_reported_and_an_explicit_type_wins():
    vstar = row_task({"bench": "vstar", "options": "silk|cotton", "answer": "B", "answer_type": "",
                      "data_source": "vstar", "judge_options": ""})
    assert (vstar.answer_type, vstar.choices) == ("choice", ["silk", "cotton"])
    assert vstar.metadata["inferred"] == {"answer_type": "choice", "why": "the answer is a single option letter",
                                          "choices": "listed in the question"}
    vsi = to_task({"question": "How many?", "answer": "3.0", "data_source": "vsi_numerical"})
    assert vsi.answer_type == "mra" and "vsi_numerical" in vsi.metadata["inferred"]["why"]
    assert to_task({"question": "q", "answer": "42"}).answer_type == "number"
    assert to_task({"question": "q", "answer": "a red car"}).answer_type == "text"
    explicit = to_task({"question": "q", "answer": "42", "answer_type": "text"})
    assert explicit.answer_type == "text" and "inferred" not in explicit.metadata


# -- properties ---------------------------------------------------------------------------------------

LETTER_STYLES = ["{L}", "({L})", "{L}.", "{L})", "{l}", "'{L}'", "\\boxed{{{L}}}", "\\boxed{{'{L}'}}",
                 "Answer: {L}", "The answer is {L}.", "The correct option is ({L}).", "{L}. {text}", "({L}) {text}",
                 "{text}", "**{L}**", "option {l}", "\\text{{{L}}}"]

words = st.text(alphabet=string.ascii_lowercase, min_size=3, max_size=8).filter(
    lambda w: w not in {"the", "and", "answer", "option", "choice"})


@st.composite
def option_lists(draw):
    texts = draw(st.lists(words, min_size=2, max_size=8, unique=True))
    return texts, draw(st.integers(0, len(texts) - 1)), draw(st.integers(0, len(texts) - 1))


@settings(max_examples=200, deadline=None)
@given(option_lists(), st.sampled_from(LETTER_STYLES), st.booleans())
def test_a_right_letter_in_any_style_scores_1_and_another_scores_0(options, style, listed_in_question):
    texts, right, other = options
    question = "Pick one.\n" + "\n".join(f"({letter}) {t}" for letter, t in zip(string.ascii_uppercase, texts))
    task = to_task({"question": question, "answer": string.ascii_uppercase[right],
                    **({} if listed_in_question else {"answer_type": "choice", "choices": texts})})

    def written(k: int) -> str:
        letter = string.ascii_uppercase[k]
        return style.format(L=letter, l=letter.lower(), text=texts[k])

    assert task.judge(written(right)) == 1.0
    if other != right:
        assert task.judge(written(other)) == 0.0


NUMBER_STYLES = ["{v}", "{v}.0", "\\boxed{{{v}}}", "{v:,}", "{v} cm", "The answer is {v}.", "{v}e0", "x = {v}"]


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**15, 10**15), st.sampled_from(NUMBER_STYLES), st.integers(-10**15, 10**15).filter(bool))
def test_an_integer_in_any_style_is_exact(value, style, delta):
    assert judge(style.format(v=value), str(value), "number") == 1.0
    assert judge(style.format(v=value + delta), str(value), "number") == 0.0


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**9, 10**9).filter(lambda n: n % 10), st.integers(1, 6), st.integers(1, 10**6))
def test_a_decimal_matches_itself_and_its_fraction_but_not_a_rounding(numerator, places, delta):
    value = Fraction(numerator, 10**places)
    text = f"{float(value):.{places}f}"
    assert judge(text, text, "number") == 1.0
    assert judge(f"{value.numerator}/{value.denominator}", text, "number") == 1.0
    assert judge(f"{float(value) * (1 + 1e-14):.17g}", text, "number") == 1.0  # float noise
    different = value + Fraction(delta, 10**places)
    assert judge(f"{float(different):.{places}f}", text, "number") == 0.0


@settings(max_examples=200, deadline=None)
@given(st.lists(words, min_size=1, max_size=4), st.sampled_from(["{t}", "The {t}.", "{T}!", "  {t}  ", "\\text{{{t}}}",
                                                                  "'{t}'"]), words)
def test_text_matches_after_normalisation_and_a_different_word_does_not(answer_words, style, other):
    answer = " ".join(answer_words)
    assert judge(style.format(t=answer, T=answer.upper()), answer, "text") == 1.0
    if other not in answer_words:
        assert judge(style.format(t=other, T=other.upper()), answer, "text") == 0.0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**6), st.integers(0, 150))
def test_mra_counts_the_thresholds_the_relative_error_clears(answer, error_percent):
    predicted = answer * (100 + error_percent) / 100
    margins = [round(1 - t, 2) for t in MRA_THRESHOLDS]
    expected = sum(Fraction(error_percent, 100) < Fraction(m).limit_denominator(100) for m in margins) / 10
    assert mra_score(predicted, answer) == pytest.approx(expected, abs=0.1 + 1e-9)  # float edges at a margin
    assert judge(str(answer), str(answer), "mra") == 1.0


# -- hostile predictions ------------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("answer_type, prediction, expected", [
    ("choice", "answer" + " " * 200_000 + "B", 1.0),
    ("choice", "answer" + " " * 200_000 + ":" + " " * 200_000 + "(", 0.0),
    ("choice", "answer " * 100_000, 0.0),
    ("choice", "(B) " * 100_000, 0.0),
    ("number", "3" * 5000, 0.0),
    ("number", "1e999999999", 0.0),
    ("number", "1," * 200_000, 0.0),
    ("text", " " * 1_000_000, 0.0),
    ("mra", "9" * 100_000, 0.0),
])
def test_long_and_hostile_predictions_are_judged_quickly(answer_type, prediction, expected):
    """Predictions are model text: each judge is linear in its length (the timeout is generous)."""
    assert judge(prediction, "3" if answer_type in ("number", "mra") else "B", answer_type) == expected
