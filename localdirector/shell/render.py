"""Column-aligned tables: what every `show` prints, so they all read the same way; and
the same rows kept as data, for `| json` (docs/design.rst, "Command language")."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple


class Cell(NamedTuple):
    """A cell shown one way and meant another: `00:01:02` is 62 seconds, `unlimited`
    is maxconns 0. The table prints `text`; `| json` gives `value`."""

    text: str
    value: object

    def __str__(self) -> str:
        return self.text


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """Left-aligned columns two spaces apart; one pass for widths, one for lines, so
    100,000 rows cost linear time."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            if len(cell) > widths[i]:
                widths[i] = len(cell)
    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
    return [line(list(headers)), line(["-" * w for w in widths]), *map(line, cells)]


def field_name(header: str) -> str:
    """`Half-open` -> `half_open`: a header as a JSON field name, derived once, so the
    names stay as stable as the headers."""
    return re.sub(r"[^a-z0-9]+", "_", header.lower()).strip("_")


class Rows(NamedTuple):
    """A printed table's rows, kept unformatted; turned into objects only when `| json`
    asks, so a 100,000-row `show conns` costs nothing more without it."""

    fields: tuple[str, ...]
    rows: list[Sequence[object]]

    def records(self) -> list[dict[str, Any]]:
        return [{name: plain(cell) for name, cell in zip(self.fields, row)}
                for row in self.rows]


def plain(value: object) -> Any:
    """A cell as JSON: numbers and booleans as they are, `-` (nothing) as null, a
    `Cell` as its value, anything else as its text."""
    if isinstance(value, Cell):
        value = value.value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Rows):
        return value.records()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    text = str(value)
    return None if text == "-" else text


def elapsed(value: float) -> Cell:
    """A duration: `1d 02:03:04` on screen, whole seconds as data."""
    return Cell(duration(value), int(value))


def duration(seconds: float) -> str:
    """`1d 02:03:04` style, the way uptimes and idle times are read at a glance."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02}:{minutes:02}:{secs:02}"
    return f"{days}d {clock}" if days else clock
