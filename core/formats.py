"""Data formats: detect which one a file uses, and turn each record into a sample the trainer
understands: {"messages": [...]} for conversations or {"text": ...} for raw text.

Formats (the public ones of LLaMA-Factory's data folder and the OpenAI API):
  alpaca      instruction, input (optional), output, system (optional), history (optional)
  messages    messages: [{role, content}, ...]
  sharegpt    conversations: [{from, value}, ...], optional system and tools
  preference  chosen + rejected (with prompt/instruction or conversations); trains on the chosen reply
  text        text (continued pre-training)
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

FORMATS = ("alpaca", "messages", "sharegpt", "preference", "text")

# The canonical column of each format, and the names it is looked up under by default.
DEFAULT_COLUMNS = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output", "system": "system",
               "history": "history"},
    "messages": {"messages": "messages", "role": "role", "content": "content", "tools": "tools"},
    "sharegpt": {"messages": "conversations", "role": "from", "content": "value", "system": "system",
                 "tools": "tools"},
    "preference": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "system": "system"},
    "text": {"text": "text"},
}

ROLE_ALIASES = {
    "user": "user", "human": "user", "system": "system", "assistant": "assistant", "gpt": "assistant",
    "bot": "assistant", "model": "assistant", "tool": "tool", "observation": "tool", "function": "tool",
    "function_call": "assistant", "ipython": "tool",
}


class RowProblem(ValueError):
    """One record cannot be used; the message says why, `field` names the column."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass
class Detection:
    format: str | None
    confidence: float          # share of records that look like this format
    counts: dict


def detect_record(data: dict) -> str | None:
    keys = set(data)
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if "messages" in keys and isinstance(data["messages"], list):
        first = next((m for m in data["messages"] if isinstance(m, dict)), {})
        return "sharegpt" if "from" in first and "role" not in first else "messages"
    if "conversations" in keys and isinstance(data["conversations"], list):
        first = next((m for m in data["conversations"] if isinstance(m, dict)), {})
        return "messages" if "role" in first and "from" not in first else "sharegpt"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "text" in keys or "content" in keys and len(keys) <= 3:
        return "text"
    if "prompt" in keys and ("completion" in keys or "response" in keys):
        return "alpaca"
    return None


def detect(records: list[dict]) -> Detection:
    """Majority vote over the records; confidence is the winner's share."""
    counts = Counter(detect_record(r) for r in records if r)
    if not counts:
        return Detection(None, 0.0, {})
    fmt, n = counts.most_common(1)[0]
    total = sum(counts.values())
    return Detection(fmt, n / total, {str(k): v for k, v in counts.items()})


def columns_for(fmt: str, record: dict | None = None, mapping: dict | None = None) -> dict:
    cols = dict(DEFAULT_COLUMNS[fmt])
    if fmt == "sharegpt" and record is not None and "conversations" not in record and "messages" in record:
        cols["messages"] = "messages"
    if fmt == "messages" and record is not None and "messages" not in record and "conversations" in record:
        cols["messages"] = "conversations"
    if fmt == "alpaca" and record is not None and "instruction" not in record and "prompt" in record:
        cols["instruction"] = "prompt"
        cols["output"] = "completion" if "completion" in record else "response"
    if fmt == "text" and record is not None and "text" not in record and "content" in record:
        cols["text"] = "content"
    cols.update(mapping or {})
    return cols


def normalize(data: dict, fmt: str, mapping: dict | None = None) -> dict:
    """One record -> {"messages": [...], "tools": ...} or {"text": ...}. Raises RowProblem."""
    cols = columns_for(fmt, data, mapping)
    if fmt == "text":
        return {"text": _text(data, cols["text"])}
    if fmt == "alpaca":
        return _from_alpaca(data, cols)
    if fmt == "preference":
        return _from_preference(data, cols)
    return _from_chat(data, cols, sharegpt=(fmt == "sharegpt"))


def _text(data: dict, col: str, *, required: bool = True) -> str:
    value = data.get(col)
    if value is None:
        if required:
            raise RowProblem(f"missing field '{col}'", col)
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RowProblem(f"field '{col}' should be text, got {type(value).__name__}", col)
    if required and not value.strip():
        raise RowProblem(f"field '{col}' is empty", col)
    return value


def _from_alpaca(data: dict, cols: dict) -> dict:
    instruction = _text(data, cols["instruction"])
    extra = _text(data, cols["input"], required=False)
    output = _text(data, cols["output"])
    messages = []
    system = _text(data, cols["system"], required=False)
    if system.strip():
        messages.append({"role": "system", "content": system})
    history = data.get(cols["history"]) or []
    if not isinstance(history, list):
        raise RowProblem(f"field '{cols['history']}' should be a list of [question, answer] pairs", cols["history"])
    for pair in history:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowProblem(f"field '{cols['history']}' should hold [question, answer] pairs", cols["history"])
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": messages}


def _from_chat(data: dict, cols: dict, *, sharegpt: bool) -> dict:
    col = cols["messages"]
    turns = data.get(col)
    if turns is None:
        raise RowProblem(f"missing field '{col}'", col)
    if isinstance(turns, str):
        try:
            turns = json.loads(turns)
        except ValueError:
            raise RowProblem(f"field '{col}' should be a list of turns", col) from None
    if not isinstance(turns, list) or not turns:
        raise RowProblem(f"field '{col}' should be a non-empty list of turns", col)
    messages = []
    system = _text(data, cols.get("system", "system"), required=False) if sharegpt else ""
    if system.strip():
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise RowProblem(f"turn {i} of '{col}' should be an object", col)
        raw_role = turn.get(cols["role"])
        role = ROLE_ALIASES.get(str(raw_role).lower()) if raw_role is not None else None
        if role is None:
            raise RowProblem(f"turn {i} has unknown role {raw_role!r} (use user, assistant, system or tool)",
                             cols["role"])
        content = turn.get(cols["content"])
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise RowProblem(f"turn {i} has no text in '{cols['content']}'", cols["content"])
        if not content.strip() and role == "assistant":
            raise RowProblem(f"turn {i} (assistant) is empty", cols["content"])
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "assistant":
        raise RowProblem("the conversation does not end with an assistant reply", col)
    if not any(m["role"] == "user" for m in messages):
        raise RowProblem("the conversation has no user turn", col)
    sample = {"messages": messages}
    tools = data.get(cols.get("tools", "tools"))
    if tools:
        sample["tools"] = tools if isinstance(tools, str) else json.dumps(tools, ensure_ascii=False)
    return sample


def _from_preference(data: dict, cols: dict) -> dict:
    chosen = data.get(cols["chosen"])
    if isinstance(chosen, dict):
        chosen = chosen.get("value") or chosen.get("content")
    if "conversations" in data:
        sample = _from_chat({**data, "conversations": list(data["conversations"]) +
                             [{"from": "gpt", "value": chosen}]},
                            columns_for("sharegpt"), sharegpt=True)
        return sample
    if isinstance(chosen, list):
        return _from_chat({"messages": chosen}, columns_for("messages"), sharegpt=False)
    prompt_col = cols["prompt"] if cols["prompt"] in data else "instruction"
    return _from_alpaca({cols["prompt"]: data.get(prompt_col), "output": chosen, "input": data.get("input"),
                         "system": data.get(cols["system"])},
                        {**DEFAULT_COLUMNS["alpaca"], "instruction": cols["prompt"]})
