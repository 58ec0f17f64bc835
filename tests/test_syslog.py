"""`show syslog`: the data plane's messages reach the operator, and logging never blocks."""

from __future__ import annotations

import io
import logging
import queue

from localdirector import syslog
from localdirector.appliance import Appliance
from localdirector.model.serverid import ServerId


def run(appliance: Appliance, *lines: str) -> str:
    out = io.StringIO()
    session = appliance.open_session("test", write=out.write, interactive=False)
    for line in lines:
        assert session.execute(line), out.getvalue()
    return out.getvalue()


def test_real_failure_shows_in_show_syslog(tmp_path) -> None:
    syslog.install(io.StringIO())
    appliance = Appliance(tmp_path / "startup-config")
    run(appliance, "enable", "configure terminal", "real 203.0.113.77",
        "threshold 203.0.113.77 1", "end")
    director = appliance.director
    director.note_failure(director.real(ServerId.parse("203.0.113.77")), 0.0)
    syslog.flush()
    out = run(appliance, "enable", "show syslog | include 203.0.113.77")
    assert "real 203.0.113.77:0:0:tcp FAILED" in out
    assert "WARNING localdirector" in out


def test_a_stuck_log_reader_never_blocks_the_logger() -> None:
    """The worker logs under the model lock: a full queue must drop, count, return."""
    buffer = syslog.LogBuffer()
    handler = syslog._DroppingQueueHandler(queue.Queue(5), buffer)  # nobody drains it
    record = logging.LogRecord("localdirector", logging.WARNING, __file__, 1, "x", None, None)
    for _ in range(50):
        handler.handle(record)
    assert buffer.dropped == 45


def test_buffer_keeps_only_the_newest() -> None:
    buffer = syslog.LogBuffer(capacity=3)
    for i in range(10):
        buffer.handle(logging.LogRecord("localdirector", logging.INFO, __file__, 1,
                                        f"m{i}", None, None))
    assert [line.rsplit(" ", 1)[1] for line in buffer.lines()] == ["m7", "m8", "m9"]
