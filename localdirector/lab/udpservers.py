"""The lab reals' UDP services: Debian's dnsmasq and rsyslogd, not servers of our own.

A udp virtual is best shown and tested against the servers operators balance: each real
runs ``dnsmasq`` on port 53 (udp and tcp) answering ``who.lab`` TXT with its own name,
``real-ADDR:53`` (what ``lab dig`` shows, as ``lab curl`` shows ``real-ADDR:PORT``), and
``big.lab`` TXT with an RRset of about 3.8 KB (an EDNS answer far above the 1,232 bytes
that fit unfragmented, for byte-exact checks); ``rsyslogd`` on port 514 writes what it
receives to a file of the lab's (docs/design.rst, "Lab"). Neither looks anything up
outside the lab: dnsmasq has no upstream servers and reads no hosts file, rsyslog's
reverse lookups of senders are off.
"""

from __future__ import annotations

from pathlib import Path

DNSMASQ = "/usr/sbin/dnsmasq"
RSYSLOGD = "rsyslogd"
DNS_PORT = 53
SYSLOG_PORT = 514
WHO_NAME = "who.lab"
BIG_NAME = "big.lab"
# 15 records of one 240-byte string each: 3.8 KB of answer, under the 4,096 bytes the
# servers allow (--edns-packet-max), far over a 1,500-byte link's MTU.
BIG_RECORDS = 15
BIG_STRING = 240


def real_name(real: str) -> str:
    """What the real's DNS server answers for who.lab: which real, on which port."""
    return f"real-{real}:{DNS_PORT}"


def big_strings(real: str) -> list[str]:
    """The big.lab TXT strings of `real`, each opening with the real's name (so the
    first word of an answer says who answered, whatever was asked)."""
    strings = []
    for part in range(1, BIG_RECORDS + 1):
        head = f"{real_name(real)} part {part:02d} "
        strings.append(head + "".join(chr(97 + (i * 7 + part) % 26)
                                      for i in range(BIG_STRING - len(head))))
    return strings


def dnsmasq_argv(real: str, log: Path) -> list[str]:
    """dnsmasq in the foreground on `real`:53 only, as root (no privilege drop to a user
    the namespace's files may not suit), logging to `log`, answering the lab's names."""
    return [DNSMASQ, "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
            "--pid-file", "--user=root", f"--port={DNS_PORT}", f"--listen-address={real}",
            "--bind-interfaces", "--edns-packet-max=4096", f"--log-facility={log}",
            f"--txt-record={WHO_NAME},{real_name(real)}",
            *(f"--txt-record={BIG_NAME},{text}" for text in big_strings(real))]


def rsyslog_argv(real: str, workdir: Path) -> list[str]:
    """rsyslogd in the foreground with a configuration of its own in `workdir`: imudp on
    `real`:514, every message to ``workdir/messages``, no DNS, no local socket."""
    conf = workdir / "rsyslog.conf"
    conf.write_text(
        f'global(workDirectory="{workdir}" net.enableDNS="off")\n'
        'module(load="imudp")\n'
        f'input(type="imudp" address="{real}" port="{SYSLOG_PORT}")\n'
        f'*.* action(type="omfile" file="{workdir / "messages"}" '
        'template="RSYSLOG_FileFormat")\n')
    return [RSYSLOGD, "-n", "-f", str(conf), "-i", str(workdir / "rsyslogd.pid")]
