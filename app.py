"""LoRA Workbench: serve the browser UI (127.0.0.1:7860 by default)."""
from __future__ import annotations

import argparse
import os
import sqlite3
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="LoRA Workbench: fine-tune language models in the browser.")
    p.add_argument("--host", default=os.environ.get("WORKBENCH_HOST", "127.0.0.1"),
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=int(os.environ.get("WORKBENCH_PORT", "7860")))
    p.add_argument("--workspace", help="workspace folder (default ./workspace or $WORKBENCH_HOME)")
    p.add_argument("--auth", default=os.environ.get("WORKBENCH_AUTH"),
                   help="require a login, as user:password (or set WORKBENCH_AUTH)")
    p.add_argument("--share", action="store_true", help="open a public gradio.live link (off by default)")
    p.add_argument("--restrict-paths", action="store_true",
                   help="keep typed paths to the workspace even on 127.0.0.1 (behind a proxy that others reach)")
    p.add_argument("--allow-path", action="append", metavar="FOLDER",
                   default=[f for f in os.environ.get("WORKBENCH_ALLOW_PATHS", "").split(os.pathsep) if f],
                   help="served beyond this machine, visitors may name files only in the workspace and its "
                        "uploads; this allows one more folder (repeat for several, or set WORKBENCH_ALLOW_PATHS "
                        "to folders joined by ':')")
    return p.parse_args(argv)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def restrict_paths(args) -> list[str] | None:
    """Served to other machines (or asked to), typed paths are kept to the workspace, the shipped
    presets, gradio's uploads and the --allow-path folders; on this machine alone they are not.
    Returns the folders."""
    from gradio.utils import get_upload_folder

    from core import path_policy
    from core.presets import SHIPPED
    from core.workspace import home

    if args.host in LOOPBACK and not args.share and not args.restrict_paths:
        path_policy.unrestrict()
        return None
    folders = [str(home()), str(SHIPPED), get_upload_folder(), *args.allow_path]
    path_policy.restrict(folders)
    return folders


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.workspace:
        from core.workspace import set_home
        set_home(args.workspace)
    auth = None
    if args.auth:
        if ":" not in args.auth:
            print("error: --auth must be user:password", file=sys.stderr)
            return 2
        auth = tuple(args.auth.split(":", 1))
    if args.host not in LOOPBACK and auth is None:
        print(f"warning: serving on {args.host} without --auth: anyone who can reach this port can use "
              f"the workbench", file=sys.stderr)
    folders = restrict_paths(args)
    if folders:
        print(f"typed paths are kept to: {', '.join(folders)}", file=sys.stderr)
    problem = workspace_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from webui.app import launch
    launch(host=args.host, port=args.port, auth=auth, share=args.share)
    return 0


def workspace_problem() -> str | None:
    """What stops the app before it starts, in one line as the command line says it: a workspace
    that is a file, a database that cannot be read or stays locked."""
    from core import db
    from core.errors import WorkbenchError
    from core.workspace import home_problem

    problem = home_problem()
    if problem:
        return problem
    try:
        db.query("SELECT count(*) FROM jobs")
    except WorkbenchError as e:         # locked for longer than the busy timeout: the file is fine
        return str(e)
    except sqlite3.DatabaseError as e:
        return db.unreadable(e)
    return None


if __name__ == "__main__":
    sys.exit(main())
