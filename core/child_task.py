"""Run a library command (merge, mix) in a child process, as training runs.

Both load the whole base model; in the UI's own process an out-of-memory would take the UI down
with it. The child is `python -m core ...`, the same command a user types; its progress lines
("[ 40%] message" on stderr) and its "error: ..." line come back to the caller.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from core.errors import ERROR_AS_JSON, ERROR_JSON, WorkbenchError
from core.workspace import home

PROGRESS_LINE = re.compile(r"^\[\s*(\d+)%\] (.*)$")
ROOT = Path(__file__).resolve().parent.parent       # where `python -m core` finds the package


def run_core_command(args: list[str], progress: Callable[[float, str], None] | None = None) -> str:
    """Run `python -m core --workspace <this one> ARGS`; returns what it printed on stdout (stripped).
    A refusal or failure raises WorkbenchError with the command's own message."""
    argv = [sys.executable, "-m", "core", "--workspace", str(home()), *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", cwd=ROOT, env={**os.environ, ERROR_AS_JSON: "1"})
    other = []
    try:
        for line in proc.stderr:
            line = line.rstrip("\n")
            match = PROGRESS_LINE.match(line)
            if match and progress:
                progress(int(match.group(1)) / 100, match.group(2))
            elif not match and line.strip():
                other.append(line)
        out = proc.stdout.read()
        code = proc.wait()
    finally:
        if proc.poll() is None:         # the caller went away: the work is not wanted any more
            proc.kill()
            proc.wait()
    if code == 0:
        return out.strip()
    raise refusal(other) or WorkbenchError(failure_text(code, other))


def refusal(stderr_lines: list[str]) -> WorkbenchError | None:
    """The command's own error, with its field, file and line, when it refused."""
    for line in reversed(stderr_lines):
        if line.startswith(ERROR_JSON):
            try:
                return WorkbenchError.from_dict(json.loads(line[len(ERROR_JSON):]))
            except ValueError:
                return None
    return None


def failure_text(code: int, stderr_lines: list[str]) -> str:
    errors = [line[len("error: "):] for line in stderr_lines if line.startswith("error: ")]
    if errors:
        return errors[-1]
    if code < 0:
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL:
            return f"the command was killed by {name}: the machine ran out of memory (free some, or merge on a " \
                   "larger machine)"
        return f"the command was killed by {name}"
    tail = " / ".join(stderr_lines[-3:])
    return f"the command failed (exit code {code}){': ' + tail if tail else ''}"
