"""IOS's line discipline, for clients that are not full terminals (docs/design.rst,
"Operator access").

Expect-style automation (Netmiko, Ansible `network_cli`, config backup, `expect`) reads
what a router prints: the echo of each typed character, the prompt once per line, the
command's output. A line editor that redraws the prompt and wraps every keystroke in
cursor sequences puts prompts where such a reader cannot find them. So a client that
does not answer the cursor-position request at session start (or says TERM=dumb) gets
this: plain echo, backspace as `\\b \\b`, `?` and Tab printing below and re-printing the
prompt and the line, and not one escape sequence."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import threading
from collections.abc import Callable, Iterator

from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyPress
from prompt_toolkit.keys import Keys
from prompt_toolkit.output import Output

from .session import Session

# Seconds a terminal has to answer the cursor-position request: a person's terminal
# answers within a round trip; automation never does, and waits this long once.
CPR_WAIT = 0.5
# Terminal types that are plain whatever they answer (and are not asked).
PLAIN_TERMS = frozenset({"", "dumb", "unknown"})
CPR_REQUEST = "\x1b[6n"
MORE = " --More-- "


async def probe(input: Input, output: Output) -> tuple[bool, list[KeyPress]]:
    """Whether the client is a full terminal, and the keys it sent meanwhile (typed
    ahead: they belong to the first line). The cursor-position request is the one
    escape sequence a plain client ever receives; stock automation strips it."""
    term = (getattr(output, "term", None) or "").lower()
    if term in PLAIN_TERMS:
        return False, []
    answered = asyncio.Event()
    typed: list[KeyPress] = []

    def ready() -> None:
        for key in input.read_keys():
            if key.key == Keys.CPRResponse:
                answered.set()
            else:
                typed.append(key)
        if input.closed:
            answered.set()

    with _listening(input, ready):
        output.write_raw(CPR_REQUEST)
        output.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered.wait(), CPR_WAIT)
    return answered.is_set() and not input.closed, typed


@contextlib.contextmanager
def _listening(input: Input, ready: Callable[[], None]) -> Iterator[None]:
    """Keys as they arrive, the terminal raw (no echo of its own, no line buffering)."""
    with input.raw_mode(), input.attach(ready):
        yield


class LineTerminal:
    """The plain front end: reads keys, echoes them, hands whole lines to the shell."""

    def __init__(self, input: Input, output: Output, typed: list[KeyPress],
                 max_line: int, too_long: str) -> None:
        self.session: Session | None = None     # none yet at a login prompt
        self.input = input
        self.output = output
        self.keys: asyncio.Queue[KeyPress | None] = asyncio.Queue()
        for key in typed:
            self.keys.put_nowait(key)
        self.max_line = max_line
        self.too_long = too_long
        self._after_cr = False
        self._stack = contextlib.ExitStack()
        # The prompt and the typed text on screen while a line is read (None between
        # lines): a log message is printed on a line of its own, then this again.
        self._shown: str | None = None

    def use(self, session: Session) -> None:
        self.session = session

    def __enter__(self) -> "LineTerminal":
        self._stack.enter_context(_listening(self.input, self._ready))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _ready(self) -> None:
        for key in self.input.read_keys():
            self.keys.put_nowait(key)
        if self.input.closed:
            self.keys.put_nowait(None)

    def stop(self) -> None:
        """From `kill` (any thread, through the loop): the pending read ends in EOF."""
        self.keys.put_nowait(None)

    def message(self, text: str) -> None:
        """A log message from another thread (on the loop): IOS `logging synchronous`,
        so what an expect script reads still has the prompt and the typed line whole."""
        if self._shown is None:
            self.write(text)
        else:
            self.write("\n" + text + self._shown)

    @contextlib.contextmanager
    def synchronous_output(self) -> Iterator[None]:
        """While the console runs: what other threads print (the log) goes through
        `message`, a whole line at a time."""
        messages = _Messages(self, asyncio.get_running_loop())
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = messages
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved
            messages.flush()

    def write(self, text: str) -> None:
        self.output.write_raw(text)
        self.output.flush()

    async def _key(self) -> KeyPress:
        key = await self.keys.get()
        if key is None:
            self.keys.put_nowait(None)     # every later read ends too
            raise EOFError
        return key

    async def read_line(self, prompt: str, secret: bool = False,
                        answer: bool = False) -> tuple[str, bool]:
        """One line and whether it ended with Ctrl-Z. Enter is CR, LF or CR LF. An
        `answer` to a question takes `?` and Tab as text: they help with commands."""
        try:
            return await self._read_line(prompt, secret, answer)
        finally:
            self._shown = None

    async def _read_line(self, prompt: str, secret: bool, answer: bool) -> tuple[str, bool]:
        commands = self.session is not None and not answer
        self.write(prompt)
        text = ""
        while True:
            self._shown = prompt if secret else prompt + text
            key = await self._key()
            after_cr, self._after_cr = self._after_cr, key.key == Keys.ControlM
            if key.key == Keys.ControlJ and after_cr:
                continue
            if key.key in (Keys.ControlM, Keys.ControlJ):
                self.write("\n")
                return text, False
            if key.key == Keys.ControlZ:
                self.write("^Z\n")
                return text, True
            if key.key == Keys.ControlC:
                self.write("^C\n")
                raise KeyboardInterrupt
            if key.key == Keys.ControlD and not text:
                self.write("\n")
                raise EOFError
            if key.key in (Keys.Backspace, Keys.ControlH):
                if text:
                    text = text[:-1]
                    if not secret:
                        self.write("\b \b")
            elif key.key == Keys.ControlU:
                if not secret:
                    self.write("\b \b" * len(text))
                text = ""
            elif secret:
                if len(key.data) == 1 and key.data.isprintable():
                    text += key.data
            elif key.key == "?" and commands:
                self._help(self.session, prompt, text)
            elif key.key == Keys.ControlI and commands:
                text = self._complete(self.session, prompt, text)
            elif len(key.data) == 1 and key.data.isprintable():
                if len(text) >= self.max_line:
                    continue
                text += key.data
                self.write(key.data)
                if len(text) == self.max_line:
                    self.write(f"\n{self.too_long}\n{prompt}{text}")
            # anything else (arrow keys, function keys, stray controls) is ignored

    def _help(self, session: Session, prompt: str, text: str) -> None:
        listing = "".join(f"{line}\n" for line in session.help_lines(text))
        self.write(f"?\n{listing}{prompt}{text}")

    def _complete(self, session: Session, prompt: str, text: str) -> str:
        """One completion extends the line; several are listed under it."""
        partial = "" if not text or text[-1].isspace() else text.split()[-1]
        words = [word for word, _help in session.completions(text)]
        if len(words) == 1:
            added = words[0][len(partial):] + " "
            self.write(added)
            return text + added
        if words:
            self.write("\n" + "  ".join(words) + f"\n{prompt}{text}")
        return text

    async def read_answer(self, prompt: str, secret: bool = True) -> str:
        """The answer to a question (a password unechoed), not a command line."""
        text, _ = await self.read_line(prompt, secret=secret, answer=True)
        return text

    async def more(self) -> str:
        """`--More--`, drawn and then blanked with spaces and carriage returns only."""
        self.write(MORE)
        self._shown = MORE
        try:
            key = await self._key()
        finally:
            self._shown = None
        self.write("\r" + " " * len(MORE) + "\r")
        return {" ": "page", Keys.ControlM: "line", Keys.ControlJ: "line"}.get(key.key, "quit")


class _Messages(io.TextIOBase):
    """sys.stdout/sys.stderr of the console in plain mode: whole lines to the front end,
    on its event loop (writes come from any thread)."""

    def __init__(self, front: LineTerminal, loop: asyncio.AbstractEventLoop) -> None:
        self.front = front
        self.loop = loop
        self.pending = ""
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            self.pending += text
            if "\n" not in self.pending:
                return len(text)
            whole, _, self.pending = self.pending.rpartition("\n")
        self._send(whole + "\n")
        return len(text)

    def flush(self) -> None:
        with self.lock:
            rest, self.pending = self.pending, ""
        if rest:
            self._send(rest + "\n")

    def _send(self, text: str) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.front.message, text)
