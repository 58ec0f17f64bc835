"""The namespace lab on its own (no appliance): topology, servers, helpers, cleanup.

Appliance tests trust this lab to tell them which real answered and whether bytes
arrived intact, so the lab's own servers and clients are checked here directly from the
director namespace, where the reals are one hop away.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from localdirector.lab import (
    ClientError,
    Lab,
    LabError,
    clean_stale,
    list_namespaces,
    pattern_digest,
    python_module,
)
from localdirector.lab.topology import OWNER_DIR

pytestmark = pytest.mark.netns

DIRECTOR_PORT = 8080


def test_each_real_answers_its_own_name_on_every_port(lab: Lab) -> None:
    for real in lab.reals:
        for port in lab.ports:
            body = lab.client_get(f"http://{real}:{port}/", ns=lab.director_ns)
            assert body == f"real-{real}:{port}\n"


def test_each_real_answers_over_ipv6_with_its_twin_address(lab: Lab) -> None:
    """Dual-stack reals (issue 26): 203.0.113.14 is also 2001:db8:1::14, one listener
    per family, each named by its own address, and /peer shows the IPv6 client."""
    assert lab.reals6["203.0.113.14"] == "2001:db8:1::14"
    for real in lab.reals:
        six = lab.reals6[real]
        for port in lab.ports:
            body = lab.client_get(f"http://[{six}]:{port}/", ns=lab.director_ns)
            assert body == f"real-[{six}]:{port}\n"
    six = lab.reals6[lab.reals[0]]
    assert lab.client_get(f"http://[{six}]/peer", ns=lab.director_ns,
                          source="2001:db8:1::1") == "2001:db8:1::1\n"
    size = 1024 * 1024
    [got] = lab.get_many(f"http://[{six}]:8001/bytes/{size}", ns=lab.director_ns, digest=True)
    assert (got.ok, got.length, got.sha256) == (True, size, pattern_digest(size))


def test_real_sees_the_connecting_address(lab: Lab) -> None:
    real = lab.reals[0]
    assert lab.client_get(f"http://{real}/peer", ns=lab.director_ns, source="203.0.113.1") == (
        "203.0.113.1\n"
    )


def test_bytes_endpoint_streams_the_deterministic_pattern(lab: Lab) -> None:
    size = 10 * 1024 * 1024
    results = lab.get_many(
        f"http://{lab.reals[-1]}:8001/bytes/{size}", ns=lab.director_ns, count=2, digest=True
    )
    assert [(r.ok, r.length, r.sha256) for r in results] == [(True, size, pattern_digest(size))] * 2
    small = lab.get_many(f"http://{lab.reals[0]}/bytes/1000", ns=lab.director_ns)[0]
    assert small.ok and small.length == 1000


def test_post_sha256_hashes_the_upload(lab: Lab) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    body = lab.client_post(f"http://{lab.reals[1]}/sha256", data, ns=lab.director_ns)
    assert body == hashlib.sha256(data).hexdigest() + "\n"


def test_hold_keeps_connections_open_concurrently(lab: Lab) -> None:
    started = time.monotonic()
    results = lab.get_many(
        f"http://{lab.reals[2]}/hold/0.4", ns=lab.director_ns, count=4, concurrency=4
    )
    elapsed = time.monotonic() - started
    assert all(r.ok and r.body == "held\n" and r.elapsed >= 0.4 for r in results), results
    assert elapsed < 1.5  # held in parallel, not one after another


@contextmanager
def director_server(lab: Lab, bind: str, target: str) -> Iterator[None]:
    """A lab HTTP server named `director` in the director namespace on `bind`, once the
    client namespace reaches it at `target`."""
    server = lab.popen_in(lab.director_ns, python_module(
        "servers", "--bind", bind, "--port", str(DIRECTOR_PORT), "--name", "director"
    ))
    try:
        probe = lab.run_in(lab.client_ns, python_module(
            "client", "probe", "--target", f"{target}:{DIRECTOR_PORT}", "--deadline", "5"
        ))
        assert probe.returncode == 0, probe.stdout + probe.stderr
        yield
    finally:
        server.kill()
        server.wait()


def test_client_reaches_director_from_every_source_subnet(lab: Lab) -> None:
    with director_server(lab, "0.0.0.0", "198.51.100.1"):
        sources = lab.all_client_addresses
        for director_addr in lab.director_client_side.values():
            results = lab.get_many(f"http://{director_addr}:{DIRECTOR_PORT}/peer", sources)
            assert [r.body for r in results] == [f"{src}\n" for src in sources]
        for addrs in lab.client_addresses.values():
            url = f"http://198.51.100.1:{DIRECTOR_PORT}/peer"
            assert lab.client_get(url, source=addrs[-1]) == f"{addrs[-1]}\n"
        many = lab.get_many(
            f"http://198.51.100.1:{DIRECTOR_PORT}/", sources, count=300, concurrency=10
        )
        assert all(r.ok and r.body == "director\n" for r in many)
        assert {r.source for r in many} == set(sources)


def test_ipv6_clients_reach_the_director_from_every_group(lab: Lab) -> None:
    """Each group's IPv6 clients (2001:db8:c::, d::, e:: /64 of their /48) reach the
    director's address on their link, and are seen by their own address."""
    assert lab.client_addresses6["preferred"][:2] == ("2001:db8:c::2", "2001:db8:c::3")
    with director_server(lab, "::", "[2001:db8:c::1]"):
        for group, side in lab.director_client_side6.items():
            sources = lab.client_addresses6[group]
            results = lab.get_many(f"http://[{side}]:{DIRECTOR_PORT}/peer", sources)
            assert [r.body for r in results] == [f"{src}\n" for src in sources]


def test_the_director_forwards_ipv6_between_clients_and_reals(lab: Lab) -> None:
    """With a route to the reals (the appliance's translation stands in for one), a
    client's packets cross the director both ways: the director resolves neither side
    by solicitation (it has no link-local address to solicit from), it knows them."""
    route = ["ip", "-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:e::1"]
    assert lab.run_in(lab.client_ns, route).returncode == 0
    try:
        for real in lab.reals:
            six = lab.reals6[real]
            source = lab.client_addresses6["general"][1]
            assert lab.client_get(f"http://[{six}]/peer", source=source) == f"{source}\n"
        with lab.more_clients(["2001:db8:e::77"]):
            assert lab.client_get(f"http://[{lab.reals6[lab.reals[0]]}]/peer",
                                  source="2001:db8:e::77") == "2001:db8:e::77\n"
    finally:
        lab.run_in(lab.client_ns, ["ip", "-6", "route", "del", "2001:db8:1::/64"])
    neighbours = lab.run_in(lab.director_ns, ["ip", "-6", "neigh", "show"]).stdout
    assert "2001:db8:e::77" not in neighbours and "PERMANENT" in neighbours


def test_routes_and_director_sysctls(lab: Lab) -> None:
    routes = lab.run_in(lab.client_ns, ["ip", "route"]).stdout
    assert "192.0.2.0/24 via 198.51.100.1" in routes
    assert "default" not in routes  # clients reach nothing but their subnets and the VIP
    keys = ["net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter", "net.ipv4.conf.cli0.rp_filter",
            "net.ipv4.conf.br0.rp_filter"]
    values = lab.run_in(lab.director_ns, ["sysctl", "-n", *keys]).stdout.split()
    assert values == ["1", "0", "0", "0", "0"]
    real_routes = lab.run_in(lab.real_ns[lab.reals[0]], ["ip", "route"]).stdout
    assert "default via 203.0.113.1" in real_routes
    # IPv6: the VIPs' /64 through the director, which forwards; the reals' way back.
    routes = lab.run_in(lab.client_ns, ["ip", "-6", "route"]).stdout
    assert "2001:db8::/64 via 2001:db8:c::1" in routes and "default" not in routes
    forwarding = lab.run_in(lab.director_ns, ["sysctl", "-n", "net.ipv6.conf.all.forwarding"])
    assert forwarding.stdout == "1\n"
    real_routes = lab.run_in(lab.real_ns[lab.reals[0]], ["ip", "-6", "route"]).stdout
    assert "default via 2001:db8:1::1" in real_routes


def test_only_documentation_addresses_are_configured(lab: Lab) -> None:
    """Both families, documentation ranges only: no fe80:: link-local address either
    (the lab generates none), and every address usable at once (no DAD pending)."""
    allowed = [ipaddress.ip_network(net) for net in
               ("127.0.0.0/8", "198.51.100.0/24", "198.18.0.0/15", "203.0.113.0/24",
                "::1/128", "2001:db8::/32")]
    for ns in lab.namespaces:
        text = lab.run_in(ns, ["ip", "-o", "addr", "show"]).stdout
        words = text.split()
        addrs = [ipaddress.ip_interface(words[i + 1]).ip
                 for i, word in enumerate(words) if word in ("inet", "inet6")]
        assert len(addrs) > 1  # loopback plus the lab addresses
        assert all(any(addr in net for net in allowed) for addr in addrs), (ns, addrs)
        assert [a for a in addrs if a.version == 6 and not a.is_loopback], (ns, addrs)
        assert "tentative" not in text, text


def test_stopped_listener_refuses_and_restarts(lab: Lab) -> None:
    real = lab.reals[0]
    lab.stop_server(real, 80)
    try:
        with pytest.raises(ClientError) as refused:
            lab.client_get(f"http://{real}/", ns=lab.director_ns)
        assert refused.value.returncode == 7  # curl: connection refused (RST)
        assert lab.client_get(f"http://{real}:8001/", ns=lab.director_ns) == f"real-{real}:8001\n"
    finally:
        lab.start_server(real, 80)
    assert lab.client_get(f"http://{real}/", ns=lab.director_ns) == f"real-{real}:80\n"


def test_real_iptables_drop_blackholes_the_real(lab: Lab) -> None:
    real = lab.reals[1]
    rule = ["INPUT", "-p", "tcp", "--dport", "80", "-j", "DROP"]
    lab.real_iptables(real, ["-I", *rule])
    try:
        dropped = lab.get_many(f"http://{real}/", ns=lab.director_ns, timeout=0.5)[0]
        assert dropped.error is not None and "Timeout" in dropped.error
    finally:
        lab.real_iptables(real, ["-D", *rule])
    assert lab.client_get(f"http://{real}/", ns=lab.director_ns) == f"real-{real}:80\n"


def test_addresses_outside_documentation_ranges_are_refused(lab: Lab) -> None:
    # Just outside the reals' /24 either side, another documentation range (the
    # clients'), the director's own address, the broadcast, and a public address.
    for bad in ("203.0.112.254", "203.0.114.11", "198.51.100.11", "203.0.113.1",
                "203.0.113.255", "8.8.8.8"):
        with pytest.raises(LabError):
            Lab(reals=(bad,))
    with pytest.raises(LabError, match="outside"):
        lab.client_get("http://8.8.8.8/")
    # IPv6: outside 2001:db8::/32, and inside it but outside the lab's own nets.
    for bad in ("http://[2001:4860:4860::8888]/", "http://[2001:db8:2::10]/"):
        with pytest.raises(LabError, match="outside"):
            lab.client_get(bad)
    with pytest.raises(LabError, match="not an address"):
        lab.client_get("http://[2001:db8::10]/", source="2001:db8:c::250")
    with pytest.raises(LabError, match="not an address"):
        lab.client_get("http://192.0.2.10/", source="198.51.100.250")
    with pytest.raises(LabError, match="not a namespace"):
        lab.run_in("host", ["true"])


@pytest.mark.usefixtures("netns")
def test_destroy_removes_namespaces_and_processes() -> None:
    small = Lab(reals=("203.0.113.21", "203.0.113.22"), ports=(80,), clients_per_subnet=2)
    small.build()
    names, owner = small.namespaces, OWNER_DIR / small.name
    pids = [proc.pid for proc in small._servers.values()]
    assert set(names) <= set(list_namespaces()) and owner.exists()
    assert small.build_seconds < 3.0
    small.destroy()
    small.destroy()  # idempotent
    assert not set(names) & set(list_namespaces())
    assert not owner.exists()
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)


@pytest.mark.usefixtures("netns")
def test_failed_build_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []

    def broken_verify(self: Lab) -> None:
        built.extend(self.namespaces)
        raise LabError("injected failure")

    monkeypatch.setattr(Lab, "_verify", broken_verify)
    half = Lab(reals=("203.0.113.31",), ports=(80,))
    with pytest.raises(LabError, match="injected"):
        half.build()
    # Its own namespaces, by name: other runs may build labs meanwhile.
    assert built and not set(built) & set(list_namespaces())
    assert half.namespaces == []


def _unused_lab_id() -> str:
    existing = list_namespaces()
    while True:
        lab_id = secrets.token_hex(2)
        if not any(ns.startswith(f"ld{lab_id}-") for ns in existing):
            if not (OWNER_DIR / f"ld{lab_id}").exists():
                return lab_id


def test_clean_stale_removes_only_ownerless_lab_namespaces(lab: Lab) -> None:
    lab_id = _unused_lab_id()
    leaked, lookalike = f"ld{lab_id}-cli", f"ld{lab_id}-client"
    for name in (leaked, lookalike):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        removed = clean_stale()
        remaining = set(list_namespaces())
        assert leaked in removed and leaked not in remaining
        assert lookalike in remaining
        assert set(lab.namespaces) <= remaining  # its owner (this process) is alive
    finally:
        for name in (leaked, lookalike):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
