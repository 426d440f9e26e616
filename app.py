"""LoRA Workbench: serve the browser UI (127.0.0.1:7860 by default)."""
from __future__ import annotations

import argparse
import os
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
    return p.parse_args(argv)


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
    if args.host not in ("127.0.0.1", "localhost", "::1") and auth is None:
        print(f"warning: serving on {args.host} without --auth: anyone who can reach this port can use "
              f"the workbench", file=sys.stderr)
    from webui.app import launch
    launch(host=args.host, port=args.port, auth=auth, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
