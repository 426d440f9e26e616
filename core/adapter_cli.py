"""`python -m core library {list,show,import,export-zip,rename,delete,mix,exports,delete-export}` and
`python -m core merge`."""
from __future__ import annotations

import json
import sys

from core.errors import ConfigError, WorkbenchError


def cmd_list(args) -> int:
    from core import library

    infos = library.list_adapters(args.base)
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return 0
    print(f"{'name':<32} {'source':<9} {'method':<7} {'r/alpha':<9} {'steps':>6} {'loss':>8} {'eval':>8} "
          f"{'size':>10}  base")
    for i in infos:
        ra = f"{i.rank}/{i.alpha:g}" if i.rank else "-"
        print(f"{i.name:<32} {i.source:<9} {i.method:<7} {ra:<9} {i.steps or '-':>6} {_num(i.train_loss):>8} "
              f"{_num(i.eval_loss):>8} {i.size:>10}  {i.base_model}{f'  ({i.problem})' if i.problem else ''}")
    return 0


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def cmd_show(args) -> int:
    from core import library

    print(json.dumps(library.detail(args.adapter).to_dict(), indent=2, default=str))
    return 0


def cmd_import(args) -> int:
    from core.adapter_io import import_adapter

    info = import_adapter(args.source, name=args.name, base_model=args.base)
    print(f"imported '{info.name}' for {info.base_model}: {info.path}")
    return 0


def cmd_export_zip(args) -> int:
    from core.adapter_io import export_zip

    print(export_zip(args.adapter, args.out))
    return 0


def cmd_rename(args) -> int:
    from core import library

    info = library.rename(args.adapter, args.new_name)
    print(f"renamed to '{info.name}'")
    return 0


def cmd_delete(args) -> int:
    from core import library

    info = library.get(args.adapter)
    if not args.yes:
        raise ConfigError(f"this deletes '{info.name}' and its files ({info.path}); add --yes to confirm",
                          field="yes")
    library.delete(info.id)
    print(f"deleted '{info.name}'")
    return 0


def cmd_exports(args) -> int:
    from core import exports

    found = exports.list_exports()
    if args.json:
        print(json.dumps([e.to_dict() for e in found], indent=2))
        return 0
    print(f"{'name':<32} {'size':>10}  {'created':<16}  {'adapter':<24} base")
    for e in found:
        print(f"{e.name:<32} {e.size:>10}  {e.created or '-':<16}  {e.adapter or '-':<24} {e.base_model or '-'}")
    return 0


def cmd_delete_export(args) -> int:
    from core import exports

    found = exports.get(args.name)
    if not args.yes:
        raise ConfigError(f"this deletes the merged model '{found.name}' and its files ({found.path}); add --yes "
                          "to confirm", field="yes")
    exports.delete(found.name)
    print(f"deleted exports/{found.name}")
    return 0


def cmd_mix(args) -> int:
    from core.adapter_mix import mix

    info = mix(args.adapters, args.weights or [], args.name, combination=args.combination, density=args.density,
               svd_rank=args.svd_rank, progress=_progress)
    print(info.path)
    return 0


def cmd_merge(args) -> int:
    from core.adapter_merge import merge

    try:
        result = merge(args.adapter, args.out, max_shard_size=args.max_shard_size, dtype=args.dtype,
                       progress=_progress)
    except WorkbenchError as e:
        if e.field == "name":          # the export's name is the --out flag here
            e.field = "--out"
        raise
    print(result.path)
    return 0


def _progress(stage: str, fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def register(sub) -> None:
    from core.adapter_merge import DTYPES
    from core.adapter_mix import COMBINATIONS

    lib = sub.add_parser("library", help="the adapter library: list, show, import, export, rename, delete, mix; "
                                         "merged models in exports/")
    cmds = lib.add_subparsers(dest="library_command", required=True)

    p = cmds.add_parser("list", help="every adapter, trained here, imported or mixed")
    p.add_argument("--base", help="only adapters of this base model")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_list)

    p = cmds.add_parser("show", help="one adapter's details as JSON: configs, loss curve, memory")
    p.add_argument("adapter", help="name, id or folder")
    p.set_defaults(func=cmd_show)

    p = cmds.add_parser("import", help="add a PEFT adapter from a folder or a .zip (safetensors weights only)")
    p.add_argument("source", help="adapter folder or .zip")
    p.add_argument("--name", help="library name (default: from the folder or zip name)")
    p.add_argument("--base", help="base model, when the adapter does not name it (or to check it)")
    p.set_defaults(func=cmd_import)

    p = cmds.add_parser("export-zip", help="zip an adapter into exports/<name>.zip; prints the path")
    p.add_argument("adapter", help="name, id or folder")
    p.add_argument("--out", help="folder for the zip (default: the workspace's exports/)")
    p.set_defaults(func=cmd_export_zip)

    p = cmds.add_parser("rename", help="give an adapter a new, unique name")
    p.add_argument("adapter", help="name, id or folder")
    p.add_argument("new_name")
    p.set_defaults(func=cmd_rename)

    p = cmds.add_parser("delete", help="delete an adapter and its files")
    p.add_argument("adapter", help="name, id or folder")
    p.add_argument("--yes", action="store_true", help="confirm the deletion")
    p.set_defaults(func=cmd_delete)

    p = cmds.add_parser("mix", help="mix adapters of one base model into a new adapter (peft weighted adapters)")
    p.add_argument("adapters", nargs="+", help="names, ids or folders")
    p.add_argument("--weights", type=float, nargs="+", required=True, help="one weight per adapter")
    p.add_argument("--name", required=True, help="name of the new adapter")
    p.add_argument("--combination", default="linear", choices=COMBINATIONS)
    p.add_argument("--density", type=float, help="share of each update kept (ties, dare_ties)")
    p.add_argument("--svd-rank", type=int, help="rank of the result (svd; default the largest rank)")
    p.set_defaults(func=cmd_mix)

    p = cmds.add_parser("exports", help="the merged full models in exports/, newest first")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_exports)

    p = cmds.add_parser("delete-export", help="delete a merged model from exports/")
    p.add_argument("name", help="its folder name in exports/")
    p.add_argument("--yes", action="store_true", help="confirm the deletion")
    p.set_defaults(func=cmd_delete_export)

    p = sub.add_parser("merge", help="merge an adapter into its base and export a full model to exports/<name>/")
    p.add_argument("--adapter", required=True, help="library name, id, or adapter folder")
    p.add_argument("--out", required=True, help="name of the exported model folder")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 2GB")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="dtype of the saved weights (auto: the base's)")
    p.set_defaults(func=cmd_merge)
