"""Output modifiers `| include|exclude|begin|count`, declared like any other command in
the FILTER mode; the walker reaches them through the `|` that output commands accept.
Patterns are RE2 (shell/args.py `regex`): linear time, so no typed pattern stalls the
appliance."""

from __future__ import annotations

from localdirector.shell.args import Pattern, regex
from localdirector.shell.grammar import Keyword, opt
from localdirector.shell.registry import Mode, command


@command(Mode.FILTER, Keyword("include", "Lines that match"), regex())
def include(lines: list[str], pattern: Pattern) -> list[str]:
    return [line for line in lines if pattern.search(line)]


@command(Mode.FILTER, Keyword("exclude", "Lines that do not match"), regex())
def exclude(lines: list[str], pattern: Pattern) -> list[str]:
    return [line for line in lines if not pattern.search(line)]


@command(Mode.FILTER, Keyword("begin", "From the first line that matches"), regex())
def begin(lines: list[str], pattern: Pattern) -> list[str]:
    for index, line in enumerate(lines):
        if pattern.search(line):
            return lines[index:]
    return []


@command(Mode.FILTER, Keyword("count", "Count lines (that match)"), opt(regex()))
def count(lines: list[str], pattern: Pattern | None = None) -> list[str]:
    matched = sum(1 for line in lines if pattern is None or pattern.search(line))
    return [f"Number of lines which match regexp = {matched}"]
