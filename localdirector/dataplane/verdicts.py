"""What the engine tells the worker to do with a packet (the worker's NFQUEUE verdict)."""

DROP = 0
ACCEPT_UNCHANGED = 1  # accept the original: nothing to copy back
ACCEPT_MODIFIED = 2   # the buffer was translated and must be re-injected
ACCEPT_MARK = 3       # accept unchanged with the engine's `verdict_mark` set (fast path:
                      # conntrack NAT translates the connection toward that mark's real)
