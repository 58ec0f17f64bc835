"""The startup-config file: replayed line by line at boot, saved atomically.

A crash during `write memory` must never leave half a file, so the text goes to a
temporary file in the same directory, is fsynced, and is renamed over the old one (and
the directory is fsynced so the rename itself survives a power cut). A full or
read-only disk fails before the rename, so the old file stays as it was.

A damaged file must still boot: every line that reads as a command is applied and
every other one reported with its number. Bytes that are not UTF-8 spoil only their
own line (decoded with ``surrogateescape``, they become lone surrogates that no typed
or saved text contains, and such a line is refused whole rather than half-applied)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import grammar
from .registry import Mode
from .session import Session

if TYPE_CHECKING:
    from localdirector.appliance import Appliance
    from localdirector.model.director import Director


NOT_TEXT = "% not UTF-8 text; line ignored"
# Reports echo bad lines: a control character in them (a damaged file holds anything)
# becomes one '?', which keeps the caret under the right column and the terminal sane.
_PRINTABLE = {code: "?" for code in (*range(0x20), 0x7F)}


def read(path: Path) -> list[str] | None:
    """The file's lines, or None when there is no startup-config at all."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data.decode("utf-8", "surrogateescape").splitlines()


def _undecodable(line: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in line)


def _not_configuration(session: Session, line: str) -> bool:
    """Whether `line` reads as a command no running-config holds: `do ...` (an exec
    command), `end`, a `no` form, `in-service ...`. A line that does not parse runs
    nothing and is reported as any other bad line."""
    try:
        segments = grammar.parse(line, session, Mode.CONFIG, session.registry.roots)
    except grammar.CommandError:
        return False
    return any(segment.command.saver is None for segment in segments)


def replay(appliance: "Appliance", director: "Director", lines: list[str],
           report: Callable[[str], None], saved_only: bool = False) -> int:
    """Apply every line as if typed in configuration mode; a bad line is reported with its
    number and the rest still applies. Returns how many lines failed. `saved_only`: a
    line that is not what a running-config holds is refused (the configuration the
    other unit of a failover pair sends must not run exec commands here).

    What an accepted line prints is reported too, under its number: a line taken from
    another appliance's configuration (a LocalDirector's `ip address`, `syslog output`)
    is accepted with a note saying what it became, and a note nobody sees would be a
    line silently ignored."""
    printed: list[str] = []
    session = Session(appliance, "startup", director=director, write=printed.append)
    failures = 0
    for number, line in enumerate(lines, 1):
        if _undecodable(line):
            failures += 1
            report(f"line {number}: {NOT_TEXT}")
            continue
        session.mode = Mode.CONFIG
        if saved_only and _not_configuration(session, line):
            failures += 1
            report(f"line {number}: % not a configuration command; refused: "
                   f"{line.translate(_PRINTABLE)}")
            continue
        printed.clear()
        error = session.run(line)
        if error is None:
            for text in "".join(printed).splitlines():
                report(f"line {number}: {text}".translate(_PRINTABLE))
            continue
        failures += 1
        prefix = f"line {number}: "
        for text in session.error_lines(line, error, prefix, echo=True, label=prefix):
            report(text.translate(_PRINTABLE))
    return failures


def save(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def erase(path: Path) -> bool:
    """`write erase`; False when there was nothing to erase."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
