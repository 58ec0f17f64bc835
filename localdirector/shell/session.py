"""One operator's conversation with the appliance, independent of how bytes arrive.

The console, SSH, telnet, a serial tty, the startup-config replay and the tests all drive
the same `Session`: `execute(line) -> ok`, `help_lines(text)` for `?`, `completions(text)`
for Tab. Output goes to `session.write(text)`, which each transport sets to its own sink."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from localdirector.model.director import Director, ModelError

from . import grammar
from .grammar import CommandError, Segment
from .registry import Mode, Registry
from .render import Rows, field_name, table

if TYPE_CHECKING:
    from localdirector.appliance import Appliance

log = logging.getLogger("localdirector")

HISTORY_SIZE = 256
DEFAULT_LENGTH = 24

_SUFFIX = {Mode.USER: ">", Mode.PRIV: "#", Mode.CONFIG: "(config)#"}

# What must never reach an operator's terminal from the model, a file or a log: control
# characters (an escape sequence in a damaged startup-config would drive other people's
# terminals) and lone surrogates (undecodable bytes, which no UTF-8 sink can encode).
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` safe for a terminal: a control character becomes '?', a lone surrogate
    U+FFFD; newlines and tabs stay."""
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(lambda m: "\ufffd" if m[0] >= "\ud800" else "?", text)


class CommandFailed(Exception):
    """A handler refusing a command; the text is printed after `% `."""


@dataclass(frozen=True)
class Question:
    prompt: str
    answer: Callable[[str], bool]
    secret: bool


class Session:
    def __init__(self, appliance: "Appliance", kind: str = "console", peer: str = "", *,
                 director: Director | None = None,
                 write: Callable[[str], None] | None = None,
                 interactive: bool = False) -> None:
        self.registry: Registry = appliance.registry
        self.appliance = appliance
        # A replay into a model that is not live yet (reload, --check) names it here.
        self._director = director
        self.kind = kind
        self.peer = peer
        self.id = 0
        self.mode = Mode.USER
        self.history: deque[str] = deque(maxlen=HISTORY_SIZE)
        self.write: Callable[[str], None] = write or (lambda _text: None)
        self.interactive = interactive
        # Scripted input is not on screen: errors repeat the line so the caret has context.
        self.echo_errors = not interactive
        self.terminal_length = DEFAULT_LENGTH if interactive else 0
        self.started = self.last_activity = time.time()
        self.closed = False
        self.killed_by: int | None = None    # the session that ran `kill` on this one
        self.on_close: Callable[[], None] | None = None
        # A question the transport must put to the operator before the next command
        # (the enable password, reload's confirmation); see `ask`.
        self.question: Question | None = None
        # Where failed passwords are counted (the peer's address; transports set it).
        self.source = peer or kind
        self.enable_failures = 0
        self.retry_at = 0.0   # time.monotonic() before which a secret is not checked
        self._out: list[str] = []
        # What the running command printed as data (`| json`): a table's rows, or the
        # fields of an object (docs/design.rst, "Command language").
        self.data: Rows | dict[str, object] | None = None

    @property
    def director(self) -> Director:
        return self._director or self.appliance.director

    @property
    def prompt(self) -> str:
        return self.director.settings.hostname + _SUFFIX.get(self.mode, "#")

    # -- what handlers call ---------------------------------------------------------
    def print(self, text: str = "") -> None:
        self._out.extend(text.split("\n"))

    def print_lines(self, lines: list[str]) -> None:
        self._out.extend(lines)

    def print_table(self, headers: Sequence[str], rows: Iterable[Sequence[object]], *,
                    fields: Sequence[str] | None = None, key: str | None = None,
                    empty: str | None = None) -> None:
        """A table on screen and as data: the command's whole answer, or with `key` one
        field of its object. Field names come from the headers unless `fields` names
        them; with no rows `empty` is printed instead (the data is then `[]`)."""
        rows = list(rows)
        if rows or empty is None:
            self._out.extend(table(headers, rows))
        else:
            self._out.append(empty)
        found = Rows(tuple(fields or map(field_name, headers)), rows)
        if key is None:
            self.data = found
        else:
            self.record(**{key: found})

    def record(self, **fields: object) -> None:
        """Fields of the command's answer as a JSON object (`show statistics`)."""
        if not isinstance(self.data, dict):
            self.data = {}
        self.data.update(fields)

    def ask(self, prompt: str, answer: Callable[[str], bool], secret: bool = False) -> None:
        """Ask the transport for one line (unechoed when `secret`: the enable password);
        `answer` gets it and may ask again. Only an interactive session is asked a
        confirmation: scripts have no one to answer (see `interactive`)."""
        self.question = Question(prompt, answer, secret)

    def close(self) -> None:
        """`exit`, `kill`, or the transport hanging up; safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        self.appliance.sessions.discard(self)
        if self.on_close is not None:
            self.on_close()

    # -- what transports call -------------------------------------------------------
    def answer(self, text: str) -> bool:
        question, self.question = self.question, None
        if question is None:
            return False
        try:
            ok = question.answer(text)
        except (CommandFailed, ModelError) as err:
            self.print(f"% {err}")
            ok = False
        self._flush()
        return ok

    def execute(self, line: str) -> bool:
        """Run one typed line; errors are reported IOS-style and leave the model unchanged."""
        self.last_activity = time.time()
        if line.strip():
            self.history.append(line.strip())
        prompt = self.prompt
        error = self.run(line)
        if error is None:
            return True
        self._emit(self.error_lines(line, error, prompt))
        return False

    def run(self, line: str) -> CommandError | None:
        """Parse fully, then run the handler under the model lock; the error, if any."""
        stripped = line.strip()
        if not stripped or stripped[0] in "!:":
            return None
        try:
            segments = grammar.parse(line, self, self.mode, self.registry.roots)
        except CommandError as err:
            return err
        main, modifier = _split_segments(segments)
        self._out = []
        self.data = None
        captures = dict(main.captures)
        if main.command.negated:
            captures["no"] = True
        try:
            with self.director.lock if main.command.locked else contextlib.nullcontext():
                main.command.handler(self, **captures)
            if modifier is not None:   # outside the lock: JSON of a big table takes a while
                lines, self._out = self._out, []
                self._out = modifier.command.handler(self, lines, **modifier.captures)
        except (ModelError, CommandFailed) as err:
            self._flush()
            return CommandError(f"% {err}")
        except Exception as err:  # a bug must not take the console down with it
            log.exception("command %r failed", line)
            self._flush()
            return CommandError(f"% Internal error: {err}")
        self._flush()
        return None

    def _flush(self) -> None:
        lines, self._out = self._out, []
        if lines:
            self._emit(lines)

    def _emit(self, lines: list[str]) -> None:
        """Every line a session shows goes out here, made safe for a terminal."""
        self.write(printable("".join(f"{text}\n" for text in lines)))

    def error_lines(self, line: str, error: CommandError, prefix: str,
                    echo: bool | None = None, label: str = "") -> list[str]:
        """IOS layout: the line (unless already on screen), a caret under the offending
        word, the message, then the reason when known. `prefix` stands before the line on
        screen (prompt, `line 3: `); `label` before the message, the reason indented to
        match, so a replay numbers each failure once."""
        echo = self.echo_errors if echo is None else echo
        lines = [prefix + line.rstrip()] if echo else []
        if error.column is not None:
            lines.append(" " * (len(prefix) + error.column) + "^")
        lines.append(label + error.message)
        if error.reason:
            lines.append(" " * len(label) + f"% {error.reason}")
        return lines

    def help_lines(self, text: str) -> list[str]:
        """What `?` prints below `prompt + text + ?`; the typed line itself stays as it is."""
        try:
            entries = grammar.help_entries(text, self, self.mode, self.registry.roots)
        except CommandError as err:
            return self.error_lines(text, err, self.prompt, echo=False)
        if not entries:
            return ["% Unrecognized command"]
        if text and not text[-1].isspace() and not any(h for _, h in entries):
            return ["  ".join(label for label, _ in entries)]
        width = max(len(label) for label, _ in entries)
        return [f"  {label.ljust(width)}  {help_}".rstrip() for label, help_ in entries]

    def completions(self, text: str) -> list[tuple[str, str]]:
        return grammar.completions(text, self, self.mode, self.registry.roots)


def _split_segments(segments: tuple[Segment, ...]) -> tuple[Segment, Segment | None]:
    """The command to run (past prefixes such as `do`) and the output modifier, if any."""
    main = next(s for s in segments if s.command.handler is not None and s.role != "filter")
    modifier = next((s for s in segments if s.role == "filter"), None)
    return main, modifier
