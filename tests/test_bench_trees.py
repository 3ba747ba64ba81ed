"""``benchmarks/bench_trees.py``: two source trees' resets side by side (here the same tree twice).

Asserts the shape of the report (every loop, every round, both trees, JSON), never a time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_trees  # noqa: E402


def test_bench_trees_runs_every_loop_on_both_trees(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    out = tmp_path / "trees.json"
    assert bench_trees.main([str(ROOT), str(ROOT), "--rounds", "2", "--episodes", "3", "--video-seconds", "4",
                             "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "ms |" in line]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [name for name, *_ in bench_trees.LOOPS]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {name for name, *_ in bench_trees.LOOPS}
    for by_tree in report["results"].values():
        assert all(len(by_tree[tree]) == 2 and all(v > 0 for v in by_tree[tree]) for tree in ("before", "after"))


def test_bench_trees_refuses_a_folder_that_is_not_a_source_tree(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_trees.main([str(tmp_path), str(ROOT)])
    assert exc.value.code == 2 and "not a source tree" in capsys.readouterr().err
