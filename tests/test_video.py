"""VideoReader on both backends, and video_clue_0 in the sandbox.

The videos are synthetic H.264 files whose every frame encodes its own index (see media_utils), so
each test checks *which* frame came back, not just that some frame did.
"""

from __future__ import annotations

import random
import re
import textwrap

import numpy as np
import pytest
from media_utils import frame_index, index_frame, make_video, picture_types

from pyvision_env.errors import MediaError
from pyvision_env.media.video import NDArray, VideoReader
from pyvision_env.sandbox import get_sandbox

BACKENDS = ["pyav", "decord"]
VIDEOS = {  # name -> make_video arguments
    "gop12": dict(n_frames=90, fps=30, width=64, height=48, gop=12),
    "bframes": dict(n_frames=90, fps=30, width=64, height=48, gop=12, bframes=2),
    "fps25": dict(n_frames=50, fps=25, width=160, height=120, gop=25),
    "odd_length": dict(n_frames=37, fps=30, width=64, height=48, gop=10),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("videos")
    return {name: make_video(folder / f"{name}.mp4", **spec) for name, spec in VIDEOS.items()}


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def identities(frames) -> list[int]:
    return [frame_index(f) for f in np.asarray(frames)]


def spy_on_decode(monkeypatch, vr: VideoReader) -> list[list[int]]:
    """Record the indices of every call into the backend's decoder."""
    calls: list[list[int]] = []
    real = vr._impl.decode

    def decode(indices):
        calls.append(list(indices))
        return real(indices)

    monkeypatch.setattr(vr._impl, "decode", decode)
    return calls


# -- the test videos are what they claim ---------------------------------------------------------

def test_index_code_round_trips_at_any_size():
    for i in range(0, 4096, 41):
        for w, h in [(64, 48), (160, 120), (16, 12), (33, 17)]:
            assert frame_index(index_frame(i, w, h)) == i


def test_fixture_videos_have_the_structure_they_claim(videos):
    gop = picture_types(videos["gop12"])
    assert len(gop) == 90 and "B" not in gop
    assert [k for k, t in enumerate(gop) if t == "I"] == list(range(0, 90, 12))
    assert "B" in picture_types(videos["bframes"])  # decode order != display order


# -- metadata, shapes and frame accuracy ---------------------------------------------------------

@pytest.mark.parametrize("name", VIDEOS)
def test_length_fps_shape_and_sequential_frames(videos, backend, name):
    spec = VIDEOS[name]
    vr = VideoReader(videos[name], backend=backend)
    assert len(vr) == spec["n_frames"]
    assert vr.get_avg_fps() == pytest.approx(spec["fps"])
    batch = vr.get_batch(range(len(vr)))
    assert isinstance(batch, NDArray)
    assert batch.shape == (spec["n_frames"], spec["height"], spec["width"], 3)
    assert batch.dtype == np.uint8
    plain = batch.asnumpy()
    assert type(plain) is np.ndarray and np.array_equal(plain, batch)
    assert identities(plain) == list(range(spec["n_frames"]))


@pytest.mark.parametrize("name", ["gop12", "bframes", "odd_length"])
def test_random_access_is_frame_accurate(videos, backend, name):
    # cache_mb=0 keeps only the last frame, so (almost) every access seeks and decodes.
    vr = VideoReader(videos[name], backend=backend, cache_mb=0)
    n = len(vr)
    order = [n // 2, n // 2 - 1, 0, n - 1, 11, 12, 13, 12, 12, -1, -n, n - 7, 23, 24, 5, 1]
    assert [frame_index(vr[i]) for i in order] == [i % n for i in order]
    rng = random.Random(1234)
    for _ in range(25):  # unsorted batches with duplicates and negative indices
        batch = [rng.randrange(-n, n) for _ in range(rng.randint(1, 8))]
        assert identities(vr.get_batch(batch)) == [i % n for i in batch], batch


def test_batches_and_slices(videos, backend):
    vr = VideoReader(videos["gop12"], backend=backend)
    batch = vr.get_batch([5, 3, 5, -1, 0])
    assert batch.shape == (5, 48, 64, 3) and batch.dtype == np.uint8
    assert identities(batch.asnumpy()) == [5, 3, 5, 89, 0]
    assert identities(vr.get_batch(np.array([70, 2, 70]))) == [70, 2, 70]
    assert identities(vr[10:20:3]) == [10, 13, 16, 19]
    assert identities(vr[-3:]) == [87, 88, 89]
    assert identities(vr[::-30]) == [89, 59, 29]
    one = vr[-1]
    assert isinstance(one, NDArray) and one.shape == (48, 64, 3)
    assert frame_index(one.asnumpy()) == 89


def test_returned_frames_are_private_copies(videos, backend):
    vr = VideoReader(videos["gop12"], backend=backend)
    frames = vr.get_batch([7, 8])
    frames[:] = 0  # the caller may scribble on what it got ...
    frame = vr[7]
    frame[:] = 255
    assert identities(vr.get_batch([7, 8])) == [7, 8]  # ... without corrupting the cache


@pytest.mark.parametrize("name", VIDEOS)
def test_backends_agree(videos, name):
    n = VIDEOS[name]["n_frames"]
    indices = [0, 17, 3, n - 1, 24, 24, 11, -2]
    pyav = VideoReader(videos[name], backend="pyav").get_batch(indices).asnumpy()
    decord = VideoReader(videos[name], backend="decord").get_batch(indices).asnumpy()
    assert identities(pyav) == identities(decord) == [i % n for i in indices]
    assert np.abs(pyav.astype(int) - decord.astype(int)).max() <= 3


def test_resize(videos, backend):
    vr = VideoReader(videos["fps25"], backend=backend, width=80, height=40)  # aspect not kept
    assert vr.get_batch([3, 49]).shape == (2, 40, 80, 3)
    assert identities(vr.get_batch([3, 49])) == [3, 49]
    vr = VideoReader(videos["fps25"], backend=backend, width=40)  # height follows the aspect ratio
    assert vr[10].shape == (30, 40, 3) and frame_index(vr[10]) == 10
    vr = VideoReader(videos["fps25"], backend=backend, height=60)
    assert vr[-1].shape == (60, 80, 3) and frame_index(vr[-1]) == 49


@pytest.mark.parametrize("name", VIDEOS)
def test_timestamps_are_monotonic_and_match_fps(videos, backend, name):
    n, fps = VIDEOS[name]["n_frames"], VIDEOS[name]["fps"]
    vr = VideoReader(videos[name], backend=backend)
    stamps = vr.get_frame_timestamp(range(n))
    assert stamps.shape == (n, 2)
    start, end = stamps[:, 0], stamps[:, 1]
    assert np.all(np.diff(start) > 0) and np.all(end > start)
    np.testing.assert_allclose(start, np.arange(n) / fps, atol=1e-3)
    np.testing.assert_allclose(end, (np.arange(n) + 1) / fps, atol=1e-3)
    last = vr.get_frame_timestamp(-1)
    assert last.shape == (2,) and np.allclose(last, stamps[-1])


# -- the frame cache ------------------------------------------------------------------------------

def test_cache_avoids_decoding_again(videos, backend, monkeypatch):
    vr = VideoReader(videos["gop12"], backend=backend)
    calls = spy_on_decode(monkeypatch, vr)
    first = vr.get_batch([40, 3, 40, 80])
    assert calls == [[3, 40, 80]]  # sorted and unique
    again = vr.get_batch([40, 3, 40, 80])
    assert calls == [[3, 40, 80]] and np.array_equal(first, again)
    assert frame_index(vr[3]) == 3 and frame_index(vr[-10]) == 80
    assert calls == [[3, 40, 80]]
    assert identities(vr.get_batch([41, 40])) == [41, 40]
    assert calls == [[3, 40, 80], [41]]  # only what was not cached


def test_cache_cap_evicts_least_recently_used(videos, backend, monkeypatch):
    # 160x120 RGB frames are 57,600 bytes: a 1 MiB cache holds 18 of them.
    vr = VideoReader(videos["fps25"], backend=backend, cache_mb=1)
    calls = spy_on_decode(monkeypatch, vr)
    assert identities(vr.get_batch(range(30))) == list(range(30))  # a batch larger than the cache
    assert len(calls) == 1
    assert frame_index(vr[29]) == 29 and len(calls) == 1  # recent: still cached
    assert frame_index(vr[0]) == 0 and calls[-1] == [0]  # oldest: evicted, decoded again
    assert len(vr._cache) <= 18 and vr._cache_bytes <= 1 << 20


def test_zero_cache_still_returns_whole_batches(videos, backend):
    vr = VideoReader(videos["gop12"], backend=backend, cache_mb=0)
    assert identities(vr.get_batch([2, 0, 1, 2])) == [2, 0, 1, 2]
    assert identities(vr.get_batch([1, 5])) == [1, 5]  # 1 may be cached or not: both must work


# -- errors ---------------------------------------------------------------------------------------

def test_missing_file(tmp_path, backend):
    path = str(tmp_path / "no_such_video.mp4")
    with pytest.raises(MediaError, match=re.escape(path)):
        VideoReader(path, backend=backend)


def _corrupt(kind: str, folder) -> str:
    path = folder / f"{kind}.mp4"
    if kind == "random_bytes":
        path.write_bytes(random.Random(7).randbytes(20_000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":  # moov (the index) is at the end and is lost
        data = open(make_video(folder / "whole.mp4"), "rb").read()
        path.write_bytes(data[: len(data) // 2])
    else:  # truncated_faststart_<fraction>: the index survives, frame data is cut
        data = open(make_video(folder / "whole.mp4", width=160, height=120, faststart=True), "rb").read()
        mdat = data.index(b"mdat") + 4
        cut = mdat + 4 if kind.endswith("_start") else int(mdat + (len(data) - mdat) * float(kind.split("_")[-1]))
        path.write_bytes(data[:cut])
    return str(path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["random_bytes", "empty", "truncated", "truncated_faststart_start",
                                  "truncated_faststart_0.5", "truncated_faststart_0.999"])
def test_corrupt_file_raises_media_error(tmp_path, backend, kind):
    path = _corrupt(kind, tmp_path)
    with pytest.raises(MediaError, match=re.escape(path)):
        vr = VideoReader(path, backend=backend)  # either opening fails ...
        vr.get_batch(range(len(vr)))  # ... or decoding the frames that are gone does


def test_bad_indices(videos, backend):
    vr = VideoReader(videos["odd_length"], backend=backend)
    for bad in (37, -38, 1000):
        with pytest.raises(IndexError):
            vr[bad]
    with pytest.raises(IndexError):
        vr.get_batch([0, 37])
    for bad in (1.5, 2.0, "3", None):
        with pytest.raises(TypeError):
            vr[bad]
    with pytest.raises(TypeError):
        vr.get_batch([0, 2.0])
    assert frame_index(vr[36]) == 36  # still usable afterwards


# -- through the sandbox --------------------------------------------------------------------------

def test_sandbox_video_clue(videos):
    with get_sandbox().session(video=videos["gop12"]) as session:
        r = session.execute("print(len(video_clue_0), video_clue_0.get_avg_fps())\n"
                            "frames = video_clue_0.get_batch([0, 45, 89]).asnumpy()\n"
                            "print(frames.shape)\n"
                            "display(frames[1])")
    assert r.error is None, r.error
    assert r.stdout.split("\n")[:2] == ["90 30.0", "(3, 48, 64, 3)"]
    assert len(r.frames) == 1 and r.frames[0].shape == (48, 64, 3)
    assert frame_index(r.frames[0]) == 45


def test_sandbox_missing_video(tmp_path):
    path = str(tmp_path / "missing.mp4")
    with pytest.raises(MediaError, match=re.escape(path)):
        get_sandbox().session(video=path)


def test_sandbox_corrupt_video(tmp_path):
    path = _corrupt("random_bytes", tmp_path)
    with pytest.raises(MediaError, match=re.escape(path)):
        get_sandbox().session(video=path)


def test_sandbox_cannot_modify_the_video(videos):
    sandbox = get_sandbox()
    if sandbox.isolation.filesystem == "none":
        pytest.skip(f"no filesystem isolation on this host: {sandbox.isolation}")
    path = videos["odd_length"]
    before = open(path, "rb").read()
    with sandbox.session(video=path) as session:
        r = session.execute(textwrap.dedent(f"""
            import os
            fds = [f"/proc/self/fd/{{fd}}" for fd in os.listdir("/proc/self/fd")]
            paths = [p for p in fds if os.path.exists(p) and os.readlink(p) == {path!r}]
            print(len(paths))
            for p in [{path!r}, *paths]:
                try:
                    open(p, "ab").write(b"garbage")
                    print("WROTE", p)
                except OSError:
                    pass
        """))
        assert int(r.stdout.split()[0]) >= 1, r.stdout + str(r.error)  # the reader's descriptor is there
        assert r.error is None and "WROTE" not in r.stdout, r.stdout + str(r.error)
        r = session.execute("print(len(video_clue_0))")
        assert r.stdout.strip() == "37"
    assert open(path, "rb").read() == before
