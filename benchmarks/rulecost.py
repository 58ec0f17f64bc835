"""Where the kernel path's new connections go (docs/benchmarks.rst, "Maglev decided in the
kernel"): the appliance's own rules, loaded in the director without the appliance, whole
and in parts, against kernel NAT, with the wrk ``close`` workload of benchmarks/run.py.

The appliance (``localdirector-kernel-maglev`` unless ``--contender`` says otherwise) is
started once and its rules are read back: iptables-save of raw, mangle and nat, its
ipset, its nftables table. Then, interleaved over ``--runs``, each variant is loaded by
iptables-restore, ipset restore and nft and measured; the appliance itself is measured
too, so that its process (polling, verification listings) is told from its rules. What
each variant holds:

================  ====================================================================
rules             all of them: what the kernel runs for the appliance
nft               its nftables table alone (the Maglev verdict maps and the DNATs)
nft+mangle        and the mangle chains: the known-client notes, the untracked-reply
                  drop (without raw, whose SYN budget needs the notes: never shed here,
                  the benchmark's clients are few and known)
nft+mangle-reply  as nft+mangle without the jump from FORWARD: no untracked-reply drop
================  ====================================================================

As root, from the repository root: ``python3 -m benchmarks.rulecost [--runs 5]``."""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import time
from collections.abc import Callable

from .contenders import Contender, reset_director
from .roster import contenders_of
from .lab import BenchLab
from .run import WORKLOADS, WRK_SCRIPT, run_workload

Dump = dict[str, str]
_TABLES = ("raw", "mangle", "nat")


def read_rules(bench: BenchLab, table: str) -> Dump:
    """The running appliance's rules as the restore tools take them."""
    dump = {t: bench.run(bench.director_ns, ["iptables-save", "-t", t]).stdout
            for t in _TABLES}
    dump["ipset"] = bench.run(bench.director_ns, ["ipset", "save"]).stdout
    dump["nft"] = bench.run(bench.director_ns, ["nft", "list", "table", "ip", table]).stdout
    return dump


def used_builtins_only(saved: str) -> str:
    """iptables-save lists every built-in chain of a table; restoring one creates its
    hook, which the appliance's own rules do not have unless they use it."""
    used = set(re.findall(r"^-A (\S+)", saved, re.M))
    return "\n".join(line for line in saved.splitlines()
                     if not (m := re.match(r":(\S+) ACCEPT ", line)) or m.group(1) in used) + "\n"


class Rules(Contender):
    """The appliance's rules without it: the tables named, each edited by `edit`."""

    def __init__(self, name: str, dump: Dump, tables: tuple[str, ...],
                 edit: Callable[[str, str], str] = lambda table, text: text) -> None:
        super().__init__()
        self.name, self.dump, self.tables, self.edit = name, dump, tables, edit

    def start(self, bench: BenchLab) -> None:
        if set(self.tables) & {"raw", "mangle"}:
            bench.run(bench.director_ns, ["ipset", "restore"], input=self.dump["ipset"])
        for table in _TABLES:
            if table in self.tables:
                text = self.edit(table, used_builtins_only(self.dump[table]))
                bench.run(bench.director_ns, ["iptables-restore", "-n"], input=text)
        bench.run(bench.director_ns, ["nft", "-f", "-"], input=self.dump["nft"])
        self._wait_ready(bench)

    def stop(self, bench: BenchLab) -> list[str]:
        bench.run(bench.director_ns, ["nft", "flush", "ruleset"])   # before the sets
        bench.run(bench.director_ns, ["ipset", "destroy"], check=False)
        return []


def _no_reply_jump(table: str, text: str) -> str:
    return re.sub(r"^-A FORWARD -j \S+-REPLY\n", "", text, flags=re.M)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.rulecost")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--contender", default="localdirector-kernel-maglev")
    args = parser.parse_args(argv)
    rates: dict[str, list[float]] = {}
    with BenchLab(sources=24, large_bytes=1 << 20, dns=False) as bench:
        assert bench.work is not None
        shutil.copy(WRK_SCRIPT, bench.work / WRK_SCRIPT.name)
        (bench.work / WRK_SCRIPT.name).chmod(0o644)
        nat, appliance = contenders_of(["kernel-nat", args.contender], ["ipv4"])
        appliance.start(bench)
        time.sleep(2)
        dump = read_rules(bench, "localdirector0")
        appliance.stop(bench)
        reset_director(bench)
        bench.run(bench.director_ns, ["ipset", "destroy"], check=False)
        variants: list[Contender] = [
            nat, appliance, Rules("rules", dump, _TABLES), Rules("nft", dump, ()),
            Rules("nft+mangle", dump, ("mangle",)),
            Rules("nft+mangle-reply", dump, ("mangle",), _no_reply_jump)]
        for run in range(args.runs):
            for variant in variants[run % len(variants):] + variants[:run % len(variants)]:
                variant.start(bench)
                time.sleep(1)
                sample = run_workload(bench, variant, WORKLOADS["close"], args.duration, 48)
                rates.setdefault(variant.name, []).append(sample.get("connections_per_s", 0.0))
                print(f"run {run + 1} {variant.name:<30} {sample.get('connections_per_s')} "
                      f"cpu {sample['cpu_busy']:.0%} other work {sample['foreign_cpu']:.2f}",
                      flush=True)
                variant.stop(bench)
                reset_director(bench)
                time.sleep(1)
    nat_median = statistics.median(rates["kernel-nat"])
    print(f"\nnew connections/s, medians of {args.runs} runs x {args.duration:g} s, "
          "min-max, ratio to kernel NAT")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<32} {median:>9,.0f} {min(values):>9,.0f}-{max(values):<9,.0f} "
              f"{median / nat_median:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
