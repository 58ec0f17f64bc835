"""Nothing an operator types may stall the appliance: typed patterns run in linear time,
and `show conns` holds the model lock only briefly, whatever the table's size."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

from localdirector.appliance import Appliance
from localdirector.model.connection import Connection
from localdirector.shell.registry import Mode


def shell(tmp_path: Path) -> tuple[Appliance, list[str], object]:
    appliance = Appliance(tmp_path / "startup-config")
    output: list[str] = []
    session = appliance.open_session("test", write=output.append)
    return appliance, output, session


def test_pathological_pattern_answers_at_once(tmp_path: Path) -> None:
    _, output, session = shell(tmp_path)
    session.execute("a" * 26 + "!")          # a comment: kept in the history
    started = time.monotonic()
    assert session.execute("show history | include ^(a+)+$")
    elapsed = time.monotonic() - started
    assert elapsed < 0.5, elapsed            # backtracking: ~1.8x per `a`, ~2 s at 26 before RE2
    assert "a" * 26 not in "".join(output)
    output.clear()
    assert session.execute("show history | count ^a+!$")
    assert "Number of lines which match regexp = 1" in "".join(output)


def test_bad_pattern_is_refused_with_its_reason(tmp_path: Path) -> None:
    _, output, session = shell(tmp_path)
    assert not session.execute("show history | include (a")
    assert "% Invalid input" in "".join(output)


def test_show_conns_holds_the_lock_only_briefly(tmp_path: Path) -> None:
    appliance, output, session = shell(tmp_path)
    session.mode = Mode.CONFIG
    for line in ("virtual 192.0.2.10:80", "real 203.0.113.12", "bind 192.0.2.10:80 203.0.113.12"):
        assert session.execute(line), output
    director = appliance.director
    virtual = next(director.iter_virtuals())
    real = next(director.iter_reals())
    count = 200_000
    with director.lock:
        for n in range(count):
            director.conns.add(Connection(0xC6120000 + n // 60000, 1024 + n % 60000,  # 198.18.x
                                          virtual.addr, 80, virtual, real, 0.0))
    longest = 0.0
    done = threading.Event()

    def watch() -> None:
        nonlocal longest
        while not done.is_set():
            asked = time.perf_counter()
            with director.lock:
                longest = max(longest, time.perf_counter() - asked)
            time.sleep(0.0005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    session.mode = Mode.PRIV
    output.clear()
    # A garbage collection pauses every thread, lock or no lock: not what is measured here.
    gc.disable()
    try:
        started = time.perf_counter()
        assert session.execute("show conns"), output
        took = time.perf_counter() - started
    finally:
        gc.enable()
        done.set()
        watcher.join()
    text = "".join(output)
    assert text.count("\n") > count and "198.18.0.0:1024" in text
    print(f"show conns of {count}: {took:.2f} s, longest lock wait {longest * 1000:.1f} ms")
    assert longest < 0.5, longest
