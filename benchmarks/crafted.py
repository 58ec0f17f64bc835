"""What the micro benchmark drives (benchmarks/micro.py, benchmarks/scrape.py): the
model at the design's scale (a VIP with Bind ID instances over 100,000 assign prefixes)
and a short connection's packets, built once with scapy and copied per use, so building
them is never in a figure."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from scapy.layers.inet import IP, TCP

from localdirector.dataplane.engine import Engine
from localdirector.dataplane.packet import rewrite
from localdirector.model.addr import family_of, format_ip, parse_ip
from localdirector.model.connection import Connection, flow_key
from localdirector.model.director import Director
from localdirector.model.serverid import ServerId

VIP = parse_ip("192.0.2.10")
VPORT = 80
REALS = ("203.0.113.11", "203.0.113.12", "203.0.113.13")
POOL = 2048                                    # distinct client addresses
BIND_IDS = 4                                   # instances 1..4 besides the general one
ASSIGN_NET = (parse_ip("198.18.0.0"), 15)      # where the assign prefixes live
GENERAL_NET = (parse_ip("198.51.100.0"), 24)   # clients no assign entry covers
PREFIX_LENGTHS = (32, 32, 32, 32, 32, 32, 31, 30, 30, 29, 28, 28, 26, 24)


@dataclass(frozen=True)
class Site:
    """One family's VIP, reals, where the assign prefixes live (and their lengths: as
    many distinct ones, the lookup's cost, in both families) and the general clients."""

    vip: int
    reals: tuple[str, ...]
    assign_net: tuple[int, int]
    general_net: tuple[int, int]
    lengths: tuple[int, ...]


IPV4_SITE = Site(VIP, REALS, ASSIGN_NET, GENERAL_NET, PREFIX_LENGTHS)
# IPv6 (issue 26): clients of 2001:db8:c::/48 by host, /64, /56... and the general ones
# of 2001:db8:d::/120; seven distinct lengths, as IPv4's.
IPV6_SITE = Site(parse_ip("2001:db8::10"), ("2001:db8:1::11", "2001:db8:1::12",
                                            "2001:db8:1::13"),
                 (parse_ip("2001:db8:c::"), 48), (parse_ip("2001:db8:d::"), 120),
                 (128, 128, 128, 128, 128, 128, 64, 62, 62, 60, 56, 56, 52, 49))


# ------------------------------------------------------------------ the model
def build_director(assigns: int, rng: random.Random,
                   site: Site = IPV4_SITE) -> tuple[Director, list[tuple[int, int]]]:
    """VIP 192.0.2.10:80 (or the site's) with a general instance and BIND_IDS Bind ID
    instances, each bound to the three reals, and ``assigns`` distinct prefixes spread
    over the instances; returns the director and the prefixes."""
    director = Director()
    director.settings.max_conns = 1 << 40  # the benchmark fills the table on purpose
    reals = [director.add_real(ServerId(parse_ip(addr))).sid for addr in site.reals]
    for bind in range(BIND_IDS + 1):
        vsid = ServerId(site.vip, VPORT, bind)
        director.add_virtual(vsid)
        for real in reals:
            director.bind(vsid, real)
    prefixes = _random_prefixes(assigns, rng, site)
    for index, (addr, plen) in enumerate(prefixes):
        director.assign(ServerId(site.vip, VPORT, 1 + index % BIND_IDS), addr, plen)
    return director, prefixes


def _random_prefixes(count: int, rng: random.Random, site: Site) -> list[tuple[int, int]]:
    base, plen = site.assign_net
    family = family_of(base)
    span = 1 << (family.width - plen)
    seen: set[tuple[int, int]] = set()
    result = []
    while len(result) < count:
        length = rng.choice(site.lengths)
        prefix = ((base + rng.randrange(span)) & (family.mask(length) | family.tag), length)
        if prefix not in seen:
            seen.add(prefix)
            result.append(prefix)
    return result


def client_pool(prefixes: Sequence[tuple[int, int]], size: int,
                rng: random.Random, site: Site = IPV4_SITE) -> list[int]:
    """``size`` distinct client addresses: every general client of 198.51.100.0/24 (or
    the site's; no assign entry covers them: the lookup misses and falls back to Bind ID
    0) and the rest inside assigned prefixes (a Bind ID instance takes them), shuffled."""
    base, plen = site.general_net
    width = family_of(base).width
    general = [base + i for i in range(1, (1 << (width - plen)) - 1)]
    assigned: set[int] = set()
    room = sum(1 << (width - length) for _addr, length in prefixes)
    want = min(max(0, size - len(general)), room)
    while len(assigned) < want:
        addr, length = rng.choice(prefixes)
        assigned.add(addr + rng.randrange(1 << (width - length)))
    pool = general + sorted(assigned)
    rng.shuffle(pool)
    return pool


# ------------------------------------------------------------------- packets
class Packets:
    """scapy-built templates, retargeted with the data plane's own incremental rewrites,
    so every copy carries valid checksums (the engine verifies them on a SYN)."""

    def __init__(self) -> None:
        client, real = "198.51.100.7", REALS[0]
        opts = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]
        self.syn = bytes(IP(src=client, dst=format_ip(VIP)) / TCP(
            sport=40000, dport=VPORT, flags="S", seq=1,
            options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1000, 0)), ("NOP", None),
                     ("WScale", 7)]))
        self.synack = bytes(IP(src=real, dst=client) / TCP(
            sport=VPORT, dport=40000, flags="SA", seq=5000, ack=2,
            options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (3000, 1000)),
                     ("NOP", None), ("WScale", 7)]))
        self.ack = bytes(IP(src=client, dst=format_ip(VIP)) / TCP(
            sport=40000, dport=VPORT, flags="A", seq=2, ack=5001, options=opts))
        self.request = bytes(IP(src=client, dst=format_ip(VIP)) / TCP(
            sport=40000, dport=VPORT, flags="PA", seq=2, ack=5001, options=opts)
            / (b"GET /small HTTP/1.1\r\nHost: 192.0.2.10\r\n\r\n"))
        self.response = bytes(IP(src=real, dst=client) / TCP(
            sport=VPORT, dport=40000, flags="PA", seq=5001, ack=40, options=opts)
            / (b"x" * 1448))
        self.fin_in = bytes(IP(src=client, dst=format_ip(VIP)) / TCP(
            sport=40000, dport=VPORT, flags="FA", seq=40, ack=6449, options=opts))
        self.fin_out = bytes(IP(src=real, dst=client) / TCP(
            sport=VPORT, dport=40000, flags="FA", seq=6449, ack=41, options=opts))
        self.ack_out = bytes(IP(src=real, dst=client) / TCP(
            sport=VPORT, dport=40000, flags="A", seq=6450, ack=41, options=opts))

    @staticmethod
    def inbound(template: bytes, src: int, sport: int) -> bytearray:
        """Client -> VIP copy of ``template`` from ``src:sport``."""
        buf = bytearray(template)
        rewrite(buf, (buf[0] & 0x0F) << 2, src, sport, False)
        return buf

    @staticmethod
    def outbound(template: bytes, conn: Connection) -> bytearray:
        """Real -> client copy of ``template`` for ``conn`` (to its possibly remapped port)."""
        buf = bytearray(template)
        ihl = (buf[0] & 0x0F) << 2
        rewrite(buf, ihl, conn.real_ip, conn.real_port, False)
        rewrite(buf, ihl, conn.foreign_ip, conn.nat_port, True)
        return buf


def lifecycle(packets: Packets, engine: Engine, src: int, sport: int) -> list[bytearray]:
    """The 10 packets of one short HTTP connection, in order; reply packets are built
    only once the SYN has created the connection they must match, so this handles the
    SYN itself and returns the other 9 still to be handled."""
    engine.handle(packets.inbound(packets.syn, src, sport))
    conn = engine.director.conns.inbound[flow_key(src, sport, VIP, VPORT)]
    return [packets.outbound(packets.synack, conn), packets.inbound(packets.ack, src, sport),
            packets.inbound(packets.request, src, sport),
            packets.outbound(packets.response, conn), packets.inbound(packets.ack, src, sport),
            packets.outbound(packets.fin_out, conn), packets.inbound(packets.fin_in, src, sport),
            packets.outbound(packets.ack_out, conn)]


# ------------------------------------------------------------------- timing
class Tuples:
    """Hands out client (address, port) pairs never used before in this engine, so
    every SYN built from them opens a new connection instead of looking like a
    retransmission."""

    def __init__(self, pool: Sequence[int]) -> None:
        self.pool = pool
        self.block = 0  # ports 1024 + block are used up for every address of the pool

    def take(self, count: int) -> list[tuple[int, int]]:
        size, first = len(self.pool), self.block
        self.block += -(-count // size)
        if 1024 + self.block > 65536:
            raise RuntimeError("client tuples exhausted: use fewer connections or samples")
        return [(self.pool[i % size], 1024 + first + i // size) for i in range(count)]
