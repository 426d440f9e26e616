"""Run presets: the YAML files shipped in presets/ plus the ones a user saves in the workspace."""
from __future__ import annotations

import re
from pathlib import Path

from core.config import RunConfig
from core.errors import ConfigError
from core.workspace import home

SHIPPED = Path(__file__).resolve().parent.parent / "presets"
DEFAULT_PRESET = "demo"


def user_dir() -> Path:
    return home() / "presets"


def available() -> dict[str, Path]:
    """Preset name -> file; a user's preset of the same name wins over a shipped one."""
    found = {p.stem: p for p in sorted(SHIPPED.glob("*.yaml"))}
    if user_dir().is_dir():
        found.update({p.stem: p for p in sorted(user_dir().glob("*.yaml"))})
    return found


def load(name: str) -> RunConfig:
    path = available().get(name)
    if path is None:
        raise ConfigError(f"no preset named '{name}'", field="preset")
    cfg = RunConfig.load(path)
    _anchor_paths(cfg, path.parent)
    return cfg


def _anchor_paths(cfg: RunConfig, folder: Path) -> None:
    """Shipped presets name their data relative to the repository; make that work from any folder."""
    root = SHIPPED.parent
    for spec in cfg.datasets:
        p = Path(spec.path)
        if not p.is_absolute() and not p.exists() and (root / p).exists():
            spec.path = str(root / p)


def safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")[:60]
    if not cleaned:
        raise ConfigError("give the preset a name (letters, digits, - _ .)", field="preset")
    return cleaned


def save(name: str, cfg: RunConfig) -> Path:
    """Save under the user's presets; the shipped ones (the demo the page opens on) keep their names."""
    name = safe_name(name)
    if (SHIPPED / f"{name}.yaml").is_file():
        raise ConfigError(f"'{name}' is a preset that comes with the workbench; save yours under another name",
                          field="preset")
    path = user_dir() / f"{name}.yaml"
    saved = RunConfig.from_dict(cfg.to_dict())
    saved.output_dir = ""
    saved.save(path)
    return path
