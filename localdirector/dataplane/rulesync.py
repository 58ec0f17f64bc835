"""The thread that keeps our netfilter rules in step with the model, and in place.

A model change only marks the rules dirty (cheap, and safe under the model lock, where
the model calls its listeners); the thread snapshots the desired rules under the lock,
then runs iptables without it, so neither the shell nor the packet path ever waits for
a subprocess. After every change and every VERIFY_SECONDS it checks that the kernel
still holds our rules and reinstalls them if not (another program flushed the table).
The kernel-decided fast path's nftables table follows the same way, and its counters are
folded into the model's connection counts as it is verified (at every wake-up, at least
every VERIFY_SECONDS)."""

from __future__ import annotations

import logging
import threading

from ..model.director import Director
from .kerneltable import KernelTable
from .kernelrules import desired_kernel
from .ruleset import RulesError, desired_rules
from .transactions import DualStack, RuleManager

log = logging.getLogger("localdirector")

# A burst of configuration lines (a replayed startup-config, a pasted block) becomes one
# transaction instead of one iptables-restore per line.
SETTLE_SECONDS = 0.05
# How often the installed rules are checked (one `iptables-save -t raw`, some
# milliseconds): lost rules mean no traffic, so this bounds the outage.
VERIFY_SECONDS = 2.0


class RuleSync(threading.Thread):
    """Follows one Director (another one after `reload`, see adopt) into a RuleManager."""

    def __init__(self, director: Director, manager: RuleManager | DualStack,
                 kernel: KernelTable | None = None) -> None:
        super().__init__(name=f"rules-q{manager.queue_num}", daemon=True)
        self.director = director
        self.manager = manager
        self.kernel = kernel if kernel is not None else KernelTable(manager.queue_num)
        self.synced_generation = -1
        self.errors = 0
        self._cond = threading.Condition()
        self._dirty = False
        self._stopping = False
        director.subscribe(self._on_change)

    def _on_change(self) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify()

    def install(self) -> None:
        """Synchronous first install, so start-up fails loudly if iptables refuses."""
        with self.director.lock:
            generation = self.director.generation
            rules = desired_rules(self.director)
            kernel = desired_kernel(self.director)
        self.manager.install(rules)
        self.kernel.install(kernel)
        self.synced_generation = generation

    def run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._dirty or self._stopping, VERIFY_SECONDS)
                if self._dirty:
                    # Let a burst of changes settle into one transaction.
                    self._cond.wait_for(lambda: self._stopping, SETTLE_SECONDS)
                if self._stopping:
                    return
                dirty, self._dirty = self._dirty, False
            if dirty:
                self.sync_once()
            if self.verify() and self.synced_generation != self.director.generation:
                self.sync_once()   # the repair put back the last rules that applied

    def verify(self) -> bool:
        """Reinstall our rules and our nft table if they are not in the kernel as we left
        them (the table's counters are folded into the model as it is read); True when
        either was not."""
        repaired = False
        for repair in (self.manager.repair, lambda: self.kernel.repair(self.director)):
            try:
                repaired |= repair()
            except RulesError as exc:
                self.errors += 1
                log.error("netfilter rules of NFQUEUE %d not verified: %s",
                          self.manager.queue_num, exc)
        if repaired:
            log.warning("netfilter rules of NFQUEUE %d were changed by someone else: "
                        "reinstalled", self.manager.queue_num)
        return repaired

    def sync_once(self) -> None:
        """Bring the kernel up to the model's current generation."""
        with self.director.lock:
            generation = self.director.generation
            rules = desired_rules(self.director)
            kernel = desired_kernel(self.director)
        try:
            self.manager.update(rules)
            self.kernel.update(kernel, self.director)
        except RulesError as exc:
            self.errors += 1
            log.error("netfilter rules not updated: %s", exc)
            return
        self.synced_generation = generation

    def adopt(self, director: Director) -> None:
        """`reload`: follow the new model from now on, and bring the rules up to it."""
        director.subscribe(self._on_change)
        self.director = director
        self._on_change()

    def stop(self) -> None:
        """Stop following; the rules stay until RuleManager.remove()."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self.is_alive():
            self.join()
