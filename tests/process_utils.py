"""What the tests know about processes they watch die."""

from __future__ import annotations

import psutil


def exited(process: psutil.Process) -> bool:
    """Gone, or exited and not reaped yet (a zombie, or dead while its parent reaps it). ``is_running``
    compares the start time, so a pid reused by another process does not count as this one alive."""
    try:
        return not process.is_running() or process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True
