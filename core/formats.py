"""Data formats: detect which one a file uses, and turn each record into a sample the trainer
understands: {"messages": [...], "tools": [...]} for conversations or {"text": ...} for raw text.

Formats (the public ones of LLaMA-Factory's data folder and the OpenAI API):
  alpaca      instruction, input (optional), output, system (optional), history (optional)
  messages    messages: [{role, content}, ...]
  sharegpt    conversations: [{from, value}, ...], optional system and tools
  preference  chosen + rejected, with prompt/instruction (alpaca form), conversations (the
              LLaMA-Factory DPO form, chosen/rejected are single turns) or message lists (TRL
              form); trains on the chosen reply
  text        text (continued pre-training)

A column mapping renames the canonical fields of a format to the columns of a file, e.g.
{"instruction": "question", "output": "answer"}. For conversations it may also name the values
the role field uses (LLaMA-Factory's tags): user_tag, assistant_tag, observation_tag,
function_tag, system_tag.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass

FORMATS = ("alpaca", "messages", "sharegpt", "preference", "text")

# The canonical fields of each format, and the columns they are looked up under by default.
DEFAULT_COLUMNS = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output", "system": "system",
               "history": "history"},
    "messages": {"messages": "messages", "role": "role", "content": "content", "tools": "tools"},
    "sharegpt": {"messages": "conversations", "role": "from", "content": "value", "system": "system",
                 "tools": "tools"},
    "preference": {"prompt": "prompt", "input": "input", "chosen": "chosen", "rejected": "rejected",
                   "system": "system", "history": "history", "messages": "conversations", "role": "from",
                   "content": "value"},
    "text": {"text": "text"},
}
REQUIRED = {"alpaca": ("instruction", "output"), "messages": ("messages",), "sharegpt": ("messages",),
            "preference": ("chosen", "rejected"), "text": ("text",)}
CHAT_FORMATS = ("messages", "sharegpt", "preference")

ROLE_ALIASES = {
    "user": "user", "human": "user", "system": "system", "assistant": "assistant", "gpt": "assistant",
    "bot": "assistant", "model": "assistant", "tool": "tool", "observation": "tool", "function": "tool",
    "function_call": "assistant", "ipython": "tool",
}
# Mapping keys that name a role value rather than a column.
ROLE_TAGS = {"user_tag": "user", "assistant_tag": "assistant", "observation_tag": "tool",
             "function_tag": "assistant", "system_tag": "system"}


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


def mapping_fields(fmt: str) -> list[dict]:
    """What a column-mapping form shows for a format: each canonical field, its default column,
    whether it is required, and whether it names a column or a role value."""
    fields = [{"field": k, "default": v, "required": k in REQUIRED[fmt], "kind": "column"}
              for k, v in DEFAULT_COLUMNS[fmt].items()]
    if fmt in CHAT_FORMATS:
        fields += [{"field": k, "default": "", "required": False, "kind": "role value"} for k in ROLE_TAGS]
    return fields


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


def format_from_mapping(mapping: dict | None) -> str | None:
    """The format a user's column mapping implies, when the columns alone do not tell."""
    keys = set(mapping or {})
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if "messages" in keys or keys & set(ROLE_TAGS):
        return "sharegpt" if mapping.get("role", "from") == "from" else "messages"
    if keys & {"instruction", "output"}:
        return "alpaca"
    if "text" in keys:
        return "text"
    return None


def columns_for(fmt: str, record: dict | None = None, mapping: dict | None = None) -> dict:
    """The columns to read for this format: defaults, adjusted to the record's own names, then the
    user's mapping on top."""
    cols = dict(DEFAULT_COLUMNS[fmt])
    record = record if isinstance(record, dict) else {}
    mapping = mapping or {}
    if fmt == "alpaca" and "instruction" not in record and "prompt" in record:
        cols["instruction"] = "prompt"
        cols["output"] = "completion" if "completion" in record else "response"
    if fmt == "preference" and "prompt" not in record and "instruction" in record:
        cols["prompt"] = "instruction"
    if fmt == "text" and "text" not in record and "content" in record:
        cols["text"] = "content"
    if fmt in CHAT_FORMATS:
        _adapt_chat_columns(cols, record, mapping)
    cols.update(mapping)
    return cols


def _adapt_chat_columns(cols: dict, record: dict, mapping: dict) -> None:
    """Take the conversation from `messages` or `conversations`, whichever the record has, and
    read the turns with the keys the first turn uses (from/value or role/content)."""
    if cols["messages"] not in record:
        other = "messages" if cols["messages"] == "conversations" else "conversations"
        if other in record:
            cols["messages"] = other
    turns = record.get(mapping.get("messages", cols["messages"]))
    first = next((t for t in turns if isinstance(t, dict)), {}) if isinstance(turns, list) else {}
    if "from" in first and "value" in first:
        cols["role"], cols["content"] = "from", "value"
    elif "role" in first:
        cols["role"], cols["content"] = "role", "content"


def variant(data: dict, fmt: str, mapping: dict | None = None) -> str | None:
    """Which form of preference pairs a record uses: sharegpt (conversations + one chosen turn),
    messages (chosen/rejected are message lists) or alpaca (prompt + chosen/rejected text)."""
    if fmt != "preference":
        return None
    cols = columns_for(fmt, data, mapping)
    if cols["messages"] in data:
        return "sharegpt"
    return "messages" if isinstance(data.get(cols["chosen"]), list) else "alpaca"


def normalize(data: dict, fmt: str, mapping: dict | None = None) -> dict:
    """One record -> {"messages": [...], "tools": [...]} or {"text": ...}. Raises RowProblem."""
    cols = columns_for(fmt, data, mapping)
    if fmt == "text":
        return {"text": _text(data, cols["text"])}
    if fmt == "alpaca":
        return _from_alpaca(data, cols)
    if fmt == "preference":
        return _from_preference(data, cols)
    return _from_chat(data, cols, sharegpt=(fmt == "sharegpt"))


def type_name(value) -> str:
    """JSON's names for Python types, as a user who wrote the file knows them."""
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _text(data: dict, col: str, *, required: bool = True) -> str:
    value = data.get(col)
    if isinstance(value, float) and math.isnan(value):     # pandas' missing value (Parquet, CSV read by pandas)
        value = None
    if value is None:
        if required:
            raise RowProblem(f"missing field '{col}'", col)
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RowProblem(f"field '{col}' should be text, got {type_name(value)}", col)
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
    messages += _history(data, cols["history"])
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": messages}


def _history(data: dict, col: str) -> list[dict]:
    history = data.get(col) or []
    if not isinstance(history, list):
        raise RowProblem(f"field '{col}' should be a list of [question, answer] pairs, got {type_name(history)}",
                         col)
    messages = []
    for pair in history:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowProblem(f"field '{col}' should hold [question, answer] pairs", col)
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages


def _from_chat(data: dict, cols: dict, *, sharegpt: bool) -> dict:
    col = cols["messages"]
    turns = data.get(col)
    if turns is None:
        raise RowProblem(f"missing field '{col}'", col)
    if isinstance(turns, str):
        try:
            turns = json.loads(turns)
        except ValueError:
            raise RowProblem(f"field '{col}' should be a list of turns, got text", col) from None
    if not isinstance(turns, list) or not turns:
        raise RowProblem(f"field '{col}' should be a non-empty list of turns, got {type_name(turns)}", col)
    messages = []
    system = _text(data, cols.get("system", "system"), required=False) if sharegpt else ""
    if system.strip():
        messages.append({"role": "system", "content": system})
    aliases = _role_aliases(cols)
    for i, turn in enumerate(turns, start=1):
        messages.append(_turn(turn, i, col, cols, aliases))
    if messages[-1]["role"] != "assistant":
        raise RowProblem("the conversation does not end with an assistant reply", col)
    if not any(m["role"] == "user" for m in messages):
        raise RowProblem("the conversation has no user turn", col)
    sample = {"messages": messages}
    tools = _tools(data.get(cols.get("tools", "tools")), cols.get("tools", "tools"))
    if tools:
        sample["tools"] = tools
    return sample


def _role_aliases(cols: dict) -> dict:
    aliases = dict(ROLE_ALIASES)
    for tag, role in ROLE_TAGS.items():
        if cols.get(tag):
            aliases[str(cols[tag]).lower()] = role
    return aliases


def _turn(turn, i: int, col: str, cols: dict, aliases: dict) -> dict:
    if not isinstance(turn, dict):
        raise RowProblem(f"turn {i} of '{col}' should be an object, got {type_name(turn)}", col)
    raw_role = turn.get(cols["role"])
    if raw_role is None:
        raise RowProblem(f"turn {i} has no '{cols['role']}' (who speaks)", cols["role"])
    role = aliases.get(str(raw_role).lower())
    if role is None:
        raise RowProblem(f"turn {i} has unknown role {raw_role!r} (use user, assistant, system or tool)",
                         cols["role"])
    content = turn.get(cols["content"])
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is None:
        raise RowProblem(f"turn {i} has no '{cols['content']}' (the text)", cols["content"])
    if not isinstance(content, str):
        raise RowProblem(f"turn {i}: '{cols['content']}' should be text, got {type_name(content)}", cols["content"])
    if not content.strip() and role in ("user", "assistant"):
        raise RowProblem(f"turn {i} ({role}) is empty", cols["content"])
    return {"role": role, "content": content}


def _tools(value, col: str) -> list[dict] | None:
    """Tool descriptions as the chat template wants them: a list of JSON objects. LLaMA-Factory
    files keep them as a JSON string, often "[]"."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise RowProblem(f"field '{col}' is not valid JSON", col) from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RowProblem(f"field '{col}' should be a list of tool descriptions (JSON objects)", col)
    return value or None


def _from_preference(data: dict, cols: dict) -> dict:
    chosen = _pair_side(data, cols["chosen"], cols)
    _pair_side(data, cols["rejected"], cols)
    if cols["messages"] in data:
        turns = data[cols["messages"]]
        if not isinstance(turns, list):
            raise RowProblem(f"field '{cols['messages']}' should be a list of turns, got {type_name(turns)}",
                             cols["messages"])
        reply = chosen if isinstance(chosen, list) else [{cols["role"]: "assistant", cols["content"]: chosen}]
        return _from_chat({**data, cols["messages"]: list(turns) + reply}, cols, sharegpt=True)
    if isinstance(chosen, list):
        prompt = data.get(cols["prompt"])
        turns = (prompt if isinstance(prompt, list) else []) + chosen
        return _from_chat({"messages": turns}, columns_for("messages", {"messages": turns}), sharegpt=False)
    alpaca = {**cols, "instruction": cols["prompt"], "output": cols["chosen"]}
    return _from_alpaca({**data, cols["chosen"]: chosen}, alpaca)


def _pair_side(data: dict, col: str, cols: dict):
    """One side of a pair: text, a single turn ({from, value}) reduced to its text, or a list of
    messages. Raises RowProblem when it is missing, empty or of the wrong type."""
    value = data.get(col)
    if isinstance(value, dict):
        value = value.get(cols["content"], value.get("value", value.get("content")))
    if value is None:
        raise RowProblem(f"missing field '{col}'", col)
    if isinstance(value, list) and value:
        return value
    if not isinstance(value, str):
        raise RowProblem(f"field '{col}' should be text or a list of messages, got {type_name(value)}", col)
    if not value.strip():
        raise RowProblem(f"field '{col}' is empty", col)
    return value
