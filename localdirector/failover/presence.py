"""Is the other unit still there when the failover link goes dark? (docs/design.rst,
"Failover", "A pulled cable").

On a direct cable a dead peer and a pulled cable look the same to the survivor: its
end of the link loses carrier and the hellos stop. VRRP alone would make the standby
active in both cases, and with a live active that is a split brain on the client and
real segments. LocalDirector and PIX test the network interfaces before they take
over; so does this unit: while it is not active and its failover link has no carrier,
it holds keepalived in FAULT (the track file) and asks the shared segments, by ARP (by
neighbour solicitation where a segment has IPv6 virtuals only), whether anyone answers
for a failover virtual. Someone does: the other unit is alive
and active, and this one stands by. Nobody does: it lets keepalived go, which takes
over one master-down interval later. Through a switch the survivor keeps carrier, and
VRRP decides alone, as before."""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from localdirector.model.addr import is_v6, parse_ip

from .configs import covers

log = logging.getLogger("localdirector.failover")

WATCH = 0.05          # seconds between carrier checks: well inside one master-down
ASK_TIMEOUT = 0.1     # seconds an ARP question waits (a LAN answers in < 1 ms)
ASKS = 2              # rounds of questions before "nobody answers"
RECHECK = 1.0         # seconds between rounds while the peer still answers
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ICMPV6 = 58
NEIGHBOR_SOLICITATION, NEIGHBOR_ADVERTISEMENT = 135, 136
BROADCAST = b"\xff" * 6


def carrier(ifname: str) -> bool:
    """The link is up with carrier (sysfs: no process per check)."""
    try:
        return Path(f"/sys/class/net/{ifname}/carrier").read_text().strip() == "1"
    except OSError:       # down interfaces refuse the read (EINVAL)
        return False


def _mac(ifname: str) -> bytes:
    return bytes.fromhex(Path(f"/sys/class/net/{ifname}/address").read_text()
                         .strip().replace(":", ""))


def _request(ifname: str, own: str, want: bytes) -> bytes:
    mac = _mac(ifname)
    return (BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac
            + ipaddress.IPv4Address(own).packed + bytes(6) + want)


def _solicitation(ifname: str, own: str, want: bytes) -> bytes:
    """An IPv6 neighbour solicitation (RFC 4861) for `want`, from `own`, to its
    solicited-node multicast group, with our link-layer address (so the answer comes
    straight back); hop limit 255, as neighbour discovery requires."""
    mac = _mac(ifname)
    group = b"\xff\x02" + bytes(9) + b"\x01\xff" + want[13:]
    body = bytes(4) + want + b"\x01\x01" + mac            # reserved, target, SLLA option
    source = ipaddress.IPv6Address(own).packed
    pseudo = source + group + struct.pack("!IxxxB", 4 + len(body), ICMPV6)
    total = sum(struct.unpack(f"!{(len(pseudo) + 4 + len(body)) // 2}H",
                              pseudo + bytes([NEIGHBOR_SOLICITATION, 0, 0, 0]) + body))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    icmp = struct.pack("!BBH", NEIGHBOR_SOLICITATION, 0, ~total & 0xFFFF) + body
    return (b"\x33\x33" + group[12:] + mac + struct.pack("!H", ETH_P_IPV6)
            + struct.pack("!IHBB", 6 << 28, len(icmp), ICMPV6, 255) + source + group + icmp)


def _question(ifname: str, own: str, target: str
              ) -> tuple[int, bytes, Callable[[bytes], bool]]:
    """(ethertype, frame, whether a frame answers it) for asking who holds `target`:
    ARP for IPv4, a neighbour solicitation for IPv6."""
    if is_v6(parse_ip(target)):
        want = ipaddress.IPv6Address(target).packed
        # A neighbour advertisement (ICMPv6 136, right after a bare IPv6 header) for it.
        return ETH_P_IPV6, _solicitation(ifname, own, want), lambda frame: (
            len(frame) >= 78 and frame[12:14] == b"\x86\xdd" and frame[20] == ICMPV6
            and frame[54] == NEIGHBOR_ADVERTISEMENT and frame[62:78] == want)
    want = ipaddress.IPv4Address(target).packed
    # An ARP reply (op 2) whose sender address is the virtual.
    return ETH_P_ARP, _request(ifname, own, want), lambda frame: (
        len(frame) >= 42 and frame[20:22] == b"\x00\x02" and frame[28:32] == want)


def who_answers(questions: list[tuple[str, str, str]], timeout: float = ASK_TIMEOUT) -> str:
    """Ask every segment at once, by ARP or neighbour solicitation from this unit's own
    address there (`asks`), whether anyone answers for its failover virtual; 'ADDRESS
    on IFACE' of the first answer within `timeout`, or "". A segment whose link is down
    is not asked."""
    sockets: dict[socket.socket, tuple[str, Callable[[bytes], bool]]] = {}
    try:
        for ifname, own, target in questions:
            ethertype, frame, answers = _question(ifname, own, target)
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
            try:
                sock.bind((ifname, ethertype))
                sock.send(frame)
            except OSError:       # that segment's link is down too: nobody to ask
                sock.close()
                continue
            sockets[sock] = (f"{target} on {ifname}", answers)
        deadline = time.monotonic() + timeout
        while sockets and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(sockets), [], [], left)
            for sock in ready:
                found, answers = sockets[sock]
                if answers(sock.recv(128)):
                    return found
        return ""
    finally:
        for sock in sockets:
            sock.close()


def asks(instances: list[tuple[str, list[str]]],
         addresses: list[tuple[str, str, int]]) -> list[tuple[str, str, str]]:
    """(interface, this unit's own address there, a failover virtual) per segment of
    `instances` (configs.instances), from this box's `addresses`: whom to ask whether
    the other unit still answers. An IPv4 virtual where the segment has one (ARP), else
    an IPv6 one (neighbour solicitation); the own address is of the virtual's network,
    never a virtual itself (this unit may hold them)."""
    found = []
    for ifname, vips in instances:
        for text in sorted(vips, key=lambda vip: is_v6(parse_ip(vip.partition("/")[0]))):
            vip, _, plen = text.partition("/")
            network = (parse_ip(vip), int(plen))
            own = next((addr for name, addr, _ in addresses if name == ifname
                        and covers(network, parse_ip(addr))
                        and f"{addr}/{plen}" not in vips), None)
            if own is not None:
                found.append((ifname, own, vip))
                break
    return found


class LinkWatch:
    """The thread that watches the failover link's carrier while this unit is not
    active. `standing_by()`: this unit is not active; `asks()`: (interface, own
    address, a failover virtual) per segment; `hold(on)`: keepalived held in FAULT or
    let go. `note` says why it holds, for `show failover`."""

    def __init__(self, link: str, standing_by: Callable[[], bool],
                 asks: Callable[[], list[tuple[str, str, str]]],
                 hold: Callable[[bool], None]) -> None:
        self.link = link
        self.standing_by = standing_by
        self.asks = asks
        self.hold = hold
        self.note = ""
        self._held = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="failover-link",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(2 * RECHECK)

    def _run(self) -> None:
        while not self._stopping.wait(WATCH):
            try:
                self._step()
            except Exception:  # noqa: BLE001 - a failed check must not end the watch
                log.exception("failover: cannot check the other unit's presence")
                self._set_hold(False, "")

    def _step(self) -> None:
        if carrier(self.link) or not self.standing_by():
            self._set_hold(False, "")
            return
        self._set_hold(True, self.note or "checking whether the other unit answers")
        found = self._who_answers()
        if found:
            self._set_hold(True, f"the other unit answers for {found}: standing by")
            self._stopping.wait(RECHECK)
        else:
            self._set_hold(False, "")
            # keepalived takes over within its master-down interval; check no more
            # until this unit is active or has carrier again.
            while not self._stopping.wait(WATCH) and self.standing_by() \
                    and not carrier(self.link):
                pass

    def _who_answers(self) -> str:
        """'ADDRESS on IFACE' of a failover virtual someone answers for, asked ASKS
        times of every segment at once."""
        questions = self.asks()
        for _ in range(ASKS):
            if found := who_answers(questions):
                return found
        return ""

    def _set_hold(self, on: bool, note: str) -> None:
        self.note = note
        if on != self._held:
            self._held = on
            self.hold(on)
            if on:
                log.warning("failover: link %s has no carrier: holding the takeover "
                            "until the other unit is known gone", self.link)
            else:
                log.info("failover: link %s: takeover no longer held", self.link)
