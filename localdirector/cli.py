"""`localdirector`: boot the appliance from its startup-config, start its services, and
give the operator a console (interactive on a terminal, scripted otherwise).

Services (remote syslog; the SNMP agent; the data plane; SSH, telnet and serial
consoles; the probe runner; the metrics endpoint) are entries of `SERVICES`
(see services.py). This is the top floor (docs/design.rst, "Layers"): the only module
that knows every other, and the one place the data-plane handle is set."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from . import __version__, syslog
from .access import service as access_service
from .bgp import service as bgp_service
from .failover import launch as failover_launch
from .appliance import DEFAULT_CONFIG, Appliance
from .monitor import exporter, logging_hosts, snmp
from .probes import runner as probe_runner
from .services import LAB_ENV, Service, ServiceError, Stoppable
from .shell import config_file
from .shell.repl import run_shell
from .shell.scripted import run_script


def _dataplane_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-dataplane", action="store_true",
                        help="run the shell only: no root, no netfilter rules")
    parser.add_argument("--queue", type=int, default=0, metavar="N",
                        help="NFQUEUE number of the data plane (default 0)")
    parser.add_argument("--queue-len", type=int, metavar="PACKETS",
                        help="kernel queue length; packets beyond it are dropped and "
                        "counted (default 8192)")


def _start_dataplane(appliance: Appliance, args: argparse.Namespace) -> Stoppable | None:
    if args.no_dataplane:
        return None
    try:
        from .dataplane import plane
        sizing = {} if args.queue_len is None else {"max_len": args.queue_len}
        handle = plane.start(appliance.director, args.queue,
                             bypass=not args.failover_link, **sizing)
    except Exception as err:  # any failure to start is reported the same one-line way
        raise ServiceError(f"data plane: {err}") from err
    appliance.reload_hooks.append(handle.adopt)
    appliance.dataplane = handle
    return handle


def _start_failover(appliance: Appliance, args: argparse.Namespace) -> Stoppable | None:
    """The pair replicates the engine's connections: hand it the running data plane."""
    if not args.failover_link:
        return None
    from .dataplane.plane import DataPlane
    plane = appliance.dataplane
    return failover_launch.start(appliance, args,
                                  plane if isinstance(plane, DataPlane) else None)


SERVICES: list[Service] = [
    # First, so whatever the others log at start reaches the logging hosts.
    Service("logging", lambda parser: None, logging_hosts.start),
    # Before the probes and the failover pair: their first verdicts may be traps.
    Service("snmp", snmp.add_arguments, snmp.start),
    # Before the data plane: the first probe of every real runs at once, and its result
    # is in before the first client's SYN can be (a real dead at boot gets none).
    Service("probes", probe_runner.add_arguments, probe_runner.start),
    Service("dataplane", _dataplane_arguments, _start_dataplane),
    # After the data plane: its drop guard goes before the data plane's rules.
    Service("failover", failover_launch.add_arguments, _start_failover),
    # After the data plane: a VIP is announced only once its traffic is forwarded, and
    # withdrawn (stopped first) before the rules go.
    Service("bgp", bgp_service.add_arguments, bgp_service.start),
    Service("access", access_service.add_arguments, access_service.start),
    Service("metrics", exporter.add_arguments, exporter.start),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localdirector",
        description="Software LocalDirector: client-address-aware TCP and UDP load balancer, IPv4 and IPv6.",
        epilog="New here? `localdirector lab` builds a lab in network namespaces and opens "
               "the director's shell in it (see `localdirector lab --help`).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="PATH",
                        help=f"startup-config file (default {DEFAULT_CONFIG})")
    parser.add_argument("--check", type=Path, metavar="FILE",
                        help="validate a configuration file and exit")
    parser.add_argument("--no-console", action="store_true",
                        help="no shell on standard input; run until SIGTERM")
    parser.add_argument("--host-network", metavar="IFACE",
                        help="apply a LocalDirector configuration's ip address, alias ip "
                        "address, route and arp lines to this namespace (ip address and "
                        "aliases on IFACE); without it they are only noted")
    for service in SERVICES:
        service.add_arguments(parser)
    return parser


def check(path: Path) -> int:
    """`--check FILE`: replay into a scratch model; line-numbered errors, status 1."""
    lines = config_file.read(path)
    if lines is None:
        print(f"{path}: no such file")
        return 1
    appliance = Appliance(path)
    failures = config_file.replay(appliance, appliance.director, lines, print)
    if failures:
        print(f"{path}: {failures} bad line{'s' if failures != 1 else ''}")
        return 1
    print(f"{path}: OK")
    return 0


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


def _console(appliance: Appliance, args: argparse.Namespace) -> int:
    if args.no_console:
        _wait_for_signal()
        return 0
    if sys.stdin.isatty():
        # `exit` on the console ends the program; `kill` from a remote session only
        # resets the console to a fresh (unprivileged) session, as on a router.
        while True:
            session = appliance.open_session("console", "console")
            run_shell(session)
            if session.killed_by is None:
                return 0
            print(f"\n% Console session closed by session {session.killed_by}")
    session = appliance.open_session("console", "stdin", write=sys.stdout.write,
                                     interactive=False)
    ok = run_script(session, sys.stdin)
    sys.stdout.flush()
    return 0 if ok else 1


def _register_lab_commands() -> None:
    """In the appliance `localdirector lab` started, and only there: `lab curl`, `show
    lab`. A garbled lab description turns nothing on half-configured."""
    from .lab.guide import LabInfo
    if LabInfo.from_env() is not None:
        from .lab import shell_commands  # noqa: F401  (registers on import)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lab"]:   # `localdirector lab`: the namespace lab, a command of its own
        from .lab import main as lab_main
        return lab_main.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.check is not None:
        return check(args.check)
    if os.environ.get(LAB_ENV):
        _register_lab_commands()
    syslog.install()
    appliance = Appliance(args.config, queue_num=args.queue)
    appliance.host_network = args.host_network
    appliance.boot(lambda message: print(message, file=sys.stderr))
    # SIGTERM unwinds like an exit, so services remove what they installed.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    running: list[Any] = []
    try:
        for service in SERVICES:
            handle = service.start(appliance, args)
            if handle is not None:
                running.append(handle)
        return _console(appliance, args)
    except ServiceError as err:
        print(f"localdirector: {err}", file=sys.stderr)
        return 2
    finally:
        for handle in reversed(running):
            handle.stop()
        signal.signal(signal.SIGTERM, previous)
