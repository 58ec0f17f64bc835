"""The registry commands are declared into: `@command(modes, *syntax)` on the handler.

A declaration is the command's one description: the grammar walker reads it for parsing,
abbreviation, `?` help, Tab completion and error carets, and its saver makes the
running-config (docs/design.rst, "Command language"). The declarations themselves live
in `localdirector/commands/`, which registers into `REGISTRY` on import."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from .grammar import Jump, Keyword, Node, Opt, compile_syntax

if TYPE_CHECKING:
    from localdirector.model.director import Director


class Mode(Enum):
    """Where a command may be typed. FILTER holds the `| include ...` output modifiers."""

    USER = "user"
    PRIV = "priv"
    CONFIG = "config"
    FILTER = "filter"


EXEC = (Mode.USER, Mode.PRIV)

NO = Keyword("no", "Negate a command or set its defaults")
PIPE = Keyword("|", "Output modifiers")
_OUTPUT_MODIFIERS = Opt((PIPE, Jump(Mode.FILTER, "filter")))


# Running-config lines of one configuration command: the arguments after its keywords.
Saver = Callable[["Director"], Iterable[Sequence[object]]]


@dataclass(eq=False)
class Command:
    """One declaration. `handler(session, **captures)`; the derived `no` form calls the same
    handler with `no=True`. `handler` None makes a pure prefix such as `do`. `saver` is the
    command's inverse: the argument lists that recreate the model's state through it."""

    modes: tuple[Mode, ...]
    syntax: tuple
    handler: Callable[..., Any] | None
    output: bool = False
    negated: bool = False
    saver: Saver | None = None
    # False: the handler takes `director.lock` itself, around the model work only, so
    # slow work (password hashing, fsync) does not stall the data plane.
    locked: bool = True

    @property
    def keywords(self) -> str:
        """The leading keywords (`enable password`), which begin every saved line."""
        words: list[str] = []
        for element in self.syntax:
            if not isinstance(element, Keyword):
                break
            words.append(element.word)
        return " ".join(words)


def _no_syntax(syntax: Sequence[Any], required: int) -> tuple:
    """`no` + the first `required` elements; the rest become optional, in order, so
    `no weight REAL` and `no weight REAL 5` both read as the same command."""
    tail: tuple = ()
    for element in reversed(syntax[required:]):
        tail = (Opt((element, *tail)),)
    return (NO, *syntax[:required], *tail)


class Registry:
    def __init__(self) -> None:
        self.commands: list[Command] = []
        self._roots: dict[Mode, list[Node]] = {}

    def add(self, command: Command) -> Command:
        self.commands.append(command)
        self._roots.clear()
        return command

    def declare(self, modes: Mode | Sequence[Mode], *syntax: Any,
                handler: Callable[..., Any] | None = None, no: int | None = None,
                output: bool = False, saver: Saver | None = None,
                locked: bool = True) -> Command:
        modes = (modes,) if isinstance(modes, Mode) else tuple(modes)
        full = (*syntax, _OUTPUT_MODIFIERS) if output else tuple(syntax)
        command = self.add(Command(modes, full, handler, output, saver=saver,
                                   locked=locked))
        if no is not None:
            self.add(Command((Mode.CONFIG,), _no_syntax(syntax, no), handler, negated=True,
                             locked=locked))
        return command

    def command(self, modes: Mode | Sequence[Mode], *syntax: Any, no: int | None = None,
                output: bool = False, saver: Saver | None = None, locked: bool = True
                ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of `declare`. `no=N`: a `no` form requiring the first N elements.
        `output=True`: the command prints, so `| include ...` may follow it. `saver`: what
        `write terminal` prints for it, in declaration order. `locked=False`: the handler
        locks the model itself (see `Command.locked`)."""
        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            self.declare(modes, *syntax, handler=handler, no=no, output=output, saver=saver,
                         locked=locked)
            return handler
        return register

    def roots(self, mode: Mode) -> list[Node]:
        nodes = self._roots.get(mode)
        if nodes is None:
            nodes = [node for cmd in self.commands if mode in cmd.modes
                     for node in compile_syntax(cmd.syntax, cmd)]
            self._roots[mode] = nodes
        return nodes


REGISTRY = Registry()
command = REGISTRY.command
declare = REGISTRY.declare
