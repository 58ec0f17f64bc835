"""The SNMP agent as LocalDirector and IOS configure it: `snmp-server community STRING
[ro]`, `contact TEXT`, `location TEXT`, `host ADDR [COMMUNITY]`, `enable traps`, and
`show snmp` (docs/design.rst, "Monitoring").

The commands change the model only; monitor/snmp.py keeps snmpd's configuration and
the trap receivers in step with it. `show snmp` never shows a community: the
running-config (privileged) is the one place it is written."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from localdirector.model.addr import format_ip
from localdirector.model.director import Director
from localdirector.model.snmp import SnmpConfig
from localdirector.shell import args
from localdirector.shell.grammar import Arg, Keyword, opt
from localdirector.shell.registry import EXEC, Mode, command
from localdirector.shell.session import Session

SNMP = Keyword("snmp-server", "The SNMP agent: community, contact, location, traps")
MASK = "********"


@dataclass(frozen=True)
class SnmpStatus:
    """The running agent, for `show snmp`."""

    listen: str                # ADDR:PORT snmpd answers on
    pid: int | None            # snmpd's, None while it is being restarted
    restarts: int
    connected: bool            # the appliance's AgentX session with snmpd is open
    traps_sent: int            # notifications handed to snmpd for the trap receivers
    traps_dropped: int         # lost: snmpd was not reachable, or the backlog was full


class SnmpHandle(Protocol):
    def status(self) -> SnmpStatus:
        """A snapshot; never blocks on snmpd."""


def _word(name: str, placeholder: str, help: str) -> Arg:
    return Arg(name, placeholder, help, lambda text, _s: text)


def _text(name: str, help: str) -> Arg:
    return Arg(name, "LINE", help, lambda text, _s: text.strip(), rest=True)


@command(Mode.CONFIG, SNMP, Keyword("community", "The read-only community (a password "
                                                  "sent in clear)"),
         _word("community", "WORD", "Community string, 1-32 characters"),
         opt(Keyword("ro", "Read-only: the only access there is")), no=2,
         saver=lambda d: [(d.settings.snmp.community,)] if d.settings.snmp.community else [])
def snmp_community(session: Session, community: str = "", no: bool = False) -> None:
    session.director.set_snmp_community("" if no else community)


def _text_command(what: str, help: str, arg_help: str) -> None:
    def saver(director: Director) -> list[Sequence[object]]:
        text = getattr(director.settings.snmp, what)
        return [(text,)] if text else []

    def handler(session: Session, text: str = "", no: bool = False) -> None:
        session.director.set_snmp_text(what, "" if no else text)

    command(Mode.CONFIG, SNMP, Keyword(what, help), _text("text", arg_help), no=2,
            saver=saver)(handler)


_text_command("contact", "sysContact: who runs this appliance", "Text, the rest of the line")
_text_command("location", "sysLocation: where it stands", "Text, the rest of the line")


@command(Mode.CONFIG, SNMP, Keyword("enable", "Turn on notifications"),
         Keyword("traps", "Traps to the snmp-server hosts: reals failed and recovered, "
                          "failover role changes"),
         no=3, saver=lambda d: [()] if d.settings.snmp.traps else [])
def snmp_enable_traps(session: Session, no: bool = False) -> None:
    session.director.set_snmp_traps(not no)


@command(Mode.CONFIG, SNMP, Keyword("host", "A trap receiver (port 162, SNMP v2c)"),
         args.ip("addr", "The receiver's address (IPv4 or IPv6)"),
         opt(_word("community", "WORD", "Community its traps carry [the agent's]")),
         no=3, saver=lambda d: [(format_ip(h.addr), *([h.community] if h.community else []))
                                for h in d.settings.snmp.hosts])
def snmp_host(session: Session, addr: int, community: str = "", no: bool = False) -> None:
    if no:
        session.director.remove_trap_host(addr)
    else:
        session.director.add_trap_host(addr, community)


def render(snmp: SnmpConfig, status: SnmpStatus | None) -> list[str]:
    """`show snmp`'s lines above its table of receivers: never a community."""
    if status is None:
        lines = ["SNMP agent not running (no --snmp)"]
    else:
        agent = (f"snmpd pid {status.pid}" if status.pid is not None
                 else "snmpd DOWN, being restarted")
        lines = [f"SNMP agent on {status.listen} (v2c, read-only): {agent}"
                 + (f", restarted {status.restarts} times" if status.restarts else "")
                 + ("" if status.connected else "; tables not served (AgentX not connected)")]
    community = f"set ({MASK})" if snmp.community else "not set: no request is answered"
    return lines + [
        f"Community: {community}", f"Contact: {snmp.contact or '-'}",
        f"Location: {snmp.location or '-'}",
        f"Traps: {'enabled' if snmp.traps else 'disabled'}"
        + ("" if status is None else
           f", {status.traps_sent} sent, {status.traps_dropped} dropped")]


@command(EXEC, Keyword("show", "Show running system information"),
         Keyword("snmp", "The SNMP agent: where it answers, traps and their receivers"),
         output=True)
def show_snmp(session: Session) -> None:
    handle = session.appliance.snmp
    status = None if handle is None else handle.status()
    snmp = session.director.settings.snmp
    session.print_lines(render(snmp, status))
    session.record(community_set=bool(snmp.community), contact=snmp.contact,
                   location=snmp.location, traps=snmp.traps,
                   agent=None if status is None else dataclasses.asdict(status))
    session.print_table(("Host", "Community"),
                        [(format_ip(h.addr), MASK if h.community else "(the agent's)"
                          if snmp.community else "none: it gets no traps")
                         for h in snmp.hosts], key="hosts", empty="No trap receivers")
