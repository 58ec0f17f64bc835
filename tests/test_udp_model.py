"""UDP virtuals in the model and the shell (issue 25, part 1): ids with `udp`, a TCP and
a UDP service on one VIP:port, lookups by protocol, refusals across protocols, the udp
settings and their running-config lines, `show conns` with a protocol column."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from localdirector.model.addr import parse_ip
from localdirector.model.connection import Connection
from localdirector.model.director import Director
from localdirector.model.errors import ModelError
from localdirector.model.serverid import UDP_SERVICE, ServerId, ServerPattern
from test_shell_commands import Shell

VIP = parse_ip("192.0.2.53")
CLIENT = parse_ip("198.51.100.7")

CONFIG = """\
real 203.0.113.11:0:0:udp
real 203.0.113.12:0:0:udp
real 203.0.113.13
virtual 192.0.2.53:53:0:udp
virtual 192.0.2.53:53
bind 192.0.2.53:53:0:udp 203.0.113.11:0:0:udp 203.0.113.12:0:0:udp
bind 192.0.2.53:53 203.0.113.13
"""


def sid(text: str) -> ServerId:
    return ServerId.parse(text)


@pytest.fixture
def sh(tmp_path: Path) -> Shell:
    return Shell.configured(tmp_path, CONFIG)


def test_udp_ids_parse_format_and_keep_their_protocol_in_the_short_form() -> None:
    udp = sid("192.0.2.53:53:0:UDP")
    assert udp.proto == "udp" and str(udp) == "192.0.2.53:53:0:udp"
    assert udp.short() == "192.0.2.53:53:0:udp"
    assert sid("192.0.2.53:0:0:udp").short() == "192.0.2.53:0:0:udp"
    assert sid("192.0.2.53:53:0:tcp").short() == "192.0.2.53:53"
    assert udp != sid("192.0.2.53:53") and udp.service == 53 | UDP_SERVICE
    assert sid("192.0.2.53:53").service == 53
    pattern = ServerPattern.parse("192.0.2.53:*:*:udp")
    assert pattern.matches(udp) and not pattern.matches(sid("192.0.2.53:53"))
    assert ServerPattern.parse("192.0.2.53").matches(udp)


def test_tcp_and_udp_virtuals_share_a_vip_and_port_and_are_looked_up_by_protocol() -> None:
    d = Director()
    tcp = d.add_virtual(sid("192.0.2.53:53"))
    udp = d.add_virtual(sid("192.0.2.53:53:0:udp"))
    assert tcp is not udp
    assert d.lookup_virtual(CLIENT, VIP, 53) is tcp
    assert d.lookup_virtual(CLIENT, VIP, 53 | UDP_SERVICE) is udp
    # Port 0 is per protocol: the udp all-ports instance never takes tcp, nor the reverse.
    any_udp = d.add_virtual(sid("192.0.2.53:0:0:udp"))
    assert d.lookup_virtual(CLIENT, VIP, 5353 | UDP_SERVICE) is any_udp
    assert d.lookup_virtual(CLIENT, VIP, 5353) is None
    d.remove_virtual(sid("192.0.2.53:53:0:udp"))
    assert d.lookup_virtual(CLIENT, VIP, 53 | UDP_SERVICE) is any_udp
    assert d.lookup_virtual(CLIENT, VIP, 53) is tcp


def test_bind_id_lookups_are_per_protocol() -> None:
    d = Director()
    general = d.add_virtual(sid("192.0.2.53:53:0:udp"))
    tcp1 = d.add_virtual(sid("192.0.2.53:53:1"))
    udp1 = d.add_virtual(sid("192.0.2.53:53:1:udp"))
    d.assign(sid("192.0.2.53:53:1"), CLIENT, 24)
    assert d.lookup_virtual(CLIENT, VIP, 53) is tcp1
    # The tcp entry does not send the client's udp to the tcp instance (nor is it memoised so).
    assert d.lookup_virtual(CLIENT, VIP, 53 | UDP_SERVICE) is general
    assert d.assign(sid("192.0.2.53:53:1:udp"), CLIENT, 24) is None   # no rival across protocols
    assert d.lookup_virtual(CLIENT, VIP, 53 | UDP_SERVICE) is udp1
    assert d.lookup_virtual(CLIENT, VIP, 53) is tcp1


def test_binding_or_backing_up_across_protocols_is_refused_with_the_reason() -> None:
    d = Director()
    d.add_virtual(sid("192.0.2.53:53:0:udp"))
    d.add_virtual(sid("192.0.2.53:53"))
    d.add_real(sid("203.0.113.13"))
    d.add_real(sid("203.0.113.11:0:0:udp"))
    generation = d.generation
    with pytest.raises(ModelError, match="cannot bind udp 192.0.2.53:53:0:udp to tcp "
                                         "203.0.113.13:0:0:tcp: a service is one protocol"):
        d.bind(sid("192.0.2.53:53:0:udp"), sid("203.0.113.11:0:0:udp"), sid("203.0.113.13"))
    with pytest.raises(ModelError, match="cannot backup"):
        d.set_backup(sid("192.0.2.53:53"), sid("192.0.2.53:53:0:udp"))
    with pytest.raises(ModelError, match="cannot backup"):
        d.set_backup(sid("203.0.113.13"), sid("203.0.113.11:0:0:udp"))
    assert d.generation == generation
    assert d.virtuals[sid("192.0.2.53:53:0:udp")].links is None


def test_udp_settings_defaults_and_refusals(sh: Shell) -> None:
    d = sh.appliance.director
    udp, tcp = d.virtuals[sid("192.0.2.53:53:0:udp")], d.virtuals[sid("192.0.2.53:53")]
    assert (udp.timeout, tcp.timeout) == (60, 900)
    assert sh("timeout 192.0.2.53:53:0:udp 30", "flows 192.0.2.53:53:0:udp 1000",
              "per-datagram 192.0.2.53:53:0:udp", "predictor 192.0.2.53:53:0:udp roundrobin",
              "weight 203.0.113.11:0:0:udp 3", "out-of-service 192.0.2.53:53:0:udp")
    assert (udp.timeout, udp.flows, udp.per_datagram) == (30, 1000, True)
    config = sh.config()
    for line in ("virtual 192.0.2.53:53:0:udp os", "timeout 192.0.2.53:53:0:udp 30",
                 "flows 192.0.2.53:53:0:udp 1000", "per-datagram 192.0.2.53:53:0:udp",
                 "bind 192.0.2.53:53:0:udp 203.0.113.11:0:0:udp 203.0.113.12:0:0:udp",
                 "weight 203.0.113.11:0:0:udp 3"):
        assert line in config
    assert sh("no timeout 192.0.2.53:53:0:udp", "no per-datagram 192.0.2.53:53:0:udp",
              "in-service 192.0.2.53:53:0:udp")
    assert (udp.timeout, udp.per_datagram) == (60, False)   # udp's own default
    assert not any(l.startswith(("timeout", "per-datagram")) for l in sh.config())
    sh.take()
    before = sh.config()
    assert not sh("per-datagram 192.0.2.53:53")
    assert "% per-datagram applies to udp virtuals only" in sh.take()
    assert not sh("flows 192.0.2.53:53 10")
    assert "% flows applies to udp virtuals only" in sh.take()
    # Conntrack's NAT sends a flow's every datagram to one real: per-datagram and the
    # fast path exclude each other, either way round.
    assert sh("per-datagram 192.0.2.53:53:0:udp")
    assert not sh("fastpath 192.0.2.53:53:0:udp")
    assert ("is per-datagram: on the fast path the kernel sends every datagram of a flow "
            "to one real" in sh.take())
    assert sh("no per-datagram 192.0.2.53:53:0:udp", "fastpath 192.0.2.53:53:0:udp")
    assert not sh("per-datagram 192.0.2.53:53:0:udp")
    assert "is per-datagram: on the fast path" in sh.take()
    assert sh("no fastpath 192.0.2.53:53:0:udp")
    assert sh.config() == before


def test_test_assign_and_show_conns_name_the_protocol(sh: Shell) -> None:
    d = sh.appliance.director
    assert sh("do test assign 198.51.100.7 192.0.2.53:53")
    out = sh.take()
    assert "192.0.2.53:53:0:udp" in out and "203.0.113.13:0:0:tcp" in out
    udp = d.virtuals[sid("192.0.2.53:53:0:udp")]
    conn = Connection(CLIENT, 40000, VIP, 53, udp, d.reals[sid("203.0.113.11:0:0:udp")],
                      time.monotonic())
    d.conns.add(conn)
    assert sh("do show conns")
    row = sh.take().splitlines()[2].split()
    assert row[:3] + row[-1:] == ["198.51.100.7:40000", "192.0.2.53:53", "203.0.113.11:53",
                                  "udp"]
    assert sh("do show conns | json")
    [record] = json.loads(sh.take())
    assert record["proto"] == "udp"
    assert sh("do show conns 192.0.2.53:53:0:udp")
    assert "198.51.100.7:40000" in sh.take()
    assert sh("do show virtual 192.0.2.53:53:0:udp detail")
    assert "Udp: per-flow balancing, flows 65536, 0 flows evicted" in sh.take()
    assert sh("do show real 203.0.113.11:0:0:udp detail")
    assert "reassign after 3 datagrams" in sh.take()
