"""The rollout throughput benchmark runs end to end and reports every level beside the sync loop."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_rollout", ROOT / "benchmarks" / "bench_rollout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rollout_benchmark_reports_each_level(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert _bench().main(["--env", "video", "--levels", "1", "3", "--repeat", "2", "--min-episodes", "3",
                          "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["case"] for r in rows] == ["sync gym loop", "rollout c=1", "rollout c=3"]
    assert [r["episodes"] for r in rows] == [3, 3, 6]
    for r in rows:
        assert len(r["runs_episodes_per_s"]) == 2 and r["episodes_per_s"] > 0
        assert r["steps_per_s"] >= r["episodes_per_s"]
        assert r["latency_p99_s"] >= r["latency_p50_s"] > 0
    assert rows[0]["vs_sync_loop"] == 1.0 and 0 < rows[1]["sandbox_share"] < 1
    table = capsys.readouterr().out
    assert table.count("| PyVisionVideo-v0 |") == 3 and "vs sync loop" in table
