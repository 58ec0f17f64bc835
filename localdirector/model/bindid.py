"""Bind ID objects (FIG. 3D) and their longest-prefix index.

The patent keeps Bind ID objects in a list with a hash table on top (FIG. 4 step 412).
Here the hash is per destination address and per prefix length, so a SYN costs at most
one dict probe per prefix length in use for that VIP (<= 33 for IPv4, <= 129 for IPv6:
a VIP is of one family, and so are the client networks assigned to it), however many
assign entries exist; and the answer for a client seen before is remembered (`MEMO_LIMIT`), so
its next SYN costs one probe, until an assign entry is added or removed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from .addr import IPV6, V6, family_of, format_ip, format_mask, format_prefix
from .serverid import UDP_SERVICE

# (VIP, client, port) answers remembered at most: a flood of spoofed sources empties the
# memo when it fills rather than growing it (a few megabytes at most).
MEMO_LIMIT = 1 << 16
_UNKNOWN = object()   # not in the memo (None is a remembered "no Bind ID object")

if TYPE_CHECKING:
    from .virtual import VirtualMachine


def network_mask(addr: int, prefixlen: int) -> int:
    """The mask of a `prefixlen` network of `addr`'s family, with the IPv6 tag (addr.V6)
    kept in both families: a source of the other family, masked, then carries the tag
    the networks of this one lack (or lacks the one they carry), so it never matches."""
    return family_of(addr).mask(prefixlen) | V6


def network_words(addr: int, prefixlen: int) -> tuple[str, ...]:
    """How `assign` writes a client network, as the running config shows it: IPv4 as
    LocalDirector did, address then mask, IPv6 `ADDR/LEN`; a single host as its address."""
    family = family_of(addr)
    if prefixlen == family.width:
        return (format_ip(addr),)
    if family is IPV6:
        return (format_prefix(addr, prefixlen),)
    return (format_ip(addr), format_mask(prefixlen))


class BindIdObject:
    """FIG. 3D. `prev` is ours, not the patent's: `no assign` and `no virtual` unlink an
    object in constant time instead of walking a list of 100,000."""

    __slots__ = ("next", "prev", "client_ip", "prefixlen", "virtual", "in_use", "hits")

    def __init__(self, client_ip: int, prefixlen: int, virtual: "VirtualMachine") -> None:
        self.next: BindIdObject | None = None
        self.prev: BindIdObject | None = None
        self.client_ip = client_ip & network_mask(client_ip, prefixlen)
        self.prefixlen = prefixlen
        self.virtual = virtual
        self.in_use = True
        self.hits = 0


class _VipIndex:
    """All Bind ID objects whose virtual has one address: prefix length -> network -> objects."""

    __slots__ = ("by_prefix", "prefixes")

    def __init__(self) -> None:
        self.by_prefix: dict[int, dict[int, list[BindIdObject]]] = {}
        # (mask, network -> objects) per prefix length, longest first: what a SYN walks.
        self.prefixes: list[tuple[int, dict[int, list[BindIdObject]]]] = []

    def add(self, obj: BindIdObject) -> None:
        table = self.by_prefix.get(obj.prefixlen)
        if table is None:
            table = self.by_prefix[obj.prefixlen] = {}
            self._reindex(obj.client_ip)
        table.setdefault(obj.client_ip, []).append(obj)

    def remove(self, obj: BindIdObject) -> None:
        table = self.by_prefix[obj.prefixlen]
        bucket = table[obj.client_ip]
        bucket.remove(obj)
        if not bucket:
            del table[obj.client_ip]
            if not table:
                del self.by_prefix[obj.prefixlen]
                self._reindex(obj.client_ip)

    def _reindex(self, addr: int) -> None:
        """`addr`: any network of the index, whose family is the VIP's."""
        self.prefixes = [(network_mask(addr, p), self.by_prefix[p])
                         for p in sorted(self.by_prefix, reverse=True)]


class BindIdTable:
    """The configured list (in order, for `show assign` and the running config) plus the
    index the packet path uses."""

    def __init__(self) -> None:
        self.head: BindIdObject | None = None
        self.tail: BindIdObject | None = None
        self.count = 0
        self._by_vip: dict[int, _VipIndex] = {}
        self._exact: dict[tuple[int, int, int], BindIdObject] = {}
        # lookup's answers by client, service port and VIP packed into one int;
        # emptied by every add and remove.
        self._memo: dict[int, BindIdObject | None] = {}

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[BindIdObject]:
        obj = self.head
        while obj is not None:
            yield obj
            obj = obj.next

    def find(self, virtual: "VirtualMachine", client_ip: int, prefixlen: int) -> BindIdObject | None:
        network = client_ip & network_mask(client_ip, prefixlen)
        return self._exact.get((id(virtual), network, prefixlen))

    def rival(self, virtual: "VirtualMachine", client_ip: int,
              prefixlen: int) -> BindIdObject | None:
        """The entry sending this very network to another instance of the same VIP:port
        (which an `assign` to `virtual` replaces)."""
        index = self._by_vip.get(virtual.addr)
        table = index.by_prefix.get(prefixlen) if index is not None else None
        network = client_ip & network_mask(client_ip, prefixlen)
        bucket = table.get(network, ()) if table else ()
        return next((o for o in bucket
                     if o.virtual.service == virtual.service and o.virtual is not virtual),
                    None)

    def add(self, obj: BindIdObject) -> None:
        if self.tail is None:
            self.head = obj
        else:
            self.tail.next = obj
        obj.prev = self.tail
        self.tail = obj
        self.count += 1
        obj.virtual.assign_entries += 1
        self._exact[(id(obj.virtual), obj.client_ip, obj.prefixlen)] = obj
        self._memo.clear()
        index = self._by_vip.get(obj.virtual.addr)
        if index is None:
            index = self._by_vip[obj.virtual.addr] = _VipIndex()
        index.add(obj)

    def remove(self, obj: BindIdObject) -> None:
        key = (id(obj.virtual), obj.client_ip, obj.prefixlen)
        if self._exact.get(key) is not obj:
            return
        prev, nxt = obj.prev, obj.next
        if prev is None:
            self.head = nxt
        else:
            prev.next = nxt
        if nxt is None:
            self.tail = prev
        else:
            nxt.prev = prev
        obj.next = obj.prev = None
        obj.in_use = False
        self.count -= 1
        obj.virtual.assign_entries -= 1
        del self._exact[key]
        self._memo.clear()
        index = self._by_vip[obj.virtual.addr]
        index.remove(obj)
        if not index.prefixes:
            del self._by_vip[obj.virtual.addr]

    def remove_virtual(self, virtual: "VirtualMachine") -> None:
        for obj in [o for o in self if o.virtual is virtual]:
            self.remove(obj)

    def lookup(self, src: int, dst: int, dport: int) -> BindIdObject | None:
        """FIG. 5 steps 510-512: the longest prefix containing `src` among objects whose
        virtual matches the destination; for equal prefixes an instance of the exact
        port beats an all-ports one (as for Bind ID 0), then the first configured.
        `dport` is a service port (serverid.UDP_SERVICE): an instance of the other
        protocol never matches, its all-ports one neither."""
        index = self._by_vip.get(dst)
        if index is None:   # no assign entry for this VIP: nothing to remember either
            return None
        # The service port takes 17 bits: above the address, not over its low bit. An
        # IPv6 VIP is 129 bits wide (its tag): its keys have bit 128 set, IPv4 ones stay
        # below bit 96, so the families' keys never meet.
        if dst >> 128:
            key = (((src << 17) | dport) << 129) | dst
        else:
            key = (src << 64) | (dport << 32) | dst
        memo = self._memo
        found = memo.get(key, _UNKNOWN)
        if found is not _UNKNOWN:
            return found
        found = None
        all_ports = dport & UDP_SERVICE
        for mask, table in index.prefixes:
            bucket = table.get(src & mask)
            if bucket is None:
                continue
            for obj in bucket:
                port = obj.virtual.service
                if port == dport:
                    found = obj
                    break
                if port == all_ports and found is None:
                    found = obj
            if found is not None:
                break
        if len(memo) >= MEMO_LIMIT:
            memo.clear()
        memo[key] = found
        return found
