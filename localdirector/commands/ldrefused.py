"""LocalDirector commands this appliance does not build, each refused by name with its
reason (issue 27 item 6; docs/design.rst, "LocalDirector's language"), never with a bare
caret: an administrator pasting a configuration learns what did not load and why.

The `no` form of each says the feature is off, which is what this appliance does, so a
printout's `no autounfail` is accepted with that note rather than refused."""

from __future__ import annotations

from localdirector.shell.grammar import Arg, Keyword, opt
from localdirector.shell.registry import Mode, declare
from localdirector.shell.session import CommandFailed, Session

from .ldcompat import note

_REST = Arg("rest", "LINE", "The rest of the line", lambda text, _s: text, rest=True)

# word: (help, why it is not built)
REFUSED: dict[str, tuple[str, str]] = {
    "autounfail": ("Bring a failed real back when it answers",
                   "not built as a switch: a failed real is always tested again after "
                   "retry seconds, and probes bring it back at once"),
    "data": ("Fail a real that sends no data after the handshake",
             "data checking is not built: a real is failed by unanswered SYNs (threshold) "
             "and by probes (probeconfig ... http expect TEXT)"),
    "dynamic-feedback": ("Weights from a DFP agent on the reals",
                         "Dynamic Feedback Protocol is not built: weights are set with "
                         "weight, health by probeconfig"),
    "dynamic-feedback-pw": ("The DFP agents' password",
                            "Dynamic Feedback Protocol is not built"),
    "boot": ("Boot image or configuration source",
             "this appliance boots from its startup-config file (--config PATH)"),
    "bridge": ("Bridge interfaces",
               "the host's network is managed by the operating system: bridge with ip "
               "link add TYPE bridge"),
    "casa": ("CASA service manager",
             "Cisco Appliance Services Architecture is not built"),
    "channel": ("Ethernet channel of interfaces",
                "the host's network is managed by the operating system: bond interfaces "
                "with ip link add TYPE bond"),
    "color": ("Colour marking of packets", "packet colouring is not built"),
    "configuration": ("Replace or merge the configuration",
                      "load a configuration with reload (from the startup-config) or by "
                      "typing its lines"),
    "default": ("Reset settings to the factory defaults",
                "write erase then reload starts from an empty configuration"),
    "service": ("Services bound to a real",
                "server ids carry the port: real ADDR:PORT"),
    "wildcard": ("Wildcard matching of virtuals",
                 "port 0 virtuals take every port (virtual ADDR:0); no other wildcard "
                 "virtuals are built"),
    "restart": ("Restart the appliance", "use reload (a new model from the "
                                         "startup-config) or restart the service"),
}


def _refusal(word: str, why: str):
    def handler(session: Session, no: bool = False, rest: str = "") -> None:
        if no:
            note(session, f"{word} is off here, as this line asks ({why})")
            return
        raise CommandFailed(f"{word}: {why}")
    return handler


for _word, (_help, _why) in REFUSED.items():
    declare(Mode.CONFIG, Keyword(_word, f"{_help} (LocalDirector; not built here)"),
            opt(_REST), handler=_refusal(_word, _why), no=1)

_NO_TFTP = "no TFTP: write memory saves the startup-config file; copy it with scp"


def tftp_server(session: Session, rest: str = "", no: bool = False) -> None:
    """Only where `write net` saved to: nothing a virtual or real does depends on it."""
    note(session, f"not kept: {_NO_TFTP}")


declare(Mode.CONFIG, Keyword("tftp-server", "Where write net saves (LocalDirector; not "
                                            "kept here)"),
        opt(_REST), handler=tftp_server, no=1)
declare(Mode.PRIV, Keyword("write", "Save or show the running configuration"),
        Keyword("net", "Save to a TFTP server (LocalDirector; not built here)"), opt(_REST),
        handler=_refusal("write net", _NO_TFTP))
