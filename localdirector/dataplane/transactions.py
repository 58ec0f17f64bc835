"""Our chains in the kernel, changed by transactions: RuleManager installs, updates,
verifies (and repairs) and removes them, keeps the fast path's mark map and reads our
rules' packet counters.

Every change is one ``iptables-restore --noflush`` run (declaring a chain flushes it),
so the kernel never sees a half-written chain. iptables-nft commits each table on its
own, so it may briefly see the raw part of a change before the rest; harmless, because
the engine takes new marks only once the whole run succeeded (docs/design.rst,
"Netfilter rules")."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from .floodrules import known_set
from .iptables import (Runner, install_tables, match_chains, names, removal_tables,
                       restore_text, run_iptables)
from .saved import Existing, existing_chains, packet_counts, raw_lines, raw_shape
from ..model.addr import IPV4, IPV6, Family
from .ruleset import MarkMap, RuleSet, RulesError, for_family

log = logging.getLogger("localdirector")


class RuleManager:
    """Owns our chains in the current network namespace's raw, mangle and nat tables of
    one family (iptables', or ip6tables' for IPV6: the part of each RuleSet of that
    family), and the fast path's mark map (`on_marks` hears of every map that was
    installed)."""

    def __init__(self, queue_num: int, runner: Runner = run_iptables,
                 on_marks: Callable[[dict[tuple[int, int], int]], None] | None = None,
                 bypass: bool = True, family: Family = IPV4) -> None:
        self.queue_num = queue_num
        self.family = family
        self.names = names(queue_num, bypass, family)
        self._run = runner
        self._on_marks = on_marks
        self.applied: RuleSet | None = None
        self.transactions = 0
        self.repairs = 0
        self._markmap = MarkMap()
        self._tables: dict[str, list[str]] = {}
        # The raw lines of the install other than the match chain's (which _tables
        # holds): with those, what `intact` expects to find.
        self._fixed_raw: list[str] = []
        self._bases = dict.fromkeys(self.names.counters, 0)

    def _restore(self, tables: dict[str, list[str]]) -> None:
        """One iptables-restore run over the tables that have something to do."""
        text = restore_text(tables)
        if text:
            self._run([f"{self.names.tool}-restore", "--noflush"], text)
            self.transactions += 1

    def _existing(self) -> Existing:
        return existing_chains(self._run([f"{self.names.tool}-save"], ""), self.names)

    def _chains(self, rules: RuleSet
                ) -> tuple[dict[str, list[str]], dict[tuple[int, int], int]]:
        """The match chains of every table as a transaction declares them, and the marks
        they use."""
        marks = self._markmap.assign(rules.targets)
        return match_chains(rules, marks, self.names), marks

    def _applied(self, rules: RuleSet, tables: dict[str, list[str]],
                 marks: dict[tuple[int, int], int]) -> None:
        self.applied = rules
        self._tables = tables
        if self._on_marks is not None:
            self._on_marks(marks)

    def install(self, rules: RuleSet) -> None:
        """First transaction: replace whatever a previous run left (every chain is
        redeclared, hence flushed) and end with exactly one of each of our jumps."""
        rules = for_family(rules, self.family)
        existing = self._existing()
        chains, marks = self._chains(rules)
        tables = install_tables(chains, self.names, existing)
        self._run(known_set(self.names)[0], "")   # the rules refer to it
        self._restore(tables)
        self._applied(rules, chains, marks)
        self._fixed_raw = [line for line in tables["raw"] if line not in chains["raw"]]
        self._bases = dict.fromkeys(self.names.counters, 0)
        defrag = self.names.defrag_tables
        try:
            self._restore(defrag)
        except RulesError as exc:
            log.warning("fragments will not be reassembled before translation: %s", exc)
        else:
            self._fixed_raw += defrag["raw"]

    def intact(self) -> bool:
        """Whether the raw table still holds our chains and jumps as we left them (rule
        counts, not texts: cheap, and what a flush, a deleted chain or another program's
        cleanup changes). One ``iptables-save -t raw``."""
        if self.applied is None:
            return True
        found = raw_lines(self._run([f"{self.names.tool}-save", "-t", "raw"], ""))
        return raw_shape(found, self.names) == raw_shape(
            self._fixed_raw + self._tables["raw"], self.names)

    def repair(self) -> bool:
        """Reinstall the last rules applied if the raw table lost (or gained) any of
        ours; True when it had to (docs/design.rst, "Netfilter rules")."""
        if self.intact():
            return False
        assert self.applied is not None
        self.install(self.applied)
        self.repairs += 1
        return True

    def update(self, rules: RuleSet) -> bool:
        """Replace the match chains that changed, in one run; False when nothing did."""
        rules = for_family(rules, self.family)
        if rules == self.applied:
            return False
        chains, marks = self._chains(rules)
        self._restore({table: body for table, body in chains.items()
                       if body != self._tables.get(table)})
        self._applied(rules, chains, marks)
        return True

    def remove(self) -> None:
        """Take out the jumps and our chains, whatever of them exists, then the set of
        known addresses they referred to."""
        self._restore(removal_tables(self._existing(), self.names))
        self.applied = None
        self._tables = {}
        with contextlib.suppress(RulesError):   # never created, or destroyed by hand
            self._run(known_set(self.names)[1], "")

    def counters(self) -> dict[str, int]:
        """Packets sent to the queue (from raw and from mangle), fast-path packets
        copied to the engine (NFLOG) and SYNs shed by the kernel guard, since install or
        the last `clear counters`."""
        found = packet_counts(self._run([f"{self.names.tool}-save", "-c"], ""), self.names)
        return {name: found[name] - self._bases[name] for name in found}

    def clear_counters(self) -> None:
        """`clear counters`: the kernel's counters run on; remember where we started."""
        for name, value in self.counters().items():
            self._bases[name] += value


class DualStack:
    """The rules of both families: one RuleManager for iptables and one for ip6tables
    (the same nftables backend), each given its family's part of every RuleSet, so the
    rule sync and the data-plane service see one manager. IPv6's chains are installed
    with IPv4's; a host whose ip6tables cannot take them runs IPv4 alone (logged) as
    long as no IPv6 virtual asks for them."""

    def __init__(self, queue_num: int, runner: Runner = run_iptables,
                 on_marks: Callable[[dict[tuple[int, int], int]], None] | None = None,
                 bypass: bool = True) -> None:
        self.queue_num = queue_num
        self._on_marks = on_marks
        # Each family's mark map as last installed: the engine is given their union
        # (the keys are addresses, which never meet across families; a mark value
        # may, as iptables and ip6tables never see the other's packets).
        self._marks: dict[Family, dict[tuple[int, int], int]] = {IPV4: {}, IPV6: {}}
        self.ipv4 = RuleManager(queue_num, runner, self._marks_of(IPV4), bypass)
        self.ipv6 = RuleManager(queue_num, runner, self._marks_of(IPV6), bypass, IPV6)
        self._managers = [self.ipv4]

    def _marks_of(self, family: Family) -> Callable[[dict[tuple[int, int], int]], None]:
        def installed(marks: dict[tuple[int, int], int]) -> None:
            self._marks[family] = marks
            if self._on_marks is not None:
                self._on_marks({**self._marks[IPV4], **self._marks[IPV6]})
        return installed

    @property
    def transactions(self) -> int:
        return sum(m.transactions for m in self._managers)

    @property
    def repairs(self) -> int:
        return sum(m.repairs for m in self._managers)

    def _with_ipv6(self, rules: RuleSet) -> None:
        """Install IPv6's chains unless they are; a failure matters only when `rules`
        hold IPv6 addresses."""
        if self.ipv6 in self._managers:
            return
        try:
            self.ipv6.install(rules)
        except RulesError as exc:
            if for_family(rules, IPV6) != RuleSet((), ()):
                raise
            log.warning("IPv6 rules not installed (IPv6 virtuals will not work): %s", exc)
            return
        self._managers.append(self.ipv6)

    def install(self, rules: RuleSet) -> None:
        self.ipv4.install(rules)
        try:
            self._with_ipv6(rules)
        except BaseException:
            self.ipv4.remove()
            raise

    def update(self, rules: RuleSet) -> bool:
        self._with_ipv6(rules)
        return any([m.update(rules) for m in self._managers])

    def repair(self) -> bool:
        return any([m.repair() for m in self._managers])

    def remove(self) -> None:
        for manager in reversed(self._managers):
            manager.remove()
        self._managers = [self.ipv4]

    def counters(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for manager in self._managers:
            for name, value in manager.counters().items():
                found[name] = found.get(name, 0) + value
        return found

    def clear_counters(self) -> None:
        for manager in self._managers:
            manager.clear_counters()
