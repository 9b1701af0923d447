"""Where each key of a TOML document is written: the line numbers tomllib does not give."""

from __future__ import annotations

import re
import tomllib

KeyPath = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")


class KeyLines:
    """Line numbers of the tables and keys of one TOML document."""

    def __init__(self, explicit: dict[KeyPath, int], implicit: dict[KeyPath, int]) -> None:
        self._explicit = explicit
        self._implicit = implicit

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of the nearest enclosing key or table that is written
        in the document; None when nothing of it is."""
        for end in range(len(path), 0, -1):
            prefix = path[:end]
            line = self._explicit.get(prefix) or self._implicit.get(prefix)
            if line is not None:
                return line
        return None


def index_lines(text: str) -> KeyLines:
    """Scan ``text`` for the line of every table header and key.

    ``text`` has already been parsed by tomllib, so it is valid TOML: the scanner only
    follows headers, keys, strings and brackets well enough to place each key.
    """
    scanner = _Scanner()
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            scanner.feed(number, line)
        except tomllib.TOMLDecodeError:  # a quoted key this scanner misread: skip it
            continue
    return KeyLines(scanner.explicit, scanner.implicit)


def key_path(path: KeyPath) -> str:
    """``path`` written the way a user reads it: clients.dracula.requires[0].max_age."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            key = part if _BARE.fullmatch(part) else _quote_key(part)
            text += f".{key}" if text else key
    return text


def _quote_key(key: str) -> str:
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Scanner:
    def __init__(self) -> None:
        self.explicit: dict[KeyPath, int] = {}
        self.implicit: dict[KeyPath, int] = {}
        self.table: KeyPath = ()
        self.arrays: dict[KeyPath, int] = {}  # array-of-tables path -> tables so far
        self.depth = 0  # open [ and { of a value spanning lines
        self.string: str | None = None  # the closing quotes of an open multi-line string

    def feed(self, number: int, line: str) -> None:
        value = line if self.depth or self.string else self._statement(number, line)
        self._scan_value(value)

    def _statement(self, number: int, line: str) -> str:
        """Record a header or key on this line; return the text of its value."""
        text = line.lstrip()
        if not text or text.startswith("#"):
            return ""
        if text.startswith("[["):
            self._array_header(number, _keys(text[2:])[0])
            return ""
        if text.startswith("["):
            self._header(number, _keys(text[1:])[0])
            return ""
        parts, rest = _keys(text)
        self._record(self.table + tuple(parts), number)
        return rest.lstrip()[1:]  # after the "="

    def _header(self, number: int, parts: list[str]) -> None:
        self.table = self._concrete(parts)
        self._record(self.table, number)

    def _array_header(self, number: int, parts: list[str]) -> None:
        array = (*self._concrete(parts[:-1]), parts[-1])
        index = self.arrays.get(array, 0)
        self.arrays[array] = index + 1
        self.implicit.setdefault(array, number)
        self.table = (*array, index)
        self._record(self.table, number)

    def _concrete(self, parts: list[str]) -> KeyPath:
        """A header's path, with the index of the current table of each array on it."""
        path: KeyPath = ()
        for part in parts:
            path += (part,)
            if path in self.arrays:
                path += (self.arrays[path] - 1,)
        return path

    def _record(self, path: KeyPath, number: int) -> None:
        self.explicit[path] = number
        for end in range(1, len(path)):
            self.implicit.setdefault(path[:end], number)

    def _scan_value(self, text: str) -> None:
        """Follow brackets and strings through ``text`` so that lines inside a
        multi-line array or string are never read as headers or keys."""
        i = 0
        while i < len(text):
            if self.string is not None:
                i = self._close_multiline(text, i)
                continue
            char = text[i]
            if char == "#":
                return
            if char in "[{":
                self.depth += 1
            elif char in "]}":
                self.depth -= 1
            elif text.startswith(('"""', "'''"), i):
                self.string = text[i : i + 3]
                i += 3
                continue
            elif char in "\"'":
                i = _string_end(text, i)
                continue
            i += 1

    def _close_multiline(self, text: str, i: int) -> int:
        assert self.string is not None
        escapes = self.string == '"""'
        while i < len(text):
            if escapes and text[i] == "\\":
                i += 2
            elif text.startswith(self.string, i):
                i += 3
                while i < len(text) and text[i] == self.string[0]:
                    i += 1  # up to two quotes may end the content itself
                self.string = None
                return i
            else:
                i += 1
        return i


def _keys(text: str) -> tuple[list[str], str]:
    """The parts of the dotted key at the start of ``text``, and the text after it."""
    parts: list[str] = []
    i = 0
    while True:
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] in "\"'":
            end = _string_end(text, i)
            parts.append(tomllib.loads(f"k = {text[i:end]}")["k"])
            i = end
        else:
            bare = _BARE.match(text, i)
            if bare is None:
                return parts, text[i:]
            parts.append(bare.group())
            i = bare.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i >= len(text) or text[i] != ".":
            return parts, text[i:]
        i += 1


def _string_end(text: str, start: int) -> int:
    """The index after the one-line string that opens at ``start``."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
        elif text[i] == quote:
            return i + 1
        else:
            i += 1
    return i
