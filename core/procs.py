"""Find and end a run's processes by their command line.

torchrun starts each worker in a session of its own, so a signal to the launcher's process
group does not reach them. The launcher tears its workers down when it exits normally; when
it is killed outright they live on, and these functions find and end them.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def processes_with(*tokens: str) -> list[int]:
    """Live pids (not zombies, not this process) whose command line contains every token."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if all(t in cmdline for t in tokens) and state != "Z":
            found.append(int(entry.name))
    return found


def kill_all(*tokens: str, grace_s: float = 3.0) -> list[int]:
    """SIGTERM every process matching `tokens`, then SIGKILL what is left after `grace_s`.
    Returns the pids found."""
    pids = processes_with(*tokens)
    _signal(pids, signal.SIGTERM)
    end = time.time() + grace_s
    while time.time() < end and processes_with(*tokens):
        time.sleep(0.1)
    _signal(processes_with(*tokens), signal.SIGKILL)
    return pids


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
