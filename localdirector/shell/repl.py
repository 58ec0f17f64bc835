"""The interactive front end: prompt_toolkit around a `Session`.

Transports (console, SSH, telnet, serial) call `run_shell_async(session)` inside a
prompt_toolkit app session bound to their input/output (asyncssh's
`PromptToolkitSSHServer` sets that up per connection); the console uses `run_shell`.
`?` help, Tab completion, Ctrl-Z and `--More--` paging all live here, and all of them
ask the session, which asks the one grammar walker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable

from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application, get_app, get_app_session, run_in_terminal
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.filters import Condition
from prompt_toolkit.key_binding import (KeyBindings, KeyPress, KeyPressEvent,
                                        merge_key_bindings)
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout import Layout, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.output import Output
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.shortcuts import CompleteStyle, print_formatted_text

from . import linemode
from .registry import Mode
from .session import Session


# The longest line a prompt takes (IOS takes about as much): past it typed or pasted
# characters are dropped, with one message per line. Editing a line costs prompt_toolkit
# work and undo memory per keystroke that grows with the line, so a pasted megabyte
# would cost gigabytes and minutes; 512 characters cost nothing.
MAX_LINE = 512
# The longest pause after a refused secret; a longer lockout is refused, not waited out.
MAX_PAUSE = 2.0
TOO_LONG = f"% Line too long: characters after the first {MAX_LINE} dropped"
# What Enter on a line at the cap prints instead of running it (IOS refuses such a line):
# its end was lost, and what is left may be another valid command (a `no` cut short).
NOT_RUN = f"% Line too long: not run (a command line is shorter than {MAX_LINE} characters)"


class CtrlZ(str):
    """What the prompt returns on Ctrl-Z: the line typed so far (run, then `end`)."""


class ShellCompleter(Completer):
    def __init__(self, session: Session) -> None:
        self.session = session

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        partial = "" if not text or text[-1].isspace() else text.split()[-1]
        for word, help_ in self.session.completions(text):
            yield Completion(word + " ", -len(partial), display=word, display_meta=help_)


def shell_key_bindings(session: Session) -> KeyBindings:
    """`?` lists what may come next and keeps the line; Ctrl-Z leaves configuration mode."""
    bindings = KeyBindings()

    @bindings.add("?")
    def _help(event: KeyPressEvent) -> None:
        text = event.current_buffer.document.text_before_cursor
        listing = "\n".join([session.prompt + text + "?", *session.help_lines(text)])
        run_in_terminal(lambda: print_formatted_text(listing))

    @bindings.add("c-z")
    def _end(event: KeyPressEvent) -> None:
        event.app.exit(result=CtrlZ(event.current_buffer.text))

    return bindings


def line_limit_bindings() -> KeyBindings:
    """MAX_LINE for any prompt: keys past it are dropped, a paste is cut line by line."""
    bindings = KeyBindings()
    warned: set[int] = set()      # ids of the buffers told already, for their current line

    def shortened(buffer: Buffer) -> None:
        if len(buffer.text) < MAX_LINE:
            warned.discard(id(buffer))
            buffer.on_text_changed -= shortened

    def warn(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if id(buffer) not in warned:
            warned.add(id(buffer))
            buffer.on_text_changed += shortened
            run_in_terminal(lambda: print_formatted_text(TOO_LONG))

    full = Condition(lambda: len(get_app().current_buffer.text) >= MAX_LINE)

    @bindings.add(Keys.Any, filter=full)
    def _drop(event: KeyPressEvent) -> None:
        warn(event)

    @bindings.add(Keys.BracketedPaste)
    def _paste(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        lines = event.data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        room = max(0, MAX_LINE - len(buffer.text))
        kept = [lines[0][:room], *(line[:MAX_LINE] for line in lines[1:])]
        if kept != lines:
            warn(event)
        buffer.insert_text("\n".join(kept))

    return bindings


def make_prompt_session(session: Session, input: Input | None = None,
                        output: Output | None = None) -> PromptSession:
    return PromptSession(completer=ShellCompleter(session),
                         key_bindings=merge_key_bindings([line_limit_bindings(),
                                                          shell_key_bindings(session)]),
                         complete_style=CompleteStyle.READLINE_LIKE,
                         complete_while_typing=False, history=InMemoryHistory(),
                         input=input, output=output)


async def _more(input: Input | None, output: Output | None) -> str:
    """One key at `--More--`: space a page, Enter a line, anything else stops."""
    bindings = KeyBindings()

    @bindings.add(Keys.Any)
    def _any(event: KeyPressEvent) -> None:
        key = event.key_sequence[0].key
        event.app.exit(result={" ": "page", Keys.ControlM: "line",
                               Keys.ControlJ: "line"}.get(key, "quit"))

    app: Application[str] = Application(
        layout=Layout(Window(FormattedTextControl(" --More-- "), height=1)),
        key_bindings=bindings, erase_when_done=True, input=input, output=output)
    return await app.run_async()


async def page(text: str, length: int, show: Callable[[str], None],
               more: Callable[[], Awaitable[str]]) -> None:
    """Print `text`, stopping every `length - 1` lines at `--More--` (length 0: never)."""
    lines = text.splitlines(keepends=True)
    step = length - 1
    if length <= 1 or len(lines) <= step:
        show(text)
        return
    shown = 0
    count = step
    while shown < len(lines):
        show("".join(lines[shown:shown + count]))
        shown += count
        if shown >= len(lines):
            break
        action = await more()
        if action == "quit":
            break
        count = step if action == "page" else 1


class Editor:
    """The front end of a full terminal: prompt_toolkit's line editor."""

    def __init__(self, input: Input, output: Output, typed: list[KeyPress]) -> None:
        self.input = input
        self.output = output
        self.typed = typed
        self.prompt: PromptSession | None = None

    def use(self, session: Session) -> None:
        self.prompt = make_prompt_session(session, self.input, self.output)

    def __enter__(self) -> "Editor":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def stop(self) -> None:
        if self.prompt is not None and self.prompt.app.is_running:
            self.prompt.app.exit(exception=EOFError())

    def _type_ahead(self) -> None:
        """Keys that arrived while the terminal was probed go to the first prompt."""
        typed, self.typed = self.typed, []
        if typed and self.prompt is not None:
            self.prompt.app.key_processor.feed_multiple(typed)

    async def read_line(self, prompt: str) -> tuple[str, bool]:
        assert self.prompt is not None, "use(session) first"
        line = await self.prompt.prompt_async(prompt, pre_run=self._type_ahead)
        return line, isinstance(line, CtrlZ)

    async def read_answer(self, prompt: str, secret: bool = True) -> str:
        """The answer to a question (a password unechoed), not a command line."""
        return await PromptSession(
            input=self.input, output=self.output, key_bindings=line_limit_bindings()
        ).prompt_async(prompt, is_password=secret)

    def write(self, text: str) -> None:
        print_formatted_text(text, end="", output=self.output)

    def synchronous_output(self) -> contextlib.AbstractContextManager[object]:
        """What other threads print goes above the prompt, which is drawn again."""
        return patch_stdout(raw=True)

    async def more(self) -> str:
        return await _more(self.input, self.output)


Front = Editor | linemode.LineTerminal


def plain_front(input: Input | None = None, output: Output | None = None) -> Front:
    """The line discipline whatever the terminal (a serial line's "Press RETURN")."""
    return linemode.LineTerminal(input or get_app_session().input,
                                 output or get_app_session().output, [], MAX_LINE, TOO_LONG)


async def open_front(input: Input | None = None, output: Output | None = None) -> Front:
    """The front end this client gets, once per connection: a full terminal the line
    editor; a client that is not one (it does not answer the cursor-position request, or
    TERM says `dumb`) IOS's line discipline (shell/linemode.py), which automation reads.
    Enter it (`with front:`) around everything said and asked on this terminal."""
    input = input or get_app_session().input
    output = output or get_app_session().output
    full, typed = await linemode.probe(input, output)
    if full:
        return Editor(input, output, typed)
    return linemode.LineTerminal(input, output, typed, MAX_LINE, TOO_LONG)


async def run_shell_async(session: Session, front: Front) -> None:
    """Prompt, execute, page the output, until `exit`, Ctrl-D, hang-up or `kill`."""
    front.use(session)
    pending: list[str] = []
    session.write = pending.append
    loop = asyncio.get_running_loop()
    session.on_close = lambda: loop.call_soon_threadsafe(front.stop)

    async def flush() -> None:
        text = "".join(pending)
        pending.clear()
        if text:
            await page(text, session.terminal_length, front.write, front.more)

    try:
        while not session.closed:
            try:
                line, ctrl_z = await front.read_line(session.prompt)
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            # A pasted block arrives as one buffer: run it line by line, as typed.
            for part in line.split("\n"):
                if len(part) >= MAX_LINE:
                    session.write(NOT_RUN + "\n")
                elif part.strip() and not session.closed:
                    session.execute(part)
            if ctrl_z and session.mode is Mode.CONFIG:
                session.mode = Mode.PRIV
            await flush()
            while session.question is not None and not session.closed:
                question = session.question
                try:
                    reply = await front.read_answer(question.prompt, question.secret)
                except (EOFError, KeyboardInterrupt):
                    session.question = None
                    break
                if not session.answer(reply) and question.secret:
                    # The handler says when the next try counts (enable: a second after
                    # a wrong password); a person waits here rather than be refused.
                    await asyncio.sleep(min(max(0.0, session.retry_at - time.monotonic()),
                                            MAX_PAUSE))
                await flush()
    finally:
        session.close()


def run_shell(session: Session) -> None:
    """The console: a shell on the controlling terminal until the operator leaves.

    Log messages (a real FAILED) come from other threads: printed raw they would land in
    the middle of the line being typed, so they go above the prompt, which is drawn
    again with the typed text (IOS `logging synchronous`)."""
    async def console() -> None:
        with await open_front() as front, front.synchronous_output():
            await run_shell_async(session, front)

    asyncio.run(console())
