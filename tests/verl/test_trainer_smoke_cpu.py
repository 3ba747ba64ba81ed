"""Two GRPO steps of the image recipe through verl's own trainer, on this CPU: ``recipes/image/run_smoke_cpu.sh``.

The run is real end to end (``verl.trainer.main_ppo`` with the recipe's config, Ray, FSDP2 on gloo, the
reference and actor engines, ``PyVisionAgentLoop`` with real sandboxed episodes, ``compute_score``,
``PyVisionGroupSampler``, the weight sync to the rollout) except for one stand-in: the rollout is served
by our ``transformers_cpu`` server (transformers ``generate``) instead of vLLM, which cannot serve a
vision-language model on this machine. What only a GPU run shows is in ``recipes/image/README.md``.

The checks tie what verl reports to what happened: the sampler's dump (every trajectory of the step with
its group's fate), the rollout server's log (every request with the weights that served it) and verl's
own dump of the trained batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "recipes" / "image" / "run_smoke_cpu.sh"
STEPS = 2
pytestmark = pytest.mark.timeout(1800)  # the run takes minutes; the fixture counts against the first test

GROUP_SIZE = 4  # actor_rollout_ref.rollout.n in the script
BATCH_GROUPS = 2  # data.train_batch_size in the script


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The script run once (a few minutes): its output, metrics per step, sampler dumps, served requests."""
    out = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "DATA": str(out / "data"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    # its own session, so that nothing of the run (Ray's processes included) outlives the test
    proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=1500)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    metrics = {record["step"]: record["data"] for record in _lines(out / "metrics.jsonl")}
    return {"stdout": done.stdout + done.stderr, "metrics": metrics, "served": _lines(out / "served.jsonl"),
            "dumps": {step: _lines(out / "groups" / f"step_{step}.jsonl") for step in metrics},
            "trained": {step: _lines(out / "rollouts" / f"{step}.jsonl") for step in metrics}}


def test_two_grpo_steps_run_and_print_pyvision_metrics_with_transformers_cpu_rollout(run: dict[str, Any]) -> None:
    assert sorted(run["metrics"]) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert f"step:{step} - " in run["stdout"]
        assert "training/pyvision/groups/kept" in run["metrics"][step]
    assert "training/pyvision/tool_calls/mean:" in run["stdout"]


def test_metrics_match_the_trajectories(run: dict[str, Any]) -> None:
    for step, metrics in run["metrics"].items():
        trajectories = run["dumps"][step]
        fate = {t["uid"]: t["group"] for t in trajectories}
        groups = Counter(fate.values())
        assert metrics["training/pyvision/groups/total"] == len(fate)
        assert metrics["training/pyvision/groups/kept"] + metrics["training/pyvision/padded_zero_variance"] \
            == groups["kept"] == BATCH_GROUPS
        # zero-variance groups padding a short batch count as filtered in the metrics and as kept in the dump
        padded = int(metrics["training/pyvision/padded_zero_variance"])
        for reason, extra in (("broken", 0), ("zero_variance", padded), ("over_budget", 0)):
            assert metrics[f"training/pyvision/filtered/{reason}/share"] == pytest.approx(
                (groups[reason] + extra) / len(fate))
        extra = [t["extra_fields"] for t in trajectories]
        assert metrics["training/pyvision/tool_calls/mean"] == pytest.approx(
            sum(e["n_tool_calls"] for e in extra) / len(extra))
        assert metrics["training/pyvision/tool_calls/max"] == max(e["n_tool_calls"] for e in extra)
        assert metrics["training/pyvision/reward/mean"] == pytest.approx(
            sum(t["reward"] for t in trajectories) / len(trajectories), abs=1e-6)
        # verl's own score metrics are over the trained batch: the kept groups' trajectories
        kept = [t["reward"] for t in trajectories if t["group"] == "kept"]
        assert metrics["critic/score/mean"] == pytest.approx(sum(kept) / len(kept), abs=1e-6)
        # the reward is compute_score's: accuracy plus 0.1 per tool call when the answer is right
        for t, e in zip(trajectories, extra):
            expected = e["accuracy"] + 0.1 * e["n_tool_calls"] if e["accuracy"] == 1.0 else e["accuracy"]
            if not e["broken"] and not e["malformed"]:
                assert t["reward"] == pytest.approx(expected, abs=1e-6), t["key"]
    rewards = {round(t["reward"], 3) for dump in run["dumps"].values() for t in dump}
    assert any(r > 1.0 for r in rewards) and 0.0 in rewards, f"the run needs right and wrong answers, got {rewards}"


def test_sampler_keeps_whole_groups_and_the_trainer_trains_them(run: dict[str, Any]) -> None:
    for step, trajectories in run["dumps"].items():
        sessions = defaultdict(set)
        for t in trajectories:
            sessions[t["uid"]].add(t["session"])
        assert all(s == set(range(GROUP_SIZE)) for s in sessions.values()), sessions
        kept = {t["uid"] for t in trajectories if t["group"] == "kept"}
        trained = Counter(record["uid"].rsplit("_", 2)[0] for record in run["trained"][step])
        assert trained == {uid: GROUP_SIZE for uid in kept}
        dropped = {t["uid"] for t in trajectories} - kept
        assert dropped, "the run should exercise the filter (the smoke model breaks some groups)"


def test_response_mask_covers_exactly_the_served_model_tokens(run: dict[str, Any]) -> None:
    """Every run of mask 1 is one served completion, requested with exactly the tokens before it; every
    served completion of a trajectory is in its response under mask 1."""
    served = defaultdict(list)
    for request in run["served"]:
        served[tuple(request["prompt_ids"])].append(request["token_ids"])
    checked_turns = 0
    for trajectories in run["dumps"].values():
        for t in trajectories:
            prompt, response, mask = t["prompt_ids"], t["response_ids"], t["response_mask"]
            assert len(response) == len(mask) and set(mask) <= {0, 1}
            runs, start = [], None
            for i, bit in enumerate([*mask, 0]):
                if bit and start is None:
                    start = i
                elif not bit and start is not None:
                    runs.append((start, i))
                    start = None
            assert len(runs) == t["extra_fields"]["num_turns"] // 2, t["key"]  # the prompt, then turn and reply pairs
            for begin, end in runs:
                completions = served.get(tuple(prompt + response[:begin]))
                assert completions, f"{t['key']}: no request was served with the context before tokens {begin}:{end}"
                # the loop may cut the last turn to the response budget; otherwise it is the completion itself
                assert any(c[:end - begin] == response[begin:end] for c in completions), t["key"]
                checked_turns += 1
    assert checked_turns >= STEPS * BATCH_GROUPS * GROUP_SIZE


def test_loss_is_finite_and_weights_served_at_step_2_are_the_updated_ones(run: dict[str, Any]) -> None:
    for metrics in run["metrics"].values():
        for name in ("actor/pg_loss", "actor/loss", "actor/grad_norm"):
            assert math.isfinite(metrics[name]), (name, metrics[name])
        assert metrics["actor/grad_norm"] > 0
    digests = defaultdict(set)
    for request in run["served"]:
        digests[request["global_steps"]].add(request["weights"])
    # step 1 is served the model's initial weights (version 0), step 2 the weights after update 1
    assert sorted(digests) == [0, 1] and all(len(d) == 1 for d in digests.values()), digests
    assert digests[0] != digests[1]
    for step, trajectories in run["dumps"].items():
        assert {(t["extra_fields"]["min_global_steps"], t["extra_fields"]["max_global_steps"])
                for t in trajectories} == {(step - 1, step - 1)}
