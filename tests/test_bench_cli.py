"""``pyvision bench`` end to end, ours only, with every measurement repeated twice: it runs the repository's
``benchmarks/bench_env.py`` and then ``benchmarks/bench_sandbox.py``, and says what to do where there is no
``benchmarks/`` folder (a wheel install).

Asserts the shape of the report (rows, numbers, JSON), never how fast anything is: timings belong in the
benchmark's output, not in pass/fail.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from pyvision_agent import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _common  # noqa: E402
import bench_env  # noqa: E402
import bench_sandbox  # noqa: E402
import bench_video  # noqa: E402

NUMBER = re.compile(r"^(\d[\d,]*\.?\d*(e[+-]\d+)?) ?(ms|s|MB|/s)$")


def table_rows(text: str) -> dict[str, list[str]]:
    """Every markdown table row of ``text`` but the header: first cell -> the other cells."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| measurement"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_pyvision_bench_runs_the_env_then_the_sandbox_benchmark(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    out_json = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--repeat", "2", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out

    env_part, sandbox_part = text.split("## The sandbox layer alone")
    assert "## Through gym.make and the public API: what a user's loop gets" in env_part
    env_rows, sandbox_rows = table_rows(env_part), table_rows(sandbox_part)
    assert sorted(env_rows) == sorted([label for _, label, _ in bench_env.IMAGE_ROWS]
                                      + [row[0].strip() for row in bench_video.ROWS])
    expected = [label for _, label, _ in bench_sandbox.ROWS]
    expected += [f"throughput: {kind}, N={n}" for n in (1, 8, 32) for kind in ("episodes/s", "steps/s")]
    assert sorted(sandbox_rows) == sorted(expected)
    for label, cells in {**env_rows, **sandbox_rows}.items():
        assert NUMBER.match(cells[0]), (label, cells)  # ours p50
        assert label.startswith("throughput") or NUMBER.match(cells[1]), (label, cells)  # ours p99
    assert all(len(sandbox_rows[label]) == 2 for label in expected)  # ours only: no alternatives' columns
    for part in (env_part, sandbox_part):
        assert re.search(r"machine: \d+ CPUs", part) and re.search(r"1-min load average .*end \d", part)
        assert "our isolation: network=" in part
        assert "NOT MEASURED" not in part
    n_targets = len(bench_env.IMAGE_TARGETS) + 3 + len(bench_sandbox.TARGETS)  # 3 video targets
    assert len(re.findall(r"^  (MET   |MISSED)  ", text, re.M)) == n_targets  # no Jupyter: no reset-ratio target
    assert "LEFTOVER" not in text

    report = json.loads(out_json.read_text())
    assert list(report) == ["bench_env", "bench_sandbox"]
    env, sandbox = report["bench_env"], report["bench_sandbox"]
    assert list(env["results"]) == ["ours"] and list(sandbox["results"]) == ["ours"]
    assert {key: s["n"] for key, s in env["results"]["ours"].items()} == {"reset": 2, "x = 1": 2, "frame": 2}
    assert env["video"]["ours group"]["n"] == 2 and env["video"]["decord group"]["n"] == 2
    assert sandbox["results"]["ours"]["x = 1"]["n"] == 2 and sandbox["results"]["ours"]["x = 1"]["unit"] == "ms"
    assert all(isinstance(s["p50"], float) and s["p50"] > 0 for s in sandbox["results"]["ours"].values())
    assert all(isinstance(t["met"], bool) for t in env["targets"])
    assert sandbox["leftover_processes"] == []


def test_pyvision_bench_without_a_benchmarks_folder_says_to_use_a_source_checkout(
        capsys: pytest.CaptureFixture[str], tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_SOURCE_ROOT", tmp_path)  # where a wheel puts the package: no benchmarks/ beside it
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--quick"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "source checkout" in captured.err and "git clone" in captured.err and "pip install -e" in captured.err


def test_cli_requires_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_stats_median_p99_and_never() -> None:
    s = _common.stats([1.0, 2.0, 3.0, 4.0])
    assert s["p50"] == 2.5 and s["n"] == 4 and 3.9 < s["p99"] <= 4.0
    assert _common.stats([float("inf")])["p50"] == float("inf")
