"""LLaMA-Factory data folders: their dataset_info.json names each dataset's file (or hub id) and
how to read it (formatting alpaca/sharegpt, ranking for preference pairs, columns, tags). Each
entry is translated into one of our formats and a column mapping, so the files are used as they
are: checked, or saved in the dataset library.

The description format is documented in LLaMA-Factory's data/README.md.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core import dataset_library as lib
from core import path_policy
from core.data import FileCheck, check_files
from core.errors import DataError, WorkbenchError
from core.formats import ROLE_TAGS
from core.readers import EXTENSIONS

INFO_FILE = "dataset_info.json"
MEDIA_COLUMNS = ("images", "videos", "audios")


@dataclass
class Entry:
    name: str
    format: str | None = None
    columns: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)   # local data files
    hub: dict | None = None                          # repo_id, subset, split, data_dir
    error: str | None = None                         # why this entry cannot be used here

    def to_dict(self) -> dict:
        return asdict(self)


def read_dataset_info(folder: str | Path) -> list[Entry]:
    """Every entry of a folder's dataset_info.json (or of that file itself), translated."""
    path = Path(folder).expanduser()
    path_policy.check(path, "folder")
    info = path if path.is_file() else path / INFO_FILE
    if not info.is_file():
        raise DataError(f"no {INFO_FILE} here; pick the data folder of LLaMA-Factory", file=str(path))
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError("the text is not UTF-8", file=str(info)) from None
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON: {e.msg}", file=str(info), line=e.lineno) from None
    if not isinstance(data, dict):
        raise DataError("expected an object mapping dataset names to descriptions", file=str(info), line=1)
    return [translate(str(name), spec, info.parent) for name, spec in data.items()]


def translate(name: str, spec, folder: Path) -> Entry:
    """One dataset description -> our format, column mapping and source."""
    entry = Entry(name)
    if not isinstance(spec, dict):
        entry.error = "the description should be an object"
        return entry
    cols, tags = spec.get("columns") or {}, spec.get("tags") or {}
    if not isinstance(cols, dict) or not isinstance(tags, dict):
        entry.error = "'columns' and 'tags' should be objects"
        return entry
    entry.error = _unsupported(cols)
    if entry.error is None:
        try:
            entry.format, entry.columns = _mapping(spec.get("formatting", "alpaca"), bool(spec.get("ranking")),
                                                   cols, tags)
        except ValueError as e:
            entry.error = str(e)
    if entry.error is None:
        entry.error = _source(entry, spec, folder)
    return entry


def _unsupported(cols: dict) -> str | None:
    media = [c for c in MEDIA_COLUMNS if cols.get(c)]
    if media:
        return f"has {', '.join(media)}: multimodal data is not supported (text models only)"
    if cols.get("kto_tag"):
        return "KTO data (a good/bad label per reply) is not supported for supervised training"
    return None


def _mapping(formatting: str, ranking: bool, cols: dict, tags: dict) -> tuple[str, dict]:
    if formatting == "sharegpt":
        m = {"messages": cols.get("messages", "conversations"), "role": tags.get("role_tag", "from"),
             "content": tags.get("content_tag", "value")}
        m.update({k: cols[k] for k in ("system", "tools") if cols.get(k)})
        m.update({k: tags[k] for k in ROLE_TAGS if tags.get(k)})
        if ranking:
            return "preference", {**m, "chosen": cols.get("chosen", "chosen"),
                                  "rejected": cols.get("rejected", "rejected")}
        return "sharegpt", m
    if formatting != "alpaca":
        raise ValueError(f"unknown formatting '{formatting}' (LLaMA-Factory knows alpaca and sharegpt)")
    extra = {k: cols[k] for k in ("system", "history") if cols.get(k)}
    if ranking:
        return "preference", {"prompt": cols.get("prompt", "instruction"), "input": cols.get("query", "input"),
                              "chosen": cols.get("chosen", "chosen"), "rejected": cols.get("rejected", "rejected"),
                              **extra}
    if set(cols) == {"prompt"}:     # pre-training: only the prompt column is learned
        return "text", {"text": cols["prompt"]}
    return "alpaca", {"instruction": cols.get("prompt", "instruction"), "input": cols.get("query", "input"),
                      "output": cols.get("response", "output"), **extra}


def _source(entry: Entry, spec: dict, folder: Path) -> str | None:
    """Where the data is, in LLaMA-Factory's order: the Hugging Face Hub, then a local file."""
    if spec.get("hf_hub_url"):
        entry.hub = {"repo_id": spec["hf_hub_url"], "subset": spec.get("subset"),
                     "split": spec.get("split", "train"), "data_dir": spec.get("folder")}
        return None
    if spec.get("file_name"):
        try:
            entry.files = _local_files(folder, str(spec["file_name"]))
        except DataError as e:
            return e.message
        return None
    if spec.get("script_url"):
        return f"loads its data with a script ('{spec['script_url']}'); scripts are not run, save the data as a file"
    if spec.get("ms_hub_url") or spec.get("om_hub_url"):
        return "is only on the ModelScope / Modelers hub, which is not supported; download it as a file"
    return "names neither a file_name nor an hf_hub_url"


def _local_files(folder: Path, file_name: str) -> list[str]:
    root = folder.resolve()
    target = (root / file_name).resolve()
    if not target.is_relative_to(root):
        raise DataError(f"file_name '{file_name}' points outside the folder")
    if target.is_dir():
        files = sorted(str(p) for p in target.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not files:
            raise DataError(f"folder '{file_name}' holds no data files ({', '.join(EXTENSIONS)})")
        return files
    if not target.is_file():
        raise DataError(f"file '{file_name}' is not in the folder")
    return [str(target)]


@dataclass
class EntryCheck:
    entry: Entry
    checks: list[FileCheck] = field(default_factory=list)

    @property
    def status(self) -> str:
        """ok, unusable (a file cannot be used), error (the entry cannot be used), hub (checked on import)."""
        if self.entry.error:
            return "error"
        if self.entry.hub:
            return "hub"
        return "ok" if all(c.usable for c in self.checks) else "unusable"

    def to_dict(self) -> dict:
        return {"entry": self.entry.to_dict(), "status": self.status, "checks": [c.to_dict() for c in self.checks]}


def _select(entries: list[Entry], names: list[str] | None) -> list[Entry]:
    if not names:
        return entries
    known = {e.name: e for e in entries}
    missing = [n for n in names if n not in known]
    if missing:
        raise DataError(f"no entry {', '.join(map(repr, missing))} in {INFO_FILE}", field="names")
    return [known[n] for n in names]


def check_llamafactory(folder: str | Path, names: list[str] | None = None,
                       max_mb: float | None = None) -> list[EntryCheck]:
    """Check the local files of every entry (or of the named ones) with the entry's mapping."""
    out = []
    for entry in _select(read_dataset_info(folder), names):
        checks = [] if entry.error or entry.hub else check_files(
            entry.files, entry.format, entry.columns, names=[Path(f).name for f in entry.files], max_mb=max_mb)
        out.append(EntryCheck(entry, checks))
    return out


@dataclass
class ImportResult:
    entry: str
    name: str | None = None                  # the saved dataset
    error: dict | None = None                # WorkbenchError.to_dict() when the entry was not saved

    def to_dict(self) -> dict:
        return asdict(self)


def import_llamafactory(folder: str | Path, names: list[str] | None = None, prefix: str = "", tokenizer=None,
                        max_mb: float | None = None) -> list[ImportResult]:
    """Save every entry (or the named ones) as a dataset named prefix + entry name. One entry
    failing (hub offline, a bad file, a name taken) does not stop the others."""
    results = []
    for entry in _select(read_dataset_info(folder), names):
        result = ImportResult(entry.name)
        try:
            if entry.error:
                raise DataError(entry.error, field=entry.name)
            source = f"llamafactory:{entry.name}"
            name = lib.clean_dataset_name(prefix + entry.name)    # catalogue names may hold '/' or spaces
            if entry.hub:
                info = lib.import_hub_dataset(name, **entry.hub, format=entry.format,
                                              columns=entry.columns, tokenizer=tokenizer, max_mb=max_mb)
            else:
                info = lib.save_dataset(name, entry.files, format=entry.format, columns=entry.columns,
                                        tokenizer=tokenizer, source=source, max_mb=max_mb)
            result.name = info.name
        except WorkbenchError as e:
            result.error = e.to_dict()
        results.append(result)
    return results
