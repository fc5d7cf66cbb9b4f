"""The one error type a user sees for bad input: file, key path, what was expected. Exit code 2."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

EXIT_BAD_INPUT = 2


class WorkflowError(Exception):
    """Bad input: a workflow key, a data file, a model path.

    Args:
        message: what is wrong, in words a user can act on.
        file: the file concerned (workflow YAML, data file, model path), if any.
        key: the dotted key path in the workflow (e.g. ``unlearn.lr``), if any.
        expected: what would have been accepted.
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 expected: str | None = None):
        self.message, self.file, self.key, self.expected = message, file, key, expected
        super().__init__(self.render())

    def render(self) -> str:
        where = ": ".join(str(p) for p in (self.file, self.key) if p)
        text = f"{where}: {self.message}" if where else self.message
        if self.expected:
            text += f" (expected {self.expected})"
        return text


def read_utf8(path: Path, what: str, bad_byte: Callable[[int, str], WorkflowError]) -> str:
    """``path`` decoded as UTF-8. An unreadable file names ``what``; the first byte that is not
    UTF-8 becomes ``bad_byte(line, why)``, so each caller words it for its own kind of file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WorkflowError(f"cannot read the {what} ({exc.strerror})", file=str(path),
                            expected="a readable file") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise bad_byte(line, f"byte 0x{raw[exc.start]:02x} is not UTF-8 text") from None
