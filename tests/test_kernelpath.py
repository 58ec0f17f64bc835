"""The kernel-decided fast path without a kernel: which virtuals qualify (model), the
source partition against the engine's own Bind ID lookup, the nft text rendered from
the model, the counters folded into the model, and the running config."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import pytest
from test_shell_commands import Shell

from localdirector.dataplane.kerneltable import KernelTable, NetlinkReads
from localdirector.dataplane.kernelrules import KernelRules, desired_kernel
from localdirector.dataplane.nftables import (Shape, definition, expected_shape, install_text,
                                             update_text)
from localdirector.dataplane.iptables import dispatch_rules, names, raw_rules
from localdirector.dataplane.ruleset import desired_rules
from localdirector.model import kernelpath, maglev
from localdirector.model.addr import parse_ip
from localdirector.model.director import Director
from localdirector.model.serverid import ServerId

VIP = "192.0.2.10"
KERNEL_POOL = [
    "real 203.0.113.11", "real 203.0.113.12", "real 203.0.113.13:8001",
    f"virtual {VIP}:80", f"virtual {VIP}:80:1", f"virtual {VIP}:0:2",
    f"predictor {VIP}:80 roundrobin", f"predictor {VIP}:80:1 roundrobin",
    f"predictor {VIP}:0:2 roundrobin",
    f"bind {VIP}:80 203.0.113.11 203.0.113.12", f"bind {VIP}:80:1 203.0.113.13:8001",
    f"bind {VIP}:0:2 203.0.113.12", f"assign {VIP}:80:1 198.51.100.0 255.255.255.0",
    f"assign {VIP}:0:2 198.18.0.0 255.254.0.0",
]


def sid(text: str) -> ServerId:
    return ServerId.parse(text)


@pytest.fixture
def kernel(tmp_path: Path) -> Shell:
    shell = Shell(tmp_path)
    assert shell(*KERNEL_POOL, f"fastpath {VIP}:80 kernel"), shell.take()
    shell.take()
    return shell


def refusal(shell: Shell, line: str) -> str:
    before = shell.config()
    assert not shell(line)
    assert shell.config() == before   # nothing changed
    return shell.take().strip().splitlines()[-1]


@pytest.mark.parametrize("line, reason", [
    (f"predictor {VIP}:80 leastconns",
     f"% {VIP}:80:0:tcp uses predictor leastconns: the kernel decides only roundrobin, "
     "weighted and maglev"),
    (f"predictor {VIP}:80:1 fastest", f"% {VIP}:80:1:tcp uses predictor fastest: the kernel "
                                       "decides only roundrobin, weighted and maglev"),
    ("maxconns 203.0.113.12 5", "% real 203.0.113.12:0:0:tcp has maxconns: the kernel does "
                                "not count open connections"),
    ("threshold 203.0.113.11 2", "% real 203.0.113.11:0:0:tcp sets threshold or reassign: "
                                 "passive health needs the engine to see each connection"),
    ("reassign 203.0.113.13:8001 1", "% real 203.0.113.13:8001:0:tcp sets threshold or "
                                     "reassign: passive health needs the engine to see each "
                                     "connection"),
])
def test_later_changes_the_kernel_cannot_decide_are_refused(kernel: Shell, line: str,
                                                            reason: str) -> None:
    assert refusal(kernel, line) == reason


def test_a_real_with_maxconns_cannot_be_bound_or_made_a_backup(kernel: Shell) -> None:
    assert kernel("real 203.0.113.14", "maxconns 203.0.113.14 9")
    kernel.take()
    reason = ("% real 203.0.113.14:0:0:tcp has maxconns: the kernel does not count open "
              "connections")
    assert refusal(kernel, f"bind {VIP}:80 203.0.113.14") == reason
    assert refusal(kernel, "backup 203.0.113.11 203.0.113.14") == reason


def test_switching_an_ineligible_group_is_refused_and_changes_nothing(tmp_path) -> None:
    shell = Shell(tmp_path)
    assert shell(*KERNEL_POOL, f"predictor {VIP}:80:1 fastest")
    shell.take()
    assert refusal(shell, f"fastpath {VIP}:80 kernel") == (
        f"% {VIP}:80:1:tcp uses predictor fastest: the kernel decides only roundrobin, "
        "weighted and maglev")
    assert not any(v.fastpath for v in shell.director.virtuals.values())


def test_the_whole_group_switches_and_the_running_config_round_trips(kernel: Shell,
                                                                     tmp_path) -> None:
    assert all(v.kernel and v.fastpath for v in kernel.director.virtuals.values())
    saved = kernel.config()
    assert [line for line in saved if line.startswith("fastpath")] == [
        f"fastpath {VIP}:80 kernel", f"fastpath {VIP}:80:1 kernel",
        f"fastpath {VIP}:0:2 kernel"]
    replayed = Shell(tmp_path / "again")
    assert replayed(*(line for line in saved if not line.startswith("!"))), replayed.take()
    assert replayed.config() == saved
    # `fastpath X` goes back to the engine-decided fast path, `no fastpath X` off.
    assert kernel(f"fastpath {VIP}:80:1")
    assert {(v.fastpath, v.kernel) for v in kernel.director.virtuals.values()} == {(True, False)}
    assert kernel(f"no fastpath {VIP}:80")
    assert {(v.fastpath, v.kernel) for v in kernel.director.virtuals.values()} == {(False, False)}


def test_a_new_instance_joins_with_the_kernels_predictor(kernel: Shell) -> None:
    assert kernel(f"virtual {VIP}:80:3")
    assert "decided in the kernel (predictor roundrobin)" in kernel.take()
    new = kernel.director.virtuals[sid(f"{VIP}:80:3")]
    assert new.kernel and new.predictor == "roundrobin"


def test_mixing_kernel_and_engine_decided_virtuals_is_refused(kernel: Shell) -> None:
    assert kernel("real 203.0.113.14", "virtual 192.0.2.20:80",
                  "predictor 192.0.2.20:80 roundrobin", "bind 192.0.2.20:80 203.0.113.14",
                  "fastpath 192.0.2.20:80")
    kernel.take()
    assert refusal(kernel, "bind 192.0.2.20:80 203.0.113.11") == (
        f"% {VIP}:80:0:tcp is on the fast path decided in the kernel and 192.0.2.20:80:0:tcp "
        "is not, but both send connections to 203.0.113.11 port 80")


def _bind_id_director() -> Director:
    """Overlapping prefixes on one VIP, exact-port and all-ports instances."""
    d = Director()
    for text in (f"{VIP}:80", f"{VIP}:80:1", f"{VIP}:80:2", f"{VIP}:0:3", f"{VIP}:0",
                 f"{VIP}:443:4"):
        d.add_virtual(sid(text))
    for text, net, length in ((f"{VIP}:80:1", "198.51.100.0", 24),
                              (f"{VIP}:80:2", "198.51.100.128", 25),
                              (f"{VIP}:0:3", "198.51.100.0", 24),      # ties with :80:1
                              (f"{VIP}:0:3", "198.18.0.0", 15),
                              (f"{VIP}:80:2", "198.19.7.7", 32),
                              (f"{VIP}:443:4", "198.18.0.0", 16)):
        d.assign(sid(text), parse_ip(net), length)
    return d


@pytest.mark.parametrize("port", [80, 443, 0])
def test_partition_agrees_with_the_engines_lookup(port: int) -> None:
    d = _bind_id_director()
    ranges = kernelpath.partition(d, parse_ip(VIP), port)
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))   # disjoint, ascending
    dport = port or kernelpath.other_port(d, parse_ip(VIP))
    probe = random.Random(port)
    edges = [edge for first, last, _v in ranges for edge in (first - 1, first, last, last + 1)]
    for src in [*edges, *(probe.randrange(1 << 32) for _ in range(2000)),
                *(parse_ip("198.51.100.0") + probe.randrange(256) for _ in range(200)),
                *(parse_ip("198.18.0.0") + probe.randrange(1 << 17) for _ in range(200))]:
        if not 0 <= src < 1 << 32:
            continue
        got = next((v for first, last, v in ranges if first <= src <= last), None)
        assert got is d.lookup_virtual(src, parse_ip(VIP), dport), hex(src)


def test_rendered_source_map_resolves_overlaps_and_prefers_the_exact_port() -> None:
    d = _bind_id_director()
    for v in d.virtuals.values():
        v.fastpath = v.kernel = True
    text = "\n".join(definition(desired_kernel(d), "localdirector9"))
    port80 = next(line for line in text.splitlines()
                  if "elements" in line and "i_192_0_2_10_80_0" in line)
    # The /25 inside the /24; the /24 tie goes to the port-80 instance, not the port-0
    # one; the /32 inside 198.18.0.0/15 is cut out of it.
    assert ("198.51.100.0-198.51.100.127 : goto i_192_0_2_10_80_1, "
            "198.51.100.128-198.51.100.255 : goto i_192_0_2_10_80_2") in port80
    assert ("198.18.0.0-198.19.7.6 : goto i_192_0_2_10_0_3, 198.19.7.7 : goto i_192_0_2_10_80_2, "
            "198.19.7.8-198.19.255.255 : goto i_192_0_2_10_0_3") in port80
    # Every other port: only the all-ports instances.
    assert ("elements = { 0.0.0.0-198.17.255.255 : goto i_192_0_2_10_0_0, "
            "198.18.0.0-198.19.255.255 : goto i_192_0_2_10_0_3, "
            "198.20.0.0-198.51.99.255 : goto i_192_0_2_10_0_0, "
            "198.51.100.0-198.51.100.255 : goto i_192_0_2_10_0_3, "
            "198.51.101.0-255.255.255.255 : goto i_192_0_2_10_0_0 }") in text
    assert ("ct state new ip daddr . tcp dport vmap { 192.0.2.10 . 80 : goto d_192_0_2_10_80, "
            "192.0.2.10 . 443 : goto d_192_0_2_10_443 }") in text
    assert "ct state new meta l4proto tcp ip daddr vmap { 192.0.2.10 : goto d_192_0_2_10_0 }" \
        in text
    # No reals anywhere: every instance answers with a counted RST.
    assert 'counter name "x_192_0_2_10_80_1" reject with tcp reset' in text


def test_pool_follows_weights_health_and_backups(kernel: Shell) -> None:
    d = kernel.director
    assert kernel(f"predictor {VIP}:80 weighted", "weight 203.0.113.11 6",
                  "weight 203.0.113.12 2")
    text = "\n".join(definition(desired_kernel(d), "t"))
    assert ("numgen inc mod 4 vmap { 0-2 : goto r_192_0_2_10_80_0__203_0_113_11_0_0, "
            "3 : goto r_192_0_2_10_80_0__203_0_113_12_0_0 }") in text
    assert 'counter name "c_192_0_2_10_80_1__203_0_113_13_8001_0" meta l4proto tcp dnat ' \
           'to 203.0.113.13:8001' in text
    # Out of service: only the other; its backup real when neither can serve.
    assert kernel("real 203.0.113.15", "backup 203.0.113.12 203.0.113.15",
                  "out-of-service 203.0.113.11")
    assert kernelpath.pool(d, d.virtuals[sid(f"{VIP}:80")]).reals == (
        (d.reals[sid("203.0.113.12")], 1),)
    assert kernel("out-of-service 203.0.113.12")
    assert kernelpath.pool(d, d.virtuals[sid(f"{VIP}:80")]).reals == (
        (d.reals[sid("203.0.113.15")], 1),)
    # The preferred instance overflows to its backup virtual (counted there).
    assert kernel("out-of-service 203.0.113.13:8001", f"backup {VIP}:80:1 {VIP}:80")
    pool = kernelpath.pool(d, d.virtuals[sid(f"{VIP}:80:1")])
    assert pool.served is d.virtuals[sid(f"{VIP}:80")]
    assert kernel("out-of-service 203.0.113.15")
    assert kernelpath.pool(d, d.virtuals[sid(f"{VIP}:80:1")]) is None


class FakeNft:
    """nft as far as KernelTable uses it: transactions are recorded, listings report
    counters the test sets."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.packets: dict[str, int] = {}
        self.shape: Shape | None = None   # maps and rules per chain the listing shows
        self.listings = 0
        self.argvs: list[list[str]] = []   # the listings asked for

    def __call__(self, argv: list[str], stdin: str) -> str:
        if argv[:2] == ["-f", "-"]:
            self.texts.append(stdin)
            return ""
        self.argvs.append(argv)
        self.listings += 1
        items: list[dict] = [{"counter": {"name": n, "packets": p}}
                             for n, p in self.packets.items()]
        if self.shape is not None:
            _counters, maps, chains = self.shape
            items += [{"map": {"name": name}} for name in maps]
            for chain, rules in chains:
                items += [{"chain": {"name": chain}}]
                items += [{"rule": {"chain": chain}}] * rules
        return json.dumps({"nftables": items})


def test_counters_fold_exactly_and_retire_one_update_late(kernel: Shell) -> None:
    d = kernel.director
    nft = FakeNft()
    table = KernelTable(9, nft)
    table.install(desired_kernel(d))
    counter = "c_192_0_2_10_80_0__203_0_113_11_0_0"
    nft.packets = {counter: 5, "x_192_0_2_10_80_1": 2}
    table.fold(d)
    table.fold(d)   # nothing new: nothing added
    real, virtual = d.reals[sid("203.0.113.11")], d.virtuals[sid(f"{VIP}:80")]
    assert (real.total_conns, virtual.conns_total) == (5, 5)
    assert d.virtuals[sid(f"{VIP}:80:1")].no_real_drops == 2
    # Unbound: the counter's rules go, the counter stays until the next update has
    # folded what it counted meanwhile.
    assert kernel(f"no bind {VIP}:80 203.0.113.11")
    nft.packets[counter] = 7
    assert table.update(desired_kernel(d), d)
    assert f"delete counter ip localdirector9 {counter}" not in nft.texts[-1]
    nft.packets[counter] = 8
    assert kernel("real 203.0.113.14", f"bind {VIP}:80 203.0.113.14")
    assert table.update(desired_kernel(d), d)
    assert f"delete counter ip localdirector9 {counter}" in nft.texts[-1]
    assert real.total_conns == 8 and virtual.conns_total == 8
    assert not table.update(desired_kernel(d), d)   # unchanged: no nft run


def _installed(d: Director, nft: FakeNft, netlink: NetlinkReads | None = None
               ) -> tuple[KernelTable, KernelRules, str]:
    """A table installed from `d`, intact in `nft`'s listing, one counter at 3."""
    table = KernelTable(9, nft, netlink)
    rules = desired_kernel(d)
    table.install(rules)
    nft.shape = expected_shape(rules)
    counter = "c_192_0_2_10_80_0__203_0_113_11_0_0"
    nft.packets = dict.fromkeys(rules.counters, 0) | {counter: 3}
    return table, rules, counter


def test_one_listing_verifies_the_table_and_folds_its_counters(kernel: Shell) -> None:
    d = kernel.director
    nft = FakeNft()
    table, rules, counter = _installed(d, nft)
    real = d.reals[sid("203.0.113.11")]
    assert not table.repair(d)                    # intact: counted, nothing reinstalled
    assert (nft.listings, len(nft.texts), real.total_conns) == (1, 1, 3)
    nft.shape = None                              # someone flushed its rules and maps
    nft.packets[counter] = 4
    assert table.repair(d) and table.repairs == 1
    assert real.total_conns == 4                  # what the counter still held
    assert nft.texts[-1] == install_text(rules, "localdirector9")


def test_an_unchanged_generation_spares_the_listing(kernel: Shell) -> None:
    """While the namespace's nf_tables generation stands where it stood when the table
    was found intact, nothing was committed since: a check reads the counters over
    netlink (folded as ever) and starts no nft. A new generation (anybody's commit)
    brings the listing back, which finds a changed table and reinstalls it; without an
    answer from netlink the table is listed as before."""
    d = kernel.director
    nft = FakeNft()
    generation = [5]
    reads: list[tuple[int, str]] = []

    def counters(family: int, table: str) -> dict[str, int]:
        reads.append((family, table))
        return dict(nft.packets)
    table, rules, counter = _installed(d, nft, NetlinkReads(lambda: generation[0], counters))
    real = d.reals[sid("203.0.113.11")]
    listing = ["-j", "-t", "list", "table", "ip", "localdirector9"]
    assert not table.repair(d) and nft.argvs == [listing] and not reads
    nft.packets[counter] = 6
    assert not table.repair(d) and not table.repair(d)
    assert nft.argvs == [listing] and reads == [(socket.AF_INET, "localdirector9")] * 2
    assert real.total_conns == 6                      # counted without nft
    nft.shape = None                                  # flushed by someone: a commit
    assert not table.repair(d) and table.repairs == 0  # (not seen while it stands)
    generation[0] = 6
    assert table.repair(d) and table.repairs == 1
    assert nft.argvs[-1] == listing and nft.texts[-1] == install_text(rules,
                                                                      "localdirector9")
    nft.shape = expected_shape(rules)
    generation[0] = 7                                 # our own reinstall's commit
    assert not table.repair(d) and nft.argvs[-1] == listing
    listings = len(nft.argvs)
    assert not table.repair(d) and len(nft.argvs) == listings

    def unanswered() -> int:
        raise OSError("no answer")
    listed = KernelTable(9, nft, NetlinkReads(unanswered, counters))
    listed.install(rules)
    assert not listed.repair(d) and not listed.repair(d)
    assert nft.argvs[-2:] == [listing, listing]       # unknown: always listed

    def refused(family: int, table: str) -> dict[str, int]:
        raise OSError("refused")
    fallback = KernelTable(9, nft, NetlinkReads(lambda: 8, refused))
    fallback.install(rules)
    assert not fallback.repair(d) and not fallback.repair(d)   # counters from nft then
    assert nft.argvs[-1] == ["-j", "list", "counters", "table", "ip", "localdirector9"]


def test_update_keeps_the_counters_and_the_base_chain() -> None:
    d = _bind_id_director()
    for v in d.virtuals.values():
        v.fastpath = v.kernel = True
    rules = desired_kernel(d)
    text = update_text(rules, rules, "t", frozenset({"c_gone"}))
    assert text.startswith("flush table ip t\ndelete map ip t s_192_0_2_10_80\n")
    assert "delete chain ip t prerouting" not in text and "delete counter ip t c_gone" in text
    assert "delete table" not in text


MAGLEV_POOL = [
    "real 203.0.113.11", "real 203.0.113.12", "real 203.0.113.13",
    f"virtual {VIP}:80", f"predictor {VIP}:80 maglev",
    f"bind {VIP}:80 203.0.113.11 203.0.113.12 203.0.113.13", f"fastpath {VIP}:80 kernel",
]
MAGLEV_INSTANCE = "i_192_0_2_10_80_0"


def _picker(shell: Shell) -> str:
    """The rule of the maglev instance's chain, from the rendered table."""
    lines = definition(desired_kernel(shell.director), "t")
    at = lines.index(f"  chain {MAGLEV_INSTANCE} {{")
    return lines[at + 1].strip()


def _slots(picker: str) -> dict[int, str]:
    """slot -> real address, from a `jhash ... vmap { a-b : goto r_... }` rule."""
    out = {}
    for element in picker.split("{ ", 1)[1].rstrip(" }").split(", "):
        span, chain = element.split(" : goto ")
        first, _, last = span.partition("-")
        real = chain.split("__")[1].rsplit("_", 2)[0].replace("_", ".")
        out.update(dict.fromkeys(range(int(first), int(last or first) + 1), real))
    return out


def test_maglev_is_the_models_table_hashed_by_jhash_with_a_seed_of_the_virtual(
        tmp_path) -> None:
    one, two = Shell(tmp_path / "one"), Shell(tmp_path / "two")
    assert one(*MAGLEV_POOL), one.take()
    # Another process, the same configuration in another order: the same rule.
    assert two(*reversed(MAGLEV_POOL[:3]), *MAGLEV_POOL[3:5],
               f"bind {VIP}:80 203.0.113.13 203.0.113.12 203.0.113.11", MAGLEV_POOL[-1])
    picker = _picker(one)
    assert picker == _picker(two)
    seed = kernelpath.seed(one.director.virtuals[sid(f"{VIP}:80")])
    assert picker.startswith("jhash ip saddr . tcp sport . ip daddr . tcp dport mod 4099 "
                             f"seed 0x{seed:08x} vmap {{ 0")
    # Slot by slot the model's own Maglev table (model/maglev.py) at the kernel's size.
    members = [(parse_ip(f"203.0.113.1{i}"), 0, 1) for i in (1, 2, 3)]
    table = maglev.MaglevTable.build(members, kernelpath.KERNEL_MAGLEV_SIZE)
    slots = _slots(picker)
    assert len(slots) == 4099
    assert all(slots[s] == f"203.0.113.1{table.table[s] + 1}" for s in range(4099))
    one.take()
    assert one(f"do show maglev {VIP}:80"), one.take()
    shown = one.take()
    assert (f"In the kernel: 4099 slots, jhash seed 0x{seed:08x}, digest {table.digest()}"
            in shown), shown
    # The seed comes from the virtual's identity only: its reals do not change it.
    assert one("out-of-service 203.0.113.12")
    assert f"seed 0x{seed:08x}" in _picker(one)
    # A configured table-size is loaded as it is.
    assert one(f"table-size {VIP}:80 8191")
    assert "mod 8191 seed" in _picker(one)


def test_maglev_removal_moves_only_the_leaving_reals_slots_and_a_little_more(
        tmp_path) -> None:
    shell = Shell(tmp_path)
    assert shell(*MAGLEV_POOL), shell.take()
    before = _slots(_picker(shell))
    assert shell("out-of-service 203.0.113.12")
    after = _slots(_picker(shell))
    moved = [s for s in before if before[s] != after[s]]
    leaving = [s for s in before if before[s] == "203.0.113.12"]
    assert set(leaving) <= set(moved) and "203.0.113.12" not in after.values()
    assert len(leaving) in (1366, 1367)                   # M/N +-1
    assert len(moved) - len(leaving) < 0.02 * 4099, len(moved)
    assert shell("in-service 203.0.113.12")
    assert _slots(_picker(shell)) == before               # back: the same table


def test_sticky_clients_are_looked_up_in_a_set_per_real_that_survives_updates(
        kernel: Shell) -> None:
    d = kernel.director
    assert kernel(f"sticky {VIP}:80 10")
    rules = desired_kernel(d)
    text = "\n".join(definition(rules, "t"))
    memory = "k_192_0_2_10_80_0__203_0_113_11_0_0_10"
    assert (f"  set {memory} {{\n    type ipv4_addr\n    flags dynamic,timeout\n"
            "    timeout 10m\n    size 65536\n  }") in text
    assert (f"  chain i_192_0_2_10_80_0 {{\n    ip saddr @{memory} goto "
            "r_192_0_2_10_80_0__203_0_113_11_0_0\n    ip saddr "
            "@k_192_0_2_10_80_0__203_0_113_12_0_0_10 goto r_192_0_2_10_80_0__203_0_113_12_0_0"
            "\n    numgen inc mod 2 vmap") in text
    assert (f"  chain r_192_0_2_10_80_0__203_0_113_11_0_0 {{\n    update @{memory} "
            '{ ip saddr }\n    counter name "c_192_0_2_10_80_0__203_0_113_11_0_0" meta '
            "l4proto tcp dnat to 203.0.113.11\n  }") in text
    # An update keeps the sets it still uses; a new timeout is a new set.
    assert f"delete set ip t {memory}" not in update_text(rules, rules, "t")
    assert kernel(f"sticky {VIP}:80 20")
    moved = update_text(desired_kernel(d), rules, "t")
    assert f"delete set ip t {memory}\n" in moved and f"set {memory[:-3]}_20 {{" in moved
    assert expected_shape(desired_kernel(d))[1] >= {f"{memory[:-3]}_20"}


DISPATCHED = [
    "real 203.0.113.15", "real 203.0.113.16", "virtual 192.0.2.30:0",
    "predictor 192.0.2.30:0 maglev", "dispatched 192.0.2.30:0",
    "bind 192.0.2.30:0 203.0.113.15 203.0.113.16", "fastpath 192.0.2.30:0 kernel",
]


def test_dispatched_maglev_is_forwarded_unchanged_ahead_of_conntrack(tmp_path) -> None:
    shell = Shell(tmp_path)
    assert shell(*DISPATCHED), shell.take()
    rules = desired_kernel(shell.director)
    text = "\n".join(definition(rules, "t"))
    key = " . ".join(f"jhash ip saddr . tcp sport . ip daddr . tcp dport mod 4294967295 "
                     f"seed 0x6c646d3{n}" for n in (1, 2))
    assert ("  chain r_192_0_2_30_0_0__203_0_113_15_0_0 {\n    tcp flags & (fin | syn | rst "
            '| ack) == syn counter name "c_192_0_2_30_0_0__203_0_113_15_0_0" update '
            f"@flows_tcp {{ {key} timeout 900s : 203.0.113.15 }}\n    dup to 203.0.113.15 "
            "drop\n  }") in text
    # Every packet is decided (no SYN-only rule), in a filter chain at raw + 1; a
    # remembered flow's packets go to its real first.
    assert ("  chain d_192_0_2_30_0 {\n    tcp flags & (fin | rst) != 0 dup to "
            f"{key} map @flows_tcp update @flows_tcp {{ {key} timeout 10s : 0.0.0.0 }} drop"
            "\n    dup to "
            f"{key} map @flows_tcp update @flows_tcp {{ {key} timeout 900s : 0.0.0.0 }} drop"
            "\n    ip saddr vmap @s_192_0_2_30_0\n    drop\n  }" in text)
    assert ("  chain dispatch {\n    type filter hook prerouting priority raw + 1; policy "
            "accept;\n    meta l4proto tcp ip daddr vmap { 192.0.2.30 : goto d_192_0_2_30_0 }"
            "\n  }") in text
    assert "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy " \
           "accept;\n  }" in text
    # Nothing for the engine: no TEE rule, no mark; the SYN guard notes clients in raw.
    wanted = desired_rules(shell.director)
    assert wanted.targets == () and wanted.kernel == () and wanted.forwarded == (
        parse_ip("192.0.2.30"),)
    n = names(9)
    assert (f"-A {n.chain} -d 192.0.2.30/32 -p tcp -m tcp --tcp-flags SYN,RST,ACK ACK "
            f"-j SET --add-set {n.known} src --exist") in raw_rules(wanted, n)
    assert "TEE" not in "\n".join(dispatch_rules(wanted, {}, n))
    # Nothing can serve: SYNs are counted, every packet answered with a RST.
    assert shell("out-of-service 203.0.113.15", "out-of-service 203.0.113.16")
    text = "\n".join(definition(desired_kernel(shell.director), "t"))
    assert ("  chain i_192_0_2_30_0_0 {\n    tcp flags & (fin | syn | rst | ack) == syn "
            'counter name "x_192_0_2_30_0_0"\n    reject with tcp reset\n  }') in text


@pytest.mark.parametrize("line, reason", [
    ("predictor 192.0.2.30:0 roundrobin",
     "% 192.0.2.30:0:0:tcp is dispatched: the kernel forwards each packet by itself, so "
     "only predictor maglev finds the same real for all of them"),
    ("sticky 192.0.2.30:0 5",
     "% 192.0.2.30:0:0:tcp is dispatched and sticky: each director would remember its own "
     "clients, and the kernel remembers flows, not clients"),
])
def test_dispatched_in_the_kernel_needs_maglev_and_no_sticky(tmp_path, line: str,
                                                            reason: str) -> None:
    shell = Shell(tmp_path)
    assert shell(*DISPATCHED), shell.take()
    shell.take()
    assert refusal(shell, line) == reason


def test_a_vips_kernel_decided_instances_are_all_dispatched_or_none(tmp_path) -> None:
    """One VIP's instances share the kernel's chains (the source map reaches the
    port-0 instances), and a backup virtual serves from its primary's instance chain:
    forwarded and translated cannot mix there."""
    shell = Shell(tmp_path)
    assert shell(*DISPATCHED), shell.take()
    shell.take()
    reason = ("% 192.0.2.30:0:0:tcp is dispatched and 192.0.2.30:0:1:tcp is not, but the "
              "kernel decides their connections in one chain (a VIP's instances and their "
              "backups)")
    assert refusal(shell, "virtual 192.0.2.30:0:1") == reason
    assert shell("real 203.0.113.17", "virtual 192.0.2.40:0", "predictor 192.0.2.40:0 maglev",
                 "bind 192.0.2.40:0 203.0.113.17", "fastpath 192.0.2.40:0 kernel"), shell.take()
    shell.take()
    assert refusal(shell, "backup 192.0.2.30:0 192.0.2.40:0") == (
        "% 192.0.2.30:0:0:tcp is dispatched and 192.0.2.40:0:0:tcp is not, but the kernel "
        "decides their connections in one chain (a VIP's instances and their backups)")


def test_dispatched_roundrobin_cannot_go_to_the_kernel(tmp_path) -> None:
    shell = Shell(tmp_path)
    assert shell(*DISPATCHED[:-4], "dispatched 192.0.2.30:0",
                 "predictor 192.0.2.30:0 roundrobin", DISPATCHED[-2])
    shell.take()
    assert refusal(shell, DISPATCHED[-1]) == (
        "% 192.0.2.30:0:0:tcp is dispatched: the kernel forwards each packet by itself, so "
        "only predictor maglev finds the same real for all of them")
    # The engine-decided fast path still refuses a dispatched virtual.
    assert refusal(shell, "fastpath 192.0.2.30:0").startswith(
        "% 192.0.2.30:0:0:tcp is dispatched: the fast path translates")
