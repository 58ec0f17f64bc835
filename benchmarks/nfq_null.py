"""A do-nothing NFQUEUE worker: the floor of any Python data plane built on NFQUEUE.

Run inside the director namespace by the ``nfqueue-null`` contender, next to kernel NAT
that does the actual translation. Each packet is received, copied into a bytearray and
back (as the appliance's worker does to hand the engine a writable buffer) and
re-injected: everything the appliance pays per packet except the engine itself. Its
distance to plain kernel NAT is the NFQUEUE tax; its distance to localdirector is the
engine's share.
"""

from __future__ import annotations

import argparse

from netfilterqueue import COPY_PACKET, NetfilterQueue, Packet

# The appliance's worker binds with these (localdirector/dataplane/worker.py).
MAX_LEN = 8192
COPY_RANGE = 4016
SOCK_LEN = MAX_LEN * 1200


def _reinject(pkt: Packet) -> None:
    buf = bytearray(pkt.get_payload())
    pkt.set_payload(bytes(buf))
    pkt.accept()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, default=0)
    args = parser.parse_args(argv)
    nfq = NetfilterQueue()
    nfq.bind(args.queue, _reinject, max_len=MAX_LEN, mode=COPY_PACKET, range=COPY_RANGE,
             sock_len=SOCK_LEN)
    # Ready: the contender installs its rules only now, since --queue-bypass would let
    # packets past an unbound queue. SIGTERM's default action ends it; closing the
    # netlink socket unbinds the queue.
    print("bound", flush=True)
    nfq.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
