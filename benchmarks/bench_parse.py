"""Parse time of pathological turns, per dialect: turn parsing must stay linear whatever the model writes.

    python benchmarks/bench_parse.py                    # 1 MB turns, median of 5 runs each
    python benchmarks/bench_parse.py --size 200000 --repeat 9 --json parse.json

Each turn is ``--size`` characters of one pathological pattern (long runs of spaces or tabs after a
fence, backticks, unclosed tags, thousands of blocks...). The table gives the median parse time per
dialect and pattern, and the worst pattern per dialect. Side by side in the same run, at a small size
(``--baseline-size``) because it is quadratic: the fence regex the parser used before (0.2.0), on a
fence header of spaces, against ours on the same turn.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyvision_env.protocol import PROTOCOLS, get_protocol  # noqa: E402

_CODE_TURN = "<code>\n```python\nx = 1\n```\n</code>"
_TOOL_CALL = '<tool_call>{"name": "python", "arguments": {"code": "x"}}</tool_call>'
_OLD_FENCE = re.compile(r"```(?:[ \t]*([\w+.-]*)[ \t]*\n)?(.*?)(?:```|\Z)", re.DOTALL)  # 0.2.0's


def pathological_turns(size: int) -> dict[str, str]:
    """Turns of about ``size`` characters that a backtracking parser spends quadratic time on (or that
    hold very many blocks)."""
    return {
        "spaces_after_fence": "```" + " " * size,
        "tabs_after_fence": "```\t" + "\t" * size + "x",
        "spaces_label_spaces": "<code>```" + " " * (size // 2) + "python" + " " * (size // 2),
        "backticks": "`" * size,
        "fence_pairs": "```\n" * (size // 4),
        "unclosed_code_tags": "<code>" * (size // 6),
        "unclosed_answer_tags": "<answer>" * (size // 8),
        "unclosed_tool_calls": "<tool_call>" * (size // 11),
        "thousands_of_blocks": _CODE_TURN * (size // len(_CODE_TURN)),
        "tool_calls": _TOOL_CALL * (size // len(_TOOL_CALL)),
        "code_with_spaces": "<code>\n```python\n" + " " * size + "\n```\n</code>",
        "boxed_braces": "<answer>\\boxed{" + "{" * size,
    }


def _median_s(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse_times(size: int = 1_000_000, repeat: int = 5) -> dict[str, dict[str, float]]:
    """Median parse seconds per dialect and pattern: ``{dialect: {pattern: seconds}}``."""
    turns = pathological_turns(size)
    times: dict[str, dict[str, float]] = {}
    for name in sorted(PROTOCOLS):
        parse = get_protocol(name).parse
        times[name] = {kind: _median_s(lambda t=turn, p=parse: p(t), repeat) for kind, turn in turns.items()}
    return times


def baseline(size: int, repeat: int) -> dict[str, float]:
    """The 0.2.0 fence regex and ours on one ``size``-character fence header of spaces (median seconds)."""
    turn = "```" + " " * size
    protocol = get_protocol("fenced")
    return {"old_regex_s": _median_s(lambda: list(_OLD_FENCE.finditer(turn)), repeat),
            "ours_s": _median_s(lambda: protocol.parse(turn), repeat)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="characters per turn (default 1 MB)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement; the median is shown")
    parser.add_argument("--baseline-size", type=int, default=20_000,
                        help="fence header length for the quadratic 0.2.0 regex (default 20,000)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    times = parse_times(args.size, args.repeat)
    kinds = list(next(iter(times.values())))
    print(f"parse time of {args.size:,}-character pathological turns, median of {args.repeat} runs (ms)\n")
    print("| pattern | " + " | ".join(times) + " |")
    print("|---|" + "---|" * len(times))
    for kind in kinds:
        print(f"| {kind} | " + " | ".join(f"{times[name][kind] * 1e3:.1f}" for name in times) + " |")
    print("| **worst** | " + " | ".join(f"**{max(t.values()) * 1e3:.1f}**" for t in times.values()) + " |")
    side = baseline(args.baseline_size, args.repeat)
    print(f"\n{args.baseline_size:,}-space fence header: 0.2.0 regex {side['old_regex_s'] * 1e3:.1f} ms, ours "
          f"{side['ours_s'] * 1e3:.2f} ms (ratio {side['old_regex_s'] / max(side['ours_s'], 1e-9):,.0f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "repeat": args.repeat, "times_s": times,
                                               "baseline": {"size": args.baseline_size, **side}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
