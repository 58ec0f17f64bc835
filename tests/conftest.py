"""Shared pytest scaffolding: the network-namespace lab.

Integration tests mark themselves ``@pytest.mark.netns`` and take the ``lab`` fixture.
Where namespaces cannot be built they skip, except under LOCALDIRECTOR_REQUIRE_NETNS=1
(CI on a capable host), where silently skipping would hide a broken environment.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

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


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture(scope="module")
def private_loopback() -> Iterator[None]:
    """The module's tests in a network namespace of their own, loopback up: appliances
    they start on 127.0.0.1 and the clients they run (ssh, telnet, netmiko, sockets)
    never touch the host's network. The test thread enters a new namespace (unshare),
    which the processes and threads it starts inherit, and returns to the host's after
    the module. Fails, never skips, when it cannot (as `netns` does)."""
    require_netns()
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            pytest.fail(f"unshare: {os.strerror(ctypes.get_errno())}", pytrace=False)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
        yield
    finally:
        if _libc.setns(saved, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the host's namespace")
        os.close(saved)


@contextmanager
def built_lab(lab: Lab) -> Iterator[Lab]:
    """`lab` built for the block and destroyed after it. A failed build fails the test:
    no traffic is ever sent into a half-built lab."""
    require_netns()
    try:
        lab.build()
    except LabError as exc:
        pytest.fail(f"lab build failed: {exc}", pytrace=False)
    try:
        yield lab
    finally:
        lab.destroy()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A default lab per test module, so state a module changes (iptables rules, stopped
    servers) cannot leak into another module."""
    with built_lab(Lab()) as built:
        yield built
