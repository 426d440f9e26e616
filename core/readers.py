"""Read data files into records, remembering the line (or row) each record came from.

The `datasets` loaders read these formats too, but their errors name neither the line nor the
problem in words a user can act on; this module fills that gap. Records are plain dicts.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import DataError
from core.formats import type_name

EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet", ".txt")
DEFAULT_MAX_UPLOAD_MB = 512
MB = 1024 * 1024
NOT_UTF8 = re.compile("[\udc80-\udcff]")   # bytes that were not UTF-8, kept by surrogateescape


@dataclass
class Record:
    data: dict
    line: int                      # 1-based line in the file (row number for Parquet)
    problem: str | None = None     # set when the row could not be decoded at all


@dataclass
class FileRecords:
    file: str
    records: list[Record] = field(default_factory=list)


def max_upload_mb(max_mb: float | None = None) -> float:
    """The size limit for one data file: the argument, else $WORKBENCH_MAX_UPLOAD_MB, else 512."""
    if max_mb is not None:
        if not max_mb > 0:
            raise DataError(f"the size limit must be a positive number of megabytes, got {max_mb:g}", field="max_mb")
        return float(max_mb)
    env = os.environ.get("WORKBENCH_MAX_UPLOAD_MB", "").strip()
    if not env:
        return float(DEFAULT_MAX_UPLOAD_MB)
    try:
        value = float(env)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise DataError(f"WORKBENCH_MAX_UPLOAD_MB must be a positive number of megabytes, got {env!r}",
                        field="WORKBENCH_MAX_UPLOAD_MB")
    return value


def check_size(path: Path, name: str, max_mb: float) -> None:
    size = path.stat().st_size
    if size > max_mb * MB:
        raise DataError(f"the file is {size / MB:.1f} MB, over the {max_mb:g} MB limit", file=name,
                        hint="split it, or raise the limit with WORKBENCH_MAX_UPLOAD_MB")


def read_records(path: str | Path, display_name: str | None = None, max_mb: float | None = None) -> FileRecords:
    """Read one file. File-level problems raise DataError; row-level ones are kept on the record.
    The file type comes from the display name's extension (an upload keeps its own name there);
    `max_mb` refuses larger files before reading them."""
    path = Path(path)
    name = display_name or str(path)
    if path.is_dir():
        raise DataError("is a folder, not a data file", file=name)
    if not path.is_file():
        raise DataError("file not found", file=name)
    ext = Path(name).suffix.lower()
    if ext not in EXTENSIONS:
        raise DataError(f"unsupported file type '{ext or 'none'}'; use one of {', '.join(EXTENSIONS)}", file=name)
    if max_mb is not None:
        check_size(path, name, max_mb)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read the file ({e.strerror or e})", file=name) from None
    if not raw.strip():
        raise DataError("the file is empty", file=name)
    if ext == ".parquet":
        return FileRecords(name, _read_parquet(raw, name))
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError("the text is UTF-16; save the file as UTF-8", file=name, line=1)
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
        raise DataError(f"the text is not UTF-8 (byte 0x{raw[e.start]:02X}); save the file as UTF-8",
                        file=name, line=line) from None


def _decode_rows(raw: bytes) -> str:
    """Decode keeping bytes that are not UTF-8 as stand-in characters, so each row can be judged
    on its own (see `_not_utf8`)."""
    return raw.decode("utf-8", errors="surrogateescape")


def _not_utf8(text: str) -> str | None:
    bad = NOT_UTF8.search(text)
    if bad is None:
        return None
    return f"the text is not UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02X}); save the file as UTF-8"


def _read_json(raw: bytes, name: str) -> list[Record]:
    text = _decode_whole(raw, name)
    stripped = text.lstrip()
    if stripped.startswith("{") and "\n{" in stripped.rstrip():
        try:
            return _read_jsonl(raw, name)
        except DataError:
            pass
    if not stripped.startswith("["):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as e:
            extra = getattr(e, "msg", None) == "Extra data"
            hint = "JSON Lines (one object per line) should be saved as .jsonl" if extra else None
            raise DataError(f"not valid JSON: {json_problem(e)}", file=name, line=getattr(e, "lineno", None),
                            hint=hint) from None
        raise DataError(f"expected a JSON list of objects ([{{...}}, {{...}}]), found {type_name(value)}",
                        file=name, line=1, hint=_list_hint(value))
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
        except (ValueError, RecursionError) as e:
            raise DataError(f"not valid JSON: {json_problem(e)}", file=name, line=getattr(e, "lineno", line)) \
                from None
        if not isinstance(value, dict):
            raise DataError(f"item {len(records) + 1} is {type_name(value)}, expected an object {{...}}",
                            file=name, line=line, hint="the file must be a list of objects ([{...}, {...}])")
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


def _list_hint(value) -> str | None:
    if not isinstance(value, dict):
        return None
    lists = [k for k, v in value.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
    if len(lists) == 1:
        return f"the rows seem to be under '{lists[0]}'; save that list by itself"
    if any(isinstance(v, dict) and ("file_name" in v or "hf_hub_url" in v) for v in value.values()):
        return "this is a LLaMA-Factory dataset_info.json; import its folder instead"
    return None


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def json_problem(e: Exception) -> str:
    """What json could not read: its own message, or what Python refused beyond the syntax."""
    if isinstance(e, json.JSONDecodeError):
        return e.msg
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e).split(";")[0]         # e.g. an integer of more than 4300 digits


def _read_jsonl(raw: bytes, name: str) -> list[Record]:
    records = []
    for i, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if not line_bytes.strip():
            continue
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            records.append(Record({}, i, f"the text is not UTF-8 (byte 0x{line_bytes[e.start]:02X}); "
                                         f"save the file as UTF-8"))
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise DataError(f"not valid JSON: {json_problem(e)}", file=name, line=i) from None
        if not isinstance(value, dict):
            raise DataError(f"the line holds {type_name(value)}, expected an object {{...}}", file=name, line=i)
        records.append(Record(value, i))
    return records


def _read_csv(raw: bytes, name: str) -> list[Record]:
    text = _decode_rows(raw)
    # The csv module refuses cells over 128 KiB by default; a long document is a fair cell, and the
    # whole file is in memory already.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError("the file is empty", file=name) from None
    except csv.Error as e:
        raise DataError(f"not valid CSV: {e}", file=name, line=1) from None
    _check_header(header, name)
    records = []
    start = reader.line_num + 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            problem = _not_utf8("".join(row))
            if problem is None and len(row) != len(header):
                problem = f"the row has {len(row)} cells, the header has {len(header)}"
            records.append(Record({} if problem else dict(zip(header, row)), line, problem))
    except csv.Error as e:
        raise DataError(f"not valid CSV: {e}", file=name, line=reader.line_num) from None
    return records


def _delimiter(text: str) -> str:
    """Commas, else what the header row uses: spreadsheets in many locales save CSV with ';'."""
    end = text.find("\n")
    header = text if end < 0 else text[:end]         # not split(): that would copy the whole file
    return next((d for d in (",", ";", "\t", "|") if d in header), ",")


def _check_header(header: list[str], name: str) -> None:
    """A CSV must start with a row of column names; say so when the first row looks like data."""
    if _not_utf8("".join(header)):
        raise DataError(_not_utf8("".join(header)), file=name, line=1)
    if not any(header):
        raise DataError("the first row must name the columns (a header row)", file=name, line=1)
    if len(set(header)) != len(header) or any(not h for h in header):
        raise DataError("the header row has empty or repeated column names; does the file have a header?",
                        file=name, line=1)
    if any(len(h) > 64 or "\n" in h or _is_number(h) for h in header):
        raise DataError("the first row looks like data, not column names; add a header row "
                        "(e.g. instruction,input,output)", file=name, line=1)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_parquet(raw: bytes, name: str) -> list[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(raw))
    except Exception as e:
        raise DataError(f"not a readable Parquet file ({str(e).splitlines()[0]})", file=name) from None
    return [Record(row, i) for i, row in enumerate(table.to_pylist(), start=1)]


def _read_txt(raw: bytes, name: str) -> list[Record]:
    """Plain text for continued pre-training. Documents are separated by blank lines; a file
    without blank lines holds one document per line (as `datasets`' text loader and
    LLaMA-Factory read it)."""
    lines = _decode_rows(raw).replace("\r\n", "\n").split("\n")
    filled = [i for i, line in enumerate(lines) if line.strip()]
    if filled and len(filled) == filled[-1] - filled[0] + 1:
        return [_text_record([line], i) for i, line in enumerate(lines, start=1) if line.strip()]
    records = []
    block: list[str] = []
    start = 1
    for i, line in enumerate(lines, start=1):
        if line.strip():
            if not block:
                start = i
            block.append(line)
        elif block:
            records.append(_text_record(block, start))
            block = []
    if block:
        records.append(_text_record(block, start))
    return records


def _text_record(block: list[str], start: int) -> Record:
    for k, line in enumerate(block):
        problem = _not_utf8(line)
        if problem:
            return Record({}, start + k, problem)
    return Record({"text": "\n".join(block)}, start)
