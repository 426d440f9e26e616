"""Errors are values: each says what is wrong and where (field, file, line)."""
from __future__ import annotations


ERROR_AS_JSON = "WORKBENCH_ERROR_JSON"     # set: the command line adds an ERROR_JSON line
ERROR_JSON = "error-json: "              # the prefix of that line, before WorkbenchError.to_dict()


class WorkbenchError(Exception):
    """A problem the user can fix. Rendered as one clear line by the CLI and the UI."""

    def __init__(self, message: str, *, field: str | None = None, file: str | None = None,
                 line: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.file = file
        self.line = line
        self.hint = hint

    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(f"{self.file}:{self.line}" if self.line else str(self.file))
        elif self.line:
            parts.append(f"line {self.line}")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ", ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        text = f"{where}: {self.message}" if where else self.message
        return f"{text} ({self.hint})" if self.hint else text

    def to_dict(self) -> dict:
        return {"message": self.message, "field": self.field, "file": self.file,
                "line": self.line, "hint": self.hint}

    @classmethod
    def from_dict(cls, data) -> "WorkbenchError | None":
        """The error to_dict() wrote (another process's, a run's status), or None for anything else."""
        if not isinstance(data, dict) or not data.get("message"):
            return None
        try:
            return cls(**data)
        except TypeError:                   # keys this version does not know
            return None


class ConfigError(WorkbenchError):
    """A RunConfig field is unknown, of the wrong type or out of bounds."""


class DataError(WorkbenchError):
    """A dataset file cannot be read or has no usable rows."""


class ModelError(WorkbenchError):
    """A model cannot be found or loaded."""
