"""The value a prefix of a JSON text stands for so far, for object-delta events.

A model streaming structured output sends its JSON in pieces; a client wants
to see the object grow. `parse_partial('{"answer": "fo')` is
`{"answer": "fo"}`: an open string value is closed, open arrays and objects
are closed, and a trailing piece that cannot stand yet (a key without its
value, half a `true`, a number that may still grow, a dangling comma) is
dropped. `NOTHING` means nothing can be said yet.
"""

from __future__ import annotations

import json
from typing import Any

_NOTHING = object()


def parse_partial(prefix: str) -> Any:
    """The value so far; `NOTHING` when the prefix holds no value yet."""
    for candidate in _candidates(prefix):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return NOTHING


NOTHING: Any = _NOTHING


def _candidates(text: str) -> list[str]:
    """Completions of `text`, best first: the whole prefix closed (an open
    string value kept), then the last point at which a value was whole."""
    closers: list[str] = []  # "}" or "]", innermost last
    expecting_key: list[bool] = []  # per open object: is the next string a key?
    cut: tuple[int, list[str]] | None = None  # prefix end where everything before stands
    in_string = escaped = False
    string_is_key = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
                if string_is_key:
                    expecting_key[-1] = False
                else:
                    cut = (i + 1, list(closers))
            i += 1
            continue
        if c == '"':
            in_string = True
            string_is_key = bool(closers) and closers[-1] == "}" and expecting_key[-1]
            string_start = i
        elif c in "{[":
            closers.append("}" if c == "{" else "]")
            expecting_key.append(c == "{")
            cut = (i + 1, list(closers))
        elif c in "}]":
            if closers:
                closers.pop()
                expecting_key.pop()
            cut = (i + 1, list(closers))
        elif c == ",":
            if closers and closers[-1] == "}":
                expecting_key[-1] = True
        elif c not in ": \t\r\n":
            j = i
            while j < n and text[j] not in ",:}] \t\r\n":
                j += 1
            if j == n:  # a literal or number at the very end may still grow: leave it out
                return _from(cut, text)
            cut = (j, list(closers))
            i = j
            continue
        i += 1
    candidates = []
    if in_string and not string_is_key:
        candidates.append(_close(text[: _whole_escapes_end(text, string_start)] + '"', closers))
    return candidates + _from(cut, text)


def _whole_escapes_end(text: str, string_start: int) -> int:
    """Where an open string can be cut: before an escape that is not yet
    whole, and before a high surrogate whose low half has not arrived (a
    lone surrogate cannot be encoded to send on)."""
    end = i = string_start + 1
    while i < len(text):
        if text[i] != "\\":
            i += 1
            end = i
            continue
        if i + 1 >= len(text):
            break
        if text[i + 1] != "u":
            i += 2
            end = i
            continue
        if i + 6 > len(text):
            break
        unit = int(text[i + 2 : i + 6], 16) if all(c in "0123456789abcdefABCDEF" for c in text[i + 2 : i + 6]) else -1
        if 0xD800 <= unit < 0xDC00 and not (text[i + 6 : i + 8] == "\\u" and i + 12 <= len(text)):
            break  # the pair's second half is still to come
        i += 12 if 0xD800 <= unit < 0xDC00 else 6
        end = i
    return end


def _from(cut: tuple[int, list[str]] | None, text: str) -> list[str]:
    if cut is None:
        return []
    end, closers = cut
    return [_close(text[:end].rstrip().rstrip(","), closers)]


def _close(text: str, closers: list[str]) -> str:
    return text + "".join(reversed(closers))
