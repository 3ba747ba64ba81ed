"""Spaces for text turns and variable-size frames (Gymnasium's Text and Box cannot express them), and
what Gymnasium's ``AsyncVectorEnv`` needs to hand their values back by shared memory (its default)."""

from __future__ import annotations

import copy
import os
import pickle
import shutil
import string
import tempfile
import weakref
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import create_shared_memory, read_from_shared_memory, write_to_shared_memory


class UnicodeText(spaces.Text):
    """Any ``str`` up to ``max_length`` characters: model turns and interpreter output are arbitrary
    unicode. Sampling draws from printable ASCII (random turns are malformed turns, which is useful)."""

    def __init__(self, max_length: int, seed: int | np.random.Generator | None = None) -> None:
        super().__init__(max_length=max_length, min_length=0, charset=string.printable, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"UnicodeText(max_length={self.max_length})"


class Frames(spaces.Space[tuple]):
    """A tuple of RGB frames of any size: ``HxWx3`` uint8 arrays, at most ``max_frames`` of them."""

    def __init__(self, max_frames: int, max_pixels: int, seed: int | np.random.Generator | None = None) -> None:
        self.max_frames = max_frames
        self.max_pixels = max_pixels
        super().__init__(None, None, seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def contains(self, x: Any) -> bool:
        return isinstance(x, tuple) and len(x) <= self.max_frames and all(
            isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3
            and f.shape[0] * f.shape[1] <= self.max_pixels for f in x)

    def sample(self, mask: Any = None, probability: Any = None) -> tuple:
        n = int(self.np_random.integers(0, min(self.max_frames, 2) + 1))
        return tuple(self.np_random.integers(0, 256, size=(int(self.np_random.integers(8, 33)),
                                                           int(self.np_random.integers(8, 33)), 3), dtype=np.uint8)
                     for _ in range(n))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frames) and (other.max_frames, other.max_pixels) == (self.max_frames, self.max_pixels)

    def __repr__(self) -> str:
        return f"Frames(max_frames={self.max_frames}, max_pixels={self.max_pixels})"


# --- AsyncVectorEnv's shared memory ------------------------------------------------------------------------
class _Mailbox:
    """One slot per sub-env for values of any size, shared between ``AsyncVectorEnv``'s workers and its
    main process, which Gymnasium's fixed-size shared arrays cannot hold (a turn's text, a step's frames).

    A slot is a file in a private directory on ``/dev/shm`` (memory, as POSIX shared memory is) and a
    counter in a shared array: before a worker answers on its pipe it writes the pickled value, renames
    it over the slot's file and bumps the counter; the main process reads a slot again only when its
    counter moved. The directory goes when the vector env is garbage collected or the program exits.
    """

    def __init__(self, n: int, ctx: ModuleType) -> None:
        self.dir = tempfile.mkdtemp(prefix="pyvision-vector-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.counters = ctx.Array("q", n)
        weakref.finalize(self, _remove_if_owner, self.dir, os.getpid())

    def write(self, index: int, value: Any) -> None:
        path = os.path.join(self.dir, str(index))
        with open(path + ".tmp", "wb") as f:
            pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(path + ".tmp", path)
        with self.counters.get_lock():
            self.counters[index] += 1

    def read(self, index: int) -> Any:
        with open(os.path.join(self.dir, str(index)), "rb") as f:
            return pickle.load(f)  # written by our own worker process into our private directory


def _remove_if_owner(path: str, owner: int) -> None:
    if os.getpid() == owner:  # a forked worker inherits the finalizer: only the creator removes the directory
        shutil.rmtree(path, ignore_errors=True)


class _LatestValues(Sequence):
    """The batch of a :class:`_Mailbox`: item ``i`` is the latest value sub-env ``i`` wrote. What
    ``AsyncVectorEnv`` returns is a deep copy of it (``copy=True``, the default): a plain tuple, as
    ``SyncVectorEnv`` gives."""

    def __init__(self, mailbox: _Mailbox, n: int, empty: Any) -> None:
        self._mailbox = mailbox
        self._seen = [(0, empty)] * n

    def __len__(self) -> int:
        return len(self._seen)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return tuple(self[k] for k in range(len(self))[i])
        counter = self._mailbox.counters[i]
        if self._seen[i][0] != counter:
            self._seen[i] = (counter, self._mailbox.read(i))
        return self._seen[i][1]

    def __deepcopy__(self, memo: dict) -> tuple:
        return copy.deepcopy(tuple(self), memo)


@create_shared_memory.register(UnicodeText)
@create_shared_memory.register(Frames)
def _create_mailbox(space: spaces.Space, n: int = 1, ctx: ModuleType | None = None) -> _Mailbox:
    import multiprocessing

    return _Mailbox(n, ctx or multiprocessing)


@read_from_shared_memory.register(UnicodeText)
@read_from_shared_memory.register(Frames)
def _read_mailbox(space: spaces.Space, shared_memory: _Mailbox, n: int = 1) -> _LatestValues:
    return _LatestValues(shared_memory, n, "" if isinstance(space, UnicodeText) else ())


@write_to_shared_memory.register(UnicodeText)
@write_to_shared_memory.register(Frames)
def _write_mailbox(space: spaces.Space, index: int, value: Any, shared_memory: _Mailbox) -> None:
    shared_memory.write(index, value)
