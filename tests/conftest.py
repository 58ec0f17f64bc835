"""Shared pytest scaffolding: the network-namespace lab.

Integration tests mark themselves ``@pytest.mark.netns`` and take the ``lab`` fixture.
Where namespaces cannot be built they skip, except under LOCALDIRECTOR_REQUIRE_NETNS=1
(CI on a capable host), where silently skipping would hide a broken environment.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import pytest

from localdirector.lab import Lab, LabError, clean_stale, unavailable_reason


@functools.cache
def _netns_problem() -> str | None:
    """Probe once per session: it creates and deletes a namespace."""
    return unavailable_reason()


def require_netns() -> None:
    """Skip (or fail under LOCALDIRECTOR_REQUIRE_NETNS=1) when labs cannot run here."""
    problem = _netns_problem()
    if problem is None:
        return
    if os.environ.get("LOCALDIRECTOR_REQUIRE_NETNS") == "1":
        pytest.fail(f"network namespaces required but unavailable: {problem}", pytrace=False)
    pytest.skip(f"network namespaces unavailable: {problem}")


@pytest.fixture
def netns() -> None:
    """Fixture form of :func:`require_netns` for tests that build their own labs."""
    require_netns()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "netns: needs root and network namespaces (builds a lab)")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remove labs whose owning run was killed before it could clean up."""
    if os.geteuid() == 0:
        try:
            clean_stale()
        except LabError as exc:
            print(f"warning: could not clean stale lab namespaces: {exc}")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A default lab per test module, so state a module changes (iptables rules, stopped
    servers) cannot leak into another module. A failed build fails the test: no traffic
    is ever sent into a half-built lab."""
    require_netns()
    built = Lab()
    try:
        built.build()
    except LabError as exc:
        pytest.fail(f"lab build failed: {exc}", pytrace=False)
    try:
        yield built
    finally:
        built.destroy()
