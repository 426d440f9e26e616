"""Core's error messages in Chinese, for the 简体中文 UI.

Core writes its messages in English, as f-strings, and the command line prints them as they are.
messages_zh.json maps each message's template, as written in the source ("no run '{}'", one `{}`
per value), to its Chinese ("没有运行 '{0}'"). A message is matched against the templates as a
whole and its values are carried over; a message no template matches is shown in English. A few
entries are texts that travel inside messages (hints, Python's json errors).
tests/test_messages_zh.py checks that every message core raises has its entry.
"""
from __future__ import annotations

import functools
import json
import re
import string
from pathlib import Path

TABLE = Path(__file__).with_name("messages_zh.json")


@functools.cache
def _patterns() -> list[tuple[re.Pattern, list[bool], str]]:
    """Each template as a regex with one group per value, which values are names (kept as written:
    quoted in the English, or marked `{N!n}` in the Chinese), and the Chinese to fill; the most
    specific template (most fixed text) first."""
    found = []
    for en, zh in json.loads(TABLE.read_text(encoding="utf-8")).items():
        parts = list(string.Formatter().parse(en))
        regex = "".join(re.escape(text) + ("(.*?)" if name is not None else "") for text, name, _, _ in parts)
        after = [p[0] for p in parts[1:]] + [""]         # the text that follows each value
        names = [text.endswith("'") and follows.startswith("'")
                 for (text, name, _, _), follows in zip(parts, after) if name is not None]
        for _, name, _, conversion in string.Formatter().parse(zh):
            if conversion == "n":
                names[int(name)] = True
        fixed = sum(len(text) for text, _, _, _ in parts)
        found.append((fixed, re.compile(regex, re.S), names, re.sub(r"!n}", "}", zh)))
    found.sort(key=lambda item: -item[0])
    return [(rx, names, zh) for _, rx, names, zh in found]


# Lists core writes inside a message: bulleted lines (the out-of-memory advice) and changes joined
# with "; " (a combined suggestion), with the separator each takes in Chinese.
LISTS = (("\n- ", "\n- "), ("; ", "；"))


def translated(text: str | None, lang: str, depth: int = 2) -> str | None:
    """`text` in the UI's language. A value that is itself a whole message ("at least 1", "a list",
    "failed") is translated too, unless it is a name. A list no template matches as a whole is
    translated item by item, when every item has its template."""
    if lang != "zh" or not text:
        return text
    for rx, names, zh in _patterns():
        m = rx.fullmatch(text)
        if m:
            values = [v if name or not depth else translated(v, lang, depth - 1) for v, name in zip(m.groups(), names)]
            return zh.format(*values)
    for sep, zh_sep in LISTS:
        items = text.split(sep)
        if len(items) > 1:
            done = [translated(item, lang, depth) for item in items]
            if all(d != item or not item for d, item in zip(done, items)):
                return zh_sep.join(done)
    return text
