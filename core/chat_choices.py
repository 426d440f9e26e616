"""What the chat can talk to: base models (the embedded one, the bases the library's adapters were
trained on, fully trained models, merged exports) and the library's adapters."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core import library, path_policy
from core.config import EMBEDDED_MODEL
from core.workspace import exports_dir


@dataclass(frozen=True)
class Base:
    label: str
    value: str          # what the chat loads: a model id or a folder


Entries = list[library.AdapterInfo]


def bases(entries: Entries | None = None) -> list[Base]:
    """Each model once, the embedded one first; folders are named by their own name and where they are.
    `entries`: the library's listing when the caller has it (each listing syncs the catalogue)."""
    entries = library.list_adapters() if entries is None else entries
    found = [Base(EMBEDDED_MODEL, EMBEDDED_MODEL)]
    found += [Base(b, b) for b in sorted({a.base_model for a in entries if a.base_model})]
    found += [Base(f"{a.name} · {a.method} · library", a.path) for a in entries if a.kind == "model"]
    found += [Base(f"{p.name} · merged · exports", str(p)) for p in merged_exports()]
    seen, unique = set(), []
    for base in found:
        if base.value not in seen and path_policy.allows(base.value):
            seen.add(base.value)
            unique.append(base)
    return unique


def merged_exports() -> list[Path]:
    """Full model folders in exports/, newest first; hidden ones are merges still being written."""
    folder = exports_dir()
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir()
             if p.is_dir() and not p.name.startswith(".") and (p / "config.json").is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def adapters(entries: Entries | None = None) -> Entries:
    """The library's PEFT adapters, newest first."""
    return [a for a in (library.list_adapters() if entries is None else entries) if a.kind == "adapter"]


def newest_adapter(entries: Entries | None = None) -> library.AdapterInfo | None:
    rows = adapters(entries)
    return max(rows, key=lambda a: a.created) if rows else None


def trained_in(run_dir: str | Path) -> library.AdapterInfo | None:
    """What a finished run left in the library: its adapter, or its model for full and freeze tuning."""
    root = Path(run_dir).absolute()
    return next((a for a in library.list_adapters() if Path(a.path).parent == root), None)
