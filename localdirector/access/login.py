"""Who may log in, and how a login is refused: the rules every remote door shares.

SSH, telnet and the serial console differ in transport only; the policy lives here once
so that no door is weaker than another:

* Access lists (`ssh ADDR MASK`, `telnet ADDR MASK`) are checked on the TCP connection,
  before a single byte is sent: a refused peer never learns what is listening. An empty
  list allows any peer; the password (or an authorized key) still guards the shell, and
  the door itself is off until `--ssh` / `--telnet` opens it.
* No `password` configured means no password login at all (Cisco's "Password required,
  but none set"): an appliance must never hand out a shell for an empty password.
* Three wrong passwords and the connection is dropped; every failure is logged with the
  peer address, and each costs the peer a pause so guessing is slow.
* At most MAX_CONNECTIONS connections per door at once (a router's few vty lines): a
  flood of idle connections cannot eat the file descriptors the data plane needs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable

from ..model.director import Director
from ..model.passwords import verify_password

log = logging.getLogger("localdirector.access")

MAX_TRIES = 3
FAIL_DELAY = 1.0          # seconds after each wrong password
LOGIN_TIMEOUT = 60.0      # seconds to complete a login before the line is dropped
MAX_CONNECTIONS = 16      # per door (ssh, telnet), logged in or not

NO_PASSWORD = "% Password required, but none set"
BAD_PASSWORD = "% Login invalid"
TOO_MANY = "% Bad passwords"


def peer_ipv4(peer: str) -> int | None:
    """The peer as an int for the access lists; IPv4-mapped IPv6 counts as IPv4."""
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is None:
            return None
        addr = addr.ipv4_mapped
    return int(addr)


def peer_label(host: str, port: int) -> str:
    """How `who` and the log name a remote peer: address and source port."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_allowed(director: Director, kind: str, peer: str) -> bool:
    """Apply the `ssh` or `telnet` access list to a connecting peer address.

    An IPv6 peer cannot match an IPv4 list, so it is allowed only while the list is
    empty, exactly like any IPv4 peer."""
    with director.lock:
        entries = list(director.settings.access(kind))
    if not entries:
        return True
    addr = peer_ipv4(peer)
    allowed = addr is not None and director.client_matches(entries, addr)
    if not allowed:
        log.warning("%s connection from %s refused by the access list", kind, peer)
    return allowed


class Gate:
    """Admission to one door: the access list, then the connection limit.

    Used from the event loop thread only, so the count needs no lock."""

    def __init__(self, kind: str, limit: int = MAX_CONNECTIONS) -> None:
        self.kind = kind
        self.limit = limit
        self.open = 0

    def admit(self, director: Director, peer: str) -> bool:
        """True: the caller owns one place and must `release()` it when the peer leaves."""
        if not peer_allowed(director, self.kind, peer):
            return False
        if self.open >= self.limit:
            log.warning("%s connection from %s refused: %d connections already open",
                        self.kind, peer, self.open)
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


def password_set(director: Director) -> bool:
    with director.lock:
        return bool(director.settings.login_secret)


def password_ok(director: Director, password: str) -> bool:
    """Check a login password against the hashed `password` setting."""
    with director.lock:
        secret = director.settings.login_secret
    return bool(secret) and verify_password(password, secret)


async def check_password(director: Director, password: str) -> bool:
    """`password_ok` off the event loop: a deliberately slow hash must not stall the
    other sessions while someone guesses."""
    return await asyncio.to_thread(password_ok, director, password)


def note_failure(kind: str, peer: str, tries: int) -> None:
    log.warning("%s login from %s failed: wrong password (%d of %d)",
                kind, peer, tries, MAX_TRIES)


async def password_login(director: Director, kind: str, peer: str,
                         ask: Callable[[], Awaitable[str]],
                         say: Callable[[str], None]) -> bool:
    """Prompt for the login password at most three times; True once it matched.

    `ask` shows the `Password:` prompt and returns what was typed (without echo);
    `say` prints one line to the peer. The caller drops the line on False."""
    if not password_set(director):
        say(NO_PASSWORD)
        log.warning("%s login from %s refused: no password set", kind, peer)
        return False
    for tries in range(1, MAX_TRIES + 1):
        typed = await ask()
        if await check_password(director, typed):
            log.info("%s login from %s", kind, peer)
            return True
        note_failure(kind, peer, tries)
        await asyncio.sleep(FAIL_DELAY)
        say(BAD_PASSWORD if tries < MAX_TRIES else TOO_MANY)
    return False
