"""The Ray sandbox backend on a real 3-node Ray cluster on this machine (``ray.cluster_utils.Cluster``,
logical CPUs): placement, routing of results, isolation on every node, deadlines, node failures,
nodes that join later, and a clean shutdown. The tests share one cluster and run in file order: the
later ones stop actors and nodes.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import psutil
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
from media_utils import make_video  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import pyvision_env  # noqa: E402, F401
from pyvision_agent.cli import main as cli_main  # noqa: E402
from pyvision_agent.rollout import read_records  # noqa: E402
from pyvision_env.errors import ConfigError, MediaError, SandboxError  # noqa: E402
from pyvision_env.sandbox import SandboxConfig, get_sandbox  # noqa: E402
from pyvision_env.sandbox.ray_backend import call_deadline, get_ray_backend  # noqa: E402

ROOT = str(Path(__file__).resolve().parents[1])
NODE_CPUS = (2, 2, 4)  # the head first; placement follows these logical CPUs
STORE = 200 << 20


def code(text: str) -> str:
    return f"<code>\n```python\n{text}\n```\n</code>"


@pytest.fixture(scope="module")
def cluster():
    """The cluster, with ``nodes``: its nodes in NODE_CPUS order (the last one offers ``pyvision_sandbox``)."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": NODE_CPUS[0], "include_dashboard": False,
                                                      "object_store_memory": STORE})
    c.nodes = [c.head_node] + [c.add_node(num_cpus=cpus, object_store_memory=STORE,
                                          resources={"pyvision_sandbox": 1} if k == 2 else {})
                               for k, cpus in enumerate(NODE_CPUS[1:], start=1)]
    ray.init(address=c.address)
    yield c
    ray.shutdown()  # also stops any actor a test left (the driver owns them)
    c.shutdown()


@pytest.fixture(scope="module")
def backend(cluster):
    b = get_ray_backend()
    b.refresh()  # every node's actor ready before anything is placed
    return b


def node_cpus(cluster) -> dict[str, int]:
    return {n.node_id: cpus for n, cpus in zip(cluster.nodes, NODE_CPUS)}


def marked_image(i: int) -> np.ndarray:
    """16x16 pixels that spell the episode's number (red: low byte, green: high byte)."""
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = i % 256, i // 256, 7
    return img


def test_episodes_spread_by_free_capacity_and_results_are_never_misrouted(cluster, backend):
    n = 256
    tasks = [{"id": f"t{i}", "question": "Which episode?", "answer": str(i), "answer_type": "number",
              "images": [marked_image(i)]} for i in range(n)]
    envs = [gym.make("PyVisionImage-v0", tasks=tasks, sandbox_backend="ray", exec_timeout_s=60).unwrapped
            for _ in range(n)]
    read = ("px = np.asarray(image_clue_0)[0, 0]\nsecret = int(px[0]) + 256 * int(px[1])\n"
            "print('episode', secret)")
    show = "display(np.full((8, 4, 3), secret % 256, np.uint8))\nprint('triple', 3 * secret)"

    async def run() -> tuple[list, list, list, list]:
        resets = await asyncio.gather(*(env.areset(options={"task_index": i}) for i, env in enumerate(envs)))
        first = await asyncio.gather(*(env.astep(code(read)) for env in envs))
        second = await asyncio.gather(*(env.astep(code(show)) for env in envs))
        ends = await asyncio.gather(*(env.astep(f"<answer>{i}</answer>") for i, env in enumerate(envs)))
        return resets, first, second, ends

    try:
        resets, first, second, ends = asyncio.run(run())
    finally:
        for env in envs:
            env.close()
    for i in range(n):
        assert f"episode {i}\n" in first[i][0]["text"]
        obs, info = second[i][0], second[i][4]
        assert f"triple {3 * i}\n" in obs["text"] and info["error"] is None
        (frame,) = obs["images"]
        assert frame.shape == (8, 4, 3) and (frame == i % 256).all()
        assert ends[i][4]["reward_components"]["accuracy"] == 1.0 and ends[i][2]
    # all resets were placed before any episode ended: the episodes follow each node's CPUs
    cpus = node_cpus(cluster)
    placed = collections.Counter(info["sandbox_node"] for _, info in resets)
    assert set(placed) == set(cpus)
    for node, count in placed.items():
        expected = n * cpus[node] / sum(NODE_CPUS)
        assert abs(count - expected) <= 0.25 * expected, (placed, cpus)
    assert {info["isolation"] for _, info in resets} == {str(get_sandbox().isolation)}


def test_async_steps_wait_for_the_nodes_on_the_event_loop_not_in_threads(backend):
    """While 32 executions sleep on the nodes, no thread of this process is inside the backend's
    blocking code: every step awaits its object ref on the event loop."""
    envs = [gym.make("PyVisionImage-v0", sandbox_backend="ray").unwrapped for _ in range(32)]
    blocked: list[int] = []

    async def run() -> list:
        await asyncio.gather(*(env.areset(seed=i) for i, env in enumerate(envs)))
        steps = asyncio.gather(*(env.astep(code("import time\ntime.sleep(2)\nprint('slept')")) for env in envs))
        for _ in range(5):
            await asyncio.sleep(0.2)
            assert not steps.done()
            blocked.append(sum(any(f.f_code.co_filename.endswith("ray_backend.py") for f in _stack(frame))
                               for frame in sys._current_frames().values()))
        return await steps

    try:
        results = asyncio.run(run())
    finally:
        for env in envs:
            env.close()
    assert all("slept" in obs["text"] for obs, *_ in results)
    assert blocked == [0] * 5


def _stack(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back


def test_isolation_limits_and_recovery_hold_on_every_node(cluster, backend):
    config = SandboxConfig(exec_timeout_s=2.0, memory_limit_mb=256, interrupt_grace_s=3.0)  # a busy machine
    sessions = [backend.session(images=[marked_image(5)], config=config) for _ in range(4)]
    try:
        assert {s.node for s in sessions} == set(node_cpus(cluster))  # least loaded first: every node has one
        for s in sessions:
            assert s.isolation == get_sandbox().isolation
            net = s.execute("import socket\ntry:\n    socket.create_connection(('192.0.2.1', 80), timeout=1)\n"
                            "except OSError as e:\n    print('refused', type(e).__name__)")
            assert "refused" in net.stdout
            assert "MemoryError" in s.execute("x = 1\nblob = bytearray(1024 * 1024 * 1024)").error
            loop = s.execute("while True:\n    pass", timeout=0.5)
            assert loop.timed_out and not loop.restarted and s.execute("print(x)").stdout == "1\n"
            crash = s.execute("import os\nos._exit(3)")
            assert crash.crashed and crash.restarted and "exit code 3" in crash.error
            assert "NameError" in s.execute("print(x)").error  # a fresh interpreter...
            assert s.execute("print(image_clue_0.getpixel((0, 0)))").stdout == "(5, 0, 7)\n"  # ...same inputs
    finally:
        for s in sessions:
            s.close()


def test_videos_travel_to_the_node_and_bad_inputs_fail_clearly(backend, tmp_path):
    video = str(make_video(tmp_path / "clip.mp4", n_frames=12, width=64, height=48))
    env = gym.make("PyVisionVideo-v0", sandbox_backend="ray", tasks=[{"question": "?", "video": video}]).unwrapped
    try:
        obs, info = env.reset(options={"task_index": 0})
        assert info["video"]["frames"] == 12 and info["sandbox_node"] in node_cpus_of(backend)
        obs, *_ = env.step(code("f = video_clue_0.get_batch([0, 11]).asnumpy()\nprint(f.shape)\ndisplay(f[1])"))
        assert "(2, 48, 64, 3)" in obs["text"] and obs["images"][0].shape == (48, 64, 3)
    finally:
        env.close()
    with pytest.raises(MediaError, match="video file not found: '/no/such.mp4'"):
        backend.session(video="/no/such.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(MediaError, match="garbage.mp4"):  # raised by the node's sandbox, passed on as itself
        backend.session(video=garbage)
    with pytest.raises(MediaError, match="image file not found"):
        backend.session(images=[tmp_path / "missing.png"])


def test_image_files_reach_every_node_exactly_and_a_changed_file_is_sent_again(cluster, backend, tmp_path):
    """A GRPO group opens the same image file on several nodes: each gets the exact pixels (the node keeps
    a raw copy); rewriting the file sends the new pixels."""
    path = tmp_path / "photo.png"
    y, x = np.mgrid[0:48, 0:64]
    first = np.stack([x * 3, y * 5, (x * y) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(first).save(path)
    check = "import hashlib\nprint(hashlib.sha256(np.asarray(image_clue_0).tobytes()).hexdigest())"
    for pixels in (first, 255 - first):
        Image.fromarray(pixels).save(path)
        os.utime(path, ns=(time.time_ns(), time.time_ns()))
        group = [backend.session(images=[path]) for _ in range(6)]
        try:
            assert {s.node for s in group} == set(node_cpus(cluster))
            digests = {s.execute(check).stdout.strip() for s in group}
        finally:
            for s in group:
                s.close()
        assert digests == {hashlib.sha256(pixels.tobytes()).hexdigest()}


def node_cpus_of(backend) -> set[str]:
    return {n["node_id"] for n in backend.nodes()}


def test_node_resource_limits_the_pool_to_the_nodes_that_offer_it(cluster):
    tagged = get_ray_backend(node_resource="pyvision_sandbox")
    env = gym.make("PyVisionImage-v0", sandbox_backend="ray", ray_node_resource="pyvision_sandbox")
    try:
        nodes = {env.reset(seed=i)[1]["sandbox_node"] for i in range(6)}
    finally:
        env.close()
    assert nodes == {cluster.nodes[2].node_id}
    assert [n["node_id"] for n in tagged.nodes()] == [cluster.nodes[2].node_id]


def test_pyvision_eval_runs_its_episodes_on_the_cluster(backend, tmp_path, capsys):
    before = sum(n["opened"] for n in backend.nodes())
    assert cli_main(["eval", "--env", "PyVisionVideo-v0", "--policy", "scripted", "--limit", "4", "--quiet",
                     "--no-frames", "--sandbox-backend", "ray", "--out", str(tmp_path)]) == 0
    records = read_records(tmp_path / "trajectories.jsonl")
    assert len(records) == 4 and all(r["correct"] and r["error"] is None for r in records)
    assert sum(n["opened"] for n in backend.nodes()) - before == 4
    assert "4 episodes in" in capsys.readouterr().out


def test_the_jobs_other_processes_share_the_node_actors(backend):
    """A Ray task of the same job (as verl's agent-loop workers are) finds the node actors by name:
    its episode runs on one of them, and no actor is added."""

    @ray.remote
    def episode_in_another_process() -> tuple[int, str]:  # defined here: Ray sends it by value
        import os

        import gymnasium as gym

        import pyvision_env  # noqa: F401, F811  (registers the envs in that process)

        env = gym.make("PyVisionImage-v0", sandbox_backend="ray")
        try:
            _, info = env.reset(seed=0)
            obs, *_ = env.step("<code>\n```python\nprint(6 * 7)\n```\n</code>")
            return os.getpid(), info["sandbox_node"] if "42\n" in obs["text"] else obs["text"]
        finally:
            env.close()

    before = {n["node_id"]: n for n in backend.nodes()}
    pid, node = ray.get(episode_in_another_process.remote(), timeout=300)
    after = {n["node_id"]: n for n in backend.nodes()}
    assert pid != os.getpid() and node in before
    assert {k: n["pid"] for k, n in after.items()} == {k: n["pid"] for k, n in before.items()}
    assert after[node]["opened"] == before[node]["opened"] + 1


def test_ray_benchmark_reports_latency_and_throughput_beside_local(backend, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_ray", Path(ROOT) / "benchmarks" / "bench_ray.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--levels", "4", "--repeat", "2", "--latency-runs", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert len(report["latency"]) == 3 and len(report["nodes"]) == len(NODE_CPUS)
    for row in report["latency"]:
        for b in ("local", "ray"):
            assert row[b]["runs"] == 3 and row[b]["p99_s"] >= row[b]["p50_s"] > 0
        assert row["ratio_p50"] == row["ray"]["p50_s"] / row["local"]["p50_s"]
    local, remote = report["throughput"]
    assert (local["backend"], remote["backend"]) == ("local", "ray")
    assert len(remote["runs_episodes_per_s"]) == 2 and sum(remote["episodes_per_node"]) == 2 * 4
    assert remote["vs_local"] == remote["episodes_per_s"] / local["episodes_per_s"]
    table = capsys.readouterr().out
    assert "ray / local (p50)" in table and table.count("| 4 |") == 2


def test_a_frozen_node_fails_its_episode_within_the_deadline_and_its_actor_is_replaced(cluster, backend):
    config = SandboxConfig(exec_timeout_s=1.0)
    sessions, fresh = [backend.session(config=config) for _ in range(4)], []
    victim = sessions[0]
    actor_pid = next(n["pid"] for n in backend.nodes() if n["node_id"] == victim.node)
    os.kill(actor_pid, signal.SIGSTOP)  # the actor hangs with its connection open: only the deadline helps
    try:
        with pytest.raises(SandboxError, match=rf"Ray node {victim.node} .*did not answer within "
                           rf"{call_deadline(config):.0f} s") as failed:
            victim.execute("print(1)")
        assert "reset() starts a new episode" in str(failed.value)
        with pytest.raises(SandboxError, match=victim.node):  # the episode stays failed, without a call
            victim.execute("print(2)")
        others = [s for s in sessions if s.node != victim.node]
        assert [s.execute("print(3)").stdout for s in others] == ["3\n"] * len(others)
        fresh = [backend.session(config=config) for _ in range(6)]  # placed on live actors only
        assert [s.execute("print(4)").stdout for s in fresh] == ["4\n"] * 6
    finally:
        os.kill(actor_pid, signal.SIGCONT)
        for s in sessions + fresh:
            s.close()
    backend.refresh()  # the node is alive: a new actor takes the old one's place
    replaced = {n["node_id"]: n["pid"] for n in backend.nodes()}
    assert victim.node in replaced and replaced[victim.node] != actor_pid
    assert not psutil.pid_exists(actor_pid) or psutil.Process(actor_pid).status() == psutil.STATUS_ZOMBIE


def test_killing_a_node_mid_run_fails_its_episodes_and_the_next_resets_use_live_nodes(cluster, backend):
    doomed = cluster.nodes[1]
    envs = [gym.make("PyVisionImage-v0", sandbox_backend="ray", exec_timeout_s=30).unwrapped for _ in range(24)]

    async def step_all() -> list:
        return await asyncio.gather(*(env.astep(code("import time\ntime.sleep(3)\nprint('done')")) for env in envs),
                                    return_exceptions=True)

    async def kill_mid_run() -> tuple[list, list]:
        infos = [info for _, info in await asyncio.gather(*(env.areset(seed=i) for i, env in enumerate(envs)))]
        steps = asyncio.ensure_future(step_all())
        await asyncio.sleep(1.0)  # the executions are sleeping on their nodes
        await asyncio.to_thread(cluster.remove_node, doomed)
        return infos, await steps

    try:
        infos, results = asyncio.run(kill_mid_run())
        on_doomed = [info["sandbox_node"] == doomed.node_id for info in infos]
        assert any(on_doomed) and not all(on_doomed)
        for lost, result in zip(on_doomed, results):
            if lost:
                assert isinstance(result, SandboxError), result
                assert f"Ray node {doomed.node_id}" in str(result) and "reset() starts a new episode" in str(result)
            else:
                assert "done" in result[0]["text"], result
        survivors = {env.reset(seed=i)[1]["sandbox_node"] for i, env in enumerate(envs)}
        assert survivors and doomed.node_id not in survivors
        # a node that joins (or comes back) gets an actor and, with the most free capacity, the next episode
        newcomer = cluster.add_node(num_cpus=16, object_store_memory=STORE)
        backend.refresh()
        assert envs[0].reset(seed=0)[1]["sandbox_node"] == newcomer.node_id
    finally:
        for env in envs:
            env.close()


def test_nothing_is_left_running_after_shutdown(cluster, backend):
    env = gym.make("PyVisionImage-v0", sandbox_backend="ray")
    env.reset(seed=0)  # an episode still open at shutdown
    nodes = backend.nodes()
    procs = [psutil.Process(n["pid"]) for n in nodes]
    procs += [child for p in procs for child in p.children(recursive=True)]  # zygotes and episode workers
    assert len(procs) > 2 * len(nodes)
    backend.close()
    gone, alive = psutil.wait_procs(procs, timeout=60)
    assert alive == []
    assert not any(os.path.exists(n["scratch_root"]) or os.path.exists(n["inputs_root"]) for n in nodes)
    with pytest.raises(SandboxError, match="closed"):
        backend.session()
    assert get_ray_backend() is not backend  # a closed backend is replaced on the next use
    env.close()


def test_local_stays_the_default_and_does_not_import_ray(tmp_path):
    script = ("import sys, socket, gymnasium as gym, pyvision_env\n"
              "env = gym.make('PyVisionImage-v0')\n"
              "obs, info = env.reset(seed=0)\n"
              "assert info['sandbox_node'] == socket.gethostname(), info['sandbox_node']\n"
              "env.close()\n"
              "assert 'ray' not in sys.modules, 'ray was imported'\n"
              "print('ok')")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_without_a_cluster_the_error_says_how_to_get_one(tmp_path):
    """``address="auto"`` finds a cluster through RAY_ADDRESS, Ray's temp dir, or any GCS process it can
    see; the process runs without the first two and in its own PID namespace, where it sees no other."""
    script = ("import gymnasium as gym, pyvision_env\n"
              "from pyvision_env.errors import SandboxStartError\n"
              "try:\n    gym.make('PyVisionImage-v0', sandbox_backend='ray')\n"
              "except SandboxStartError as e:\n    print(e)\n")
    alone = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]
    if subprocess.run([*alone, "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine refuses user + PID namespaces")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([*alone, sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**env, "RAY_TMPDIR": str(tmp_path), "PYTHONPATH": ROOT})
    assert "found none" in out.stdout and "ray start --head" in out.stdout, out.stderr[-2000:]


def test_bad_backend_settings_fail_at_make_time():
    with pytest.raises(ConfigError, match="sandbox_backend"):
        gym.make("PyVisionImage-v0", sandbox_backend="spark")
    with pytest.raises(ConfigError, match="ray_node_resource is only used with sandbox_backend='ray'"):
        gym.make("PyVisionImage-v0", ray_node_resource="pyvision_sandbox")
