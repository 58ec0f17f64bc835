"""Driving the real appliance process from tests: its console on a pty, its rules, its lab.

Integration tests start ``python -m localdirector --config CFG --queue N`` inside the lab's
director namespace on a pseudo-terminal (pexpect), type shell commands into it, and send
traffic only from the lab's client namespace. Shared by every module that runs the
appliance for real, so the prompt handling, `show` table parsing and the clean-exit
check exist once. Test modules take the ``appliance`` fixture by importing it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pexpect
import pytest

from localdirector.lab import Lab, pattern_digest
from localdirector.lab.addresses import VIP_NET6, twin
from localdirector.lab.servers import default_name

# Queues are per network namespace, but a distinct number per test process keeps
# parallel runs unambiguous in logs and in /proc.
QUEUE = 100 + os.getpid() % 30000
PROMPT = r"localdirector(?:\(config\))?[#>]"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# The engine keeps a closed connection for LINGER (2 s) and ticks every 0.5 s.
SETTLE = 4.0

VIP = "192.0.2.10"
R11, R12, R13, R14, R15 = (f"203.0.113.{n}" for n in range(11, 16))
PREFERRED, UNWELCOME, GENERAL = "preferred", "unwelcome", "general"
ROOT = Path(__file__).resolve().parents[1]
FIG1_CONFIG = ROOT / "examples" / "fig1.cfg"


def name(real: str, port: int = 80) -> str:
    """What a lab server answers on `/`: which real and which port served the request."""
    return f"real-{real}:{port}"


class Side:
    """One family of the dual-stack lab as a test writes it: the VIP and the reals as
    ids and URLs take them (IPv6 bracketed: the twins of VIP and R11-R15), what a real
    answers on `/`, a client group's addresses; so a test of IPv4 runs for IPv6 by a
    parameter, not a copy."""

    def __init__(self, lab: Lab, v6: bool) -> None:
        self.lab, self.v6 = lab, v6
        self.vip = f"[{twin(VIP_NET6, VIP)}]" if v6 else VIP

    def real(self, real: str) -> str:
        return f"[{self.lab.reals6[real]}]" if self.v6 else real

    def name(self, real: str, port: int = 80) -> str:
        return default_name(self.lab.reals6[real], port) if self.v6 else name(real, port)

    def sources(self, group: str) -> tuple[str, ...]:
        return tuple((self.lab.client_addresses6 if self.v6 else self.lab.client_addresses)[group])


def appliance_argv(config: Path, *extra: str) -> list[str]:
    """The appliance as an operator starts it (the module, so no install is needed)."""
    return [sys.executable, "-m", "localdirector", "--config", str(config), *extra]


def lab_argv(lab: Lab, config: Path, *extra: str) -> list[str]:
    """The appliance inside the lab's director namespace, on this process's queue."""
    return ["ip", "netns", "exec", lab.director_ns,
            *appliance_argv(config, "--queue", str(QUEUE), *extra)]


class Console:
    """The appliance's console on a pty, already in privileged mode, no paging."""

    def __init__(self, argv: Sequence[str], timeout: float = 15) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "dumb"}
        self.child = pexpect.spawn(argv[0], list(argv[1:]), env=env, encoding="utf-8",
                                   timeout=timeout, dimensions=(60, 250))
        self.child.expect(PROMPT)
        self.boot_messages = self._clean(self.child.before)
        self.run("enable")
        self.run("terminal length 0")

    @property
    def pid(self) -> int:
        """The appliance's own pid: `ip netns exec` execs it, so it is the pty's child."""
        return self.child.pid

    @staticmethod
    def _clean(text: str) -> str:
        return ANSI.sub("", text).replace("\r", "")

    def run(self, line: str) -> str:
        """Type one line; return what it printed (without the echoed line)."""
        self.child.sendline(line)
        # A log message (a real FAILED) may come right after a prompt, before the echo,
        # or right after the echo on its line. The echo starts a line just after a
        # prompt (not necessarily the first prompt read); the output follows that line.
        echo = re.compile("^" + re.escape(line) + ".*\n", re.M)
        text = ""
        while (found := echo.search(text)) is None:
            self.child.expect(PROMPT)
            text += self._clean(self.child.before) + "\n"
        return text[found.end():-1]

    def reload(self) -> str:
        """`reload` at the console, through IOS's dialogue: unsaved changes are not saved
        (the test changed the startup-config itself), then [confirm]; its output."""
        self.child.sendline("reload")
        if self.child.expect([r"Save\? \[yes/no\]: ", r"\[confirm\]"]) == 0:
            self.child.sendline("no")
            self.child.expect(r"\[confirm\]")
        self.child.sendline("")
        self.child.expect(r"\[OK\]")
        text = self._clean(self.child.before)
        self.child.expect(PROMPT)
        return text + "[OK]"

    def confirm(self, line: str) -> str:
        """A command that asks `[confirm]` on a terminal (`clear conns`, `write erase`),
        confirmed with Return; its output."""
        self.child.sendline(line)
        self.child.expect(r"\[confirm\]")
        self.child.sendline("")
        self.child.expect(PROMPT)
        return self._clean(self.child.before).strip("\n")

    def configure(self, *lines: str) -> None:
        self.run("configure terminal")
        for line in lines:
            out = self.run(line)
            assert "%" not in out, f"{line!r} was refused: {out}"
        self.run("end")

    def rows(self, what: str) -> dict[str, list[str]]:
        """A `show` table as {first column: row cells}. A log message (a real FAILED)
        printed right into the echo of the command spoils one reading: read again."""
        for _ in range(3):
            lines = self.run(f"show {what}").split("\n")
            rule = next((i for i, line in enumerate(lines) if line.startswith("---")), None)
            if rule is not None:
                width = len(lines[rule].split())
                return {cells[0]: cells for cells in (line.split() for line in lines[rule + 1:])
                        if len(cells) == width}
        pytest.fail(f"no table in `show {what}`: {lines}")

    def real(self, real: str, port: int = 0) -> tuple[str, int, int]:
        """(state, current connections, total connections) of one real."""
        cells = self.rows("real")[f"{real}:{port}:0:tcp"]
        return cells[1], int(cells[2]), int(cells[3])

    def wait_for(self, check: Callable[[], bool], timeout: float = 10.0,
                 what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.2)

    def statistics(self) -> dict[str, int]:
        """The counter table of `show statistics` as {label: value}."""
        return self.statistics_and_kernel()[0]

    def kernel_line(self) -> dict[str, int]:
        """The `Kernel:` line of `show statistics` as {what: count}, e.g.
        {'queued': 40, 'waiting': 0, 'dropped (queue full)': 12, ...}."""
        return self.statistics_and_kernel()[1]

    def statistics_and_kernel(self) -> tuple[dict[str, int], dict[str, int]]:
        """Both from one `show statistics`: counters that must add up are read in one
        go, not across two commands while packets still arrive."""
        table, lines = self.statistics_and_lines()
        return table, lines["Kernel"]

    def statistics_and_lines(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """The counter table and every labelled line of one `show statistics`, e.g.
        lines["Fast path"] == {'reals in the mark map': 3, 'packets copied (NFLOG)': 90,
        ...}."""
        out = self.run("show statistics")
        table = {" ".join(cells[:-1]): int(cells[-1])
                 for cells in (line.split() for line in out.split("\n"))
                 if len(cells) >= 2 and cells[-1].isdigit() and ":" not in cells[0]}
        lines = {}
        for line in out.split("\n"):
            label, colon, rest = line.partition(":")
            if colon and label and not label[0].isspace():
                counts = re.findall(r"(\d+) ([A-Za-z][A-Za-z ()-]*)", rest)
                lines[label] = {what.strip(): int(n) for n, what in counts}
        return table, lines

    def exit(self) -> int | None:
        self.child.sendline("exit")
        self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus

    def close(self) -> None:
        """Close the pty of an appliance that something else killed (or kill it)."""
        self.child.close(force=True)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing gets a chance to clean up."""
        self.child.kill(signal.SIGKILL)
        self.child.expect(pexpect.EOF)
        self.child.close()


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1])


class Sampler:
    """Watches the appliance through its own shell while something runs: how long
    `show statistics` takes (responsiveness), the connection count it reports, and the
    process's resident memory."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.latencies: list[float] = []
        self.conns: list[int] = []
        self.rss: list[int] = []

    def sample(self) -> None:
        started = time.monotonic()
        out = self.console.run("show statistics")
        self.latencies.append(time.monotonic() - started)
        self.conns.append(int(re.search(r"(\d+) connections", out)[1]))
        self.rss.append(rss_kb(self.console.pid))

    def during(self, proc: subprocess.Popen, every: float = 0.5) -> None:
        while proc.poll() is None:
            self.sample()
            time.sleep(every)


def raw_table(lab: Lab) -> str:
    proc = lab.run_in(lab.director_ns, ["iptables-save", "-t", "raw"])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def ipsets(lab: Lab) -> str:
    """The names of the director's ipsets, one a line ("" when none)."""
    proc = lab.run_in(lab.director_ns, ["ipset", "list", "-name"])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


class Appliances:
    """`appliances(config_lines_or_path, *extra_args)` boots an appliance in the lab;
    `exit_all()` makes each still running exit, cleanly."""

    def __init__(self, lab: Lab, tmp_path: Path) -> None:
        self._lab, self._tmp_path = lab, tmp_path
        self.consoles: list[Console] = []

    def __call__(self, lines: list[str] | Path, *extra: str) -> Console:
        if isinstance(lines, Path):
            config = lines
        else:
            config = self._tmp_path / f"startup-config-{len(self.consoles)}"
            config.write_text("\n".join(lines) + "\n")
        console = Console(lab_argv(self._lab, config, *extra))
        self.consoles.append(console)
        assert "% " not in console.boot_messages, console.boot_messages
        return console

    def exit_all(self) -> None:
        for console in self.consoles:
            if console.child.isalive():
                assert console.exit() == 0


@pytest.fixture
def appliance(lab: Lab, tmp_path: Path) -> Iterator[Appliances]:
    """Appliances booted in the lab; on teardown each must exit cleanly and leave no
    rule and no set of known clients behind."""
    appliances = Appliances(lab, tmp_path)
    yield appliances
    appliances.exit_all()
    assert "LOCALDIRECTOR" not in raw_table(lab)
    assert ipsets(lab) == ""


def simple_config(vip: str, predictor: str, reals: list[str], *extra: str) -> list[str]:
    """One Bind ID 0 virtual on port 80 over `reals` (ids as typed)."""
    return [*(f"real {r}" for r in reals), f"virtual {vip}:80",
            f"predictor {vip}:80 {predictor}", f"bind {vip}:80 {' '.join(reals)}", *extra]


def bodies(results: list) -> list[str]:
    failures = [r.error for r in results if not r.ok]
    assert not failures, failures
    return [r.body.strip() for r in results]


def hold(lab: Lab, url: str, count: int, source: str) -> subprocess.Popen[str]:
    """`count` concurrent connections that stay open until the server's hold ends."""
    return lab.popen_in(lab.client_ns, [
        sys.executable, "-m", "localdirector.lab.client", "get", "--url", url,
        "--count", str(count), "--concurrency", str(count), "--source", source,
        "--timeout", "20"], stdout=subprocess.PIPE, text=True)


def held_bodies(proc: subprocess.Popen[str]) -> list[str]:
    out, _ = proc.communicate(timeout=30)
    results = json.loads(out)["results"]
    assert all(r["error"] is None and r["status"] == 200 for r in results), results
    return [r["body"] for r in results]


@contextmanager
def real_fault(lab: Lab, real: str, fault: str) -> Iterator[None]:
    """`refuse`: the real's listener on port 80 is gone, its kernel answers RST;
    `blackhole`: its packets to port 80 vanish, both families'. Undone on exit,
    whatever happened."""
    drop = ["INPUT", "-p", "tcp", "--dport", "80", "-j", "DROP"]

    def blackhole(op: str) -> None:
        lab.real_iptables(real, [op, *drop])
        done = lab.run_in(lab.real_ns[real], ["ip6tables", "-w", op, *drop])
        assert done.returncode == 0, done.stderr

    if fault == "refuse":
        lab.stop_server(real, 80)
    else:
        blackhole("-I")
    try:
        yield
    finally:
        if fault == "refuse":
            lab.start_server(real, 80)
        else:
            blackhole("-D")


def fig1_pools_answer(lab: Lab) -> None:
    """FIG. 1 through the director: two requests from every client address, each pool's
    clients answered by its own reals only (preferred ones by 203.0.113.11 on port 8001
    through VIP port 80), and the real sees the client's own address, not the director's.
    Sends 2 x 8 requests per pool and one more from a preferred client."""
    expected = {PREFERRED: {name(R14), name(R11, 8001)}, UNWELCOME: {name(R15)},
                GENERAL: {name(R12), name(R13)}}
    for pool, reals in expected.items():
        sources = lab.client_addresses[pool]
        got = collections.Counter(bodies(lab.get_many(f"http://{VIP}/", sources,
                                                      count=2 * len(sources))))
        assert set(got) == reals, (pool, got)
    source = lab.client_addresses[PREFERRED][3]
    assert bodies(lab.get_many(f"http://{VIP}/peer", [source])) == [source]


def ditched_then_retried(lab: Lab, console: Console, fault: str, bad: str, good: str,
                         timeout: float, side: Side | None = None) -> dict[str, int]:
    """With `fault` on `bad` (configured with threshold 2, reassign 1, retry 2 beside
    `good`), six requests from general clients are all answered by `good`, `bad` is FAILED
    after its two ditched connections; once the fault is gone it is tested after `retry`
    and back in service. `side`: the family (IPv4 by default). Returns `show
    statistics` as taken during the fault."""
    side = side or Side(lab, False)
    url, sources, bad_id = f"http://{side.vip}/", side.sources(GENERAL), side.real(bad)
    with real_fault(lab, bad, fault):
        got = bodies(lab.get_many(url, sources, count=6, timeout=timeout))
        assert got == [side.name(good)] * 6
        state, conns, _ = console.real(bad_id)
        assert state == "FAILED" and conns == 0
        assert int(console.rows("real")[f"{bad_id}:0:0:tcp"][6]) == 2   # reassigns
        stats = console.statistics()
        assert stats["conns reassigned"] == 2
    console.wait_for(lambda: console.real(bad_id)[0] == "TESTING", timeout=6, what="TESTING")
    got = bodies(lab.get_many(url, sources, count=4))
    assert side.name(bad) in got
    # On the fast path its SYN-ACK reaches the engine as a batched NFLOG copy, up to
    # nflog.FLUSH_CS later than the client got its answer.
    console.wait_for(lambda: console.real(bad_id)[0] == "IS", timeout=2, what="IS")
    return stats


def ten_megabytes_each_way(lab: Lab, base: str = f"http://{VIP}",
                           source: str | None = None) -> None:
    """10 MiB down from each of two reals and up to each, byte-exact (sha256), from
    `source` (a general client by default) to the virtual at `base` (an URL's start)."""
    size = 10 * 1024 * 1024
    source = source or lab.client_addresses[GENERAL][0]
    down = lab.get_many(f"{base}/bytes/{size}", [source], count=2, digest=True, timeout=60)
    assert [(r.ok, r.length, r.sha256) for r in down] == [(True, size, pattern_digest(size))] * 2
    upload = os.urandom(size)
    for _ in range(2):  # once to each real
        answer = lab.client_post(f"{base}/sha256", upload, source=source, timeout=60)
        assert answer.strip() == hashlib.sha256(upload).hexdigest()


LINK_DIRECTOR, LINK_PEER = "198.19.255.1", "198.19.255.2"


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


@contextmanager
def linked_namespace(lab: Lab, suffix: str, director_if: str) -> Iterator[str]:
    """A namespace of the test's own (a collector's, a manager's) linked to the lab's
    director by 198.19.255.0/24: the director's LINK_DIRECTOR on `director_if`, the
    namespace's LINK_PEER on its eth0; no IPv6. Removed on exit, whatever happened."""
    ns = f"{lab.name}-{suffix}"
    _ip("netns", "add", ns)
    try:
        _ip("netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1")
        _ip("-n", lab.director_ns, "link", "add", director_if, "type", "veth", "peer",
            "name", "eth0", "netns", ns)
        _ip("-n", lab.director_ns, "addr", "add", f"{LINK_DIRECTOR}/24", "dev", director_if)
        _ip("-n", lab.director_ns, "link", "set", director_if, "up")
        _ip("-n", ns, "addr", "add", f"{LINK_PEER}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
