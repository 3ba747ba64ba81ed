"""Run many episodes concurrently and keep one record per episode.

Each running episode owns an env from a pool (an env holds one episode at a time); policies generate
through ``aact`` and code runs through ``astep``, so the event loop overlaps model calls and sandbox work.
Records go to ``trajectories.jsonl`` as each episode ends (one ``write`` per line), frames to
``frames/<episode>/`` as JPEG files: an interrupted run keeps everything finished, and running it again
with the same output directory skips the episodes already recorded and plays again those that failed
(a policy or env error, e.g. a server that was down or a missing file since fixed). ``run.json`` says
what the directory holds (env, task source, env config, policy), so that a different run is refused
instead of mixed into it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import gymnasium as gym
import numpy as np

import pyvision_env  # noqa: F401  (registers the envs)
from pyvision_env.tasks import Task

from .episode import Episode, Turn
from .policies.base import ContextLengthError, Policy
from .summary import FAILED_END_REASONS

TRAJECTORIES = "trajectories.jsonl"
MANIFEST = "run.json"


@dataclass(frozen=True)
class EpisodeSpec:
    """Which task to play and as which sample (GRPO-style groups and pass@k play a task several times)."""

    task_index: int
    sample: int
    episode_id: str


def episode_specs(tasks: Sequence[Task], samples: int = 1) -> list[EpisodeSpec]:
    """One spec per (task, sample); ids are ``<task id>#<sample>`` (the task's index when it has no id)."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    specs = [EpisodeSpec(i, k, f"{task.id if task.id is not None else i}#{k}")
             for i, task in enumerate(tasks) for k in range(samples)]
    ids = [s.episode_id for s in specs]
    if len(set(ids)) != len(ids):
        duplicated = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise ValueError(f"task ids must be unique to name episodes; repeated: {duplicated}")
    return specs


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The complete records of a trajectories file; a torn last line (the run was killed mid-write) is dropped."""
    records = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return records


class RunMismatchError(ValueError):
    """The output directory holds another run (env, task source, env config or policy differ)."""


def run_manifest(env_id: str, tasks_spec: Any, tasks: Sequence[Task], config: Any, policy: Policy) -> dict[str, Any]:
    """What makes a run directory one run: resuming it with any of these changed would mix two runs.
    ``tasks_spec`` is the env's ``tasks`` setting, ``tasks`` the source it gave. Operational settings
    (concurrency, server address, device) and the number of tasks and samples (a run can be extended)
    are left out; secrets (the LLM judge's key) are never written."""
    if isinstance(tasks_spec, (str, os.PathLike)):  # a file (by absolute path) or a suite name
        source = os.path.abspath(tasks_spec) if os.path.exists(tasks_spec) else os.fspath(tasks_spec)
    else:  # inline tasks: their identity is their content
        digest = hashlib.sha1(json.dumps([[t.id, t.question, t.answer, t.video, [i if isinstance(i, str) else
                                                                                 type(i).__name__ for i in t.images]]
                                          for t in tasks]).encode()).hexdigest()[:12]
        source = f"{len(tasks)} inline tasks (sha1 {digest})"
    env_config = config.model_dump(mode="json", exclude={"tasks"})
    if env_config.get("llm_judge"):
        env_config["llm_judge"].pop("api_key", None)
    described = {k: v for k, v in policy.describe().items() if k not in ("max_concurrency", "base_url", "device")}
    return json.loads(json.dumps({"env_id": env_id, "tasks": source, "env_config": env_config, "policy": described},
                                 default=repr))


class _Recorder:
    """Appends records and frames under the output directory (or only keeps them in memory)."""

    def __init__(self, out_dir: Path | None, save_frames: bool, manifest: dict[str, Any] | None = None,
                 questions: dict[str, str] | None = None) -> None:
        self.out_dir = out_dir
        self.save_frames = save_frames and out_dir is not None
        done: list[dict[str, Any]] = []
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / TRAJECTORIES
            done = read_records(path)
            if manifest is not None:
                _check_same_run(out_dir, manifest, done, questions or {})
            # rewrite without a torn tail and without failed episodes (they are played again), so the file
            # stays one valid record per episode
            done = [r for r in done if r.get("end_reason") not in FAILED_END_REASONS]
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in done)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (closed in close())
        self.done = {r["episode_id"]: r for r in done}

    def frames(self, episode_id: str, step: int, images: Sequence[np.ndarray]) -> list[str]:
        if not self.save_frames or not images:
            return []
        folder = Path("frames") / re.sub(r"[^A-Za-z0-9._-]", "_", episode_id)
        (self.out_dir / folder).mkdir(parents=True, exist_ok=True)
        paths = []
        for k, image in enumerate(images):
            rel = folder / f"{step:02d}_{k}.jpg"
            cv2.imwrite(str(self.out_dir / rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
            paths.append(rel.as_posix())
        return paths

    def write(self, record: dict[str, Any]) -> None:
        self.done[record["episode_id"]] = record
        if self.out_dir is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self.out_dir is not None:
            self._file.close()


def _check_same_run(out_dir: Path, manifest: dict[str, Any], records: list[dict[str, Any]],
                    questions: dict[str, str]) -> None:
    """Refuse to add this run to a directory that holds another one (``questions``: this run's question
    per episode id); write ``run.json`` where there is none."""
    for record in records:  # the same ids with other questions: the task file changed under the run
        question = questions.get(record.get("episode_id"))
        if question is not None and record.get("question") != question:
            raise RunMismatchError(f"{out_dir / TRAJECTORIES} holds episode {record['episode_id']!r} with another "
                                   f"question ({_short(record.get('question'))}, now {_short(question)}): the tasks "
                                   "changed since that run; choose another output directory (--out)")
    path = out_dir / MANIFEST
    if path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunMismatchError(f"{path} is unreadable ({exc}): choose another output directory") from None
    else:  # written before run.json existed: only the env its records name can be checked
        before = {**manifest, "env_id": ", ".join(sorted({str(r.get("env_id")) for r in records}))} if records else None
    changed = _differences(before, manifest) if before is not None else []
    if changed:
        raise RunMismatchError(f"{out_dir} holds another run: {'; '.join(changed)}. Resuming it would mix two runs "
                               f"in one summary: choose another output directory (--out), or delete that one")
    if not path.is_file():
        path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _differences(before: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """``key (old there, new here)`` for every differing key, nested mappings key by key."""
    out = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out.extend(_differences(old, new, f"{prefix}{key}."))
        elif old != new:
            out.append(f"{prefix}{key} ({_short(old)} there, {_short(new)} here)")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


async def _play(env: gym.Env, policy: Policy, spec: EpisodeSpec, recorder: _Recorder) -> dict[str, Any]:
    """One episode from reset to its end; failures of the policy or the env become the record's ``error``."""
    core = env.unwrapped
    task = core.tasks[spec.task_index]
    timings = {"total_s": 0.0, "policy_s": 0.0, "env_s": 0.0, "sandbox_s": 0.0}
    start = time.perf_counter()
    record: dict[str, Any] = {
        "episode_id": spec.episode_id, "env_id": core.env_id, "task_id": task.id, "sample": spec.sample,
        "data_source": task.data_source, "question": task.question, "reference": task.answer,
        "answer_type": task.answer_type, "prediction": None, "reward": 0.0,
        "correct": None,  # judged only when the episode ends; a failed one (policy or env error) is not
        "reward_components": None, "judge_score": None, "end_reason": None, "turns": 0, "n_tool_calls": 0,
        "n_images": 0, "visual_tokens": 0, "policy": policy.describe(), "timings": timings,
        "system_prompt": None, "steps": [], "tokens": None, "error": None}
    steps: list[dict[str, Any]] = record["steps"]
    loop = asyncio.get_running_loop()

    async def save(step: int, images: Sequence[np.ndarray]) -> list[str]:
        return await loop.run_in_executor(None, recorder.frames, spec.episode_id, step, images) if images else []

    info: dict[str, Any] = {}
    try:
        t = time.perf_counter()
        obs, info = await core.areset(options={"task_index": spec.task_index})
        timings["env_s"] += time.perf_counter() - t
        episode = Episode.from_reset(core.env_id, obs, info, task=task, image_placeholder=core.config.image_placeholder)
        record["system_prompt"] = episode.system_prompt
        steps.append({"role": "observation", "text": episode.observations[0].text,
                      "images": await save(0, obs["images"])})
        done = False
        while not done:
            t = time.perf_counter()
            try:
                turn: Turn = await policy.aact(episode)
            except Exception as exc:
                record["end_reason"] = "context_length" if isinstance(exc, ContextLengthError) else "policy_error"
                raise _Failed(exc) from exc
            finally:
                timings["policy_s"] += time.perf_counter() - t
            parsed = core.protocol.parse(turn.text)
            steps.append({"role": "model", "text": turn.text, "finish_reason": turn.finish_reason,
                          "code": parsed.code, "answer": parsed.answer})
            t = time.perf_counter()
            obs, reward, terminated, truncated, info = await core.astep(turn.text)
            timings["env_s"] += time.perf_counter() - t
            timings["sandbox_s"] += info["exec_time_s"]
            done = terminated or truncated
            episode.add(turn, None if done else obs)
            if not done or obs["text"] or obs["images"]:
                steps.append({"role": "observation", "text": obs["text"],
                              "images": await save(len(episode.turns), obs["images"]),
                              "stdout": info["stdout"], "stderr": info["stderr"], "error": info["error"],
                              "exec_time_s": info["exec_time_s"], "timed_out": info["timed_out"]})
        components = info["reward_components"]
        record.update(prediction=info["prediction"], reward=float(reward), reward_components=components,
                      judge_score=info["judge_score"], end_reason=info["end_reason"],
                      correct=None if task.answer is None else components["accuracy"] >= 1.0)
        if episode.tokens is not None:
            record["tokens"] = episode.tokens.to_dict()
    except _Failed as failed:
        record["error"] = _describe(failed.__cause__)
        if record["end_reason"] == "context_length" and task.answer is not None:
            record["correct"] = False  # the model talked past its context: its failure, judged wrong
    except Exception as exc:  # the env refused the task (missing media...) or broke: record it, go on
        record["end_reason"] = record["end_reason"] or "env_error"
        record["error"] = _describe(exc)
    record.update(turns=info.get("turn", 0), n_tool_calls=info.get("n_tool_calls", 0),
                  n_images=info.get("n_images", 0), visual_tokens=info.get("visual_tokens", 0))
    timings["total_s"] = time.perf_counter() - start
    return record


class _Failed(Exception):
    """Marks a policy failure (its cause is the policy's exception)."""


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def play_episode(env: gym.Env, policy: Policy, *, options: dict[str, Any] | None = None,
                 seed: int | None = None) -> tuple[Episode, dict[str, Any]]:
    """One episode in a plain synchronous loop (the Gymnasium API as a custom RL script drives it);
    returns the episode and the last step's info (``reward_components``, ``end_reason``...)."""
    core = env.unwrapped
    obs, info = env.reset(seed=seed, options=options)
    episode = Episode.from_reset(core.env_id, obs, info, task=core._episode.task,
                                 image_placeholder=core.config.image_placeholder)
    done = False
    while not done:
        turn = policy.act(episode)
        obs, _, terminated, truncated, info = env.step(turn.text)
        done = terminated or truncated
        episode.add(turn, None if done else obs)
    return episode, info


async def arollout(env_id: str, policy: Policy, *, env_kwargs: dict[str, Any] | None = None,
                   limit: int | None = None, samples: int = 1, concurrency: int = 8,
                   out_dir: str | Path | None = None, resume: bool = True, save_frames: bool = True,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Play every task of the env's task source (the first ``limit``) ``samples`` times, ``concurrency``
    episodes at once; return all records (earlier ones from ``out_dir`` included when resuming).

    A failing episode (policy error, unreadable media) is recorded with ``error`` set and does not stop
    the others. With ``resume=False`` an existing ``trajectories.jsonl`` in ``out_dir`` is refused rather
    than silently mixed with the new run.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and not resume and read_records(out / TRAJECTORIES):
        raise FileExistsError(f"{out / TRAJECTORIES} already holds records; pass resume=True (--resume) to "
                              "continue that run, or choose another output directory")
    env_kwargs = dict(env_kwargs or {})
    first = gym.make(env_id, **env_kwargs)
    source = first.unwrapped.tasks
    tasks = [source[i] for i in range(min(len(source), limit or len(source)))]
    manifest = run_manifest(env_id, env_kwargs.get("tasks", "synthetic"), source, first.unwrapped.config, policy)
    first.close()
    specs = episode_specs(tasks, samples)
    recorder = _Recorder(out, save_frames, manifest, {s.episode_id: tasks[s.task_index].question for s in specs})
    todo = [s for s in specs if s.episode_id not in recorder.done]
    pool: asyncio.Queue[gym.Env] = asyncio.Queue()
    for _ in range(min(concurrency, len(todo))):
        pool.put_nowait(gym.make(env_id, **{**env_kwargs, "tasks": tasks}))
    bar = _progress(len(specs), len(specs) - len(todo), enabled=progress)
    judged = [r["correct"] for r in recorder.done.values() if r["correct"] is not None]
    tally = {"right": sum(judged), "judged": len(judged)}  # running counts: no rescan per finished episode

    async def run(spec: EpisodeSpec) -> None:
        env = await pool.get()
        try:
            record = await _play(env, policy, spec, recorder)
        finally:
            pool.put_nowait(env)
        recorder.write(record)
        bar.update(1)
        if record["correct"] is not None:
            tally["right"] += record["correct"]
            tally["judged"] += 1
            bar.set_postfix(accuracy=f"{tally['right'] / tally['judged']:.3f}", refresh=False)

    try:
        await asyncio.gather(*(run(s) for s in todo))
    finally:
        bar.close()
        recorder.close()
        while not pool.empty():
            pool.get_nowait().close()
    return [recorder.done[s.episode_id] for s in specs if s.episode_id in recorder.done]


def rollout(env_id: str, policy: Policy, **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`arollout` from synchronous code."""
    return asyncio.run(arollout(env_id, policy, **kwargs))


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="episodes", unit="ep", disable=not enabled, dynamic_ncols=True)


__all__ = ["MANIFEST", "TRAJECTORIES", "EpisodeSpec", "RunMismatchError", "arollout", "episode_specs", "play_episode",
           "read_records", "rollout", "run_manifest"]
