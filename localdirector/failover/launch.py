"""How the appliance starts its failover service (cli.py's SERVICES): the command line's
options, the checks a unit needs before anything runs (the tools, its address on the
link, this namespace's run directory), then the service itself (service.py)."""

from __future__ import annotations

import argparse
import shutil
from typing import TYPE_CHECKING

from localdirector import runtime
from localdirector.model.addr import is_v6, parse_ip
from localdirector.services import ServiceError

from . import configs
from .interfaces import interface_addresses
from .service import FailoverService

if TYPE_CHECKING:
    from localdirector.appliance import Appliance
    from localdirector.dataplane.plane import DataPlane


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--failover-link", metavar="IFACE",
                        help="run as one unit of a failover pair; IFACE is the failover "
                        "link (its first IPv4 address is this unit's)")
    parser.add_argument("--failover-unit", choices=("primary", "secondary"),
                        default="primary",
                        help="this unit's end of the pair (default primary)")


def start(appliance: "Appliance", args: argparse.Namespace,
          plane: "DataPlane | None" = None) -> FailoverService | None:
    """`plane`: the running data plane, whose connections the pair replicates (None
    without one: `--no-dataplane`)."""
    if not args.failover_link:
        return None
    for tool in ("keepalived", "conntrackd", "iptables", "ip6tables"):
        if shutil.which(tool) is None:
            raise ServiceError(f"failover: {tool} is not installed")
    addresses = interface_addresses()
    # The link is IPv4 whatever the virtuals' families (configs.py says why).
    own = next((addr for ifname, addr, _ in addresses
                if ifname == args.failover_link and not is_v6(parse_ip(addr))), None)
    if own is None:
        raise ServiceError(f"failover: {args.failover_link} has no IPv4 address")
    try:
        directory = runtime.claim("failover")
    except runtime.Claimed as err:
        raise ServiceError(f"failover: {err}") from err
    unit = configs.Unit(args.failover_unit, args.failover_link, own, directory)
    service = FailoverService(appliance, unit, plane)
    try:
        service.start()
    except Exception as err:
        service.stop()
        raise ServiceError(f"failover: {err}") from err
    return service
