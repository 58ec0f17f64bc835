"""The grammar walker: one walk drives parsing, abbreviation, `?`, Tab and carets."""

from __future__ import annotations

import pytest

from localdirector.shell import grammar
from localdirector.shell.args import number, word
from localdirector.shell.grammar import (INCOMPLETE, INVALID, CommandError, Jump, Keyword,
                                         Repeat, choice, opt)
from localdirector.appliance import Appliance
from localdirector.commands import REGISTRY
from localdirector.shell.registry import Mode, Registry


def toy() -> Registry:
    """A registry small enough to reason about: shared prefixes, options, repeats,
    a `no` form, an output command and one filter."""
    r = Registry()
    show = Keyword("show", "Show things")
    r.declare(Mode.PRIV, show, Keyword("virtual", "Virtuals"), handler=print, output=True)
    r.declare(Mode.PRIV, show, Keyword("version", "Version"), handler=print)
    r.declare(Mode.PRIV, Keyword("set", "Set"), word("key", "Key"),
              opt(choice(Keyword("on", "On", "flag", True),
                         Keyword("off", "Off", "flag", False))), handler=print)
    r.declare(Mode.PRIV, Keyword("list", "List"), Repeat(number("items", 1, 9, "Item")),
              handler=print)
    r.declare(Mode.CONFIG, Keyword("weight", "Weight"), word("id", "Id"),
              number("value", 1, 100, "Value"), handler=print, no=2)
    r.declare(Mode.CONFIG, Keyword("do", "Exec"), Jump(Mode.PRIV, "do"))
    r.declare(Mode.FILTER, Keyword("include", "Matching"), word("pattern", "Text"),
              handler=print)
    return r


REG = toy()


def parse(line: str, mode: Mode = Mode.PRIV):
    return grammar.parse(line, None, mode, REG.roots)


def names(segments) -> list[str]:
    return [s.command.keywords for s in segments]


def test_unique_prefix_abbreviates_and_is_case_insensitive():
    [seg] = parse("SH VIR")
    assert seg.command.keywords == "show virtual"
    [seg] = parse("sh ver")
    assert seg.command.keywords == "show version"


def test_ambiguous_prefix_names_the_typed_words():
    with pytest.raises(CommandError) as err:
        parse("sh v")
    assert err.value.message == '% Ambiguous command: "sh v"'
    assert err.value.column is None


def test_exact_keyword_wins_over_longer_keyword_with_same_prefix():
    r = Registry()
    r.declare(Mode.PRIV, Keyword("is", "a"), handler=print)
    r.declare(Mode.PRIV, Keyword("isolate", "b"), handler=print)
    [seg] = grammar.parse("is", None, Mode.PRIV, r.roots)
    assert seg.command.keywords == "is"


@pytest.mark.parametrize("line, column", [
    ("shoe virtual", 0),             # unknown first word
    ("show virtual extra", 13),      # a word after a complete command
    ("show   bogus", 7),             # caret follows the real spacing
    ("list 1 2 x", 9),               # bad argument inside a repeat
    ("set k maybe", 6),              # a keyword that is not one of the choices
])
def test_caret_column_is_the_first_character_of_the_offending_word(line, column):
    with pytest.raises(CommandError) as err:
        parse(line)
    assert err.value.message == INVALID
    assert err.value.column == column


def test_incomplete_command():
    with pytest.raises(CommandError) as err:
        parse("show")
    assert err.value.message == INCOMPLETE


def test_optional_choice_and_repeat_captures():
    [seg] = parse("set color on")
    assert seg.captures == {"key": "color", "flag": True}
    [seg] = parse("set color")
    assert seg.captures == {"key": "color"}
    [seg] = parse("list 1 2 3")
    assert seg.captures == {"items": [1, 2, 3]}


def test_no_form_is_derived_with_the_value_optional():
    [seg] = parse("no weight r1", Mode.CONFIG)
    assert seg.command.negated and seg.captures == {"id": "r1"}
    [seg] = parse("no weight r1 5", Mode.CONFIG)
    assert seg.command.negated and seg.captures == {"id": "r1", "value": 5}
    with pytest.raises(CommandError):
        parse("no weight", Mode.CONFIG)


def test_jump_and_output_modifier_make_segments():
    segments = parse("do sh vir | inc 192", Mode.CONFIG)
    assert names(segments) == ["do", "show virtual", "include"]
    assert [s.role for s in segments] == [None, "do", "filter"]
    assert segments[2].captures == {"pattern": "192"}
    with pytest.raises(CommandError) as err:   # show version is not an output command
        parse("show version | include x")
    assert err.value.column == len("show version ")


def help_(text: str, mode: Mode = Mode.PRIV):
    return grammar.help_entries(text, None, mode, REG.roots)


def test_help_after_space_lists_next_words_with_help():
    assert help_("show ") == [("version", "Version"), ("virtual", "Virtuals")]
    assert help_("set k ") == [("off", "Off"), ("on", "On"), ("<cr>", "")]
    assert help_("show virtual ") == [("|", "Output modifiers"), ("<cr>", "")]
    assert help_("list ") == [("<1-9>", "Item")]


def test_help_inside_a_word_lists_the_keywords_it_abbreviates():
    assert help_("sh") == [("show", "")]
    assert help_("show v") == [("version", ""), ("virtual", "")]
    assert help_("list 1 2") == [("<1-9>", "Item")]


def test_help_reports_an_error_before_the_cursor():
    with pytest.raises(CommandError) as err:
        help_("shw ")
    assert err.value.column == 0


def test_completion_offers_matching_keywords_only_after_valid_words():
    complete = lambda text: [w for w, _ in grammar.completions(text, None, Mode.PRIV,
                                                                 REG.roots)]
    assert complete("sh") == ["show"]
    assert sorted(complete("show v")) == ["version", "virtual"]
    assert complete("show vi") == ["virtual"]
    assert complete("nonsense ") == []
    assert sorted(complete("")) == ["list", "set", "show"]


def test_real_registry_parses_operator_abbreviations(tmp_path):
    registry = REGISTRY
    session = Appliance(tmp_path / "none").open_session("test")   # names live in its model
    for line, mode, expected in [
        ("sh vir", Mode.PRIV, "show virtual"),
        ("conf t", Mode.PRIV, "configure"),
        ("wr t", Mode.PRIV, "write terminal"),
        ("wr m", Mode.PRIV, "write memory"),
        ("sh run", Mode.PRIV, "show running-config"),
        ("tes as 198.51.100.7 192.0.2.10:80", Mode.PRIV, "test assign"),
    ]:
        segments = grammar.parse(line, session, mode, registry.roots)
        assert segments[0].command.keywords == expected, line


def test_every_config_command_has_a_no_form():
    registry = REGISTRY
    # Exec commands LocalDirector also took at its configuration prompt (`show ...`,
    # `write ...`) share their privileged declaration's syntax: not settings.
    exec_syntax = {id(c.syntax) for c in registry.commands if Mode.PRIV in c.modes}
    config = {c.keywords for c in registry.commands
              if Mode.CONFIG in c.modes and not c.negated and c.handler is not None
              and id(c.syntax) not in exec_syntax}
    negated = {c.keywords.removeprefix("no").strip() for c in registry.commands
               if c.negated}
    # end|exit and in-service|is|out-of-service|os begin with a choice: no leading
    # keywords, so they meet as "" (and only in-service has a `no` form among them).
    assert config == negated
    assert {"weight", "bind", "assign", "virtual", "real", "", "enable password"} <= negated
