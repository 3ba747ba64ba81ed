"""``benchmarks/bench_env.py`` end to end with its alternatives, every measurement twice, a 4-second video.

Asserts the shape of the report (rows, alternatives, targets, JSON), never a time.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_env  # noqa: E402
import bench_video  # noqa: E402

NUMBER = re.compile(r"^\d[\d,]*\.?\d* ?(ms|s)$")
RATIO = re.compile(r"^\d[\d,.]*x$")


def test_bench_env_measures_ours_beside_jupyter_and_pyvision_rl(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    out = tmp_path / "env.json"
    assert bench_env.main(["--repeat", "2", "--video-seconds", "4", "--json", str(out)]) == 0
    text = capsys.readouterr().out

    report = json.loads(out.read_text())
    assert report["errors"] == {}
    assert list(report["results"]) == ["ours", "pyvision-rl", "jupyter"]  # python -c has no episode to reset
    for name, rows in report["results"].items():
        assert list(rows) == [key for key, _, _ in bench_env.IMAGE_ROWS], name
        assert all(s["n"] == 2 and s["p50"] > 0 and s["unit"] == "ms" for s in rows.values()), name
    assert {key for _, key, _, _ in bench_video.ROWS} <= set(report["video"])
    assert report["video"]["ours group"]["n"] == 2 and report["video"]["ours reset"]["n"] == 8  # 4 x --repeat
    assert report["video"]["ours reset paced"]["n"] == 2
    video_targets = [t["target"] for t in bench_video.targets(report["video"])]
    image_targets = [label for label, _, _ in bench_env.IMAGE_TARGETS]
    assert [t["target"] for t in report["targets"]] == image_targets + video_targets
    assert all(isinstance(t["met"], bool) and t["value"] > 0 for t in report["targets"])
    assert set(report["load_average_1min"]) == {"ours image", "pyvision-rl", "jupyter", "ours video", "end"}
    assert "4 s 640x480" in report["media"] and report["isolation"].startswith("network=")

    lines = text.splitlines()
    head = lines.index("| measurement | ours p50 | ours p99 | pyvision-rl p50 | ratio (alt/ours) | jupyter p50 | "
                       "ratio (alt/ours) |")
    for line, (_, label, _) in zip(lines[head + 2:head + 5], bench_env.IMAGE_ROWS):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == label
        assert all(NUMBER.match(c) for c in cells[1:4] + cells[5:6]), cells
        assert RATIO.match(cells[4]) and RATIO.match(cells[6]), cells
    assert "### PyVisionVideo-v0" in text
    assert len(re.findall(r"^  (MET   |MISSED)  ", text, re.M)) == len(report["targets"])
