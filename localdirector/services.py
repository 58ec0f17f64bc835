"""What the appliance runs beside its console: each service adds its command-line
options and starts from the booted appliance, returning something to stop at exit, so
a new service is one entry in `cli.SERVICES` and touches nothing else."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .appliance import Appliance


# Set by `localdirector lab` for the appliance it starts: only then are the lab's own
# shell commands (`lab curl`, `show lab`) registered; production never imports the lab.
LAB_ENV = "LOCALDIRECTOR_LAB"


class Stoppable(Protocol):
    def stop(self) -> None: ...


class ServiceError(Exception):
    """A requested service could not start; the appliance exits with status 2."""


@dataclass(frozen=True)
class Service:
    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    # Returns None when the options did not ask for this service.
    start: Callable[["Appliance", argparse.Namespace], Stoppable | None]
