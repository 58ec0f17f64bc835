"""Network-namespace lab for integration tests and ``localdirector lab``.

Public surface: :class:`Lab` builds the client/director/reals lab (docs/design.rst,
"Lab"), :func:`clean_stale` removes what killed runs left behind,
:func:`unavailable_reason` says whether this host can run labs at all,
:func:`pattern_digest` gives the expected hash of the servers' ``/bytes/N`` stream.

Names resolve lazily (PEP 562) because ``python -m localdirector.lab.client`` and
``...servers`` are started many times inside namespaces: importing the builder there
would cost start-up time and make runpy warn about a pre-imported ``__main__`` module.
"""

from importlib import import_module

_EXPORTS = {
    "CLIENT_SUBNETS": "topology",
    "DEFAULT_REALS": "topology",
    "VIP_NET": "topology",
    "LabError": "topology",
    "clean_stale": "topology",
    "list_namespaces": "topology",
    "require_allowed": "topology",
    "unavailable_reason": "topology",
    "DEFAULT_PORTS": "driver",
    "ClientError": "driver",
    "Lab": "driver",
    "python_module": "driver",
    "Fetch": "client",
    "pattern_digest": "servers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
