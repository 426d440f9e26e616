"""`python -m core runs ...`: the queue from the command line (the same operations as the Runs tab)."""
from __future__ import annotations

import json
import sys
import time

from core import jobs
from core.config import RunConfig


def register(sub) -> None:
    p = sub.add_parser("runs", help="queue, list, stop and resume runs; run the supervisor")
    runs = p.add_subparsers(dest="runs_command", required=True)
    q = runs.add_parser("list", help="every run with its state")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_settled(cmd_list))
    q = runs.add_parser("submit", help="queue a run from a config file")
    q.add_argument("--config", required=True)
    q.add_argument("overrides", nargs="*", metavar="key=value")
    q.set_defaults(func=_settled(cmd_submit))
    for name, fn, text in (("stop", jobs.stop, "stop a run (checkpoint, then stop)"),
                           ("resume", jobs.resume, "queue a stopped run again from its newest checkpoint"),
                           ("rerun", jobs.rerun, "queue a new run with the same config")):
        q = runs.add_parser(name, help=text)
        q.add_argument("run_id")
        q.set_defaults(func=_settled(lambda args, fn=fn: _print(fn(args.run_id))))
    q = runs.add_parser("remove", help="take a run off the list (a queued one leaves the queue); "
                                       "a finished run's folder is kept unless --delete-files")
    q.add_argument("run_id")
    q.add_argument("--delete-files", action="store_true",
                   help="also delete the run's folder: its adapter, checkpoints and log")
    q.set_defaults(func=_settled(cmd_remove))
    q = runs.add_parser("move", help="move a queued run up (negative) or down the queue")
    q.add_argument("run_id")
    q.add_argument("delta", type=int)
    q.set_defaults(func=_settled(lambda args: _print(jobs.move(args.run_id, args.delta))))
    q = runs.add_parser("supervise", help="start queued runs and watch them (the app does this itself)")
    q.add_argument("--until-idle", action="store_true", help="exit once nothing is queued or running")
    q.add_argument("--poll", type=float, default=1.0)
    q.set_defaults(func=cmd_supervise)


UNWATCHED = ("nothing starts queued runs in this workspace now: start the app (make run) or "
             "`python -m core runs supervise`")


def _settled(fn):
    """With no supervisor, a command marks the runs whose process has ended itself, as the
    supervisor would: else they would read 'running' forever, and could not be removed."""
    def command(args) -> int:
        watched = jobs.queue_watched()
        if not watched:
            jobs.Supervisor().watch_active()
        code = fn(args)
        queued = [j for j in jobs.list_jobs() if j.state == "queued"] if not watched else []
        if queued:
            print(f"note: {len(queued)} run(s) queued; {UNWATCHED}", file=sys.stderr)
        return code
    return command


def _print(result) -> int:
    if isinstance(result, jobs.Job):
        print(f"{result.id} {result.state}")
    return 0


def cmd_list(args) -> int:
    rows = jobs.list_jobs()
    if args.json:
        print(json.dumps([{**j.__dict__, "folder_missing": jobs.folder_missing(j),
                           "stopping": j.stopping} for j in rows],
                         indent=2, default=str))
        return 0
    for j in rows:
        status = j.dir.read_status()
        step = f"{status.get('step', 0)}/{status.get('total_steps') or '?'}"
        missing = "  (folder deleted)" if jobs.folder_missing(j) else \
            "  (status.json cannot be read)" if j.dir.status.is_file() and not status else ""
        shown = "stopping" if j.stopping else j.state
        print(f"{j.id:48} {shown:10} {step:>10} {j.method:6} {j.model}{missing}")
    return 0


def cmd_remove(args) -> int:
    job = jobs.get(args.run_id)
    outcome = jobs.remove(job.id, delete_files=args.delete_files)
    said = {"deleted": "; its folder was deleted", "kept": f"; its folder is kept: {job.run_dir}", "missing": ""}
    print(f"{job.id} removed{said[outcome]}")
    return 0


def cmd_submit(args) -> int:
    job = jobs.submit(RunConfig.load(args.config, overrides=args.overrides))
    print(job.id)
    return 0


def cmd_supervise(args) -> int:
    sup = jobs.Supervisor(poll_s=args.poll)
    try:
        while True:
            sup.tick()
            if args.until_idle and not [j for j in jobs.list_jobs() if j.state in ("queued",) + jobs.ACTIVE]:
                return 0
            time.sleep(args.poll)
    except KeyboardInterrupt:
        print("supervisor stopped; running workers keep going", file=sys.stderr)
        return 0
    finally:
        sup.release()
