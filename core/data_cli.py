"""`python -m core data ...`: check data files and manage the dataset library from the command
line (the same operations as the Data tab). `check` exits 0 when every file is usable, 2 when one
is not."""
from __future__ import annotations

import json

from core import dataset_library as lib
from core.data import check_files, report_lines
from core.errors import DataError
from core.formats import FORMATS

EXIT_BAD_INPUT = 2


def register(sub) -> None:
    p = sub.add_parser("data", help="check data files; list, import, rename and delete saved datasets")
    data = p.add_subparsers(dest="data_command", required=True)
    q = data.add_parser("check", help="detected format, rows read and usable, and each problem with its line")
    _file_options(q)
    q.set_defaults(func=cmd_check)
    q = data.add_parser("import", help="check files and save them as one named dataset")
    _file_options(q)
    q.add_argument("--name", required=True, help="the dataset's name in the library")
    q.set_defaults(func=cmd_import)
    q = data.add_parser("import-llamafactory", help="save the datasets a LLaMA-Factory dataset_info.json describes")
    q.add_argument("folder", help="the folder holding dataset_info.json")
    q.add_argument("--only", nargs="+", metavar="ENTRY", help="import these entries only")
    q.add_argument("--prefix", default="", help="put this before each dataset name")
    q.add_argument("--max-mb", type=float, help="size limit per file (default $WORKBENCH_MAX_UPLOAD_MB or 512)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_import_llamafactory)
    q = data.add_parser("list", help="saved datasets")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_list)
    q = data.add_parser("rename", help="rename a saved dataset")
    q.add_argument("old")
    q.add_argument("new")
    q.set_defaults(func=lambda args: _print_info(lib.rename_dataset(args.old, args.new)))
    q = data.add_parser("delete", help="delete a saved dataset and its files")
    q.add_argument("name")
    q.set_defaults(func=lambda args: lib.delete_dataset(args.name) or 0)


def _file_options(q) -> None:
    q.add_argument("files", nargs="+", metavar="FILE")
    q.add_argument("--format", default="auto", choices=("auto",) + FORMATS)
    q.add_argument("--columns", nargs="+", default=[], metavar="FIELD=COLUMN",
                   help="column mapping, e.g. instruction=question output=answer")
    q.add_argument("--max-mb", type=float, help="size limit per file (default $WORKBENCH_MAX_UPLOAD_MB or 512)")
    q.add_argument("--json", action="store_true", help="print a machine-readable report")


def parse_columns(items: list[str]) -> dict | None:
    mapping = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DataError(f"expected FIELD=COLUMN, got {item!r}", field="columns")
        mapping[key.strip()] = value.strip()
    return mapping or None


def cmd_check(args) -> int:
    checks = check_files(args.files, args.format, parse_columns(args.columns), max_mb=args.max_mb)
    usable = all(c.usable for c in checks)
    if args.json:
        print(json.dumps({"usable": usable, "files": [c.to_dict() for c in checks]}, ensure_ascii=False, indent=2))
    else:
        print("\n".join(line for c in checks for line in report_lines(c)))
    return 0 if usable else EXIT_BAD_INPUT


def cmd_import(args) -> int:
    info = lib.save_dataset(args.name, args.files, format=args.format, columns=parse_columns(args.columns),
                            max_mb=args.max_mb)
    return _print_info(info, args.json)


def _print_info(info: lib.DatasetInfo, as_json: bool = False) -> int:
    if as_json:
        print(json.dumps(info.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(f"{info.name}: {info.format}, {info.rows} rows, {info.rows_usable} usable, files {', '.join(info.files)}")
    return 0


def cmd_import_llamafactory(args) -> int:
    from core.llamafactory import import_llamafactory

    results = import_llamafactory(args.folder, args.only, args.prefix, max_mb=args.max_mb)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=2))
    for r in results if not args.json else []:
        print(f"{r.entry}: saved as {r.name}" if r.name else f"{r.entry}: not imported: {r.error['message']}")
    return 0 if all(r.name for r in results) else EXIT_BAD_INPUT


def cmd_list(args) -> int:
    infos = lib.list_datasets()
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], ensure_ascii=False, indent=2))
        return 0
    for i in infos:
        tokens = f", {i.tokens} tokens" if i.tokens is not None else ""
        print(f"{i.name}\t{i.format}\t{i.rows} rows ({i.rows_usable} usable){tokens}\t{i.created}"
              + ("\tFOLDER MISSING" if i.missing else ""))
    return 0
