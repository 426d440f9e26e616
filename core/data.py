"""Datasets for a run: find the files, read and check them, tokenize with the loss mask, mix by
ratio, hold out an eval split, and pack. The reports of `check_file` / `check_files` are what the
Data tab and `python -m core data check` show."""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from core import path_policy
from core.config import DatasetSpec, RunConfig
from core.encode import encode_sample, ensure_chat_template
from core.errors import DataError, WorkbenchError
from core.formats import (FORMATS, REQUIRED, RowProblem, columns_for, detect, detect_record, format_from_mapping,
                          normalize)
from core.formats import variant as format_variant
from core.readers import max_upload_mb, read_records
from core.workspace import datasets_dir, read_json

FORMAT_NAMES = {"alpaca": "Alpaca (instruction / output)", "messages": "Chat messages (role / content)",
                "sharegpt": "ShareGPT conversations (from / value)",
                "preference": "Preference pairs (chosen / rejected)", "text": "Plain text"}
CHAT_LIKE = {"messages", "sharegpt"}     # the same conversations, read with different key names


@dataclass
class Problem:
    line: int
    message: str
    field: str | None = None
    file: str | None = None
    kind: str = "invalid"      # invalid | unreadable | mixed_format | duplicate

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file else f"line {self.line}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict:
        return {"line": self.line, "message": self.message, "field": self.field, "kind": self.kind}


@dataclass
class DataReport:
    file: str
    format: str | None
    confidence: float
    rows_read: int
    samples: list[dict] = field(default_factory=list)   # normalized, usable rows
    lines: list[int] = field(default_factory=list)      # the line each sample came from
    problems: list[Problem] = field(default_factory=list)
    format_counts: dict = field(default_factory=dict)
    variant: str | None = None                          # preference pairs: sharegpt | messages | alpaca
    columns_found: list[str] = field(default_factory=list)
    mapping: dict = field(default_factory=dict)         # the columns each canonical field was read from

    @property
    def rows_usable(self) -> int:
        return len(self.samples)

    @property
    def usable(self) -> bool:
        return self.rows_usable > 0

    @property
    def features(self) -> dict:
        """Rows with tools, with a system prompt, with several assistant turns, with tool results."""
        counts = Counter()
        for s in self.samples:
            roles = [m["role"] for m in s.get("messages", [])]
            counts["tools"] += "tools" in s
            counts["system"] += "system" in roles
            counts["multi_turn"] += roles.count("assistant") > 1
            counts["tool_results"] += "tool" in roles
        return {k: counts[k] for k in ("tools", "system", "multi_turn", "tool_results")}

    @property
    def label(self) -> str:
        """The format in words, e.g. 'ShareGPT conversations (from / value) with tools'."""
        text = FORMAT_NAMES.get(self.format, str(self.format))
        if self.variant:
            text += f", {self.variant} form"
        if self.features["tools"]:
            text += " with tools"
        return text

    def to_dict(self, max_problems: int = 1000) -> dict:
        return {"file": self.file, "format": self.format, "label": self.label, "variant": self.variant,
                "confidence": round(self.confidence, 3), "rows_read": self.rows_read,
                "rows_usable": self.rows_usable, "usable": self.usable, "format_counts": self.format_counts,
                "features": self.features, "columns_found": self.columns_found, "mapping": self.mapping,
                "problems": [p.to_dict() for p in self.problems[:max_problems]],
                "problems_total": len(self.problems),
                "problems_by_kind": dict(Counter(p.kind for p in self.problems))}


def check_file(path: str | Path, fmt: str = "auto", columns: dict | None = None,
               display_name: str | None = None, max_mb: float | None = None) -> DataReport:
    """Read, detect and validate one file. File-level problems raise DataError; each row-level
    problem is listed with its line. `max_mb` refuses a larger file (None: no limit)."""
    fr = read_records(path, display_name, max_mb)
    if not fr.records:
        raise DataError("the file holds no rows", file=fr.file)
    records = [r for r in fr.records if r.problem is None]
    if not records:
        first = fr.records[0]
        raise DataError(f"no row could be read ({first.problem})", file=fr.file, line=first.line)
    detection = detect([r.data for r in records])
    chosen = _choose_format(fmt, columns, detection.format, records, fr.file)
    _check_mapped_columns(columns, chosen, records, fr.file)
    first = records[0].data
    report = DataReport(fr.file, chosen, detection.confidence if chosen == detection.format else 1.0,
                        len(fr.records), format_counts=detection.counts,
                        variant=format_variant(first, chosen, columns),
                        columns_found=sorted({str(k) for r in records[:200] for k in r.data}),
                        mapping=columns_for(chosen, first, columns))
    # Rows of another format are flagged only when the file's format is the one most rows have.
    mixed_check = detection.format == chosen or {detection.format, chosen} <= CHAT_LIKE
    seen: dict[str, int] = {}
    for rec in fr.records:
        sample, problem = _check_record(rec, chosen, columns, mixed_check)
        if sample is not None:
            key = hashlib.sha1(json.dumps(sample, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
            if key in seen:
                problem = Problem(rec.line, f"exact duplicate of line {seen[key]} (skipped)", kind="duplicate")
            else:
                seen[key] = rec.line
                report.samples.append(sample)
                report.lines.append(rec.line)
        if problem is not None:
            problem.file = fr.file
            report.problems.append(problem)
    return report


def _choose_format(fmt: str, columns: dict | None, detected: str | None, records, file: str) -> str:
    chosen = detected if fmt == "auto" else fmt
    if fmt == "auto" and columns:
        chosen = format_from_mapping(columns) or detected
    if chosen is None:
        cols = sorted({str(k) for r in records[:50] for k in r.data})
        hint = "does the file have a header row?" if file.lower().endswith(".csv") else None
        raise DataError(f"cannot tell the format from the columns ({', '.join(cols[:12])}); map the columns or "
                        f"pick the format", file=file, line=records[0].line, hint=hint)
    if chosen not in FORMATS:
        raise DataError(f"unknown format '{chosen}'; use one of {', '.join(FORMATS)}", file=file, field="format")
    return chosen


def _check_mapped_columns(columns: dict | None, fmt: str, records, file: str) -> None:
    """A column mapped to a field every row needs, but that no row has, is a typo of the mapping,
    not a problem of each row: say so once, with the columns the file does have."""
    if not columns:
        return
    found = {str(k) for r in records for k in r.data}
    for field, column in columns.items():
        if field in REQUIRED[fmt] and column not in found:
            raise DataError(f"no row has the column '{column}' (mapped to '{field}'); the file's columns are "
                            f"{', '.join(sorted(found)[:20])}", file=file, field="columns")


def _check_record(rec, fmt: str, columns: dict | None, mixed_check: bool):
    """(sample, None) for a usable row, (None, Problem) otherwise."""
    if rec.problem:
        return None, Problem(rec.line, rec.problem, kind="unreadable")
    own = detect_record(rec.data)
    if mixed_check and own not in (None, fmt) and {own, fmt} != CHAT_LIKE:
        return None, Problem(rec.line, f"this row looks like {own} data, the file is {fmt} (mixed formats; "
                                       f"skipped)", kind="mixed_format")
    try:
        return normalize(rec.data, fmt, columns), None
    except RowProblem as p:
        return None, Problem(rec.line, str(p), p.field)


@dataclass
class FileCheck:
    """One file's outcome: a report, or the error that stopped it from being read."""
    file: str
    report: DataReport | None = None
    error: WorkbenchError | None = None

    @property
    def usable(self) -> bool:
        return self.report is not None and self.report.usable

    def to_dict(self, max_problems: int = 1000) -> dict:
        return {"file": self.file, "usable": self.usable,
                "error": self.error.to_dict() if self.error else None,
                "report": self.report.to_dict(max_problems) if self.report else None}


def check_files(paths: list[str | Path], fmt: str = "auto", columns: dict | None = None,
                names: list[str] | None = None, max_mb: float | None = None) -> list[FileCheck]:
    """Check uploaded files one by one; a file that cannot be read becomes an error entry, never an
    exception. `names` are the names to show (an upload's own file names); files over `max_mb`
    (default: $WORKBENCH_MAX_UPLOAD_MB or 512) are refused."""
    limit = max_upload_mb(max_mb)
    checks = []
    for i, path in enumerate(paths):
        name = names[i] if names else str(path)
        try:
            checks.append(FileCheck(name, report=check_file(path, fmt, columns, name, limit)))
        except WorkbenchError as e:
            checks.append(FileCheck(name, error=e))
    return checks


def report_lines(check: FileCheck, max_problems: int = 20) -> list[str]:
    """A file's check as plain text lines (the CLI prints these)."""
    if check.error:
        return [f"error: {check.error}" if check.error.file else f"{check.file}: error: {check.error}"]
    r = check.report
    lines = [f"{r.file}: {r.format} ({r.label}), {r.rows_read} rows read, {r.rows_usable} usable"
             + ("" if r.usable else " - NOT USABLE")]
    lines += [f"  line {p.line}: {p.message}" for p in r.problems[:max_problems]]
    if len(r.problems) > max_problems:
        lines.append(f"  ... and {len(r.problems) - max_problems} more problems")
    return lines


def resolve_files(spec_path: str) -> list[tuple[Path, dict]]:
    """A data file, or the files of a saved dataset (with the column mapping saved beside them)."""
    p = Path(spec_path).expanduser()
    path_policy.check(spec_path, "datasets")
    if p.is_file():
        return [(p, {})]
    if p.is_dir():
        raise DataError("is a folder; name the data files in it", file=spec_path, field="datasets")
    if _plain_name(spec_path):
        folder = datasets_dir() / spec_path
        meta = read_json(folder / "meta.json")
        if isinstance(meta, dict):
            files = [str(f) for f in meta.get("files", [])]
            if not all(_plain_name(f) for f in files):
                raise DataError("meta.json names a file outside the dataset folder", file=str(folder / "meta.json"))
            return [(folder / f, meta) for f in files]
    raise DataError("no such file, and no saved dataset of that name", file=spec_path, field="datasets")


def _plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def load_spec(spec: DatasetSpec) -> list[DataReport]:
    reports = []
    for path, meta in resolve_files(spec.path):
        saved_format = (meta.get("formats") or {}).get(path.name) or meta.get("format", "auto")
        fmt = spec.format if spec.format != "auto" else saved_format
        columns = spec.columns or meta.get("columns") or None
        reports.append(check_file(path, fmt, columns, display_name=str(path)))
    return reports


@dataclass
class TrainingData:
    train: list[dict]
    eval: list[dict]
    rows: int = 0
    truncated: int = 0
    dropped: list[Problem] = field(default_factory=list)
    tokens: int = 0

    def summary(self) -> dict:
        return {"train_items": len(self.train), "eval_items": len(self.eval), "rows": self.rows,
                "truncated": self.truncated, "dropped": len(self.dropped), "tokens": self.tokens}


def check_datasets(cfg: RunConfig, tokenizer=None) -> None:
    """What `build` would refuse: no dataset, a file that is missing, unreadable or of no known type,
    a dataset with no usable row; with the tokenizer, also one whose every row is too long or has
    nothing to train on. Run before a run is queued, so that it does not fail hours later at the
    front of the queue."""
    if not cfg.datasets:
        raise DataError("no dataset given", field="datasets")
    if tokenizer is not None:
        ensure_chat_template(tokenizer)
    for i, spec in enumerate(cfg.datasets):
        reports = load_spec(spec)
        if not any(r.samples for r in reports):
            first = next((p for r in reports for p in r.problems), None)
        elif tokenizer is None or (first := unencodable(reports, tokenizer, cfg)) is False:
            continue
        raise DataError(f"no usable rows{f' (e.g. line {first.line}: {first.message})' if first else ''}",
                        file=spec.path, field=f"datasets.{i}")


ENCODE_CHECK_ROWS = 2000


def unencodable(reports: list, tokenizer, cfg: RunConfig):
    """False as soon as a row encodes into something to train on, or after ENCODE_CHECK_ROWS rows
    (a large file is left to the run); else the first row's problem: no row of this dataset trains."""
    first, tried = None, 0
    for report in reports:
        for sample, line in zip(report.samples, report.lines):
            try:
                encode_sample(tokenizer, sample, cfg.data.max_seq_len, cfg.data.train_on)
                return False
            except RowProblem as p:
                first = first or Problem(line, str(p), file=report.file)
            tried += 1
            if tried >= ENCODE_CHECK_ROWS:
                return False
    return first


def build(cfg: RunConfig, tokenizer) -> TrainingData:
    """Everything the trainer needs from the data. Raises DataError when no row is usable."""
    from core.batching import as_item, pack     # torch: only the trainer needs it

    if not cfg.datasets:
        raise DataError("no dataset given", field="datasets")
    ensure_chat_template(tokenizer)
    rng = random.Random(cfg.train.seed)
    pools, evals, result = [], [], TrainingData([], [])
    for i, spec in enumerate(cfg.datasets):
        items = []
        for report in load_spec(spec):
            result.rows += report.rows_read
            result.dropped += report.problems
            for sample, line in zip(report.samples, report.lines):
                try:
                    enc = encode_sample(tokenizer, sample, cfg.data.max_seq_len, cfg.data.train_on)
                except RowProblem as p:
                    result.dropped.append(Problem(line, str(p), file=report.file))
                    continue
                result.truncated += enc.truncated
                items.append(as_item(enc))
        if not items:
            first = result.dropped[-1] if result.dropped else None
            raise DataError(f"no usable rows{f' (e.g. line {first.line}: {first.message})' if first else ''}",
                            file=spec.path, field=f"datasets.{i}")
        rng.shuffle(items)
        n_eval = int(round(len(items) * cfg.data.eval_split))
        if cfg.data.eval_split > 0 and len(items) > 1:
            n_eval = max(1, min(n_eval, len(items) - 1))
        evals += items[:n_eval]
        pools.append(items[n_eval:])
    train = mix(pools, [s.ratio for s in cfg.datasets], rng)
    result.tokens = sum(len(x["input_ids"]) for x in train)
    if cfg.data.packing:
        train, evals = pack(train, cfg.data.max_seq_len), (pack(evals, cfg.data.max_seq_len) if evals else [])
    rng.shuffle(train)
    result.train, result.eval = train, evals
    return result


def mix(pools: list[list[dict]], ratios: list[float | None], rng: random.Random) -> list[dict]:
    """Concatenate, or draw each pool's share of the total when ratios are given (a small pool is
    repeated, a large one subsampled)."""
    if all(r is None for r in ratios):
        return [x for pool in pools for x in pool]
    total, weight = sum(len(p) for p in pools), sum(ratios)
    out = []
    for pool, r in zip(pools, ratios):
        want = max(1, round(total * r / weight))
        full, rest = divmod(want, len(pool))
        out += pool * full + rng.sample(pool, rest)
    return out
