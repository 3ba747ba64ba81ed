"""The sandbox's contract for well-behaved code: state, inputs, output, frames, errors, concurrency."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import numpy as np
import pytest
from pydantic import ValidationError

from pyvision_env.errors import MediaError, SessionClosedError
from pyvision_env.sandbox import SandboxConfig


def test_state_persists_across_executions(sandbox):
    with sandbox.session() as s:
        assert s.execute("x = 41\ndef inc(v):\n    return v + 1").ok
        r = s.execute("print(inc(x))")
        assert r.stdout == "42\n" and r.error is None


def test_last_expression_is_echoed_like_a_notebook_cell(sandbox):
    with sandbox.session() as s:
        assert s.execute("a = [1, 2]\na").stdout == "[1, 2]\n"
        assert s.execute("None").stdout == ""


def test_preloaded_names_are_there(sandbox):
    with sandbox.session() as s:
        r = s.execute("print(np.__name__, plt.__name__, Image.__name__, cv2.__name__, callable(display))")
        assert r.stdout == "numpy matplotlib.pyplot PIL.Image cv2 True\n"


def test_a_fresh_episode_starts_clean(sandbox, gradient_png):
    # a pooled worker warms up by running a cell that shows a dummy image: none of it may reach the episode
    for _ in range(3):  # pooled workers and, once the pool is empty, freshly forked ones
        with sandbox.session(images=[gradient_png]) as s:
            r = s.execute("print(sorted(k for k in globals() if not k.startswith('__')))")
            assert r.error is None and r.frames == () and r.stderr == ""
            assert r.stdout == ("['Image', 'VideoReader', 'base64', 'cpu', 'cv2', 'display', 'image_clue_0', "
                                "'io', 'matplotlib', 'np', 'plt']\n")


def test_video_reader_decodes_a_video_the_code_made(sandbox):
    # PyAV is not preloaded in the zygote (workers read video_clue_0 from the host's service): code that
    # decodes a file itself imports it inside the sandbox
    code = ("import sys\nprint('av' in sys.modules)\n"
            "w = cv2.VideoWriter('/tmp/clip.mp4', cv2.VideoWriter_fourcc(*'mp4v'), 10, (64, 48))\n"
            "for v in (0, 128, 255):\n    w.write(np.full((48, 64, 3), v, np.uint8))\nw.release()\n"
            "vr = VideoReader('/tmp/clip.mp4')\nprint(len(vr), vr[0].shape)\n"
            "print(*(int(vr[i].asnumpy().mean()) for i in range(3)))")
    with sandbox.session() as s:
        r = s.execute(code, timeout=30)
        assert r.error is None, r.error
        preloaded, size, means = r.stdout.splitlines()
        assert preloaded == "False" and size == "3 (48, 64, 3)"
        assert all(abs(int(m) - v) <= 6 for m, v in zip(means.split(), (0, 128, 255), strict=True)), means


def test_the_zygote_heap_is_on_huge_pages_where_the_kernel_allows(sandbox):
    import psutil

    thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    if "[never]" in thp or tuple(int(x) for x in os.uname().release.split(".")[:2]) < (6, 1):
        pytest.skip(f"no MADV_COLLAPSE here (kernel {os.uname().release}, THP {thp.strip()})")
    with sandbox.session() as s:
        zygote = psutil.Process(s.pid).parent()
        assert zygote.name() == "pyvision-zygote"
        with open(f"/proc/{zygote.pid}/smaps_rollup") as f:
            huge_kb = next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))
        assert huge_kb >= 4096  # its heap is over 15 MiB: several whole 2 MiB pages
        assert s.execute("print(sum(range(10)))").stdout == "45\n"


def test_images_arrive_exactly_as_pil_rgb(sandbox, gradient, gradient_png):
    with sandbox.session(images=[gradient_png, gradient[::-1]]) as s:
        r = s.execute("print(image_clue_0.mode, image_clue_0.size, image_clue_1.size)\n"
                      "a = np.asarray(image_clue_0); b = np.asarray(image_clue_1)\n"
                      "print(int(a.sum()), int(b[0].sum()))")
        assert r.error is None, r.error
        assert r.stdout.splitlines() == ["RGB (128, 96) (128, 96)",
                                         f"{int(gradient.sum())} {int(gradient[-1].sum())}"]


def test_editing_an_input_image_does_not_leak_into_the_next_episode(sandbox, gradient_png):
    with sandbox.session(images=[gradient_png]) as s:
        r = s.execute("image_clue_0.paste((255, 0, 0), (0, 0, 20, 20)); print(image_clue_0.getpixel((1, 1)))")
        assert r.stdout == "(255, 0, 0)\n", r.error
    with sandbox.session(images=[gradient_png]) as s:
        assert s.execute("print(image_clue_0.getpixel((1, 1)))").stdout == "(2, 2, 2)\n"


def test_stdout_and_stderr_from_python_c_and_children_are_captured(sandbox):
    with sandbox.session() as s:
        r = s.execute("import os, sys, subprocess\nprint('py')\nsys.stdout.flush()\nos.write(1, b'c-level\\n')\n"
                      "subprocess.run(['echo', 'child'])\nprint('err', file=sys.stderr)")
        assert r.stdout == "py\nc-level\nchild\n"
        assert r.stderr == "err\n"
        assert s.execute("print('fresh')").stdout == "fresh\n"  # nothing carried over


def test_long_output_keeps_head_and_tail(sandbox):
    with sandbox.session(config=SandboxConfig(max_output_chars=100)) as s:
        r = s.execute("print('HEAD' + 'x' * 5000 + 'TAIL')")
        assert r.stdout.startswith("HEAD") and r.stdout.rstrip().endswith("TAIL")
        assert "truncated" in r.stdout and len(r.stdout) < 200


def test_traceback_shows_the_models_code_only(sandbox):
    with sandbox.session() as s:
        r = s.execute("def f(v):\n    return 1 / v\nf(0)")
        assert "ZeroDivisionError" in r.error and "return 1 / v" in r.error
        assert "_worker.py" not in r.error and "pyvision_env" not in r.error
        assert s.execute("print(f(2))").stdout == "0.5\n"


def test_syntax_error_is_reported(sandbox):
    with sandbox.session() as s:
        r = s.execute("def broken(:\n  pass")
        assert r.error.startswith("  File \"<code-1>\"") and "SyntaxError" in r.error


def test_sys_exit_does_not_end_the_episode(sandbox):
    with sandbox.session() as s:
        s.execute("kept = 7")
        r = s.execute("import sys\nsys.exit(3)")
        assert "SystemExit: 3" in r.error and not r.crashed
        assert s.execute("print(kept)").stdout == "7\n"


def test_frames_come_back_in_order_from_every_hook(sandbox):
    code = """
fig1 = plt.figure(figsize=(2, 1), dpi=50); plt.plot([0, 1])
plt.show()
fig2, ax = plt.subplots(figsize=(3, 2), dpi=50); fig2.show()
display(Image.new("RGB", (10, 20), (0, 255, 0)))
display(np.zeros((7, 9)))
display(np.ones((4, 5, 3), dtype=np.float32))
Image.new("L", (3, 3)).show()
display("just text")
"""
    with sandbox.session() as s:
        r = s.execute(code)
        assert r.error is None, r.error
        assert [f.shape for f in r.frames] == [(50, 100, 3), (100, 150, 3), (20, 10, 3), (7, 9, 3), (4, 5, 3),
                                               (3, 3, 3)]
        assert all(f.dtype == np.uint8 for f in r.frames)
        assert (r.frames[2] == [0, 255, 0]).all() and (r.frames[4] == 255).all() and (r.frames[3] == 0).all()
        assert r.stdout == "'just text'\n"


def test_ipython_display_import_works(sandbox):
    with sandbox.session() as s:
        r = s.execute("from IPython.display import display as d\nd(np.zeros((2, 2, 3), np.uint8))")
        assert r.error is None and len(r.frames) == 1


def test_frame_caps_and_downscaling_are_noted(sandbox):
    cfg = SandboxConfig(max_frames_per_step=2, max_frames_per_episode=3, max_frame_pixels=100 * 100)
    with sandbox.session(config=cfg) as s:
        r = s.execute("for _ in range(5): display(np.zeros((400, 400, 3), np.uint8))")
        assert len(r.frames) == 2 and all(f.shape[0] * f.shape[1] <= 100 * 100 for f in r.frames)
        assert any("3 frame(s) not returned" in n for n in r.notes)
        assert any("downscaled" in n for n in r.notes)
        r = s.execute("for _ in range(5): display(np.zeros((10, 10, 3), np.uint8))")
        assert len(r.frames) == 1  # the episode cap of 3


def test_exact_pixels_cross_the_boundary(sandbox, gradient):
    with sandbox.session(images=[gradient]) as s:
        r = s.execute("display(image_clue_0)")
        np.testing.assert_array_equal(r.frames[0], gradient)


def test_working_directory_is_a_private_scratch_tmpfs_gone_at_close(sandbox):
    import os

    s = sandbox.session()
    r = s.execute("import os\nopen('notes.txt', 'w').write('hi')\nprint(os.getcwd(), os.environ['TMPDIR'])")
    assert r.error is None and r.stdout.split() == [s.scratch_dir, "/sandbox/tmp"]
    inside = f"/proc/{s.pid}/root{s.scratch_dir}/notes.txt"  # the worker's own root, seen from the host
    with open(inside) as f:
        assert f.read() == "hi"
    assert not os.path.exists(os.path.join(s.scratch_dir, "notes.txt"))  # never on the host's disk
    s.close()
    deadline = time.monotonic() + 10
    while os.path.exists(inside) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(inside)
    assert not [name for name in os.listdir(sandbox.scratch_root) if name.startswith("episode-")]


def test_bad_inputs_raise_clear_errors(sandbox, tmp_path):
    with pytest.raises(MediaError, match="nope.png"):
        sandbox.session(images=[str(tmp_path / "nope.png")])
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(MediaError, match="corrupt.png"):
        sandbox.session(images=[str(bad)])
    with pytest.raises(MediaError, match="HxWx3"):
        sandbox.session(images=[np.zeros((2, 2, 2), np.uint8)])
    with pytest.raises(ValidationError, match="exec_timeout"):
        SandboxConfig(exec_timeout_s=0)
    with pytest.raises(ValidationError, match="not_a_key"):
        SandboxConfig(not_a_key=1)


def test_closed_session_refuses_work_and_close_is_idempotent(sandbox):
    s = sandbox.session()
    s.close()
    s.close()
    with pytest.raises(SessionClosedError):
        s.execute("x = 1")


def test_threads_share_one_zygote(sandbox):
    results: dict[int, str] = {}

    def episode(i: int) -> None:
        with sandbox.session() as s:
            s.execute(f"v = {i} * 10")
            results[i] = s.execute("print(v)").stdout

    threads = [threading.Thread(target=episode, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"{i * 10}\n" for i in range(12)}


def test_async_steps_do_not_block_the_event_loop(sandbox):
    async def main() -> tuple[int, list[str]]:
        ticks = 0
        stop = asyncio.Event()

        async def heartbeat() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        beat = asyncio.create_task(heartbeat())
        sessions = await asyncio.gather(*(sandbox.asession() for _ in range(4)))
        results = await asyncio.gather(*(s.aexecute(f"import time; time.sleep(0.5); print({i})")
                                         for i, s in enumerate(sessions)))
        await asyncio.gather(*(s.aclose() for s in sessions))
        stop.set()
        await beat
        return ticks, [r.stdout for r in results]

    ticks, outputs = asyncio.run(main())
    assert outputs == ["0\n", "1\n", "2\n", "3\n"]
    assert ticks >= 10  # the loop kept turning while four 0.5 s steps ran


def test_sessions_of_a_closed_sandbox_refuse_work_and_start_nothing():
    from pyvision_env.sandbox import Sandbox

    sb = Sandbox()
    s = sb.session()
    assert s.execute("x = 1").ok
    sb.close()
    with pytest.raises(SessionClosedError, match="Sandbox of this session was closed"):
        s.execute("x = 1")
    assert sb.zygote_starts == 1  # no zygote was started again for the closed sandbox
    s.close()


def test_a_forked_child_gets_its_own_sandbox_and_leaves_the_parents_alone(sandbox):
    import multiprocessing
    import os

    from pyvision_env.errors import SandboxError
    from pyvision_env.sandbox import get_sandbox

    with sandbox.session() as s:
        s.execute("kept = 'parent'")

        def child(queue):
            try:
                sandbox.session()
                queue.put("used the parent's sandbox")
            except SandboxError as exc:
                assert "fork" in str(exc)
            own = get_sandbox()
            assert own is not sandbox
            with own.session() as mine:
                queue.put(mine.execute("print(6 * 7)").stdout)
            own.close()

        queue = multiprocessing.get_context("fork").Queue()
        proc = multiprocessing.get_context("fork").Process(target=child, args=(queue,))
        proc.start()
        proc.join(120)
        assert proc.exitcode == 0 and queue.get(timeout=5) == "42\n"
        pid = os.fork()
        if pid == 0:  # what a plain fork's exit runs: the finalizers it inherited (atexit)
            s._finalizer()
            sandbox._finalizer()
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.path.isdir(sandbox.scratch_root)
        assert s.execute("print(kept)").stdout == "parent\n"
