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

from .iptables import (Existing, Runner, existing_chains, install_tables, known_set,
                       match_chains, names, packet_counts, raw_lines, raw_shape,
                       removal_tables, restore_text, run_iptables)
from .ruleset import MarkMap, RuleSet, RulesError

log = logging.getLogger("localdirector")


class RuleManager:
    """Owns our chains in the current network namespace's raw, mangle and nat tables,
    and the fast path's mark map (`on_marks` hears of every map that was installed)."""

    def __init__(self, queue_num: int, runner: Runner = run_iptables,
                 on_marks: Callable[[dict[tuple[int, int], int]], None] | None = None,
                 bypass: bool = True) -> None:
        self.queue_num = queue_num
        self.names = names(queue_num, bypass)
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
            self._run(["iptables-restore", "--noflush"], text)
            self.transactions += 1

    def _existing(self) -> Existing:
        return existing_chains(self._run(["iptables-save"], ""), self.names)

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
        found = raw_lines(self._run(["iptables-save", "-t", "raw"], ""))
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
        found = packet_counts(self._run(["iptables-save", "-c"], ""), self.names)
        return {name: found[name] - self._bases[name] for name in found}

    def clear_counters(self) -> None:
        """`clear counters`: the kernel's counters run on; remember where we started."""
        for name, value in self.counters().items():
            self._bases[name] += value
