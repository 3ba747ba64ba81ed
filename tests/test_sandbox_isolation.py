"""Attacks on the sandbox's isolation, one per class of the threat model (README: "Threat model").

Every test runs the model's code in real workers and checks the host afterwards. ``fallback`` is a
sandbox without namespaces (what containers that refuse user namespaces get): where a claim is made for
that mode too, the test attacks it there as well.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest
from process_utils import exited

from pyvision_env.media.images import fit_pixels
from pyvision_env.sandbox import Sandbox, SandboxConfig

FAST = SandboxConfig(exec_timeout_s=2.0, interrupt_grace_s=0.2)
_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture(scope="module")
def fallback():
    with Sandbox(use_namespaces=False) as sb:
        yield sb


def _secret_file(tmp_path, name="secret.txt", text="sk-live-0123456789"):
    path = tmp_path / name
    path.write_text(text)
    return path


# 1. metadata of host files ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["private-root", "fallback"])
def test_host_file_metadata_cannot_change(sandbox, fallback, tmp_path, mode):
    sb = sandbox if mode == "private-root" else fallback
    victim = _secret_file(tmp_path, "dataset.jsonl", "{}")
    os.chmod(victim, 0o640)
    os.setxattr(victim, "user.origin", b"host")
    before = os.stat(victim)
    with sb.session(config=FAST) as s:
        r = s.execute(textwrap.dedent(f"""
            import os
            path = {str(victim)!r}
            for name, attack in [("chmod", lambda: os.chmod(path, 0o4777)),
                                 ("utime", lambda: os.utime(path, (0, 0))),
                                 ("setxattr", lambda: os.setxattr(path, "user.origin", b"sandbox")),
                                 ("chmod-python", lambda: os.chmod(os.__file__, 0o777))]:
                try:
                    attack()
                    print(name, "DONE")
                except OSError as e:
                    print(name, type(e).__name__)
        """))
        assert "DONE" not in r.stdout and r.stdout.count("\n") == 4, r.stdout + str(r.error)
    after = os.stat(victim)
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert os.getxattr(victim, "user.origin") == b"host"
    assert os.stat(os.__file__).st_mode & 0o777 != 0o777


# 2. reading host files, other episodes' scratch -----------------------------------------------------


@pytest.mark.parametrize("mode", ["private-root", "fallback"])
def test_host_secrets_cannot_be_read(sandbox, fallback, tmp_path, mode):
    sb = sandbox if mode == "private-root" else fallback
    secret = _secret_file(tmp_path)
    netrc = _secret_file(tmp_path, ".netrc", "machine api login me password sk-netrc-secret")
    with sb.session(config=FAST) as s:
        r = s.execute(textwrap.dedent(f"""
            import os
            for path in [{str(secret)!r}, {str(netrc)!r}, "/etc/shadow", "/etc/hostname", "/root/.bash_history",
                         os.path.expanduser("~/.netrc"), "/proc/1/environ"]:
                try:
                    print(open(path).read()[:40])
                except OSError as e:
                    print(type(e).__name__)
            for folder in ["/root", "/home", "/run", "/var", {str(tmp_path)!r}]:
                try:
                    print(folder, os.listdir(folder))
                except OSError as e:
                    print(folder, type(e).__name__)
        """))
    out = r.stdout
    assert "sk-live" not in out and "sk-netrc" not in out and "root:" not in out, out
    if mode == "private-root":
        assert "/home FileNotFoundError" in out and "/run FileNotFoundError" in out, out
        assert "/root ['.pyenv']" in out or "/root FileNotFoundError" in out, out  # only the Python installation


def test_episodes_cannot_read_each_others_scratch(sandbox):
    with sandbox.session(config=FAST) as a, sandbox.session(config=FAST) as b:
        assert a.execute("open('private.txt', 'w').write('episode-a-secret')").error is None
        r = b.execute(textwrap.dedent(f"""
            import os, glob
            print(os.listdir('.'), glob.glob('/sandbox/**', recursive=True)[:20])
            for path in ['private.txt', '/proc/{a.pid}/root/sandbox/home/private.txt']:
                try:
                    print(open(path).read())
                except OSError as e:
                    print(type(e).__name__)
        """))
        assert "episode-a-secret" not in r.stdout and "private.txt" not in r.stdout.splitlines()[0], r.stdout


def test_the_video_file_is_readable_through_its_reader_only(sandbox, tmp_path):
    from media_utils import make_video

    video = tmp_path / "clip.mp4"
    make_video(str(video), n_frames=10)
    _secret_file(tmp_path, "labels.json", "the answer is 42")
    with sandbox.session(video=str(video), config=FAST) as s:
        r = s.execute(textwrap.dedent(f"""
            import os
            print(len(video_clue_0), video_clue_0.get_batch([0, 9]).asnumpy().shape)
            for path in [{str(video)!r}, {str(tmp_path / "labels.json")!r}]:
                try:
                    open(path).read()
                    print("READ")
                except OSError as e:
                    print(type(e).__name__)
        """))
    assert r.stdout.splitlines()[0].startswith("10 (2,") and "READ" not in r.stdout, r.stdout + str(r.error)


# 3. host processes ---------------------------------------------------------------------------------


def test_proc_shows_only_the_episodes_own_processes(sandbox):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--api-key=sk-proc-secret"])
    try:
        with sandbox.session(config=FAST) as s:
            r = s.execute(textwrap.dedent("""
                import os, subprocess
                child = subprocess.Popen(['sleep', '30'])
                pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
                cmdlines = [open(f'/proc/{p}/cmdline', 'rb').read() for p in pids]
                print(pids, any(b'sk-proc-secret' in c for c in cmdlines))
                child.kill()
                _ = child.wait()
            """))
        assert r.stdout.strip() == "[1, 2] False", r.stdout + str(r.error)
    finally:
        holder.kill()
        holder.wait()


# 4. host unix sockets ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["private-root", "fallback"])
def test_host_pathname_unix_socket_cannot_be_reached(sandbox, fallback, tmp_path, mode):
    sb = sandbox if mode == "private-root" else fallback
    path = str(tmp_path / "daemon.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen()
    server.settimeout(0.3)
    with sb.session(config=FAST) as s:
        r = s.execute(textwrap.dedent(f"""
            import socket
            try:
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.connect({path!r})
                c.sendall(b"GET /containers/json")
                print("CONNECTED")
            except OSError as e:
                print(type(e).__name__)
        """))
    assert "CONNECTED" not in r.stdout and r.stdout.strip(), r.stdout + str(r.error)
    with pytest.raises(TimeoutError):
        server.accept()
    server.close()


# 5. other episodes: network, abstract sockets, SysV IPC, keyring ------------------------------------


def test_no_udp_or_abstract_socket_between_concurrent_episodes(sandbox):
    with sandbox.session(config=FAST) as a, sandbox.session(config=FAST) as b:
        listen = a.execute(textwrap.dedent("""
            import socket
            results = []
            for family, kind in [(socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_INET6, socket.SOCK_DGRAM),
                                 (socket.AF_NETLINK, socket.SOCK_RAW), (socket.AF_PACKET, socket.SOCK_RAW)]:
                try:
                    socket.socket(family, kind)
                    results.append("OPENED")
                except OSError as e:
                    results.append(type(e).__name__)
            abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            abstract.bind("\\0pyvision-episode-a")
            abstract.settimeout(0.5)
            print(results)
        """))
        assert "OPENED" not in listen.stdout, listen.stdout + str(listen.error)
        r = b.execute(textwrap.dedent("""
            import socket
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                s.sendto(b"hello from b", "\\0pyvision-episode-a")
                print("SENT")
            except OSError as e:
                print(type(e).__name__)
        """))
        assert "SENT" not in r.stdout, r.stdout
        got = a.execute("try:\n    print(abstract.recv(100))\nexcept OSError as e:\n    print(type(e).__name__)")
        assert "hello" not in got.stdout


_IPC_CREAT, _IPC_RMID = 0o1000, 0


def test_sysv_shared_memory_is_the_episodes_own(sandbox):
    key = 0x5059_0001
    shmid = _libc.shmget(key, 4096, _IPC_CREAT | 0o666)
    assert shmid >= 0, os.strerror(ctypes.get_errno())
    _libc.shmat.restype = ctypes.c_void_p
    addr = _libc.shmat(shmid, None, 0)
    ctypes.memmove(addr, b"host-shm-secret", 15)
    try:
        with sandbox.session(config=FAST) as s:
            r = s.execute(textwrap.dedent(f"""
                import ctypes, os
                libc = ctypes.CDLL(None, use_errno=True)
                print(libc.shmget({key}, 0, 0), ctypes.get_errno() == 2)
                made = libc.shmget(0x50590002, 4096, 0o1000 | 0o666)
                print(made >= 0, open('/proc/sysvipc/shm').read().count('\\n'))
            """))
            lines = r.stdout.splitlines()
            assert lines[0] == "-1 True", r.stdout + str(r.error)  # the host's segment does not exist in there
            assert lines[1] == "True 2", r.stdout  # its own segment: header line + one row
        with open("/proc/sysvipc/shm") as f:
            assert "1347747842" not in f.read()  # 0x50590002: the episode's segment never reached the host
        assert ctypes.string_at(addr, 15) == b"host-shm-secret"
    finally:
        _libc.shmdt(ctypes.c_void_p(addr))
        _libc.shmctl(shmid, _IPC_RMID, None)


def test_host_keyring_is_not_inherited(sandbox):
    key = _libc.syscall(248, b"user", b"pyvision-host-key", b"sk-keyring-secret", 17, -3)  # add_key @s
    if key < 0:
        pytest.skip(f"keyrings unavailable here: {os.strerror(ctypes.get_errno())}")
    with sandbox.session(config=FAST) as s:
        r = s.execute(textwrap.dedent(f"""
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            buf = ctypes.create_string_buffer(64)
            print(libc.syscall(250, 11, {key}, buf, 64), ctypes.get_errno())   # KEYCTL_READ
            print(libc.syscall(250, 0, -3, 0))                                # KEYCTL_GET_KEYRING_ID @s
            print(buf.value)
        """))
    assert "sk-keyring-secret" not in r.stdout
    assert r.stdout.splitlines()[:2] == ["-1 1", "-1"], r.stdout + str(r.error)  # EPERM: keyctl refused


# 6. limits that multiply: memfds, children, disk ------------------------------------------------------


def _cgroups_of(pid: int | str) -> dict[str, str]:
    """Controller name ('' for cgroup v2) -> the cgroup of process ``pid`` (or ``"self"``) in it."""
    with open(f"/proc/{pid}/cgroup") as f:
        return {n: p for _, names, p in (line.strip().split(":", 2) for line in f) for n in names.split(",")}


def _requires_cgroups(sb):
    if not sb.isolation.resources.startswith("cgroup"):
        pytest.skip("no per-episode cgroups on this machine")


@pytest.mark.parametrize("attack", [
    # four memfds written through (not mapped: RLIMIT_AS never sees them), together far above the budget
    "import os\nfds = []\nchunk = b'x' * (8 << 20)\nfor i in range(4):\n    fd = os.memfd_create(f'm{i}')\n"
    "    fds.append(fd)\n    for _ in range(10):\n        os.write(fd, chunk)\nprint('HELD', len(fds) * 80, 'MB')",
    # four children, each under RLIMIT_AS
    "import os, time\nkids = []\nfor i in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
    "        b = bytearray(80 << 20)\n        b[::4096] = b'x' * len(b[::4096])\n"
    "        time.sleep(30)\n        os._exit(0)\n"
    "    kids.append(pid)\ntime.sleep(3)\nprint('ALIVE', [os.waitpid(p, os.WNOHANG) for p in kids])",
    # files in the scratch tmpfs (each file under RLIMIT_FSIZE)
    "for i in range(6):\n    with open(f'big{i}', 'wb') as f:\n        f.write(b'x' * (80 << 20))",
])
def test_memory_of_memfds_children_and_files_counts_against_the_episode(sandbox, attack):
    _requires_cgroups(sandbox)
    cfg = SandboxConfig(exec_timeout_s=20, memory_limit_mb=96, max_file_mb=100)
    with sandbox.session(config=cfg) as s:
        r = s.execute(attack)
        assert "HELD" not in r.stdout, r.stdout
        if "ALIVE" in r.stdout:  # the kernel killed children to keep the episode within its limit
            assert r.stdout.count("(0, 0)") <= 1, r.stdout
        else:
            assert r.crashed or (r.error and ("MemoryError" in r.error or "No space" in r.error)), r
        if r.crashed:
            assert "memory limit" in r.error, r.error
        assert s.execute("print(6 * 7)").stdout == "42\n"


def test_disk_beyond_the_scratch_bound_is_refused(sandbox):
    cfg = SandboxConfig(exec_timeout_s=20, max_scratch_mb=32, max_file_mb=256)
    with sandbox.session(config=cfg) as s:
        r = s.execute("with open('fill', 'wb') as f:\n    for _ in range(64):\n        f.write(b'x' * (1 << 20))")
        assert r.error and "No space left on device" in r.error, r.error
        r = s.execute("import os\nprint(os.statvfs('.').f_blocks * os.statvfs('.').f_frsize >> 20)")
        assert r.stdout.strip() == "32"


def test_cpu_of_background_children_is_bounded_by_the_episode_quota(sandbox):
    _requires_cgroups(sandbox)
    if not os.path.isdir("/sys/fs/cgroup/cpu") and not os.path.exists("/sys/fs/cgroup/cpu.max"):
        pytest.skip("no cpu cgroup controller here")
    cfg = SandboxConfig(exec_timeout_s=30, cpu_limit_cores=0.1)
    with sandbox.session(config=cfg) as s:
        r = s.execute(textwrap.dedent("""
            import os, time
            kids = []
            for _ in range(3):
                pid = os.fork()
                if pid == 0:
                    end = time.monotonic() + 2.0
                    while time.monotonic() < end:
                        pass
                    os._exit(0)
                kids.append(pid)
            for pid in kids:
                os.waitpid(pid, 0)
            t = os.times()
            print(round(t.children_user + t.children_system, 3))
        """))
    used = float(r.stdout)
    assert used < 0.5, f"3 busy children used {used} s of CPU in 2 s under a 0.1-core quota"


def test_episode_cgroups_live_below_the_hosts_own(sandbox):
    _requires_cgroups(sandbox)
    own = _cgroups_of("self")
    with sandbox.session(config=FAST) as s:
        worker = _cgroups_of(s.pid)
    for controller in ("memory", "pids"):
        prefix = own[controller].rstrip("/") + "/pyvision-"
        assert worker[controller].startswith(prefix), (controller, worker[controller], own[controller])


@pytest.mark.parametrize("self_join", [True, False])
def test_each_worker_is_in_its_own_cgroup_before_it_runs_code(sandbox, monkeypatch, self_join):
    # v1: the worker joins its cgroups itself through descriptors the host opened (no wait for the kernel's
    # global lock), and closes them before any code runs; without them the host moves it after hello
    from pyvision_env.sandbox import Sandbox
    from pyvision_env.sandbox._cgroups import EpisodeCgroup

    _requires_cgroups(sandbox)
    if not self_join:
        monkeypatch.setattr(EpisodeCgroup, "open_for_self_join", lambda self: [])
    with Sandbox(pool_size=1) as sb:
        sessions = [sb.session(config=FAST) for _ in range(3)]  # pooled and freshly forked workers
        seen = []
        for s in sessions:
            cgroups = _cgroups_of(s.pid)
            assert all("/pyvision-" in cgroups[c] and "/ep-" in cgroups[c] for c in ("memory", "pids")), cgroups
            seen.append(cgroups["memory"])
            r = s.execute("import os\nlinks = []\nfor n in os.listdir('/proc/self/fd'):\n    try:\n"
                          "        links.append(os.readlink(f'/proc/self/fd/{n}'))\n    except OSError:\n"
                          "        pass\nprint(links)")
            assert r.error is None and "socket:" in r.stdout, r  # the listing works: the worker's socket is there
            assert "cgroup" not in r.stdout and "tasks" not in r.stdout, r.stdout
        assert len(set(seen)) == 3
        for s in sessions:
            s.close()


# 7. a reply that stalls ------------------------------------------------------------------------------

_OWN_SOCKET = textwrap.dedent("""
    import os, stat
    def _socket_fd():  # the worker's own socket to the host: the only socket it holds
        for name in os.listdir('/proc/self/fd'):
            try:
                if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                    return int(name)
            except OSError:
                pass
    sock_fd = _socket_fd()
""")


@pytest.mark.timeout(60)
def test_a_reply_that_stalls_is_a_timeout(sandbox):
    with sandbox.session(config=SandboxConfig(exec_timeout_s=1.0, interrupt_grace_s=0.2)) as s:
        s.execute("kept = 1")
        start = time.monotonic()
        r = s.execute(_OWN_SOCKET + "os.write(sock_fd, b'\\x00')\nimport time\nfor _ in range(600):\n"
                      "    try:\n        time.sleep(0.1)\n    except KeyboardInterrupt:\n        pass")
        took = time.monotonic() - start
        assert r.timed_out and r.restarted and "stalled" in r.error, r
        assert took < 20, f"step held for {took:.1f} s"  # liveness bound, far above deadline + grace + 1 s
        assert s.execute("print('kept' in globals())").stdout == "False\n"


# 8. forged replies ------------------------------------------------------------------------------------


def _forge(rid: int, header_extra: str, buffers: str) -> str:
    return _OWN_SOCKET + textwrap.dedent(f"""
        import json, struct
        frames = {buffers}
        header = dict(id={rid}, stdout="", stderr="", error=None, exec_time_s=0.0, notes=[], frames=[])
        header.update({header_extra})
        header["frames"] = [list(f.shape[:2]) for f in frames]
        header["buffers"] = [f.nbytes for f in frames]
        body = json.dumps(header).encode()
        os.write(sock_fd, struct.pack("!I", len(body)) + body)
        for f in frames:
            view = memoryview(f.tobytes())
            while view:
                view = view[os.write(sock_fd, view):]
    """)


@pytest.mark.parametrize("extra, buffers, check", [
    ("{}", "[np.full((8, 8, 3), i, np.uint8) for i in range(200)]",
     lambda r, c: len(r.frames) == c.max_frames_per_step and any("not returned" in n for n in r.notes)),
    ("{}", "[np.zeros((1000, 2500, 3), np.uint8)]",
     lambda r, c: r.frames[0].shape[0] * r.frames[0].shape[1] <= c.max_frame_pixels),
    ("{}", "[np.zeros((3000, 6000, 3), np.uint8)]",  # over what the host reads at all: the worker is replaced
     lambda r, c: r.frames == () and r.restarted and "reply protocol" in r.error),
    ("{'stdout': 'A' * 500_000}", "[]",
     lambda r, c: len(r.stdout) < c.max_output_chars + 200 and "truncated" in r.stdout),
    ("{'stdout': 'A' * 1_500_000}", "[]",
     lambda r, c: r.stdout == "" and r.restarted and "reply protocol" in r.error),
    ("{'stdout': 'bad \\ud800 text', 'error': 'oops \\udfff'}", "[]",
     lambda r, c: r.stdout.encode("utf-8") and "\ufffd" in r.error and any("U+FFFD" in n for n in r.notes)),
])
def test_forged_replies_get_the_hosts_caps(sandbox, extra, buffers, check):
    cfg = SandboxConfig(exec_timeout_s=10, max_frames_per_step=4, max_frame_pixels=1_000_000,
                        max_output_chars=2000)
    with sandbox.session(config=cfg) as s:
        s.execute("x = 1")  # request 1
        r = s.execute(_forge(2, extra, buffers))
        assert check(r, cfg), r
        # the worker's own late reply to request 2 is dropped (or the worker was replaced)
        assert s.execute("print(x)").stdout == ("" if r.restarted else "1\n")


@pytest.mark.parametrize("payload", [
    "os.write(sock_fd, struct.pack('!I', 11) + b'\\xff\\xfe not json')",
    "os.write(sock_fd, struct.pack('!I', 9) + b'[1, 2, 3]')",
    "body = json.dumps(dict(id=2, stdout=5, buffers=[])).encode()\n"
    "os.write(sock_fd, struct.pack('!I', len(body)) + body)",
    "body = ('[' * 100000 + ']' * 100000).encode(); os.write(sock_fd, struct.pack('!I', len(body)) + body)",
])
def test_replies_that_break_the_wire_format_replace_the_worker(sandbox, payload):
    with sandbox.session(config=FAST) as s:
        s.execute("x = 1")
        old = s.pid
        r = s.execute(_OWN_SOCKET + "import json, struct\n" + payload + "\nimport time\ntime.sleep(1)")
        assert r.crashed and r.restarted and "reply protocol" in r.error, r
        assert s.pid != old and s.execute("print(6 * 7)").stdout == "42\n"


# 9. text that crashes --------------------------------------------------------------------------------


def test_lone_surrogates_never_kill_the_interpreter(sandbox):
    with sandbox.session(config=FAST) as s:
        s.execute("kept = 'yes'")
        for code in ("raise ValueError('bad \\ud800 text')", "print('out \\udc80 put')",
                     "import sys\nsys.stderr.write('err \\udfff')", "x = '\ud800'\nprint(len(x))",
                     "print(1\ud800)"):
            r = s.execute(code)
            assert not r.crashed and not r.restarted, (code, r)
            for text in (r.stdout, r.stderr, r.error or ""):
                text.encode("utf-8")  # never raises: every text is valid Unicode
        assert "\ufffd" in s.execute("raise ValueError('bad \\ud800 text')").error
        assert s.execute("print(kept)").stdout == "yes\n"


def test_oversized_code_is_refused_without_touching_the_worker(sandbox):
    with sandbox.session(config=FAST) as s:
        pid = s.pid
        r = s.execute("x = 1\n" + "#" * 9_000_000)
        assert r.error and "not run" in r.error and "9,000,006" in r.error
        assert s.pid == pid and s.execute("print(2)").stdout == "2\n"


# 12. cleanup ------------------------------------------------------------------------------------------

_DEEP_TREE = "import os\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\nopen('leaf', 'w').close()\n"


@pytest.mark.parametrize("mode", ["private-root", "fallback"])
def test_a_deep_tree_never_breaks_close(sandbox, fallback, mode):
    from pyvision_env.sandbox._sandbox import _reaper

    sb = sandbox if mode == "private-root" else fallback
    s = sb.session(config=SandboxConfig(exec_timeout_s=30))
    r = s.execute(_DEEP_TREE + ("os.chmod('.', 0o500)" if mode == "private-root" else ""))
    assert r.error is None, r.error
    worker = psutil.Process(s.pid)
    s.close()  # never raises
    assert _reaper.drain()
    assert exited(worker)
    assert [n for n in os.listdir(sb.scratch_root) if n.startswith("episode-")] == []


def test_close_returns_before_the_processes_are_reaped_and_leaves_nothing(sandbox):
    from pyvision_env.sandbox._sandbox import _reaper

    s = sandbox.session(config=FAST)
    s.execute("import subprocess\nkids = [subprocess.Popen(['sleep', '300']) for _ in range(5)]")
    tree = [s.pid] + [p.pid for p in psutil.Process(s.pid).children(recursive=True)]
    assert len(tree) == 6
    s.close()
    assert _reaper.drain()
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(psutil.pid_exists(p) for p in tree)


# 13. frames ------------------------------------------------------------------------------------------


def test_fit_pixels_bounds_both_sides():
    for shape in [(1, 3_000_000), (3_000_000, 1), (2, 2_000_001), (1500, 1500), (7, 999_999)]:
        out = fit_pixels(np.zeros((*shape, 3), np.uint8), 2_000_000)
        assert out.shape[0] * out.shape[1] <= 2_000_000 and min(out.shape[:2]) >= 1, (shape, out.shape)
    small = np.zeros((10, 20, 3), np.uint8)
    assert fit_pixels(small, 2_000_000) is small


def test_display_of_a_very_long_array_is_capped(sandbox):
    cfg = SandboxConfig(exec_timeout_s=20, max_frame_pixels=2_000_000)
    with sandbox.session(config=cfg) as s:
        r = s.execute("display(np.zeros((1, 3_000_000), np.uint8))")
        assert len(r.frames) == 1 and r.frames[0].shape[0] * r.frames[0].shape[1] <= 2_000_000, r


# the report ------------------------------------------------------------------------------------------


def test_isolation_report_names_every_mechanism(sandbox, fallback):
    report = sandbox.isolation
    assert str(report).startswith("network=namespace filesystem=private-root processes=pid-namespace ipc=namespace "
                                  "syscalls=seccomp resources=")
    low = fallback.isolation
    assert (low.network, low.filesystem, low.processes, low.ipc, low.syscalls) == (
        "seccomp", "landlock", "process-group", "host", "seccomp")
    assert not low.complete and any("namespace" in p for p in low.problems)


def test_signals_cannot_reach_the_host_even_in_the_fallback(fallback):
    host = os.getpid()
    with fallback.session(config=FAST) as s:
        r = s.execute(f"import os, signal\ntry:\n    os.kill({host}, signal.SIGTERM)\n    print('SENT')\n"
                      f"except OSError as e:\n    print(type(e).__name__)")
    assert r.stdout.strip() in ("PermissionError", "ProcessLookupError"), r.stdout
    assert psutil.pid_exists(host) and signal.getsignal(signal.SIGTERM) is not None


def test_attacks_through_the_public_env_api(tmp_path):
    import gymnasium as gym

    import pyvision_env  # noqa: F401 - registers the ids

    secret = _secret_file(tmp_path)
    env = gym.make("PyVisionImage-v0")
    try:
        _, info = env.reset(seed=0)
        assert "filesystem=private-root" in info["isolation"]
        code = (f"try:\n    print(open({str(secret)!r}).read())\nexcept OSError as e:\n    print(type(e).__name__)\n"
                "import os\nprint(sorted(p for p in os.listdir('/proc') if p.isdigit()))")
        obs, *_ = env.step(f"<code>\n```python\n{code}\n```\n</code>")
        assert "sk-live" not in obs["text"] and "FileNotFoundError" in obs["text"] and "['1']" in obs["text"], obs
    finally:
        env.close()
