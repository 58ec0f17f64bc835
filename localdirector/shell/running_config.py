"""The running configuration as command lines: the exact inverse of replaying them.

Each configuration command declares its own `saver`, so the text that recreates a field
lives next to the handler that sets it; this module only strings them together, in
declaration order (names before the servers that use them, servers before binds, ...).
Every line is in its canonical form, defaults omitted (man/localdirector.8, "Running
configuration"): typed back, it is shown identically."""

from __future__ import annotations

from localdirector.model.director import Director
from localdirector.model.serverid import ServerId

from .registry import Registry

HEADER = "! localdirector configuration"


def _word(arg: object) -> str:
    """A saved argument as typed: server ids in their short canonical form."""
    return arg.short() if isinstance(arg, ServerId) else str(arg)


def render(director: Director, registry: Registry) -> list[str]:
    lines = [HEADER]
    for command in registry.commands:
        if command.saver is None:
            continue
        section = [" ".join([command.keywords, *map(_word, args)])
                   for args in command.saver(director)]
        if section:
            lines.extend(section)
            lines.append("!")
    return lines
