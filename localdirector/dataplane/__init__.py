"""Data plane: per-packet parsing, address translation, the NFQUEUE worker and the
netfilter rules that feed it (docs/design.rst, "Packet flow"); plane.DataPlane runs them."""
