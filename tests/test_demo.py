"""``pyvision demo`` plays real episodes (sandbox, decoders, judges) with the scripted policy."""

from __future__ import annotations

from pyvision_agent.cli import main


def test_demo_command_solves_every_episode(capsys):
    assert main(["demo", "--episodes", "2", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("=== PyVisionImage-v0") == 2 and out.count("=== PyVisionVideo-v0") == 2
    assert "4/4 answered right" in out and "uniform sampling would cost" in out
    assert "isolation: network=" in out


def test_demo_rejects_bad_arguments():
    import pytest

    with pytest.raises(SystemExit, match="at least 1"):
        main(["demo", "--episodes", "0"])


def test_demo_cuts_long_lines_at_a_word_with_an_ellipsis():
    from pyvision_agent.demo import _clip, _indent

    line = "A red square appears in this video for about one second. At which second does it appear?"
    assert _clip(line, 40) == "A red square appears in this video for…"
    assert _clip("x" * 50, 10) == "xxxxxxxxx…"  # one long word: cut inside it, still marked
    assert _clip(line, 200) == line
    shown = _indent(line + " Answer with the whole number of seconds.", width=40, lines=12, wrap=True)
    assert shown.split() == (line + " Answer with the whole number of seconds.").split()  # questions: whole


def test_demo_questions_are_shown_whole(capsys):
    assert main(["demo", "--episodes", "3", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    # seed 2 of the video env asks a long question (more than one line): every word of it is printed
    assert "At which second does it appear? Answer with\n    the whole number of seconds" in out
