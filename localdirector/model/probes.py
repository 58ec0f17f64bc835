"""Active health probes (LocalDirector 4.x `probeconfig`/`probe`): what a probe asks, and
what each (real, probe, port) check has learnt (docs/design.rst, "Probes").

The model holds definitions, attachments and results; the runner (localdirector/probes/)
only connects and reports through Director methods. A check starts UNKNOWN and its
first result, asked for at once, decides at once: a real that is dead at boot is out
after one timeout. Until that result, for at most one interval (`pending_until`), the
real is passed over while another is known good (model/health.py). After that
`failures` failed results in a row take it DOWN and `successes` good ones in a row
bring it back UP."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import probe_kinds
from .probe_kinds import KINDS, KindError
from .serverid import ServerId

DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 2.0
DEFAULT_FAILURES = 3
DEFAULT_SUCCESSES = 2
DEFAULT_METHOD = "GET"
DEFAULT_PATH = "/"
DEFAULT_STATUS = "200-399"
DEFAULT_QUERY = "."
DEFAULT_QTYPE = "NS"
DEFAULT_RCODE = "NOERROR"
MIN_SECONDS = 0.1
MAX_SECONDS = 3600.0

UNKNOWN, UP, DOWN, NO_PORT = "UNKNOWN", "UP", "DOWN", "NO-PORT"

_STATUS_ITEM = re.compile(r"(\d{3})(?:-(\d{3}))?\Z")
_METHOD = re.compile(r"[A-Z]{1,16}\Z")
_PATH = re.compile(r"/[\x21-\x7e]*\Z")
_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}\Z")


class ProbeError(ValueError):
    """A refused definition; Director turns it into ModelError."""


def parse_status(text: str) -> tuple[tuple[int, int], ...]:
    """`200`, `200-299`, `200-299,301,302`: codes 100-599, each range low to high."""
    ranges = []
    for item in text.split(","):
        match = _STATUS_ITEM.match(item)
        low, high = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
        if not (100 <= low <= high <= 599):
            raise ProbeError(f"bad status list '{text}': codes 100-599 and ranges such as "
                             "200-299,301")
        ranges.append((low, high))
    return tuple(ranges)


def format_seconds(seconds: float) -> str:
    return f"{seconds:g}"


@dataclass(frozen=True)
class Probe:
    """One `probeconfig` line. `port` 0: the real's port (or its virtual's). The text
    fields keep what was typed (the running config writes them back); the parsed forms
    the runner uses are computed once, here."""

    name: str
    kind: str
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    failures: int = DEFAULT_FAILURES
    successes: int = DEFAULT_SUCCESSES
    port: int = 0
    method: str = DEFAULT_METHOD
    path: str = DEFAULT_PATH
    status: str = DEFAULT_STATUS
    host: str = ""           # "" = the real's address
    send: str = ""           # udp: the datagram, with escapes
    query: str = DEFAULT_QUERY
    qtype: str = DEFAULT_QTYPE
    rcode: str = DEFAULT_RCODE
    recurse: bool = False
    expect: str = ""         # "" = any body (http), any answer (udp)
    statuses: tuple[tuple[int, int], ...] = field(default=(), compare=False, repr=False)
    payload: bytes = field(default=b"", compare=False, repr=False)
    expected: bytes = field(default=b"", compare=False, repr=False)
    qname: str = field(default="", compare=False, repr=False)
    qtype_code: int = field(default=0, compare=False, repr=False)
    rcodes: frozenset[int] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        refusal = self._refusal()
        if refusal is not None:
            raise ProbeError(refusal)
        parsed: dict[str, object] = {"statuses": parse_status(self.status)}
        try:
            if self.kind == "udp":
                parsed.update(payload=probe_kinds.unescape(self.send),
                              expected=probe_kinds.unescape(self.expect))
            parsed.update(qname=probe_kinds.query_name(self.query),
                          qtype_code=probe_kinds.qtype(self.qtype),
                          rcodes=probe_kinds.rcodes(self.rcode),
                          qtype=self.qtype.upper(), rcode=self.rcode.upper())
        except KindError as err:
            raise ProbeError(str(err)) from None
        for name, value in parsed.items():
            object.__setattr__(self, name, value)

    def _refusal(self) -> str | None:
        if self.kind not in KINDS:
            return f"unknown probe type '{self.kind}': {', '.join(KINDS[:-1])} or {KINDS[-1]}"
        for what in ("interval", "timeout"):
            if not MIN_SECONDS <= getattr(self, what) <= MAX_SECONDS:
                return f"probe {what} must be {MIN_SECONDS:g}-{MAX_SECONDS:g} seconds"
        if self.timeout >= self.interval:
            return (f"probe timeout ({self.timeout:g} s) must be shorter than its interval "
                    f"({self.interval:g} s)")
        if self.failures < 1 or self.successes < 1:
            return "probe failures and successes must be at least 1"
        if not 0 <= self.port <= 65535:
            return "probe port must be 0-65535"
        misplaced = probe_kinds.misplaced(self.kind, self.kind_settings())
        if misplaced:
            return f"{misplaced}, probe {self.name} is {self.kind}"
        if self.kind == "udp" and not self.send:
            return f"probe {self.name} is udp: it needs send PAYLOAD"
        if not _METHOD.match(self.method):
            return f"bad method '{self.method}': upper-case letters, such as GET or HEAD"
        if not _PATH.match(self.path):
            return f"bad path '{self.path}': it starts with '/' and has no spaces"
        if self.host and not _HOST.match(self.host):
            return f"bad host '{self.host}'"
        if "\r" in self.expect or "\n" in self.expect:
            return "expect text is one line"
        return None

    def kind_settings(self) -> list[str]:
        """The settings of some types only that were given a value other than their
        default."""
        return [word for word, value, default in self._kind_words() if value != default]

    def _kind_words(self) -> list[tuple[str, str, str]]:
        """(word, value, default) of each type's own settings, in `probeconfig` order;
        `recurse` is a bare word, its value the word itself."""
        return [("method", self.method, DEFAULT_METHOD), ("path", self.path, DEFAULT_PATH),
                ("status", self.status, DEFAULT_STATUS), ("host", self.host, ""),
                ("send", self.send, ""), ("query", self.query, DEFAULT_QUERY),
                ("type", self.qtype.upper(), DEFAULT_QTYPE),
                ("rcode", self.rcode.upper(), DEFAULT_RCODE),
                ("recurse", "recurse" if self.recurse else "", ""),
                ("expect", self.expect, "")]

    def options(self) -> dict[str, str | bool]:
        """The type's own settings as `show probeconfig` lists them, defaults included."""
        return {word: (value == "recurse" if word == "recurse" else value)
                for word, value, _ in self._kind_words()
                if self.kind in probe_kinds.SETTINGS[word]}

    def words(self) -> list[str]:
        """The `probeconfig` line's arguments after the name; defaults left out, in the
        order the command takes them."""
        words = [self.kind]
        for word, value, default in (
                ("interval", format_seconds(self.interval), format_seconds(DEFAULT_INTERVAL)),
                ("timeout", format_seconds(self.timeout), format_seconds(DEFAULT_TIMEOUT)),
                ("failures", str(self.failures), str(DEFAULT_FAILURES)),
                ("successes", str(self.successes), str(DEFAULT_SUCCESSES)),
                ("port", str(self.port), "0"), *self._kind_words()):
            if value != default:
                words += [word] if word == "recurse" else [word, value]
        return words

    def status_ok(self, code: int) -> bool:
        return any(low <= code <= high for low, high in self.statuses)


@dataclass(eq=False)
class ProbeCheck:
    """One probe of one real on one port: the runner's unit of work and `show probe`'s
    row."""

    real_sid: ServerId
    probe: Probe
    addr: int
    port: int
    state: str = UNKNOWN
    in_row: int = 0           # results in a row that disagree with `state`
    ok: int = 0
    failed: int = 0
    last_result: str = "-"
    last_change: float = 0.0  # time.time() of the last state change; 0 = never
    latency: float = 0.0      # seconds, of the last good result
    # time.monotonic() until which the first result is awaited (0: not awaited, or no
    # longer: a runner that has not reported within one interval is not waited for).
    pending_until: float = 0.0

    @property
    def runnable(self) -> bool:
        return self.port != 0


@dataclass
class ProbeCounters:
    """`show statistics`' probe line: results since start (or `reload`)."""

    sent: int = 0
    ok: int = 0
    failed: int = 0


def pending(check: ProbeCheck, now: float) -> bool:
    """Whether the check's first result is still awaited at `now` (time.monotonic())."""
    return check.state == UNKNOWN and now < check.pending_until


def record(check: ProbeCheck, good: bool, result: str, latency: float, now: float
           ) -> str | None:
    """One result; returns the new state when it changed (UP or DOWN), else None."""
    check.last_result = result
    if good:
        check.ok += 1
        check.latency = latency
    else:
        check.failed += 1
    want = UP if good else DOWN
    if check.state == want:
        check.in_row = 0
        return None
    check.in_row += 1
    needed = check.probe.successes if good else check.probe.failures
    if check.state == UNKNOWN or check.in_row >= needed:
        check.state, check.in_row, check.last_change = want, 0, now
        return want
    return None
