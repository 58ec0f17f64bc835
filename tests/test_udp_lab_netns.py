"""The lab's own UDP services through a udp virtual (issue 25 item 8): the appliance
started from its configuration file in the director namespace, Debian's servers on the
reals (dnsmasq on 53, rsyslogd on 514, started by the lab) and Debian's clients in the
client namespace (dig, logger). What the clients and the servers' files show is the
evidence: a 3.8 KB EDNS answer byte for byte what the real itself says, and a syslog
stream spread over the reals with no line lost. (`lab dig` by Bind ID group is tested
with `localdirector lab` itself, in tests/test_docs.py.)"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Iterator

import pytest
from appliance_driver import R11, R12, R13, appliance
from conftest import built_lab

from localdirector.lab import Lab
from localdirector.lab.udpservers import BIG_NAME, SYSLOG_PORT, big_strings

pytestmark = pytest.mark.netns
__all__ = ["appliance"]  # the fixture, imported so pytest finds it here

VIP = "192.0.2.10"
LINES = 3000


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The default lab with its DNS servers (conftest's has none: other modules run
    their own on port 53)."""
    with built_lab(Lab(dns=True)) as built:
        yield built


def dns_config(*extra: str) -> list[str]:
    return [f"real {R12}:0:0:udp", f"real {R13}:0:0:udp", f"virtual {VIP}:53:0:udp",
            f"bind {VIP}:53:0:udp {R12}:0:0:udp {R13}:0:0:udp", *extra]


def dig_big(lab: Lab, ns: str, server: str, *options: str) -> str:
    """dig's whole output for big.lab TXT, one try, EDNS 4096, no retry over TCP."""
    done = lab.run_in(ns, ["dig", f"@{server}", BIG_NAME, "TXT", "+bufsize=4096", "+ignore",
                           "+tries=1", "+time=2", *options])
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def answer(output: str) -> tuple[str, int, list[str]]:
    """(flags, message size, the answer section's lines) of dig's output."""
    flags = re.search(r"flags: ([a-z ]+);", output)
    size = re.search(r"MSG SIZE\s+rcvd: (\d+)", output)
    assert flags and size, output
    section = output.split(";; ANSWER SECTION:\n", 1)[1].split("\n\n", 1)[0]
    return flags[1], int(size[1]), section.splitlines()


def test_a_4k_dns_answer_through_the_director_is_the_reals_own(lab: Lab, appliance) -> None:
    """big.lab TXT: 15 records, 3,831 bytes, fragmented on every link. Through the udp
    virtual, each client gets, not truncated, the answer section the real that
    answered gives the director's own dig, and its strings are what that real serves."""
    appliance(dns_config())
    seen = set()
    for source in lab.client_addresses["general"][:4]:
        flags, size, records = answer(dig_big(lab, lab.client_ns, VIP, "-b", source))
        assert "tc" not in flags.split() and size > 3800, (flags, size)
        real = records[0].split('"')[1].split()[0].removeprefix("real-").removesuffix(":53")
        seen.add(real)
        direct_flags, direct_size, direct = answer(dig_big(lab, lab.director_ns, real))
        assert (flags, size, records) == (direct_flags, direct_size, direct)
        strings = [line.split('"')[1] for line in records]
        assert sorted(strings) == sorted(big_strings(real))
    assert seen == {R12, R13}     # both reals answered through the virtual


def test_a_syslog_stream_spreads_over_the_reals_and_loses_no_line(
        lab: Lab, appliance) -> None:
    """util-linux logger sends 3,000 lines from one socket (one client port) to a udp
    virtual on 514 with per-datagram round robin over three rsyslogd reals: each real's
    file holds a third of them, every line arrives once. Syslog never answers, so each
    real has `reassign 0` (the man page's advice for one-way services): silence fails
    nothing. (With `reassign 100`, the most a count can be, this stream failed all
    three reals, eight failures of 100 unanswered datagrams each, and 497 lines were
    dropped.)"""
    files = lab.start_syslog()
    reals = (R11, R12, R13)
    ids = [f"{real}:0:0:udp" for real in reals]
    console = appliance([*(f"real {i}" for i in ids), *(f"reassign {i} 0" for i in ids),
                         f"virtual {VIP}:{SYSLOG_PORT}:0:udp",
                         f"predictor {VIP}:{SYSLOG_PORT}:0:udp roundrobin",
                         f"per-datagram {VIP}:{SYSLOG_PORT}:0:udp",
                         f"bind {VIP}:{SYSLOG_PORT}:0:udp {' '.join(ids)}"])
    stream = "".join(f"stream line {n:04d}\n" for n in range(LINES))
    sent = lab.run_in(lab.client_ns, ["logger", "-n", VIP, "-P", str(SYSLOG_PORT), "-d",
                                      "-t", "labstream"], input=stream)
    assert sent.returncode == 0, sent.stderr
    got: dict[str, list[int]] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = {real: [int(n) for n in re.findall(r"labstream.*stream line (\d+)",
                                                 files[real].read_text())]
               if files[real].exists() else [] for real in reals}
        if sum(map(len, got.values())) >= LINES:
            break
        time.sleep(0.2)
    everything = collections.Counter(n for numbers in got.values() for n in numbers)
    assert sorted(everything) == list(range(LINES)), \
        f"{LINES - len(everything)} lost: {sorted(set(range(LINES)) - set(everything))[:20]}"
    assert max(everything.values()) == 1                   # none twice
    assert {real: len(numbers) for real, numbers in got.items()} == \
        {real: LINES // 3 for real in reals}
    rows = console.rows("real")
    assert all(rows[i][1] == "IS" for i in ids), rows   # none FAILED
