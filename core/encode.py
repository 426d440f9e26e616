"""Turn one sample into token ids and labels, exactly as the model will see it.

Conversations go through the tokenizer's own chat template. Transformers can return an
assistant mask only for templates that carry `{% generation %}` markers, which few do; so the
trained spans are found here by rendering each conversation prefix and comparing strings, then
mapped to tokens through the tokenizer's character offsets.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.formats import RowProblem

IGNORE = -100

# Used only for tokenizers that ship no chat template (base models). Plain tags, and the end of
# each assistant turn is the EOS token so the model learns to stop.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '### ' + message['role'] | capitalize + ':\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


def render(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False, tools=None) -> str:
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **kwargs)


def assistant_spans(tokenizer, messages: list[dict], tools=None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of every assistant reply, end-of-turn
    tokens included (so the model learns where to stop)."""
    try:
        full = render(tokenizer, messages, tools=tools)
    except Exception as e:      # the template is the model's own code: whatever it raises is this row's problem
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RowProblem(f"the model's chat template refuses this conversation: {reason}") from None
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        try:
            before = render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools) if i else ""
            upto = render(tokenizer, messages[: i + 1], tools=tools)
        except Exception:
            before = upto = None
        if before is not None and full.startswith(upto) and upto.startswith(before) and len(upto) > len(before):
            spans.append((len(before), len(upto)))
            continue
        # The template does not render prefixes consistently (e.g. it drops earlier reasoning):
        # fall back to finding the reply text itself, after the previous span.
        start_from = spans[-1][1] if spans else 0
        at = full.find(message["content"], start_from)
        if at < 0:
            raise RowProblem(f"cannot locate assistant turn {i + 1} in the rendered chat template")
        spans.append((at, at + len(message["content"])))
    return full, spans


def encode_sample(tokenizer, sample: dict, max_len: int, train_on: str = "assistant") -> Encoded:
    """Tokens and labels for one normalized sample. Raises RowProblem when nothing is left to train."""
    if "text" in sample:
        ids = tokenizer(sample["text"], add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]
        labels = list(ids)
    else:
        text, spans = assistant_spans(tokenizer, sample["messages"], sample.get("tools"))
        ids, labels = _tokenize_with_spans(tokenizer, text, spans, train_on)
    truncated = len(ids) > max_len
    ids, labels = ids[:max_len], labels[:max_len]
    enc = Encoded(ids, labels, truncated)
    if enc.trained_tokens < 1:
        reason = "the reply lies beyond the max length" if truncated else "no tokens to train on"
        raise RowProblem(reason)
    return enc


def _tokenize_with_spans(tokenizer, text: str, spans, train_on: str) -> tuple[list[int], list[int]]:
    if getattr(tokenizer, "is_fast", False):
        out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = out["input_ids"]
        if train_on == "all":
            return ids, list(ids)
        labels = [IGNORE] * len(ids)
        for k, (start, end) in enumerate(out["offset_mapping"]):
            if end > start and any(s <= start < e for s, e in spans):
                labels[k] = ids[k]
        return ids, labels
    # Slow tokenizers give no offsets: tokenize the pieces between span edges one by one.
    ids, labels, cursor = [], [], 0
    for start, end in spans:
        for piece, trained in ((text[cursor:start], train_on == "all"), (text[start:end], True)):
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                labels += piece_ids if trained else [IGNORE] * len(piece_ids)
        cursor = end
    tail = tokenizer(text[cursor:], add_special_tokens=False)["input_ids"] if text[cursor:] else []
    return ids + tail, labels + (tail if train_on == "all" else [IGNORE] * len(tail))
