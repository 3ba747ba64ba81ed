"""Rollouts, resume, summaries and ``pyvision eval``: real envs, real sandboxes, the scripted policy."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from pyvision_agent.cli import main
from pyvision_agent.episode import Turn
from pyvision_agent.policies import Policy, ScriptedPolicy, make_policy
from pyvision_agent.rollout import TRAJECTORIES, arollout, episode_specs, read_records, rollout
from pyvision_agent.summary import format_table, summarize

ROOT = Path(__file__).resolve().parents[1]


class CountingPolicy(ScriptedPolicy):
    """The scripted solution, counting turns per episode and the most turns generated at once."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}
        self.in_flight = self.max_in_flight = 0
        self.delay_s = delay_s

    async def aact(self, episode):
        key = episode.task.id
        self.calls[key] = self.calls.get(key, 0) + 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            return self.act(episode)
        finally:
            self.in_flight -= 1


def test_image_rollout_records_every_turn_and_frame(tmp_path):
    records = rollout("PyVisionImage-v0", ScriptedPolicy(), limit=3, samples=2, concurrency=3, out_dir=tmp_path,
                      progress=False)
    assert [r["episode_id"] for r in records] == [f"synthetic-image-{i}#{k}" for i in range(3) for k in range(2)]
    on_disk = sorted(read_records(tmp_path / TRAJECTORIES), key=lambda r: r["episode_id"])
    assert on_disk == sorted(records, key=lambda r: r["episode_id"])  # written as they finished, in any order
    for r in records:
        assert r["correct"] is True and r["end_reason"] == "answered" and r["error"] is None
        assert r["reward"] == pytest.approx(r["reward_components"]["total"]) and r["reward"] > 1.0
        roles = [s["role"] for s in r["steps"]]
        assert roles[0] == "observation" and roles[-1] == "model"
        assert roles == ["observation", "model"] * (len(roles) // 2)
        assert r["turns"] == roles.count("model") and r["n_tool_calls"] == sum(s["code"] is not None for s in r["steps"]
                                                                                if s["role"] == "model")
        frames = [p for s in r["steps"] if s["role"] == "observation" for p in s["images"]]
        assert len(frames) == r["n_images"] >= 2  # the input image and the figure the solution showed
        for rel in frames:
            image = cv2.imread(str(tmp_path / rel))
            assert image is not None and image.ndim == 3
        first = r["steps"][0]
        assert first["text"].count("<image>") == len(first["images"]) == 1
        assert r["system_prompt"] and "<code>" in r["system_prompt"]
        assert r["steps"][-1]["answer"] == r["prediction"]
        t = r["timings"]
        assert t["total_s"] >= t["env_s"] >= t["sandbox_s"] > 0 and t["policy_s"] >= 0


def test_concurrency_is_bounded_and_used(tmp_path):
    policy = CountingPolicy(delay_s=0.3)  # long enough for every free env to be generating
    records = rollout("PyVisionVideo-v0", policy, limit=6, concurrency=3, progress=False)
    assert len(records) == 6 and all(r["correct"] for r in records)
    assert policy.max_in_flight == 3


class FailingPolicy(ScriptedPolicy):
    def act(self, episode):
        if episode.task.id.endswith("-1") and episode.turns:
            raise RuntimeError("model server went away")
        return super().act(episode)


def test_failures_are_recorded_and_do_not_stop_the_run(tmp_path, gradient_png):
    records = rollout("PyVisionImage-v0", FailingPolicy(), limit=3, concurrency=2, out_dir=tmp_path, progress=False)
    failed = [r for r in records if r["error"]]
    assert [r["task_id"] for r in failed] == ["synthetic-image-1"]
    assert failed[0]["end_reason"] == "policy_error" and "model server went away" in failed[0]["error"]
    assert failed[0]["correct"] is None and failed[0]["turns"] == 1  # a failed episode is not judged
    assert all(r["correct"] for r in records if not r["error"])

    tasks = [{"id": "ok", "question": "q?", "answer": "1", "images": [gradient_png]},
             {"id": "missing", "question": "q?", "answer": "1", "images": [str(tmp_path / "nope.png")]}]
    records = rollout("PyVisionImage-v0", ScriptedPolicy(turns=["<answer>1</answer>"]), env_kwargs={"tasks": tasks},
                      progress=False)
    by_id = {r["task_id"]: r for r in records}
    assert by_id["ok"]["correct"] is True
    assert by_id["missing"]["end_reason"] == "env_error" and "nope.png" in by_id["missing"]["error"]


def test_resume_skips_finished_episodes_and_drops_a_torn_line(tmp_path):
    first = rollout("PyVisionVideo-v0", ScriptedPolicy(), limit=2, out_dir=tmp_path, progress=False)
    with open(tmp_path / TRAJECTORIES, "a") as f:
        f.write('{"episode_id": "synthetic-video-2#0", "trunc')  # killed mid-write
    policy = CountingPolicy()
    records = rollout("PyVisionVideo-v0", policy, limit=4, out_dir=tmp_path, progress=False)
    assert set(policy.calls) == {"synthetic-video-2", "synthetic-video-3"}  # the first two were not replayed
    assert records[:2] == first and [r["episode_id"] for r in records] == [f"synthetic-video-{i}#0" for i in range(4)]
    on_disk = read_records(tmp_path / TRAJECTORIES)
    assert len(on_disk) == 4 and len((tmp_path / TRAJECTORIES).read_text().splitlines()) == 4
    with pytest.raises(FileExistsError, match="resume"):
        rollout("PyVisionVideo-v0", ScriptedPolicy(), limit=4, out_dir=tmp_path, resume=False, progress=False)


def test_eval_killed_midway_resumes_without_redoing_episodes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pyvision_agent.cli", "eval", "--env", "PyVisionVideo-v0", "--policy", "scripted",
           "--limit", "12", "--concurrency", "1", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(read_records(out / TRAJECTORIES)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r["episode_id"]: r for r in read_records(out / TRAJECTORIES)}
    assert 3 <= len(before) < 12
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    after = read_records(out / TRAJECTORIES)
    assert sorted(r["episode_id"] for r in after) == sorted(f"synthetic-video-{i}#0" for i in range(12))
    assert all(after_r == before[after_r["episode_id"]] for after_r in after if after_r["episode_id"] in before)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 12 and summary["accuracy"] == 1.0


def _record(source, correct, tools, end="answered", turns=2, tokens=100):
    return {"episode_id": f"{source}{correct}{tools}{end}", "data_source": source, "correct": correct,
            "reward": (1.0 + 0.1 * tools) if correct else 0.0, "n_tool_calls": tools, "turns": turns,
            "end_reason": end, "visual_tokens": tokens, "n_images": 1, "error": None,
            "timings": {"total_s": 1.0, "policy_s": 0.5, "env_s": 0.5, "sandbox_s": 0.25}}


def test_summary_reports_collapse_signs_per_data_source():
    records = [_record("a", True, 0), _record("a", False, 0), _record("a", True, 2),
               _record("b", None, 0, end="max_turns", turns=5), _record("b", False, 1, end="policy_error")]
    s = summarize(records)
    assert s["episodes"] == 5 and s["judged"] == 4 and s["accuracy"] == 0.5
    assert s["answered"] == 3 and s["answered_without_tools"] == pytest.approx(2 / 3)
    assert s["end_reasons"] == {"answered": 3, "max_turns": 1, "policy_error": 1}
    a, b = s["per_data_source"]["a"], s["per_data_source"]["b"]
    assert a["tool_calls_per_episode"] == pytest.approx(2 / 3) and a["accuracy"] == pytest.approx(2 / 3)
    assert b["answered"] == 0 and b["answered_without_tools"] is None and b["turns_per_episode"] == 3.5
    assert s["sandbox_share"] == 0.25
    table = format_table(s)
    assert table.splitlines()[0].startswith("data source") and "max_turns 1" in table
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["a", "b", "ALL"]


def test_eval_command_writes_trajectories_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--env", "PyVisionImage-v0", "--policy", "scripted", "--limit", "3", "--samples", "2",
                 "--out", str(out), "--quiet", "--env-config", '{"exec_timeout_s": 20}']) == 0
    text = capsys.readouterr().out
    assert "ALL" in text and f"pyvision view {out}" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 6 and summary["accuracy"] == 1.0 and summary["per_data_source"]
    assert len(read_records(out / TRAJECTORIES)) == 6 and any((out / "frames").iterdir())


@pytest.mark.parametrize(("argv", "message"), [
    (["--concurrency", "0"], "--concurrency must be at least 1"),
    (["--env-config", "{bad"], "not valid JSON"),
    (["--env-config", "[1]"], "must be a JSON object"),
    (["--env-config", '{"max_turnz": 3}'], "max_turnz"),
    (["--tasks", "no/such/file.jsonl"], "no/such/file.jsonl"),
])
def test_eval_rejects_bad_arguments_clearly(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        main(["eval", "--env", "PyVisionImage-v0", "--policy", "scripted", "--out", str(tmp_path), "--quiet", *argv])


def test_eval_names_an_unknown_env(tmp_path):
    with pytest.raises(SystemExit, match="Did you mean: `PyVisionImage`"):
        main(["eval", "--env", "PyVisionImag-v0", "--policy", "scripted", "--out", str(tmp_path), "--quiet"])


def test_make_policy_checks_its_arguments():
    assert isinstance(make_policy("scripted"), ScriptedPolicy)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("gpt")
    with pytest.raises(ValueError, match="needs --model"):
        make_policy("openai")
    with pytest.raises(ValueError, match="takes no model"):
        make_policy("scripted", temperature=0.5)


def test_episode_ids_must_be_unique():
    from pyvision_env.tasks import Task

    with pytest.raises(ValueError, match="unique"):
        episode_specs([Task(id="x", question="q"), Task(id="x", question="r")])
    with pytest.raises(ValueError, match="samples"):
        episode_specs([Task(question="q")], samples=0)


def test_policy_interface_gives_sync_and_async_for_free():
    class SyncOnly(Policy):
        def act(self, episode):
            return Turn("s")

    class AsyncOnly(Policy):
        async def aact(self, episode):
            return Turn("a")

    assert asyncio.run(SyncOnly().aact(None)).text == "s"
    assert AsyncOnly().act(None).text == "a"
    with pytest.raises(NotImplementedError, match="neither"):
        Policy().act(None)


def test_arollout_runs_inside_a_running_loop(tmp_path):
    async def main_loop():
        return await arollout("PyVisionImage-v0", ScriptedPolicy(), limit=2, concurrency=2, progress=False)

    records = asyncio.run(main_loop())
    assert [r["correct"] for r in records] == [True, True]
    assert os.listdir(tmp_path) == []  # no out_dir: nothing written


def test_view_command_writes_the_page_of_an_eval_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--env", "PyVisionVideo-v0", "--policy", "scripted", "--limit", "2", "--out", str(out),
                 "--quiet"]) == 0
    assert main(["view", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "wrote" in capsys.readouterr().out and page.count("synthetic-video-") >= 2
    with pytest.raises(SystemExit, match="no_such_run"):
        main(["view", str(tmp_path / "no_such_run")])


def test_eval_with_a_tiny_transformers_model_keeps_tokens_in_records(tmp_path, capsys):
    from tiny_models import tiny_qwen25_vl

    model = tiny_qwen25_vl(tmp_path / "model")
    out = tmp_path / "run"
    assert main(["eval", "--env", "PyVisionImage-v0", "--policy", "transformers", "--model", str(model),
                 "--limit", "2", "--max-turns", "2", "--max-tokens", "12", "--concurrency", "2", "--out", str(out),
                 "--quiet"]) == 0
    records = read_records(out / TRAJECTORIES)
    assert len(records) == 2 and all(r["error"] is None for r in records)  # junk turns, handled
    for r in records:
        tokens = r["tokens"]
        assert r["policy"]["policy"] == "transformers" and len(tokens["prompt_ids"]) > 0
        assert len(tokens["response_ids"]) == len(tokens["response_mask"]) == len(tokens["response_logprobs"])
        model_turns = [s for s in r["steps"] if s["role"] == "model"]
        assert 1 <= sum(tokens["response_mask"]) <= 12 * len(model_turns)
    assert json.loads((out / "summary.json").read_text())["episodes"] == 2


def test_play_episode_is_the_plain_gymnasium_loop():
    import gymnasium as gym

    from pyvision_agent.rollout import play_episode

    env = gym.make("PyVisionImage-v0")
    try:
        episode, info = play_episode(env, ScriptedPolicy(), options={"task_index": 1})
    finally:
        env.close()
    assert info["end_reason"] == "answered" and info["reward_components"]["accuracy"] == 1.0
    assert len(episode.turns) == info["turn"] and len(episode.observations) == info["turn"]  # last turn answered
    assert episode.task.id == "synthetic-image-1" and episode.system_prompt


# --- what a user meets with `pyvision eval` (issue 12) -------------------------------------------------------
def _eval(out, *argv) -> int:
    return main(["eval", "--env", "PyVisionImage-v0", "--policy", "scripted", "--out", str(out), "--quiet", *argv])


def _task_file(tmp_path, rows: list[dict]) -> str:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


ANSWER_42 = json.dumps({"turns": ["<code>\n```python\nprint(6 * 7)\n```\n</code>", "<answer>42</answer>"]})


def test_eval_fails_when_every_episode_failed_and_retries_them(tmp_path, capsys, gradient):
    tasks = _task_file(tmp_path, [{"id": f"t{k}", "question": "6 times 7?", "answer": "42", "answer_type": "number",
                                   "image_path": f"img{k}.png"} for k in range(2)])
    out = tmp_path / "run"
    assert _eval(out, "--tasks", tasks, "--policy-config", ANSWER_42) == 1  # nothing was evaluated
    err = capsys.readouterr().err
    assert "2 of 2 episodes failed and were not judged" in err and "img0.png" in err and "retries them" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 2 and summary["judged"] == 0 and summary["accuracy"] is None

    for k in range(2):  # the user fixes the media and runs the same command: the failed episodes play again
        cv2.imwrite(str(tmp_path / f"img{k}.png"), gradient)
    assert _eval(out, "--tasks", tasks, "--policy-config", ANSWER_42) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["judged"] == 2 and summary["accuracy"] == 1.0
    records = read_records(out / TRAJECTORIES)
    assert len(records) == 2 and all(r["n_tool_calls"] == 1 and r["correct"] for r in records)


def test_failed_episodes_do_not_dilute_the_accuracy(tmp_path, capsys, gradient_png):
    tasks = _task_file(tmp_path, [{"id": "ok", "question": "6 times 7?", "answer": "42", "image_path": gradient_png},
                                  {"id": "gone", "question": "6 times 7?", "answer": "42", "image_path": "gone.png"}])
    assert _eval(tmp_path / "run", "--tasks", tasks, "--policy-config", ANSWER_42) == 0
    assert "1 of 2 episodes failed and were not judged" in capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["accuracy"] == 1.0 and summary["judged"] == 1 and summary["errors"] == 1
    assert summary["end_reasons"] == {"answered": 1, "env_error": 1}


def test_reusing_out_for_another_run_is_refused(tmp_path, gradient_png):
    out = tmp_path / "run"
    assert _eval(out, "--limit", "2") == 0
    before = (out / TRAJECTORIES).read_text()
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["env_id"] == "PyVisionImage-v0" and manifest["tasks"] == "synthetic"
    assert manifest["policy"] == {"policy": "scripted", "turns": "task solution"}

    tasks = _task_file(tmp_path, [{"id": "a", "question": "6 times 7?", "answer": "42", "image_path": gradient_png}])
    for argv, message in [
        (["--env", "PyVisionVideo-v0"], "env_id ('PyVisionImage-v0' there, 'PyVisionVideo-v0' here)"),
        (["--tasks", tasks], f"tasks ('synthetic' there, {tasks!r} here)"),
        (["--max-turns", "3"], "env_config.max_turns (10 there, 3 here)"),
        (["--policy-config", ANSWER_42], "policy.turns ('task solution' there, 'given' here)"),
    ]:
        cmd = ["eval", "--env", "PyVisionImage-v0", "--policy", "scripted", "--out", str(out), "--quiet",
               "--limit", "2", *argv]
        with pytest.raises(SystemExit) as caught:
            main(cmd)
        assert f"{out} holds another run: " in str(caught.value) and message in str(caught.value), str(caught.value)
        assert "choose another output directory (--out)" in str(caught.value)
    assert (out / TRAJECTORIES).read_text() == before  # nothing was added or rewritten
    assert _eval(out, "--limit", "3") == 0  # the same run, extended, is fine
    assert len(read_records(out / TRAJECTORIES)) == 3


def test_a_changed_task_file_or_an_old_run_of_another_env_is_refused(tmp_path, gradient_png):
    rows = [{"id": "a", "question": "6 times 7?", "answer": "42", "image_path": gradient_png}]
    tasks = _task_file(tmp_path, rows)
    out = tmp_path / "run"
    assert _eval(out, "--tasks", tasks, "--policy-config", ANSWER_42) == 0
    _task_file(tmp_path, [{**rows[0], "question": "7 times 6?"}])
    with pytest.raises(SystemExit, match=r"holds episode 'a#0' with another question \('6 times 7\?', now "):
        _eval(out, "--tasks", tasks, "--policy-config", ANSWER_42)

    (out / "run.json").unlink()  # a directory written before run.json existed: its records name their env
    with pytest.raises(SystemExit, match=r"env_id \('PyVisionImage-v0' there, 'PyVisionVideo-v0' here\)"):
        main(["eval", "--env", "PyVisionVideo-v0", "--policy", "scripted", "--out", str(out), "--quiet"])


def test_the_summary_and_the_viewer_count_the_same_episodes(tmp_path, capsys):
    out = tmp_path / "run"
    assert _eval(out, "--limit", "4") == 0
    assert _eval(out, "--limit", "2") == 0  # asks for fewer than the directory holds
    assert "4 episodes in" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["episodes"] == 4
    assert main(["view", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert page.count("<details class='episode'") == 4 and "summary.json counts" not in page


def test_scripted_turns_play_ones_own_tasks(tmp_path, gradient_png):
    tasks = _task_file(tmp_path, [{"id": "a", "question": "6 times 7?", "answer": "42", "answer_type": "number",
                                   "image_path": gradient_png}])
    assert _eval(tmp_path / "run", "--tasks", tasks, "--policy-config", ANSWER_42) == 0
    (record,) = read_records(tmp_path / "run" / TRAJECTORIES)
    assert record["correct"] is True and record["n_tool_calls"] == 1 and record["steps"][2]["stdout"] == "42\n"
