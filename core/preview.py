"""What the model will see. `preview` renders samples through the tokenizer's chat template and
splits them into the pieces that are trained on and the pieces that are masked, from the very
labels `core.encode` gives the trainer; `length_stats` measures token lengths against the max
length. The UI draws them; `preview_html` is a plain-HTML rendering of a preview."""
from __future__ import annotations

import html
import math
import random
import sys
from dataclasses import asdict, dataclass, field

from core.config import field_meta
from core.encode import IGNORE, encode_sample, ensure_chat_template
from core.formats import RowProblem

ROUND_TO = 64   # suggested max lengths are multiples of this


@dataclass
class Segment:
    text: str
    trained: bool


@dataclass
class SamplePreview:
    index: int                     # position in the samples given
    line: int | None               # line in the file, when known
    segments: list[Segment] = field(default_factory=list)
    tokens: int = 0                # tokens the model sees (after truncation)
    trained_tokens: int = 0
    full_tokens: int = 0           # tokens before truncation
    truncated: bool = False
    error: str | None = None       # why the trainer would drop this sample

    def to_dict(self) -> dict:
        return asdict(self)


def preview(samples: list[dict], tokenizer, n: int = 5, train_on: str = "assistant", max_len: int = 1024,
            lines: list[int] | None = None) -> list[SamplePreview]:
    """The first n samples exactly as the trainer sees them, cut into trained and masked text."""
    ensure_chat_template(tokenizer)
    out = []
    for i, sample in enumerate(samples[:n]):
        item = SamplePreview(i, lines[i] if lines and i < len(lines) else None)
        try:
            # Encoding without a limit and cutting here gives the same tokens and labels as
            # encode_sample(max_len), and also the length before truncation.
            full = encode_sample(tokenizer, sample, sys.maxsize, train_on)
        except RowProblem as p:
            item.error = str(p)
            out.append(item)
            continue
        ids, labels = full.input_ids[:max_len], full.labels[:max_len]
        item.tokens, item.full_tokens, item.truncated = len(ids), len(full.input_ids), len(full.input_ids) > max_len
        item.trained_tokens = sum(1 for x in labels if x != IGNORE)
        item.segments = _segments(tokenizer, ids, labels)
        if item.trained_tokens == 0:
            item.error = "the reply lies beyond the max length" if item.truncated else "no tokens to train on"
        out.append(item)
    return out


def _segments(tokenizer, ids: list[int], labels: list[int]) -> list[Segment]:
    """Runs of trained / masked tokens as text. Each run is the growth of the decoded prefix, so
    decoders that treat a leading space or a split character specially still join up exactly."""
    runs: list[list] = []
    for k, label in enumerate(labels):
        trained = label != IGNORE
        if runs and runs[-1][2] == trained:
            runs[-1][1] = k + 1
        else:
            runs.append([k, k + 1, trained])
    segments, before = [], ""
    for start, end, trained in runs:
        upto = tokenizer.decode(ids[:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if upto.startswith(before):
            text = upto[len(before):]
        else:
            text = tokenizer.decode(ids[start:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        segments.append(Segment(text, trained))
        before = upto
    return segments


HTML_LABELS = {"trained": "trained on", "masked": "masked (not trained)", "sample": "Sample {n}", "line": "line {line}",
               "tokens": "{tokens} tokens, {trained} trained on", "truncated": " (truncated from {full})",
               "dropped": "dropped: {why}"}
TRAINED_STYLE = "background:#bbf7d0;color:#14532d;border-radius:2px"
MASKED_STYLE = "color:#6b7280"


def preview_html(previews: list[SamplePreview], labels: dict | None = None) -> str:
    """A self-contained HTML block: trained text highlighted in green, masked text in grey. All
    text is escaped; `labels` replaces the English words and their templates (for the UI's locale table)."""
    words = {**HTML_LABELS, **(labels or {})}
    esc = html.escape
    legend = (f'<div class="wb-legend"><span class="wb-trained" style="{TRAINED_STYLE}">{esc(words["trained"])}'
              f'</span> <span class="wb-masked" style="{MASKED_STYLE}">{esc(words["masked"])}</span></div>')
    parts = ['<div class="wb-preview">', legend]
    for p in previews:
        head = [words["sample"].format(n=p.index + 1)] + ([words["line"].format(line=p.line)] if p.line is not None else [])
        head.append(words["tokens"].format(tokens=p.tokens, trained=p.trained_tokens)
                    + (words["truncated"].format(full=p.full_tokens) if p.truncated else ""))
        if p.error:
            head.append(words["dropped"].format(why=p.error))
        head = esc(" · ".join(head))
        body = "".join(f'<span class="{"wb-trained" if s.trained else "wb-masked"}" '
                       f'style="{TRAINED_STYLE if s.trained else MASKED_STYLE}">{esc(s.text)}</span>'
                       for s in p.segments)
        parts.append(f'<div class="wb-sample"><div class="wb-head">{head}</div>'
                     f'<pre class="wb-text" style="white-space:pre-wrap;word-break:break-word">{body}</pre></div>')
    parts.append("</div>")
    return "\n".join(parts)


@dataclass
class LengthStats:
    lengths: list[int]             # tokens per sample, before truncation
    max_len: int
    rows: int                      # samples measured
    skipped: int                   # samples the trainer would drop (nothing to train on)
    truncated: int                 # samples longer than max_len
    truncated_share: float
    mean: float
    p50: int
    p95: int
    p99: int
    longest: int
    suggested_95: int              # a max length that keeps 95% of samples whole (multiple of 64)
    suggested_99: int
    total_tokens: int              # sum of lengths (before truncation)
    sampled: bool = False          # measured on a random subset of max_rows samples

    def to_dict(self) -> dict:
        return asdict(self)


def length_stats(samples: list[dict], tokenizer, max_len: int, train_on: str = "assistant",
                 max_rows: int | None = None, seed: int = 0) -> LengthStats:
    """Token lengths with the chosen model's tokenizer and chat template. With max_rows, a
    seeded random subset is measured (large datasets)."""
    ensure_chat_template(tokenizer)
    sampled = max_rows is not None and len(samples) > max_rows
    chosen = random.Random(seed).sample(samples, max_rows) if sampled else samples
    lengths, skipped = [], 0
    for sample in chosen:
        try:
            lengths.append(len(encode_sample(tokenizer, sample, sys.maxsize, train_on).input_ids))
        except RowProblem:
            skipped += 1
    ordered = sorted(lengths)
    truncated = sum(1 for x in lengths if x > max_len)
    p95, p99 = _percentile(ordered, 0.95), _percentile(ordered, 0.99)
    return LengthStats(lengths, max_len, len(lengths), skipped, truncated,
                       truncated / len(lengths) if lengths else 0.0,
                       sum(lengths) / len(lengths) if lengths else 0.0, _percentile(ordered, 0.5), p95, p99,
                       ordered[-1] if ordered else 0, _round_up(p95), _round_up(p99), sum(lengths), sampled)


def _percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile: the smallest length that at least q of the samples fit in."""
    if not ordered:
        return 0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _round_up(n: int) -> int:
    """A max length to suggest: a multiple of ROUND_TO, within what the max length field takes."""
    return min(max(ROUND_TO, -(-n // ROUND_TO) * ROUND_TO), field_meta("data.max_seq_len")["max"])
