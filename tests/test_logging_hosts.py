"""Remote syslog without a lab: `logging host` / `logging trap` and their running-config,
the RFC 5424 messages and their framing, and senders that never wait for a collector
(a UDP and a TCP listener on this host's loopback stand in for collectors)."""

from __future__ import annotations

import io
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localdirector import syslog
from localdirector.appliance import Appliance
from localdirector.model.director import Director, ModelError
from localdirector.monitor.logging_hosts import LoggingHosts
from localdirector.shell import config_file, running_config
from localdirector.syslog import remote

# Loopback traffic only, in a network namespace of the module's own.
pytestmark = pytest.mark.usefixtures("private_loopback")

RFC5424 = re.compile(r"<(\d+)>1 (\S+) (\S+) localdirector (\d+) - - (.*)")


def run(appliance: Appliance, *lines: str) -> str:
    out = io.StringIO()
    session = appliance.open_session("test", write=out.write, interactive=False)
    for line in ("enable", "configure terminal", *lines, "end"):
        session.execute(line)
    return out.getvalue()


def record(message: str, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("localdirector", level, __file__, 1, message, None, None)


def test_commands_round_trip_and_refuse_bad_input(tmp_path: Path) -> None:
    appliance = Appliance(tmp_path / "startup-config")
    out = run(appliance, "logging host 198.19.255.2", "logging host 2001:DB8:FF::2",
              "logging host 198.19.255.2 transport tcp",
              "logging host 198.19.255.3 transport udp port 1514",
              "logging host 198.19.255.3 transport tcp port 6514", "logging trap warn")
    assert "%" not in out, out
    saved = running_config.render(appliance.director, appliance.registry)
    section = [line for line in saved if line.startswith("logging")]
    assert section == ["logging host 198.19.255.2", "logging host 2001:db8:ff::2",
                       "logging host 198.19.255.2 transport tcp",
                       "logging host 198.19.255.3 transport udp port 1514",
                       "logging host 198.19.255.3 transport tcp port 6514",
                       "logging trap warnings"]
    replayed = Appliance(tmp_path / "startup-config")
    assert config_file.replay(replayed, replayed.director, saved, print) == 0
    assert running_config.render(replayed.director, replayed.registry) == saved

    before = list(appliance.director.settings.log_hosts), appliance.director.settings.log_trap
    for line, error in [
            ("logging trap loud", "% unknown logging level 'loud'"),
            ("logging trap 8", "% unknown logging level '8'"),
            ("logging trap e", "% ambiguous logging level 'e': emergencies, errors"),
            ("logging host 224.0.0.9", "% 224.0.0.9 is not a host address a log can go to"),
            ("logging host 255.255.255.255", "is not a host address"),
            ("logging host ff02::1", "% ff02::1 is not a host address a log can go to"),
            ("logging host ::", "% :: is not a host address a log can go to"),
            ("logging host 198.19.255.2 transport tcp port 0", "% expected a number 1-65535"),
            ("logging host 198.19.255.300", "% invalid IP address"),
            ("no logging host 198.19.255.9", "% 198.19.255.9 is not a logging host"),
            ("no logging host 198.19.255.3 transport udp",
             "% 198.19.255.3 udp port 514 is not a logging host")]:
        assert error in run(appliance, line), line
    assert (appliance.director.settings.log_hosts, appliance.director.settings.log_trap) == before

    run(appliance, "no logging host 198.19.255.2", "no logging host 2001:db8:ff::2",
        "no logging host 198.19.255.3 transport tcp "
        "port 6514", "no logging trap", "logging trap 7")
    assert [line for line in running_config.render(appliance.director, appliance.registry)
            if line.startswith("logging")] == [
        "logging host 198.19.255.3 transport udp port 1514", "logging trap debugging"]


def test_director_validates_what_the_grammar_cannot() -> None:
    director = Director()
    with pytest.raises(ModelError, match="unknown logging level 'loud'"):
        director.set_log_trap("loud")
    with pytest.raises(ModelError, match="unknown logging transport 'sctp'"):
        director.add_log_host(0xC613FF02, "sctp")
    with pytest.raises(ModelError, match="out of range"):
        director.add_log_host(0xC613FF02, "udp", 70000)
    director.set_log_trap("errors")
    assert director.settings.log_trap == 3


def test_message_is_rfc5424_with_hostname_tag_and_severity() -> None:
    message = remote.rfc5424(record("real 203.0.113.11:0:0:tcp FAILED after 2 unanswered"),
                             "edge7").decode()
    pri, stamp, host, pid, text = RFC5424.fullmatch(message).groups()
    assert int(pri) == 23 * 8 + 4 and host == "edge7" and text.startswith("real 203.0.113.11")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", stamp)
    assert remote.octet_counted(b"abc") == b"3 abc"
    assert [remote.severity(level) for level in (50, 40, 30, 25, 20, 10)] == [2, 3, 4, 5, 6, 7]


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        yield sock


@pytest.fixture
def tcp() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.settimeout(5)
        yield sock


def test_ipv6_hosts_receive_over_udp_and_tcp(handler) -> None:
    """A collector on ::1: each sender opens a socket of the host's family."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp6, \
            socket.socket(socket.AF_INET6) as tcp6:
        udp6.bind(("::1", 0))
        tcp6.bind(("::1", 0))
        tcp6.listen()
        for sock in (udp6, tcp6):
            sock.settimeout(5)
        handler.configure("edge7", 4, [remote.Target("::1", "udp", udp6.getsockname()[1]),
                                       remote.Target("::1", "tcp", tcp6.getsockname()[1])])
        handler.handle(record("real [2001:db8:1::11]:8001 FAILED"))
        assert RFC5424.fullmatch(udp6.recv(4096).decode()).group(5) == (
            "real [2001:db8:1::11]:8001 FAILED")
        conn, _ = tcp6.accept()
        with conn:
            conn.settimeout(5)
            assert RFC5424.fullmatch(_frames(conn, 1)[0]).group(5) == (
                "real [2001:db8:1::11]:8001 FAILED")


@pytest.fixture
def handler() -> Iterator[remote.RemoteHandler]:
    handler = remote.RemoteHandler()
    yield handler
    handler.configure("x", 6, [])


def _frames(conn: socket.socket, count: int) -> list[str]:
    """Read `count` octet-counted frames."""
    data, frames = b"", []
    while len(frames) < count:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed after {frames}"
        data += chunk
        while (space := data.find(b" ")) > 0 and len(data) >= space + 1 + int(data[:space]):
            end = space + 1 + int(data[:space])
            frames.append(data[space + 1:end].decode())
            data = data[end:]
    return frames


def test_udp_and_tcp_hosts_receive_records_at_or_above_the_trap_level(
        handler, udp, tcp) -> None:
    udp_port, tcp_port = udp.getsockname()[1], tcp.getsockname()[1]
    handler.configure("edge7", 4, [remote.Target("127.0.0.1", "udp", udp_port),
                                   remote.Target("127.0.0.1", "tcp", tcp_port)])
    handler.handle(record("chatty", logging.INFO))         # 6: above `warnings`, not sent
    handler.handle(record("real A FAILED"))
    handler.handle(record("real A back in service"))
    got = [udp.recv(4096).decode(), udp.recv(4096).decode()]
    assert [RFC5424.fullmatch(m).group(5) for m in got] == ["real A FAILED",
                                                              "real A back in service"]
    conn, _ = tcp.accept()
    with conn:
        conn.settimeout(5)
        frames = _frames(conn, 2)
    assert [RFC5424.fullmatch(m).group(3, 5) for m in frames] == [
        ("edge7", "real A FAILED"), ("edge7", "real A back in service")]
    # A sender counts a message once its send returned, which may be after it arrived.
    deadline = time.monotonic() + 5
    while True:
        counts = [(r.sent, r.failed, r.error) for r in handler.reports().values()]
        if counts == [(2, 0, "")] * 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert counts == [(2, 0, "")] * 2


def test_an_unreachable_host_blocks_nothing_and_says_why_once(handler, tcp) -> None:
    """A refusing TCP collector: records keep flowing at once, the refusal is logged a
    single time, messages wait; when it listens again they arrive."""
    port = tcp.getsockname()[1]
    tcp.close()   # nobody listens: connections are refused
    buffer = syslog.install(io.StringIO())
    handler.configure("edge7", 6, [remote.Target("127.0.0.1", "tcp", port)])
    started = time.monotonic()
    for n in range(50):
        handler.handle(record(f"message {n}"))
    assert time.monotonic() - started < 5   # blocking would cost 3 s a message
    deadline = time.monotonic() + 5
    while not handler.reports()[remote.Target("127.0.0.1", "tcp", port)].error:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    syslog.flush()
    warned = [line for line in buffer.lines() if f"127.0.0.1 tcp/{port} unreachable" in line]
    assert len(warned) == 1 and "Connection refused" in warned[0]
    report = handler.reports()[remote.Target("127.0.0.1", "tcp", port)]
    assert report.sent == 0 and report.waiting >= 48

    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
        again.settimeout(10)
        conn, _ = again.accept()
        with conn:
            conn.settimeout(5)
            frames = _frames(conn, 50)
    assert [RFC5424.fullmatch(f).group(5) for f in frames] == [f"message {n}" for n in range(50)]


def test_show_logging_follows_the_model(tmp_path: Path, udp) -> None:
    """The appliance's follower (a cli.py service) configures the senders from the
    model, on every change and after `reload`; `show logging` shows their figures."""
    syslog.install(io.StringIO())
    appliance = Appliance(tmp_path / "startup-config")
    hosts = LoggingHosts(appliance)
    hosts.follow(appliance.director)
    try:
        port = udp.getsockname()[1]
        run(appliance, "hostname edge7", f"logging host 127.0.0.1 transport udp port {port}")
        logging.getLogger("localdirector").warning("real B FAILED after 2 unanswered")
        # Other records may arrive first (an earlier test's sender logging its recovery):
        # the one logged here is among the next few.
        received: list[tuple[str, str]] = []
        while not received or (received[-1][1] != "real B FAILED after 2 unanswered"
                               and len(received) < 20):
            received.append(RFC5424.fullmatch(udp.recv(4096).decode()).group(3, 5))
        assert received[-1] == ("edge7", "real B FAILED after 2 unanswered"), received
        # The sender counts a message once its send returned, maybe after it arrived.
        deadline = time.monotonic() + 5
        while True:
            out = run(appliance, "do show logging")
            sent = re.search(rf"127\.0\.0\.1 +udp +{port} +(\d+) +0 +0 +ok", out)
            if sent and int(sent.group(1)) >= len(received) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert "Trap logging: level informational (6)" in out
        assert sent is not None and int(sent.group(1)) >= len(received), out
        (tmp_path / "startup-config").write_text("hostname edge8\n")
        appliance.reload(print)
        hosts.follow(appliance.director)   # what cli.py's reload hook does
        assert remote.HANDLER.reports() == {}
        assert "No logging hosts" in run(appliance, "do show logging")
    finally:
        hosts.stop()
