"""The appliance as a benchmark contender (benchmarks/contenders.py says what a contender
does): booted from a startup-config in the director namespace, on each of its paths
(userspace, the engine-decided fast path, decided in the kernel, Maglev there), and with
more reals or VIP addresses than serve, for what their rules cost."""

from __future__ import annotations

import ipaddress
import signal
import sys
import time

from .contenders import Contender, ContenderUnavailable
from .lab import BenchLab, netloc
from .udp import appliance_lines, udp_virtual

SPARE_REALS = 100    # localdirector-kernel-maglev-many's reals beyond the three
SPARE_VIPS = 50      # localdirector-kernel-maglev-vips's VIP addresses beyond the one


class LocalDirector(Contender):
    """(d) The appliance itself, booted from a startup-config in the director namespace:
    the plan's virtual (``192.0.2.10:80:0:tcp`` or ``[2001:db8::10]:80:0:tcp``) bound to
    its family's reals, a udp virtual for DNS beside it (benchmarks/udp.py)."""

    name = "localdirector"
    description = "localdirector (NFQUEUE, Python engine)"
    nfqueue = True
    every_packet = True
    fastpath: str | None = None     # the `fastpath VIRTUAL` line's tail, if any
    predictor = "roundrobin"
    tables: tuple[str, ...] = ("raw",)      # where its iptables rules live
    tree: str | None = None    # another checkout's appliance (roster.with_baseline), else ours

    def virtuals(self) -> tuple[str, str]:
        """The TCP virtual measured and the udp virtual for DNS."""
        return f"{netloc(self.plan.vip)}:0:tcp", udp_virtual(self.plan.vip)

    def config(self) -> str:
        virtual = self.virtuals()[0]
        reals = [f"{netloc(real, 0)}:0:tcp" for real in self.plan.reals]
        return "\n".join([
            "hostname bench",
            *(f"real {real} is" for real in reals),
            f"virtual {virtual} is",
            f"predictor {virtual} {self.predictor}",
            f"bind {virtual} {' '.join(reals)}",
            *appliance_lines(self.plan.vip, self.plan.reals, self.predictor),
            *(f"fastpath {v}{self.fastpath}" for v in self.virtuals()
              if self.fastpath is not None),
            "",
        ])

    def start(self, bench: BenchLab) -> None:
        assert bench.work is not None
        conf = bench.work / f"localdirector-{self.plan.name}.cfg"
        conf.write_text(self.config())
        # `-m` puts the working directory first on the path: the tree's, not ours.
        tree = ["env", "-C", self.tree, f"PYTHONPATH={self.tree}"] if self.tree else []
        self._spawn(bench, [*tree, sys.executable, "-m", "localdirector", "--no-console",
                            "--config", str(conf)])
        time.sleep(0.2)
        if self.proc.poll() is not None:
            raise ContenderUnavailable(f"exited at start (rc={self.proc.returncode})"
                                       f"{self._log_tail()}")
        self._wait_ready(bench)

    def stop(self, bench: BenchLab) -> list[str]:
        notes = []
        rc = self._terminate()
        if rc not in (0, 143, -signal.SIGTERM):
            notes.append(f"localdirector exited with status {rc}{self._log_tail()}")
        for tool in ("iptables-save", "ip6tables-save"):
            for table in self.tables:
                saved = bench.run(bench.director_ns, [tool, "-t", table], check=False).stdout
                if "LOCALDIRECTOR" in saved:
                    notes.append(f"localdirector left its {tool} {table}-table rules behind")
        return notes


class LocalDirectorFastpath(LocalDirector):
    """(e) The appliance with `fastpath` on the virtual: it decides each connection (its
    SYN is queued and marked), conntrack NAT translates the rest."""

    name = "localdirector-fastpath"
    description = "localdirector fastpath (Python decides, conntrack translates)"
    every_packet = False   # only SYNs are queued
    fastpath = ""
    tables = ("raw", "mangle", "nat")


class LocalDirectorKernel(LocalDirectorFastpath):
    """(f) The appliance with `fastpath VIRTUAL kernel`: its model compiled into nftables
    maps (Bind ID intervals, round robin by numgen), so the kernel decides each connection
    and Python sees none of its packets."""

    name = "localdirector-kernel"
    description = "localdirector fastpath kernel (the model compiled into nftables)"
    nfqueue = False
    fastpath = " kernel"

    def stop(self, bench: BenchLab) -> list[str]:
        notes = super().stop(bench)
        tables = bench.run(bench.director_ns, ["nft", "list", "tables"], check=False).stdout
        if "localdirector" in tables:
            notes.append("localdirector left its nftables table behind")
        return notes


class LocalDirectorKernelMaglev(LocalDirectorKernel):
    """(g) As (f) with `predictor maglev`: each connection's real is a jhash of its
    addresses and ports into the Maglev table (a 4,099-slot verdict map)."""

    name = "localdirector-kernel-maglev"
    description = "localdirector fastpath kernel, predictor maglev (jhash into the table)"
    predictor = "maglev"


def spare_addresses(network: str, count: int, taken: tuple[str, ...]) -> list[str]:
    """`count` addresses of the lab's `network` from its 100th on, none of `taken`."""
    net = ipaddress.ip_network(network)
    spares = [str(net.network_address + 100 + i) for i in range(count)]
    assert ipaddress.ip_address(spares[-1]) in net and not set(spares) & set(taken)
    return spares


class LocalDirectorKernelMaglevMany(LocalDirectorKernelMaglev):
    """(h) As (g) with ``SPARE_REALS`` more reals bound, out of service (``os``): the
    rules a site with many reals has (each tracked real's untracked-reply drop), while
    the same three serve. What the number of reals costs the kernel path's packets."""

    name = "localdirector-kernel-maglev-many"
    description = (f"localdirector fastpath kernel, predictor maglev, {SPARE_REALS} more "
                   "reals bound out of service")

    def spare_reals(self) -> list[str]:
        """Addresses in the reals' network no lab host has: never sent a packet."""
        return spare_addresses(self.plan.real_net, SPARE_REALS, self.plan.reals)

    def config(self) -> str:
        virtual = self.virtuals()[0]
        spares = [f"{netloc(real, 0)}:0:tcp" for real in self.spare_reals()]
        return super().config() + "\n".join(
            [*(f"real {real} os" for real in spares),
             *(f"bind {virtual} {real}" for real in spares), ""])


class LocalDirectorKernelMaglevVips(LocalDirectorKernelMaglev):
    """(i) As (g) with ``SPARE_VIPS`` more virtuals decided in the kernel the same way,
    on addresses of their own, bound to the same reals, never asked: the rules a site
    with many VIP addresses has (each tracked address's SYN budget and client note)."""

    name = "localdirector-kernel-maglev-vips"
    description = (f"localdirector fastpath kernel, predictor maglev, {SPARE_VIPS} more "
                   "VIP addresses")

    def spare_vips(self) -> list[str]:
        """Addresses in the VIPs' network besides the measured one."""
        return spare_addresses(self.plan.vip_net, SPARE_VIPS, (self.plan.vip,))

    def config(self) -> str:
        reals = " ".join(f"{netloc(real, 0)}:0:tcp" for real in self.plan.reals)
        lines = []
        for vip in self.spare_vips():
            virtual = f"{netloc(vip)}:0:tcp"
            # On the kernel path before its binds: a real serves one path.
            lines += [f"virtual {virtual} is", f"predictor {virtual} maglev",
                      f"fastpath {virtual} kernel", f"bind {virtual} {reals}"]
        return super().config() + "\n".join([*lines, ""])
