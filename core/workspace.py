"""Where the workbench keeps its files, and how files that others read are written."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

DEFAULT_HOME = "workspace"


def home() -> Path:
    """The workspace folder: $WORKBENCH_HOME, else ./workspace."""
    return Path(os.environ.get("WORKBENCH_HOME") or DEFAULT_HOME).absolute()


def set_home(path: str | os.PathLike) -> Path:
    os.environ["WORKBENCH_HOME"] = str(Path(path).absolute())
    return home()


def models_dir() -> Path:
    """Converted and cached models; $WORKBENCH_MODELS lets several workspaces share one cache."""
    return Path(os.environ.get("WORKBENCH_MODELS") or home() / "models").absolute()


def runs_dir() -> Path:
    return home() / "runs"


def datasets_dir() -> Path:
    return home() / "datasets"


def exports_dir() -> Path:
    return home() / "exports"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | os.PathLike, default=None):
    """Read a JSON file; a missing or corrupt file gives `default` instead of an exception."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
