"""What the chat can talk to: base models (the embedded one, the bases the library's adapters were
trained on, fully trained models, merged exports), the library's adapters, and the newest checkpoint
of each run that stopped or failed before it left an adapter."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core import exports, jobs, library, path_policy
from core.config import EMBEDDED_MODEL
from core.errors import ModelError, WorkbenchError


LABELS = {"library": "{name} · {note} · library", "checkpoint": "{name} · step {note} · checkpoint",
          "merged": "{name} · merged · exports"}      # the webui's i18n table holds these in each language


@dataclass(frozen=True)
class Base:
    value: str          # what the chat loads: a model id or a folder
    kind: str = ""      # "" a model by its id; "library", "checkpoint" or "merged": a folder, by `name`
    name: str = ""
    note: str = ""      # a library model's method; a checkpoint's step

    @property
    def label(self) -> str:
        return LABELS[self.kind].format(name=self.name, note=self.note) if self.kind else self.value


Entries = list[library.AdapterInfo]


def bases(entries: Entries | None = None, checkpoints: list[Checkpoint] = ()) -> list[Base]:
    """Each model once, the embedded one first; folders are named by their own name and where they are.
    `entries`: the library's listing when the caller has it (each listing syncs the catalogue);
    `checkpoints`: runs' checkpoints to offer too (their bases, and the models of full runs)."""
    entries = library.list_adapters() if entries is None else entries
    found = [Base(EMBEDDED_MODEL)]
    found += [Base(b) for b in sorted({a.base_model for a in entries if a.base_model}
                                      | {c.base_model for c in checkpoints if c.is_adapter})]
    found += [Base(a.path, "library", a.name, a.method) for a in entries if a.kind == "model"]
    found += [Base(str(c.path), "checkpoint", c.run_name, str(c.step)) for c in checkpoints if not c.is_adapter]
    found += [Base(str(p), "merged", p.name) for p in exports.folders()]
    seen, unique = set(), []
    for base in found:
        if base.value not in seen and path_policy.allows(base.value):
            seen.add(base.value)
            unique.append(base)
    return unique


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


CHECKPOINT = "checkpoint:"


@dataclass(frozen=True)
class Checkpoint:
    """The newest checkpoint of a run that ended before its adapter (or model) was saved: an adapter
    for LoRA and QLoRA, a whole model for full and freeze tuning."""
    run_id: str
    run_name: str
    step: int
    path: Path
    base_model: str         # the model the run trained
    is_adapter: bool

    @property
    def value(self) -> str:
        """What a chat column names it by: the run and the step, so a resumed run never changes it."""
        return f"{CHECKPOINT}{self.run_id}/{self.step}" if self.is_adapter else str(self.path)

    @property
    def label(self) -> str:
        return LABELS["checkpoint"].format(name=self.run_name, note=self.step)


def checkpoint_of(job: jobs.Job) -> Checkpoint | None:
    """A stopped or failed run's newest checkpoint, if it holds something to chat with."""
    if job.state not in ("stopped", "failed"):
        return None
    path = job.dir.newest_checkpoint()
    if path is None or not path_policy.allows(str(path)):
        return None
    is_adapter = (path / "adapter_config.json").is_file()
    if not is_adapter and not (path / "config.json").is_file():
        return None
    return _made(job, path, is_adapter)


def _made(job: jobs.Job, path: Path, is_adapter: bool) -> Checkpoint:
    return Checkpoint(job.id, job.name or job.id, int(path.name.rsplit("-", 1)[1]), path.absolute(), job.model,
                      is_adapter)


def checkpoints() -> list[Checkpoint]:
    """Every stopped or failed run's newest checkpoint, newest run first."""
    return [c for c in map(checkpoint_of, jobs.list_jobs()) if c is not None]


def _checkpoint(value: str) -> Checkpoint:
    m = re.fullmatch(re.escape(CHECKPOINT) + r"([^/]+)/(\d+)", value)
    if m is None:
        raise WorkbenchError(f"'{value}' does not name a run's checkpoint", field="adapter")
    try:
        job = jobs.get(m.group(1))
    except WorkbenchError:
        raise WorkbenchError(f"the run of this checkpoint, '{m.group(1)}', was removed from the Runs list",
                             field="adapter") from None
    path = job.dir.checkpoints / f"checkpoint-{int(m.group(2))}"
    path_policy.check(str(path), field="adapter")
    if not (path / "adapter_config.json").is_file():
        raise WorkbenchError(f"run '{job.id}' no longer has its checkpoint of step {m.group(2)}; "
                             "it was resumed past it or deleted", field="adapter")
    return _made(job, path, True)


def checkpoint_named(value: str) -> Checkpoint | None:
    """The checkpoint an adapter pick names, if it names one that is still there."""
    try:
        return _checkpoint(value) if value.startswith(CHECKPOINT) else None
    except WorkbenchError:
        return None


def adapter_path(value: str) -> Path | None:
    """The folder a chat column's adapter pick loads: a library entry or a run's checkpoint."""
    if not value:
        return None
    if value.startswith(CHECKPOINT):
        return _checkpoint(value).path
    try:
        return library.adapter_dir(value)
    except ModelError:      # a pick holds the entry's id, which means nothing to the visitor
        raise ModelError("the adapter picked here is not in the library (deleted since the list was shown, or "
                         "mistyped); pick one from the list", field="adapter") from None


def adapter_base(value: str) -> str:
    """The base an adapter pick was trained on."""
    return _checkpoint(value).base_model if value.startswith(CHECKPOINT) else library.get(value).base_model


def of_run(job: jobs.Job) -> library.AdapterInfo | Checkpoint | None:
    """What a run leaves to chat with: its adapter or model in the library, else its newest checkpoint."""
    return trained_in(job.run_dir) or checkpoint_of(job)


def folder_of(target: library.AdapterInfo | Checkpoint) -> Path:
    return target.path if isinstance(target, Checkpoint) else Path(target.path)


def opening(target: library.AdapterInfo | Checkpoint | exports.Export | None) -> tuple[str, str]:
    """(base, adapter) that open the chat on a library entry, a checkpoint or a merged export: an
    adapter on its base, a whole model as the base itself; for none, the embedded model alone."""
    if target is None:
        return EMBEDDED_MODEL, ""
    if isinstance(target, exports.Export):
        return target.path, ""
    if isinstance(target, Checkpoint):
        return (target.base_model, target.value) if target.is_adapter else (str(target.path), "")
    return (target.base_model, target.id) if target.kind == "adapter" else (target.path, "")
