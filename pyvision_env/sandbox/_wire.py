"""Length-prefixed messages over a unix stream socket: a JSON header, then raw byte buffers.

Never pickle: the worker runs hostile code that can write anything to its socket, so the host parses
only JSON and raw bytes, with caps on every size. A message is::

    uint32 header length | header JSON (with "buffers": [size, ...]) | buffer 0 | buffer 1 | ...

File descriptors (the worker's socket at spawn, image memfds) travel as SCM_RIGHTS on the header.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

_LEN = struct.Struct("!I")
_MAX_BUFFERS = 4096  # raw buffers per message (frames of one step)


class ProtocolError(Exception):
    """The peer sent something that is not a valid message (or closed the connection mid-way)."""


def send(sock: socket.socket, header: dict[str, Any], buffers: Sequence[memoryview | bytes] = (),
         fds: Sequence[int] = (), credentials: bool = False) -> None:
    """Send one message; ``fds`` go as SCM_RIGHTS, ``credentials`` attaches SCM_CREDENTIALS (the kernel
    translates the sender's pid into the receiver's PID namespace)."""
    header = dict(header, buffers=[memoryview(b).nbytes for b in buffers])
    # ASCII with escapes: any str can be sent, lone surrogates included (the receiver cleans them up)
    body = json.dumps(header, separators=(",", ":")).encode()
    data = _LEN.pack(len(body)) + body
    ancillary = []
    if fds:
        ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds)))
    if credentials:
        creds = struct.pack("3i", os.getpid(), os.getuid(), os.getgid())
        ancillary.append((socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds))
    if ancillary:
        sent = sock.sendmsg([data], ancillary)
        data = data[sent:]
    if data:
        sock.sendall(data)
    for buf in buffers:
        sock.sendall(buf)


def _recv_exact_into(sock: socket.socket, view: memoryview, deadline: float | None) -> None:
    while view.nbytes:
        _arm(sock, deadline)
        n = sock.recv_into(view)
        if n == 0:
            raise ProtocolError("connection closed in the middle of a message")
        view = view[n:]


class Message(NamedTuple):
    header: dict[str, Any]
    buffers: list[bytearray]
    fds: list[int]
    pid: int | None  # the sender's pid in our PID namespace, when it sent SCM_CREDENTIALS


def _arm(sock: socket.socket, deadline: float | None) -> None:
    """Give the next socket call only the time left before ``deadline`` (``time.monotonic()`` based)."""
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the message did not arrive before its deadline")
        sock.settimeout(remaining)


def recv(sock: socket.socket, max_header: int, max_buffers: int, max_fds: int = 0,
         credentials: bool = False, deadline: float | None = None) -> Message:
    """Receive one message. Raises EOFError on a clean close before a message, ProtocolError on garbage,
    TimeoutError when the whole message has not arrived by ``deadline`` (a peer that sends a byte and
    then stalls cannot stretch it).

    ``credentials`` needs SO_PASSCRED set on ``sock`` beforehand.
    """
    fds: list[int] = []
    pid = None
    head = bytearray(_LEN.size)
    _arm(sock, deadline)
    if max_fds or credentials:
        space = (socket.CMSG_SPACE(max_fds * 4) if max_fds else 0) + (socket.CMSG_SPACE(12) if credentials else 0)
        n, anc, _flags, _addr = sock.recvmsg_into([head], space)
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
            elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:12])[0]
    else:
        n = sock.recv_into(head)
    if n == 0:
        raise EOFError
    if n < _LEN.size:
        _recv_exact_into(sock, memoryview(head)[n:], deadline)
    (size,) = _LEN.unpack(head)
    if size > max_header:
        raise ProtocolError(f"header of {size} bytes exceeds the cap of {max_header}")
    body = bytearray(size)
    _recv_exact_into(sock, memoryview(body), deadline)
    try:
        header = json.loads(body)  # invalid UTF-8 is a ValueError: garbage
        sizes = header["buffers"]
        if not isinstance(header, dict) or not all(isinstance(s, int) and s >= 0 for s in sizes):
            raise ValueError("bad buffer list")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ProtocolError(f"malformed header: {type(exc).__name__}") from exc
    if len(sizes) > _MAX_BUFFERS or sum(sizes) > max_buffers:
        raise ProtocolError(f"{len(sizes)} buffers of {sum(sizes)} bytes exceed the cap of {max_buffers} bytes")
    buffers = []
    for s in sizes:
        buf = bytearray(s)
        _recv_exact_into(sock, memoryview(buf), deadline)
        buffers.append(buf)
    return Message(header, buffers, fds, pid)


def stop_helper(ctrl: socket.socket | None, proc: subprocess.Popen[bytes] | None) -> None:
    """End a helper process we talk to over ``ctrl`` (the zygote, the video service): closing the socket is
    its signal to kill what it started and exit; one that has not exited 2 s later is killed with its group."""
    if ctrl is not None:
        ctrl.close()
    if proc is not None:
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
