"""Scripted use: commands from a pipe or file on standard input, output to standard
output, and an exit status that says whether every command succeeded."""

from __future__ import annotations

from collections.abc import Iterable

from .session import Session


def run_script(session: Session, lines: Iterable[str]) -> bool:
    """Execute each line; a line after one that asks a question (the enable password)
    is its answer."""
    ok = True
    source = iter(lines)
    for line in source:
        ok &= session.execute(line.rstrip("\r\n"))
        while session.question is not None:
            answer = next(source, None)
            if answer is None:
                session.question = None
                return False
            ok &= session.answer(answer.rstrip("\r\n"))
        if session.closed:
            break
    return ok
