"""nf_tables read over netlink (dataplane/nftnetlink.py) from a real kernel: every commit
bumps the generation, a listing does not, so a kernel-table check may skip its listing
while the generation stands (kerneltable.KernelTable.repair); and a table's counters, as
nft lists them, however many."""

from __future__ import annotations

import socket
import subprocess

import pytest

from localdirector.dataplane.nftnetlink import counter_packets, ruleset_generation

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("private_loopback")]


def nft(*argv: str) -> str:
    return subprocess.run(["nft", *argv], check=True, capture_output=True, text=True,
                          timeout=30).stdout


def test_commits_bump_the_generation_and_listings_do_not() -> None:
    before = ruleset_generation()
    nft("add", "table", "ip", "ldgen")
    added = ruleset_generation()
    assert added > before
    nft("-j", "-t", "list", "table", "ip", "ldgen")
    nft("-j", "list", "counters", "table", "ip", "ldgen")
    assert ruleset_generation() == added             # reading changes nothing
    subprocess.run(["iptables", "-t", "raw", "-N", "LDGEN"], check=True, timeout=30)
    assert ruleset_generation() > added              # iptables-nft commits as well
    subprocess.run(["iptables", "-t", "raw", "-X", "LDGEN"], check=True, timeout=30)
    nft("delete", "table", "ip", "ldgen")


def test_counters_read_over_netlink_as_nft_lists_them() -> None:
    lines = ["add table ip ldcount", *(f"add counter ip ldcount c{i}" for i in range(300)),
             "add chain ip ldcount out { type filter hook output priority 0; }",
             "add rule ip ldcount out ip daddr 127.0.0.1 udp dport 9 counter name c7"]
    subprocess.run(["nft", "-f", "-"], input="\n".join(lines) + "\n", check=True,
                   text=True, timeout=30)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(3):
            sock.sendto(b"x", ("127.0.0.1", 9))
    counts = counter_packets(socket.AF_INET, "ldcount")
    assert len(counts) == 300 and counts["c7"] == 3     # a dump of several datagrams
    assert sum(counts.values()) == 3
    # Another family's table of that name, or none: nothing (a table gone is found by
    # the generation, which its deletion moved).
    assert counter_packets(socket.AF_INET6, "ldcount") == {}
    assert counter_packets(socket.AF_INET, "nosuchtable") == {}
    nft("delete", "table", "ip", "ldcount")
