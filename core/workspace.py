"""Where the workbench keeps its files, and how files that others read are written."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

DEFAULT_HOME = "workspace"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# What a new file or folder gets, as the umask allows. Temp files (mkstemp) and safetensors' own
# writer use 0600 whatever the umask: an adapter written so could not be read by a serving engine
# run as another user, or by the host user of a Docker volume. Read once, while only one thread runs.
UMASK = _umask()
FILE_MODE = 0o666 & ~UMASK
FOLDER_MODE = 0o777 & ~UMASK


def home() -> Path:
    """The workspace folder: $WORKBENCH_HOME, else ./workspace."""
    return Path(os.environ.get("WORKBENCH_HOME") or DEFAULT_HOME).absolute()


def set_home(path: str | os.PathLike) -> Path:
    os.environ["WORKBENCH_HOME"] = str(Path(path).absolute())
    return home()


def home_problem() -> str | None:
    """Why the workspace cannot be used, before anything is read from it (None: it can)."""
    if home().exists() and not home().is_dir():
        return f"the workspace {home()} is a file, not a folder"
    return None


def models_dir() -> Path:
    """Converted and cached models; $WORKBENCH_MODELS lets several workspaces share one cache."""
    return Path(os.environ.get("WORKBENCH_MODELS") or home() / "models").absolute()


def runs_dir() -> Path:
    return home() / "runs"


def datasets_dir() -> Path:
    return home() / "datasets"


def exports_dir() -> Path:
    return home() / "exports"


def atomic_write_text(path: str | os.PathLike, text: str, make_parents: bool = True) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file.
    Without make_parents, a missing folder is a FileNotFoundError."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def shared_mode(path: str | os.PathLike) -> None:
    """Give a file, or a folder and all it holds, the modes the umask allows (see FILE_MODE)."""
    path = Path(path)
    if path.is_file():
        path.chmod(FILE_MODE)
        return
    path.chmod(FOLDER_MODE)
    for folder, dirs, files in os.walk(path):
        for name, mode in [(d, FOLDER_MODE) for d in dirs] + [(f, FILE_MODE) for f in files]:
            if not os.path.islink(os.path.join(folder, name)):      # never the file a link points to
                os.chmod(os.path.join(folder, name), mode)


def atomic_write_json(path: str | os.PathLike, obj, make_parents: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", make_parents)


def read_json(path: str | os.PathLike, default=None):
    """Read a JSON file; a missing or corrupt file gives `default` instead of an exception."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
