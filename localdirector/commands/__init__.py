"""Every shell command, declared once (syntax, help, handler, saver): importing this
package registers them all into `REGISTRY` (docs/design.rst, "Command language").

The modules are imported here by name, in running-config order: a replayed line may
only refer to what earlier lines created, and `write terminal` prints the savers of the
declarations in the order they were made. The lab's commands are not here: they exist
only in a lab's appliance (`localdirector/lab/`)."""

from localdirector.shell.registry import REGISTRY, Registry

from . import filters  # noqa: F401  (output modifiers: `| include ...`)
from . import config  # noqa: F401
from . import scaleout  # noqa: F401  (dispatched, table-size: after the binds)
from . import probe  # noqa: F401  (after the servers: attachments name them)
from . import exec  # noqa: F401
from . import show  # noqa: F401
from . import interfaces  # noqa: F401  (the host's own: `show ip interface brief`)
from . import access  # noqa: F401
from . import traffic  # noqa: F401
from . import logging  # noqa: F401  (remote syslog)
from . import snmp  # noqa: F401  (the SNMP agent and its traps)
from . import bgp  # noqa: F401  (after the virtuals: `advertise` names them)
from . import static  # noqa: F401  (after the servers its lines name)
from . import failover  # noqa: F401  (last: `failover` enables what the lines before set)
# LocalDirector's words, lines and refusals (issue 27): no savers, so not in the running
# config; after everything they alias.
from . import hostnet  # noqa: F401  (the appliance's own network: notes, or applied)
from . import ldcompat  # noqa: F401
from . import ldrefused  # noqa: F401
from . import ldshow  # noqa: F401

ldcompat.exec_at_config(REGISTRY)   # last: every privileged command is registered

__all__ = ["REGISTRY", "Registry"]
