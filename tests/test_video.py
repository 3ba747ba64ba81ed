"""The decord-compatible video readers: the local one and ``video_clue_0``'s, served by the video service.

The videos are synthetic H.264 files whose every frame encodes its own index (see media_utils), so
each test checks *which* frame came back, not just that some frame did. "served" readers are built in
this process on a real connection to the real service (what a worker gets at spawn); the sandbox and
service tests are in test_video_service.py.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from media_utils import frame_index, index_frame, make_video, picture_types

from pyvision_env.errors import MediaError
from pyvision_env.media.video import NDArray, ServedVideoReader, VideoReader

READERS = ["local", "served"]
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


@pytest.fixture(params=READERS)
def open_reader(request, sandbox):
    """A function path -> reader of the parametrised kind."""
    opened = []

    def open_(path: str, **kwargs):
        if request.param == "local":
            return VideoReader(path, **kwargs)
        reader = ServedVideoReader(*sandbox._videos.attach(path))
        opened.append(reader)
        return reader

    yield open_
    for reader in opened:
        reader.close()


def identities(frames) -> list[int]:
    return [frame_index(f) for f in np.asarray(frames)]


def spy_on_decode(monkeypatch, vr: VideoReader) -> list[list[int]]:
    """Record the indices of every call into the local reader's decoder."""
    calls: list[list[int]] = []
    real = vr._decoder.decode

    def decode(indices):
        calls.append(list(indices))
        return real(indices)

    monkeypatch.setattr(vr._decoder, "decode", decode)
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
def test_length_fps_shape_and_sequential_frames(videos, open_reader, name):
    spec = VIDEOS[name]
    vr = open_reader(videos[name])
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
def test_random_access_is_frame_accurate(videos, open_reader, name):
    vr = open_reader(videos[name])
    n = len(vr)
    order = [n // 2, n // 2 - 1, 0, n - 1, 11, 12, 13, 12, 12, -1, -n, n - 7, 23, 24, 5, 1]
    assert [frame_index(vr[i]) for i in order] == [i % n for i in order]
    rng = random.Random(1234)
    for _ in range(25):  # unsorted batches with duplicates and negative indices
        batch = [rng.randrange(-n, n) for _ in range(rng.randint(1, 8))]
        assert identities(vr.get_batch(batch)) == [i % n for i in batch], batch


def test_local_reader_without_cache_is_still_frame_accurate(videos):
    vr = VideoReader(videos["bframes"], cache_mb=0)  # keeps one frame: (almost) every access decodes
    order = [45, 44, 0, 89, 11, 12, 13, 12, 12, -1, 83, 23, 24, 5, 1]
    assert [frame_index(vr[i]) for i in order] == [i % 90 for i in order]


def test_batches_and_slices(videos, open_reader):
    vr = open_reader(videos["gop12"])
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
    assert vr.get_batch([]).shape == (0, 48, 64, 3)


def test_more_frames_than_one_service_message(videos, open_reader):
    vr = open_reader(videos["gop12"])  # the served reader asks in chunks of at most 64 frames
    wanted = [i % 90 for i in range(0, 400, 3)]
    assert identities(vr.get_batch(wanted)) == wanted


def test_returned_frames_are_private_copies(videos, open_reader):
    vr = open_reader(videos["gop12"])
    frames = vr.get_batch([7, 8])
    frames[:] = 0  # the caller may scribble on what it got ...
    frame = vr[7]
    frame[:] = 255
    assert identities(vr.get_batch([7, 8])) == [7, 8]  # ... without corrupting any cache


def test_resize(videos):
    vr = VideoReader(videos["fps25"], width=80, height=40)  # aspect not kept
    assert vr.get_batch([3, 49]).shape == (2, 40, 80, 3)
    assert identities(vr.get_batch([3, 49])) == [3, 49]
    vr = VideoReader(videos["fps25"], width=40)  # height follows the aspect ratio
    assert vr[10].shape == (30, 40, 3) and frame_index(vr[10]) == 10
    vr = VideoReader(videos["fps25"], height=60)
    assert vr[-1].shape == (60, 80, 3) and frame_index(vr[-1]) == 49


@pytest.mark.parametrize("name", VIDEOS)
def test_timestamps_are_monotonic_and_match_fps(videos, open_reader, name):
    n, fps = VIDEOS[name]["n_frames"], VIDEOS[name]["fps"]
    vr = open_reader(videos[name])
    stamps = vr.get_frame_timestamp(range(n))
    assert stamps.shape == (n, 2) and stamps.dtype == np.float32
    start, end = stamps[:, 0], stamps[:, 1]
    assert np.all(np.diff(start) > 0) and np.all(end > start)
    np.testing.assert_allclose(start, np.arange(n) / fps, atol=1e-3)
    np.testing.assert_allclose(end, (np.arange(n) + 1) / fps, atol=1e-3)
    last = vr.get_frame_timestamp(-1)
    assert last.shape == (2,) and np.allclose(last, stamps[-1])
    assert np.allclose(vr.get_frame_timestamp(slice(2, 5)), stamps[2:5])


def test_position_seek_next_and_skip(videos, open_reader):
    vr = open_reader(videos["bframes"])
    assert frame_index(vr.next()) == 0 and frame_index(vr.next()) == 1
    vr.seek(30)  # frame-accurate, also between keyframes
    assert frame_index(vr.next()) == 30
    vr.seek_accurate(47)
    vr.skip_frames(3)
    assert frame_index(vr.next()) == 50
    vr.skip_frames()
    assert frame_index(vr.next()) == 52
    vr.seek(89)
    assert frame_index(vr.next()) == 89
    with pytest.raises(StopIteration):
        vr.next()
    vr.seek(80)
    vr.skip_frames(100)  # past the end stops at the end
    with pytest.raises(StopIteration):
        vr.next()
    for bad in (90, -1):
        with pytest.raises(IndexError):
            vr.seek(bad)
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError):
            vr.skip_frames(bad)


# -- decord's own answers on the same files ------------------------------------------------------

@pytest.mark.parametrize("name", ["gop12", "bframes", "fps25"])
def test_same_answers_as_decord(videos, open_reader, name):
    decord = pytest.importorskip("decord")
    ours, theirs = open_reader(videos[name]), decord.VideoReader(videos[name], ctx=decord.cpu(0))
    assert len(ours) == len(theirs) and ours.get_avg_fps() == pytest.approx(theirs.get_avg_fps())
    assert ours.get_key_indices() == theirs.get_key_indices()
    n = len(ours)
    np.testing.assert_allclose(ours.get_frame_timestamp(range(n)), theirs.get_frame_timestamp(range(n)), atol=1e-6)
    np.testing.assert_allclose(ours.get_frame_timestamp(-1), theirs.get_frame_timestamp(-1), atol=1e-6)
    indices = [0, 17, 3, n - 1, 24, 24, 11, -2]
    a, b = ours.get_batch(indices).asnumpy(), theirs.get_batch(indices).asnumpy()
    assert identities(a) == identities(b) == [i % n for i in indices]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 3  # same pixels up to YUV->RGB rounding

    def walk(vr) -> list[int | str]:
        """decord's position rules: what next() returns after each kind of read or move."""
        out: list[int | str] = []
        vr.get_batch([5, 3, 5])  # decodes 5, then 3, copies 5: stays after 3
        out.append(frame_index(vr.next().asnumpy()))
        vr[10]
        out.append(frame_index(vr.next().asnumpy()))
        vr.seek_accurate(20)
        out.append(frame_index(vr.next().asnumpy()))
        vr.skip_frames(3)
        out.append(frame_index(vr.next().asnumpy()))
        vr.seek(0)  # decord's seek lands on a keyframe: compare at one
        out.append(frame_index(vr.next().asnumpy()))
        vr.get_batch([n - 2])
        out.append(frame_index(vr.next().asnumpy()))
        try:
            vr.next()
            out.append("more")
        except StopIteration:
            out.append("end")
        return out

    assert walk(ours) == walk(theirs) == [4, 11, 20, 24, 0, n - 1, "end"]


def test_seek_is_accurate_where_decords_is_not(videos, open_reader):
    decord = pytest.importorskip("decord")
    theirs = decord.VideoReader(videos["gop12"], ctx=decord.cpu(0))
    theirs.seek(30)
    assert frame_index(theirs.next().asnumpy()) == 36  # decord: the next keyframe
    ours = open_reader(videos["gop12"])
    ours.seek(30)
    assert frame_index(ours.next()) == 30


# -- the local reader's cache --------------------------------------------------------------------

def test_cache_avoids_decoding_again(videos, monkeypatch):
    vr = VideoReader(videos["gop12"])
    calls = spy_on_decode(monkeypatch, vr)
    first = vr.get_batch([40, 3, 40, 80])
    assert calls == [[3, 40, 80]]  # sorted and unique
    again = vr.get_batch([40, 3, 40, 80])
    assert calls == [[3, 40, 80]] and np.array_equal(first, again)
    assert frame_index(vr[3]) == 3 and frame_index(vr[-10]) == 80
    assert calls == [[3, 40, 80]]
    assert identities(vr.get_batch([41, 40])) == [41, 40]
    assert calls == [[3, 40, 80], [41]]  # only what was not cached


def test_cache_cap_evicts_least_recently_used(videos, monkeypatch):
    # 160x120 RGB frames are 57,600 bytes: a 1 MiB cache holds 18 of them.
    vr = VideoReader(videos["fps25"], cache_mb=1)
    calls = spy_on_decode(monkeypatch, vr)
    assert identities(vr.get_batch(range(30))) == list(range(30))  # a batch larger than the cache
    assert len(calls) == 1
    assert frame_index(vr[29]) == 29 and len(calls) == 1  # recent: still cached
    assert frame_index(vr[0]) == 0 and calls[-1] == [0]  # oldest: evicted, decoded again
    assert len(vr._cache) <= 18 and vr._cache_bytes <= 1 << 20


# -- errors ---------------------------------------------------------------------------------------

def test_missing_file(tmp_path, open_reader):
    path = str(tmp_path / "no_such_video.mp4")
    with pytest.raises(MediaError, match=re.escape(path)):
        open_reader(path)


def corrupt_video(kind: str, folder) -> str:
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


CORRUPT = ["random_bytes", "empty", "truncated", "truncated_faststart_start", "truncated_faststart_0.5",
           "truncated_faststart_0.999"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", CORRUPT)
def test_corrupt_file_raises_media_error(tmp_path, open_reader, kind):
    path = corrupt_video(kind, tmp_path)
    with pytest.raises(MediaError, match=re.escape(path.rsplit("/", 1)[1])):
        vr = open_reader(path)  # either opening fails ...
        vr.get_batch(range(len(vr)))  # ... or decoding the frames that are gone does


def test_bad_indices(videos, open_reader):
    vr = open_reader(videos["odd_length"])
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
