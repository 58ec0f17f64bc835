"""The idle-timer wheel (dataplane/timers.py): what is handed back, and when."""

from __future__ import annotations

from localdirector.dataplane.timers import SLOTS, TimerWheel


def test_items_come_back_once_their_second_came_not_before() -> None:
    wheel: TimerWheel[str] = TimerWheel(now=100.0)
    wheel.add("a", 100.4)
    wheel.add("b", 101.9)
    wheel.add("c", 105.0)
    assert len(wheel) == 3
    assert list(wheel.due(100.5)) == ["a"]
    assert list(wheel.due(100.9)) == []          # handed back once only
    assert list(wheel.due(102.0)) == ["b"]       # its second (101) is over
    assert list(wheel.due(104.99)) == []
    assert list(wheel.due(105.0)) == ["c"] and len(wheel) == 0


def test_a_current_second_item_filed_again_waits_for_the_next_call() -> None:
    """The engine files a not-yet-idle connection again while iterating: the current
    second's slot is visited on every call, but not twice in one."""
    wheel: TimerWheel[str] = TimerWheel(now=10.0)
    wheel.add("x", 10.2)
    for item in wheel.due(10.1):
        wheel.add(item, 10.8)                     # still the current second
    assert len(wheel) == 1
    assert list(wheel.due(10.9)) == ["x"]


def test_a_deadline_in_the_past_is_due_at_the_next_call() -> None:
    wheel: TimerWheel[str] = TimerWheel(now=50.0)
    list(wheel.due(60.0))
    wheel.add("late", 55.0)
    assert list(wheel.due(60.1)) == ["late"]


def test_beyond_the_wheel_span_items_come_round_early_and_are_filed_again() -> None:
    """A deadline further than SLOTS seconds shares a slot with a nearer second: it is
    handed back then (the engine checks it and files it again), never lost."""
    wheel: TimerWheel[str] = TimerWheel(now=0.0)
    wheel.add("far", SLOTS + 3.0)
    assert list(wheel.due(2.0)) == []
    early = list(wheel.due(3.5))
    assert early == ["far"]
    wheel.add("far", SLOTS + 3.0)
    assert list(wheel.due(SLOTS + 3.5)) == ["far"]


def test_a_clock_jump_longer_than_the_span_hands_back_everything_once() -> None:
    wheel: TimerWheel[int] = TimerWheel(now=0.0)
    for i in range(20):
        wheel.add(i, i * 250.0)
    assert sorted(wheel.due(10 * SLOTS)) == list(range(20)) and len(wheel) == 0
