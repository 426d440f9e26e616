"""What the Runs view shows, computed from the database and the run files (no UI code here)."""
from __future__ import annotations

import time

from core.jobs import Job, folder_missing, list_jobs, queue_position


def summary(job: Job) -> dict:
    status = job.dir.read_status()
    step, total = status.get("step") or 0, status.get("total_steps")
    started = job.started_at or status.get("started_at")
    end = job.finished_at or (time.time() if job.state in ("starting", "running") else None)
    return {
        "id": job.id, "name": job.name or job.id, "model": job.model, "method": job.method, "state": job.state,
        "stopping": job.stopping,
        "step": step, "total_steps": total,
        "progress": step / total if total else (1.0 if job.state == "completed" else 0.0),
        "eta_s": status.get("eta_s") if job.state == "running" else None,
        "started": started, "duration_s": (end - started) if started and end else None,
        "final_loss": job.dir.last_metric("loss"), "error": job.error or status.get("error"),
        "error_detail": status.get("error_detail") if job.state == "failed" else None,   # a refusal's parts
        "queue_position": queue_position(job.id) if job.state == "queued" else None,
        "peak_mem_gib": status.get("peak_mem_gib"), "mem_device": status.get("mem_device"),
        "estimate_gib": status.get("estimate_gib"), "folder_missing": folder_missing(job),
    }


def shown_state(s: dict) -> str:
    """The state as a person reads it: a running run asked to stop is 'stopping' until its worker ends."""
    return "stopping" if s["stopping"] else s["state"]


def summaries() -> list[dict]:
    return [summary(j) for j in list_jobs()]


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average, as TensorBoard draws smoothed curves."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_labels(runs: dict[str, Job]) -> dict[str, str]:
    """A label per run id for charts and tables: its name, with the id where two runs share a name."""
    names = [job.name or run_id for run_id, job in runs.items()]
    return {run_id: name if names.count(name) == 1 else f"{name} · {run_id}"
            for (run_id, job), name in zip(runs.items(), names)}


def differing_settings(configs: dict[str, dict]) -> dict[str, list]:
    """Keys whose values differ between runs (output folder and name aside), each with every run's value."""
    flat = {name: flatten(cfg) for name, cfg in configs.items()}
    keys = sorted({k for f in flat.values() for k in f} - {"output_dir", "name"})
    return {k: [flat[n].get(k) for n in flat] for k in keys
            if len({repr(flat[n].get(k)) for n in flat}) > 1}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
