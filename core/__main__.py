"""One command line: python -m core {train,chat,...}.

Exit codes: 0 done, 1 the run failed after it started, 2 bad input (nothing written),
143 stopped by a signal (a checkpoint was saved when training had begun).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from core.errors import WorkbenchError

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED = 1, 2, 143


def config_help() -> str:
    from core.config import RunConfig

    lines = ["config keys (YAML, or key=value overrides; dotted keys for sections):"]

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            if f.metadata.get("section"):
                walk(f.default_factory, f"{prefix}{f.name}.")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            choices = f.metadata.get("choices")
            extra = f" {{{','.join(map(str, choices))}}}" if choices else ""
            lines.append(f"  {prefix}{f.name}{extra} (default {default!r}): {f.metadata.get('help', '')}")

    walk(RunConfig, "")
    return "\n".join(lines)


def cmd_train(args) -> int:
    from core.config import RunConfig
    from core.train import RunFailed, run

    cfg = RunConfig.load(args.config, overrides=args.overrides)
    try:
        run_dir = run(cfg, resume=args.resume)
    except RunFailed as e:
        print(f"error: the run failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("stopped before training began", file=sys.stderr)
        return EXIT_STOPPED
    status = run_dir.read_status()
    if status.get("state") == "stopped":
        print(f"stopped at step {status.get('step')}; resume with: python -m core train --config "
              f"{run_dir.config} --resume", file=sys.stderr)
        return EXIT_STOPPED
    print(status.get("output", run_dir.root))
    return 0


def cmd_chat(args) -> int:
    from core.chat import one_shot

    print(one_shot(args.adapter, args.prompt, base=args.model, max_new_tokens=args.max_new_tokens,
                   system=args.system))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="LoRA Workbench, headless.")
    parser.add_argument("--workspace", help="workspace folder (default ./workspace or $WORKBENCH_HOME)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from a config file", epilog=config_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a RunConfig YAML file")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of output_dir")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys, e.g. lora.rank=8")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("chat", help="answer one prompt with an adapter (greedy); prints only the reply")
    p.add_argument("--adapter", help="adapter folder (runs/<id>/adapter), or a full model folder")
    p.add_argument("--model", help="base model (default: the one the adapter names)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.set_defaults(func=cmd_chat)

    from core import runs_cli
    runs_cli.register(sub)
    return parser


def quiet_libraries() -> None:
    import logging

    # bitsandbytes warns on import that an optional hub-downloaded CPU kernel is missing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workspace:
        from core.workspace import set_home
        set_home(args.workspace)
    quiet_libraries()
    try:
        return args.func(args)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
