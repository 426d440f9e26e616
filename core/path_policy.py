"""Which folders a typed path may name.

Unrestricted by default: at the command line, or in a UI on 127.0.0.1, the person typing owns the
machine. A UI served to other machines (`--host 0.0.0.0`, `--share`) restricts typed paths to the
workspace, the shipped presets, gradio's upload folder and the folders its operator allows, so a
visitor cannot make the server read its other files (a model folder, a dataset, an adapter to
import) by typing their path. Links are followed before the check, so one cannot lead outside.
"""
from __future__ import annotations

import os
from pathlib import Path

from core.errors import ConfigError

_roots: list[Path] | None = None


def restrict(roots: list[str | os.PathLike]) -> None:
    global _roots
    _roots = [Path(r).expanduser().resolve() for r in roots]


def unrestrict() -> None:
    global _roots
    _roots = None


def roots() -> list[Path] | None:
    return None if _roots is None else list(_roots)


def allows(path: str | os.PathLike) -> bool:
    """Whether `check` lets the path through: lists leave out what picking would refuse."""
    try:
        check(path)
    except ConfigError:
        return False
    return True


def check(path: str | os.PathLike, field: str | None = None) -> None:
    """Refuse a path outside the allowed folders (when restricted), naming the field it was typed in.
    A name that is not a path here (a hub id, a saved dataset's name) is left alone; any absolute or
    dotted path is checked whether it exists or not, so the answer tells nothing of what is there."""
    if _roots is None:
        return
    given = Path(os.path.expanduser(str(path)))
    try:
        if not (given.is_absolute() or str(path).startswith(".") or given.exists()):
            return
        real = given.resolve()
    except (OSError, ValueError):       # a NUL byte, a loop of links: no path to allow
        real = None
    if real is not None and any(real == r or real.is_relative_to(r) for r in _roots):
        return
    raise ConfigError(f"'{path}' is outside the folders this server lets its visitors name "
                      f"({', '.join(str(r) for r in _roots)})", field=field,
                      hint="put the file in the workspace, upload it, or ask the server's operator to start it "
                           "with --allow-path")
