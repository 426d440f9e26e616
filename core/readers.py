"""Read data files into records, remembering the line (or row) each record came from.

The `datasets` loaders read these formats too, but their errors name neither the line nor the
problem in words a user can act on; this module fills that gap. Records are plain dicts.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import DataError

EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet", ".txt")


@dataclass
class Record:
    data: dict
    line: int                      # 1-based line in the file (row number for Parquet)
    problem: str | None = None     # set when the row could not be decoded at all


@dataclass
class FileRecords:
    file: str
    records: list[Record] = field(default_factory=list)


def read_records(path: str | Path, display_name: str | None = None) -> FileRecords:
    """Read one file. File-level problems raise DataError; row-level ones are kept on the record."""
    path = Path(path)
    name = display_name or str(path)
    if not path.is_file():
        raise DataError("file not found", file=name)
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise DataError(f"unsupported file type '{ext or 'none'}'; use one of {', '.join(EXTENSIONS)}", file=name)
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError("the file is empty", file=name)
    if ext == ".parquet":
        return FileRecords(name, _read_parquet(raw, name))
    if b"\x00" in raw[:8192]:
        raise DataError(f"this is a binary file, not {ext[1:].upper()} text", file=name, line=1)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    reader = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".txt": _read_txt}[ext]
    return FileRecords(name, reader(raw, name))


def _decode_whole(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError("the text is not UTF-8 (save the file as UTF-8)", file=name, line=line) from None


def _read_json(raw: bytes, name: str) -> list[Record]:
    text = _decode_whole(raw, name)
    stripped = text.lstrip()
    if stripped.startswith("{") and "\n{" in stripped.rstrip():
        try:
            return _read_jsonl(raw, name)
        except DataError:
            pass
    if not stripped.startswith("["):
        hint = "JSON Lines should be saved as .jsonl" if stripped.startswith("{") else None
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON: {e.msg}", file=name, line=e.lineno) from None
        raise DataError("expected a JSON list of objects ([{...}, {...}])", file=name, line=1, hint=hint)
    decoder = json.JSONDecoder()
    records: list[Record] = []
    pos = text.index("[") + 1
    while True:
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == "]":
            break
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON: {e.msg}", file=name, line=e.lineno) from None
        if not isinstance(value, dict):
            raise DataError(f"item {len(records) + 1} is a {type(value).__name__}, expected an object {{...}}",
                            file=name, line=line)
        records.append(Record(value, line))
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] == "]":
            break
        else:
            raise DataError("not valid JSON: expected ',' or ']' between items", file=name,
                            line=text.count("\n", 0, pos) + 1)
    if _skip_ws(text, pos + 1) < len(text):
        raise DataError("not valid JSON: extra data after the list", file=name,
                        line=text.count("\n", 0, pos + 1) + 1)
    return records


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_jsonl(raw: bytes, name: str) -> list[Record]:
    records = []
    for i, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if not line_bytes.strip():
            continue
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError:
            records.append(Record({}, i, "the text is not UTF-8"))
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON: {e.msg}", file=name, line=i) from None
        if not isinstance(value, dict):
            raise DataError(f"line holds a {type(value).__name__}, expected an object {{...}}", file=name, line=i)
        records.append(Record(value, i))
    return records


def _read_csv(raw: bytes, name: str) -> list[Record]:
    text = _decode_whole(raw, name)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("the file is empty", file=name) from None
    header = [h.strip() for h in header]
    if not any(header):
        raise DataError("the first row must name the columns (a header row)", file=name, line=1)
    if len(set(header)) != len(header) or any(not h for h in header):
        raise DataError("the header row has empty or repeated column names; does the file have a header?",
                        file=name, line=1)
    records = []
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                records.append(Record({}, line, f"has {len(row)} cells, the header has {len(header)}"))
                continue
            records.append(Record(dict(zip(header, row)), line))
    except csv.Error as e:
        raise DataError(f"not valid CSV: {e}", file=name, line=reader.line_num) from None
    return records


def _read_parquet(raw: bytes, name: str) -> list[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(raw))
    except Exception as e:
        raise DataError(f"not a readable Parquet file ({str(e).splitlines()[0]})", file=name) from None
    return [Record(row, i) for i, row in enumerate(table.to_pylist(), start=1)]


def _read_txt(raw: bytes, name: str) -> list[Record]:
    """Plain text for continued pre-training: one document per block separated by blank lines."""
    text = _decode_whole(raw, name).replace("\r\n", "\n")
    records = []
    block: list[str] = []
    start = 1
    for i, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            if not block:
                start = i
            block.append(line)
        elif block:
            records.append(Record({"text": "\n".join(block)}, start))
            block = []
    if block:
        records.append(Record({"text": "\n".join(block)}, start))
    return records
