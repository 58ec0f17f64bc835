"""Command syntax declarations and the one walker that parses, abbreviates, helps,
completes and places error carets.

Commands are declared as sequences of tokens (keywords and arguments) combined with
`Opt`, `Choice`, `Repeat` and `Jump`; each declaration compiles to a small graph of
`Node`s. Every interactive feature is a question asked of the same walk over those
graphs, so `?`, Tab and the error caret can never disagree with what the parser accepts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# A `roots(mode)` function: the first nodes of every command available in a mode.
Roots = Callable[[Hashable], list["Node"]]


class ArgError(ValueError):
    """An argument's text is not acceptable: the message says why, and `offset` (within
    the word), when known, is where the fault starts, so the caret goes under it."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True, eq=False)
class Keyword:
    """A literal word; `name`/`value` capture which keyword of a choice was typed."""

    word: str
    help: str
    name: str | None = None
    value: Any = None


@dataclass(frozen=True, eq=False)
class Arg:
    """A value the operator types. `parse(text, ctx)` returns the value or raises ArgError;
    `complete(ctx)` offers candidates for Tab; `rest` swallows the remainder of the line."""

    name: str
    placeholder: str
    help: str
    parse: Callable[[str, Any], Any]
    complete: Callable[[Any], Iterable[str]] | None = None
    rest: bool = False


@dataclass(frozen=True)
class Opt:
    elements: tuple


@dataclass(frozen=True)
class Choice:
    alternatives: tuple


@dataclass(frozen=True)
class Repeat:
    """One or more of a token; its captures accumulate in a list."""

    token: Keyword | Arg


@dataclass(frozen=True, eq=False)
class Jump:
    """Continue with every command of another mode (`do show ...`, `| include ...`);
    the commands reached start a new segment tagged with `role`."""

    mode: Hashable
    role: str


def opt(*elements: Any) -> Opt:
    return Opt(tuple(elements))


def choice(*alternatives: Any) -> Choice:
    return Choice(tuple(a if isinstance(a, tuple) else (a,) for a in alternatives))


class Node:
    """One token position of one command; `accepts` means the command may end here."""

    __slots__ = ("token", "nexts", "accepts", "command", "repeat")

    def __init__(self, token: Keyword | Arg | Jump, nexts: list["Node"], accepts: bool,
                 command: Any, repeat: bool = False) -> None:
        self.token = token
        self.nexts = nexts
        self.accepts = accepts
        self.command = command
        self.repeat = repeat


def compile_syntax(elements: Sequence[Any], command: Any) -> list[Node]:
    """Syntax -> first nodes. Built back to front: each element learns what may follow it."""
    firsts, empty_ok = _build(elements, [], True, command)
    if empty_ok:
        raise ValueError("a command must begin with a required token")
    return firsts


def _build(elements: Sequence[Any], cont: list[Node], accept: bool,
           command: Any) -> tuple[list[Node], bool]:
    for element in reversed(elements):
        cont, accept = _element(element, cont, accept, command)
    return cont, accept


def _element(element: Any, cont: list[Node], accept: bool,
             command: Any) -> tuple[list[Node], bool]:
    if isinstance(element, (Keyword, Arg)):
        return [Node(element, cont, accept, command)], False
    if isinstance(element, Jump):
        return [Node(element, [], False, command)], False
    if isinstance(element, Opt):
        firsts, empty_ok = _build(element.elements, cont, accept, command)
        return firsts + cont, empty_ok or accept
    if isinstance(element, Choice):
        nodes: list[Node] = []
        empty_ok = False
        for alternative in element.alternatives:
            firsts, alt_empty = _build(alternative, cont, accept, command)
            nodes += firsts
            empty_ok |= alt_empty
        return nodes, empty_ok
    if isinstance(element, Repeat):
        node = Node(element.token, [], accept, command, repeat=True)
        node.nexts = [node, *cont]
        return [node], False
    raise TypeError(f"not a syntax element: {element!r}")


# -- walking ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Word:
    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)


def split_words(line: str) -> list[Word]:
    return [Word(m.group(), m.start()) for m in re.finditer(r"\S+", line)]


@dataclass(frozen=True)
class Segment:
    """The part of a walk that belongs to one command, with what it captured."""

    command: Any
    role: str | None
    captures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _State:
    node: Node | None            # None: nothing matched yet
    segments: tuple[Segment, ...]
    done: bool = False           # a rest-of-line argument swallowed the remaining words


class CommandError(Exception):
    """A line that was not carried out, as IOS words it; `column` (in the line), when known,
    places the caret under the offending word, and `reason` says what is wrong with it
    when the walk knows (an argument's own message)."""

    def __init__(self, message: str, column: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.column = column
        self.reason = reason


INVALID = "% Invalid input detected at '^' marker."
INCOMPLETE = "% Incomplete command."


def _candidates(states: list[_State], mode: Hashable,
                roots: Roots) -> Iterable[tuple[_State, Node, str | None, bool]]:
    """(state, next node, role of a new segment, starts a new segment)."""
    for state in states:
        if state.done:
            continue
        if state.node is None:
            for node in roots(mode):
                yield state, node, None, True
            continue
        for node in state.node.nexts:
            if isinstance(node.token, Jump):
                for target in roots(node.token.mode):
                    yield state, target, node.token.role, True
            else:
                yield state, node, None, False


def _take(state: _State, node: Node, role: str | None, new_segment: bool, value: Any,
          done: bool = False) -> _State:
    if new_segment:
        segment = Segment(node.command, role, {})
        segments = state.segments + (segment,)
    else:
        segment = state.segments[-1]
        segments = state.segments
    captures = dict(segment.captures)
    token = node.token
    if isinstance(token, Keyword):
        if token.name:
            captures[token.name] = token.word if token.value is None else token.value
    elif node.repeat:
        captures[token.name] = captures.get(token.name, []) + [value]
    else:
        captures[token.name] = value
    segments = segments[:-1] + (Segment(segment.command, segment.role, captures),)
    return _State(node, segments, done)


def _advance(states: list[_State], line: str, word: Word, ctx: Any, mode: Hashable,
             roots: Roots) -> list[_State]:
    """Match one word: keywords by unique prefix first (IOS precedence), then arguments."""
    candidates = list(_candidates(states, mode, roots))
    lowered = word.text.lower()
    keywords = [c for c in candidates
                if isinstance(c[1].token, Keyword) and c[1].token.word.startswith(lowered)]
    if keywords:
        exact = [c for c in keywords if c[1].token.word == lowered]
        if exact:
            keywords = exact
        elif len({c[1].token.word for c in keywords}) > 1:
            raise CommandError(f'% Ambiguous command: "{line[:word.end].strip()}"')
        return [_take(s, n, role, new, None) for s, n, role, new in keywords]
    matched: list[_State] = []
    refusals: dict[str, int] = {}
    for state, node, role, new in candidates:
        token = node.token
        if not isinstance(token, Arg):
            continue
        text = line[word.start:].rstrip() if token.rest else word.text
        try:
            value = token.parse(text, ctx)
        except ArgError as err:
            refusals.setdefault(str(err), err.offset)
            continue
        matched.append(_take(state, node, role, new, value, done=token.rest))
    if not matched:
        # One argument type refused the word: say why and point into it. Several
        # refusing for different reasons: none of them is the whole story.
        if len(refusals) == 1:
            (reason, offset), = refusals.items()
            raise CommandError(INVALID, word.start + offset, reason)
        raise CommandError(INVALID, word.start)
    return matched


def walk(line: str, words: Sequence[Word], ctx: Any, mode: Hashable,
         roots: Roots) -> list[_State]:
    states = [_State(None, ())]
    for word in words:
        finished = [s for s in states if s.done]
        if finished:
            return finished
        states = _advance(states, line, word, ctx, mode, roots)
    return states


def parse(line: str, ctx: Any, mode: Hashable, roots: Roots) -> tuple[Segment, ...]:
    """The segments of the one accepted reading of `line` (empty for a blank line)."""
    words = split_words(line)
    if not words:
        return ()
    states = walk(line, words, ctx, mode, roots)
    for state in states:
        if state.node is not None and state.node.accepts:
            return state.segments
    raise CommandError(INCOMPLETE)


def _split_partial(text: str) -> tuple[list[Word], str | None]:
    """Words before the cursor, and the word being typed (None right after a space)."""
    words = split_words(text)
    if words and not text[-1].isspace():
        return words[:-1], words[-1].text
    return words, None


def _entries(states: list[_State], mode: Hashable, roots: Roots) -> list[tuple[str, str, Any]]:
    """(word or placeholder, help, token) for every distinct token that may come next."""
    seen: dict[str, tuple[str, str, Any]] = {}
    for _state, node, _role, _new in _candidates(states, mode, roots):
        token = node.token
        label = token.word if isinstance(token, Keyword) else token.placeholder
        seen.setdefault(label, (label, token.help, token))
    return sorted(seen.values(), key=lambda e: (isinstance(e[2], Arg), e[0]))


def help_entries(text: str, ctx: Any, mode: Hashable, roots: Roots) -> list[tuple[str, str]]:
    """What `?` lists. After a space: next words with help, `<cr>` if the command may end.
    Inside a word: the keywords it abbreviates (help empty), or the arguments it may be."""
    words, partial = _split_partial(text)
    states = walk(text, words, ctx, mode, roots)
    entries = _entries(states, mode, roots)
    if partial is None:
        listing = [(label, help_) for label, help_, _ in entries]
        if any(s.node is not None and s.node.accepts for s in states):
            listing.append(("<cr>", ""))
        return listing
    lowered = partial.lower()
    words_found = [(label, "") for label, _, token in entries
                   if isinstance(token, Keyword) and label.startswith(lowered)]
    return words_found or [(label, help_) for label, help_, token in entries
                           if isinstance(token, Arg)]


def completions(text: str, ctx: Any, mode: Hashable, roots: Roots) -> list[tuple[str, str]]:
    """Tab: (replacement for the word being typed, help). Unparseable text completes nothing."""
    words, partial = _split_partial(text)
    try:
        states = walk(text, words, ctx, mode, roots)
    except CommandError:
        return []
    prefix = partial or ""
    found: dict[str, str] = {}
    for label, help_, token in _entries(states, mode, roots):
        if isinstance(token, Keyword):
            if label.startswith(prefix.lower()):
                found.setdefault(label, help_)
        elif token.complete is not None:
            for value in token.complete(ctx):
                if value.startswith(prefix):
                    found.setdefault(value, help_)
    return list(found.items())
