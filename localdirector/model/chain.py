"""The patent's FIG. 2 chains: objects linked through their `next` attribute, kept in
the order they were added (the model's lists of virtuals, reals and a virtual's links).
Apart from model/director.py, which walks them, so that module stays about the model."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar


class Linked(Protocol):
    next: Any


Node = TypeVar("Node", bound=Linked)


def append(head: Node | None, obj: Node) -> Node:
    """Append to a `next`-chained list; returns the head."""
    obj.next = None
    if head is None:
        return obj
    cur = head
    while cur.next is not None:
        cur = cur.next
    cur.next = obj
    return head


def unlink(head: Node | None, obj: Node) -> Node | None:
    """Take `obj` out of the chain (a chain without it is left as it is); returns the
    head."""
    prev, cur = None, head
    while cur is not None and cur is not obj:
        prev, cur = cur, cur.next
    if cur is None:
        return head
    nxt = cur.next
    cur.next = None
    if prev is None:
        return nxt
    prev.next = nxt
    return head
