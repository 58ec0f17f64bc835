"""Data plane: per-packet parsing, address translation and the NFQUEUE worker (DESIGN §3)."""
