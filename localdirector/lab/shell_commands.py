"""Shell commands that exist only inside ``localdirector lab``: `lab curl`, `lab dig`,
`show lab`.

So that a newcomer at the director's prompt sees FIG. 1 at work without a second
terminal, the shell sends traffic from the lab's client namespace, only toward the lab's
VIP range, from the lab's own client addresses (docs/design.rst, "Lab"). Only the
entry point imports this module, and only when the environment names a lab: importing it
registers the commands; which lab they act on is read from the environment when they run.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from collections.abc import Callable

from localdirector.model.addr import IPV4, IPV6, Family, bracketed, family_of
from localdirector.shell import args
from localdirector.shell.grammar import Arg, ArgError, Keyword, choice, opt
from localdirector.shell.registry import EXEC, command
from localdirector.shell.render import table
from localdirector.shell.session import CommandFailed, Session

from .addresses import (VIP_NET, VIP_NET6, LabError, client_addresses, client_addresses6,
                        require_allowed)
from .guide import DEFAULT_PORTS, ENV, LabInfo, address_range, destinations, overview
from .udpservers import WHO_NAME

MAX_REQUESTS = 100
REQUEST_SECONDS = 5
# One request after another (a round robin reads in order), so a pool that does not
# answer would cost REQUEST_SECONDS per request: give up on it early instead.
GIVE_UP_AFTER = 3
NO_ANSWER = "no answer: "
MAX_HOLD_SECONDS = 3600

# Background `hold` requests, reaped on the next `lab` command (the lab's teardown kills
# whatever is still running when the appliance exits). Their trace pipes stay open
# while they run: the few lines still to come never fill them.
_held: list[subprocess.Popen[bytes]] = []


def _curl_argv(info: LabInfo, source: str, url: str, seconds: int,
               *options: str) -> list[str]:
    return ["ip", "netns", "exec", info.client_ns, "curl", "-sS", "--noproxy", "*",
            "--max-time", str(seconds), "--interface", source, *options, url]


def _answer(info: LabInfo, source: str, url: str) -> str:
    """The first line the real answered (its name), or why there was no answer."""
    try:
        proc = subprocess.run(_curl_argv(info, source, url, REQUEST_SECONDS),
                              capture_output=True, text=True, timeout=REQUEST_SECONDS + 5,
                              check=False)
    except subprocess.TimeoutExpired:
        return f"{NO_ANSWER}curl did not finish"
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or [f"curl exit status {proc.returncode}"])
        return f"{NO_ANSWER}{reason[-1].removeprefix('curl: ')}"
    return (proc.stdout.strip().splitlines() or ["(empty answer)"])[0]


def _target(session: Session, target: tuple[int, int | None] | None,
            proto: str = "tcp", family: Family = IPV4) -> tuple[str, int]:
    """The destination as it stands before a port (IPv6 bracketed) and the port: the
    one given, else the first configured virtual of `proto` and `family`."""
    vips = VIP_NET6 if family is IPV6 else VIP_NET
    if target is None:
        with session.director.lock:
            configured = destinations(session.director, proto, family)
        if not configured:
            of = " with an IPv6 address" if family is IPV6 else ""
            raise CommandFailed(f"no {proto} virtual server{of} is configured: nothing to "
                                "send to")
        addr, port, _ = configured[0]
    else:
        addr, port = target[0], target[1] or DEFAULT_PORTS[proto]
    text = bracketed(addr)
    if family_of(addr) is not family:
        raise CommandFailed(f"{text} is an IPv{family_of(addr).version} address, and these "
                            f"clients send IPv{family.version}"
                            + ("" if family is IPV6 else " (lab curl -6: IPv6 clients)"))
    try:
        require_allowed(text.strip("[]"), [vips])
    except LabError:
        raise CommandFailed(f"the lab's clients reach only {vips} through the "
                            f"director, not {text}") from None
    return text, port


def _reap() -> None:
    still = []
    for proc in _held:
        if proc.poll() is None:
            still.append(proc)
        elif proc.stderr is not None:
            proc.stderr.close()
    _held[:] = still


def _open_held(info: LabInfo, sources: list[str], url: str, seconds: int) -> list[str]:
    """Start one held request per source and wait until each has its response headers,
    i.e. until the director has assigned it: a command typed next (`show conns`, or a
    request that should find a real full) then sees these connections in place.
    curl's verbose trace (stderr) tells when the headers arrived; its standard output
    would not, as curl writes the headers there only together with the body."""
    procs = [subprocess.Popen(_curl_argv(info, source, url, seconds + REQUEST_SECONDS, "-v"),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
             for source in sources]
    deadline = time.monotonic() + REQUEST_SECONDS
    return [_await_headers(proc, deadline, seconds) for proc in procs]


def _await_headers(proc: subprocess.Popen[bytes], deadline: float, seconds: int) -> str:
    assert proc.stderr is not None
    trace = b""
    while b"\n< HTTP/" not in trace:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, left))
        chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""
        if not chunk:   # deadline passed, or curl exited without an answer
            proc.kill()
            proc.wait()
            proc.stderr.close()
            errors = [line for line in trace.decode(errors="replace").splitlines()
                      if line.startswith("curl: ")]
            reason = errors[-1].removeprefix("curl: ") if errors else \
                f"none within {REQUEST_SECONDS} s"
            return f"{NO_ANSWER}{reason}"
        trace += chunk
    _held.append(proc)
    return f"open, held for {seconds} s"


def _this_lab() -> LabInfo:
    info = LabInfo.from_env()
    if info is None:
        raise CommandFailed(f"this appliance does not run in a lab ({ENV} is unset or "
                            "unreadable)")
    return info


# The groups `localdirector lab` builds; their help shows its default client addresses.
_GROUPS = choice(*(Keyword(group, f"From the {group} clients {address_range(clients)} "
                                  f"(-6: {address_range(client_addresses6()[group])})",
                           "group", group) for group, clients in client_addresses().items()))
_SIX = opt(Keyword("-6", "From the group's IPv6 clients, to the first IPv6 virtual "
                         "(default: IPv4)", "family", IPV6))


def _traffic(word: str, help: str, what: str, proto: str,
             *family: object) -> tuple[object, ...]:
    """The start every `lab` traffic command shares: `lab WORD [FAMILY] GROUP [COUNT]
    [vip VIP[:PORT]]`, COUNT `what`s one after another, to the first `proto` virtual."""
    return (Keyword("lab", "Send traffic from this lab's clients"), Keyword(word, help),
            *family, _GROUPS,
            opt(args.number("count", 1, MAX_REQUESTS, f"How many {what}, one after "
                            "another, each from the next client address", "COUNT")),
            opt(Keyword("vip", f"Send to this VIP (default: the first {proto} virtual)"),
                args.vip_port("target", f"Virtual address and port "
                                        f"[{DEFAULT_PORTS[proto]}]")))


@command(EXEC, *_traffic("curl", "HTTP requests through the director; each answer names "
                                 "the real that served it", "requests", "tcp", _SIX),
         opt(Keyword("hold", "Keep the connections open in the background"),
             args.number("hold", 1, MAX_HOLD_SECONDS, "Seconds to keep them open",
                         "SECONDS")),
         output=True, locked=False)
def lab_curl(session: Session, group: str, count: int = 1,
             target: tuple[int, int | None] | None = None, hold: int = 0,
             family: Family = IPV4) -> None:
    """Runs unlocked (`locked=False`): the data plane needs the model lock to carry
    these very requests, so holding it here would stall them until curl gives up.
    `-6`: the group's IPv6 clients, to an IPv6 virtual (FIG. 1 for IPv6 clients)."""
    info = _this_lab()
    _reap()
    clients = info.groups(family).get(group)
    if not clients:
        raise CommandFailed(f"this lab has no IPv{family.version} clients")
    addr, port = _target(session, target, "tcp", family)
    sources = [clients[i % len(clients)] for i in range(count)]
    if hold:
        states = _open_held(info, sources, f"http://{addr}:{port}/hold/{hold}", hold)
        session.print_lines(table(("Client", "Connected to", "Connection"),
                                  [(source, f"{addr}:{port}", state)
                                   for source, state in zip(sources, states)]))
        session.print("See them with show conns and show real.")
        return
    url = f"http://{addr}:{port}/"
    _ask_each(session, sources, ("Client", "Connected to", "Answered by"),
              lambda source: (f"{addr}:{port}", _answer(info, source, url)), "requests")


def _ask_each(session: Session, sources: list[str], header: tuple[str, ...],
              ask: Callable[[str], tuple[str, ...]], what: str) -> None:
    """One question per source, one after another (a round robin reads in order), and
    the table of answers, whose last column says who answered or NO_ANSWER why not;
    after GIVE_UP_AFTER silences in a row the rest are not sent."""
    rows = []
    silent = 0
    for source in sources:
        row = (source, *ask(source))
        rows.append(row)
        silent = silent + 1 if row[-1].startswith(NO_ANSWER) else 0
        if silent == GIVE_UP_AFTER and len(rows) < len(sources):
            break
    session.print_lines(table(header, rows))
    if len(rows) < len(sources):
        session.print(f"Stopped after {GIVE_UP_AFTER} {what} in a row got no answer; "
                      f"{len(sources) - len(rows)} not sent.")


def _dns_name(text: str, _session: object) -> str:
    """A name with a dot (`who.lab`), so it is never taken for a keyword or a count."""
    if "." not in text or not re.fullmatch(r"[A-Za-z0-9_.-]{1,253}", text):
        raise ArgError(f"expected a DNS name with a dot (as {WHO_NAME}), not '{text}'")
    return text


def _qtype(text: str, _session: object) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,9}", text):
        raise ArgError(f"expected a record type (TXT, A, SOA, ...), not '{text}'")
    return text.upper()


def _dig(info: LabInfo, source: str, addr: str, port: int, name: str,
         qtype: str) -> tuple[str, str]:
    """(answer size, who answered): the first word of the first record of the answer,
    which the lab's DNS servers make the real's name; or the status, or NO_ANSWER why.
    One try, EDNS 4096 and no retry over TCP when truncated (+ignore): what crossed the
    director over UDP is what is shown."""
    argv = ["ip", "netns", "exec", info.client_ns, "dig", f"@{addr}", "-p", str(port),
            "-b", source, name, qtype, f"+time={REQUEST_SECONDS}", "+tries=1",
            "+bufsize=4096", "+ignore"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True,
                              timeout=REQUEST_SECONDS + 5, check=False)
    except subprocess.TimeoutExpired:
        return "-", f"{NO_ANSWER}dig did not finish"
    status = re.search(r"status: (\w+)", proc.stdout)
    if proc.returncode != 0 or status is None:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        reason = lines[-1].lstrip(";") if lines else f"dig exit status {proc.returncode}"
        return "-", f"{NO_ANSWER}{reason.strip()}"
    size = re.search(r"MSG SIZE\s+rcvd: (\d+)", proc.stdout)
    truncated = " (truncated)" if re.search(r"flags:[a-z ]* tc[ ;]", proc.stdout) else ""
    records = proc.stdout.split(";; ANSWER SECTION:\n", 1)[1:]
    fields = records[0].split("\n", 1)[0].split(None, 4) if records else []
    if len(fields) < 5:
        return size[1] if size else "-", f"{status[1]}, no records{truncated}"
    return size[1] if size else "-", fields[4].split()[0].strip('"') + truncated


@command(EXEC, *_traffic("dig", "DNS queries over udp through the director; each answer "
                                "names the real that served it", "queries", "udp"),
         opt(Arg("name", "NAME", f"The name asked [{WHO_NAME}]", _dns_name),
             opt(Arg("qtype", "TYPE", "The record type [TXT]", _qtype))),
         output=True, locked=False)
def lab_dig(session: Session, group: str, count: int = 1,
            target: tuple[int, int | None] | None = None, name: str = WHO_NAME,
            qtype: str = "TXT") -> None:
    """Real `dig` in the clients' namespace, one query (one new flow) per client
    address; unlocked as `lab curl` is, for the same reason."""
    info = _this_lab()
    addr, port = _target(session, target, "udp")
    clients = info.clients[group]
    sources = [clients[i % len(clients)] for i in range(count)]
    _ask_each(session, sources, ("Client", "Asked", "Question", "Bytes", "Answered by"),
              lambda source: (f"{addr}:{port}", f"{name}/{qtype}",
                              *_dig(info, source, addr, port, name, qtype)), "queries")


@command(EXEC, Keyword("show", "Show running system information"),
         Keyword("lab", "This lab: namespaces, client groups, who goes where"), output=True)
def show_lab(session: Session) -> None:
    session.print_lines(overview(_this_lab(), session.director))
