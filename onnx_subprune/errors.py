"""Error types: user errors (bad input, shown as one line, exit 1) versus internal bugs, and
the escaping that keeps names from a model or a data file on one line of a message."""

from __future__ import annotations

import unicodedata

_BREAKING = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # control and format (bidi) characters, lone surrogates, line/paragraph separators
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """``text`` with every character that could break or colour a terminal line (newlines,
    carriage returns, escape sequences, other control characters, U+2028/U+2029, undecodable
    bytes from a file name) written as a visible escape such as ``\\n`` or ``\\x1b``."""
    if text.isprintable():
        return text
    return "".join(_escape(char) if unicodedata.category(char) in _BREAKING else char for char in text)


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def quote(name: object) -> str:
    """A name taken from a model or a data file (tensor, node, array, path), quoted and escaped
    for a one-line message: ``'conv1'``, ``'a\\nb'``."""
    return "'" + one_line(str(name)).replace("'", "\\'") + "'"


class SubpruneError(Exception):
    """A problem with the user's input (model, calibration data, options).

    The CLI prints ``str(error)`` on one line of stderr and exits with status 1; the message is
    escaped by :func:`one_line` so that no name in it can break that line.
    """

    def __init__(self, message: str = ""):
        super().__init__(one_line(str(message)))


class ConfigError(SubpruneError):
    """An option of :class:`config.PruneConfig` out of range: ``option`` (the field name) and
    ``problem`` (what is wrong with its value)."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option} {problem}")
        self.option, self.problem = option, one_line(problem)


class UnsupportedPattern(SubpruneError):
    """The graph has no pattern the pruner can handle (e.g. nothing prunable)."""


class QualityError(SubpruneError):
    """The pruned model is further from the original than the user allowed; nothing is written."""


class InternalError(Exception):
    """A bug: the package disagrees with itself (e.g. the size model with the written model)."""
