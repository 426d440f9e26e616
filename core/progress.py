"""Trainer callbacks that report a run through its files (metrics.jsonl, status.json) and stop it
cleanly on SIGTERM with a checkpoint. The UI only ever reads these files."""
from __future__ import annotations

import logging
import resource
import signal
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from core.distributed import any_rank, is_main
from core.runfiles import RunDir
from core.workspace import shared_mode

log = logging.getLogger("workbench")
GIB = 1024 ** 3


def peak_memory_gib() -> dict:
    """Peak memory so far, or the process's peak RSS on the CPU. On a GPU: the allocator's reserved
    peak plus the CUDA context, what the device showed in use, the quantity the estimate gives
    (core.vram counts the allocator's slack); the allocated peak beside it. The context is what the
    device holds beyond our reserved memory: on a GPU shared with other processes it includes theirs."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        free, total = torch.cuda.mem_get_info()
        context = max(0, (total - free) - torch.cuda.memory_reserved())
        return {"peak_mem_gib": round((reserved + context) / GIB, 3), "peak_alloc_gib": round(peak / GIB, 3),
                "peak_reserved_gib": round(reserved / GIB, 3), "mem_device": torch.cuda.get_device_name()}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mem_gib": round(rss_kib * 1024 / GIB, 3), "mem_device": "cpu (peak RSS)"}


class StopRequest:
    """SIGTERM (or SIGINT) asks the run to stop at the end of the current step, with a checkpoint."""

    def __init__(self):
        self.requested = False
        self.training = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        log.info("stop requested (signal %s)", signum)
        self.requested = True
        if not self.training:
            raise KeyboardInterrupt


class FolderDeleted(Exception):
    """The run's folder was deleted while it trained: nothing it writes from here on has a place."""


class ProgressCallback(TrainerCallback):
    """tokens_per_s reads state.num_input_tokens_seen, which training_arguments sets to count real
    tokens only (never padding), so the figure compares across batching modes."""

    def __init__(self, run: RunDir, stop: StopRequest):
        self.run = run
        self.stop = stop
        self.start_time = self.start_step = None
        self.last_log_time = self.last_tokens = None
        self.last_status = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time = self.last_log_time = time.time()
        self.start_step = state.global_step
        self.last_tokens = state.num_input_tokens_seen
        self.stop.training = True
        self.run.write_status(state="running", step=state.global_step, total_steps=state.max_steps,
                              epoch=state.epoch or 0.0, eta_s=None, started_at=self.start_time)

    def on_step_end(self, args, state, control, **kwargs):
        # Checked before the step's log and checkpoint, which would create the folder anew; by every
        # rank at once, as the others would otherwise wait in their next collective.
        if any_rank(is_main() and not self.run.status.is_file()):
            raise FolderDeleted(f"the run folder {self.run.root} was deleted while it trained")
        if any_rank(self.stop.requested):
            self.stop.requested = True
            control.should_save = True
            control.should_training_stop = True
        now = time.time()
        if now - self.last_status >= 0.5 or state.global_step >= state.max_steps:
            self.last_status = now
            self.run.write_status(state="running", step=state.global_step, total_steps=state.max_steps,
                                  epoch=round(state.epoch or 0.0, 4), eta_s=self._eta(state, now),
                                  **peak_memory_gib())

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if is_main() and checkpoint.is_dir():
            shared_mode(checkpoint)

    def _eta(self, state, now: float) -> float | None:
        done = state.global_step - self.start_step
        if done <= 0:
            return None
        return round((now - self.start_time) / done * (state.max_steps - state.global_step), 1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if "train_loss" in logs:      # the end-of-training summary, not a step
            return
        now = time.time()
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "time": round(now, 3)}
        if "eval_loss" in logs:
            row["eval_loss"] = logs["eval_loss"]
        else:
            for key in ("loss", "learning_rate", "grad_norm"):
                if key in logs:
                    row[key] = logs[key]
            tokens = state.num_input_tokens_seen - self.last_tokens
            row["tokens_per_s"] = round(tokens / max(now - self.last_log_time, 1e-9), 1)
            row["tokens_seen"] = state.num_input_tokens_seen
            self.last_tokens, self.last_log_time = state.num_input_tokens_seen, now
        row.update(peak_memory_gib())
        self.run.append_metric(row)
        if "loss" in row:
            log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s", state.global_step, state.max_steps,
                     row["loss"], row.get("learning_rate", 0.0), row["tokens_per_s"])
        elif "eval_loss" in row:
            log.info("step %d eval_loss %.4f", state.global_step, row["eval_loss"])


def setup_logging(run: RunDir | None) -> None:
    logger = logging.getLogger("workbench")
    logger.setLevel(logging.INFO if is_main() else logging.WARNING)    # one rank tells the story
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if run is not None and not _stderr_is(run.log):
        handler = logging.FileHandler(run.log, encoding="utf-8")
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.propagate = False


def _stderr_is(path) -> bool:
    """The supervisor already sends the worker's stderr to train.log: do not write lines twice."""
    import os
    try:
        return os.path.samefile(f"/proc/self/fd/{sys.stderr.fileno()}", path)
    except (OSError, ValueError):
        return False
