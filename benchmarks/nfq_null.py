"""A do-nothing NFQUEUE worker: the floor of any Python data plane built on NFQUEUE.

Run inside the director namespace by the ``nfqueue-null`` contender, next to kernel NAT
that does the actual translation. Each packet is received, copied into a bytearray and
back (as the appliance's worker does to hand the engine a writable buffer) and
re-injected: everything the appliance pays per packet except the engine itself. Its
distance to plain kernel NAT is the NFQUEUE tax; its distance to localdirector is the
engine's share.

``--binding own`` runs the same do-nothing worker on the appliance's own binding
(localdirector/dataplane/nfqueue.py) instead of NetfilterQueue, to compare the two
bindings' per-packet cost under the same load. It reads a batch, then gives the batch's
verdicts in one datagram, as the appliance's worker does, but accepts each packet
unchanged: kernel NAT, which translates in this contender, verifies the checksum of a
packet handed back with a payload, and a GSO super-packet's is left for the kernel to
finish (the appliance's worker only hands back what its engine changed, untracked).
``--workers 2`` runs it in two processes on two queues: what a second core would give
a data plane that could split its work (docs/benchmarks.rst).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
from typing import TYPE_CHECKING

from localdirector.dataplane.nfqueue import PacketQueue
from localdirector.dataplane.worker import BATCH, SOCKET_BYTES_PER_PACKET

# The appliance's worker binds with these (localdirector/dataplane/worker.py).
MAX_LEN = 8192
COPY_RANGE = 4016
SOCK_LEN = MAX_LEN * 1200
_PR_SET_PDEATHSIG = 1

if TYPE_CHECKING:
    from netfilterqueue import Packet


def _reinject(pkt: "Packet") -> None:
    buf = bytearray(pkt.get_payload())
    pkt.set_payload(bytes(buf))
    pkt.accept()


def _serve_own(queue_num: int, workers: int) -> None:
    """The do-nothing worker on our binding: batches of at most BATCH packets, each
    received (one copy out of the receive buffer) and accepted unchanged. With several
    `workers`, queues `queue_num`... are bound here and each served by a process of its
    own (the kernel spreads packets over them by address: ``--queue-balance``), which
    end with this one."""
    queues = [PacketQueue(queue_num + n, max_len=MAX_LEN,
                          receive_buffer=MAX_LEN * SOCKET_BYTES_PER_PACKET)
              for n in range(workers)]
    queue = queues[0]
    for other in queues[1:]:
        if os.fork() == 0:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            queue = other
            break
    else:
        print("bound", flush=True)
    poller = select.poll()
    poller.register(queue.fileno(), select.POLLIN)
    receive, accept = queue.receive, queue.accept
    while True:
        poller.poll()
        for _ in range(BATCH):
            packet = receive()
            if packet is None:
                break
            accept(packet[0])
        queue.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--binding", choices=("netfilterqueue", "own"),
                        default="netfilterqueue",
                        help="NetfilterQueue (the diagnostic's baseline) or our own")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes, one per queue from --queue on (own binding only)")
    args = parser.parse_args(argv)
    if args.binding == "own":
        _serve_own(args.queue, args.workers)
        return 0
    # Imported only here: `--binding own` runs where NetfilterQueue is not installed
    # (the appliance does not need it).
    from netfilterqueue import COPY_PACKET, NetfilterQueue
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
