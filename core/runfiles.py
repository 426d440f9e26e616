"""The run folder: what the worker writes and everyone else reads.

runs/<id>/config.yaml  status.json  metrics.jsonl  train.log  checkpoints/  adapter/ (or model/)

A run on several processes reports through rank 0 alone: on the other ranks (RANK set by
torchrun) writing status and metrics does nothing.
"""
from __future__ import annotations

import fcntl
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from core.distributed import is_main
from core.workspace import atomic_write_json, atomic_write_text, read_json, runs_dir

STATES = ("queued", "starting", "running", "completed", "failed", "stopped")
_HELD: dict = {}        # run folder -> the open lock file this process trains it under
FINAL_STATES = ("completed", "failed", "stopped")


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def id(self) -> str:
        return self.root.name

    config = property(lambda self: self.root / "config.yaml")
    status = property(lambda self: self.root / "status.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    log = property(lambda self: self.root / "train.log")
    checkpoints = property(lambda self: self.root / "checkpoints")
    adapter = property(lambda self: self.root / "adapter")
    model = property(lambda self: self.root / "model")

    def output(self, method: str) -> Path:
        """Where the result lands: a PEFT adapter, or a full model folder for full/freeze."""
        return self.adapter if method in ("lora", "qlora") else self.model

    def hold_worker_lock(self) -> None:
        """Mark this process as the run's one trainer for as long as it lives (rank 0 of several).
        Another trainer of the same folder (a `train --resume` typed while the queue runs it) is
        refused instead of writing over its checkpoints."""
        from core.errors import ConfigError

        if not is_main() or self.root in _HELD:
            return
        handle = open(self.root / ".worker.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            pid = self.read_status().get("pid")
            raise ConfigError(f"'{self.root}' is being trained by another process{f' (pid {pid})' if pid else ''}; "
                              f"stop that run first", field="output_dir") from None
        _HELD[self.root] = handle

    def release_worker_lock(self) -> None:
        """Unlinked while still held, so no other process can lock the file about to go."""
        handle = _HELD.pop(self.root, None)
        if handle is not None:
            (self.root / ".worker.lock").unlink(missing_ok=True)
            handle.close()

    def mark_stop_asked(self, pid: int) -> None:
        """A Stop was sent to worker `pid`; it ends at the end of its step, maybe a while away. Kept apart
        from status.json, which only the worker writes."""
        atomic_write_text(self.root / ".stop-asked", str(pid))

    def clear_stop_asked(self) -> None:
        (self.root / ".stop-asked").unlink(missing_ok=True)

    def stop_asked(self, pid: int | None) -> bool:
        """True once a Stop has been sent to this worker (not an earlier one of a resumed run)."""
        try:
            return bool(pid) and (self.root / ".stop-asked").read_text().strip() == str(pid)
        except OSError:
            return False

    def read_status(self) -> dict:
        status = read_json(self.status, default={})
        return status if isinstance(status, dict) else {}

    def read_config(self) -> dict:
        """config.yaml as saved, or {} when it cannot be read (the Runs view shows what it can)."""
        import yaml
        try:
            cfg = yaml.safe_load(self.config.read_text())
        except (OSError, ValueError):
            return {}
        return cfg if isinstance(cfg, dict) else {}

    def write_status(self, **fields) -> dict:
        status = self.read_status()
        if "error" in fields:               # a new error replaces the parts of an older one
            fields.setdefault("error_detail", None)
        status.update(fields, updated_at=time.time())
        if is_main():
            try:                    # a folder deleted by hand is not made anew around one file
                atomic_write_json(self.status, status, make_parents=False)
            except FileNotFoundError:
                pass
        return status

    def append_metric(self, row: dict) -> None:
        if not is_main():
            return
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.metrics)

    def last_metric(self, key: str, window: int = 64 * 1024):
        """The newest row's `key` among the file's last `window` bytes: the Runs list reads it every
        second, so a long run's whole file is not parsed each time."""
        try:
            with open(self.metrics, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - window))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            row = metric_row(line)
            if row and key in row:
                return row[key]
        return None

    def forget_metrics_after(self, step: int) -> None:
        """Drop the rows past `step`: a run resumed from an older checkpoint (it was killed, not
        stopped) trains those steps again and writes them anew."""
        try:
            lines = self.metrics.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        except OSError:
            return
        kept = [line for line in lines if (row := metric_row(line)) is None or row["step"] <= step]
        if is_main() and len(kept) < len(lines):       # the lines as written, every field kept
            atomic_write_text(self.metrics, "".join(line if line.endswith("\n") else line + "\n" for line in kept))

    def newest_checkpoint(self) -> Path | None:
        found = [(int(m.group(1)), p) for p in self.checkpoints.glob("checkpoint-*")
                 if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / "trainer_state.json").is_file()]
        return max(found)[1] if found else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 64 * 1024))
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return ""


def read_metrics(path: str | Path) -> list[dict]:
    """Every well-formed line; a corrupt or half-written line is skipped, never fatal."""
    rows = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            rows = [row for row in map(metric_row, f) if row]
    except OSError:
        pass
    return rows


TEXT_METRICS = {"mem_device"}      # the one text the trainer writes in a row: where memory was measured


def metric_row(line: str) -> dict | None:
    """A line's values, or None when it is not a row of a step. Every other value the trainer writes
    is a number: anything else (a line edited by hand, another tool's) is left out, so that no chart
    or summary meets a string or a null."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    row = {k: v for k, v in row.items() if isinstance(v, str) and k in TEXT_METRICS
           or isinstance(v, (int, float)) and not isinstance(v, bool)}
    return row if isinstance(row.get("step"), int) else None


def new_run_id(name: str = "") -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:40] or "run"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def run_dir_for(output_dir: str, name: str = "") -> RunDir:
    return RunDir(Path(output_dir).absolute() if output_dir else runs_dir() / new_run_id(name))
