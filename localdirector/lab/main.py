"""`localdirector lab`: FIG. 1 on this machine in one command, gone again on `exit`.

Builds the lab, starts the appliance in the director namespace on this terminal with a
copy of the example configuration, and deletes every namespace (and with them the
appliance's firewall rules) when the shell ends, the appliance crashes, on
SIGTERM/SIGHUP/SIGQUIT, or on Ctrl-C during the build (docs/design.rst, "Lab"). Only a
`kill -9` leaves namespaces behind, for the next run or `--clean` to remove.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from localdirector.appliance import Appliance
from localdirector.model.director import Director
from localdirector.shell import config_file

from .cluster import MAX_DIRECTORS, Cluster
from .driver import PACKAGE_ROOT, Lab
from .guide import ENV, LabInfo, overview
from .pair import FailoverPair, appliance_arguments, failover_lines
from .topology import DEFAULT_REALS, LabError, clean_stale, unavailable_reason
from .udpservers import DNSMASQ

PREFIX = "ldlab"
DEFAULT_EXAMPLE = "fig1.cfg"
DNS_EXAMPLE = "dns.cfg"         # FIG. 1 for DNS, added to the default lab's (lab dig)
CLUSTER_EXAMPLE = "cluster.cfg"
CLUSTER_VIP = "192.0.2.10"      # the VIP the cluster's reals hold on their loopback
# A source checkout (or `pip install -e`) has the examples here; a regular install has
# them under <prefix>/share (setup.cfg data_files).
EXAMPLE_DIRS = (PACKAGE_ROOT / "examples",
                Path(sys.prefix) / "share" / "localdirector" / "examples")
STOP_SECONDS = 5.0
PRIMARY_ACTIVE_SECONDS = 30.0
# Signals that end the lab as an orderly exit (the `finally` below still runs).
FATAL_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Failure(Exception):
    """A step that could not be done; the message is printed and the exit status is 2."""


def find_example(name: str = DEFAULT_EXAMPLE) -> Path:
    """The checkout's copy first, so that a developer's edits are what the lab runs."""
    for directory in EXAMPLE_DIRS:
        if (directory / name).is_file():
            return directory / name
    looked = ", ".join(str(d) for d in EXAMPLE_DIRS)
    raise Failure(f"cannot find {name} (looked in {looked}); "
                  "name a configuration with --config PATH")


def _display(path: Path) -> str:
    """A path as the operator would type it: relative to here when below here."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class Progress:
    """`[2/5] Building ... ok (0.7 s)`: one line per step, so a person waiting sees
    what is happening and which step failed."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.number = 0

    @contextmanager
    def step(self, text: str) -> Iterator[list[str]]:
        """Yields a list; a string appended to it replaces the default `ok`."""
        self.number += 1
        print(f"[{self.number}/{self.total}] {text} ...", end="", flush=True)
        started = time.monotonic()
        outcome: list[str] = []
        try:
            yield outcome
        except BaseException:
            print(" failed", flush=True)
            raise
        elapsed = time.monotonic() - started
        timing = f" ({elapsed:.1f} s)" if elapsed >= 0.1 else ""
        print(f" {outcome[0] if outcome else 'ok'}{timing}", flush=True)


def _namespaces(count: int) -> str:
    return f"{count} namespace{'' if count == 1 else 's'}"


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """A Python-level no-op rather than SIG_IGN: an ignored SIGINT would be inherited by
    the appliance across exec, and its shell would then not see Ctrl-C either."""


def _load(configs: Sequence[Path]) -> tuple[Director, int]:
    """The configuration in a scratch model, for the banner; and how many lines are bad
    (the appliance shows them itself as it boots)."""
    appliance = Appliance(configs[0])
    lines = [line for config in configs for line in config_file.read(config) or []]
    failures = config_file.replay(appliance, appliance.director, lines, lambda _text: None)
    return appliance.director, failures


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """The appliance exits on SIGTERM removing its rules; SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def run(configs: Sequence[Path], queue: int, cluster: int = 0, failover: bool = False) -> int:
    """The lab with the configuration `configs` make one after another (the default
    lab: FIG. 1 for HTTP, then for DNS)."""
    progress = Progress(4)
    print("localdirector lab: FIG. 1 of US 6,324,177 in network namespaces"
          + (f", {cluster} directors behind a BGP/ECMP router" if cluster else "")
          + (", a failover pair" if failover else ""))
    with progress.step("Checking this machine can run a lab (root, ip, iptables, curl, "
                       "network namespaces" + (", bird, exabgp" if cluster else "")
                       + (", keepalived, conntrackd" if failover else "") + ")"):
        if os.geteuid() != 0:
            raise Failure("the lab builds network namespaces, which needs root: "
                          "run it as root (sudo localdirector lab)")
        problem = unavailable_reason(PREFIX)
        if problem is not None:
            raise Failure(problem)
        missing = [tool for tool in ("bird", "birdc", "exabgp")
                   if cluster and shutil.which(tool) is None]
        if missing:
            raise Failure(f"the cluster lab needs {', '.join(missing)} (apt install bird2; "
                          "pip install exabgp)")
        missing = [tool for tool in ("keepalived", "conntrackd")
                   if failover and shutil.which(tool) is None]
        if missing:
            raise Failure(f"the failover lab needs {', '.join(missing)} (apt install "
                          "keepalived conntrackd)")
    with progress.step("Removing what earlier labs left behind") as outcome:
        removed = clean_stale(PREFIX)
        outcome.append(f"{_namespaces(len(removed))} removed" if removed else "nothing left")
    shown = " and ".join(_display(config) for config in configs)
    with progress.step(f"Reading {shown}") as outcome:
        for config in configs:
            if not config.is_file():
                raise Failure(f"no such file: {config}")
        director, failures = _load(configs)
        outcome.append(f"{len(director.virtuals)} virtual instances, {len(director.reals)} "
                       f"reals, {len(director.bindids)} assign entries"
                       + (f", {failures} bad lines (shown at boot)" if failures else ""))
    lab = (Cluster(cluster, prefix=PREFIX) if cluster
           else FailoverPair(prefix=PREFIX) if failover
           else Lab(prefix=PREFIX, dns=os.path.exists(DNSMASQ)))
    workdir = Path(tempfile.mkdtemp(prefix="localdirector-lab-"))
    # The appliance gets a copy: `write memory` in the lab must not edit the example.
    startup = workdir / "startup-config"
    original = b"".join(config.read_bytes() for config in configs)
    try:
        startup.write_bytes(original)
        directors = (f"a router running BIRD, {cluster} directors" if cluster
                     else "two directors (primary, secondary)" if failover
                     else "the director")
        with progress.step(f"Building namespaces: clients in 3 subnets, {directors}, "
                           f"{len(DEFAULT_REALS)} reals with HTTP"
                           f"{' and DNS' if lab.dns else ''} servers") as outcome:
            lab.build()
            if isinstance(lab, Cluster):
                lab.hold_vip(CLUSTER_VIP)
            outcome.append(f"ok, lab {lab.name}")
        # From here Ctrl-C belongs to the director's shell, and teardown must not be
        # cut short by it either.
        signal.signal(signal.SIGINT, _ignore)
        info = LabInfo.from_lab(lab, shown)
        print("", *overview(info, director), "", sep="\n")
        if isinstance(lab, FailoverPair):
            return _run_pair(lab, info, startup, queue)
        print(f"Starting the director in {lab.director_ns} with a scratch copy of "
              f"{shown} (write memory saves there).", flush=True)
        return _run_appliance(lab, info, startup, queue)
    finally:
        for signum in FATAL_SIGNALS:
            signal.signal(signum, _ignore)
        names = lab.namespaces
        lab.destroy()
        if names:
            print(f"Lab removed: {_namespaces(len(names))} deleted "
                  f"({names[0].rsplit('-', 1)[0]}-*).", flush=True)
        _keep_saved_config(startup, original)
        shutil.rmtree(workdir, ignore_errors=True)


def _run_appliance(lab: Lab, info: LabInfo, startup: Path, queue: int,
                   extra: Sequence[str] = ()) -> int:
    """The appliance owns the terminal until it exits; its status is ours."""
    os.environ[ENV] = info.to_env()  # Lab.popen_in passes this process's environment on
    argv = [sys.executable, "-m", "localdirector", "--config", str(startup),
            "--queue", str(queue), *extra]
    if isinstance(lab, Cluster):
        # The other directors run the same configuration in the background; the
        # first one has the terminal (docs/design.rst, "Scale-out").
        for ns in lab.director_nss[1:]:
            lab.popen_in(ns, [*argv, "--no-console"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"Directors {', '.join(lab.director_nss[1:]) or '-'} run in the background; "
              f"BIRD's routes: ip netns exec {lab.router_ns} birdc -s {lab.bird_socket} "
              f"show route", flush=True)
    proc = lab.popen_in(lab.director_ns, argv)
    try:
        status = proc.wait()
    finally:
        _stop(proc)
    if status < 0:
        print(f"\nThe director was killed by signal {-status}.", file=sys.stderr, flush=True)
        return 128 - status
    if status != 0:
        print(f"\nThe director exited with status {status}.", file=sys.stderr, flush=True)
    return status


def _run_pair(lab: FailoverPair, info: LabInfo, startup: Path, queue: int) -> int:
    """Both units with the configuration and their own failover lines; the primary
    (active once both are up) in the background, so that it can be killed while the
    secondary's shell, on this terminal, watches it take over."""
    example = startup.read_text()
    for unit in ("primary", "secondary"):
        (startup.parent / unit).write_text(example + "\n".join([*failover_lines(unit), ""]))
    os.environ[ENV] = info.to_env()
    argv = [sys.executable, "-m", "localdirector", "--queue", str(queue)]
    primary = lab.unit_ns["primary"]
    lab.popen_in(primary, [*argv, "--config", str(startup.parent / "primary"), "--no-console",
                           *appliance_arguments("primary")],
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Whichever unit is active first stays so (nopreempt): the secondary starts once the
    # primary holds the addresses, so the primary is the active one, as the banner says.
    deadline = time.monotonic() + PRIMARY_ACTIVE_SECONDS
    while lab.holders() != ["primary"]:
        if time.monotonic() > deadline:
            raise Failure(f"the primary did not become active in {PRIMARY_ACTIVE_SECONDS:g} s")
        time.sleep(0.1)
    print(f"The primary runs in the background in {primary}; this terminal is the "
          f"secondary's shell ({lab.unit_ns['secondary']}): show failover.\n"
          f"Kill the primary as a crash would: ip netns pids {primary} | xargs kill -9\n"
          f"A paced download to watch across it: ip netns exec {lab.client_ns} python3 -m "
          "localdirector.lab.client get --url http://192.0.2.10/bytes/100000000 "
          "--rate 5000000 --digest --timeout 30", flush=True)
    lab.director_ns = lab.unit_ns["secondary"]
    return _run_appliance(lab, info, startup.parent / "secondary", queue,
                          appliance_arguments("secondary"))


def _keep_saved_config(startup: Path, original: bytes) -> None:
    """A configuration saved with `write memory` outlives the lab: it is the one thing
    the operator may have made there on purpose."""
    try:
        changed = startup.read_bytes() != original
    except OSError:
        return
    if changed:
        fd, kept = tempfile.mkstemp(prefix="localdirector-lab-", suffix=".cfg")
        os.close(fd)
        shutil.copyfile(startup, kept)
        print(f"The configuration saved with write memory is kept in {kept}", flush=True)


def clean() -> int:
    """`--clean`: remove namespaces of labs whose owner process is gone."""
    if os.geteuid() != 0:
        raise Failure("removing lab namespaces needs root")
    removed = clean_stale(PREFIX)
    if removed:
        print(f"Removed {_namespaces(len(removed))} left by earlier labs: "
              f"{' '.join(removed)}")
    else:
        print("No lab leftovers found.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localdirector lab",
        description="Build FIG. 1 in network namespaces (clients, the director, five "
                    "reals) and open the director's shell; exit removes it all. "
                    "Needs root.")
    parser.add_argument("--config", type=Path, metavar="PATH",
                        help="the director's configuration (default: examples/fig1.cfg, "
                        "and examples/dns.cfg where dnsmasq is installed)")
    parser.add_argument("--queue", type=int, default=0, metavar="N",
                        help="NFQUEUE number inside the director namespace (default 0)")
    parser.add_argument("--cluster", type=int, default=0, metavar="N",
                        help=f"scale-out lab: a BGP/ECMP router (BIRD 2) and N directors "
                        f"(1-{MAX_DIRECTORS}) running examples/cluster.cfg")
    parser.add_argument("--failover", action="store_true",
                        help="failover pair: two directors (keepalived, conntrackd) sharing "
                        "the clients' and the reals' segments, FIG. 1 with failover and "
                        "replicate; the primary in the background, the secondary here")
    parser.add_argument("--clean", action="store_true",
                        help="only remove namespaces left by labs that crashed, and exit")
    return parser


def _configs(args: argparse.Namespace) -> list[Path]:
    """--config, else the example of the lab asked for; the one-director lab's FIG. 1
    also for DNS where its reals run dnsmasq (lab dig)."""
    if args.config:
        return [args.config]
    if args.cluster:
        return [find_example(CLUSTER_EXAMPLE)]
    dns = not args.failover and os.path.exists(DNSMASQ)
    return [find_example(DEFAULT_EXAMPLE), *([find_example(DNS_EXAMPLE)] if dns else [])]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {signal.SIGINT: signal.getsignal(signal.SIGINT)}
    handlers.update((signum, signal.signal(signum, _raise_exit)) for signum in FATAL_SIGNALS)
    try:
        if args.clean:
            return clean()
        if not 0 <= args.cluster <= MAX_DIRECTORS:
            raise Failure(f"--cluster takes 1-{MAX_DIRECTORS} directors")
        if args.failover and args.cluster:
            raise Failure("--failover and --cluster build different labs: choose one")
        return run(_configs(args), args.queue, args.cluster, args.failover)
    except (Failure, LabError) as err:
        print(f"localdirector lab: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nlocaldirector lab: interrupted", file=sys.stderr)
        return 130
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
