"""Failover figures (docs/benchmarks.rst, "Failover"): on the failover lab (lab/pair.py,
real keepalived and conntrackd), per takeover of a crashed active, for a userspace and a
fast-path download running through it: the takeover time (the last packet the old
active forwarded to a client, to the first the new one forwarded) and the transfer's
longest stall (the longest gap between two of its packets reaching the client), median
and spread of `--repeat` runs; then the connections lost per 1,000 open at the kill, per
path; then, per path, how many of 1,000 short connections (six at a time) were lost
across each of 5 crashes of the active box (cables first, then SIGKILL), 5 kills of its
appliance process alone and 5 graceful switches (`failover active`), and how many
packets from a real reached a client untranslated (lab/churn.py). Every download is
checked byte-exact. And, in process, what the replication stream costs the active per
short connection (`stream_cost`).

As root, from the repository root::

    python3 -m benchmarks.failover [--repeat 5] [--json results-failover.json]

Packets are timed in the client namespace by a packet socket on each unit's bridge port
(`capture`, this module run there). Each appliance reads its shell from a pipe, so the
benchmark types `show failover` into it as an operator would."""

from __future__ import annotations

import json
import os
import queue
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks.crafted import POOL, Packets, Tuples, build_director, client_pool, lifecycle
from benchmarks.micro import per_op
from localdirector.dataplane.engine import Engine
from localdirector.failover.replication import Replicator
from localdirector.lab import python_module
from localdirector.lab.churn import across
from localdirector.lab.main import find_example
from localdirector.lab.pair import (
    UNITS,
    FailoverPair,
    appliance_arguments,
    failover_lines,
)
from localdirector.lab.servers import pattern_digest
from localdirector.lab.slowpost import broken_across

from .figures import report

SIZE = 10 * 1024 * 1024
RATE = 2_500_000
PATHS = {"userspace": "192.0.2.10", "fastpath": "192.0.2.20", "kernel": "192.0.2.30"}
SHORT_SOURCES = ("198.51.100.2", "198.18.0.2", "198.19.0.2")   # FIG. 1's Bind IDs 1, 2, 0
FAST_LINES = ["real 203.0.113.12:8001:0:tcp is", "virtual 192.0.2.20:80:0:tcp is",
              "bind 192.0.2.20:80 203.0.113.12:8001", "fastpath 192.0.2.20:80",
              # The fast path decided in the kernel (nftables picks the real).
              "real 203.0.113.13:8001", "virtual 192.0.2.30:80",
              "predictor 192.0.2.30:80 roundrobin", "bind 192.0.2.30:80 203.0.113.13:8001",
              "fastpath 192.0.2.30:80 kernel"]
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


class Unit:
    """One appliance in its namespace, its shell on a pipe, its output read by a thread."""

    def __init__(self, lab: FailoverPair, unit: str, config: Path) -> None:
        self.proc = lab.popen_in(lab.unit_ns[unit], [
            sys.executable, "-m", "localdirector", "--config", str(config), "--queue", "0",
            *appliance_arguments(unit)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.type("enable")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def type(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(f"{line}\n" for line in lines))
        self.proc.stdin.flush()

    def status(self) -> tuple[str, int]:
        """(this unit's role, connections received from the other unit)."""
        self.type("show failover")
        role, received = "", 0
        while True:
            line = self.lines.get(timeout=30)
            if found := re.search(r"(\d+) received", line):
                received = int(found[1])
            if found := re.search(r"This host: \w+ - (\w+)", line):
                role = found[1]
            if "Other host:" in line:
                return role, received


def wait(check, timeout: float = 60.0) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise RuntimeError("timed out")
        time.sleep(0.05)
    return time.monotonic() - started


# -- the packet capture, run inside the client namespace ---------------------------------
def capture(ports: list[str]) -> None:
    """Until stdin closes, time every IPv4 packet from a VIP that a unit sends to the
    clients through its bridge port; then print {port: {vip: [times]}} as JSON."""
    socks = []
    for port in ports:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((port, 0))
        sock.settimeout(0.05)
        socks.append((port, sock))
    times: dict[str, dict[str, list[float]]] = {port: {} for port in ports}
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)

    def listen(port: str, sock: socket.socket) -> None:
        while not stop.is_set():
            try:
                frame, address = sock.recvfrom(64)
            except TimeoutError:
                continue
            except OSError:           # the port is down: its unit was unplugged
                stop.wait(0.05)
                continue
            if address[2] == PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
                continue
            src = socket.inet_ntoa(frame[26:30])
            if src.startswith("192.0.2."):
                times[port].setdefault(src, []).append(time.monotonic())

    threads = [threading.Thread(target=listen, args=pair) for pair in socks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    json.dump(times, sys.stdout)


# -- the pair ----------------------------------------------------------------------------
class Bench:
    def __init__(self, lab: FailoverPair) -> None:
        self.lab = lab
        self.workdir = Path(tempfile.mkdtemp(prefix="ldfailover-"))
        self.units: dict[str, Unit] = {}
        for unit in UNITS:
            config = self.workdir / unit
            config.write_text(find_example().read_text() + "\n".join(
                [*FAST_LINES, *failover_lines(unit), ""]))

    def boot(self, unit: str) -> None:
        self.units[unit] = Unit(self.lab, unit, self.workdir / unit)

    def roles(self) -> dict[str, str]:
        return {unit: u.status()[0] for unit, u in self.units.items()}

    def settled(self) -> bool:
        return sorted(self.roles().values()) == ["Active", "Standby"]

    def crash(self, unit: str) -> None:
        self.lab.crash(unit)
        self.units.pop(unit).proc.wait(10)

    def download(self, vip: str) -> subprocess.Popen[str]:
        return self.lab.popen_in(self.lab.client_ns, python_module(
            "client", "get", "--url", f"http://{vip}/bytes/{SIZE}", "--source",
            "198.51.100.2", "--digest", "--rate", str(RATE), "--timeout", "30"),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def new_conn_works(self) -> bool:
        return all(r.ok for r in self.lab.get_many("http://192.0.2.10/", ["198.19.0.2"],
                                                   count=1, timeout=0.5))

    def takeover(self) -> dict[str, object]:
        """One crash of the active under both downloads; the crashed unit returns as
        standby for the next run."""
        active = next(u for u, r in self.roles().items() if r == "Active")
        standby = UNITS[1 - UNITS.index(active)]
        ports = {unit: f"d{UNITS.index(unit) + 1}" for unit in UNITS}
        cap = self.lab.popen_in(self.lab.client_ns, [
            sys.executable, "-m", "benchmarks.failover", "capture", *ports.values()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        assert cap.stdout is not None and cap.stdin is not None
        cap.stdout.readline()
        received = self.units[standby].status()[1]
        downloads = {path: self.download(vip) for path, vip in PATHS.items()}
        wait(lambda: self.units[standby].status()[1] > received)
        time.sleep(1.0)                       # well into the transfer
        self.crash(active)
        new_conn = wait(self.new_conn_works)
        results = {path: json.loads(d.communicate(timeout=120)[0])["results"][0]
                   for path, d in downloads.items()}
        cap.stdin.close()
        times = json.loads(cap.stdout.read())
        cap.wait(10)
        run: dict[str, object] = {"new_connection_after_kill_s": new_conn}
        for path, vip in PATHS.items():
            old = times[ports[active]].get(vip, [])
            new = times[ports[standby]].get(vip, [])
            both = sorted(old + new)
            result = results[path]
            run[path] = {
                "byte_exact": result["error"] is None
                and result["sha256"] == pattern_digest(SIZE),
                "takeover_s": min(new) - max(old) if old and new else None,
                "longest_stall_s": max(b - a for a, b in zip(both, both[1:])),
            }
        self.lab.plug(active)
        self.boot(active)
        wait(self.settled)
        return run

    def lost_per_1000(self, vip: str) -> int:
        """1,000 connections open (each half-way through its upload) at the crash of the
        active: how many did not complete with the right answer."""
        sources = [*self.lab.client_addresses["preferred"], *self.lab.client_addresses["general"]]
        crashed: list[str] = []

        def crash() -> None:
            crashed.append(next(u for u, r in self.roles().items() if r == "Active"))
            time.sleep(1.0)                       # several polls: everything replicated
            self.crash(crashed[0])
            wait(self.new_conn_works)
        lost = broken_across(self.lab, vip, 1000, sources, crash)
        self.lab.plug(crashed[0])
        self.boot(crashed[0])
        wait(self.settled)
        return lost


    def short_connections(self, path: str, events: int = 5, count: int = 1000
                          ) -> dict[str, Any]:
        """`count` short connections through `path`'s virtual across each of `events`
        crashes of the active box (cables first, then SIGKILL), kills of its appliance
        process alone, and graceful switches: how many were lost, and how many packets
        from a real reached a client."""
        out: dict[str, Any] = {"connections": 0, "lost_crash": 0, "lost_kill": 0,
                               "lost_switch": 0, "leaked_packets": 0, "errors": {}}
        for kind in ("crash",) * events + ("kill",) * events + ("switch",) * events:
            active = next(u for u, r in self.roles().items() if r == "Active")
            standby = UNITS[1 - UNITS.index(active)]
            # Under way: userspace connections are replicated by the stream; the fast
            # path's by conntrackd, which says nothing, so half a second of them.
            under_way = (partial(self._replicated, standby,
                                 self.units[standby].status()[1] + 40)
                         if path == "userspace" else _after(0.5))
            churn = across(self.lab, PATHS[path], SHORT_SOURCES, under_way,
                           partial(self._hand_over, kind, active, standby), count)
            out["connections"] += count
            out[f"lost_{kind}"] += len(churn.lost)
            out["leaked_packets"] += churn.leaked
            for fetch in churn.lost:     # what each lost request saw, by event kind
                said = f"{kind}: {fetch.error}"
                out["errors"][said] = out["errors"].get(said, 0) + 1
            if kind != "switch":
                if kind == "crash":
                    self.lab.plug(active)
                self.boot(active)
            wait(self.settled)
        return out

    def _replicated(self, unit: str, records: int) -> bool:
        return self.units[unit].status()[1] >= records

    def _hand_over(self, kind: str, active: str, standby: str) -> None:
        """A crash of the box, a kill of the appliance process alone, or a switch."""
        if kind == "switch":
            self.units[standby].type("failover active")
            wait(lambda: self.units[active].status()[0] == "Standby")
            return
        if kind == "crash":
            self.crash(active)
        else:
            killed = self.units.pop(active).proc
            killed.kill()
            killed.wait(10)
        wait(lambda: self.units[standby].status()[0] == "Active")


def _after(seconds: float) -> Callable[[], bool]:
    """True from `seconds` after its first call on."""
    start: list[float] = []

    def check() -> bool:
        start[:] = start or [time.monotonic()]
        return time.monotonic() - start[0] >= seconds
    return check


def stream_cost(count: int = 30_000, batch: int = 1000, repeat: int = 5
                ) -> dict[str, float]:
    """The replication stream's cost on the active, in process: µs per whole short
    connection (10 packets, as benchmarks/micro.py) without an observer, and with the
    replicator noting every open, answer and close and encoding each batch of them as
    its sender does every poll (timed together: both run under the engine's lock)."""
    rng = random.Random(1)
    director, prefixes = build_director(1000, rng)
    engine = Engine(director)
    packets = Packets()
    tuples = Tuples(client_pool(prefixes, POOL, rng))
    replicator = Replicator(engine, lambda: director, lambda message, wait=True: True, lambda: 0.2)
    replicator._next_refresh = float("inf")    # no whole resend in the timed loop

    def run(chunk: list[tuple[int, int]]) -> None:
        for src, sport in chunk:
            for buf in lifecycle(packets, engine, src, sport):
                engine.handle(buf)
        replicator._turn()

    figures: dict[str, list[float]] = {"plain_us": [], "replicating_us": []}
    for _ in range(repeat):
        for key, sending in (("plain_us", False), ("replicating_us", True)):
            engine.observe(replicator._note if sending else None)
            replicator.sending = sending
            figures[key].append(per_op(run, tuples.take(count), batch)["median_us"])
    out = {key: median(values) for key, values in figures.items()}
    out["per_connection_us"] = out["replicating_us"] - out["plain_us"]
    return out


def failover_figures(repeat: int) -> dict[str, object]:
    lab = FailoverPair(prefix="ldfob")
    lab.build()
    try:
        bench = Bench(lab)
        for unit in UNITS:
            bench.boot(unit)
        wait(bench.settled)
        runs = [bench.takeover() for _ in range(repeat)]
        out: dict[str, object] = {"runs": runs, "new_connection_after_kill_s_median": median(
            r["new_connection_after_kill_s"] for r in runs)}
        for path in PATHS:
            for figure in ("takeover_s", "longest_stall_s"):
                values = [r[path][figure] for r in runs if r[path][figure] is not None]
                out[f"{path}_{figure}"] = {"median": median(values), "min": min(values),
                                           "max": max(values)}
            out[f"{path}_byte_exact"] = sum(r[path]["byte_exact"] for r in runs)
            out[f"{path}_lost_per_1000"] = bench.lost_per_1000(PATHS[path])
        out["short_connections"] = {path: bench.short_connections(path) for path in PATHS}
        return out
    finally:
        lab.destroy()


def main() -> None:
    if sys.argv[1:2] == ["capture"]:
        capture(sys.argv[2:])
        return
    report(__doc__, 5, lambda repeat: {"stream_cost": stream_cost(),
                                       "takeover": failover_figures(repeat)})


if __name__ == "__main__":
    main()
