"""Adapters in and out of the library: import a PEFT adapter from a folder or a zip, export one as a zip.

An import is checked completely in a hidden work folder inside adapters/, then moved into place
and registered in one step (library.install); whatever fails, the work folder goes and nothing
half-imported stays behind.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath

from core import library, path_policy
from core.adapter_check import CONFIG, WEIGHTS, check_adapter, find_root
from core.errors import ModelError
from core.workspace import FILE_MODE, exports_dir, read_json

# Files an adapter folder may carry besides its weights: configs, tokenizer, chat template, model card.
KEPT_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".md")
CARRIED_META = ("method", "datasets", "config", "metrics", "memory", "created")


def import_adapter(source: str | os.PathLike, *, name: str | None = None,
                   base_model: str | None = None) -> library.AdapterInfo:
    """Check a PEFT adapter (folder or .zip) and add it to the library as adapters/<name>/."""
    source = Path(os.path.expanduser(str(source))).absolute()
    path_policy.check(source, "source")
    if not source.exists():
        raise ModelError(f"'{source}' does not exist", field="source")
    name = library.check_name_free(name) if name else _default_name(source)
    library.adapters_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".import-", dir=library.adapters_dir()))
    try:
        folder = safe_extract(source, work / "unzipped") if source.is_file() else source
        try:
            checked = check_adapter(find_root(folder), base_model)
        except ModelError as e:
            raise _named_by(e, folder, source) if folder != source else e from None
        staged = work / "staged"
        copy_adapter_files(checked.root, staged)
        foreign = read_json(checked.root / "workbench.json") or {}
        meta = {k: foreign[k] for k in CARRIED_META if k in foreign}
        meta.update(source="imported", base_model=checked.base_model, method=meta.get("method", "lora"),
                    imported_from=str(source), imported=time.strftime("%Y-%m-%dT%H:%M:%S"))
        meta.setdefault("created", meta["imported"])
        return library.install(staged, name, meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _named_by(e: ModelError, unzipped: Path, archive: Path) -> ModelError:
    """The same error with the zip's own name where it named the temporary folder it was unpacked to."""
    def named(text):
        return text.replace(str(unzipped), archive.name) if text else text
    return ModelError(named(e.message), field=e.field, file=named(e.file), line=e.line, hint=e.hint)


def _default_name(source: Path) -> str:
    stem = source.parent.name if source.name in ("adapter", "model") else source.name
    return library.unique_name(re.sub(r"\.zip$", "", stem, flags=re.I))


def check_zip_members(zf: zipfile.ZipFile, where: str) -> None:
    """Refuse, before anything is extracted, a member that would land outside the target folder:
    an absolute path, a drive letter, a '..' step, or a symbolic link."""
    for info in zf.infolist():
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise ModelError(f"zip member '{name}' points outside its folder; the zip was refused and nothing "
                             f"was extracted", file=where)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ModelError(f"zip member '{name}' is a symbolic link; the zip was refused and nothing was "
                             f"extracted", file=where)


def safe_extract(archive: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(archive) as zf:
            check_zip_members(zf, str(archive))
            needed = sum(i.file_size for i in zf.infolist())
            free = shutil.disk_usage(dest.parent).free
            if needed > free:
                raise ModelError(f"the zip unpacks to {library.human_size(needed)}, more than the "
                                 f"{library.human_size(free)} free on disk", file=str(archive))
            zf.extractall(dest)
    except zipfile.BadZipFile as e:
        raise ModelError(f"not a readable zip file ({e}); give a .zip or an adapter folder", file=str(archive)) \
            from None
    return dest


def copy_adapter_files(root: Path, dest: Path) -> None:
    """Copy the weights and the small text files; never pickles, links or subfolders."""
    dest.mkdir(parents=True)
    for path in root.iterdir():
        keep = path.name == WEIGHTS or (path.suffix.lower() in KEPT_SUFFIXES and path.name != "workbench.json")
        if keep and path.is_file() and not path.is_symlink():
            shutil.copy2(path, dest / path.name)
    if not (dest / CONFIG).is_file() or not (dest / WEIGHTS).is_file():
        raise ModelError(f"could not copy the adapter from '{root}'", file=str(root))


def export_zip(ref: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Zip an adapter (or a full model) as <name>/..., written atomically to exports/<name>.zip."""
    info = library.get(ref)
    folder = Path(info.path)
    out_dir = Path(out_dir) if out_dir else exports_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{info.name}.zip"
    fd, tmp = tempfile.mkstemp(prefix=f".{info.name}.", suffix=".zip.tmp", dir=out_dir)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w") as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    # safetensors barely compress; storing them keeps big exports fast
                    method = zipfile.ZIP_STORED if path.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
                    zf.write(path, f"{info.name}/{path.relative_to(folder).as_posix()}", compress_type=method)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
