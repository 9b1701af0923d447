"""Glob patterns for ``find``, rendered as SQLite GLOB or PostgreSQL regular expressions.

The syntax is fnmatch's: ``*`` (any run of characters, '/' included), ``?`` (one
character), ``[abc]``, ``[a-z]``, ``[!abc]``; there is no escape character, so a
literal ``*`` is written ``[*]``. The literal prefix before the first wildcard is kept
apart, so the query can narrow an indexed column to a range before matching.
"""

from __future__ import annotations

from dataclasses import dataclass

# One token: ("lit", text) | ("any", "") | ("one", "") | ("set", body) | ("notset", body)
Token = tuple[str, str]

_REGEX_SPECIAL = set(".^$|?*+()[]{}\\")


@dataclass(frozen=True)
class Glob:
    pattern: str
    tokens: tuple[Token, ...]

    @property
    def literal(self) -> str | None:
        """The whole pattern when it has no wildcards, else None."""
        if all(kind == "lit" for kind, _ in self.tokens):
            return "".join(text for _, text in self.tokens)
        return None

    @property
    def prefix(self) -> str:
        """The literal text every match starts with."""
        out = []
        for kind, text in self.tokens:
            if kind != "lit":
                break
            out.append(text)
        return "".join(out)

    def lower(self) -> Glob:
        return parse_glob(self.pattern.lower())

    def sqlite_glob(self) -> str:
        out = []
        for kind, text in self.tokens:
            if kind == "lit":
                out.append("".join(f"[{c}]" if c in "*?[" else c for c in text))
            elif kind == "any":
                out.append("*")
            elif kind == "one":
                out.append("?")
            else:
                out.append(("[^" if kind == "notset" else "[") + text + "]")
        return "".join(out)

    def regex(self) -> str:
        """An anchored PostgreSQL (ARE) regular expression with the same meaning."""
        out = ["^"]
        for kind, text in self.tokens:
            if kind == "lit":
                out.append("".join("\\" + c if c in _REGEX_SPECIAL else c for c in text))
            elif kind == "any":
                out.append(".*")
            elif kind == "one":
                out.append(".")
            else:
                body = "".join("\\" + c if c in "\\[]^" else c for c in text)
                out.append(("[^" if kind == "notset" else "[") + body + "]")
        out.append("$")
        return "".join(out)


def parse_glob(pattern: str) -> Glob:
    tokens: list[Token] = []
    literal: list[str] = []

    def flush() -> None:
        if literal:
            tokens.append(("lit", "".join(literal)))
            literal.clear()

    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            flush()
            if not tokens or tokens[-1][0] != "any":
                tokens.append(("any", ""))
            i += 1
        elif c == "?":
            flush()
            tokens.append(("one", ""))
            i += 1
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] == "!"
            if negate:
                j += 1
            if j < n and pattern[j] == "]":  # a leading ']' is a member, as in fnmatch
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: the '[' is an ordinary character
                literal.append(c)
                i += 1
                continue
            body = pattern[i + (2 if negate else 1) : j]
            if len(body) == 1 and not negate:
                literal.append(body)  # "[*]": a quoted single character
            else:
                flush()
                tokens.append(("notset" if negate else "set", body))
            i = j + 1
        else:
            literal.append(c)
            i += 1
    flush()
    return Glob(pattern, tuple(tokens))


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string above every string that starts with ``prefix`` (code point order)."""
    for cut in range(len(prefix) - 1, -1, -1):
        code = ord(prefix[cut])
        # Skip the surrogate block: it cannot be stored, so it cannot bound anything.
        if code < 0x10FFFF:
            bumped = code + 1 if code + 1 not in range(0xD800, 0xE000) else 0xE000
            return prefix[:cut] + chr(bumped)
    return None
