"""The ``pyvision`` command. One subcommand per job; each parser is built by its own small function so
that further subcommands (demo, eval, view) slot in without touching the others."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .policies import POLICY_KINDS


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run the repository's benchmarks: through gym.make (image and video envs), "
                       "then the sandbox layer alone", description="Run benchmarks/bench_env.py (what a user's "
                       "gym.make loop gets) and then benchmarks/bench_sandbox.py (the sandbox layer alone) from a "
                       "source checkout, and print their tables with the targets.")
    p.add_argument("--quick", action="store_true", help="small time budgets (a few minutes)")
    p.add_argument("--repeat", type=int, metavar="N", help="run every measurement exactly N times "
                   "(overrides the time budgets; for smoke tests)")
    p.add_argument("--with-baselines", action="store_true", help="also measure the alternatives of "
                   "benchmarks/_baselines.py (Jupyter, python -c, PyVision-RL style)")
    p.add_argument("--json", metavar="OUT", help="write every number of both benchmarks to this JSON file")
    p.set_defaults(func=_run_bench)


_SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout, for an editable or source install


def _run_bench(args: argparse.Namespace) -> int:
    import importlib
    import sys

    if args.repeat is not None and args.repeat < 1:
        raise SystemExit("pyvision bench: --repeat must be at least 1")
    folder = next((root / "benchmarks" for root in (_SOURCE_ROOT, Path.cwd())
                   if (root / "benchmarks" / "bench_env.py").is_file()), None)
    if folder is None:
        print("pyvision bench: the benchmarks live in the repository's benchmarks/ folder, which a wheel does not "
              "install; run it from a source checkout: git clone <the PyVision repository> pyvision && cd pyvision "
              "&& pip install -e '.[dev,video]' && pyvision bench", file=sys.stderr)
        return 2
    sys.path.insert(0, str(folder))  # as `python benchmarks/bench_env.py` finds its modules
    reports = {name: importlib.import_module(name).run(quick=args.quick, repeat=args.repeat,
                                                       baselines=args.with_baselines)
               for name in ("bench_env", "bench_sandbox")}
    if args.json:
        importlib.import_module("_common").write_json(args.json, reports)
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="play a few synthetic image and video episodes offline",
                       description="Run built-in synthetic image and video tasks end to end with the scripted "
                       "policy and print each turn, the frames, the reward and the visual tokens.")
    p.add_argument("--episodes", type=int, default=3, metavar="N", help="episodes per environment (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (default 0)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from . import demo

    if args.episodes < 1:
        raise SystemExit("pyvision demo: --episodes must be at least 1")
    summaries = demo.run(episodes_per_env=args.episodes, seed=args.seed)
    return 0 if all(s["accuracy"] == 1.0 for s in summaries) else 1


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="run a policy on tasks concurrently; write trajectories and a summary",
                       description="Play every task with a policy, many episodes at once, and write "
                       "OUT/trajectories.jsonl (one record per episode), frames under OUT/frames and "
                       "OUT/summary.json. Running again with the same --out resumes: finished episodes are kept.")
    p.add_argument("--env", required=True, metavar="ID", help="PyVisionImage-v0 or PyVisionVideo-v0")
    p.add_argument("--tasks", default="synthetic", metavar="FILE", help="JSONL/JSON/parquet task file, a benchmark "
                   "directory or a synthetic suite name (default: synthetic)")
    p.add_argument("--policy", required=True, choices=POLICY_KINDS, help="who plays the turns")
    p.add_argument("--model", help="model name (openai, vllm) or path/id (transformers, vllm)")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 "
                   "(key: $OPENAI_API_KEY)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--concurrency", type=int, default=8, metavar="N", help="episodes at once (default 8)")
    p.add_argument("--samples", type=int, default=1, metavar="K", help="episodes per task (default 1)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N tasks")
    p.add_argument("--max-turns", type=int, metavar="N", help="model turns per episode (env default: 10)")
    p.add_argument("--temperature", type=float, help="sampling temperature (policy default)")
    p.add_argument("--top-p", type=float, help="nucleus sampling (policy default)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="tokens per model turn (policy default)")
    p.add_argument("--env-config", default="{}", metavar="JSON", help="more env settings as a JSON object, "
                   'e.g. \'{"exec_timeout_s": 10, "profile": "pyvision_rl"}\'')
    p.add_argument("--policy-config", default="{}", metavar="JSON", help="more policy constructor arguments as a "
                   'JSON object, e.g. \'{"engine_kwargs": {"max_model_len": 8192}}\' for vllm or '
                   '\'{"timeout_s": 300}\' for openai')
    p.add_argument("--sandbox-backend", choices=("local", "ray"), help="where the code runs: local (this machine, "
                   "the default) or ray (the nodes of the running Ray cluster: RAY_ADDRESS or a local `ray start`)")
    p.add_argument("--no-frames", action="store_true", help="do not save frames as files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    import json
    import sys
    from collections import Counter

    import gymnasium as gym

    from pyvision_env.errors import PyVisionError

    from .policies import make_policy
    from .rollout import TRAJECTORIES, read_records, rollout
    from .summary import FAILED_END_REASONS, format_table, summarize

    for name in ("concurrency", "samples", "limit", "max_turns", "max_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"pyvision eval: --{name.replace('_', '-')} must be at least 1, got {value}")
    env_kwargs, policy_options = _json_object(args.env_config, "--env-config"), _json_object(args.policy_config,
                                                                                             "--policy-config")
    env_kwargs["tasks"] = args.tasks
    if args.max_turns is not None:
        env_kwargs["max_turns"] = args.max_turns
    if args.sandbox_backend is not None:
        env_kwargs["sandbox_backend"] = args.sandbox_backend
    sampling = {k: v for k, v in (("temperature", args.temperature), ("top_p", args.top_p),
                                  ("max_tokens", args.max_tokens)) if v is not None}
    try:
        policy = make_policy(args.policy, model=args.model, base_url=args.base_url, concurrency=args.concurrency,
                             options=policy_options, **sampling)
        try:
            records = rollout(args.env, policy, env_kwargs=env_kwargs, limit=args.limit, samples=args.samples,
                              concurrency=args.concurrency, out_dir=args.out, save_frames=not args.no_frames,
                              progress=not args.quiet)
        finally:
            policy.close()
    except (PyVisionError, gym.error.Error, ValueError, TypeError, OSError) as exc:
        raise SystemExit(f"pyvision eval: {exc}") from None
    out = Path(args.out)
    run = read_records(out / TRAJECTORIES)  # summary.json describes the directory, as the viewer shows it
    summary = summarize(run)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_table(summary))
    extra = f" ({len(run) - len(records)} more than this command asked for)" if len(run) > len(records) else ""
    print(f"\n{len(run)} episodes in {out}/{TRAJECTORIES}{extra}; summary in {out}/summary.json; "
          f"see them with: pyvision view {out}")
    failed = [r for r in records if r.get("end_reason") in FAILED_END_REASONS]
    if failed:
        causes = Counter(str(r.get("error") or r.get("end_reason")).splitlines()[-1][:200] for r in failed)
        print(f"\npyvision eval: {len(failed)} of {len(records)} episodes failed and were not judged "
              f"(running the same command again retries them):\n"
              + "\n".join(f"  {n} x {cause}" for n, cause in causes.most_common(5)), file=sys.stderr)
    return 1 if records and len(failed) == len(records) else 0


def _json_object(text: str, flag: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"pyvision eval: {flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"pyvision eval: {flag} must be a JSON object")
    return value


def _add_view(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help="write a self-contained HTML page of a run, or of several runs compared",
                       description="Write one HTML file that opens in any browser, offline: the summary, charts of "
                       "tool calls, turns, visual tokens, accuracy by tool calls, end reasons and data sources, "
                       "then every episode (frames inline, code highlighted, outputs, rewards). Several "
                       "directories (checkpoints of a training run, two models) are compared side by side.")
    p.add_argument("run_dirs", nargs="+", metavar="DIR", help="output directories of pyvision eval")
    p.add_argument("--out", metavar="FILE", help="where to write the page (default DIR/index.html for one run, "
                   "compare.html for several)")
    p.set_defaults(func=_run_view)


def _run_view(args: argparse.Namespace) -> int:
    from .viewer import write_html

    try:
        path = write_html(args.run_dirs, args.out)
    except FileNotFoundError as exc:
        raise SystemExit(f"pyvision view: {exc}") from None
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); open {path.resolve().as_uri()} in a browser")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyvision`` console script; returns the exit status."""
    from pyvision_env import __version__

    parser = argparse.ArgumentParser(prog="pyvision", description="PyVision: Gymnasium environments for "
                                     "vision models that use Python code as their tool.")
    parser.add_argument("--version", action="version", version=f"pyvision {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_eval(sub)
    _add_view(sub)
    _add_bench(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
