"""Output modifiers `| include|exclude|begin|section|count|json`, declared like any other command
in the FILTER mode; the walker reaches them through the `|` that output commands accept.
Each gets the session and the lines the command printed. Patterns are RE2 (shell/args.py
`regex`): linear time, so no typed pattern stalls the appliance."""

from __future__ import annotations

import json as jsonlib

from localdirector.shell.args import Pattern, regex
from localdirector.shell.grammar import Keyword, opt
from localdirector.shell.registry import Mode, command
from localdirector.shell.render import plain
from localdirector.shell.session import CommandFailed, Session


@command(Mode.FILTER, Keyword("include", "Lines that match"), regex())
def include(_session: Session, lines: list[str], pattern: Pattern) -> list[str]:
    return [line for line in lines if pattern.search(line)]


@command(Mode.FILTER, Keyword("exclude", "Lines that do not match"), regex())
def exclude(_session: Session, lines: list[str], pattern: Pattern) -> list[str]:
    return [line for line in lines if not pattern.search(line)]


@command(Mode.FILTER, Keyword("begin", "From the first line that matches"), regex())
def begin(_session: Session, lines: list[str], pattern: Pattern) -> list[str]:
    for index, line in enumerate(lines):
        if pattern.search(line):
            return lines[index:]
    return []


@command(Mode.FILTER, Keyword("section", "Lines that match, each with the indented "
                                          "lines under it"), regex())
def section(_session: Session, lines: list[str], pattern: Pattern) -> list[str]:
    """IOS's `| section`: a matching line that starts a block (not indented) brings the
    indented lines after it, as `show running-config | section router bgp` wants."""
    kept: list[str] = []
    inside = False
    for line in lines:
        indented = line[:1].isspace()
        if indented and inside:
            kept.append(line)
        elif pattern.search(line):
            kept.append(line)
            inside = not indented
        else:
            inside = False
    return kept


@command(Mode.FILTER, Keyword("count", "Count lines (that match)"), opt(regex()))
def count(_session: Session, lines: list[str], pattern: Pattern | None = None) -> list[str]:
    matched = sum(1 for line in lines if pattern is None or pattern.search(line))
    return [f"Number of lines which match regexp = {matched}"]


@command(Mode.FILTER, Keyword("json", "The same answer as JSON, for scripts"))
def json(session: Session, _lines: list[str]) -> list[str]:
    """A table becomes a list of objects, key/value output one object; field names are
    the headers in snake_case (man/localdirector.8 lists them)."""
    if session.data is None:
        raise CommandFailed("no JSON form for this command")
    return [jsonlib.dumps(plain(session.data), indent=2)]
