"""Network-namespace lab for integration tests and ``localdirector lab``.

Public surface: :class:`Lab` builds the client/director/reals topology of DESIGN.md §6,
:func:`clean_stale` removes what killed runs left behind, :func:`unavailable_reason` says
whether this host can run labs at all, :func:`pattern_digest` gives the expected hash of
the servers' ``/bytes/N`` stream.

Names resolve lazily (PEP 562) because ``python -m localdirector.lab.client`` and
``...servers`` are started many times inside namespaces: importing the builder there
would cost start-up time and make runpy warn about a pre-imported ``__main__`` module.
"""

from importlib import import_module

_EXPORTS = {
    "CLIENT_SUBNETS": "netns",
    "DEFAULT_PORTS": "netns",
    "DEFAULT_REALS": "netns",
    "VIP_NET": "netns",
    "ClientError": "netns",
    "Lab": "netns",
    "LabError": "netns",
    "clean_stale": "netns",
    "list_namespaces": "netns",
    "python_module": "netns",
    "unavailable_reason": "netns",
    "Fetch": "client",
    "pattern_digest": "servers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
