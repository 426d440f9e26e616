"""One command line: python -m core {train,chat,...}.

Exit codes: 0 done, 1 the run failed after it started, 2 bad input (nothing written),
143 stopped by a signal (a checkpoint was saved when training had begun).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sqlite3
import sys
from pathlib import Path

from core.errors import ERROR_AS_JSON, ERROR_JSON, WorkbenchError

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
    folder = Path(args.config).absolute().parent
    named = any(item.split("=", 1)[0].strip() == "output_dir" for item in args.overrides)
    if Path(args.config).name == "config.yaml" and (folder / "status.json").is_file() and not named:
        cfg.output_dir = str(folder)     # a run folder trains where it lies, though its workspace has moved
    from core import devices
    if not os.environ.get(devices.QUEUE_WORKER) and "WORLD_SIZE" not in os.environ:
        devices.place(cfg.gpus, devices.cuda_count(), nodes=cfg.nodes.count)    # started by hand: GPUs it lacks
    try:
        run_dir = run(cfg, resume=args.resume)
    except RunFailed as e:
        print(f"error: the run failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("stopped before training began", file=sys.stderr)
        return EXIT_STOPPED
    from core.distributed import is_main

    status = run_dir.read_status()
    if status.get("state") == "stopped":
        if is_main():     # under torchrun every rank returns here; one tells the user
            print(f"stopped at step {status.get('step')}; resume with: python -m core train --config "
                  f"{run_dir.config} --resume", file=sys.stderr)
        return EXIT_STOPPED
    if is_main():
        print(status.get("output", run_dir.root))
    return 0


def cmd_chat(args) -> int:
    from core.chat import one_shot
    from core.errors import ConfigError

    if args.max_new_tokens < 1:
        raise ConfigError(f"must be at least 1, got {args.max_new_tokens}", field="max_new_tokens")

    print(one_shot(args.adapter, args.prompt, base=args.model, max_new_tokens=args.max_new_tokens,
                   system=args.system))
    return 0


def cmd_estimate(args) -> int:
    from core import devices, vram
    from core.arch import load_arch
    from core.errors import ConfigError

    if args.gpu_gib is not None and not args.gpu_gib > 0:      # NaN too
        raise ConfigError(f"GPU memory must be more than 0 GiB, got {args.gpu_gib:g}", field="gpu_gib")
    flags = {"model": args.model, "method": args.method, "train.dtype": args.dtype, "train.batch_size": args.batch_size,
             "data.max_seq_len": args.seq_len, "lora.rank": args.lora_rank, "lora.alpha": args.lora_alpha,
             "lora.dropout": args.lora_dropout, "lora.target_modules": args.target_modules,
             "train.gradient_checkpointing": args.grad_ckpt, "train.grad_accum": args.grad_accum,
             "train.optimizer": args.optim, "data.packing": args.packing,
             "train.padding_free": args.padding_free, "train.fused_loss": args.fused_loss,
             "train.liger_kernels": args.liger_kernels}
    cfg = vram.config_from_cli(args.config, args.overrides, flags)
    arch = load_arch(cfg.model, cfg.trust_remote_code)
    gpus = args.gpus
    if gpus is None:
        gpus = devices.gpus_for_estimate(cfg.gpus, cfg.nodes.count, devices.cuda_count())
    plain = args.config is None              # flags alone: the plain step (vram.PLAIN_STEP)
    est = vram.estimate(cfg, gpus=gpus, arch=arch, plain=plain)
    advice = vram.suggestions(cfg, args.gpu_gib, gpus=gpus, arch=arch, plain=plain) if args.gpu_gib else []
    print(vram.render_json(est, args.gpu_gib, advice) if args.json else vram.render_table(cfg, est, args.gpu_gib, advice))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from core.config import field_meta

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
    p.add_argument("--adapter", help="adapter folder (runs/<id>/adapter), a full model folder, a library name, "
                   "or a run id (a run that stopped or failed answers with its newest checkpoint)")
    p.add_argument("--model", help="base model (default: the one the adapter names)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("estimate", help="GPU memory a run needs, by part, and what makes it fit",
                       description="Without --config the flags describe the plain training step (the stock "
                                   "loss, padded batches, LoRA dropout 0); --config estimates that run with its "
                                   "own settings, fast paths included, as the Train tab does.",
                       epilog=config_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a RunConfig YAML file; the flags below override it")
    p.add_argument("--model", help="hub id, model folder, path to a config.json, or a shipped card name")
    p.add_argument("--method", choices=field_meta("method")["choices"])
    p.add_argument("--dtype", choices=field_meta("train.dtype")["choices"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int, help="max length in tokens (every sample counted at this length)")
    p.add_argument("--lora-rank", type=int, help="LoRA rank; alpha is 2 x rank unless --lora-alpha is given")
    p.add_argument("--lora-alpha", type=float)
    p.add_argument("--lora-dropout", type=float, help="default 0 without --config")
    p.add_argument("--target-modules", help="all-linear (default) or names separated by commas")
    on_off = argparse.BooleanOptionalAction
    p.add_argument("--grad-ckpt", action=on_off, help="gradient checkpointing")
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--optim", choices=field_meta("train.optimizer")["choices"])
    p.add_argument("--packing", action=on_off)
    p.add_argument("--padding-free", action=on_off, help="off without --config (a run's default is on)")
    p.add_argument("--fused-loss", action=on_off, help="off without --config (a run's default is on)")
    p.add_argument("--liger-kernels", action=on_off, help="Liger's norm and MLP kernels (CUDA, liger-kernel)")
    p.add_argument("--gpus", type=int, help="GPUs the run spreads over (DDP for LoRA/QLoRA, FSDP for full); "
                                            "default: what the config's gpus and nodes.count give")
    p.add_argument("--gpu-gib", type=float, help="memory of one GPU: prints the verdict and what makes it fit")
    p.add_argument("--json", action="store_true", help='print {"total_gib": ..., "parts": {...}, ...}')
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys, e.g. lora.rank=8")
    p.set_defaults(func=cmd_estimate)

    from core import runs_cli
    runs_cli.register(sub)

    from core import adapter_cli
    adapter_cli.register(sub)

    from core import data_cli
    data_cli.register(sub)
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
    from core.workspace import home_problem, set_home
    if args.workspace:
        set_home(args.workspace)
    problem = home_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    quiet_libraries()
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        if os.environ.get(ERROR_AS_JSON):       # for the UI that ran this command: the error's parts
            print(ERROR_JSON + json.dumps(e.to_dict(), default=str), file=sys.stderr)
        return EXIT_BAD_INPUT
    except sqlite3.DatabaseError as e:
        from core.db import unreadable
        print(f"error: {unreadable(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:              # `... | head`: the reader left; what is still buffered goes nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:                 # a workspace or output path that is a file, unwritable, gone
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
