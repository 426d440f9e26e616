"""The queue and its supervisor: runs wait in the workspace database, the supervisor starts each
as `python -m core train --config runs/<id>/config.yaml` (torchrun for several devices, see
core/launch.py) in its own process group, watches it through its pid and status.json, and marks
it failed within seconds if it dies.

The UI holds no run state: any process (a restarted UI, the CLI) can open a Supervisor on the
same workspace and pick up where the last one left off. Only one supervisor at a time starts
jobs (a lock file decides); every one of them can queue, stop and list.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from core import db, devices, launch, models, procs
from core.config import RunConfig
from core.errors import WorkbenchError
from core.runfiles import FINAL_STATES, RunDir, new_run_id
from core.workspace import home, runs_dir

ACTIVE = ("starting", "running")
ADOPTABLE = ACTIVE + FINAL_STATES


class JobError(WorkbenchError):
    """A queue operation that cannot be done (unknown job, wrong state)."""


@dataclass
class Job:
    id: str
    name: str
    run_dir: str
    model: str
    method: str
    state: str
    position: float | None
    devices: str
    resume: int
    pid: int | None
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    request_key: str | None = None

    @property
    def dir(self) -> RunDir:
        return RunDir(Path(self.run_dir))

    @property
    def stopping(self) -> bool:
        """Asked to stop; its worker is finishing the step and saving a checkpoint."""
        return self.state in ACTIVE and self.dir.stop_asked(self.pid)

    @classmethod
    def from_row(cls, row) -> "Job":
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


def devices_for(cfg: RunConfig) -> str:
    """The device set a run occupies: 'cpu', or the CUDA device ids it will use. GPU numbers
    this machine lacks are a ConfigError."""
    return devices.place(cfg.gpus, devices.cuda_count(), nodes=cfg.nodes.count).device_set


def _absolute_paths(cfg: RunConfig) -> RunConfig:
    """Queued runs start later, maybe from another folder: pin relative file paths now. A path that
    is not here but is in the workbench's own folder (presets/data/...) is the shipped file."""
    from core.presets import SHIPPED

    for spec in cfg.datasets:
        p = Path(spec.path).expanduser()
        if p.exists():
            spec.path = str(p.absolute())
        elif not p.is_absolute() and (SHIPPED.parent / p).exists():
            spec.path = str(SHIPPED.parent / p)
    p = Path(cfg.model).expanduser()
    if p.exists():
        cfg.model = str(p.absolute())
    return cfg


# ---- queue operations (any process) --------------------------------------------------------

def submit(cfg: RunConfig, *, request_key: str | None = None) -> Job:
    """Queue a run. The same request_key always yields the same single job (double clicks,
    retried requests); distinct keys yield distinct runs."""
    conn = db.connect()
    try:
        if request_key:
            row = conn.execute("SELECT * FROM jobs WHERE request_key=?", (request_key,)).fetchone()
            if row:
                return Job.from_row(row)
        cfg = _absolute_paths(RunConfig.from_dict(cfg.to_dict()))
        check_before_queue(cfg)
        run_id = new_run_id(cfg.name or Path(cfg.model).name)
        run = RunDir(runs_dir() / run_id)
        cfg.output_dir = str(run.root)
        run.root.mkdir(parents=True, exist_ok=False)
        cfg.save(run.config)
        run.write_status(state="queued")
        try:
            with db.transaction(conn):
                if request_key:
                    row = conn.execute("SELECT * FROM jobs WHERE request_key=?", (request_key,)).fetchone()
                    if row:
                        raise _Duplicate(row)
                last = conn.execute("SELECT MAX(position) FROM jobs").fetchone()[0] or 0
                conn.execute(
                    "INSERT INTO jobs (id, name, run_dir, model, method, state, position, devices, request_key, "
                    "created_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                    (run_id, cfg.name, str(run.root), cfg.model, cfg.method, last + 1, devices_for(cfg),
                     request_key, time.time()))
        except _Duplicate as dup:
            shutil.rmtree(run.root, ignore_errors=True)
            return Job.from_row(dup.row)
        except BaseException:
            shutil.rmtree(run.root, ignore_errors=True)
            raise
        return get(run_id, conn)
    finally:
        conn.close()


def check_before_queue(cfg: RunConfig) -> None:
    """Refuse now what the worker would refuse once it reaches the front of the queue: a model that
    cannot train, data that cannot be read or has no row to train on, adapters on layers the model
    does not have."""
    from core import data, vram
    from core.arch import load_arch

    models.check_trainable(cfg.model)
    data.check_datasets(cfg, models.tokenizer_here(cfg.model, cfg.trust_remote_code))
    if cfg.is_adapter_method():
        try:
            arch = load_arch(cfg.model, cfg.trust_remote_code)
        except WorkbenchError:          # numbers out of reach (an offline hub id): the worker tells
            return
        vram.lora_modules(arch, vram.setup_for(cfg))


class _Duplicate(Exception):
    def __init__(self, row):
        self.row = row


def get(job_id: str, conn=None) -> Job:
    own = conn is None
    conn = conn or db.connect()
    try:
        row = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
    finally:
        if own:
            conn.close()
    if row is None:
        raise JobError(f"no run '{job_id}'", field="run")
    return Job.from_row(row)


def list_jobs() -> list[Job]:
    adopt_unlisted()
    return [Job.from_row(r) for r in db.query("SELECT * FROM jobs ORDER BY created_at DESC")]


def adopt_unlisted() -> None:
    """Runs trained without the queue (`python -m core train` in this workspace) join the list when
    seen, as the Library registers adapters on sight, and a listed run resumed by hand shows as running
    again. Queued folders belong to submit(); a run taken off the list keeps a mark in its status.json
    and stays off."""
    if not runs_dir().is_dir():
        return
    rows = {r["id"]: r for r in db.query("SELECT id, run_dir, state, finished_at FROM jobs")}
    known = set(rows) | {r["run_dir"] for r in rows.values()}
    found, revived = [], []
    for run in map(RunDir, sorted(runs_dir().iterdir())):
        if run.id.startswith("."):
            continue
        if run.id in known or str(run.root) in known:
            row = rows.get(run.id)
            if row and row["state"] in FINAL_STATES:
                status = run.read_status()
                if _resumed_by_hand(run, row, status):
                    revived.append((run, status))
            continue
        status = run.read_status()
        if status.get("state") in ADOPTABLE and not status.get("unlisted") and run.config.is_file():
            found.append(_adopted_row(run, status))
    if found or revived:
        with db.transaction() as conn:
            for values in found:
                conn.execute("INSERT OR IGNORE INTO jobs (id, name, run_dir, model, method, state, devices, pid, "
                             "error, created_at, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             values)
            for run, status in revived:
                conn.execute("UPDATE jobs SET state=?, pid=?, error=NULL, finished_at=NULL WHERE id=?",
                             (status["state"], status.get("pid"), run.id))


def _resumed_by_hand(run: RunDir, row: dict, status: dict) -> bool:
    return (status.get("state") in ACTIVE and status.get("updated_at", 0) > (row["finished_at"] or 0)
            and pid_alive(status.get("pid"), run.id, run.log))


def _adopted_row(run: RunDir, status: dict) -> tuple:
    cfg = run.read_config()
    return (run.id, cfg.get("name") or "", str(run.root), str(cfg.get("model") or ""), str(cfg.get("method") or "lora"),
            status["state"], status.get("device_set") or "cpu", status.get("pid"), status.get("error"),
            status.get("started_at") or status.get("updated_at") or time.time(), status.get("started_at"),
            status.get("finished_at"))


def queue() -> list[Job]:
    return [Job.from_row(r) for r in db.query("SELECT * FROM jobs WHERE state='queued' ORDER BY position")]


def queue_position(job_id: str) -> int | None:
    ids = [j.id for j in queue()]
    return ids.index(job_id) + 1 if job_id in ids else None


def move(job_id: str, delta: int) -> None:
    """Move a queued run up (delta < 0) or down the queue."""
    with db.transaction() as conn:
        rows = conn.execute("SELECT id, position FROM jobs WHERE state='queued' ORDER BY position").fetchall()
        ids = [r["id"] for r in rows]
        if job_id not in ids:
            known = conn.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            raise JobError(f"only a queued run can be moved; this one is {known['state']}" if known
                           else f"no run '{job_id}'", field="run")
        i = ids.index(job_id)
        j = max(0, min(len(ids) - 1, i + delta))
        ids.insert(j, ids.pop(i))
        for pos, jid in enumerate(ids, start=1):
            conn.execute("UPDATE jobs SET position=? WHERE id=?", (pos, jid))


def remove(job_id: str, *, delete_files: bool = False) -> str:
    """Take a run off the list. A queued run's folder (only its config) goes with it. A run that has
    trained (finished, or queued again to resume) keeps its folder, its adapter still in the Library,
    unless delete_files asks for it to go too. As the Library deletes: the folder is moved aside inside
    the transaction and comes back if the transaction fails. Returns what became of the folder:
    "deleted", "kept", or "missing" (it was gone already)."""
    trash, outcome = None, "missing"
    try:
        with db.transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            folder = _removable(row, job_id, delete_files)
            conn.execute("DELETE FROM jobs WHERE id=?", (job_id,))
            run = RunDir(folder)
            if folder.is_dir():       # or the next listing adopts it again, maybe half deleted
                run.write_status(unlisted=True, **({"state": "stopped"} if row["state"] == "queued" else {}))
                outcome = "kept"
            if _discards(row, delete_files):
                conn.execute("DELETE FROM adapters WHERE path IN (?, ?)",
                             (str(run.adapter.absolute()), str(run.model.absolute())))
                trash = _to_trash(folder)
                outcome = "deleted" if outcome == "kept" else outcome
    except BaseException:
        if trash is not None and trash != folder and trash.exists() and not folder.exists():
            os.rename(trash, folder)
        raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return outcome


def _discards(row, delete_files: bool) -> bool:
    """Whether removing the run deletes its folder: asked for, or a queued run that never trained."""
    return delete_files or (row["state"] == "queued" and not row["resume"])


def _removable(row, job_id: str, delete_files: bool) -> Path:
    if row is None:
        raise JobError(f"no run '{job_id}'", field="run")
    if row["state"] in ACTIVE:
        raise JobError(f"a {row['state']} run cannot be removed; stop it first", field="run")
    folder = Path(row["run_dir"])
    if _discards(row, delete_files) and folder.exists() and not _inside(folder, runs_dir()):
        raise JobError(f"its folder {folder} is outside the workspace's runs folder; remove the run without "
                       f"deleting files, and delete that folder yourself", field="run")
    return folder


def _inside(path: Path, parent: Path) -> bool:
    return path.resolve().is_relative_to(parent.resolve())


def _to_trash(folder: Path) -> Path:
    """Move a run folder aside into runs/.trash (the same file system; neither the run list nor the
    Library looks there), so nothing registers it half deleted."""
    trash = runs_dir() / ".trash" / f"{folder.name}-{uuid.uuid4().hex[:8]}"
    if not folder.exists():
        return trash
    try:
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(folder, trash)
    except OSError:          # runs/<id> is itself a link to another disk: delete it where it is
        return folder
    return trash


def folder_missing(job: Job) -> bool:
    """A run folder deleted by hand (a queued run's is caught when it would start)."""
    return job.state != "queued" and not job.dir.root.exists()


def _check_folder(job: Job) -> Job:
    if folder_missing(job):
        raise JobError(f"this run's folder {job.run_dir} was deleted; remove the run from the list", field="run")
    return job


def stop(job_id: str) -> Job:
    """Ask a run to stop: it saves a checkpoint and ends as 'stopped'. A queued run just leaves the queue."""
    job = get(job_id)
    if job.state == "queued":
        if leave_queue(job):
            return get(job_id)
        job = get(job_id)               # the supervisor started it meanwhile: stop the worker instead
    if job.state not in ACTIVE or not job.pid:
        raise JobError(f"run is {job.state}, not running", field="run")
    if not pid_alive(job.pid, job.id, job.dir.log):
        raise JobError("the run's process is gone; the list marks the run failed in a moment", field="run")
    try:                                # marked first: the supervisor may see the worker end at once
        job.dir.mark_stop_asked(job.pid)
    except OSError:                     # the folder deleted by hand: the worker still stops
        pass
    try:
        if _started_by_queue(job):      # torchrun and its workers: the group the supervisor made
            os.killpg(job.pid, signal.SIGTERM)
        else:                           # started by hand: that process only, not the shell's pipeline
            os.kill(job.pid, signal.SIGTERM)
    except ProcessLookupError:
        job.dir.clear_stop_asked()
        raise JobError("the run's process has just ended; the list shows how in a moment", field="run") from None
    return job


def leave_queue(job: Job) -> bool:
    """Take a run out of the queue as 'stopped', unless the supervisor has started it already."""
    with db.transaction() as conn:
        left = conn.execute("UPDATE jobs SET state='stopped', position=NULL, finished_at=? WHERE id=? AND "
                            "state='queued'", (time.time(), job.id)).rowcount
        if left:
            job.dir.write_status(state="stopped")
    return bool(left)


def _started_by_queue(job: Job) -> bool:
    """The supervisor starts each worker as the leader of a new session, its command naming the run."""
    try:
        return os.getpgid(job.pid) == job.pid and \
            job.id in Path(f"/proc/{job.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def resume(job_id: str) -> Job:
    """Queue a stopped or failed run again; it continues from its newest checkpoint."""
    job = _check_folder(get(job_id))
    if job.stopping:
        raise JobError("the run is still stopping (saving its checkpoint); resume it once it reads stopped",
                       field="run")
    if job.state not in ("stopped", "failed"):
        raise JobError(f"only a stopped or failed run can be resumed (this one is {job.state})", field="run")
    if job.dir.newest_checkpoint() is None:
        raise JobError("this run has no checkpoint to resume from; re-run it instead", field="run")
    with db.transaction() as conn:
        last = conn.execute("SELECT MAX(position) FROM jobs").fetchone()[0] or 0
        conn.execute("UPDATE jobs SET state='queued', resume=1, position=?, error=NULL, pid=NULL, finished_at=NULL "
                     "WHERE id=?", (last + 1, job_id))
        job.dir.write_status(state="queued", error=None)   # before the supervisor can start it and write its own
        job.dir.clear_stop_asked()
    return get(job_id)


def config_of(job_id: str) -> RunConfig:
    """The run's config, for re-running or cloning into the form (output_dir cleared)."""
    cfg = RunConfig.load(_check_folder(get(job_id)).dir.config)
    cfg.output_dir = ""
    return cfg


def rerun(job_id: str, *, request_key: str | None = None) -> Job:
    """Queue a new run with this run's config; the same request_key queues it once (double clicks)."""
    return submit(config_of(job_id), request_key=request_key)


def _set(job_id: str, **fields) -> None:
    cols = ", ".join(f"{k}=?" for k in fields)
    with db.transaction() as conn:
        conn.execute(f"UPDATE jobs SET {cols} WHERE id=?", (*fields.values(), job_id))


# ---- the supervisor (one per workspace starts jobs) ----------------------------------------

def pid_alive(pid: int | None, run_id: str | None = None, log: Path | None = None) -> bool:
    """True while the process exists and is not a zombie, and, when given, is this run's worker: its
    command line names the run (as the supervisor starts it), or it writes the run's log (a run
    started by hand, whose command line names only its config)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        if run_id is None:
            return True
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        return run_id in cmdline or (log is not None and _writes(pid, log))
    except (OSError, IndexError):
        return False


def _writes(pid: int, path: Path) -> bool:
    target = os.path.realpath(path)             # the kernel names open files by their real path
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == target:
                return True
        except OSError:
            continue
    return False


def _queue_lock():
    """The open, locked file that makes its holder the queue's one supervisor; None when another holds it."""
    home().mkdir(parents=True, exist_ok=True)
    f = open(home() / ".supervisor.lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def queue_watched() -> bool:
    """Whether a supervisor (the app, or `runs supervise`) holds this workspace's queue."""
    lock = _queue_lock()
    if lock is None:
        return True
    lock.close()
    return False


class Supervisor:
    def __init__(self, poll_s: float = 1.0):
        self.poll_s = poll_s
        self.children: dict[str, subprocess.Popen] = {}
        self._lock_file = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # The lock makes sure that two app instances never start the same queued run twice.
    def _owns_queue(self) -> bool:
        if self._lock_file is None:
            self._lock_file = _queue_lock()
        return self._lock_file is not None

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def tick(self) -> None:
        """Reconcile active runs with their processes, then start what the queue allows."""
        self.watch_active()
        if self._owns_queue():
            self._start_next()

    def watch_active(self) -> None:
        """Runs marked starting or running whose process has ended are marked as it ended."""
        for job in [Job.from_row(r) for r in db.query(
                "SELECT * FROM jobs WHERE state IN ('starting', 'running')")]:
            self._watch(job)

    def _watch(self, job: Job) -> None:
        status = job.dir.read_status()
        child = self.children.get(job.id)
        alive = child.poll() is None if child else pid_alive(job.pid, job.id, job.dir.log)
        state = status.get("state")
        if alive:
            if state == "running" and job.state != "running":
                _set(job.id, state="running")
            return
        self.children.pop(job.id, None)
        procs.kill_all(str(job.dir.config), "-m core")    # workers that a killed torchrun left behind
        if not job.dir.root.exists():
            _set(job.id, state="failed", error="the run folder was deleted", finished_at=time.time(), pid=None)
            return
        cause = launch.root_cause(job.dir.log_tail(200))
        if state in FINAL_STATES and status.get("updated_at", 0) >= (job.started_at or 0):
            error = f"{cause}; then {status.get('error')}" if state == "failed" and cause else status.get("error")
            _set(job.id, state=state, error=error, finished_at=status.get("finished_at", time.time()), pid=None)
            return
        reason = cause or self._death_reason(child)
        if job.dir.stop_asked(job.pid) and state != "running":   # Stop came before the worker could handle it
            job.dir.write_status(state="stopped", error=None, finished_at=time.time())
            _set(job.id, state="stopped", error=f"stopped before its first checkpoint ({reason})",
                 finished_at=time.time(), pid=None)
            return
        tail = job.dir.log_tail(12)
        error = f"{reason}\nlast log lines:\n{tail}" if tail else reason
        job.dir.write_status(state="failed", error=reason, finished_at=time.time())
        _set(job.id, state="failed", error=error, finished_at=time.time(), pid=None)

    @staticmethod
    def _death_reason(child: subprocess.Popen | None) -> str:
        code = child.returncode if child else None
        if code is None:
            return "the worker process ended without reporting (killed or crashed)"
        if code < 0:
            name = signal.Signals(-code).name
            if -code == signal.SIGKILL:
                return f"the worker process was killed by {name} (the system may have run out of memory)"
            return f"the worker process was killed by {name}"
        return f"the worker process exited with code {code} without reporting"

    def _start_next(self) -> None:
        busy = set()
        for row in db.query("SELECT devices FROM jobs WHERE state IN ('starting', 'running')"):
            busy |= set(row["devices"].split(","))
        for job in queue():
            wanted = set(job.devices.split(","))
            if wanted & busy:
                continue
            if self._launch(job):
                busy |= wanted

    def _launch(self, job: Job) -> bool:
        run = job.dir
        if not run.config.is_file():
            _set(job.id, state="failed", error="the run folder or its config.yaml was deleted", position=None,
                 finished_at=time.time())
            return False
        try:
            cmd = launch.command(RunConfig.load(run.config), str(run.config), cuda_count=devices.cuda_count(),
                                 workspace=str(home()), resume=bool(job.resume))
        except WorkbenchError as e:
            _set(job.id, state="failed", error=str(e), position=None, finished_at=time.time())
            run.write_status(state="failed", error=str(e), error_detail=e.to_dict(), finished_at=time.time())
            return False
        env = {**os.environ, "PYTHONUNBUFFERED": "1", devices.QUEUE_WORKER: "1", **cmd.env}
        with db.transaction() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id=?", (job.id,)).fetchone()
            if row is None or row["state"] != "queued":
                return False
            with open(run.log, "ab") as log:
                log.write(launch.launch_marker(time.time()).encode())
                log.flush()
                child = subprocess.Popen(cmd.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=os.getcwd(), start_new_session=True)
            conn.execute("UPDATE jobs SET state='starting', pid=?, started_at=?, position=NULL WHERE id=?",
                         (child.pid, time.time(), job.id))
        self.children[job.id] = child
        return True

    # ---- background thread for the UI ----
    def start_background(self) -> "Supervisor":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as e:   # a locked database or a full disk must not end the loop
                print(f"supervisor: {type(e).__name__}: {e}", file=sys.stderr)
            self._stop.wait(self.poll_s)

    def shutdown(self) -> None:
        """Stop watching; the workers keep running and a later supervisor re-attaches."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.release()
