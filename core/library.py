"""The adapter library: every adapter in the workspace, trained here, imported or mixed.

Trained adapters stay in their run folder (runs/<id>/adapter, or runs/<id>/model for full and
freeze tuning); imported and mixed ones live in adapters/<name>/. The `adapters` table is the
catalogue. Folders are registered on sight, so the table can always be rebuilt from the files;
folders and rows change together inside one database transaction, so two processes never see
a row without its folder for longer than a crash.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core import db, path_policy
from core.errors import ConfigError, ModelError, WorkbenchError
from core.runfiles import RunDir
from core.workspace import home, read_json, runs_dir

SOURCES = ("trained", "imported", "mixed")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TRASH_MARK = ".trash-"
WORK_PREFIXES = (".import-", ".mix-")     # hidden temp folders in adapters/
STALE_S = 24 * 3600


def adapters_dir() -> Path:
    """Imported and mixed adapters: adapters/<name>/."""
    return home() / "adapters"


@dataclass
class AdapterInfo:
    """One row of the library table."""
    id: str
    name: str
    base_model: str
    method: str                     # lora | qlora | full | freeze
    source: str                     # trained | imported | mixed
    kind: str                       # adapter (PEFT folder) | model (full model folder)
    path: str
    run_id: str | None = None
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    steps: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    size_bytes: int = 0
    size: str = ""                  # size_bytes for people, e.g. "1.2 MiB"
    created: str = ""               # ISO time, local
    parents: list[dict] = field(default_factory=list)   # mixed: [{id, name, weight}]
    problem: str = ""               # why it cannot be loaded as it is, when that is seen without loading it

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AdapterDetail:
    """The detail view: the row, its configs, its loss curve and its memory, estimated and measured."""
    info: AdapterInfo
    adapter_config: dict            # adapter_config.json (or config.json of a full model)
    run_config: dict | None         # the RunConfig it was trained with, when known
    metrics: list[dict]             # metrics.jsonl rows of its run: the loss curve
    memory: dict                    # {"estimate": dict | None, "measured": dict}
    meta: dict                      # workbench.json as written

    def to_dict(self) -> dict:
        return asdict(self)


def validate_name(name: str, *, field: str = "name") -> str:
    """A library name doubles as a folder name, so it can never leave its folder."""
    name = (name or "").strip()
    if not NAME_RE.match(name) or ".." in name:
        shown = name if len(name) <= 40 else f"{name[:40]}…"
        raise ConfigError(f"'{shown}' is not a valid name: use 1-64 letters, digits, '.', '_' or '-', "
                          f"starting with a letter or digit", field=field)
    return name


def slug(text: str) -> str:
    """A valid name made from any text (a file or folder name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._").replace("..", ".")[:64] or "adapter"


def new_id(source: str) -> str:
    return f"{source[:3]}-{secrets.token_hex(4)}"


# --- the catalogue -------------------------------------------------------------------------------

def sync() -> None:
    """Register folders seen on disk, forget rows whose folder is gone, clear leftovers. Runs in one
    transaction, so it never sees another process's rename or delete half done."""
    with db.transaction() as conn:
        rows = {r["path"]: dict(r) for r in conn.execute("SELECT * FROM adapters")}
        known = {os.path.realpath(p) for p in rows}      # a folder seen by two names is one folder

        def new(path) -> bool:
            fresh = os.path.realpath(path) not in known
            known.add(os.path.realpath(path))
            return fresh

        for path, meta, run_id in _trained_folders(conn):
            if new(path):
                rows[str(path)] = _insert(conn, run_id, slug(run_id), path, meta, "trained", run_id)
        for path in _library_folders():
            if new(path):
                meta = read_json(path / "workbench.json") or {}
                source = meta.get("source") if meta.get("source") in SOURCES else "imported"
                rows[str(path)] = _insert(conn, meta.get("id") or new_id(source), path.name, path, meta, source)
        _clear_leftovers(rows)
        for path, row in rows.items():
            if not Path(path).is_dir():
                conn.execute("DELETE FROM adapters WHERE id = ?", (row["id"],))


def _trained_folders(conn):
    """(folder, workbench.json, run id) of every finished run: runs/*/ and run folders the jobs table knows."""
    roots = set(runs_dir().glob("*")) if runs_dir().is_dir() else set()
    roots |= {Path(r[0]) for r in conn.execute("SELECT run_dir FROM jobs WHERE run_dir != ''")}
    for root in sorted(roots):
        for out in (root / "adapter", root / "model"):
            meta = read_json(out / "workbench.json")
            if isinstance(meta, dict):
                yield out.absolute(), meta, root.name


def _library_folders():
    if adapters_dir().is_dir():
        for path in sorted(adapters_dir().iterdir()):
            if path.is_dir() and not path.name.startswith(".") and (
                    (path / "adapter_config.json").is_file() or (path / "workbench.json").is_file()):
                yield path.absolute()


def _insert(conn, id_: str, name: str, path: Path, meta: dict, source: str, run_id: str | None = None) -> dict:
    """Add a row, making the id and the name unique if a clash forces it."""
    if conn.execute("SELECT 1 FROM adapters WHERE id = ?", (id_,)).fetchone():
        id_ = new_id(source)
    name = _free_name(conn, name)
    row = {"id": id_, "name": name, "path": str(path), "base_model": str(meta.get("base_model") or ""),
           "method": str(meta.get("method") or "lora"), "source": source, "run_id": run_id,
           "created_at": time.time()}
    conn.execute("INSERT INTO adapters (id, name, path, base_model, method, source, run_id, created_at) "
                 "VALUES (:id, :name, :path, :base_model, :method, :source, :run_id, :created_at)", row)
    return row


def _free_name(conn, name: str) -> str:
    taken = {r[0] for r in conn.execute("SELECT name FROM adapters")}
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name[:58]}-{n}", n + 1
    return candidate


def _clear_leftovers(rows: dict) -> None:
    """Trash of a finished delete goes (its row is gone); trash whose row is still there is a delete that
    failed before it could put the folder back, so it is put back. Temp folders of a crashed import or
    mix go once they are a day old."""
    parents = [adapters_dir()] + ([p for p in runs_dir().iterdir() if p.is_dir()] if runs_dir().is_dir() else [])
    for parent in filter(Path.is_dir, parents):
        for path in filter(Path.is_dir, parent.glob(".*")):
            if TRASH_MARK in path.name:
                original = path.with_name(path.name[1:].rsplit(TRASH_MARK, 1)[0])
                if str(original) not in rows:
                    shutil.rmtree(path, ignore_errors=True)
                elif not original.exists():
                    os.rename(path, original)
            elif path.name.startswith(WORK_PREFIXES) and time.time() - path.stat().st_mtime > STALE_S:
                shutil.rmtree(path, ignore_errors=True)


def list_adapters(base_model: str | None = None) -> list[AdapterInfo]:
    """Every adapter, newest first; `base_model` keeps those of one base (as base_models() names it)."""
    sync()
    infos = [info_for(row) for row in db.query("SELECT * FROM adapters")]
    if base_model:
        infos = [i for i in infos if i.base_model == base_model]
    return sorted(infos, key=lambda i: i.created, reverse=True)


def base_models() -> list[str]:
    """The base models the library holds adapters for: the choices of the filter."""
    return sorted({i.base_model for i in list_adapters() if i.base_model})


def get(ref: str | os.PathLike) -> AdapterInfo:
    """An adapter by id, name or folder path."""
    return info_for(_row(ref))


def _row(ref) -> dict:
    sync()
    text = str(ref).strip()
    for sql in ("SELECT * FROM adapters WHERE id = ?", "SELECT * FROM adapters WHERE name = ?"):
        rows = db.query(sql, (text,))
        if rows:
            return rows[0]
    path = Path(os.path.expanduser(text)).absolute()
    for candidate in (path, path / "adapter", path / "model"):
        rows = db.query("SELECT * FROM adapters WHERE path = ?", (str(candidate),))
        if rows:
            return rows[0]
    raise ModelError(f"no adapter '{text}' in the library: it may have been deleted; give the name, id or "
                     f"folder of one that is there", field="adapter")


def adapter_dir(ref: str | os.PathLike) -> Path:
    """The folder of a library entry, or any adapter folder given by path (registered or not)."""
    path = Path(os.path.expanduser(str(ref)))
    if path.is_absolute() or str(ref).startswith("."):
        path_policy.check(path, "adapter")      # a folder, not a name: only what the server allows
    if path.is_dir() and ((path / "adapter_config.json").is_file() or (path / "config.json").is_file()):
        return path.absolute()
    return Path(_row(ref)["path"])


def info_for(row: dict) -> AdapterInfo:
    """What the library shows of one adapter. Its JSON files may come from anywhere (an imported
    zip): a value of the wrong type is shown as missing, never fatal to the listing."""
    path = Path(row["path"])
    meta = _mapping(read_json(path / "workbench.json"))
    acfg = read_json(path / "adapter_config.json")
    has_config = (path / "adapter_config.json").is_file()
    cfg, metrics = _mapping(acfg), _mapping(meta.get("metrics"))
    size = folder_size(path)
    return AdapterInfo(
        id=row["id"], name=row["name"], base_model=row["base_model"] or _config_base(cfg),
        method=row["method"], source=row["source"], path=str(path),
        kind="adapter" if has_config else "model",                 # even one whose config cannot be read
        run_id=row["run_id"], rank=_number(cfg.get("r")), alpha=_number(cfg.get("lora_alpha")),
        target_modules=short_targets(cfg.get("target_modules")),
        datasets=[str(d) for d in _items(meta.get("datasets"))], steps=_number(metrics.get("steps")),
        train_loss=_number(metrics.get("train_loss")), eval_loss=_number(metrics.get("eval_loss")),
        size_bytes=size, size=human_size(size),
        created=meta.get("created") if isinstance(meta.get("created"), str) else _iso(row["created_at"]),
        parents=[p for p in _items(meta.get("parents")) if isinstance(p, dict)],
        problem="adapter_config.json cannot be read" if has_config and not isinstance(acfg, dict) else "")


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _items(value) -> list:
    return value if isinstance(value, list) else []


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _config_base(acfg: dict | None) -> str:
    return str((acfg or {}).get("base_model_name_or_path") or "")


def short_targets(targets) -> list[str]:
    """peft stores all-linear as full module paths; the table shows the layer names (q_proj, ...)."""
    if not targets:
        return []
    if isinstance(targets, str):
        return [targets]
    return sorted({str(t).rsplit(".", 1)[-1] for t in _items(targets)})


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def detail(ref: str | os.PathLike) -> AdapterDetail:
    info = get(ref)
    path = Path(info.path)
    meta = read_json(path / "workbench.json") or {}
    config = read_json(path / ("adapter_config.json" if info.kind == "adapter" else "config.json")) or {}
    metrics = RunDir(path.parent).read_metrics() if info.source == "trained" else []
    memory = dict(meta.get("memory") or {})
    estimate = memory.pop("estimate", None)
    return AdapterDetail(info=info, adapter_config=config, run_config=meta.get("config"), metrics=metrics,
                         memory={"estimate": estimate, "measured": memory}, meta=meta)


# --- changes: a folder and its row move together -------------------------------------------------

def check_name_free(name: str, *, field: str = "name") -> str:
    name = validate_name(name, field=field)
    if db.query("SELECT 1 FROM adapters WHERE name = ?", (name,)) or (adapters_dir() / name).exists():
        raise ConfigError(f"an adapter named '{name}' already exists; choose another name", field=field)
    return name


def unique_name(text: str) -> str:
    """A free name made from any text: 'my adapter' -> 'my-adapter', then 'my-adapter-2', ..."""
    sync()
    base = slug(text)
    taken = {r["name"] for r in db.query("SELECT name FROM adapters")}
    name, n = base, 2
    while name in taken or (adapters_dir() / name).exists():
        name, n = f"{base[:58]}-{n}", n + 1
    return name


def install(staged: Path, name: str, meta: dict) -> AdapterInfo:
    """Move a completely written adapter folder into adapters/<name>/ and register it, as one step:
    the row is committed only if the folder is in place, and the folder moves back if the commit fails."""
    from core.workspace import atomic_write_json, shared_mode

    name = validate_name(name)
    source = meta.get("source", "imported")
    meta = {**meta, "id": meta.get("id") or new_id(source)}
    atomic_write_json(staged / "workbench.json", meta)
    shared_mode(staged)
    target = adapters_dir() / name
    moved = False
    try:
        with db.transaction() as conn:
            if conn.execute("SELECT 1 FROM adapters WHERE name = ?", (name,)).fetchone() or target.exists():
                raise ConfigError(f"an adapter named '{name}' already exists; choose another name", field="name")
            conn.execute("INSERT INTO adapters (id, name, path, base_model, method, source, run_id, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, NULL, ?)", (meta["id"], name, str(target.absolute()),
                                                                meta.get("base_model", ""), meta.get("method", "lora"),
                                                                source, time.time()))
            os.rename(staged, target)
            moved = True
    except BaseException:
        if moved:
            os.rename(target, staged)
        raise
    return get(meta["id"])


def rename(ref: str | os.PathLike, new_name: str) -> AdapterInfo:
    """Give an adapter a new unique name; imported and mixed adapters' folders follow the name."""
    row = _row(ref)
    new_name = validate_name(new_name)
    if new_name == row["name"]:
        return info_for(row)
    old = Path(row["path"])
    new = old.with_name(new_name) if row["source"] != "trained" else old
    moved = False
    try:
        with db.transaction() as conn:
            if conn.execute("SELECT 1 FROM adapters WHERE name = ? AND id != ?", (new_name, row["id"])).fetchone() \
                    or (new != old and new.exists()):
                raise ConfigError(f"an adapter named '{new_name}' already exists; choose another name", field="name")
            conn.execute("UPDATE adapters SET name = ?, path = ? WHERE id = ?", (new_name, str(new), row["id"]))
            if new != old:
                os.rename(old, new)
                moved = True
    except BaseException:
        if moved:
            os.rename(new, old)
        raise
    return get(row["id"])


def delete(ref: str | os.PathLike) -> None:
    """Remove an adapter. Its folder is first renamed to a hidden trash name, then the row is deleted;
    only once that is committed do the files go. A failure before the commit puts the folder back."""
    row = _row(ref)
    folder = Path(row["path"])
    trash = folder.with_name(f".{folder.name}{TRASH_MARK}{secrets.token_hex(4)}")
    try:
        with db.transaction() as conn:
            if folder.exists():
                os.rename(folder, trash)
            conn.execute("DELETE FROM adapters WHERE id = ?", (row["id"],))
    except BaseException as e:
        if trash.exists() and not folder.exists():      # a sync() may have put it back already
            os.rename(trash, folder)
        if isinstance(e, sqlite3.Error):
            raise WorkbenchError(f"cannot delete adapter '{row['name']}': the workspace database refused "
                                 f"({e}); nothing was removed", field="adapter") from e
        raise
    remove_tree(trash)


def remove_tree(path: Path) -> None:
    """Files whose row is gone; what cannot be removed now is cleared by a later sync()."""
    shutil.rmtree(path, ignore_errors=True)
