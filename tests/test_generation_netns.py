"""The nf_tables generation (dataplane/generation.py) read from a real kernel: every
commit bumps it, a listing does not, so a kernel-table check may skip its listing while
the generation stands (kerneltable.KernelTable.repair)."""

from __future__ import annotations

import subprocess

import pytest

from localdirector.dataplane.generation import ruleset_generation

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
