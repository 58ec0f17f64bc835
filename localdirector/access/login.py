"""Who may log in, and how a login is refused: the rules every remote door shares.

SSH, telnet and the serial console differ in transport only; the policy lives here once
so that no door is weaker than another:

* Access lists (`ssh ADDR MASK`, `telnet ADDR MASK`; listeners.py applies them) are
  checked on the TCP connection, before a single byte is sent: a refused peer never
  learns what is listening. An empty list allows any peer; the password (or an
  authorized key) still guards the shell, and the door itself is off until `--ssh` /
  `--telnet` opens it.
* No `password` configured means no password login at all (Cisco's "Password required,
  but none set"): an appliance must never hand out a shell for an empty password.
* Three password tries per connection, however a client pipelines them, and the
  connection is dropped; every failure is logged with the peer address and costs the
  peer a pause. Failures are also counted per source address and in all, across doors
  and `enable` (model/passwords.py `FAILED_PASSWORDS`): a source past its share is
  refused without its password being checked.
* At most MAX_CONNECTIONS connections per door at once (a router's few vty lines), of
  which at most MAX_PENDING_PER_SOURCE from one address not logged in yet, and
  LOGIN_TIMEOUT to log in: idle connections from one address cannot lock others out,
  nor eat the file descriptors the data plane needs. Refusals are logged at most once
  per LOG_INTERVAL and source (listeners.py, shared with the metrics endpoint), so a
  flood cannot flush `show syslog`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..listeners import REFUSALS, peer_address, peer_allowed
from ..model.addr import bracketed
from ..model.director import Director
from ..model.passwords import FAILED_PASSWORDS, verify_password

log = logging.getLogger("localdirector.access")

MAX_TRIES = 3
FAIL_DELAY = 1.0          # seconds after each wrong password
LOGIN_TIMEOUT = 15.0      # seconds to complete a login before the line is dropped
MAX_CONNECTIONS = 16      # per door (ssh, telnet), logged in or not
MAX_PENDING_PER_SOURCE = 4   # per door and address, connected but not logged in yet

NO_PASSWORD = "% Password required, but none set"
BAD_PASSWORD = "% Login invalid"
TOO_MANY = "% Bad passwords"
THROTTLED = "% Too many failed passwords; try again later"


def peer_label(host: str, port: int) -> str:
    """How `who` and the log name a remote peer: address and source port, an IPv6
    address in brackets, an IPv4-mapped one as the IPv4 address it is."""
    addr = peer_address(host)
    return f"{host if addr is None else bracketed(addr)}:{port}"


class Place:
    """One admitted connection's place at a door: pending until `logged_in()`."""

    def __init__(self, gate: "Gate", source: str) -> None:
        self.gate = gate
        self.source = source
        self.pending = True
        self.released = False

    def logged_in(self) -> None:
        if self.pending:
            self.pending = False
            self.gate.unpend(self.source)

    def release(self) -> None:
        """When the peer leaves; safe to call more than once."""
        if not self.released:
            self.released = True
            self.logged_in()
            self.gate.open -= 1


class Gate:
    """Admission to one door: the access list, the connection limit, then the limit on
    connections from one address that have not logged in.

    Used from the event loop thread only, so the counts need no lock."""

    def __init__(self, kind: str, limit: int = MAX_CONNECTIONS,
                 pending_limit: int = MAX_PENDING_PER_SOURCE) -> None:
        self.kind = kind
        self.limit = limit
        self.pending_limit = pending_limit
        self.open = 0
        self.pending: dict[str, int] = {}

    def admit(self, director: Director, peer: str) -> Place | None:
        """A place the caller must `release()` when the peer leaves, or None: refused."""
        if not peer_allowed(director, self.kind, peer):
            return None
        if self.open >= self.limit:
            REFUSALS.warning(f"full {self.kind}",
                             "%s connection from %s refused: %d connections already open",
                             self.kind, peer, self.open)
            return None
        if self.pending.get(peer, 0) >= self.pending_limit:
            REFUSALS.warning(f"pending {self.kind} {peer}",
                             "%s connection from %s refused: %d from it not logged in yet",
                             self.kind, peer, self.pending_limit)
            return None
        self.open += 1
        self.pending[peer] = self.pending.get(peer, 0) + 1
        return Place(self, peer)

    def unpend(self, source: str) -> None:
        left = self.pending[source] - 1
        if left:
            self.pending[source] = left
        else:
            del self.pending[source]


def password_set(director: Director) -> bool:
    with director.lock:
        return bool(director.settings.login_secret)


def users_set(director: Director) -> bool:
    with director.lock:
        return bool(director.settings.users)


def login_level(director: Director, username: str, password: str) -> int | None:
    """The privilege level an SSH password login earns, or None when refused. A
    configured `username` is checked against its own password only, never the login
    password, so naming a user is no way around either; any other name logs in with
    the login `password`, in user mode (1)."""
    with director.lock:
        user = director.settings.users.get(username)
    if user is not None:
        return user.level if verify_password(password, user.secret) else None
    return 1 if password_ok(director, password) else None


def password_ok(director: Director, password: str) -> bool:
    """Check a login password against the hashed `password` setting."""
    with director.lock:
        secret = director.settings.login_secret
    return bool(secret) and verify_password(password, secret)


async def check_password(director: Director, password: str) -> bool:
    """`password_ok` off the event loop: a deliberately slow hash must not stall the
    other sessions while someone guesses."""
    return await asyncio.to_thread(password_ok, director, password)


def note_failure(kind: str, peer: str, source: str, tries: int) -> None:
    FAILED_PASSWORDS.failed(source)
    log.warning("%s login from %s failed: wrong password (%d of %d)",
                kind, peer, tries, MAX_TRIES)


def throttled(kind: str, peer: str, source: str) -> bool:
    """True when `source` may not try a password now (see FailedPasswords); logged."""
    reason = FAILED_PASSWORDS.blocked(source)
    if reason is not None:
        REFUSALS.warning(f"throttled {kind} {source}", "%s login from %s refused: %s",
                         kind, peer, reason)
    return reason is not None


async def password_login(director: Director, kind: str, peer: str, source: str,
                         ask: Callable[[], Awaitable[str]],
                         say: Callable[[str], None]) -> bool:
    """Prompt for the login password at most three times; True once it matched.

    `peer` names the line in the log, `source` is the address failures are counted for.
    `ask` shows the `Password:` prompt and returns what was typed (without echo);
    `say` prints one line to the peer. The caller drops the line on False."""
    if not password_set(director):
        say(NO_PASSWORD)
        log.warning("%s login from %s refused: no password set", kind, peer)
        return False
    for tries in range(1, MAX_TRIES + 1):
        typed = await ask()
        if throttled(kind, peer, source):
            await asyncio.sleep(FAIL_DELAY)
            say(THROTTLED)
            return False
        if await check_password(director, typed):
            log.info("%s login from %s", kind, peer)
            return True
        note_failure(kind, peer, source, tries)
        await asyncio.sleep(FAIL_DELAY)
        say(BAD_PASSWORD if tries < MAX_TRIES else TOO_MANY)
    return False
