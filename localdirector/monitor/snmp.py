"""`--snmp [ADDR:]PORT`: an SNMP v2c agent, read-only, answering for LOCALDIRECTOR-MIB
(mibs/LOCALDIRECTOR-MIB.txt) and sending traps when a real fails or recovers and when
the failover role changes (docs/design.rst, "Monitoring").

net-snmp's snmpd does the SNMP: it listens on the address given (the loopback when a
port alone is), checks the community, answers the system group and sends the traps to
the `snmp-server host`s. It runs as a supervised child (runtime.Supervised, like
keepalived), dies with the appliance, and its configuration, written from the model,
lives in this namespace's run directory (runtime.claim), 0700, so the community is on
no command line. The appliance is its AgentX subagent over a Unix socket there
(monitor/agentx.py): one thread (`snmp-agentx`) answers from a snapshot of the model
(monitor/snmp_mib.py) and hands snmpd the notifications the model's health watchers and
the failover service queue. A configuration change is written and snmpd told (SIGHUP),
which keeps the AgentX session.

Why snmpd and AgentX, not an SNMP engine in this process, snmpd's pass_persist or an
AgentX library: docs/design.rst, "Monitoring".

snmpd runs as root: dropping to an unprivileged user (`-u`) changes its credentials,
which clears PR_SET_PDEATHSIG, and a SIGKILLed appliance then left snmpd answering
(docs/design.rst, "Monitoring")."""

from __future__ import annotations

import argparse
import collections
import logging
import os
import select
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import localdirector
from localdirector import runtime
from localdirector.commands.snmp import SnmpStatus
from localdirector.listeners import listen_address
from localdirector.model.addr import IPV4, bracketed, family_of, format_ip, parse_ip
from localdirector.model.director import Director
from localdirector.model.snmp import SnmpConfig
from localdirector.model.state import State
from localdirector.services import ServiceError

from . import agentx, snmp_mib

if TYPE_CHECKING:
    from localdirector.appliance import Appliance
    from localdirector.model.real import PhysicalMachine

log = logging.getLogger("localdirector.snmp")

LOOPBACK = "127.0.0.1"     # where `--snmp PORT` listens
START_WAIT = 10.0          # seconds for snmpd to listen and take the subagent
RECONNECT = 0.2            # seconds between tries to reach snmpd's AgentX socket
BACKLOG = 100              # notifications held while snmpd is not reachable
IO_TIMEOUT = 5.0
SYSTEM = (1, 3, 6, 1, 2, 1, 1)   # the system group: sysDescr, sysContact, ...
SNMP_STATISTICS = (1, 3, 6, 1, 2, 1, 11)   # snmpd's own counters: bad communities, ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("SNMP")
    group.add_argument("--snmp", type=listen_address, metavar="[ADDR:]PORT",
                       help="run an SNMP v2c agent (net-snmp's snmpd) for "
                            f"LOCALDIRECTOR-MIB (off unless given; a PORT alone listens "
                            f"on {LOOPBACK} only)")


def _net_snmp(addr: int, port: int | None = None) -> str:
    """An address as snmpd.conf takes it: IPv4 as it is (UDP is the default transport),
    IPv6 as `udp6:[ADDR]`, without which snmpd would read it as a host name."""
    text = format_ip(addr) if family_of(addr) is IPV4 else f"udp6:{bracketed(addr)}"
    return text if port is None else f"{text}:{port}"


def snmpd_conf(snmp: SnmpConfig, hostname: str, host: str, port: int, agentx_socket: Path
               ) -> str:
    """snmpd.conf from the model: a view of the system and snmp groups and our subtree
    only (not the host's processes, interfaces or disks), read-only, no community = no
    answer."""
    root = ".".join(map(str, snmp_mib.ROOT))
    # snmpd's own state (boot counter, engine id: SNMP v3's) neither read nor written,
    # nor in /var/lib/snmp; no MIB loaded: it needs none, and would complain of every
    # one Debian lacks.
    lines = ["[snmp] noPersistentLoad yes", "[snmp] noPersistentSave yes",
             f"[snmp] persistentDir {agentx_socket.parent / 'state'}", "[snmp] mibs :",
             "dontLogTCPWrappersConnects yes",   # a line per request would fill /run
             f"agentaddress {_net_snmp(parse_ip(host), port)}", "master agentx",
             f"agentXSocket {agentx_socket}", "agentXPerms 0600 0700",
             f"view localdirector included .{'.'.join(map(str, SYSTEM))}",
             f"view localdirector included .{'.'.join(map(str, SNMP_STATISTICS))}",
             f"view localdirector included .{root}",
             f"sysDescr localdirector {localdirector.__version__}",
             f"sysObjectID .{root}", f"sysName {hostname}",
             f"sysContact {snmp.contact}", f"sysLocation {snmp.location}",
             "sysServices 72"]
    if snmp.community:
        # snmpd's rocommunity answers IPv4 sources only: an IPv6 agent address needs
        # rocommunity6, or every request to it goes unanswered.
        six = "" if family_of(parse_ip(host)) is IPV4 else "6"
        lines.append(f"rocommunity{six} {snmp.community} default -V localdirector")
    if snmp.traps:
        lines += [f"trap2sink {_net_snmp(h.addr)} {h.community or snmp.community}"
                  for h in snmp.hosts if h.community or snmp.community]
    return "\n".join(lines) + "\n"


class SnmpAgent:
    """snmpd and its subagent session, from start to exit; `status()` for `show snmp`."""

    def __init__(self, appliance: "Appliance", host: str, port: int, directory: Path,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.appliance = appliance
        self.listen = f"{host}:{port}"
        self.host, self.port = host, port
        self.directory = directory
        self.conf = directory / "snmpd.conf"
        self.socket_path = directory / "agentx"
        self.snapshots = snmp_mib.Snapshots(lambda: appliance.director, self._role, clock)
        self.snmpd = runtime.Supervised(
            "snmp", "snmpd", ["snmpd", "-f", "-Lo", "-C", "-c", str(self.conf),
                              "-p", str(directory / "snmpd.pid"), "-M", "/dev/null"],
            directory / "snmpd.out")
        self.connected = False
        self.traps_sent = self.traps_dropped = 0
        self._queue: collections.deque[list[agentx.VarBind]] = collections.deque()
        self._written = ""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snmp-agentx", daemon=True)
        self._session = 0
        self._packet = 0

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """snmpd up and the subagent registered, or ServiceError with snmpd's reason."""
        self._write_conf()
        self.snmpd.start()
        self._thread.start()
        deadline = time.monotonic() + START_WAIT
        while not self.connected:
            if self.snmpd.restarts or time.monotonic() > deadline:
                reason = self._snmpd_said() or "it did not take the subagent in time"
                self.stop()
                raise ServiceError(f"snmp: snmpd cannot serve {self.listen}: {reason}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stopping.set()
        try:
            os.write(self._wake_w, b".")    # out of select(): it sees `_stopping`
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(IO_TIMEOUT)
        self.snmpd.stop()
        # Watchers and listeners run under the model lock: none is writing to the pipe
        # while it closes, and none writes after (`_wake` checks `_stopping`), so a
        # number the kernel gives a later file never receives a wake-up byte.
        with self.appliance.director.lock:
            os.close(self._wake_r)
            os.close(self._wake_w)

    def status(self) -> SnmpStatus:
        return SnmpStatus(self.listen, self.snmpd.pid, self.snmpd.restarts, self.connected,
                          self.traps_sent, self.traps_dropped)

    def _snmpd_said(self) -> str:
        try:
            lines = self.snmpd.output.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        errors = [line for line in lines if "rror" in line]   # not its closing words
        return (errors or lines or [""])[-1]

    def _role(self) -> str:
        handle = self.appliance.failover
        return handle.status().role if handle is not None else "Off"

    # -- the model: configuration and events (called under the model lock) ----------
    def follow(self, director: Director) -> None:
        director.subscribe(lambda: self._wake() if director is self.appliance.director
                           else None)
        director.health_watchers.append(lambda real, before, after:
                                        self._real_moved(director, real, before, after))
        self._wake()

    def _real_moved(self, director: Director, real: "PhysicalMachine", before: State,
                    after: State) -> None:
        """Failed: in service -> FAILED; recovered: FAILED or TESTING -> in service.
        TESTING -> FAILED again is the same failure, FAILED -> TESTING not yet a
        recovery, and an operator's `out-of-service` no trap at all."""
        failed = before is State.IN_SERVICE and after is State.FAILED
        recovered = after is State.IN_SERVICE and before in (State.FAILED, State.TESTING)
        if (failed or recovered) and director is self.appliance.director:
            self._notify(director, snmp_mib.real_notification(director, real, failed))

    def role_changed(self, _before: str, role: str) -> None:
        self._notify(self.appliance.director, snmp_mib.role_notification(role))

    def _notify(self, director: Director, binds: list[agentx.VarBind]) -> None:
        snmp = director.settings.snmp
        if not snmp.traps or not snmp.hosts:
            return
        if len(self._queue) >= BACKLOG:
            self.traps_dropped += 1
            return
        self._queue.append(binds)
        self._wake()

    def _wake(self) -> None:
        if self._stopping.is_set():
            return
        try:
            os.write(self._wake_w, b".")
        except (BlockingIOError, OSError):
            pass    # full: a wake-up is pending anyway; closed: stopping

    # -- the agent thread ------------------------------------------------------------
    def _write_conf(self) -> bool:
        director = self.appliance.director
        with director.lock:
            text = snmpd_conf(director.settings.snmp, director.settings.hostname,
                              self.host, self.port, self.socket_path)
        if text == self._written:
            return False
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        self._written = text
        return True

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(IO_TIMEOUT)
                    sock.connect(str(self.socket_path))
                    self._open(sock)
                    self.connected = True
                    self._wake()    # what was queued while snmpd was away
                    self._serve(sock)
            except (OSError, agentx.AgentXError) as err:
                if self.connected:
                    log.warning("snmp: AgentX session with snmpd ended: %s", err)
            finally:
                self.connected = False
            self._stopping.wait(RECONNECT)

    def _open(self, sock: socket.socket) -> None:
        sock.sendall(agentx.open_pdu(snmp_mib.ROOT, "localdirector"))
        head, payload = _read(sock)
        if head.type != agentx.RESPONSE or agentx.response_fields(head, payload)[1]:
            raise agentx.AgentXError("snmpd refused the session")
        self._session = head.session
        self._packet += 1
        sock.sendall(agentx.register_pdu(self._session, snmp_mib.ROOT, self._packet))
        head, payload = _read(sock)
        if head.type != agentx.RESPONSE or agentx.response_fields(head, payload)[1]:
            raise agentx.AgentXError("snmpd refused to register LOCALDIRECTOR-MIB")

    def _serve(self, sock: socket.socket) -> None:
        while not self._stopping.is_set():
            readable, _, _ = select.select([sock, self._wake_r], [], [])
            if self._wake_r in readable:
                os.read(self._wake_r, 4096)
                while self._queue:
                    self._packet += 1
                    sock.sendall(agentx.notify_pdu(self._session, self._packet,
                                                   self._queue[0]))
                    self._queue.popleft()
                    self.traps_sent += 1
                if self._write_conf():
                    self.snmpd.signal(signal.SIGHUP)   # snmpd reads its file again
            if sock in readable:
                self._answer(sock)
        try:
            sock.sendall(agentx.close_pdu(self._session))
        except OSError:
            pass

    def _answer(self, sock: socket.socket) -> None:
        head, payload = _read(sock)
        if head.type in (agentx.GET, agentx.GETNEXT, agentx.GETBULK):
            sock.sendall(agentx.response(head, self.snapshots.table().answer(head, payload)))
        elif head.type == agentx.TESTSET:
            sock.sendall(agentx.response(head, error=agentx.NOT_WRITABLE, index=1))
        elif head.type in (agentx.COMMITSET, agentx.UNDOSET, agentx.CLEANUPSET,
                           agentx.PING):
            sock.sendall(agentx.response(head))
        elif head.type == agentx.CLOSE:
            raise agentx.AgentXError("snmpd closed the session")
        # RESPONSE: snmpd took a notification; nothing else is asked of a subagent


def _read(sock: socket.socket) -> tuple[agentx.Header, bytes]:
    head = agentx.header(_exactly(sock, agentx.HEADER))
    return head, _exactly(sock, head.length)


def _exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("snmpd closed the AgentX socket")
        data += chunk
    return data


class _Running:
    """What cli.py stops: the agent, then the run directory."""

    def __init__(self, appliance: "Appliance", agent: SnmpAgent) -> None:
        self.appliance, self.agent = appliance, agent

    def stop(self) -> None:
        self.appliance.snmp = None
        if self.agent.role_changed in self.appliance.role_hooks:
            self.appliance.role_hooks.remove(self.agent.role_changed)
        self.agent.stop()
        runtime.release(self.agent.directory)


def start(appliance: "Appliance", args: argparse.Namespace) -> _Running | None:
    """SERVICES entry: None without `--snmp`; snmpd missing, another appliance's run in
    this namespace, or an address snmpd cannot listen on is a one-line error."""
    if args.snmp is None:
        return None
    if shutil.which("snmpd") is None:
        raise ServiceError("snmp: snmpd not found (Debian: apt-get install snmpd)")
    host, port = args.snmp
    try:
        directory = runtime.claim("snmp")
    except runtime.Claimed as err:
        raise ServiceError(f"snmp: {err}") from err
    agent = SnmpAgent(appliance, host or LOOPBACK, port, directory)
    try:
        agent.start()
    except ServiceError:
        runtime.release(directory)
        raise
    appliance.reload_hooks.append(agent.follow)
    agent.follow(appliance.director)
    appliance.role_hooks.append(agent.role_changed)
    appliance.snmp = agent
    return _Running(appliance, agent)
