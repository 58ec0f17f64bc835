"""Typing at a prompt_toolkit shell on a pty, shared by the console and remote-login tests.

The shell draws what is typed itself (the pty does not echo), so the only reliable end
of a command's output is the next prompt being ready for input: a comment line with a
unique tag typed after the command appears only then, and everything before it is the
command's output."""

from __future__ import annotations

import re

import pexpect

ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-B]|[=>])")


def clean(text: str) -> str:
    """Screen text without escape sequences or carriage returns."""
    return ANSI.sub("", text).replace("\r", "")


class TaggedTyping:
    child: pexpect.spawn
    tags = 0

    def type(self, keys: str) -> str:
        """Send keys, then a sync tag; the screen text (escapes removed) before the tag."""
        self.tags += 1
        tag = f"sync-{self.tags}"
        self.child.send(keys)
        self.child.send(f"! {tag}\r")
        self.child.expect_exact(tag)
        return clean(self.child.before)

    def run(self, line: str) -> str:
        return self.type(line + "\r")
