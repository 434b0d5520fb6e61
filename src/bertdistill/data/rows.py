"""Reading data files row by row: UTF-8 decoding with the file and line of a bad byte, and what to do with a
row that cannot be read (``data.bad_rows``).

A malformed row (too few fields, a label outside the task's label set, a JSONL line that is not an object
with the text fields) stops the run with ``file:line`` and what is wrong (``data.bad_rows: error``, the
default), or is skipped and counted (``skip``). Skipped rows are never only a log line: every reader reports
them to the :func:`skipped_rows` collector that is open around it — the training loop opens one while it
builds its datasets and writes the counts to ``metrics.json`` (``data.skipped_rows``).
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from ..config import ConfigError

log = logging.getLogger(__name__)

BAD_ROWS = ("error", "skip")

_collector: ContextVar[dict[str, int] | None] = ContextVar("bertdistill_skipped_rows", default=None)


@contextmanager
def skipped_rows() -> Iterator[dict[str, int]]:
    """Collect ``{file: rows skipped}`` from every reader run inside the block (nested blocks each see their
    own rows)."""
    counts: dict[str, int] = {}
    token = _collector.set(counts)
    try:
        yield counts
    finally:
        _collector.reset(token)


def text_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file, line endings kept (what ``csv`` reads with ``newline=""``) and a
    leading BOM dropped. A byte that is not UTF-8 is a :class:`ConfigError` naming the file, line and column
    (instead of a ``UnicodeDecodeError`` traceback), with how to fix it."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(
                    f"{path}:{lineno}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is not UTF-8; re-encode "
                    f"the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`)"
                ) from None


class RowPolicy:
    """What a reader does with a row it cannot use: raise (``error``) or skip and count it (``skip``)."""

    def __init__(self, path: Path, mode: str) -> None:
        if mode not in BAD_ROWS:
            raise ConfigError(f"data.bad_rows must be one of {list(BAD_ROWS)}, got {mode!r}")
        self.path = path
        self.mode = mode
        self.skipped = 0

    def bad(self, lineno: int, why: str) -> None:
        """Row ``lineno`` is unusable because ``why``: raise, or count it and return (the caller drops it)."""
        if self.mode == "error":
            raise ConfigError(
                f"{self.path}:{lineno}: {why}; fix the row, or set data.bad_rows: skip to drop such rows"
            )
        self.skipped += 1

    def done(self) -> None:
        """Report the skipped rows to the open collector (and the log)."""
        if not self.skipped:
            return
        log.warning("%s: skipped %d malformed row(s) (data.bad_rows: skip)", self.path, self.skipped)
        counts = _collector.get()
        if counts is not None:
            counts[str(self.path)] = counts.get(str(self.path), 0) + self.skipped
