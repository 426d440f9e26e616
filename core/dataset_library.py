"""The dataset library: uploaded files saved as named datasets in <workspace>/datasets/<name>/
(the files, and a meta.json with format, column mapping, rows, tokens, created, source), each
with a row in the `datasets` table of the workspace database.

A training run names a saved dataset like a file (core.data.resolve_files reads meta.json's
`files`, `format`, `formats` and `columns`). A dataset folder only ever appears complete: files
are copied into a hidden temp folder in the same directory, which is renamed into place inside
the database transaction that records it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
import unicodedata
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from core import db
from core.data import FileCheck, check_files
from core.errors import DataError
from core.workspace import atomic_write_json, datasets_dir, read_json

NAME_MAX = 64
FILE_STEM_MAX = 100
STALE_S = 3600          # temp folders older than this were left by a crash and are swept away


@dataclass
class DatasetInfo:
    name: str
    format: str | None
    rows: int                      # rows read
    rows_usable: int
    tokens: int | None             # with the tokenizer named in `tokenizer`, when one was given
    files: list[str]
    columns: dict
    source: str
    created: str                   # ISO 8601, UTC
    path: str
    problems: int = 0
    tokenizer: str | None = None
    formats: dict = field(default_factory=dict)
    missing: bool = False          # in the database, but its folder is gone

    def to_dict(self) -> dict:
        return asdict(self)


def _clean(text: str, *, squeeze: bool = True) -> str:
    """Letters and digits of any script, '-', '_' and '.'; anything else becomes '_' (runs of '_'
    squeezed to one, unless asked not to)."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return re.sub(r"_{2,}", "_", text) if squeeze else text


def safe_filename(name: str) -> str:
    """An uploaded file's name, reduced to a plain name inside the dataset folder: no folders
    (`../../etc/passwd` becomes `passwd`), no hidden files, no odd characters."""
    base = re.split(r"[\\/]", str(name))[-1]
    stem, ext = os.path.splitext(base)
    stem = _clean(stem).strip("._-")[:FILE_STEM_MAX] or "data"
    ext = _clean(ext.lower()).strip("_")
    return stem + (ext if ext not in ("", ".") else "")


def clean_dataset_name(text: str) -> str:
    """A dataset name made from a file's or a catalogue entry's name; DataError when nothing usable is left."""
    clean = _clean(str(text).strip()).strip("._-")[:NAME_MAX].rstrip("._-")
    if not clean:
        raise DataError(f"'{text}' is not a usable dataset name; use letters, digits, '-', '_' or '.'",
                        field="name")
    return clean


def dataset_name(name: str) -> str:
    """A name the user typed, refused in words when it is not one a folder can safely hold (as adapter
    names are), rather than changed behind their back. Accents typed either way are stored as one."""
    name = unicodedata.normalize("NFC", str(name).strip())
    clean = clean_dataset_name(name)
    if _clean(name, squeeze=False).strip("._-") == name and len(name) <= NAME_MAX:
        return name
    if len(name) > NAME_MAX:
        raise DataError(f"dataset name '{name[:NAME_MAX]}...' is longer than {NAME_MAX} characters", field="name")
    odd = sorted({c for c in name if not (c.isalnum() or c in "-_.")})
    problem = (f"cannot hold {' or '.join(repr(c) for c in odd)}" if odd
               else "must start and end with a letter or digit")
    raise DataError(f"dataset name '{name}' {problem}; use letters, digits, '-', '_' or '.', e.g. '{clean}'",
                    field="name")


def _unique(names: list[str]) -> list[str]:
    seen, out = set(), []
    for n in names:
        stem, ext = os.path.splitext(n)
        candidate, k = n, 2
        while candidate.lower() in seen:
            candidate, k = f"{stem}-{k}{ext}", k + 1
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def save_dataset(name: str, files: list[str | Path], *, names: list[str] | None = None, format: str = "auto",
                 columns: dict | None = None, tokenizer=None, source: str = "upload",
                 max_mb: float | None = None) -> DatasetInfo:
    """Check the files and save them as one named dataset. `names` are the uploads' own file
    names (default: the paths' names). Raises DataError, leaving nothing behind, when the name is
    taken, a file cannot be read or has no usable rows."""
    name = dataset_name(name)
    _ensure_free(name)
    if not files:
        raise DataError("no files given", field="files")
    stored = _unique([safe_filename(n) for n in (names or [Path(f).name for f in files])])
    checks = check_files(files, format, columns, names=stored, max_mb=max_mb)
    _refuse_unusable(checks)
    meta = _meta(name, stored, checks, format, columns, tokenizer, source)
    root = datasets_dir()
    root.mkdir(parents=True, exist_ok=True)
    _sweep(root)
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for src, dst in zip(files, stored):
            shutil.copyfile(src, tmp / dst)
        atomic_write_json(tmp / "meta.json", meta)
        _publish(tmp, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return get_dataset(name)


def _refuse_unusable(checks: list[FileCheck]) -> None:
    for c in checks:
        if c.error:
            raise c.error
        if not c.usable:
            first = c.report.problems[0] if c.report.problems else None
            example = f" (e.g. line {first.line}: {first.message})" if first else ""
            raise DataError(f"no usable rows{example}", file=c.file)


def _meta(name: str, stored: list[str], checks: list[FileCheck], fmt: str, columns: dict | None,
          tokenizer, source: str) -> dict:
    reports = [c.report for c in checks]
    formats = {f: r.format for f, r in zip(stored, reports)}
    same = len(set(formats.values())) == 1
    meta = {"name": name, "files": stored, "format": reports[0].format if same else "auto", "formats": formats,
            "columns": dict(columns or {}), "rows": sum(r.rows_read for r in reports),
            "rows_usable": sum(r.rows_usable for r in reports), "problems": sum(len(r.problems) for r in reports),
            "tokens": None, "tokenizer": None,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "source": source}
    if tokenizer is not None:
        from core.preview import length_stats

        meta["tokens"] = sum(length_stats(r.samples, tokenizer, sys.maxsize).total_tokens for r in reports)
        meta["tokenizer"] = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    return meta


def _ensure_free(name: str, conn=None, *, allow: str | None = None) -> None:
    """Names are unique, ignoring case (folders on some systems ignore it too)."""
    if conn is not None:
        taken = [r["name"] for r in conn.execute("SELECT name FROM datasets").fetchall()]
    else:   # a check that fails creates no database in a fresh workspace
        taken = [r["name"] for r in db.query("SELECT name FROM datasets")] if db.db_path().exists() else []
    root = datasets_dir()
    if root.is_dir():
        taken += [p.name for p in root.iterdir() if not p.name.startswith(".")]
    if any(t.lower() == name.lower() and t != allow for t in taken):
        raise DataError(f"a dataset named '{name}' already exists; pick another name or delete it first",
                        field="name")


def _publish(tmp: Path, meta: dict) -> None:
    """Record the dataset and rename its folder into place, both or neither."""
    with db.transaction() as conn:
        _ensure_free(meta["name"], conn)
        conn.execute("INSERT INTO datasets (name, format, rows, tokens, files, columns, source, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (meta["name"], meta["format"], meta["rows"], meta["tokens"], json.dumps(meta["files"]),
                      json.dumps(meta["columns"]), meta["source"], time.time()))
        os.rename(tmp, datasets_dir() / meta["name"])


def _sweep(root: Path) -> None:
    now = time.time()
    for p in root.glob(".*-*"):
        if p.name.startswith((".tmp-", ".del-")) and p.is_dir() and now - p.stat().st_mtime > STALE_S:
            shutil.rmtree(p, ignore_errors=True)


def list_datasets() -> list[DatasetInfo]:
    """Every saved dataset, oldest first: the database rows, plus folders with a meta.json that
    the database does not know (copied in by hand)."""
    rows = {r["name"]: r for r in db.query("SELECT * FROM datasets ORDER BY created_at")} \
        if db.db_path().exists() else {}
    root = datasets_dir()
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []
    infos = [_info(n, rows[n]) for n in rows]
    infos += [_info(n, None) for n in folders if n not in rows and (root / n / "meta.json").is_file()]
    return infos


def _info(name: str, row: dict | None) -> DatasetInfo:
    folder = datasets_dir() / name
    meta = read_json(folder / "meta.json") or {}
    row = row or {}
    return DatasetInfo(
        name=name, format=meta.get("format", row.get("format")), rows=meta.get("rows", row.get("rows") or 0),
        rows_usable=meta.get("rows_usable", 0), tokens=meta.get("tokens", row.get("tokens")),
        files=meta.get("files") or json.loads(row.get("files") or "[]"),
        columns=meta.get("columns") or json.loads(row.get("columns") or "{}"),
        source=meta.get("source", row.get("source", "")), created=meta.get("created", ""), path=str(folder),
        problems=meta.get("problems", 0), tokenizer=meta.get("tokenizer"), formats=meta.get("formats") or {},
        missing=not folder.is_dir())


def get_dataset(name: str) -> DatasetInfo:
    for info in list_datasets():
        if info.name == name:
            return info
    raise DataError(f"no saved dataset named '{name}'", field="name")


def check_dataset(name: str) -> list[FileCheck]:
    """Check a saved dataset's files again, with its saved format and column mapping (the UI
    shows the report and previews the samples from this)."""
    info = get_dataset(name)
    folder = Path(info.path)
    return [c for f in info.files
            for c in check_files([folder / f], info.formats.get(f) or info.format or "auto", info.columns or None,
                                 names=[f], max_mb=float("inf"))]


def rename_dataset(old: str, new: str) -> DatasetInfo:
    info = get_dataset(old)
    new = dataset_name(new)
    if new == old:
        return info
    if info.missing:
        raise DataError(f"the folder of dataset '{old}' is gone; delete the dataset instead", field="name")
    src, dst = datasets_dir() / old, datasets_dir() / new
    with db.transaction() as conn:
        _ensure_free(new, conn, allow=old)
        conn.execute("UPDATE datasets SET name = ? WHERE name = ?", (new, old))
        os.rename(src, dst)
        try:
            atomic_write_json(dst / "meta.json", {**(read_json(dst / "meta.json") or {}), "name": new})
        except BaseException:
            os.rename(dst, src)
            raise
    return get_dataset(new)


def delete_dataset(name: str) -> None:
    """Forget the dataset and remove its folder (moved aside first, so no half-deleted dataset
    is ever visible). Refused while a queued or running run trains on it."""
    get_dataset(name)
    users = runs_using(name)
    if users:
        raise DataError(f"run {', '.join(users)} trains on '{name}'; delete it when the run has ended or been "
                        f"removed", field="name")
    folder = datasets_dir() / name
    trash = datasets_dir() / f".del-{name}-{uuid.uuid4().hex[:8]}"
    with db.transaction() as conn:
        conn.execute("DELETE FROM datasets WHERE name = ?", (name,))
        if folder.is_dir():
            os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def runs_using(name: str) -> list[str]:
    """Ids of the queued, starting or running runs whose config names the saved dataset `name`."""
    from core import jobs

    users = []
    for job in jobs.list_jobs():
        if job.state in ("queued", *jobs.ACTIVE):
            datasets = job.dir.read_config().get("datasets") or []
            paths = [d.get("path") if isinstance(d, dict) else d for d in datasets if isinstance(d, (dict, str))]
            if name in paths:
                users.append(job.id)
    return users


HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def fetch_hub_dataset(repo_id: str, subset: str | None = None, split: str = "train",
                      data_dir: str | None = None):
    """A `datasets.Dataset` from the Hugging Face Hub (or its local cache)."""
    import datasets

    # load_dataset reads a local folder of that name first: only a Hub id's shape may reach it.
    if not HUB_DATASET_ID.match(repo_id or "") or ".." in repo_id or Path(repo_id).exists():
        raise DataError(f"'{repo_id}' is not a Hugging Face Hub dataset id (owner/name, e.g. "
                        f"tatsu-lab/alpaca)", field="hub")
    try:
        return datasets.load_dataset(repo_id, subset or None, split=split or "train", data_dir=data_dir or None)
    except Exception as e:
        raise _hub_error(repo_id, e) from None


def _hub_error(repo_id: str, err: Exception) -> DataError:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, ConnectionError) or "offline" in text.lower() or "couldn't reach" in text.lower():
        return DataError(f"cannot reach the Hugging Face Hub to load '{repo_id}' (offline, or the Hub is down)",
                         field="hub", hint="upload the files instead")
    if type(err).__name__ == "DatasetNotFoundError":
        return DataError(f"no dataset '{repo_id}' on the Hugging Face Hub (or it is private or gated)", field="hub")
    return DataError(f"cannot load '{repo_id}' from the Hugging Face Hub: {text}", field="hub")


def import_hub_dataset(name: str, repo_id: str, subset: str | None = None, split: str = "train", *,
                       data_dir: str | None = None, format: str = "auto", columns: dict | None = None,
                       tokenizer=None, max_mb: float | None = None) -> DatasetInfo:
    """Load a hub dataset (id, subset, split) and save it in the library as one Parquet file."""
    _ensure_free(dataset_name(name))
    ds = fetch_hub_dataset(repo_id, subset, split, data_dir)
    source = f"hub:{repo_id}" + (f":{subset}" if subset else "") + f":{split or 'train'}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{safe_filename(repo_id.replace('/', '_'))}-{split or 'train'}.parquet"
        ds.to_parquet(str(path))
        return save_dataset(name, [path], format=format, columns=columns, tokenizer=tokenizer, source=source,
                            max_mb=max_mb)
