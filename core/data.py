"""Datasets for a run: find the files, read and check them, tokenize with the loss mask, mix by
ratio, hold out an eval split, and pack. The report of `check_file` is what the Data tab and
`python -m core data check` show."""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from core.batching import as_item, pack
from core.config import DatasetSpec, RunConfig
from core.encode import encode_sample, ensure_chat_template
from core.errors import DataError
from core.formats import FORMATS, RowProblem, detect, normalize
from core.readers import read_records
from core.workspace import datasets_dir, read_json


@dataclass
class Problem:
    line: int
    message: str
    field: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file else f"line {self.line}"
        return f"{where}: {self.message}"


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

    @property
    def rows_usable(self) -> int:
        return len(self.samples)

    @property
    def usable(self) -> bool:
        return self.rows_usable > 0

    def to_dict(self, max_problems: int = 1000) -> dict:
        return {"file": self.file, "format": self.format, "confidence": round(self.confidence, 3),
                "rows_read": self.rows_read, "rows_usable": self.rows_usable, "usable": self.usable,
                "format_counts": self.format_counts,
                "problems": [{"line": p.line, "message": p.message, "field": p.field}
                             for p in self.problems[:max_problems]],
                "problems_total": len(self.problems)}


def check_file(path: str | Path, fmt: str = "auto", columns: dict | None = None,
               display_name: str | None = None) -> DataReport:
    """Read, detect and validate one file. File-level problems raise DataError."""
    fr = read_records(path, display_name)
    records = [r for r in fr.records if r.problem is None]
    if not fr.records:
        raise DataError("the file holds no rows", file=fr.file)
    detection = detect([r.data for r in records])
    chosen = detection.format if fmt == "auto" else fmt
    if chosen is None:
        cols = sorted({k for r in records[:50] for k in r.data})
        raise DataError(f"cannot tell the format from the columns ({', '.join(map(str, cols[:12]))}); map the "
                        f"columns or pick the format", file=fr.file, line=records[0].line if records else None,
                        hint="does the file have a header row?" if str(path).lower().endswith(".csv") else None)
    if chosen not in FORMATS:
        raise DataError(f"unknown format '{chosen}'", file=fr.file, field="format")
    report = DataReport(fr.file, chosen, detection.confidence if fmt == "auto" else 1.0, len(fr.records),
                        format_counts=detection.counts)
    seen: dict[str, int] = {}
    for rec in fr.records:
        if rec.problem:
            report.problems.append(Problem(rec.line, rec.problem, file=fr.file))
            continue
        try:
            sample = normalize(rec.data, chosen, columns)
        except RowProblem as p:
            report.problems.append(Problem(rec.line, str(p), p.field, fr.file))
            continue
        key = hashlib.sha1(json.dumps(sample, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        if key in seen:
            report.problems.append(Problem(rec.line, f"exact duplicate of line {seen[key]} (skipped)", file=fr.file))
            continue
        seen[key] = rec.line
        report.samples.append(sample)
        report.lines.append(rec.line)
    return report


def resolve_files(spec_path: str) -> list[tuple[Path, dict]]:
    """A data file, or the files of a saved dataset (with the column mapping saved beside them)."""
    p = Path(spec_path).expanduser()
    if p.is_file():
        return [(p, {})]
    if p.is_dir():
        raise DataError("is a folder; name the data files in it", file=spec_path, field="datasets")
    meta = read_json(datasets_dir() / spec_path / "meta.json")
    if meta and "/" not in spec_path and ".." not in spec_path:
        folder = datasets_dir() / spec_path
        return [(folder / f, meta) for f in meta.get("files", [])]
    raise DataError("no such file, and no saved dataset of that name", file=spec_path, field="datasets")


def load_spec(spec: DatasetSpec) -> list[DataReport]:
    reports = []
    for path, meta in resolve_files(spec.path):
        fmt = spec.format if spec.format != "auto" else meta.get("format", "auto")
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


def build(cfg: RunConfig, tokenizer) -> TrainingData:
    """Everything the trainer needs from the data. Raises DataError when no row is usable."""
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
