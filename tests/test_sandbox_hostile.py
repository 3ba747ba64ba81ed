"""Hostile code: it must never hang or kill the host, never leave processes behind, and the next
execution must answer. Every test runs real processes; liveness checks poll with generous caps."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from pyvision_env.sandbox import SandboxConfig


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # gone, possibly between two looks
        return False


def _wait_gone(pids: list[int], cap_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + cap_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        time.sleep(0.05)
    return alive


FAST = SandboxConfig(exec_timeout_s=1.0, interrupt_grace_s=0.2)


def test_interruptible_loop_times_out_and_keeps_state(sandbox):
    with sandbox.session(config=FAST) as s:
        s.execute("kept = 'yes'")
        r = s.execute("n = 0\nwhile True:\n    n += 1")
        assert r.timed_out and not r.restarted and "KeyboardInterrupt" in r.error and "kept" in r.error
        assert "_worker.py" not in r.error and 'File "<code-2>"' in r.error
        assert s.execute("print(kept, n > 0)").stdout == "yes True\n"


@pytest.mark.parametrize("code", [
    "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
    "import signal\nsignal.signal(signal.SIGINT, lambda *args: None)\nwhile True: pass",
    "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except KeyboardInterrupt:\n        pass",
])
def test_loops_that_swallow_the_interrupt_are_killed_and_replaced(sandbox, gradient_png, code):
    with sandbox.session(images=[gradient_png], config=FAST) as s:
        old_pid = s.pid
        s.execute("kept = 1")
        r = s.execute(code)
        assert r.timed_out and r.restarted and "restarted" in r.error
        assert s.pid != old_pid and _wait_gone([old_pid]) == []
        r = s.execute("print('kept' in globals(), image_clue_0.size)")
        assert r.stdout == "False (128, 96)\n"


@pytest.mark.parametrize("code, signature", [
    ("import os\nos._exit(3)", "exit code 3"),
    ("import ctypes\nctypes.string_at(0)", "SIGSEGV"),
    ("import sys\nsys.setrecursionlimit(10**7)\nx = []\nfor _ in range(10**6): x = [x]\nrepr(x)", "SIGSEGV"),
])
def test_crashes_are_reported_and_the_next_execution_answers(sandbox, code, signature):
    with sandbox.session(config=SandboxConfig(exec_timeout_s=30)) as s:
        r = s.execute(code)
        assert r.crashed and r.restarted and signature in r.error, r.error
        assert s.execute("print(6 * 7)").stdout == "42\n"


@pytest.mark.parametrize("kill", ["os.kill(os.getpid(), signal.SIGKILL)", "os.killpg(0, signal.SIGKILL)"])
def test_killing_itself_is_ignored_because_the_worker_is_pid_1(sandbox, kill):
    with sandbox.session(config=FAST) as s:
        s.execute("kept = 1")
        r = s.execute(f"import os, signal\n{kill}\nprint(os.getpid())")
        assert r.stdout == "1\n" and not r.crashed
        assert s.execute("print(kept)").stdout == "1\n"


def test_memory_bomb_gets_memory_error_not_the_host(sandbox):
    with sandbox.session(config=SandboxConfig(memory_limit_mb=256)) as s:
        r = s.execute("hoard = []\nwhile True:\n    hoard.append(bytearray(16 * 2**20))")
        assert "MemoryError" in r.error and not r.crashed
        r = s.execute("hoard.clear(); print(len(bytearray(64 * 2**20)))")
        assert r.stdout == f"{64 * 2**20}\n", r.error


def test_fork_bomb_is_bounded_and_cleaned_up(sandbox):
    with sandbox.session(config=SandboxConfig(exec_timeout_s=60.0)) as s:  # forks are slow on a loaded machine
        r = s.execute(textwrap.dedent("""
            import os, time
            n = 0
            try:
                while True:
                    if os.fork() == 0:
                        time.sleep(1000)
                        os._exit(0)
                    n += 1
            except OSError as exc:
                print("refused after", n, type(exc).__name__)
        """))
        assert r.stdout.startswith("refused after") and int(r.stdout.split()[2]) < 400, r.stdout + str(r.error)
        kids = [p.pid for p in _descendants(s.pid)]
        assert len(kids) >= 100
    assert _wait_gone(kids) == []


def test_children_and_threads_left_behind_die_with_the_session(sandbox):
    s = sandbox.session()
    r = s.execute(textwrap.dedent("""
        import subprocess, threading, time, os
        p = subprocess.Popen(["sleep", "1000"])
        d = subprocess.Popen(["setsid", "sleep", "1000"])  # tries to escape into its own session
        t = threading.Thread(target=lambda: time.sleep(1000))
        t.start()
        print("ok")
    """))
    assert r.stdout == "ok\n", r.error
    left = [p.pid for p in _descendants(s.pid)] + [s.pid]
    assert len(left) >= 3
    s.close()
    assert _wait_gone(left) == []


def test_output_flood_is_bounded(sandbox):
    with sandbox.session(config=SandboxConfig(exec_timeout_s=1.0, max_output_chars=1000)) as s:
        r = s.execute("while True:\n    print('x' * 10000)")
        # it ends at the deadline or at RLIMIT_FSIZE (the capture file is bounded), whichever comes first
        assert r.timed_out or "File too large" in r.error
        assert len(r.stdout) < 1200 and "truncated" in r.stdout
        assert s.execute("print('after')").stdout == "after\n"


def test_figure_flood_is_capped(sandbox):
    with sandbox.session(config=SandboxConfig(max_frames_per_step=4)) as s:
        r = s.execute("for i in range(60):\n    plt.figure(figsize=(1, 1), dpi=20); plt.show()")
        assert len(r.frames) == 4 and any("56 frame(s) not returned" in n for n in r.notes)


def test_garbage_on_the_workers_socket_is_a_crash_not_a_host_failure(sandbox):
    with sandbox.session(config=FAST) as s:
        r = s.execute(textwrap.dedent("""
            import os, stat
            for fd in range(3, 64):
                try:
                    if stat.S_ISSOCK(os.fstat(fd).st_mode):
                        os.write(fd, b"\\x00\\x00\\x10\\x00" + b"\\xff" * 4096)
                except OSError:
                    pass
        """))
        assert r.crashed and r.restarted
        assert s.execute("print('alive')").stdout == "alive\n"


def test_code_cannot_signal_or_see_the_host(sandbox):
    host = os.getpid()
    with sandbox.session(config=FAST) as s:
        r = s.execute(f"import os, signal\nprint(os.getpid(), os.getppid())\n"
                      f"for target in ({host}, -1):\n"
                      f"    try:\n        os.kill(target, signal.SIGKILL)\n    except OSError as e:\n"
                      f"        print(type(e).__name__)")
        lines = r.stdout.splitlines()
        assert lines[0] == "1 0", "the worker is PID 1 of its own PID namespace"
        assert lines[1] == "ProcessLookupError"
        assert psutil.pid_exists(host) and sandbox.isolation.complete
        assert s.execute("print(1)").stdout == "1\n"


def test_episodes_cannot_signal_each_other(sandbox):
    with sandbox.session() as a, sandbox.session() as b:
        r = a.execute(f"import os, signal\ntry:\n    os.kill({b.pid}, signal.SIGKILL)\n"
                      f"except OSError as e:\n    print(type(e).__name__)")
        assert r.stdout in ("ProcessLookupError\n", "PermissionError\n")
        assert b.execute("print('b alive')").stdout == "b alive\n"


def test_writes_outside_the_scratch_directory_are_refused(sandbox, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    with sandbox.session() as s:
        for code in (f"open({str(victim)!r}, 'w')", f"import os; os.remove({str(victim)!r})",
                     f"import os; os.mkdir({str(tmp_path / 'd')!r})", "open('/usr/lib/pyvision-escape', 'w')",
                     f"import os; os.rename({os.__file__!r}, '/sandbox/home/os.py')"):
            r = s.execute(code)
            assert r.error and ("FileNotFoundError" in r.error or "Read-only file system" in r.error
                                or "Invalid cross-device link" in r.error), (code, r.error)
        assert s.execute("open('/tmp/pyvision-escape', 'w').write('inside')").error is None  # its own /tmp
    assert victim.read_text() == "precious" and not (tmp_path / "d").exists()
    assert not os.path.exists("/tmp/pyvision-escape") and not os.path.exists("/usr/lib/pyvision-escape")
    assert os.path.exists(os.__file__)


def test_network_is_unreachable(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    with sandbox.session(config=FAST) as s:
        r = s.execute(textwrap.dedent(f"""
            import socket
            for make in (lambda: socket.create_connection(("127.0.0.1", {port}), timeout=0.5),
                         lambda: socket.create_connection(("8.8.8.8", 53), timeout=0.5),
                         lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53))):
                try:
                    make()
                    print("reached")
                except OSError as e:
                    print("refused")
        """))
        assert r.stdout == "refused\n" * 3, r.stdout + str(r.error)
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()


def test_host_environment_does_not_reach_the_code(monkeypatch):
    from pyvision_env.sandbox import Sandbox

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-test")
    with Sandbox() as sb, sb.session() as s:
        r = s.execute("import os\nprint(sorted(os.environ))\nprint(open('/proc/self/environ', 'rb').read())")
        assert "sk-secret" not in r.stdout and "OPENAI_API_KEY" not in r.stdout, r.stdout


def test_seccomp_and_landlock_fallback_without_namespaces():
    from pyvision_env.sandbox import Sandbox

    with Sandbox(use_namespaces=False) as sb:
        report = sb.isolation
        assert (report.network, report.filesystem, report.processes) == ("seccomp", "landlock", "process-group")
        with sb.session(config=FAST) as s:
            r = s.execute("import socket\ntry:\n    socket.socket()\nexcept PermissionError:\n    print('refused')")
            assert r.stdout == "refused\n", r.error
            assert "PermissionError" in s.execute("open('/tmp/pyvision-escape', 'w')").error
            s.execute("import subprocess\np = subprocess.Popen(['sleep', '1000'])")
            kids = [p.pid for p in _descendants(s.pid)] + [s.pid]
        assert _wait_gone(kids) == []


def test_strict_mode_refuses_partial_isolation():
    from pyvision_env.errors import SandboxStartError
    from pyvision_env.sandbox import Sandbox

    with Sandbox(isolation="strict", use_namespaces=False) as sb, pytest.raises(SandboxStartError, match="strict"):
        sb.session()


def test_no_isolation_is_loud():
    from pyvision_env.sandbox import IsolationWarning, Sandbox

    with Sandbox(isolation="none") as sb, pytest.warns(IsolationWarning, match="DISABLED"):
        report = sb.isolation
    assert report.network == "none" and not report.complete


def test_a_dead_zygote_is_restarted(sandbox):
    from pyvision_env.sandbox import Sandbox

    with Sandbox() as sb:
        s = sb.session()
        s.execute("kept = 1")
        deadline = time.monotonic() + 30
        while len(sb._pool._ready) < 2 and time.monotonic() < deadline:  # the pool full of the zygote's workers
            time.sleep(0.05)
        assert len(sb._pool._ready) == 2
        launcher = sb._zygote._proc.pid
        for p in psutil.Process(launcher).children(recursive=True) + [psutil.Process(launcher)]:
            p.kill()
        r = s.execute("print('kept' in globals())")
        assert r.crashed and r.restarted and sb.zygote_starts == 2, r.error
        assert s.execute("print('kept' in globals())").stdout == "False\n"
        with sb.session() as fresh:  # the pool's dead workers are not handed out again
            assert fresh.execute("print(1)").stdout == "1\n"
        s.close()


HOST_SCRIPT = """
import sys, time
from pyvision_env.sandbox import get_sandbox
s = get_sandbox().session()
s.execute("import subprocess; p = subprocess.Popen(['sleep', '1000'])")
print(s.pid, get_sandbox()._zygote._proc.pid, flush=True)
threading = __import__("threading")
threading.Thread(target=lambda: s.execute("while True: pass", timeout=1000), daemon=True).start()
time.sleep(1000)
"""


def test_everything_dies_with_a_killed_host():
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        worker_pid, launcher_pid = map(int, host.stdout.readline().split())
        tree = [worker_pid, launcher_pid] + [p.pid for p in _descendants(launcher_pid)]
        assert len(tree) >= 4  # launcher, zygote, worker, its child
        time.sleep(0.2)
        host.send_signal(signal.SIGKILL)
        host.wait()
        assert _wait_gone(tree) == []
    finally:
        host.kill()


def test_concurrent_timeouts_do_not_disturb_other_episodes(sandbox):
    outputs: dict[int, str] = {}

    def busy() -> None:
        with sandbox.session(config=FAST) as s:
            s.execute("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass")

    def calm(i: int) -> None:
        with sandbox.session() as s:
            outputs[i] = "".join(s.execute(f"print({i} + {k})").stdout for k in range(20))

    threads = [threading.Thread(target=busy) for _ in range(3)] + [threading.Thread(target=calm, args=(i,))
                                                                  for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outputs == {i: "".join(f"{i + k}\n" for k in range(20)) for i in range(4)}


def test_interrupts_work_when_the_host_blocks_sigint():
    """Ray blocks SIGINT in its workers; a blocked signal survives fork and exec, so a zygote started
    there must unblock it, or every timeout would kill the interpreter and lose its state."""
    script = textwrap.dedent("""
        import signal
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        from pyvision_env.sandbox import Sandbox, SandboxConfig
        with Sandbox() as sb, sb.session(config=SandboxConfig(exec_timeout_s=1.0)) as s:
            s.execute("kept = 1")
            r = s.execute("while True:\\n    pass")
            print(r.timed_out, r.restarted, s.execute("print(kept)").stdout.strip())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "True False 1", out.stdout + out.stderr
