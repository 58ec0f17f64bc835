"""Our nftables table for the kernel-decided fast path, changed by transactions:
KernelTable installs, updates, verifies (and repairs) and removes it, and folds its
counters into the model's connection counts (at every verification, from the listing it
verifies) (docs/design.rst, "Decided in the kernel").

A family's table exists only while some virtual of that family is decided in the
kernel, so an appliance without such virtuals never needs nft, and an IPv4-only one
never has an ``ip6`` table. Each change is one ``nft -f -`` run for both families,
atomic in the kernel. A counter's last increments are folded in before the update that deletes
it, and only once no rule refers to it any more, so no connection goes uncounted."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from ..model.addr import Family
from ..model.director import Director
from ..model.serverid import ServerId
from .iptables import Runner
from .kernelrules import KernelRules, family_names, memory_name
from .nftables import (WORD, expected_shape, forget_text, found_shape, install_text,
                       removal_text, run_nft, table_name, update_text)
from .ruleset import RulesError

log = logging.getLogger("localdirector")


class NetlinkReads(NamedTuple):
    """How KernelTable reads nf_tables without nft (nftnetlink.py; tests pass fakes)."""

    generation: Callable[[], int]
    counters: Callable[[int, str], dict[str, int]]   # (socket family, table) -> packets


class KernelTable:
    """Owns tables ``ip localdirector<queue>`` and ``ip6 localdirector<queue>`` in the
    current network namespace."""

    def __init__(self, queue_num: int, runner: Runner = run_nft,
                 netlink: NetlinkReads | None = None) -> None:
        """`netlink`: the namespace's nf_tables generation and a table's counters
        (nftnetlink.py), which let a check skip the listing while nothing was committed
        since the last one found the table intact; without them every check lists."""
        self.table = table_name(queue_num)
        self._run = runner
        self._netlink = netlink
        self._verified: int | None = None   # the generation the table was found intact at
        self.applied = KernelRules()
        self.transactions = 0
        self.repairs = 0
        self._present = False
        # Counter -> packets already folded into the model; counter -> whose totals.
        self._folded: dict[str, int] = {}
        self._owners: dict[str, tuple[ServerId, ServerId | None]] = {}
        # Counters no rule refers to since the last transaction: deleted by the next
        # one, after a last fold.
        self._retired: frozenset[str] = frozenset()

    def _nft(self, text: str) -> None:
        self._run(["-f", "-"], text)
        self.transactions += 1

    def _note(self, rules: KernelRules) -> None:
        self.applied = rules
        self._owners.update((name, (v, r)) for name, v, r in rules.owners)

    def install(self, rules: KernelRules) -> None:
        """Replace whatever a previous run left; no table when nothing is decided in the
        kernel (a leftover is removed if nft is there to ask)."""
        if not rules.destinations:
            try:
                self._run(["-f", "-"], removal_text(self.table))
            except RulesError:
                pass   # no nft: nothing of ours can be there either
            self._present = False
            self.applied = KernelRules()
            return
        self._nft(install_text(rules, self.table))
        self._present = True
        self._folded = {}
        self._retired = frozenset()
        self._note(rules)

    def update(self, rules: KernelRules, director: Director) -> bool:
        """Bring the table to `rules` in one transaction, folding the counters first;
        False when nothing changed."""
        if rules == self.applied:
            return False
        if not self._present:
            self.install(rules)
            return True
        self.fold(director)
        if not rules.destinations:
            self.remove(director)
            return True
        # Counters of a family whose table stays; a table that appears or goes takes
        # all of its counters with it (so their folded counts start again).
        kept = frozenset(name for f in rules.families if f in self.applied.families
                         for name in family_names(f, self._retired | self.applied.counters))
        delete = self._retired & kept - rules.counters
        self._nft(update_text(rules, self.applied, self.table, delete))
        for name in delete | (self._retired | self.applied.counters) - kept:
            self._folded.pop(name, None)
        self._retired = self.applied.counters & kept - rules.counters
        old = self.applied
        self._note(rules)
        self._forget(rules, old)
        return True

    def _forget(self, rules: KernelRules, old: KernelRules) -> None:
        """Forget the remembered flows of reals no longer bound behind a dispatched VIP
        of their table and protocol (a real out of service or failed stays bound: its
        open flows go on). After the update, whose branches no longer name them, so
        none is remembered anew; one listing of the memory per family and protocol
        that lost one, rare (unbind, removal), since listing the memory reads all of
        it."""
        for family in rules.families:
            new, prev = rules.of(family), old.of(family)
            lost = prev.bound - new.bound
            for proto in sorted({p for p, _r in lost}):
                if memory_name(proto) not in new.memories & prev.memories:
                    continue   # the memory went (or came) with the update
                gone = frozenset(r for p, r in lost if p == proto)
                listing = self._run(["-j", "list", "map", WORD[family], self.table,
                                     memory_name(proto)], "")
                text = forget_text(listing, self.table, family, proto, gone)
                if text:
                    self._nft(text)

    def fold(self, director: Director) -> None:
        """Add what the counters counted since the last fold to the model's totals:
        connections to the serving virtual and its real, refused SYNs to the virtual. A
        server since removed takes its count with it."""
        if self._present:
            for family in self.applied.families:
                self._fold(director, self._counters(family))

    def _counters(self, family: Family) -> dict[str, int]:
        """Packets per counter of a family's table: over netlink where it answers, else
        from nft (which loads the whole table to list them)."""
        if self._netlink is not None:
            try:
                return self._netlink.counters(family.af, self.table)
            except OSError as exc:
                log.warning("kernel-decided counters not read over netlink: %s", exc)
        listing = self._run(["-j", "list", "counters", "table", WORD[family], self.table], "")
        return found_shape(listing)[1]

    def _list(self, family: Family) -> str:
        """The table as JSON, terse: no set or map elements (the shape and counters
        need none), so a full flow memory is not printed and parsed at every listing
        (16,384 elements: 0.19 s of nft and 39 ms of json.loads, against 0.10 s and
        0.2 ms; nft still reads them from the kernel)."""
        return self._run(["-j", "-t", "list", "table", WORD[family], self.table], "")

    def _fold(self, director: Director, counts: dict[str, int]) -> None:
        with director.lock:
            for name, packets in counts.items():
                delta = packets - self._folded.get(name, 0)
                self._folded[name] = packets
                owner = self._owners.get(name)
                if delta <= 0 or owner is None:
                    continue
                vsid, rsid = owner
                virtual = director.virtuals.get(vsid)
                if rsid is None:
                    if virtual is not None:
                        virtual.no_real_drops += delta
                    continue
                real = director.reals.get(rsid)
                if virtual is not None:
                    virtual.conns_total += delta
                if real is not None:
                    real.total_conns += delta

    def repair(self, director: Director) -> bool:
        """Reinstall the table if the kernel no longer holds it as we left it (counters,
        maps and rules per chain; counters retired but not yet deleted may be there
        too); True when it had to. One listing serves both: an intact table's counters
        are folded from it, a changed one's as far as they are still there. While the
        namespace's generation stands where it stood when the table was last found
        intact, nothing was committed since: only the counters are read and folded (a
        table of 51 Maglev virtuals printed 6.9 MB of rules in 0.75 s at every check;
        see docs/benchmarks.rst)."""
        if not self._present:
            return False
        generation = self._current_generation()
        if generation is not None and generation == self._verified:
            self.fold(director)
            return False
        if all([self._intact(director, family) for family in self.applied.families]):
            self._verified = generation
            return False
        self._verified = None
        self.install(self.applied)
        self.repairs += 1
        return True

    def _current_generation(self) -> int | None:
        """The namespace's generation, None when unknown (no way to ask, or no answer):
        then the table is listed."""
        if self._netlink is None:
            return None
        try:
            return self._netlink.generation()
        except OSError as exc:
            log.warning("nf_tables generation not read, the table is listed: %s", exc)
            return None

    def _intact(self, director: Director, family: Family) -> bool:
        """One family's table as we left it; its counters folded as far as they are
        there."""
        try:
            (counters, maps, chains), counts = found_shape(self._list(family))
        except RulesError:
            return False   # gone
        want_counters, want_maps, want_chains = expected_shape(self.applied.of(family))
        self._fold(director, counts)
        return want_counters <= counters and (maps, chains) == (want_maps, want_chains)

    def remove(self, director: Director | None = None) -> None:
        """Take the table out (folding its counters first when `director` is given)."""
        if self._present and director is not None:
            try:
                self.fold(director)
            except RulesError as exc:
                log.warning("kernel-decided connection counts not read at removal: %s", exc)
        if self._present:
            self._nft(removal_text(self.table))
        self._present = False
        self.applied = KernelRules()
        self._folded = {}
        self._retired = frozenset()
