"""Merged full models in exports/: listed beside the library's adapters, chatted with, deleted.

A merge writes a hidden folder and renames it into place (core/adapter_merge.py), so a folder whose
name starts with a dot is a merge still being written, or the leftover of one that died."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from core import library
from core.errors import WorkbenchError
from core.workspace import exports_dir, read_json


@dataclass(frozen=True)
class Export:
    name: str
    path: str
    base_model: str         # what the merged adapter was trained on
    adapter: str            # the adapter's name in the library at the time of the merge
    size: str
    created: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def folders() -> list[Path]:
    """Full model folders in exports/, newest first."""
    folder = exports_dir()
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir()
             if p.is_dir() and not p.name.startswith(".") and (p / "config.json").is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def list_exports() -> list[Export]:
    return [_export(p) for p in folders()]


def _export(path: Path) -> Export:
    meta = read_json(path / "workbench.json")
    meta = meta if isinstance(meta, dict) else {}
    text = lambda key: meta[key] if isinstance(meta.get(key), str) else ""
    return Export(name=path.name, path=str(path), base_model=text("base_model"),
                  adapter=text("adapter_name") or _folder_name(text("adapter")), size=library.human_size(library.folder_size(path)),
                  created=text("created").replace("T", " ")[:16])


def _folder_name(adapter: str) -> str:
    """An export made before the adapter's name was recorded: a trained run's adapter folder is named
    'adapter' (or 'model'), so its run folder names it."""
    path = Path(adapter)
    return path.parent.name if path.name in ("adapter", "model") else path.name


def get(name: str) -> Export:
    """One export by its folder name; anything else (a path, another folder) is not one."""
    path = exports_dir() / name
    if not name or name != Path(name).name or name.startswith(".") or path not in folders():
        raise WorkbenchError(f"no merged model '{name}' in exports/", field="export")
    return _export(path)


def delete(name: str) -> None:
    """Rename the folder out of the listing first, so a reader never sees it half removed."""
    path = Path(get(name).path)
    trash = path.with_name(f".{path.name}.deleting-{secrets.token_hex(4)}")
    try:
        os.rename(path, trash)
    except OSError as e:
        raise WorkbenchError(f"cannot delete exports/{name}: {e}", field="export") from None
    library.remove_tree(trash)
