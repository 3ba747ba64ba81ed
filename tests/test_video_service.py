"""The video service with real processes: one decode per frame for all episodes, shared sealed memfds,
a bounded LRU cache, invalidation when a file changes, hostile workers, and decoder crashes."""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import signal
import threading
import time

import numpy as np
import pytest
from media_utils import frame_index, make_video
from test_video import CORRUPT, corrupt_video

from pyvision_env.errors import MediaError
from pyvision_env.media.video import ServedVideoReader
from pyvision_env.sandbox import Sandbox, SandboxConfig

SHOW_ALL = SandboxConfig(max_frames_per_step=32)


def identities(frames) -> list[int]:
    return [frame_index(f) for f in frames]


def show(indices: list[int]) -> str:
    return f"for f in video_clue_0.get_batch({indices}).asnumpy():\n    display(f)"


def wait_gone(pid: int, timeout: float = 5.0) -> None:
    """Until ``pid`` has exited (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                if "\nState:\tZ" in f.read():
                    return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} is still running")


@pytest.fixture
def video(tmp_path) -> str:
    return make_video(tmp_path / "clip.mp4", n_frames=90, width=64, height=48, gop=12)


def test_a_group_of_episodes_decodes_each_frame_once(sandbox, video):
    before = sandbox._videos.stats()
    wanted = [int(i) for i in np.linspace(0, 89, 16)]
    sessions = [sandbox.session(video=video, config=SHOW_ALL) for _ in range(8)]
    results = [None] * 8

    def step(k: int) -> None:
        results[k] = sessions[k].execute(show(wanted))

    threads = [threading.Thread(target=step, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in sessions:
        s.close()
    for r in results:
        assert r.error is None, r.error
        assert identities(r.frames) == wanted
    after = sandbox._videos.stats()
    assert after["videos_indexed"] - before["videos_indexed"] == 1
    assert after["frames_decoded"] - before["frames_decoded"] == 16


def test_frames_are_sealed_read_only_memfds(sandbox, video):
    reader = ServedVideoReader(*sandbox._videos.attach(video))
    fds = reader._call({"op": "frames", "indices": [3, 4]}, lambda reply: [os.dup(fd) for fd in reply.fds])
    try:
        assert len(fds) == 2
        fd = fds[0]
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        for seal in (fcntl.F_SEAL_WRITE, fcntl.F_SEAL_GROW, fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_SEAL):
            assert seals & seal
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"\x00", 0)
        with pytest.raises(PermissionError):
            mmap.mmap(fd, 64 * 48 * 3, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        with mmap.mmap(fd, 64 * 48 * 3, mmap.MAP_SHARED, mmap.PROT_READ) as buf:
            assert frame_index(np.frombuffer(buf, np.uint8).reshape(48, 64, 3)) == 3
    finally:
        for fd in fds:
            os.close(fd)
        reader.close()


def test_the_cache_is_bounded_and_least_recently_used(tmp_path):
    path = make_video(tmp_path / "v.mp4", n_frames=50, fps=25, width=160, height=120, gop=25)
    sandbox = Sandbox(video_cache_mb=1)  # 160x120 RGB frames are 57,600 bytes: 18 fit in 1 MiB
    try:
        reader = ServedVideoReader(*sandbox._videos.attach(path))
        assert identities(reader.get_batch(range(30))) == list(range(30))
        stats = sandbox._videos.stats()
        assert stats["frames_decoded"] == 30
        assert stats["cache_bytes"] <= 1 << 20 and stats["cache_entries"] == 18
        assert frame_index(reader[29]) == 29  # recent: still cached
        assert sandbox._videos.stats()["frames_decoded"] == 30
        assert frame_index(reader[0]) == 0  # oldest: evicted, decoded again
        assert sandbox._videos.stats()["frames_decoded"] == 31
        reader.close()
    finally:
        sandbox.close()


def test_a_changed_file_is_indexed_again(sandbox, tmp_path):
    path = str(tmp_path / "changing.mp4")
    make_video(path, n_frames=40, width=64, height=48)
    first = ServedVideoReader(*sandbox._videos.attach(path))
    assert len(first) == 40 and frame_index(first[5]) == 5
    time.sleep(0.01)  # a distinct mtime even on coarse clocks
    make_video(path, n_frames=25, width=160, height=120)  # same path, new content
    second = ServedVideoReader(*sandbox._videos.attach(path))
    assert len(second) == 25
    frame = second[5]  # a stale cached frame would be 64x48
    assert frame.shape == (120, 160, 3) and frame_index(frame) == 5
    first.close()
    second.close()


def test_a_known_video_is_attached_without_waiting_for_the_service(sandbox, video):
    reader = ServedVideoReader(*sandbox._videos.attach(video))  # the service opens it: its facts are known
    reader.close()
    pid = sandbox._videos.stats()["decoder_pid"]
    os.kill(pid, signal.SIGSTOP)  # a decoder that answers nothing until it is continued
    try:
        attached = {}
        thread = threading.Thread(target=lambda: attached.update(fd_facts=sandbox._videos.attach(video)))
        thread.start()
        thread.join(10)
        assert "fd_facts" in attached, "the attach of a known video waited for the service"
    finally:
        os.kill(pid, signal.SIGCONT)
    reader = ServedVideoReader(*attached["fd_facts"])  # its first request queued until the service served it
    assert len(reader) == 90 and frame_index(reader[45]) == 45
    reader.close()


def test_replies_nobody_waits_for_never_fill_the_control_socket(sandbox, video):
    """Thousands of attaches of a known video, whose callers never read their replies, and the service
    still answers: unread replies are bounded, not left to fill the socket until the service blocks."""
    answered = {}

    def attach_many() -> None:
        for _ in range(3001):
            os.close(sandbox._videos.attach(video)[0])
        answered["stats"] = sandbox._videos.stats()

    thread = threading.Thread(target=attach_many, daemon=True)  # a blocked service would hang it for good
    thread.start()
    thread.join(60)
    assert "stats" in answered, "the video service stopped answering"
    with sandbox.session(video=video, config=SHOW_ALL) as session:
        assert identities(session.execute(show([7])).frames) == [7]


def test_only_a_few_decoders_stay_open_and_closed_ones_reopen(sandbox, tmp_path):
    cap = sandbox._videos.stats()["max_open_decoders"]
    paths = [make_video(tmp_path / f"v{k}.mp4", n_frames=30, width=64, height=48, gop=10) for k in range(cap + 3)]
    readers = [ServedVideoReader(*sandbox._videos.attach(p)) for p in paths]
    for k, reader in enumerate(readers):
        assert frame_index(reader[k + 1]) == k + 1
    assert sandbox._videos.stats()["open_decoders"] <= cap
    assert identities(readers[0].get_batch([20, 25])) == [20, 25]  # its decoder was closed: reopened
    for reader in readers:
        reader.close()


def test_the_worker_opens_no_video_file(sandbox, video):
    with sandbox.session(video=video) as session:
        r = session.execute("x = video_clue_0[7]\nprint(x.shape)")
        assert r.error is None and r.stdout.strip() == "(48, 64, 3)"
        links = [os.readlink(f"/proc/{session.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{session.pid}/fd")]
    assert links and not any(os.path.basename(video) in link for link in links), links


def test_relative_video_paths_resolve_on_the_host(sandbox, video, monkeypatch):
    monkeypatch.chdir(os.path.dirname(video))
    with sandbox.session(video=os.path.basename(video), config=SHOW_ALL) as session:
        r = session.execute(show([4]))
    assert r.error is None and identities(r.frames) == [4]


HOSTILE = """
import os
from pyvision_env.sandbox import _wire
sock = video_clue_0._sock
def ask(header):
    _wire.send(sock, header)
    m = _wire.recv(sock, 1 << 20, 1 << 20, max_fds=64)
    sizes = [os.fstat(f).st_size for f in m.fds]
    for f in m.fds:
        os.close(f)
    print(m.header.get("ok"), sizes, m.header.get("error"))
ask({"op": "frames", "id": 1001, "indices": [0, 90]})
ask({"op": "frames", "id": 1002, "indices": list(range(65))})
ask({"op": "frames", "id": 1003, "indices": [3, 1]})
ask({"op": "frames", "id": 1004, "indices": [True]})
ask({"op": "frames", "id": 1005, "indices": [1], "path": OTHER})
ask({"op": "attach", "id": 1006, "path": OTHER})
print(video_clue_0[3].shape)
"""


def test_hostile_requests_get_errors_and_never_another_files_frames(sandbox, video, tmp_path):
    other = make_video(tmp_path / "other.mp4", n_frames=20, width=160, height=120)
    with sandbox.session(video=video) as session:
        r = session.execute(HOSTILE.replace("OTHER", repr(other)))
        assert r.error is None, r.error
        lines = r.stdout.strip().splitlines()
        assert [line.split(" [")[0] for line in lines[:6]] == ["False"] * 4 + ["True", "False"]
        assert all("sorted, unique indices in [0, 90)" in line for line in lines[:4])
        assert lines[4] == f"True [{64 * 48 * 3}] None"  # "path" is ignored: a frame of its own video
        assert "unknown request 'attach'" in lines[5]
        assert lines[6] == "(48, 64, 3)"
        # garbage on the socket: the service drops that connection, and only that one
        r = session.execute("video_clue_0._sock.sendall(b'\\xff' * 8)\nvideo_clue_0[0]")
        assert r.error is not None and "MediaError" in r.error and "video service" in r.error
        with sandbox.session(video=video, config=SHOW_ALL) as other_session:
            assert identities(other_session.execute(show([9])).frames) == [9]


def test_episodes_survive_a_decoder_crash(sandbox, video):
    with sandbox.session(video=video, config=SHOW_ALL) as session:
        assert identities(session.execute("kept = 42\n" + show([1, 2])).frames) == [1, 2]
        before = sandbox._videos.stats()
        os.kill(before["decoder_pid"], signal.SIGKILL)
        wait_gone(before["decoder_pid"])
        r = session.execute("print(kept)\n" + show([50, 2]))  # served by the new decoder
        assert r.error is None and not r.crashed, r.error
        assert identities(r.frames) == [50, 2] and r.stdout == "42\n"
        after = sandbox._videos.stats()
    assert after["restarts"] == before["restarts"] + 1 and after["decoder_pid"] != before["decoder_pid"]


def test_a_request_waiting_when_the_decoder_dies_is_answered(sandbox, tmp_path):
    path = make_video(tmp_path / "fresh.mp4", n_frames=60, width=64, height=48, gop=30)
    with sandbox.session(video=path, config=SHOW_ALL) as session:
        pid = sandbox._videos.stats()["decoder_pid"]
        os.kill(pid, signal.SIGSTOP)
        result = {}
        thread = threading.Thread(target=lambda: result.update(r=session.execute(show([40, 41]))))
        thread.start()
        time.sleep(0.5)  # the request is on its way to a decoder that will never answer it
        os.kill(pid, signal.SIGKILL)
        thread.join(30)
        r = result["r"]
    assert r.error is None and identities(r.frames) == [40, 41], r.error


def test_a_reset_waiting_when_the_decoder_dies_goes_through(sandbox, tmp_path):
    path = make_video(tmp_path / "new.mp4", n_frames=30, width=64, height=48)
    pid = sandbox._videos.stats()["decoder_pid"]
    os.kill(pid, signal.SIGSTOP)
    result = {}
    thread = threading.Thread(target=lambda: result.update(session=sandbox.session(video=path, config=SHOW_ALL)))
    thread.start()
    time.sleep(0.5)  # the attach waits on a decoder that will never answer it: the next one does
    os.kill(pid, signal.SIGKILL)
    thread.join(30)
    with result["session"] as session:
        assert session.video_facts["frames"] == 30
        assert identities(session.execute(show([29])).frames) == [29]


def test_a_read_interrupted_by_the_deadline_leaves_the_reader_in_step(sandbox, tmp_path):
    path = make_video(tmp_path / "slow.mp4", n_frames=60, width=64, height=48, gop=30)
    with sandbox.session(video=path, config=SHOW_ALL) as session:
        assert identities(session.execute(show([1])).frames) == [1]
        fds_before = sorted(os.listdir(f"/proc/{session.pid}/fd"))
        pid = sandbox._videos.stats()["decoder_pid"]
        os.kill(pid, signal.SIGSTOP)  # frames will come late
        try:
            r = session.execute("kept = 7\nvideo_clue_0[5]", timeout=0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert r.timed_out and not r.restarted and "KeyboardInterrupt" in r.error
        time.sleep(0.2)  # the late answer (with its fd) is now waiting on the socket
        r = session.execute("print(kept)\n" + show([6, 5]))
        assert r.error is None and r.stdout == "7\n" and identities(r.frames) == [6, 5], r.error
        fds_after = sorted(os.listdir(f"/proc/{session.pid}/fd"))
    assert fds_after == fds_before  # the late answer's fd was closed, not leaked


@pytest.mark.timeout(120)
def test_corrupt_videos_fail_at_reset_and_the_service_lives_on(sandbox, video, tmp_path):
    for kind in CORRUPT:
        path = corrupt_video(kind, tmp_path)
        try:
            with sandbox.session(video=path) as session:  # either opening fails ...
                r = session.execute("video_clue_0.get_batch(range(len(video_clue_0)))")
                assert r.error is not None and "MediaError" in r.error and os.path.basename(path) in r.error
        except MediaError as exc:
            assert re.search(re.escape(os.path.basename(path)), str(exc))
    with sandbox.session(video=video, config=SHOW_ALL) as session:
        assert identities(session.execute(show([88])).frames) == [88]


def test_the_service_has_no_network_and_cannot_write(sandbox, video):
    ServedVideoReader(*sandbox._videos.attach(video)).close()
    stats = sandbox._videos.stats()
    if stats["problems"]:
        pytest.skip(f"no namespaces for the service on this host: {stats['problems']}")
    for pid in (sandbox._videos._proc.pid, stats["decoder_pid"]):
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
        with open(f"/proc/{pid}/status") as f:
            assert "NoNewPrivs:\t1" in f.read()  # set by the Landlock write ban


def test_closing_the_sandbox_stops_the_service(tmp_path, video):
    sandbox = Sandbox()
    reader = ServedVideoReader(*sandbox._videos.attach(video))
    assert frame_index(reader[1]) == 1
    supervisor, decoder = sandbox._videos._proc.pid, sandbox._videos.stats()["decoder_pid"]
    sandbox.close()
    wait_gone(supervisor)
    wait_gone(decoder)
    with pytest.raises(MediaError, match="video service"):
        reader[2]
    reader.close()
