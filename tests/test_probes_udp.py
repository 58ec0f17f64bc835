"""The udp and dns probe types without a network (issue 25, item 5): their settings
round-trip through the running config and `show probeconfig`, bad values are refused
in one line, the DNS query is what an independent DNS implementation (scapy) reads, and
answers are judged strictly: anything short, garbled or not this query's answer is a
failure, never an exception. tests/test_probes_udp_netns.py runs them for real."""

from __future__ import annotations

import asyncio
import errno
import json
import random
import struct

import pytest
from scapy.layers.dns import DNS, DNSQR

from localdirector.model import probe_kinds
from localdirector.model.addr import parse_ip
from localdirector.model.probes import Probe
from localdirector.probes import datagram, dns, wire
from localdirector.shell import running_config

from test_probes import shell

CONFIG = ["real 203.0.113.12:53", "real 203.0.113.13:7007",
          r"probeconfig echo udp interval 1 timeout 0.5 failures 1 send PING\x20me\r\n "
          r"expect PONG\x20PING",
          "probeconfig who dns port 53 query who.example. type txt rcode noerror,nxdomain "
          "recurse expect-is-not-for-dns",
          "probeconfig root dns",
          "probe 203.0.113.12:53 who", "probe 203.0.113.13:7007 echo"]


def test_running_config_round_trips_to_the_same_probes() -> None:
    lines = [line.replace(" expect-is-not-for-dns", "") for line in CONFIG]
    appliance, _ = shell(*lines)
    saved = running_config.render(appliance.director, appliance.registry)
    assert [line for line in saved if line.startswith("probe")] == [
        r"probeconfig echo udp interval 1 timeout 0.5 failures 1 send PING\x20me\r\n "
        r"expect PONG\x20PING",
        "probeconfig who dns port 53 query who.example. type TXT rcode NOERROR,NXDOMAIN "
        "recurse",
        "probeconfig root dns",
        "probe 203.0.113.12:53 who", "probe 203.0.113.13:7007 echo"]
    replayed, _ = shell(*(line for line in saved if not line.startswith("!")))
    assert replayed.director.probes == appliance.director.probes
    assert running_config.render(replayed.director, replayed.registry) == saved
    echo, who = (replayed.director.probes[n] for n in ("echo", "who"))
    assert (echo.payload, echo.expected) == (b"PING me\r\n", b"PONG PING")
    assert (who.qname, who.qtype_code, who.rcodes, who.recurse) == (
        "who.example", 16, frozenset({0, 3}), True)


def test_show_probeconfig_gives_each_type_and_its_settings() -> None:
    lines = [line.replace(" expect-is-not-for-dns", "") for line in CONFIG]
    appliance, out = shell(*lines, "end")
    session = appliance.open_session("t", "t", write=out.append, interactive=False)
    session.execute("enable")
    out.clear()
    assert session.execute("show probeconfig | json")
    rows = {row["probe"]: row for row in json.loads("".join(out))}
    assert rows["echo"] == {"probe": "echo", "type": "udp", "interval": 1.0,
                            "timeout": 0.5, "failures": 1, "successes": 2, "port": 0,
                            "options": {"send": r"PING\x20me\r\n",
                                        "expect": r"PONG\x20PING"}}
    assert rows["root"]["options"] == {"query": ".", "type": "NS", "rcode": "NOERROR",
                                       "recurse": False}
    out.clear()
    assert session.execute("show probeconfig who")
    assert "query who.example. type TXT rcode NOERROR,NXDOMAIN recurse" in "".join(out)
    out.clear()
    assert session.execute("show probe | json")
    assert {(r["probe"], r["type"]) for r in json.loads("".join(out))} == {
        ("who", "dns"), ("echo", "udp")}


def test_help_offers_each_type_and_its_values() -> None:
    appliance, _ = shell()
    session = appliance.open_session("t", "t", write=lambda _: None, interactive=False)
    for line in ("enable", "configure terminal"):
        session.execute(line)
    assert session.help_lines("probeconfig x ")[0].split()[0] == "tcp|http|udp|dns"
    [types] = session.help_lines("probeconfig x dns type ")
    assert types.split(None, 1) == ["TYPE", ", ".join(probe_kinds.QTYPES)]
    assert session.help_lines("probeconfig x dns rcode ")[0].split()[0] == "LIST"
    assert "\\xHH" in session.help_lines("probeconfig x udp send ")[0]
    after_send = [line.split()[0] for line in session.help_lines("probeconfig x udp send a ")]
    assert after_send == ["expect", "query", "rcode", "recurse", "type", "<cr>"]


@pytest.mark.parametrize("line, error", [
    ("probeconfig x udp", "probe x is udp: it needs send PAYLOAD"),
    (r"probeconfig x udp send a\q", r"bad escape in 'a\q': \xHH, \n, \r, \t, \0 or \\"),
    (r"probeconfig x udp send a\x4", r"bad escape in 'a\x4': \xHH, \n, \r, \t, \0 or \\"),
    ("probeconfig x udp send a expect b\\", r"bad escape in 'b\': \xHH, \n, \r, \t, \0 "
                                            r"or \\"),
    ("probeconfig x udp send \u00e9", "bad payload '\u00e9': printable ASCII, other bytes "
                                      "as \\xHH"),
    ("probeconfig x udp send " + r"\xff" * 1401, "payload of 1401 bytes: at most 1400"),
    ("probeconfig x tcp send a", "send: settings of udp probes only, probe x is tcp"),
    ("probeconfig x http recurse", "recurse: settings of dns probes only, probe x is http"),
    ("probeconfig x dns send a expect b",
     "send, expect: settings of http or udp probes only, probe x is dns"),
    ("probeconfig x udp send a query b", "query: settings of dns probes only, probe x is udp"),
    ("probeconfig x dns type bogus", "unknown query type 'BOGUS': A, NS, CNAME, SOA, PTR, "
                                     "MX, TXT, AAAA, SRV, NAPTR, DS, DNSKEY, CAA, ANY"),
    ("probeconfig x dns rcode noerror,,nxdomain",
     "bad rcode list 'NOERROR,,NXDOMAIN': names from NOERROR, FORMERR, SERVFAIL, NXDOMAIN, "
     "NOTIMP, REFUSED, YXDOMAIN, YXRRSET, NXRRSET, NOTAUTH, NOTZONE, such as "
     "noerror,nxdomain"),
    *((f"probeconfig x dns query {name}",
       f"bad query name '{name}': labels of letters, digits, '-' and '_' (1-63 "
       "characters), or '.'")
      for name in ("a..b", "..", "-a.example", "a" * 64 + ".example", "a!",
                   ".".join(["abcdefghi"] * 26))),
])
def test_bad_values_are_refused_in_one_line_and_change_nothing(line: str,
                                                               error: str) -> None:
    appliance, out = shell(*CONFIG[:2], "probeconfig x udp send keep")
    before = running_config.render(appliance.director, appliance.registry)
    session = appliance.open_session("t", "t", write=out.append, interactive=False)
    for setup in ("enable", "configure terminal"):
        session.execute(setup)
    out.clear()
    assert not session.execute(line)
    assert "".join(out).splitlines()[-1] == f"% {error}"
    assert running_config.render(appliance.director, appliance.registry) == before


def test_escapes_and_names() -> None:
    assert probe_kinds.unescape(r"a\x00\xFFb\\\n\r\t\0") == b"a\x00\xffb\\\n\r\t\x00"
    assert probe_kinds.unescape("") == b""
    assert probe_kinds.query_name(".") == "" and probe_kinds.query_name("a.") == "a"
    assert probe_kinds.query_name("_sip._udp.Example") == "_sip._udp.Example"
    assert probe_kinds.rcodes("NoError,servfail") == frozenset({0, 2})


def scapy_query(probe: Probe, ident: int) -> DNS:
    return DNS(dns.query(probe, ident, dns.question(probe)))


def test_the_query_is_what_a_dns_implementation_reads() -> None:
    who = Probe("who", "dns", query="who.example", qtype="txt", recurse=True)
    parsed = scapy_query(who, 0xBEEF)
    assert (parsed.id, parsed.qr, parsed.opcode, parsed.rd, parsed.qdcount) == (
        0xBEEF, 0, 0, 1, 1)
    assert (parsed.ancount, parsed.nscount, parsed.arcount) == (0, 0, 0)
    question = parsed.qd[0]
    assert (question.qname, question.qtype, question.qclass) == (b"who.example.", 16, 1)
    root = scapy_query(Probe("root", "dns"), 1)
    assert (root.rd, root.qd[0].qname, root.qd[0].qtype) == (0, b".", 2)
    assert dns.query(Probe("root", "dns"), 1, dns.question(Probe("root", "dns"))) == (
        struct.pack("!6H", 1, 0, 1, 0, 0, 0) + b"\0" + struct.pack("!HH", 2, 1))


WHO = Probe("who", "dns", query="who.example", qtype="TXT")
ASKED = dns.question(WHO)


def answer(ident: int = 7, rcode: int = 0, qname: str = "who.example", qtype: str = "TXT",
           **fields: object) -> bytes:
    fields = {"qr": 1, **fields}
    return bytes(DNS(id=ident, rcode=rcode, qd=DNSQR(qname=qname, qtype=qtype), **fields))


@pytest.mark.parametrize("data, verdict", [
    (answer(), (True, "NOERROR")),
    (answer(qname="WHO.Example"), (True, "NOERROR")),       # names: any case
    (answer(rcode=3), (False, "NXDOMAIN")),
    (answer(rcode=5), (False, "REFUSED")),
    (answer(rcode=11), (False, "RCODE-11")),
    (struct.pack("!6H", 7, 0x8183, 0, 0, 0, 0), (False, "NXDOMAIN")),  # an error, qd 0
    (struct.pack("!6H", 7, 0x8180, 0, 0, 0, 0), (False, "bad-response")),  # NOERROR, qd 0
    (answer(ident=8), (False, "bad-response")),
    (answer(qr=0), (False, "bad-response")),
    (answer(opcode=2), (False, "bad-response")),
    (answer(qname="who.example.org"), (False, "bad-response")),
    (answer(qtype="A"), (False, "bad-response")),
    (answer()[:-1], (False, "bad-response")),               # the question cut short
    (answer()[:11], (False, "bad-response")),
    (b"", (False, "bad-response")),
    (answer(qdcount=2), (False, "bad-response")),
])
def test_an_answer_is_judged_strictly(data: bytes, verdict: tuple[bool, str]) -> None:
    assert dns.verdict(WHO, 7, ASKED, data) == verdict


def test_expected_rcodes_pass() -> None:
    either = Probe("nx", "dns", query="who.example", qtype="TXT", rcode="nxdomain,refused")
    assert dns.verdict(either, 7, ASKED, answer(rcode=3)) == (True, "NXDOMAIN")
    assert dns.verdict(either, 7, ASKED, answer(rcode=0)) == (False, "NOERROR")


def test_garbage_never_raises() -> None:
    rng = random.Random(25)
    good = answer()
    samples = [good[:n] for n in range(len(good))]
    samples += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))
                for _ in range(3000)]
    samples += [bytes(b ^ (1 << rng.randrange(8)) if rng.random() < 0.1 else b
                      for b in good) for _ in range(3000)]
    for data in samples:
        good_, result = dns.verdict(WHO, 7, ASKED, data)
        assert good_ is False or data[:2] == good[:2]
        assert isinstance(result, str) and result


def run_with(monkeypatch: pytest.MonkeyPatch, probe: Probe, reply: bytes | OSError
             ) -> tuple[bool, str]:
    """wire.run with the datagram exchange answering `reply` (or failing with it)."""
    sent: list[bytes] = []

    async def exchange(addr: int, port: int, payload: bytes) -> bytes:
        sent.append(payload)
        if isinstance(reply, OSError):
            raise reply
        return reply

    monkeypatch.setattr(datagram, "exchange", exchange)
    result = asyncio.run(wire.run(probe, parse_ip("203.0.113.12"), 53))
    assert len(sent) == 1
    if probe.kind == "udp":
        assert sent == [probe.payload]
    return result


def test_udp_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    echo = Probe("echo", "udp", send=r"PING\n", expect=r"PONG\x20")
    assert run_with(monkeypatch, echo, b"PONG PING\n") == (True, "answered")
    assert run_with(monkeypatch, echo, b"PONGPING") == (False, "no-text")
    assert run_with(monkeypatch, Probe("any", "udp", send="x"), b"") == (True, "answered")
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    assert run_with(monkeypatch, echo, refused) == (False, "refused")
    assert run_with(monkeypatch, echo, OSError(errno.EHOSTUNREACH, "x")) == (
        False, "unreachable")


def test_dns_asks_with_a_fresh_id_and_checks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer echoing a previous query's ID fails: each probe asks with its own."""
    ids = set()

    async def echo_id(addr: int, port: int, payload: bytes) -> bytes:
        ids.add(payload[:2])
        return payload[:2] + answer()[2:]

    monkeypatch.setattr(datagram, "exchange", echo_id)
    for _ in range(20):
        assert asyncio.run(wire.run(WHO, parse_ip("203.0.113.12"), 53)) == (True, "NOERROR")
    assert len(ids) > 10
